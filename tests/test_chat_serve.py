"""Chat and batch: Ctrl+C stops a streaming answer and returns to the prompt, and a serve-cache
batch with bad lines answers the good ones in order with one error record per bad line."""

import io
import json
import os
import signal
import threading

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

import photon_cli.engine as engine_module
import photon_cli.serve as serve
from photon_cli.chat import ChatShell
from photon_cli.engine import Engine
from photon_cli.sampling import Sampler, SamplingOptions
from support import DOCUMENT, invoke, model_args


@pytest.fixture
def document(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text(DOCUMENT)
    return path


class CountingSampler(Sampler):
    calls = 0

    def __call__(self, logits):
        type(self).calls += 1
        return super().__call__(logits)


class InterruptingOutput(io.StringIO):
    """Terminal stand-in that presses Ctrl+C (a real SIGINT) once `after` pieces have arrived."""

    def __init__(self, after: int):
        super().__init__()
        self.after = after
        self.pieces = 0
        self.calls_at_interrupt = None

    def write(self, text):
        written = super().write(text)
        if text.strip():
            self.pieces += 1
            if self.pieces == self.after:
                self.calls_at_interrupt = CountingSampler.calls
                os.kill(os.getpid(), signal.SIGINT)
        return written


def run_chat(engine, document, text, out, options=SamplingOptions(max_tokens=200)):
    log = io.StringIO()
    with create_pipe_input() as pipe:
        shell = ChatShell(engine, options, "recgen", input=pipe, output=DummyOutput(), out_stream=out,
                          console=Console(file=log, width=300))
        shell.load(str(document))
        pipe.send_text(text)
        shell.run()
    return shell, log.getvalue()


def test_ctrl_c_stops_streaming_answer(tiny_dir, document, monkeypatch):
    monkeypatch.setattr(engine_module, "Sampler", CountingSampler)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    engine = Engine(tiny_dir / "photon.safetensors")
    out = InterruptingOutput(after=3)
    threads_before = threading.active_count()
    CountingSampler.calls = 0
    try:
        shell, log = run_chat(engine, document, "Who wants a wife?\n/stats\n/history\n/exit\n", out)
    finally:
        signal.signal(signal.SIGINT, previous)

    [(question, answer)] = shell.turns
    assert question == "Who wants a wife?"
    assert answer.finish_reason == "interrupted"
    assert answer.text and out.getvalue().startswith(answer.text)
    assert answer.usage.completion_tokens < 200
    # Decoding stopped inside the meta-context being decoded (4 slot calls for the tiny model).
    assert CountingSampler.calls - out.calls_at_interrupt < 4
    assert "[answer interrupted]" in log
    assert "interrupted)" in log  # /stats ran afterwards: the shell returned to the prompt
    assert f"{answer.text} [interrupted]" in log  # /history keeps the partial answer, marked
    assert threading.active_count() == threads_before


def test_ctrl_c_at_empty_prompt_hints_exit(tiny_dir, document):
    engine = Engine(tiny_dir / "photon.safetensors")
    shell, log = run_chat(engine, document, "\x03/exit\n", io.StringIO())
    assert "press Ctrl+D or type /exit to quit" in log
    assert shell.turns == []


def test_ctrl_c_outside_decoding_keeps_shown_text(tiny_dir, document, monkeypatch):
    """An interrupt that escapes the decoding loop still keeps what was already shown."""
    engine = Engine(tiny_dir / "photon.safetensors")
    original = engine.answer

    def answer_then_interrupt(session, question, options, mode, on_text):
        original(session, question, options, mode, on_text)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "answer", answer_then_interrupt)
    out = io.StringIO()
    shell, log = run_chat(engine, document, "Who?\n/exit\n", out, SamplingOptions(max_tokens=8))

    [(_, answer)] = shell.turns
    assert answer.finish_reason == "interrupted"
    assert answer.text == out.getvalue().rstrip("\n")
    assert "[answer interrupted]" in log


def test_serve_cache_bad_lines_among_ten(tiny_dir, document, tmp_path):
    lines = [json.dumps({"id": f"q{i}", "question": f"What does line {i} say?"}) for i in range(10)]
    lines[2] = '{"id": "q2", "question": "Who'  # malformed JSON
    lines[7] = json.dumps({"id": "q7", "question": "word " * 600})  # over --max-question-tokens
    queries = tmp_path / "q.jsonl"
    queries.write_text("\n".join(lines) + "\n")
    out = tmp_path / "a.jsonl"

    result = invoke("serve-cache", document, "-i", queries, "-o", out, "--max-question-tokens", 200,
                    "--batch-size", 4, *model_args(tiny_dir), "-n", 8)
    records = [json.loads(line) for line in out.read_text().splitlines()]

    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert [r["line"] for r in records] == list(range(1, 11))
    assert [r["id"] for r in records] == [f"q{i}" if i != 2 else None for i in range(10)]
    answered = [r for r in records if r["error"] is None]
    failed = [r for r in records if r["error"] is not None]
    assert len(answered) == 8 and all(r["finish_reason"] in ("eos", "length") for r in answered)
    assert [r["line"] for r in failed] == [3, 8]
    assert failed[0]["error"].startswith("line 3: invalid JSON")
    assert failed[1]["error"].startswith("line 8: question has")
    assert "over --max-question-tokens 200" in failed[1]["error"]
    assert all(r["finish_reason"] == "error" and r["answer"] is None for r in failed)
    assert "2 line(s) failed" in result.stderr


@pytest.mark.parametrize("line,fragment", [
    (b'{"question": "Who?", "temperature": NaN}', "NaN is not valid JSON"),
    (b'{"question": "caf\xe9?"}', "not valid UTF-8"),
    (b'{"question": "\\ud800?"}', "unpaired surrogate"),
    (b'[' * 100000, "invalid JSON"),
    (b'{"question": "Who?", "seed": 100000000000000000000000}', "seed"),
    (b'{"question": "Who?", "stop": "x"}', "'stop' must be list"),
    (b'{"question": "Who?", "top_k": true}', "'top_k' must be int"),
    (b'"just a string"', "expected a JSON object"),
])
def test_parse_line_reports_bad_values(line, fragment):
    query = serve.parse_line(4, line, SamplingOptions())
    assert query.error is not None
    assert query.error.startswith("line 5: ")
    assert fragment in query.error


def test_serve_cache_windows_keep_order(tiny_dir, document, tmp_path, monkeypatch):
    """Input longer than one window of lines comes back complete and in input order."""
    monkeypatch.setattr(serve, "WINDOW_LINES", 3)
    questions = ["Who?", "word " * 300, "What does line 2 say?", "Why?", "{bad", "Who is single?", "Where?"]
    queries = tmp_path / "q.jsonl"
    queries.write_text("\n".join(q if q.startswith("{") else json.dumps({"question": q}) for q in questions)
                       + "\n\n")
    out = tmp_path / "a.jsonl"

    result = invoke("serve-cache", document, "-i", queries, "-o", out, "--max-question-tokens", 100,
                    *model_args(tiny_dir), "-n", 4)
    records = [json.loads(line) for line in out.read_text().splitlines()]

    assert result.exit_code == 1
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5, 6, 7]
    assert [r["id"] for r in records] == [1, 2, 3, 4, None, 6, 7]
    assert [r["error"] is not None for r in records] == [False, True, False, False, True, False, False]
