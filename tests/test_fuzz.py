"""Property tests of the parsers that read outside input: cache files, JSONL batch lines and
weights files. Whatever the bytes, each raises only its documented error type."""

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from photon_cli.doc_cache import CacheError, read_cache, read_header
from photon_cli.engine import Engine, read_document
from photon_cli.sampling import SamplingOptions
from photon_cli.serve import Query, parse_line
from photon_cli.weights import WeightsError, load_weights, read_metadata
from support import DOCUMENT, cache_files

FUZZ = settings(max_examples=50, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    size = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + size]), data[8 + size:]


def join_safetensors(header: dict, body: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + body


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=6)


@st.composite
def mutated_file(draw, data: bytes) -> bytes:
    """Bytes of a safetensors file changed the way damage and foreign writers change them."""
    kind = draw(st.sampled_from(["truncate", "flip", "header"]))
    if kind == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if kind == "flip":
        header_end = 8 + struct.unpack("<Q", data[:8])[0]
        mutable = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            position = draw(st.integers(0, min(len(data) - 1, header_end + 256)))
            mutable[position] = draw(st.integers(0, 255))
        return bytes(mutable)
    header, body = split_safetensors(data)
    name = draw(st.sampled_from(sorted(header)))
    action = draw(st.sampled_from(["drop", "dtype", "shape", "offsets", "replace", "add"]))
    if action == "drop":
        header.pop(name)
    elif action == "add":
        header[draw(st.text(max_size=10))] = draw(JSON_VALUES)
    elif name == "__metadata__":
        key = draw(st.sampled_from(sorted(header[name]) or ["format"]))
        header[name][key] = draw(st.text(max_size=12) | st.sampled_from(["99", "1", "-1", "photon-document-cache"]))
    elif action == "dtype":
        header[name]["dtype"] = draw(st.sampled_from(["F16", "BF16", "F64", "I8", "I64", "U8", "BOOL", "X9"]))
    elif action == "shape":
        header[name]["shape"] = draw(st.lists(st.integers(-2, 2**40), max_size=5))
    elif action == "offsets":
        header[name]["data_offsets"] = draw(st.lists(st.integers(-2, 2**40), min_size=2, max_size=2))
    else:
        header[name] = draw(JSON_VALUES)
    return join_safetensors(header, body)


@pytest.fixture(scope="module")
def cache_sample(tiny_dir, tmp_path_factory):
    """A cache file of the tiny PHOTON model and the engine that wrote it."""
    folder = tmp_path_factory.mktemp("fuzz-cache")
    document = folder / "doc.txt"
    document.write_text(DOCUMENT)
    engine = Engine(tiny_dir / "photon.safetensors", cache_dir=folder / "cache")
    engine.open(read_document(document))
    [path] = cache_files(folder / "cache")
    return engine, read_document(document), path, path.read_bytes()


@FUZZ
@given(data=st.data())
def test_cache_reader_raises_only_cache_error(cache_sample, tmp_path, data):
    _, _, _, original = cache_sample
    path = tmp_path / "fuzzed.safetensors"
    path.write_bytes(data.draw(mutated_file(original)))
    try:
        read_header(path)
        read_cache(path, {})
    except CacheError:
        pass


@FUZZ
@given(data=st.data())
def test_engine_open_survives_any_cache_file(cache_sample, data):
    """The engine loads, or reports and rebuilds, whatever sits at the cache path."""
    engine, document, path, original = cache_sample
    path.write_bytes(data.draw(mutated_file(original)))
    session = engine.open(document)
    assert session.cache_status in ("loaded", "rebuilt")
    assert session.cached_len == len(session.doc_ids) // 16 * 16
    path.write_bytes(original)


TENSOR_NAMES = ["tokens", "top", "carry.0", "encoder.0.layer.0.k", "encoder.0.layer.0.v",
                "encoder.1.layer.0.k", "encoder.1.layer.0.v"]


@st.composite
def tensor_sets(draw):
    tensors = {}
    for name in draw(st.lists(st.sampled_from(TENSOR_NAMES), unique=True)):
        shape = draw(st.lists(st.integers(0, 6), min_size=0, max_size=4))
        dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.int32, torch.bool]))
        fill = draw(st.sampled_from([0.0, 1.0, float("nan"), float("inf")]))
        tensors[name] = torch.full(shape, fill).to(dtype)
    return tensors


@FUZZ
@given(tensors=tensor_sets(), cached_len=st.sampled_from([0, 16, 32]))
def test_state_validation_raises_only_cache_error(cache_sample, tensors, cached_len):
    engine = cache_sample[0]
    try:
        engine._state_from_tensors(tensors, cached_len)
    except CacheError:
        pass


@FUZZ
@given(line=st.text(max_size=200) | st.binary(max_size=200))
def test_parse_line_never_raises_on_text(line):
    assert isinstance(parse_line(0, line, SamplingOptions()), Query)


@FUZZ
@given(record=st.dictionaries(st.sampled_from(["id", "question", "temperature", "top_k", "top_p", "seed",
                                               "repetition_penalty", "max_tokens", "stop", "other"]),
                              JSON_VALUES | st.floats(allow_nan=False) | st.text(max_size=20), max_size=6))
def test_parse_line_never_raises_on_objects(record):
    query = parse_line(0, json.dumps(record), SamplingOptions())
    assert (query.error is None) == (query.options is not None)


@pytest.fixture(scope="module")
def weights_sample(tiny_dir):
    return (tiny_dir / "photon.safetensors").read_bytes()


@FUZZ
@given(data=st.data())
def test_weights_loader_raises_only_weights_error(weights_sample, tmp_path, data):
    path = tmp_path / "fuzzed.safetensors"
    path.write_bytes(data.draw(mutated_file(weights_sample)))
    try:
        read_metadata(path)
        load_weights(path)
    except WeightsError:
        pass
