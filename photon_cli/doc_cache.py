"""The on-disk document cache: one safetensors file per (document, model, dtype).

A cache file holds what generation needs to continue after the document's whole top-level
units: every context encoder's KV cache (batch 1), the last top state and the carried forecasts
(PHOTON), or the layer KV caches (vanilla), plus the document's token ids. The tail of the
document after the last whole unit is encoded at query time.

Identity is a SHA-256 key over named, length-prefixed fields, never a path or an mtime.
Files are written to a temporary file in the same folder, flushed to disk and renamed into
place, under a per-key lock, so a reader sees a complete file or none. A writer killed before
the rename leaves only its temporary file, which the next writer of that key removes.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import sys
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


# Test hook: when this variable names a point, the process writes "photon: paused at POINT" to
# stderr there and sleeps, so a test can send a signal at a known moment. Points: "prefill" (first
# progress callback of the document prefill, before any cache file exists), "write" (cache data
# written to the temporary file, before the rename), "decode" (after the first decoded
# meta-context, after the cache is saved).
PAUSE_ENV = "PHOTON_TEST_PAUSE"
PAUSE_SECONDS = 60


def pause_for_tests(point: str) -> None:
    """Sleep at `point` when PHOTON_TEST_PAUSE names it; otherwise do nothing."""
    if os.environ.get(PAUSE_ENV) == point:
        sys.stderr.write(f"photon: paused at {point}\n")
        sys.stderr.flush()
        time.sleep(PAUSE_SECONDS)


class CacheError(Exception):
    """A cache file cannot be used; the message gives the reason."""


# Errors that reading a damaged safetensors file can raise besides SafetensorError.
READ_ERRORS = (SafetensorError, OSError, ValueError, RuntimeError, TypeError, KeyError, OverflowError)


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
    """Read and validate a cache file's metadata without loading tensors; raise CacheError."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except READ_ERRORS as error:
        raise CacheError(f"corrupt cache file ({one_line(error)})") from None
    if metadata.get("format") != CACHE_FORMAT:
        raise CacheError("not a photon document cache (its metadata has no photon format)")
    found = metadata.get("format_version")
    if found != str(CACHE_FORMAT_VERSION):
        raise CacheError(f"unsupported cache format (found {str(found):.20}, this photon reads {CACHE_FORMAT_VERSION})")
    unknown = sorted(set(metadata) - set(METADATA_FIELDS))
    if unknown:
        raise CacheError(f"unsupported cache format (unknown metadata field {unknown[0]!r:.60}, "
                         f"this photon reads version {CACHE_FORMAT_VERSION} without it)")
    missing = sorted(set(METADATA_FIELDS) - set(metadata))
    if missing:
        raise CacheError(f"corrupt cache file: metadata lacks {', '.join(missing)}")
    for name in ("token_count", "cached_tokens"):
        if not metadata[name].isascii() or not metadata[name].isdigit():
            raise CacheError(f"corrupt cache file: {name} {metadata[name]!r:.40} is not a count")
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
    except READ_ERRORS as error:
        raise CacheError(f"corrupt cache file ({one_line(error)})") from None
    tokens = tensors.get("tokens")
    if (tokens is None or tokens.dim() != 1 or tokens.dtype != torch.int32
            or tokens.numel() != int(metadata["token_count"])):
        raise CacheError("corrupt cache file: token ids do not match token_count")
    return CachedDocument(tensors, metadata, path)


class CacheStore:
    def __init__(self, directory: Path | None = None):
        self.directory = Path(directory) if directory else default_cache_dir()

    def path_for(self, key: str) -> Path:
        return self.directory / f"{key}{SUFFIX}"

    @contextmanager
    def lock(self, key: str) -> Iterator[bool]:
        """Hold an exclusive lock for `key` so concurrent builders wait for one another.

        Yields True while the lock is held. Yields False when no lock file can be created there
        (a read-only folder, or a path that is not a folder), and the caller then works unlocked.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            handle = open(self.directory / f"{key}.lock", "a")
        except OSError as error:
            log.warning("cannot lock the document cache in %s (%s); continuing without it",
                        self.directory, error.strerror or error)
            yield False
            return
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("waiting for another photon process that is encoding this document")
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self.remove_temporary_files(key)
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def remove_temporary_files(self, key: str) -> None:
        """Delete temporary files of `key` left by killed writers; call only under the key's lock."""
        for leftover in self.directory.glob(f".{key}.*.tmp"):
            leftover.unlink(missing_ok=True)

    def write(self, key: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
        """Write atomically: a temporary file in the cache folder, fsync, then rename over the target.

        Raises OSError when the file cannot be written (read-only folder, disk full).
        """
        path = self.path_for(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        full = {"format": CACHE_FORMAT, "format_version": str(CACHE_FORMAT_VERSION),
                "photon_version": __version__, "key": key, "created": str(int(time.time())),
                **metadata}
        tmp = path.with_name(f".{key}.{os.getpid()}.tmp")
        try:
            try:
                save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp),
                          metadata=full)
            except SafetensorError as error:
                # safetensors reports write failures (such as a full disk) as SafetensorError.
                raise OSError(errno.EIO, one_line(error), str(tmp)) from None
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            pause_for_tests("write")
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


def one_line(error: BaseException) -> str:
    """Return an exception's message on one line (safetensors and OS messages can span several)."""
    return " ".join(str(error).split())
