"""Models: source encoders, causal Q-Former, residual quantizer, U2QT, SASRec, item tokenizer, recommender."""
