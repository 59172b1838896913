"""Performance-critical ops, one folder per op (see each folder's README)."""
