"""Keys and values of the positions a decoder has already seen, so that generation computes each new position once
(`Llama.forward(..., cache=KVCache(...))`). Preallocated for `max_len` positions; one (B, kv_heads, max_len,
head_dim) buffer pair per block."""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (n_layers, batch, kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.pos = 0  # positions filled (the next position's index)

    def block(self, i: int) -> "BlockCache":
        return BlockCache(self, i)

    def advance(self, n: int) -> None:
        self.pos += n


class BlockCache:
    """One block's view: appends this forward's keys and values at the cache's position, returns all so far."""

    def __init__(self, cache: KVCache, i: int):
        self.cache, self.i = cache, i

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, start, n = self.cache, self.cache.pos, k.shape[2]
        if start + n > c.max_len:
            raise ValueError(f"KV cache holds {c.max_len} positions; asked for {start + n}")
        c.k[self.i, :, :, start:start + n] = k
        c.v[self.i, :, :, start:start + n] = v
        return c.k[self.i, :, :, :start + n], c.v[self.i, :, :, :start + n]
