"""LLaMA-style building blocks shared by PHOTON and the vanilla baseline.

Pre-RMSNorm blocks, SwiGLU MLP, rotary position embeddings, full multi-head attention
(kv heads = heads), a final RMSNorm per stack, no biases inside blocks.
Shapes: B batch, T positions, H heads, K head dim, D width.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from photon_cli.kv_cache import StackCache


_ROW_INDEPENDENT: ContextVar[bool] = ContextVar("row_independent", default=False)


@contextmanager
def row_independent() -> Iterator[None]:
    """Compute every sequence of a batch exactly as if it were alone (inference only).

    A GEMM library picks its kernel, its thread split and so the order of the float sums from
    the matrix sizes. With MKL 2024.2 (the torch 2.13 CPU wheel, measured on an AVX-512 CPU) a
    row gets different float32 results in products of 1, 2-3 and 4+ rows, and with 2 threads a
    10-row product differs from the same rows inside a 30-row product. A query decoded alone and
    in a batch of eight then gets logits that differ by about 1e-7, enough to flip a greedy
    choice. Inside this context every matrix product in `Linear` and `prefix_attention` has a
    shape that does not depend on the batch size. Batched decoding is slower than with one
    folded product (see docs/reliability.md), so prefill and training stay outside.

    NOTE: bit-equality is tested on CPU only. GPU BLAS libraries may pick kernels by batch count
    as well, so batched CUDA answers can still differ from single ones.
    """
    token = _ROW_INDEPENDENT.set(True)
    try:
        yield
    finally:
        _ROW_INDEPENDENT.reset(token)


def independent_bmm(a: Tensor, b: Tensor) -> Tensor:
    """Multiply (N, n, k) x (N, k, m) like torch.bmm, with a result per index that does not depend on N.

    With torch 2.13 on CPU and 2 threads, a 1-item bmm of a (10, 64) matrix gave different
    results from the same item inside a larger bmm, while bmm results for 2 or more items agreed.
    A single item is therefore padded with a zero item.
    """
    if a.shape[0] > 1:
        return torch.bmm(a, b)
    return torch.bmm(torch.cat([a, torch.zeros_like(a)]), b.expand(2, -1, -1))[:1]


class Linear(nn.Linear):
    """nn.Linear that, inside `row_independent`, runs one matrix product per leading index.

    A 3-D or larger input (..., T, D) gets one (T, D) product per leading index, a 2-D input
    (N, D) one product per row, so a sequence's output does not depend on the batch around it.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not _ROW_INDEPENDENT.get() or x.dim() < 2:
            return super().forward(x)
        rows = x.reshape(-1, x.shape[-2], x.shape[-1]) if x.dim() > 2 else x[:, None]
        out = independent_bmm(rows, self.weight.t().expand(rows.shape[0], -1, -1))
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in float32: bf16 sums of squares lose too much precision.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)


def rope_angles(positions: Tensor, head_dim: int, base: float, scale: float) -> tuple[Tensor, Tensor]:
    """Return (cos, sin) of shape (T, K/2) for integer positions, computed in float32.

    Angles are built from float32 positions on every call, never from a table in the model's
    dtype: bf16 cannot represent integers above 256 exactly and would merge nearby positions.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device,
                                             dtype=torch.float32) / head_dim))
    angles = (positions.to(torch.float32) / scale)[:, None] * inv_freq[None, :]  # (T, K/2)
    return angles.cos(), angles.sin()


_ROPE_TABLES: dict[tuple, tuple[Tensor, Tensor]] = {}


def rope_table(start: int, length: int, head_dim: int, base: float, scale: float,
               device: torch.device) -> tuple[Tensor, Tensor]:
    """Return float32 (cos, sin) for positions start..start+length-1 from a per-device table.

    Decoding calls every stack once per token; slicing a table grown by doubling saves building
    the angles each time. The table is float32 whatever the model's dtype.
    """
    key = (str(device), head_dim, base, scale)
    table = _ROPE_TABLES.get(key)
    end = start + length
    if table is None or table[0].shape[0] < end:
        size = 1 << max(10, (end - 1).bit_length())
        table = rope_angles(torch.arange(size, device=device), head_dim, base, scale)
        _ROPE_TABLES[key] = table
    return table[0][start:end], table[1][start:end]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, H, T, K) by the angles (T, K/2), pairing dimension i with i + K/2."""
    x32 = x.float()
    half = x.shape[-1] // 2
    x1, x2 = x32[..., :half], x32[..., half:]
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return rotated.to(x.dtype)


def causal_mask(n_queries: int, n_keys: int, device: torch.device) -> Tensor:
    """Bottom-right aligned causal mask (queries are the last n_queries of n_keys positions).

    `scaled_dot_product_attention(is_causal=True)` aligns top-left, which is wrong whenever
    several positions are appended to a non-empty cache at once.
    """
    offset = n_keys - n_queries
    rows = torch.arange(n_queries, device=device)[:, None]
    cols = torch.arange(n_keys, device=device)[None, :]
    return cols <= rows + offset  # (n_queries, n_keys) bool, True = may attend


