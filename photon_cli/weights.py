"""Weights files: safetensors with the model config and tokenizer hash in the metadata.

Loading is strict: any missing, unexpected or mis-shaped tensor is an error that names it. The
tensor names and shapes in the file header are checked against the config before any tensor is
read or the model is allocated, so a damaged or foreign file fails fast with WeightsError.
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


# Errors that reading a damaged safetensors file can raise besides SafetensorError.
READ_ERRORS = (SafetensorError, OSError, ValueError, RuntimeError, TypeError, KeyError, OverflowError)
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


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
    if path.is_dir():
        raise WeightsError(f"weights path {path} is a directory; pass --model with a .safetensors file")
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found; pass --model with a .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except READ_ERRORS as error:
        message = " ".join(str(error).split())
        raise WeightsError(
            f"{path} is not a readable safetensors file ({message}); re-download or re-export it"
        ) from None
    if metadata.get("format") != WEIGHTS_FORMAT or "config" not in metadata:
        raise WeightsError(
            f"{path} has no photon config in its metadata (format={metadata.get('format')!r}); "
            "it was not written by photon"
        )
    return metadata


def check_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor | tuple[int, ...]],
                     source: str) -> None:
    """Raise WeightsError listing missing, unexpected and mis-shaped tensors.

    `tensors` maps names to tensors or to shapes (as read from a file header).
    """
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) if isinstance(t, torch.Tensor) else tuple(t) for name, t in tensors.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(
        f"{name} {found[name]} != {expected[name]}"
        for name in set(expected) & set(found)
        if found[name] != expected[name]
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
        with torch.device("meta"):
            shapes_model = build_model(config)  # shapes only, nothing allocated
    except (ValueError, ConfigError, TypeError, AttributeError, RuntimeError, OverflowError,
            RecursionError) as error:
        message = " ".join(str(error).split())
        raise WeightsError(f"{path} has an invalid config in its metadata: {message}") from None
    try:
        with safe_open(str(path), framework="pt") as handle:
            headers = {name: handle.get_slice(name) for name in handle.keys()}
            shapes = {name: tuple(header.get_shape()) for name, header in headers.items()}
            not_float = sorted(f"{name} ({header.get_dtype()})" for name, header in headers.items()
                               if header.get_dtype() not in FLOAT_DTYPES)
            check_state_dict(shapes_model, shapes, str(path))
            if not_float:
                raise WeightsError(f"{path} holds non-float tensors: {', '.join(not_float)}")
            tensors = {name: handle.get_tensor(name) for name in headers}
    except WeightsError:
        raise
    except READ_ERRORS as error:
        message = " ".join(str(error).split())
        raise WeightsError(f"{path} is truncated or corrupt ({message}); re-download it") from None
    model = build_model(config)
    model.load_state_dict(tensors, strict=True)
    model.to(device=device, dtype=dtype).eval()
    return LoadedWeights(model, config, metadata, file_sha256(path), path)
