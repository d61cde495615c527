"""The commands a user meets, driven through typer's CliRunner with tiny random-weight models."""

import json
import math
import os

import pytest
from typer.testing import CliRunner

from photon_cli.cli import app

runner = CliRunner()
DOCUMENT = ("It is a truth universally acknowledged, that a single man in possession of a good "
            "fortune, must be in want of a wife. ") * 6


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def model_args(tiny_dir, kind="photon"):
    return ["--model", tiny_dir / f"{kind}.safetensors"]


@pytest.fixture
def document(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text(DOCUMENT)
    return path


def ask_json(tiny_dir, document, question="Who wants a wife?", *extra, kind="photon"):
    result = invoke("ask", document, question, *model_args(tiny_dir, kind), "--json", "-n", 24, *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["photon", "vanilla"])
def test_ask_streams_answer_and_stats(tiny_dir, document, kind):
    result = invoke("ask", document, "Who wants a wife?", *model_args(tiny_dir, kind), "-n", 10)
    assert result.exit_code == 0, result.output
    assert "document" in result.stderr
    assert "encoded now" in result.stderr
    assert "cache" in result.stderr
    assert "built" in result.stderr


@pytest.mark.parametrize("kind", ["photon", "vanilla"])
def test_ask_second_run_loads_cache(tiny_dir, document, kind):
    first = ask_json(tiny_dir, document, kind=kind)
    second = ask_json(tiny_dir, document, kind=kind)
    assert first["cache"] == "built"
    assert second["cache"] == "loaded"
    assert second["usage"]["reused_tokens"] > 0
    assert first["answer"] == second["answer"]
    uncached = ask_json(tiny_dir, document, "Who wants a wife?", "--no-cache", kind=kind)
    assert uncached["answer"] == first["answer"]


def test_ask_json_fields(tiny_dir, document):
    record = ask_json(tiny_dir, document)
    assert set(record) >= {"answer", "finish_reason", "usage", "timings", "truncated"}
    assert record["finish_reason"] in ("eos", "length")
    assert record["usage"]["completion_tokens"] <= 24


def test_ask_hiergen_mode(tiny_dir, document):
    record = ask_json(tiny_dir, document, "Who wants a wife?", "--mode", "hiergen")
    assert record["mode"] == "hiergen"


def test_ask_reads_stdin(tiny_dir):
    result = invoke("ask", "-", "Who?", *model_args(tiny_dir), "--json", "-n", 4, input=DOCUMENT)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["document"] == "<stdin>"


def test_serve_cache_answers_in_order(tiny_dir, document, tmp_path):
    lines = [json.dumps({"id": f"q{i}", "question": q}) for i, q in
             enumerate(["Who?", "What does the man want?", "Why?", "Who is single?", "What fortune?"])]
    queries = tmp_path / "queries.jsonl"
    queries.write_text("\n".join(lines) + "\n")
    out = tmp_path / "answers.jsonl"
    result = invoke("serve-cache", document, "--input", queries, "--output", out, "--batch-size", 2,
                    *model_args(tiny_dir), "-n", 8)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == [f"q{i}" for i in range(5)]
    assert all(r["error"] is None for r in records)
    assert all(r["finish_reason"] in ("eos", "length") for r in records)


def test_serve_cache_matches_ask(tiny_dir, document, tmp_path):
    """A greedy answer inside a batch of eight equals the same question asked alone."""
    questions = ["Who wants a wife?"] + [f"Question number {i}?" for i in range(7)]
    queries = tmp_path / "q.jsonl"
    queries.write_text("\n".join(json.dumps({"id": i, "question": q}) for i, q in enumerate(questions)))
    out = tmp_path / "a.jsonl"
    result = invoke("serve-cache", document, "-i", queries, "-o", out, "--batch-size", 8,
                    *model_args(tiny_dir), "-n", 24)
    assert result.exit_code == 0, result.output
    batched = json.loads(out.read_text().splitlines()[0])
    alone = ask_json(tiny_dir, document, "Who wants a wife?")
    assert batched["answer"] == alone["answer"]


def test_serve_cache_bad_lines_become_errors(tiny_dir, document, tmp_path):
    lines = [json.dumps({"id": i, "question": f"Question {i}?"}) for i in range(10)]
    lines[3] = '{"id": 3, "question": '  # malformed JSON
    lines[6] = json.dumps({"id": 6, "question": "word " * 600})  # over-long question
    queries = tmp_path / "q.jsonl"
    queries.write_text("\n".join(lines))
    out = tmp_path / "a.jsonl"
    result = invoke("serve-cache", document, "-i", queries, "-o", out, "--max-question-tokens", 200,
                    *model_args(tiny_dir), "-n", 4)
    assert result.exit_code == 1
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 10
    assert [r["error"] is not None for r in records] == [i in (3, 6) for i in range(10)]
    assert "invalid JSON" in records[3]["error"]
    assert "over --max-question-tokens" in records[6]["error"]
    assert [r["id"] for r in records[:3]] == [0, 1, 2]


def test_serve_cache_resume_skips_answered(tiny_dir, document, tmp_path):
    queries = tmp_path / "q.jsonl"
    queries.write_text("\n".join(json.dumps({"id": i, "question": f"Q{i}?"}) for i in range(4)))
    out = tmp_path / "a.jsonl"
    out.write_text(json.dumps({"id": 0, "answer": "done", "error": None}) + "\n")
    result = invoke("serve-cache", document, "-i", queries, "-o", out, "--resume", *model_args(tiny_dir), "-n", 4)
    assert result.exit_code == 0, result.output
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == [0, 1, 2, 3]


def test_cache_ls_info_rm_clear(tiny_dir, document):
    ask_json(tiny_dir, document)
    listing = invoke("cache", "ls", "--json")
    assert listing.exit_code == 0
    rows = [json.loads(line) for line in listing.stdout.splitlines()]
    assert len(rows) == 1
    assert rows[0]["error"] is None
    info = invoke("cache", "info", document)
    assert info.exit_code == 0, info.output
    record = json.loads(info.stdout)
    for key in ("source_name", "content_sha256", "token_count", "preview", "weights_fingerprint",
                "format_version", "photon_version", "dtype", "size_bytes"):
        assert key in record
    assert record["preview"].startswith("It is a truth")
    assert invoke("cache", "rm", document).exit_code == 0
    assert invoke("cache", "info", document).exit_code == 1
    ask_json(tiny_dir, document)
    cleared = invoke("cache", "clear")
    assert cleared.exit_code == 0
    assert "removed 1" in cleared.stderr


def test_info_shows_config(tiny_dir):
    result = invoke("info", tiny_dir / "photon.safetensors")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["config"]["kind"] == "photon"


def test_generate_continues_prompt(tiny_dir):
    result = invoke("generate", "--prompt", "It is a truth", *model_args(tiny_dir), "-n", 7,
                    "--temperature", 0)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("It is a truth")
    assert "7 tokens" in result.stderr


def test_eval_prints_perplexity(tiny_dir, document):
    result = invoke("eval", tiny_dir / "photon.safetensors", document, "--context", 32, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["perplexity"] > 1
    assert len(record["by_position"]) > 1


def test_chat_answers_and_commands(tiny_dir, document):
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput
    import io
    from rich.console import Console

    from photon_cli.chat import ChatShell
    from photon_cli.engine import Engine
    from photon_cli.sampling import SamplingOptions

    engine = Engine(tiny_dir / "photon.safetensors")
    out, log = io.StringIO(), io.StringIO()
    with create_pipe_input() as pipe:
        shell = ChatShell(engine, SamplingOptions(max_tokens=5), "recgen", input=pipe,
                          output=DummyOutput(), out_stream=out, console=Console(file=log, width=200))
        pipe.send_text(f"/load {document}\nWho wants \\\na wife?\n/set temperature 0.5\n/set bogus 1\n"
                       "/show\n/stats\n/help\n/reset\nWho?\n/exit\n")
        shell.run()
    text = log.getvalue()
    assert "loaded" in text
    assert "cache built" in text
    assert "temperature = 0.5" in text
    assert "unknown setting 'bogus'" in text
    assert "settings:" in text
    assert "/load FILE" in text
    assert "no document loaded" in text
    assert "(5 tokens, length)" in text  # /stats after the answer
    assert out.getvalue().count("\n") == 1  # one answer streamed to stdout


def test_eval_reports_repeat_loss(tiny_dir, document):
    result = invoke("eval", tiny_dir / "vanilla.safetensors", document, "--context", 64, "--json")
    assert result.exit_code == 0, result.output
    repeat = json.loads(result.stdout)["repeat"]
    assert repeat["tokens"] == 32
    assert repeat["first"] > 0
    assert repeat["second"] > 0


def test_repeat_loss_scores_a_perfect_copier_near_zero():
    from types import SimpleNamespace

    import torch

    from photon_cli.evaluate import repeat_loss

    vocab, length = 50, 16

    def loss(tokens):  # logits[:, i] predicts tokens[:, i]: uniform, or the token `length` back
        logits = torch.zeros(*tokens.shape, vocab)
        logits[:, length:] = 60 * torch.nn.functional.one_hot(tokens[:, :-length], vocab)
        return {"logits": logits}

    engine = SimpleNamespace(unit=4, model=SimpleNamespace(loss=loss))
    passages = torch.randint(0, vocab, (2, length + 3))
    repeat = repeat_loss(engine, passages)
    assert repeat["tokens"] == length
    assert repeat["first"] == pytest.approx(math.log(vocab))
    assert repeat["second"] < 1e-6
