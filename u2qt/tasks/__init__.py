"""u2qt/tasks: what the one train loop runs — a small core plus capabilities (see core.py, README.md)."""