def folded_prefix_attention(q: Tensor, prefix_k: Tensor, prefix_v: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Shared-prefix attention with the B rows folded into one product per head.

    The prefix is read once per head for the whole batch, which is fastest, but a row's float
    sums then depend on B. `prefix_attention` uses this outside `row_independent`.
    """
    B, H, T, K = q.shape
    P, n = prefix_k.shape[2], k.shape[2]
    scale = K ** -0.5
    q_rows = q.permute(1, 0, 2, 3).reshape(H, B * T, K)  # (H, B*T, K)
    prefix_scores = torch.matmul(q_rows, prefix_k[0].transpose(-1, -2)) * scale  # (H, B*T, P)
    own_scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, T, n)
    own_scores = own_scores.masked_fill(~causal_mask(T, n, q.device), float("-inf"))
    own_scores = own_scores.permute(1, 0, 2, 3).reshape(H, B * T, n)
    probs = torch.cat([prefix_scores, own_scores], dim=-1).float().softmax(-1).to(q.dtype)
    out = torch.matmul(probs[..., :P], prefix_v[0])  # (H, B*T, K)
    own_probs = probs[..., P:].reshape(H, B, T, n)
    out = out + torch.matmul(own_probs, v.permute(1, 0, 2, 3)).reshape(H, B * T, K)
    return out.reshape(H, B, T, K).permute(1, 0, 2, 3)  # (B, H, T, K)


def prefix_attention(q: Tensor, prefix_k: Tensor, prefix_v: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attention over a shared batch-1 prefix (1, H, P, K) followed by each row's own keys.

    Each of the B rows reads the prefix in its own matrix products, of the same shape whatever
    B is, so the prefix is never copied B times and a row's result does not depend on the batch
    (see `row_independent`). Own keys are masked causally, bottom-right aligned.
    """
    B, H, T, K = q.shape
    P, n = prefix_k.shape[2], k.shape[2]
    scale = K ** -0.5
    if not _ROW_INDEPENDENT.get():
        return folded_prefix_attention(q, prefix_k, prefix_v, k, v)
    prefix_keys, prefix_values = prefix_k[0].transpose(-1, -2), prefix_v[0]  # (H, K, P), (H, P, K)
    prefix_scores = torch.stack([independent_bmm(q[row], prefix_keys) for row in range(B)])  # (B, H, T, P)
    own_scores = independent_bmm(q.reshape(B * H, T, K), k.reshape(B * H, n, K).transpose(-1, -2))
    own_scores = own_scores.view(B, H, T, n).masked_fill(~causal_mask(T, n, q.device), float("-inf"))
    probs = torch.cat([prefix_scores * scale, own_scores * scale], dim=-1).float().softmax(-1).to(q.dtype)
    prefix_probs = probs[..., :P]
    out = torch.stack([independent_bmm(prefix_probs[row], prefix_values) for row in range(B)])  # (B, H, T, K)
    own_probs = probs[..., P:].reshape(B * H, T, n)
    return out + independent_bmm(own_probs, v.reshape(B * H, n, K)).view(B, H, T, K)


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, rope_base: float, rope_scale: float):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.rope_base = rope_base
        self.rope_scale = rope_scale
        self.wq = Linear(d_model, d_model, bias=False)
        self.wk = Linear(d_model, d_model, bias=False)
        self.wv = Linear(d_model, d_model, bias=False)
        self.wo = Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache=None) -> Tensor:
        B, T, D = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, K)
        k = self.wk(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        if getattr(cache, "prefix_k", None) is not None:
            k, v = cache.append(k, v)  # own positions only: (B, H, n, K)
            out = prefix_attention(q, cache.prefix_k, cache.prefix_v, k, v)
            return self.wo(out.transpose(1, 2).reshape(B, T, D))

        past = 0 if cache is None else cache.length
        if cache is not None:
            k, v = cache.append(k, v)  # (B, H, past + T, K)
        if T == 1:
            out = F.scaled_dot_product_attention(q, k, v)
        elif past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            mask = causal_mask(T, past + T, x.device)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.wo(out)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.w_gate = Linear(d_model, d_ff, bias=False)
        self.w_up = Linear(d_model, d_ff, bias=False)
        self.w_down = Linear(d_ff, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int, rope_base: float, rope_scale: float,
                 eps: float):
        super().__init__()
        self.attn_norm = RMSNorm(d_model, eps)
        self.attn = Attention(d_model, n_heads, rope_base, rope_scale)
        self.mlp_norm = RMSNorm(d_model, eps)
        self.mlp = SwiGLU(d_model, d_ff)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache=None) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache)
        return x + self.mlp(self.mlp_norm(x))


class TransformerStack(nn.Module):
    """A causal stack of blocks with a final RMSNorm.

    RoPE positions continue from the cache length, so a stack run with a cache sees the same
    positions as one run over the whole sequence.
    """

    def __init__(self, n_layers: int, d_model: int, n_heads: int, d_ff: int, rope_base: float,
                 rope_scale: float, eps: float):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.rope_base = rope_base
        self.rope_scale = rope_scale
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, d_ff, rope_base, rope_scale, eps) for _ in range(n_layers)
        )
        self.norm = RMSNorm(d_model, eps)

    def forward(self, x: Tensor, cache: StackCache | None = None) -> Tensor:
        start = 0 if cache is None else cache.length
        cos, sin = rope_table(start, x.shape[1], self.head_dim, self.rope_base, self.rope_scale, x.device)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, None if cache is None else cache.layers[i])
        return self.norm(x)

    def new_cache(self, batch: int, capacity: int = 64, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> StackCache:
        return StackCache.allocate(len(self.blocks), batch, self.n_heads, self.head_dim,
                                   capacity, dtype, device)

    def new_training_cache(self) -> StackCache:
        return StackCache.for_training(len(self.blocks))
