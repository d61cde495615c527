"""Streaming: multi-byte characters split across tokens are never shown half, text appears token
by token, and decoding stops exactly at EOS, a stop string or max_tokens."""

import json

import pytest
import torch

import photon_cli.engine as engine_module
from photon_cli.engine import Engine, read_document
from photon_cli.prompt import EOS_ID
from photon_cli.sampling import Sampler, SamplingOptions
from photon_cli.streaming import REPLACEMENT, StopMatcher, TextStream
from photon_cli.tokenizer import load_tokenizer
from support import DOCUMENT, invoke, model_args

SAMPLES = ["Café naïve résumé", "東京 日本語", "😀 🎉", "résumé 😀東京🎉 naïve"]


def byte_level_table() -> dict[str, int]:
    """The GPT-2 byte-level alphabet: token character -> byte."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return load_tokenizer(tiny_dir / "tokenizer.json")


def token_bytes(tokenizer, token_id: int) -> bytes:
    table = byte_level_table()
    return bytes(table[ch] for ch in tokenizer.id_to_token(token_id))


@pytest.mark.parametrize("text", SAMPLES)
def test_stream_pieces_rebuild_text(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    stream = TextStream(tokenizer)

    pieces = [stream.push(token) for token in ids] + [stream.flush()]

    assert "".join(pieces) == text
    assert not any(REPLACEMENT in piece for piece in pieces)
    split = [t for t in ids if REPLACEMENT in tokenizer.decode([t])]
    assert split, "no token ends inside a character; the sample tests nothing"


@pytest.mark.parametrize("text", SAMPLES)
def test_stream_emits_each_character_when_complete(tokenizer, text):
    """After every token the shown text is exactly the complete characters so far: CJK and
    emoji appear token by token, not held back until a space."""
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    stream = TextStream(tokenizer)
    shown, received = "", b""
    for token in ids:
        shown += stream.push(token)
        received += token_bytes(tokenizer, token)
        assert shown == received.decode("utf-8", errors="ignore")


def test_flush_drops_cut_character(tokenizer):
    ids = tokenizer.encode("ab😀", add_special_tokens=False).ids
    stream = TextStream(tokenizer)
    shown = "".join(stream.push(token) for token in ids[:-1])
    assert shown + stream.flush() == "ab"


def test_stop_matcher_holds_back_partial_stop():
    matcher = StopMatcher(("END",))
    assert matcher.feed("abc E") == "abc "
    assert matcher.feed("N") == ""
    assert matcher.feed("D more") == ""
    assert matcher.stopped


class ScriptedSampler(Sampler):
    """Emits a fixed token script in generation order, ignoring the logits.

    PHOTON decodes a meta-context of n_1 chunks of C_1 tokens slot by slot, all chunks at once:
    call k fills slot k % C_1 of every chunk of meta-context k // C_1.
    """

    script: list[int] = []
    chunk = 4  # C_1 of the tiny config
    calls = 0

    def __call__(self, logits):
        B, N, _ = logits.shape
        cls = type(self)
        meta, slot = divmod(cls.calls, cls.chunk) if N > 1 else (cls.calls, 0)
        cls.calls += 1
        if N == 1:  # vanilla: one token per call
            positions = [meta]
        else:
            positions = [meta * N * cls.chunk + chunk * cls.chunk + slot for chunk in range(N)]
        filler = cls.script[-1]
        tokens = [cls.script[p] if p < len(cls.script) else filler for p in positions]
        return torch.tensor([tokens] * B)


def answer_lead(kind: str) -> list[int]:
    """Scripted tokens for PHOTON's first decoded chunk, which the forced answer lead replaces."""
    return [0] * 4 if kind == "photon" else []


@pytest.fixture
def scripted(monkeypatch):
    ScriptedSampler.calls = 0
    monkeypatch.setattr(engine_module, "Sampler", ScriptedSampler)
    return ScriptedSampler


@pytest.fixture
def document(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text(DOCUMENT)
    return path


@pytest.mark.parametrize("kind", ["photon", "vanilla"])
def test_eos_mid_chunk_stops_output(tiny_dir, tokenizer, document, scripted, kind):
    before = tokenizer.encode("Café 東京!", add_special_tokens=False).ids
    after = tokenizer.encode(" LEAKED TEXT", add_special_tokens=False).ids
    assert len(before) % 4 != 0  # EOS lands inside a 4-token chunk, not at its start
    scripted.script = answer_lead(kind) + before + [EOS_ID] + after

    streamed = invoke("ask", document, "Who?", *model_args(tiny_dir, kind), "-n", 64)
    scripted.calls = 0
    record = json.loads(invoke("ask", document, "Who?", *model_args(tiny_dir, kind), "-n", 64,
                               "--json").stdout)

    assert streamed.exit_code == 0, streamed.output
    assert streamed.stdout == "Café 東京!\n"
    assert record["answer"] == "Café 東京!"
    assert record["finish_reason"] == "eos"
    assert record["usage"]["completion_tokens"] == len(before)


@pytest.mark.parametrize("kind", ["photon", "vanilla"])
@pytest.mark.parametrize("max_tokens", [1, 21, 33])
def test_max_tokens_exact(tiny_dir, tokenizer, document, scripted, kind, max_tokens):
    digits = tokenizer.encode("0123456789" * 5, add_special_tokens=False).ids
    scripted.script = answer_lead(kind) + digits

    result = invoke("ask", document, "Who?", *model_args(tiny_dir, kind), "-n", max_tokens, "--json")
    record = json.loads(result.stdout)

    assert result.exit_code == 0, result.output
    assert record["finish_reason"] == "length"
    assert record["usage"]["completion_tokens"] == max_tokens
    assert record["answer"] == tokenizer.decode(digits[:max_tokens])


def test_stop_string_cuts_answer(tiny_dir, tokenizer, document, scripted):
    scripted.script = answer_lead("photon") + tokenizer.encode("Café au lait. STOP here", add_special_tokens=False).ids

    result = invoke("ask", document, "Who?", *model_args(tiny_dir), "-n", 40, "--stop", "STOP")
    scripted.calls = 0
    record = json.loads(invoke("ask", document, "Who?", *model_args(tiny_dir), "-n", 40, "--stop", "STOP",
                               "--json").stdout)

    assert result.stdout == "Café au lait. \n"
    assert record["finish_reason"] == "stop"
    assert record["answer"] == "Café au lait. "


def test_engine_stream_matches_answer_text(tiny_dir, tokenizer, document, scripted):
    text = "résumé 😀東京🎉 naïve"
    scripted.script = answer_lead("photon") + tokenizer.encode(text, add_special_tokens=False).ids + [EOS_ID]
    engine = Engine(tiny_dir / "photon.safetensors", use_cache=False)
    session = engine.open(read_document(document))
    pieces = []

    answer = engine.answer(session, "Who?", SamplingOptions(max_tokens=64), on_text=pieces.append)

    assert "".join(pieces) == answer.text == text
    assert not any(REPLACEMENT in piece for piece in pieces)
    assert len(pieces) > 4  # streamed in many pieces, not one burst
