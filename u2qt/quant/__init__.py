"""u2qt/quant: residual quantization and everything about codes.

  residual.py      the RQ math: codebook + commitment losses, straight-through / rotation trick, L_H
  codebooks.py     keeping codebooks alive: k-means initialisation, usage counts, dead-code reset
  stats.py         statistics of a code table: usage, perplexity, collision rate, purity
  semantic_ids.py  the one semantic-ID table (users and items): schema, writer, reader, reverse index
"""
