"""u2qt/train."""
