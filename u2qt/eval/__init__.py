"""Evaluation: the ranking protocol of every recommender and the downstream value of user tokens."""
