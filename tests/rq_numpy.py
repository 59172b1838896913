"""Residual quantization in float64 numpy, by brute force: what the JAX code is checked against."""
import numpy as np


def greedy_numpy(z, books):
    """Brute force: at every level the code nearest to what the previous levels left."""
    r = z.astype(np.float64)
    codes, residuals = [], []
    for book in books.astype(np.float64):
        residuals.append(r)
        dist = ((r[:, None, :] - book[None]) ** 2).sum(-1)
        idx = dist.argmin(-1)  # lowest index on ties
        codes.append(idx)
        r = r - book[idx]
    return np.stack(codes, 1), np.stack(residuals, 1)


def decode_numpy(codes, books):
    return sum(books[level][codes[:, level]] for level in range(books.shape[0]))
