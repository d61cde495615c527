"""The on-disk document cache: one safetensors file per (document, model, dtype).

A cache file holds what generation needs to continue after the document's whole top-level
units: every context encoder's KV cache (batch 1), the last top state and the carried forecasts
(PHOTON), or the layer KV caches (vanilla), plus the document's token ids. The tail of the
document after the last whole unit is encoded at query time.

Identity is a SHA-256 key over named, length-prefixed fields, never a path or an mtime.
Files are written to a temporary file in the same folder and renamed into place, under a
per-key lock, so a reader sees a complete file or none.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from photon_cli import __version__

log = logging.getLogger(__name__)

CACHE_FORMAT = "photon-document-cache"
CACHE_FORMAT_VERSION = 1
SUFFIX = ".safetensors"
# Metadata every cache file must carry; anything else is an unknown field.
METADATA_FIELDS = (
    "format", "format_version", "photon_version", "key", "weights_fingerprint", "model_kind",
    "config", "tokenizer_sha256", "normalization", "dtype", "token_count", "cached_tokens",
    "source_name", "content_sha256", "preview", "created",
)


class CacheError(Exception):
    """A cache file cannot be used; the message says why."""


def default_cache_dir() -> Path:
    env = os.environ.get("PHOTON_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "photon"


def cache_key(fields: dict[str, str]) -> str:
    """SHA-256 over sorted, length-prefixed (name, value) pairs, so values cannot run together."""
    digest = hashlib.sha256()
    for name in sorted(fields):
        for part in (name.encode(), str(fields[name]).encode()):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()


@dataclass
class CachedDocument:
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    path: Path


def read_header(path: Path) -> dict[str, str]:
    """Read and validate a cache file's metadata without loading tensors."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CacheError(f"corrupt cache file {path.name} ({error})") from None
    if metadata.get("format") != CACHE_FORMAT:
        raise CacheError(f"{path.name} is not a photon document cache")
    found = metadata.get("format_version")
    if found != str(CACHE_FORMAT_VERSION):
        raise CacheError(f"unsupported cache format (found {found}, this photon reads {CACHE_FORMAT_VERSION})")
    unknown = sorted(set(metadata) - set(METADATA_FIELDS))
    missing = sorted(set(METADATA_FIELDS) - set(metadata))
    if unknown or missing:
        raise CacheError(f"cache metadata has unknown fields {unknown} or lacks {missing}")
    return metadata


def read_cache(path: Path, expected: dict[str, str]) -> CachedDocument:
    """Load a cache file and check each expected metadata field; raise CacheError with the reason."""
    metadata = read_header(path)
    for name, value in expected.items():
        if metadata.get(name) != value:
            raise CacheError(f"cache field {name} is {metadata.get(name)!r:.80}, expected {value!r:.80}")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                tensors[name] = handle.get_tensor(name)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CacheError(f"corrupt cache file {path.name} ({error})") from None
    tokens = tensors.get("tokens")
    if tokens is None or tokens.dim() != 1 or tokens.numel() != int(metadata["token_count"]):
        raise CacheError(f"corrupt cache file {path.name}: token ids do not match token_count")
    return CachedDocument(tensors, metadata, path)


class CacheStore:
    def __init__(self, directory: Path | None = None):
        self.directory = Path(directory) if directory else default_cache_dir()

    def path_for(self, key: str) -> Path:
        return self.directory / f"{key}{SUFFIX}"

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold an exclusive lock for `key` so concurrent builders wait for one another."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / f"{key}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def write(self, key: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
        """Write atomically: a temporary file in the cache folder, then rename over the target."""
        path = self.path_for(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        full = {"format": CACHE_FORMAT, "format_version": str(CACHE_FORMAT_VERSION),
                "photon_version": __version__, "key": key, "created": str(int(time.time())),
                **metadata}
        tmp = path.with_name(f".{key}.{os.getpid()}.tmp")
        try:
            save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp),
                      metadata=full)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def entries(self) -> list[tuple[Path, dict[str, str] | None, str | None]]:
        """Every cache file with its metadata, or None and the reason it cannot be read."""
        if not self.directory.is_dir():
            return []
        rows = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            try:
                rows.append((path, read_header(path), None))
            except CacheError as error:
                rows.append((path, None, str(error)))
        return rows

    def find_other_versions(self, content_sha256: str, key: str) -> list[dict[str, str]]:
        """Metadata of caches for the same document content under other keys (other weights, dtype...)."""
        return [meta for path, meta, _ in self.entries()
                if meta and meta["content_sha256"] == content_sha256 and meta["key"] != key]

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        path.with_suffix(".lock").unlink(missing_ok=True)

    def clear(self) -> int:
        """Remove every cache file, lock and leftover temporary file; return how many caches went."""
        if not self.directory.is_dir():
            return 0
        count = 0
        for path in self.directory.iterdir():
            if path.suffix == SUFFIX:
                count += 1
            if path.suffix in (SUFFIX, ".lock", ".tmp"):
                path.unlink(missing_ok=True)
        return count


def describe_difference(current: dict[str, str], other: dict[str, str]) -> str:
    """Name the fields that make another cache of the same document unusable now."""
    names = ("weights_fingerprint", "config", "tokenizer_sha256", "dtype", "normalization")
    changed = [n for n in names if current.get(n) != other.get(n)]
    if not changed:
        return "its key differs"
    parts = []
    for name in changed:
        old, new = str(other.get(name)), str(current.get(name))
        if name.endswith(("fingerprint", "sha256")):
            old, new = old[:12], new[:12]
        parts.append(f"{name} {old:.40} -> {new:.40}")
    return ", ".join(parts)


def metadata_json(value) -> str:
    return json.dumps(value, sort_keys=True)
