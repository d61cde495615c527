"""PHOTON: a hierarchical autoregressive language model (Ichikawa et al., arXiv 2512.20687).

Bottom-up, context encoders F^(l) compress tokens into coarser unit streams. Top-down, latent
decoders G^(l) forecast the units of the level below, and the token decoder G^(1) rebuilds
tokens inside bounded chunks. The teacher-forced `forward` here is the oracle that every generation path
(prefill, HierGen, RecGen) is tested against.

Dimension letters: B batch, T tokens, L levels, M_l units at level l, C_l chunk length,
R converter width, D width, V vocabulary, N windows (flattened batch x units).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from photon_cli.config import PhotonConfig
from photon_cli.layers import Linear, RMSNorm, TransformerStack


class Chunker(nn.Module):
    """Level l >= 2 chunker: RMSNorm over C_l concatenated units, then Linear(C_l * D -> D)."""

    def __init__(self, chunk: int, d_model: int, eps: float):
        super().__init__()
        self.chunk = chunk
        self.norm = RMSNorm(chunk * d_model, eps)
        self.proj = Linear(chunk * d_model, d_model, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        B, M, D = x.shape
        x = x.reshape(B, M // self.chunk, self.chunk * D)  # (B, M / C, C * D)
        return self.proj(self.norm(x))  # (B, M / C, D)


class Photon(nn.Module):
    def __init__(self, config: PhotonConfig):
        super().__init__()
        self.config = config
        c = config
        D, R = c.d_model, c.converter_width

        def stack(n_layers: int) -> TransformerStack:
            return TransformerStack(n_layers, D, c.n_heads, c.d_ff, c.rope_base, c.rope_scale,
                                    c.norm_eps)

        # Bottom-up: encoder embedding (width D / C_1), chunkers for levels 2..L, encoders 1..L.
        self.token_embed = nn.Embedding(c.vocab_size, c.d_token_embed)
        self.chunkers = nn.ModuleList(Chunker(C, D, c.norm_eps) for C in c.chunk_sizes[1:])
        self.encoders = nn.ModuleList(stack(n) for n in c.encoder_layers)

        # Top-down, indexed by level - 1: converters, start latents, decoders (0 = token decoder).
        self.converters = nn.ModuleList(Linear(D, R * D, bias=True) for _ in c.chunk_sizes)
        self.start_latents = nn.Parameter(torch.empty(c.n_levels, D))
        self.decoders = nn.ModuleList(stack(n) for n in c.decoder_layers)
        self.decoder_embed = nn.Embedding(c.vocab_size, D)
        self.lm_head = Linear(D, c.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        # Random, not zero: RMSNorm of an exact-zero start latent has a near-infinite gradient.
        nn.init.normal_(self.start_latents, mean=0.0, std=std)

    # ---- bottom-up -------------------------------------------------------------------------

    def encode(self, tokens: Tensor, caches: list | None = None, levels: int | None = None) -> list[Tensor]:
        """Run the context encoders; return [X^(1), ..., X^(L)], X^(l) of shape (B, M_l, D).

        `tokens` (B, T) must hold whole top-level units. With caches, the stacks continue from
        the cached positions. `levels` stops after that many levels.
        """
        c = self.config
        B, T = tokens.shape
        x = self.token_embed(tokens).reshape(B, T // c.chunk_sizes[0], c.d_model)  # (B, M_1, D)
        states = []
        for level in range(levels or c.n_levels):
            if level > 0:
                x = self.chunkers[level - 1](x)  # (B, M_{l}, D)
            x = self.encoders[level](x, None if caches is None else caches[level])
            states.append(x)
        return states

    # ---- top-down --------------------------------------------------------------------------

    def convert(self, level: int, cond: Tensor) -> Tensor:
        """Converter U^(l): (N, D) conditioning units -> (N, R, D) prefix vectors."""
        N, D = cond.shape
        return self.converters[level - 1](cond).view(N, self.config.converter_width, D)

    def shift(self, level: int, units: Tensor) -> Tensor:
        """Shift a unit stream (B, M, D) right by one, filling the front with the start latent."""
        B, _, D = units.shape
        start = self.start_latents[level - 1].to(units.dtype).expand(B, 1, D)
        return torch.cat([start, units[:, :-1]], dim=1)  # (B, M, D)

    def forecast(self, level: int, cond: Tensor) -> Tensor:
        """Latent decoder G^(l), l >= 2: (N, D) conditioning -> (N, C_l, D) forecasts, free-running.

        Each forecast is the last output of G^(l) over [prefix ; earlier forecasts], exactly as
        at decode time, so training sees the same inputs as generation.
        """
        stack = self.decoders[level - 1]
        n_steps = self.config.chunk_sizes[level - 1]
        if torch.is_grad_enabled():
            cache = stack.new_training_cache()
        else:
            window = self.config.converter_width + n_steps - 1
            cache = stack.new_cache(cond.shape[0], window, cond.dtype, cond.device)
        h = stack(self.convert(level, cond), cache)[:, -1:]  # (N, 1, D)
        outputs = [h]
        for _ in range(n_steps - 1):
            h = stack(h, cache)
            outputs.append(h)
        return torch.cat(outputs, dim=1)  # (N, C_l, D)

    def token_logits(self, cond: Tensor, tokens: Tensor) -> Tensor:
        """Token decoder over whole chunks: cond (N, D) = X̂^(1) of the previous unit, tokens (N, C_1).

        Slot j is predicted from [prefix ; tokens 1..j-1]; the first slot from the prefix alone.
        """
        R = self.config.converter_width
        prefix = self.convert(1, cond)  # (N, R, D)
        emb = self.decoder_embed(tokens[:, :-1])  # (N, C_1 - 1, D)
        h = self.decoders[0](torch.cat([prefix, emb], dim=1))  # (N, R + C_1 - 1, D)
        return self.lm_head(h[:, R - 1:])  # (N, C_1, V)

    def decode_latents(self, top: Tensor) -> list[Tensor]:
        """Teacher-forced top-down pass from X^(L) (B, M_L, D).

        Returns [X̂^(L-1), ..., X̂^(1)] (free-running forecasts) followed by the shifted level-1
        conditioning (B, M_1, D) that the token decoder reads.
        """
        c = self.config
        B, _, D = top.shape
        cond = top
        outputs = []
        for level in range(c.n_levels, 1, -1):
            shifted = self.shift(level, cond)  # (B, M_l, D)
            latents = self.forecast(level, shifted.reshape(-1, D))  # (B * M_l, C_l, D)
            cond = latents.reshape(B, -1, D)  # (B, M_{l-1}, D)
            outputs.append(cond)
        outputs.append(self.shift(1, cond))
        return outputs

    def forward(self, tokens: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Teacher-forced pass: returns logits (B, T, V), encoder states and forecasts.

        logits[:, i] predicts tokens[:, i] (not i + 1): position i's chunk decoder has seen only
        the tokens before it. T must be a multiple of prod(C_l).
        """
        c = self.config
        B, T = tokens.shape
        if T % c.tokens_per_unit:
            raise ValueError(f"sequence length {T} is not a multiple of {c.tokens_per_unit}")
        states = self.encode(tokens)
        top_down = self.decode_latents(states[-1])
        cond = top_down[-1]  # (B, M_1, D)
        chunks = tokens.reshape(-1, c.chunk_sizes[0])  # (B * M_1, C_1)
        logits = self.token_logits(cond.reshape(-1, c.d_model), chunks)
        return logits.reshape(B, T, -1), states, top_down[:-1]

    def loss(self, tokens: Tensor, weights: Tensor | None = None) -> dict[str, Tensor]:
        """L = L_token + alpha * L_rec.

        L_token is cross-entropy on tokens 2..T (the first token has no context, and a vanilla
        model cannot score it either). L_rec is the mean cosine distance between each forecast
        X̂^(l) and the detached encoder state X^(l), for l = 1..L-1; detaching keeps the encoder
        from collapsing toward the decoder. `weights` (B, T), when given, weights each token's
        cross-entropy in L (a weighted mean); the reported token_loss stays the plain mean.
        """
        logits, states, forecasts = self(tokens)
        token_loss, weighted_loss = token_losses(logits[:, 1:], tokens[:, 1:],
                                                 None if weights is None else weights[:, 1:])
        rec_terms = []
        for forecast, state in zip(forecasts, reversed(states[:-1])):
            cos = F.cosine_similarity(forecast.float(), state.detach().float(), dim=-1)
            rec_terms.append((1 - cos).mean())
        rec_loss = torch.stack(rec_terms).mean() if rec_terms else token_loss.new_zeros(())
        total = weighted_loss + self.config.rec_loss_weight * rec_loss
        return {"loss": total, "token_loss": token_loss, "rec_loss": rec_loss, "logits": logits}


def token_losses(logits: Tensor, targets: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor]:
    """Return (mean cross-entropy, weighted mean cross-entropy) of logits (B, T, V) on targets (B, T)."""
    per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="none")
    mean = per_token.mean()
    if weights is None:
        return mean, mean
    weights = weights.reshape(-1).to(per_token.dtype)
    return mean, (per_token * weights).sum() / weights.sum()


def count_parameters(model: nn.Module, include_start_latents: bool = True) -> int:
    """Count parameters. The paper's tables list modules only, so their totals leave out the
    learned start latents (L x D values); pass include_start_latents=False to compare."""
    return sum(p.numel() for name, p in model.named_parameters()
               if include_start_latents or name != "start_latents")
