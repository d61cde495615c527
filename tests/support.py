"""Helpers shared by the reliability tests: CLI calls in-process and as subprocesses, documents
of an exact token count, and reading a cache folder."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from photon_cli.cli import app
from photon_cli.doc_cache import PAUSE_ENV
from photon_cli.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()
DOCUMENT = ("It is a truth universally acknowledged, that a single man in possession of a good "
            "fortune, must be in want of a wife. ") * 6
# Eight questions of one token length (digits are single tokens), so serve-cache decodes them
# together as one batch of eight for either model kind.
EIGHT_QUESTIONS = [f"What does line {n} of the text say?" for n in range(8)]


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def model_args(tiny_dir: Path, kind: str = "photon") -> list:
    return ["--model", tiny_dir / f"{kind}.safetensors"]


def ask_json(tiny_dir: Path, document: Path, question: str = "Who wants a wife?", *extra,
             kind: str = "photon") -> dict:
    result = invoke("ask", document, question, *model_args(tiny_dir, kind), "--json", "-n", 24, *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def digits_text(tokens: int) -> str:
    """Text of exactly `tokens` tokens for the tiny tokenizer: digits never merge in it."""
    return ("0123456789" * (tokens // 10 + 1))[:tokens]


def text_token_count(tiny_dir: Path, text: str) -> int:
    return len(load_tokenizer(tiny_dir / "tokenizer.json").encode(text, add_special_tokens=False).ids)


def cache_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("*.safetensors")) if cache_dir.is_dir() else []


def temporary_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("*.tmp")) if cache_dir.is_dir() else []


def photon_env(**extra: str) -> dict[str, str]:
    """Environment for a photon subprocess: the test's cache folder (inherited), one CPU thread."""
    env = {name: value for name, value in os.environ.items() if name != PAUSE_ENV}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def photon_command(*args) -> list[str]:
    return [sys.executable, "-m", "photon_cli.cli", *[str(a) for a in args]]


def run_photon(*args, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(photon_command(*args), cwd=REPO, env=env or photon_env(), capture_output=True,
                          text=True, timeout=timeout)


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and children inherit that. Python then
    # installs no KeyboardInterrupt handler, so the Ctrl+C tests would hang when the suite itself
    # runs in the background (`.ci/run &`).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_photon(*args, env: dict | None = None) -> subprocess.Popen:
    """Start photon in its own session, so signals sent to it reach nothing else."""
    return subprocess.Popen(photon_command(*args), cwd=REPO, env=env or photon_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=_default_sigint)


def wait_for_stderr(process: subprocess.Popen, text: str, timeout: float = 60) -> str:
    """Read the process's stderr until `text` appears; return what it read.

    Reads the raw pipe (not the buffered text stream), so `communicate()` still gets the rest.
    """
    expected = text.encode()
    received = b""
    descriptor = process.stderr.fileno()
    selector = selectors.DefaultSelector()
    selector.register(descriptor, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while expected not in received:
        remaining = deadline - time.monotonic()
        chunk = os.read(descriptor, 4096) if remaining > 0 and selector.select(remaining) else b""
        if not chunk:
            process.kill()
            raise AssertionError(f"photon never wrote {text!r}; stderr: {received.decode(errors='replace')}")
        received += chunk
    selector.close()
    return received.decode(errors="replace")


def wait_for_pause(process: subprocess.Popen, point: str, timeout: float = 60) -> str:
    """Wait until the process reports the PHOTON_TEST_PAUSE point."""
    return wait_for_stderr(process, f"photon: paused at {point}\n", timeout)
