"""Token sampling, kept apart from the models: greedy, temperature, top-k, top-p, repetition penalty."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


class SamplingError(ValueError):
    """A sampling option is out of range."""


# torch.Generator.manual_seed accepts seeds in this range.
SEED_RANGE = (-(2**63), 2**64 - 1)


@dataclass(frozen=True)
class SamplingOptions:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off; > 1 discourages tokens this answer already generated
    seed: int | None = None
    max_tokens: int = 256
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        floats = {"temperature": self.temperature, "top_p": self.top_p,
                  "repetition_penalty": self.repetition_penalty}
        for name, value in floats.items():
            if not math.isfinite(value):
                raise SamplingError(f"{name} {value} must be a finite number")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise SamplingError(f"seed {self.seed} must be between {SEED_RANGE[0]} and {SEED_RANGE[1]}")
        checks = [
            (self.temperature >= 0, f"temperature {self.temperature} must be >= 0 (0 = greedy)"),
            (self.top_k >= 0, f"top_k {self.top_k} must be >= 0 (0 = off)"),
            (0 < self.top_p <= 1, f"top_p {self.top_p} must be in (0, 1]"),
            (self.repetition_penalty > 0, f"repetition_penalty {self.repetition_penalty} must be > 0"),
            (self.max_tokens >= 1, f"max_tokens {self.max_tokens} must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise SamplingError(message)

    def updated(self, **changes) -> SamplingOptions:
        changes = {k: v for k, v in changes.items() if v is not None}
        if "stop" in changes:
            changes["stop"] = tuple(changes["stop"])
        return replace(self, **changes)


class Sampler:
    """Pick next tokens for B sequences, each possibly decoding several windows at once.

    `seen` (B, V) marks tokens of each sequence for the repetition penalty; the caller updates it
    with `observe`. Logits come in as (B, N, V) and tokens go out as (B, N). The N windows
    (PHOTON's chunks, decoded in parallel) are in text order, so with a repetition penalty each
    window is picked after the ones before it and also avoids the tokens they just picked. With
    a seed, every sequence draws from its own generator seeded with it, so a seeded answer is the
    same alone and in a batch.
    """

    def __init__(self, options: SamplingOptions, batch: int, vocab_size: int,
                 device: torch.device | str = "cpu"):
        self.options = options
        self.seen = torch.zeros(batch, vocab_size, dtype=torch.bool, device=device)
        self.generators = None
        if options.seed is not None:
            self.generators = [torch.Generator(device=device).manual_seed(options.seed)
                               for _ in range(batch)]

    def observe(self, tokens: Tensor) -> None:
        """Mark tokens (B, N) as seen; negative ids are ignored."""
        tokens = tokens.reshape(tokens.shape[0], -1)
        valid = tokens >= 0
        rows = torch.arange(tokens.shape[0], device=tokens.device)[:, None].expand_as(tokens)
        self.seen[rows[valid], tokens[valid]] = True

    def __call__(self, logits: Tensor) -> Tensor:
        logits = logits.float()
        if self.options.repetition_penalty == 1.0:
            return self._pick(logits)
        seen = self.seen.clone()
        rows = torch.arange(logits.shape[0], device=logits.device)
        picked = []
        for window in range(logits.shape[1]):
            penalty = self.options.repetition_penalty
            window_logits = logits[:, window]
            penalised = torch.where(window_logits > 0, window_logits / penalty, window_logits * penalty)
            tokens = self._pick(torch.where(seen, penalised, window_logits)[:, None])[:, 0]
            seen[rows, tokens] = True
            picked.append(tokens)
        return torch.stack(picked, dim=1)

    def _pick(self, logits: Tensor) -> Tensor:
        """Greedy or temperature / top-k / top-p sampling of logits (B, N, V) -> tokens (B, N)."""
        opts = self.options
        B, N, V = logits.shape
        if opts.temperature == 0:
            return logits.argmax(-1)

        logits = logits / opts.temperature
        if opts.top_k and opts.top_k < V:
            kth = torch.topk(logits, opts.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if opts.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            # Drop a token when the tokens ranked above it already reach top_p.
            drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= opts.top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        probs = logits.softmax(-1)
        if self.generators is None:
            return torch.multinomial(probs.reshape(B * N, V), 1).view(B, N)
        rows = [torch.multinomial(probs[row], 1, generator=generator).view(N)
                for row, generator in enumerate(self.generators)]
        return torch.stack(rows)
