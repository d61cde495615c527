"""Document cache identity and reuse: the same greedy answer with and without the cache, in any
process and in any batch; exact whole-unit caching; a key that only the named fields decide."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

import photon_cli.engine as engine_module
from photon_cli.config import PRESETS
from photon_cli.doc_cache import CACHE_FORMAT_VERSION, cache_key, read_header
from photon_cli.engine import NORMALIZATION, Engine, read_document
from photon_cli.model import Photon
from photon_cli.sampling import Sampler, SamplingOptions
from photon_cli.tokenizer import tokenizer_sha256
from photon_cli.weights import save_weights
from support import (DOCUMENT, EIGHT_QUESTIONS, ask_json, cache_files, digits_text, invoke,
                     model_args, photon_env, run_photon)

UNIT = 16  # tokens per meta-context of the tiny PHOTON config


@pytest.fixture
def document(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text(DOCUMENT)
    return path


def serve_answers(tiny_dir, document, tmp_path, questions, kind="photon", *extra):
    queries = tmp_path / "queries.jsonl"
    queries.write_text("\n".join(json.dumps({"id": i, "question": q}) for i, q in enumerate(questions)))
    out = tmp_path / "answers.jsonl"
    result = invoke("serve-cache", document, "-i", queries, "-o", out, "--batch-size", 8,
                    *model_args(tiny_dir, kind), "-n", 40, *extra)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize("kind", ["photon", "vanilla"])
def test_greedy_answer_identical_everywhere(tiny_dir, document, tmp_path, kind):
    """No cache, a fresh cache, a cache loaded by another process, a batch of eight and a reused
    session all give the same greedy answer."""
    question = EIGHT_QUESTIONS[3]
    cold = ask_json(tiny_dir, document, question, "-n", 40, "--no-cache", kind=kind)
    built = ask_json(tiny_dir, document, question, "-n", 40, kind=kind)
    assert built["cache"] == "built"

    other_process = run_photon("ask", document, question, *model_args(tiny_dir, kind), "--json", "-n", 40,
                               env=photon_env(PYTHONHASHSEED="4242"))
    assert other_process.returncode == 0, other_process.stderr
    loaded = json.loads(other_process.stdout)
    assert loaded["cache"] == "loaded"

    engine = Engine(tiny_dir / f"{kind}.safetensors", cache_dir=tmp_path / "cache")
    session = engine.open(read_document(document))
    lengths = {len(engine.question_ids(session, q)) for q in EIGHT_QUESTIONS}
    assert lengths == {len(engine.question_ids(session, question))}  # one batch of eight
    batched = serve_answers(tiny_dir, document, tmp_path, EIGHT_QUESTIONS, kind)[3]

    options = SamplingOptions(max_tokens=40)
    engine.answer(session, "What is the first word?", options)
    after_other_question = engine.answer(session, question, options)

    assert cold["answer"] == built["answer"]
    assert loaded["answer"] == cold["answer"]
    assert batched["answer"] == cold["answer"]
    assert after_other_question.text == cold["answer"]
    assert cold["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize("kind,mode", [("photon", "recgen"), ("photon", "hiergen"), ("vanilla", "recgen")])
def test_batch_row_logits_bit_identical(tiny_dir, document, monkeypatch, kind, mode):
    """Every logit a query gets alone equals, bit for bit, the one it gets in a batch of eight."""
    recorded = []

    class RecordingSampler(Sampler):
        def __call__(self, logits):
            recorded.append(logits.clone())
            return super().__call__(logits)

    monkeypatch.setattr(engine_module, "Sampler", RecordingSampler)
    engine = Engine(tiny_dir / f"{kind}.safetensors", use_cache=False)
    session = engine.open(read_document(document))
    queries = [engine.question_ids(session, q) for q in EIGHT_QUESTIONS]
    options = SamplingOptions(max_tokens=2 * UNIT)

    engine.generate_batch(session, queries, options, mode)
    batched = torch.cat(recorded, dim=1)
    for row, query in enumerate(queries):
        recorded.clear()
        engine.generate_batch(session, [query], options, mode)
        alone = torch.cat(recorded, dim=1)[0]
        assert torch.equal(alone, batched[row]), f"row {row} differs by {(alone - batched[row]).abs().max()}"


def test_seeded_sample_same_alone_and_batched(tiny_dir, document):
    engine = Engine(tiny_dir / "photon.safetensors", use_cache=False)
    session = engine.open(read_document(document))
    queries = [engine.question_ids(session, q) for q in EIGHT_QUESTIONS]
    options = SamplingOptions(temperature=1.5, seed=7, max_tokens=20)

    batched = engine.generate_batch(session, queries, options)
    alone = engine.generate_batch(session, [queries[5]], options)[0]

    assert alone.text == batched[5].text


def test_prefix_document_answers_like_cold_run(tiny_dir, tmp_path):
    """After caching document A+B, asking about A alone uses A's own cache, not A+B's."""
    part_a = "The harbour master keeps the blue ledger in the lighthouse. " * 4
    part_b = "Ships arrive on Tuesdays and leave on Fridays when the tide is high. " * 4
    whole, prefix = tmp_path / "ab.txt", tmp_path / "a.txt"
    whole.write_text(part_a + part_b)
    prefix.write_text(part_a)

    ask_json(tiny_dir, whole, "Where is the ledger?")
    cached_prefix = ask_json(tiny_dir, prefix, "Where is the ledger?")
    cold_prefix = ask_json(tiny_dir, prefix, "Where is the ledger?", "--no-cache")

    assert cached_prefix["cache"] == "built"
    assert cached_prefix["answer"] == cold_prefix["answer"]
    assert len(cache_files(tmp_path / "cache")) == 2


@pytest.mark.parametrize("document_tokens", [3, 16, 17, 5 * UNIT + 5])
def test_cache_holds_whole_units_only(tiny_dir, tmp_path, document_tokens):
    """The document part (marker + text) of 3, 16, 17 and 16k+5 tokens: the cache stores the whole
    meta-contexts, the tail is encoded per question, and the answers equal the cold run."""
    path = tmp_path / "digits.txt"
    path.write_text(digits_text(document_tokens - 1))  # - 1 for the <|document|> marker
    whole = document_tokens // UNIT * UNIT
    tail = document_tokens - whole

    cold = ask_json(tiny_dir, path, "Which digit comes first?", "--no-cache")
    built = ask_json(tiny_dir, path, "Which digit comes first?")
    loaded = ask_json(tiny_dir, path, "Which digit comes first?")

    assert cold["usage"]["document_tokens"] == document_tokens
    assert (built["cache"], loaded["cache"]) == ("built", "loaded")
    assert built["answer"] == cold["answer"]
    assert loaded["answer"] == cold["answer"]
    assert loaded["usage"]["reused_tokens"] == whole
    assert loaded["usage"]["encoded_tokens"] == tail
    [cache] = cache_files(tmp_path / "cache")
    assert read_header(cache)["cached_tokens"] == str(whole)
    with safe_open(str(cache), framework="pt") as handle:
        assert handle.get_slice("tokens").get_shape() == [document_tokens]
        assert handle.get_slice("encoder.0.layer.0.k").get_shape()[2] == whole // 4  # level-1 units
        assert handle.get_slice("encoder.1.layer.0.k").get_shape()[2] == whole // UNIT
        assert ("top" in handle.keys()) == (whole > 0)


def snapshot(session) -> list[torch.Tensor]:
    tensors = [t.clone() for cache in session.state.caches for layer in cache.layers
               for t in layer.keys_values()]
    return tensors + [session.state.top.clone()] + [c.clone() for c in session.state.carries]


def test_questions_leave_loaded_state_unchanged(tiny_dir, document, tmp_path):
    questions = ["Who wants a wife?", "What is universally acknowledged?", "Who has a good fortune?"]
    options = SamplingOptions(max_tokens=40)
    engine = Engine(tiny_dir / "photon.safetensors", cache_dir=tmp_path / "cache")
    engine.open(read_document(document))  # builds the cache
    session = engine.open(read_document(document))
    assert session.cache_status == "loaded"
    before = snapshot(session)

    in_a_row = [engine.answer(session, q, options).text for q in questions]
    fresh = [engine.answer(engine.open(read_document(document)), q, options).text for q in questions]

    assert in_a_row == fresh
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(session)))


def test_cache_key_fields_cannot_run_together():
    assert cache_key({"a": "ab", "b": "c"}) != cache_key({"a": "a", "b": "bc"})
    assert cache_key({"ab": "c"}) != cache_key({"a": "bc"})
    assert cache_key({"a": "1", "b": "2"}) == cache_key({"b": "2", "a": "1"})


def test_cache_key_covers_every_named_field(tiny_dir, document):
    engine = Engine(tiny_dir / "photon.safetensors", use_cache=False)
    fields = engine.cache_fields(read_document(document), 100, False)
    assert fields["format_version"] == str(CACHE_FORMAT_VERSION)
    assert fields["normalization"] == NORMALIZATION
    base = cache_key(fields)
    for name in ("format_version", "weights_fingerprint", "config", "tokenizer_sha256", "normalization",
                 "dtype", "content_sha256", "token_count"):
        changed = cache_key({**fields, name: fields[name] + "x"})
        assert changed != base, name


KEY_SCRIPT = """
import sys
from photon_cli.engine import Engine, read_document
from photon_cli.doc_cache import cache_key
engine = Engine(sys.argv[1], use_cache=False)
document = read_document(sys.argv[2])
print(cache_key(engine.cache_fields(document, 100, False)))
"""


def test_cache_key_same_across_hash_seeds(tiny_dir, document):
    """Another process with another string-hash seed computes the same key for the document."""
    seed = "1" if os.environ.get("PYTHONHASHSEED") == "0" else "0"
    other = subprocess.run([sys.executable, "-c", KEY_SCRIPT, str(tiny_dir / "photon.safetensors"), str(document)],
                           env=photon_env(PYTHONHASHSEED=seed), capture_output=True, text=True, timeout=120)
    engine = Engine(tiny_dir / "photon.safetensors", use_cache=False)
    here = cache_key(engine.cache_fields(read_document(document), 100, False))

    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == here
    assert len(here) == 64


def test_replaced_weights_rebuild_cache(tiny_dir, document, tmp_path):
    """New weights of the same size and config at the same path: the old cache is not used."""
    weights = tmp_path / "model" / "photon.safetensors"
    weights.parent.mkdir()
    shutil.copy(tiny_dir / "tokenizer.json", weights.parent / "tokenizer.json")
    shutil.copy(tiny_dir / "photon.safetensors", weights)
    first = invoke("ask", document, "Who?", "--model", weights, "--json", "-n", 8)
    assert json.loads(first.stdout)["cache"] == "built"

    old_size = weights.stat().st_size
    config = dataclasses.replace(PRESETS["tiny"], vocab_size=320, max_context=2048)
    torch.manual_seed(99)
    save_weights(Photon(config), weights, tokenizer_sha256(weights.parent / "tokenizer.json"))
    assert weights.stat().st_size == old_size

    second = invoke("ask", document, "Who?", "--model", weights, "--json", "-n", 8)
    cold = invoke("ask", document, "Who?", "--model", weights, "--json", "-n", 8, "--no-cache")
    record = json.loads(second.stdout)

    assert second.exit_code == 0, second.output
    assert record["cache"] == "rebuilt"
    assert "weights_fingerprint" in record["cache_reason"]
    assert "weights_fingerprint" in second.stderr
    assert "building a new one" in second.stderr
    assert record["answer"] == json.loads(cold.stdout)["answer"]
    assert len(cache_files(tmp_path / "cache")) == 2


def test_stats_report_reused_and_encoded_tokens(tiny_dir, tmp_path):
    path = tmp_path / "digits.txt"
    path.write_text(digits_text(5 * UNIT + 4))  # 85 document tokens with the marker
    built = invoke("ask", path, "Which digit?", *model_args(tiny_dir), "-n", 4)
    loaded = invoke("ask", path, "Which digit?", *model_args(tiny_dir), "-n", 4)

    assert "85 tokens (0 reused from cache, 85 encoded now)" in built.stderr
    assert "cache" in built.stderr
    assert "built" in built.stderr
    assert "85 tokens (80 reused from cache, 5 encoded now)" in loaded.stderr
    assert "loaded" in loaded.stderr


def test_stats_report_unused_cache_with_reason(tiny_dir, tmp_path):
    path = tmp_path / "digits.txt"
    path.write_text(digits_text(40))
    ask_json(tiny_dir, path, "Which digit?")
    [cache] = cache_files(tmp_path / "cache")
    cache.write_bytes(cache.read_bytes()[:8])

    text_run = invoke("ask", path, "Which digit?", *model_args(tiny_dir), "-n", 4)
    assert text_run.exit_code == 0, text_run.output
    stats = text_run.stderr.strip().splitlines()[-1]
    assert "0 reused from cache" in stats
    assert "rebuilt (corrupt cache file" in stats

    cache.write_bytes(cache.read_bytes()[:8])
    record = ask_json(tiny_dir, path, "Which digit?")
    assert record["cache"] == "rebuilt"
    assert record["cache_reason"].startswith("corrupt cache file")
    assert record["usage"]["reused_tokens"] == 0
