"""KV caches passed into attention layers; modules never allocate them.

Protocol: `length` is the number of positions already stored (it sets the RoPE offset of the next
input); `append(k, v)` stores new keys/values of shape (B, H, n, K) and returns all of them.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Inference cache of one attention layer, grown by doubling and never shrunk.

    Writes are in place, so this cache must not be used where autograd needs the history.
    """

    def __init__(self, batch: int, n_heads: int, head_dim: int, capacity: int = 64,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (batch, n_heads, max(capacity, 1), head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def _grow(self, needed: int) -> None:
        capacity = self.capacity
        while capacity < needed:
            capacity *= 2
        k = self.k.new_empty(self.k.shape[:2] + (capacity, self.k.shape[3]))
        v = self.v.new_empty(k.shape)
        k[:, :, : self.length] = self.k[:, :, : self.length]
        v[:, :, : self.length] = self.v[:, :, : self.length]
        self.k, self.v = k, v

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        end = self.length + k.shape[2]
        if end > self.capacity:
            self._grow(end)
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reset(self) -> None:
        self.length = 0

    def keys_values(self) -> tuple[Tensor, Tensor]:
        return self.k[:, :, : self.length], self.v[:, :, : self.length]

    def nbytes(self) -> int:
        """Bytes held by the stored positions (not the spare capacity)."""
        k, v = self.keys_values()
        return k.numel() * k.element_size() + v.numel() * v.element_size()

    @classmethod
    def from_tensors(cls, k: Tensor, v: Tensor, spare: int = 0) -> KVCache:
        """Wrap stored keys/values (B, H, n, K), leaving room for `spare` more positions."""
        cache = cls(k.shape[0], k.shape[1], k.shape[3], k.shape[2] + spare, k.dtype, k.device)
        cache.append(k, v)
        return cache

    def expand_batch(self, batch: int, spare: int = 0) -> KVCache:
        """Copy a batch-1 cache into `batch` rows, each with room for `spare` more positions."""
        k, v = self.keys_values()
        return KVCache.from_tensors(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), spare)


class PrefixKVCache:
    """A batch of rows that share one read-only batch-1 prefix (a document) and grow their own keys.

    `length` counts prefix + own positions (the RoPE offset); `append` returns only the own keys,
    and attention reads the prefix through `prefix_k` / `prefix_v` without copying it per row.
    """

    def __init__(self, prefix_k: Tensor, prefix_v: Tensor, batch: int, capacity: int = 64):
        self.prefix_k, self.prefix_v = prefix_k, prefix_v  # (1, H, P, K)
        self.own = KVCache(batch, prefix_k.shape[1], prefix_k.shape[3], capacity,
                           prefix_k.dtype, prefix_k.device)

    @property
    def length(self) -> int:
        return self.prefix_k.shape[2] + self.own.length

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.own.append(k, v)

    def nbytes(self) -> int:
        """Bytes of the shared prefix (counted once) plus every row's own positions."""
        shared = self.prefix_k.numel() * self.prefix_k.element_size() * 2
        return shared + self.own.nbytes()


class ConcatKVCache:
    """Autograd-safe cache for training: each append concatenates (windows are a few positions)."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.length = 0

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k = torch.cat([self.k, k], dim=2)
            self.v = torch.cat([self.v, v], dim=2)
        self.length = self.k.shape[2]
        return self.k, self.v


class StackCache:
    """The per-layer caches of one Transformer stack."""

    def __init__(self, layers: list) -> None:
        self.layers = layers

    @classmethod
    def allocate(cls, n_layers: int, batch: int, n_heads: int, head_dim: int, capacity: int = 64,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> StackCache:
        return cls([KVCache(batch, n_heads, head_dim, capacity, dtype, device) for _ in range(n_layers)])

    @classmethod
    def for_training(cls, n_layers: int) -> StackCache:
        return cls([ConcatKVCache() for _ in range(n_layers)])

    @property
    def length(self) -> int:
        return self.layers[0].length

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def expand_batch(self, batch: int, spare: int = 0) -> StackCache:
        """Per-row copies of a batch-1 cache (the per-query protocol of the PHOTON paper's benchmarks)."""
        return StackCache([layer.expand_batch(batch, spare) for layer in self.layers])

    def share_prefix(self, batch: int, capacity: int = 64) -> StackCache:
        """Rows that read this batch-1 cache as a shared prefix; this cache is never written."""
        return StackCache([PrefixKVCache(*layer.keys_values(), batch, capacity)
                           for layer in self.layers])
