"""Generation with explicit caches: prefill, HierGen and RecGen for PHOTON; cached decoding for vanilla.

PHOTON decodes one meta-context (prod C_l tokens) per step:
  1. From the top state X^(L)_g the latent decoders forecast the units of meta-context g+1.
  2. The token decoder fills the C_1-token chunks of that meta-context, all chunks in parallel
     (they are conditionally independent given the forecasts), one slot at a time.
  3. The top stream advances: HierGen re-encodes the new tokens through every context encoder;
     RecGen feeds the top-level chunker with the forecasts and steps only F^(L).
Every path here is tested against the teacher-forced `Photon.forward`.

Dimension letters: B batch, U tokens per meta-context, n_1 chunks per meta-context, D width, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

from photon_cli.kv_cache import StackCache
from photon_cli.model import Photon
from photon_cli.vanilla import Vanilla

HIERGEN, RECGEN = "hiergen", "recgen"
MODES = (HIERGEN, RECGEN)

Picker = Callable[[Tensor], Tensor]  # logits (B, N, V) -> tokens (B, N)


@dataclass
class PhotonState:
    """Generation state after a prefix of whole meta-contexts.

    caches[l - 1] is the KV cache of context encoder F^(l), or None once dropped (RecGen keeps only
    the top). carries[l - 1] (B, D) is the last level-l forecast of the latest meta-context, which
    conditions the first unit of the next one.
    """

    caches: list[StackCache | None]
    top: Tensor | None  # (B, D) X^(L) of the last encoded unit; None before the first
    carries: list[Tensor]
    n_tokens: int

    @property
    def batch(self) -> int:
        return self.carries[0].shape[0] if self.carries else self.top.shape[0]

    def nbytes(self) -> int:
        """Bytes of the global encoder caches (the state that grows with the document)."""
        return sum(cache.nbytes() for cache in self.caches if cache is not None)


def empty_state(model: Photon, batch: int = 1, capacity: int = 64) -> PhotonState:
    param = model.start_latents
    caches = [stack.new_cache(batch, capacity, param.dtype, param.device) for stack in model.encoders]
    carries = [model.start_latents[level].expand(batch, -1) for level in range(model.config.n_levels - 1)]
    return PhotonState(caches, None, carries, 0)


def forecast_meta_context(model: Photon, top: Tensor | None, carries: list[Tensor], batch: int
                          ) -> tuple[Tensor, Tensor | None, list[Tensor]]:
    """Top-down forecasts for the next meta-context.

    Returns the token decoder's conditioning (B, n_1, D), the top latent decoder's forecasts
    X̂^(L-1) (B, C_L, D) that RecGen summarises (None when L = 1), and the new carries.
    """
    c = model.config
    L, D = c.n_levels, c.d_model
    cond = top if top is not None else model.start_latents[L - 1].expand(batch, D)
    if L == 1:
        return cond[:, None], None, []

    latents = model.forecast(L, cond)  # (B, C_L, D) = X̂^(L-1)
    top_forecast = latents
    new_carries: list[Tensor] = [None] * (L - 1)
    for level in range(L - 1, 1, -1):
        previous = torch.cat([carries[level - 1][:, None], latents[:, :-1]], dim=1)  # (B, n, D)
        new_carries[level - 1] = latents[:, -1]
        latents = model.forecast(level, previous.reshape(-1, D)).reshape(batch, -1, D)
    token_cond = torch.cat([carries[0][:, None], latents[:, :-1]], dim=1)  # (B, n_1, D)
    new_carries[0] = latents[:, -1]
    return token_cond, top_forecast, new_carries


@torch.no_grad()
def encode_units(model: Photon, state: PhotonState, tokens: Tensor) -> None:
    """Teacher-force whole meta-contexts of known tokens (B, k * U) into the state, in place."""
    B, T = tokens.shape
    U = model.config.tokens_per_unit
    if T == 0:
        return
    if T % U or any(cache is None for cache in state.caches):
        raise ValueError(f"encode_units needs whole meta-contexts and every encoder cache (T={T})")
    tops = model.encode(tokens, state.caches)[-1]  # (B, k, D)
    # The newest meta-context was forecast from the top state before it.
    cond = tops[:, -2] if tops.shape[1] >= 2 else state.top
    _, _, state.carries = forecast_meta_context(model, cond, state.carries, B)
    state.top = tops[:, -1]
    state.n_tokens += T


def prefill_block_tokens(model: Photon, total_tokens: int, budget: int = 1 << 26) -> int:
    """Tokens per prefill block so that one level-1 attention score matrix stays under `budget`
    elements (no T x T matrix at any level, whatever the document length)."""
    c = model.config
    U, C1 = c.tokens_per_unit, c.chunk_sizes[0]
    keys = max(1, total_tokens // C1)
    units = max(1, budget // (keys * c.n_heads))
    return max(U, min(8192, (units * C1) // U * U))


@torch.no_grad()
def prefill(model: Photon, tokens: Tensor, progress: Callable[[int, int], None] | None = None,
            block_tokens: int | None = None) -> PhotonState:
    """Encode a prompt of whole meta-contexts (B, T) block by block into a fresh state."""
    B, T = tokens.shape
    U = model.config.tokens_per_unit
    if T % U:
        raise ValueError(f"prefill needs a multiple of {U} tokens, got {T}")
    state = empty_state(model, B, capacity=max(64, T // model.config.chunk_sizes[0]))
    block = block_tokens or prefill_block_tokens(model, T)
    for start in range(0, T, block):
        encode_units(model, state, tokens[:, start:start + block])
        if progress:
            progress(min(start + block, T), T)
    return state


def fork(state: PhotonState, batch: int, capacity: int = 64) -> PhotonState:
    """Make a batch of query states that read a batch-1 state's caches as a shared, unmodified prefix."""
    if state.batch != 1:
        raise ValueError(f"fork needs a batch-1 state, got batch {state.batch}")
    caches = [None if cache is None else cache.share_prefix(batch, capacity) for cache in state.caches]
    top = None if state.top is None else state.top.expand(batch, -1)
    carries = [carry.expand(batch, -1) for carry in state.carries]
    return PhotonState(caches, top, carries, state.n_tokens)


