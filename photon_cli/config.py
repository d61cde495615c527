"""Model configurations: PHOTON and the vanilla Transformer baseline.

Dimension letters used across the package:
    B batch, T tokens, L levels, M_l units at level l (M_0 = T, M_l = M_{l-1} / C_l),
    C_l chunk length at level l, R converter width, D width, H heads, K head dim, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing, unknown or inconsistent."""


def _from_dict(cls, data: dict[str, Any]):
    """Build a config dataclass from a dict, rejecting unknown keys and turning lists into tuples."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys {unknown}; known keys are {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**values)


@dataclass(frozen=True)
class PhotonConfig:
    """A PHOTON hierarchy: L context encoders bottom-up, L decoders top-down.

    Level 1 chunks C_1 token embeddings of width D / C_1 by concatenation. Levels above chunk with
    RMSNorm + Linear(C_l * D -> D). Each level has a converter Linear(D -> R * D) and a learned
    start latent. Decoder level 1 is the token decoder (own embedding, untied head); the decoders
    above are latent decoders that forecast C_l units of the level below, free-running.
    """

    vocab_size: int
    d_model: int
    n_heads: int
    d_ff: int
    chunk_sizes: tuple[int, ...] = (4, 4)
    encoder_layers: tuple[int, ...] = (2, 2)  # context encoder F^(l), l = 1..L
    decoder_layers: tuple[int, ...] = (2, 2)  # decoder G^(l), l = 1..L (G^(1) = token decoder)
    converter_width: int = 2
    rope_base: float = 10000.0
    rope_scale: float = 1.0  # linear position interpolation: positions are divided by this
    norm_eps: float = 1e-5
    rec_loss_weight: float = 0.3  # alpha in L = L_token + alpha * L_rec
    train_context: int = 1024  # maximum sequence length (tokens) the weights were trained on
    max_context: int = 262144  # maximum document length (tokens) `ask` accepts without --truncate
    init_std: float = 0.02

    def __post_init__(self) -> None:
        n_levels = len(self.chunk_sizes)
        if n_levels < 1:
            raise ConfigError("chunk_sizes must name at least one level")
        if len(self.encoder_layers) != n_levels or len(self.decoder_layers) != n_levels:
            raise ConfigError(
                f"encoder_layers {self.encoder_layers} and decoder_layers {self.decoder_layers} "
                f"need one entry per level ({n_levels} levels from chunk_sizes {self.chunk_sizes})"
            )
        if any(c < 2 for c in self.chunk_sizes):
            # Prefill relies on C_l >= 2: the last forecast of a meta-context then never depends
            # on the carry from the meta-context before it.
            raise ConfigError(f"every chunk size must be >= 2, got {self.chunk_sizes}")
        if self.d_model % self.chunk_sizes[0]:
            raise ConfigError(
                f"d_model {self.d_model} must be divisible by chunk_sizes[0] {self.chunk_sizes[0]}"
            )
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model {self.d_model} must be divisible by n_heads {self.n_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head dim {self.head_dim} must be even for RoPE")
        if self.converter_width < 1 or self.rope_scale <= 0 or self.train_context < 1:
            raise ConfigError("converter_width, rope_scale and train_context must be positive")
        if self.train_context % self.tokens_per_unit:
            raise ConfigError(
                f"train_context {self.train_context} must be a multiple of {self.tokens_per_unit}"
            )

    @property
    def n_levels(self) -> int:
        return len(self.chunk_sizes)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def d_token_embed(self) -> int:
        """Width D_0 = D / C_1 of the encoder token embedding."""
        return self.d_model // self.chunk_sizes[0]

    @property
    def tokens_per_unit(self) -> int:
        """Tokens in one top-level unit (a meta-context): the product of all C_l."""
        return math.prod(self.chunk_sizes)

    def tokens_per_level_unit(self, level: int) -> int:
        """Tokens covered by one unit of `level` (1-based)."""
        return math.prod(self.chunk_sizes[:level])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "photon", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhotonConfig:
        data = dict(data)
        data.pop("kind", None)
        return _from_dict(cls, data)


@dataclass(frozen=True)
class VanillaConfig:
    """A LLaMA-style decoder-only Transformer built from the same blocks as PHOTON."""

    vocab_size: int
    d_model: int
    n_heads: int
    d_ff: int
    n_layers: int
    rope_base: float = 10000.0
    rope_scale: float = 1.0
    norm_eps: float = 1e-5
    train_context: int = 1024
    # The KV cache grows by 2 * n_layers * D values per token, 16x PHOTON's top stream.
    max_context: int = 32768
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ConfigError(
                f"d_model {self.d_model} must split into {self.n_heads} heads of even width"
            )
        if self.n_layers < 1 or self.rope_scale <= 0:
            raise ConfigError("n_layers and rope_scale must be positive")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "vanilla", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VanillaConfig:
        data = dict(data)
        data.pop("kind", None)
        return _from_dict(cls, data)


ModelConfig = PhotonConfig | VanillaConfig


def config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Build the config named by data["kind"] ("photon" or "vanilla")."""
    kind = data.get("kind")
    if kind == "photon":
        return PhotonConfig.from_dict(data)
    if kind == "vanilla":
        return VanillaConfig.from_dict(data)
    raise ConfigError(f"config kind {kind!r} is not 'photon' or 'vanilla'")


PRESETS: dict[str, ModelConfig] = {
    # CPU unit tests: D = 64, one layer per stack, 256-token vocabulary.
    "tiny": PhotonConfig(vocab_size=256, d_model=64, n_heads=4, d_ff=128,
                         encoder_layers=(1, 1), decoder_layers=(1, 1), train_context=256),
    "tiny-vanilla": VanillaConfig(vocab_size=256, d_model=64, n_heads=4, d_ff=128, n_layers=4,
                                  train_context=256),
    # The shipped model: about 11.7M parameters on an 8192-token vocabulary.
    "small": PhotonConfig(vocab_size=8192, d_model=256, n_heads=4, d_ff=704),
    # The baseline at the same width: 8 layers, about 10.7M parameters.
    "vanilla-small": VanillaConfig(vocab_size=8192, d_model=256, n_heads=4, d_ff=704, n_layers=8),
    # PHOTON 600M from arXiv 2512.20687 (LLaMA 32k vocabulary, D = 1664, 4 layers per stack).
    "600m": PhotonConfig(vocab_size=32000, d_model=1664, n_heads=32, d_ff=4096,
                         encoder_layers=(4, 4), decoder_layers=(4, 4), train_context=2048),
    "vanilla-600m": VanillaConfig(vocab_size=32000, d_model=1664, n_heads=32, d_ff=4096,
                                  n_layers=16, train_context=2048),
}
