"""u2qt: semantic-ID tokenizers for users and items, and the recommenders that use them.

Importing this package has no side effects: no JAX backend is started, no file is read.
"""