@torch.no_grad()
def decode_meta_context(model: Photon, state: PhotonState, pick: Picker, mode: str = RECGEN,
                        forced: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Decode the next meta-context and advance the state; return tokens (B, U) and logits (B, U, V).

    forced (B, U) contains known tokens (>= 0) that replace the sampled ones, as for the partial
    last meta-context of a prompt; -1 marks slots to sample.
    """
    c = model.config
    B, D, R, C1 = state.batch, c.d_model, c.converter_width, c.chunk_sizes[0]
    token_cond, top_forecast, carries = forecast_meta_context(model, state.top, state.carries, B)
    n1 = token_cond.shape[1]

    # Token decoder: every chunk of the meta-context in parallel, one slot per step.
    decoder = model.decoders[0]
    window = decoder.new_cache(B * n1, R + C1 - 1, token_cond.dtype, token_cond.device)
    h = decoder(model.convert(1, token_cond.reshape(-1, D)), window)[:, -1]  # (B * n1, D)
    forced_slots = None if forced is None else forced.view(B, n1, C1)
    tokens = torch.empty(B, n1, C1, dtype=torch.long, device=token_cond.device)
    logits = []
    for slot in range(C1):
        # One matrix product per sequence, not per chunk: see layers.Linear.
        slot_logits = model.lm_head(h.view(B, n1, D))  # (B, n1, V)
        chosen = pick(slot_logits)
        if forced_slots is not None:
            known = forced_slots[:, :, slot]
            chosen = torch.where(known >= 0, known, chosen)
        tokens[:, :, slot] = chosen
        logits.append(slot_logits)
        if slot < C1 - 1:
            h = decoder(model.decoder_embed(chosen.reshape(-1, 1)), window)[:, -1]
    tokens = tokens.view(B, n1 * C1)  # (B, U)
    logits = torch.stack(logits, dim=2).flatten(1, 2)  # (B, U, V)

    # Advance the top stream.
    if mode == HIERGEN or top_forecast is None:
        state.top = model.encode(tokens, state.caches)[-1][:, -1]
    elif mode == RECGEN:
        summary = model.chunkers[-1](top_forecast)  # (B, 1, D)
        state.top = model.encoders[-1](summary, state.caches[-1])[:, -1]
    else:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    state.carries = carries
    state.n_tokens += tokens.shape[1]
    return tokens, logits


def drop_lower_caches(state: PhotonState) -> None:
    """RecGen keeps only the top encoder cache once the prompt is encoded."""
    state.caches = [None] * (len(state.caches) - 1) + [state.caches[-1]]


def photon_steps(model: Photon, state: PhotonState, tail: Tensor, pick: Picker,
                 mode: str = RECGEN) -> Iterator[Tensor]:
    """Yield the tokens of each decoded meta-context (B, U), without end.

    `tail` (B, r) with r < U contains prompt tokens after the last whole meta-context; they are
    forced into the first step and not yielded again.
    """
    U = model.config.tokens_per_unit
    B, r = tail.shape
    if r >= U:
        raise ValueError(f"tail of {r} tokens must be shorter than one meta-context ({U})")
    if mode == RECGEN:
        drop_lower_caches(state)
    forced = None
    if r:
        forced = torch.full((B, U), -1, dtype=torch.long, device=tail.device)
        forced[:, :r] = tail
    first = True
    while True:
        tokens, _ = decode_meta_context(model, state, pick, mode, forced if first else None)
        yield tokens[:, r:] if first else tokens
        first = False


# ---- vanilla --------------------------------------------------------------------------------

@dataclass
class VanillaState:
    cache: StackCache
    last_logits: Tensor  # (B, V) logits for the next token
    n_tokens: int

    def nbytes(self) -> int:
        return self.cache.nbytes()


@torch.no_grad()
def vanilla_prefill(model: Vanilla, tokens: Tensor, block_tokens: int = 2048,
                    progress: Callable[[int, int], None] | None = None) -> VanillaState:
    B, T = tokens.shape
    param = model.lm_head.weight
    cache = model.new_cache(B, max(64, T), param.dtype, param.device)
    logits = None
    for start in range(0, T, block_tokens):
        logits = model(tokens[:, start:start + block_tokens], cache)[:, -1]
        if progress:
            progress(min(start + block_tokens, T), T)
    return VanillaState(cache, logits, T)


@torch.no_grad()
def vanilla_steps(model: Vanilla, state: VanillaState, pick: Picker) -> Iterator[Tensor]:
    """Yield one token per sequence (B, 1) at a time, without end."""
    while True:
        tokens = pick(state.last_logits[:, None])  # (B, 1)
        state.last_logits = model(tokens, state.cache)[:, -1]
        state.n_tokens += 1
        yield tokens
