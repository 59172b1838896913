"""u2qt/data: raw tables → validated `Tables` → per-user example arrays → grain batches.

See README.md here. Importing this package reads nothing and imports neither TFDS nor grain;
import the submodules you need (`tables`, `movielens`, `synthetic`, `examples`, `tfds_builder`,
`pipeline`).
"""
