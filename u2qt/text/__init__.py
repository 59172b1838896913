"""u2qt/text: text → vectors. `minilm` runs the pretrained all-MiniLM-L6-v2 sentence encoder in
pure JAX (no torch); import it explicitly, nothing is loaded when this package is imported."""
