"""Cache files on disk: unsupported and corrupt files are reported in one line and rebuilt,
`cache info` shows what a file holds, and an unwritable cache folder never costs the answer."""

import errno
import hashlib
import json
import os

import pytest
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import photon_cli.doc_cache as doc_cache
from photon_cli import __version__
from photon_cli.doc_cache import CACHE_FORMAT_VERSION, read_header
from photon_cli.engine import NORMALIZATION
from support import (DOCUMENT, ask_json, cache_files, invoke, model_args, stderr_lines,
                     temporary_files)


@pytest.fixture
def document(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text(DOCUMENT)
    return path


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


def rewrite_metadata(path, **changes):
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    save_file(tensors, str(path), metadata={**metadata, **changes})


def assert_rebuilt_after(tiny_dir, document, cache_dir, expected_message):
    cold = ask_json(tiny_dir, document, "Who?", "--no-cache")
    result = invoke("ask", document, "Who?", *model_args(tiny_dir), "--json", "-n", 24)
    record = json.loads(result.stdout)

    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    warnings = stderr_lines(result)
    assert len(warnings) == 1, warnings
    assert expected_message in warnings[0]
    assert "rebuilding" in warnings[0]
    assert record["cache"] == "rebuilt"
    assert expected_message in record["cache_reason"]
    assert record["answer"] == cold["answer"]
    [cache] = cache_files(cache_dir)
    assert read_header(cache)["format_version"] == str(CACHE_FORMAT_VERSION)


def test_future_format_version_rebuilt(tiny_dir, document, cache_dir):
    ask_json(tiny_dir, document, "Who?")
    [cache] = cache_files(cache_dir)
    rewrite_metadata(cache, format_version="99")
    assert_rebuilt_after(tiny_dir, document, cache_dir,
                         f"unsupported cache format (found 99, this photon reads {CACHE_FORMAT_VERSION})")


def test_unknown_metadata_field_rebuilt(tiny_dir, document, cache_dir):
    ask_json(tiny_dir, document, "Who?")
    [cache] = cache_files(cache_dir)
    rewrite_metadata(cache, compression="zstd")
    assert_rebuilt_after(tiny_dir, document, cache_dir,
                         "unsupported cache format (unknown metadata field 'compression'")


@pytest.mark.parametrize("keep", ["half", "8 bytes"])
def test_truncated_cache_rebuilt(tiny_dir, document, cache_dir, keep):
    ask_json(tiny_dir, document, "Who?")
    [cache] = cache_files(cache_dir)
    data = cache.read_bytes()
    cache.write_bytes(data[:len(data) // 2] if keep == "half" else data[:8])
    assert_rebuilt_after(tiny_dir, document, cache_dir, "corrupt cache file")


def test_cache_with_changed_tensor_rebuilt(tiny_dir, document, cache_dir):
    """A file whose tensors do not fit the model (same header fields) is rebuilt, not loaded."""
    import torch

    ask_json(tiny_dir, document, "Who?")
    [cache] = cache_files(cache_dir)
    with safe_open(str(cache), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    tensors["top"] = torch.full_like(tensors["top"], float("nan"))
    save_file(tensors, str(cache), metadata=metadata)
    assert_rebuilt_after(tiny_dir, document, cache_dir, "holds non-finite values")


def test_unsupported_cache_in_info_and_ls(tiny_dir, document, cache_dir):
    ask_json(tiny_dir, document, "Who?")
    [cache] = cache_files(cache_dir)
    rewrite_metadata(cache, format_version="99")

    info = invoke("cache", "info", cache)
    listing = invoke("cache", "ls", "--json")

    assert info.exit_code == 1
    assert "Traceback" not in info.output
    assert len(stderr_lines(info)) == 1
    assert f"unsupported cache format (found 99, this photon reads {CACHE_FORMAT_VERSION})" in info.stderr
    [row] = [json.loads(line) for line in listing.stdout.splitlines()]
    assert row["metadata"] is None
    assert row["error"].startswith("unsupported cache format (found 99")


def test_cache_info_fields(tiny_dir, document, cache_dir):
    record = ask_json(tiny_dir, document, "Who?")
    weights = tiny_dir / "photon.safetensors"
    [cache] = cache_files(cache_dir)

    result = invoke("cache", "info", document)
    info = json.loads(result.stdout)

    assert result.exit_code == 0, result.output
    assert info["source_name"] == str(document)
    assert info["content_sha256"] == hashlib.sha256(DOCUMENT.encode()).hexdigest()
    assert info["token_count"] == record["usage"]["document_tokens"]
    assert info["cached_tokens"] == info["token_count"] // 16 * 16
    assert info["preview"] == DOCUMENT[:120]
    assert info["weights_fingerprint"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert info["model_kind"] == "photon"
    assert info["format_version"] == CACHE_FORMAT_VERSION
    assert info["photon_version"] == __version__
    assert info["dtype"] == "float32"
    assert info["normalization"] == NORMALIZATION
    assert info["size_bytes"] == cache.stat().st_size
    assert info["path"] == str(cache)


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def safetensors_no_space(*args, **kwargs):
    raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                          "message: \"No space left on device\" })")


@pytest.mark.parametrize("failing_save", [no_space, safetensors_no_space])
def test_full_disk_still_answers(tiny_dir, document, cache_dir, monkeypatch, failing_save):
    cold = ask_json(tiny_dir, document, "Who?", "--no-cache")
    monkeypatch.setattr(doc_cache, "save_file", failing_save)

    result = invoke("ask", document, "Who?", *model_args(tiny_dir), "--json", "-n", 24)
    record = json.loads(result.stdout)

    assert result.exit_code == 0, result.output
    assert record["answer"] == cold["answer"]
    assert record["cache"] == "not saved"
    assert "No space left on device" in record["cache_reason"]
    [warning] = stderr_lines(result)
    assert warning.startswith("WARNING: document cache not saved")
    assert "No space left on device" in warning
    assert "the answer is unaffected" in warning
    assert cache_files(cache_dir) == []
    assert temporary_files(cache_dir) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_cache_folder_still_answers(tiny_dir, document, cache_dir):
    cold = ask_json(tiny_dir, document, "Who?", "--no-cache")
    cache_dir.mkdir()
    cache_dir.chmod(0o555)
    try:
        result = invoke("ask", document, "Who?", *model_args(tiny_dir), "--json", "-n", 24)
    finally:
        cache_dir.chmod(0o755)
    record = json.loads(result.stdout)
    assert result.exit_code == 0, result.output
    assert record["answer"] == cold["answer"]
    assert record["cache"] == "not saved"
    assert "cache" in result.stderr


def test_cache_folder_that_is_a_file_still_answers(tiny_dir, document, tmp_path):
    """A cache folder path that names a regular file blocks every write, even for root."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    cold = ask_json(tiny_dir, document, "Who?", "--no-cache")

    result = invoke("ask", document, "Who?", *model_args(tiny_dir), "--json", "-n", 24,
                    "--cache-dir", blocker)
    record = json.loads(result.stdout)

    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert record["answer"] == cold["answer"]
    assert record["cache"] == "not saved"
    assert "cannot lock the document cache" in result.stderr
    assert "document cache not saved" in result.stderr


def test_leftover_temporary_file_removed(tiny_dir, document, cache_dir):
    """A temporary file left by a killed writer goes when the next run builds that cache."""
    ask_json(tiny_dir, document, "Who?")
    [cache] = cache_files(cache_dir)
    leftover = cache_dir / f".{cache.stem}.99999.tmp"
    leftover.write_bytes(b"partial")
    cache.unlink()

    record = ask_json(tiny_dir, document, "Who?")

    assert record["cache"] == "built"
    assert not leftover.exists()
    assert len(cache_files(cache_dir)) == 1
