"""Weights files: safetensors with the model config and tokenizer hash in the metadata.

Loading is strict: any missing, unexpected or mis-shaped tensor is an error that names it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from photon_cli.config import ConfigError, ModelConfig, PhotonConfig, config_from_dict
from photon_cli.model import Photon
from photon_cli.vanilla import Vanilla

WEIGHTS_FORMAT = "photon-weights"
WEIGHTS_FORMAT_VERSION = 1


class WeightsError(ValueError):
    """A weights file is missing, unreadable, or does not match the model it claims to hold."""


@dataclass
class LoadedWeights:
    model: nn.Module
    config: ModelConfig
    metadata: dict[str, str]
    fingerprint: str  # sha256 of the file bytes
    path: Path


def build_model(config: ModelConfig) -> nn.Module:
    return Photon(config) if isinstance(config, PhotonConfig) else Vanilla(config)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(model: nn.Module, path: Path, tokenizer_sha256: str = "",
                 extra: dict[str, Any] | None = None) -> None:
    """Write the model's tensors and config to `path` atomically (temporary file + rename)."""
    path = Path(path)
    metadata = {
        "format": WEIGHTS_FORMAT,
        "format_version": str(WEIGHTS_FORMAT_VERSION),
        "config": json.dumps(model.config.to_dict()),
        "tokenizer_sha256": tokenizer_sha256,
    }
    for key, value in (extra or {}).items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_metadata(path: Path) -> dict[str, str]:
    """Read the header of a weights file without loading tensors."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found; pass --model with a .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(
            f"{path} is not a readable safetensors file ({error}); re-download or re-export it"
        ) from None
    if metadata.get("format") != WEIGHTS_FORMAT or "config" not in metadata:
        raise WeightsError(
            f"{path} has no photon config in its metadata (format={metadata.get('format')!r}); "
            "it was not written by photon"
        )
    return metadata


def check_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Raise WeightsError listing missing, unexpected and mis-shaped tensors."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = sorted(
        f"{name} {tuple(tensors[name].shape)} != {tuple(expected[name].shape)}"
        for name in set(expected) & set(tensors)
        if tensors[name].shape != expected[name].shape
    )
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"wrong shapes (file != model): {', '.join(mismatched)}")
    if problems:
        raise WeightsError(f"{source} does not match its config; " + "; ".join(problems))


def load_weights(path: Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> LoadedWeights:
    """Build the model named in the file's config and load its tensors strictly."""
    path = Path(path)
    metadata = read_metadata(path)
    try:
        config = config_from_dict(json.loads(metadata["config"]))
    except (json.JSONDecodeError, ConfigError, TypeError) as error:
        raise WeightsError(f"{path} has an invalid config in its metadata: {error}") from None
    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                tensors[name] = handle.get_tensor(name)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise WeightsError(f"{path} is truncated or corrupt ({error}); re-download it") from None
    model = build_model(config)
    check_state_dict(model, tensors, str(path))
    model.load_state_dict(tensors, strict=True)
    model.to(device=device, dtype=dtype).eval()
    return LoadedWeights(model, config, metadata, file_sha256(path), path)
