"""Seeded permutations of [0, n) evaluated index by index, in O(1) memory whatever n is.

A balanced Feistel network permutes the integers of `2h` bits (the smallest even width holding n - 1); an output
that lands in [n, 4^h) is fed through again (cycle walking) until it falls in [0, n), which keeps the map a
bijection on [0, n) and takes fewer than 4 passes on average. With several rounds of a well-mixing round function
this is a pseudo-random permutation (Luby-Rackoff), so the rows of a batch come from across the corpus as with
`Generator.permutation(n)`, without the n-element array that costs 8 GB per phase at 2T tokens.
"""
from __future__ import annotations

import numpy as np

ROUNDS = 6
_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray, key: np.uint64) -> np.ndarray:
    """splitmix64's finaliser of x + key: every output bit depends on every input bit."""
    z = (x + key) * _GOLD
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


class Bijection:
    """`Bijection(n, key)(i)`: the image of indices `i` (any shape, values in [0, n)) under the permutation of
    [0, n) that `key` (a tuple of non-negative ints, like a numpy seed sequence) selects."""

    def __init__(self, n: int, key: tuple):
        self.n = int(n)
        bits = max(int(self.n - 1).bit_length(), 2)
        self.half = np.uint64((bits + 1) // 2)
        self.mask = np.uint64((1 << int(self.half)) - 1)
        self.keys = np.random.default_rng(list(key)).integers(0, 2 ** 63, size=ROUNDS, dtype=np.uint64)

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        for k in self.keys:
            left, right = right, left ^ (_mix(right, k) & self.mask)
        return (left << self.half) | right

    def __call__(self, i) -> np.ndarray:
        shape = np.shape(i)
        x = np.asarray(i, dtype=np.uint64).reshape(-1)
        if self.n <= 1:
            return x.astype(np.int64).reshape(shape)
        with np.errstate(over="ignore"):  # uint64 arithmetic wraps on purpose
            out = self._feistel(x)
            outside = out >= self.n
            while outside.any():
                out[outside] = self._feistel(out[outside])
                outside = out >= self.n
        return out.astype(np.int64).reshape(shape)
