"""Soak test of `photon serve-cache`: many queries against one document in one process.

Runs `python -m photon_cli.cli serve-cache` as a child process and samples its resident memory
(VmRSS), peak memory (VmHWM), open file descriptors and threads from /proc while it answers.
Memory should stay flat after warm-up and descriptors and threads should not grow. Linux only.

    python scripts/soak_serve_cache.py                       # tiny random-weight model
    python scripts/soak_serve_cache.py --model weights/photon-small.safetensors --queries 2000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCUMENT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
            "must be in want of a wife. The file format of the database is described in this section. ") * 12
QUESTIONS = ["Who wants a wife?", "What is described in this section?", "What does a single man possess?",
             "Which format is described?", "What is universally acknowledged?", "Who is in want of a wife?"]


@dataclasses.dataclass
class Sample:
    seconds: float
    answered: int
    rss_kib: int
    peak_kib: int
    threads: int
    fds: int


def build_tiny_model(folder: Path) -> Path:
    """Write a random-weight tiny PHOTON model and its tokenizer (the test suite's configuration)."""
    import torch

    from photon_cli.config import PRESETS
    from photon_cli.model import Photon
    from photon_cli.tokenizer import tokenizer_sha256, train_tokenizer
    from photon_cli.weights import save_weights

    train_tokenizer([DOCUMENT + " Café naïve résumé 東京 日本語 😀 🎉 " * 20], folder / "tokenizer.json",
                    vocab_size=320)
    torch.manual_seed(0)
    config = dataclasses.replace(PRESETS["tiny"], vocab_size=320, max_context=2048)
    path = folder / "photon.safetensors"
    save_weights(Photon(config), path, tokenizer_sha256(folder / "tokenizer.json"))
    return path


def read_sample(pid: int, started: float, output: Path) -> Sample | None:
    """Read one /proc sample of the child; return None once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if "VmRSS" not in fields:  # exited, not yet reaped
        return None
    answered = output.read_bytes().count(b"\n") if output.exists() else 0
    return Sample(time.monotonic() - started, answered, int(fields["VmRSS"].split()[0]),
                  int(fields["VmHWM"].split()[0]), int(fields["Threads"]), fds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="weights file (default: a tiny random-weight model)")
    parser.add_argument("--queries", type=int, default=2000, help="number of questions to send")
    parser.add_argument("--batch-size", type=int, default=8, help="serve-cache --batch-size")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens generated per answer")
    parser.add_argument("--threads", type=int, default=1, help="OMP/MKL threads of the child")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between samples")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="photon-soak-") as scratch:
        folder = Path(scratch)
        model = args.model or build_tiny_model(folder)
        document = folder / "document.txt"
        document.write_text(DOCUMENT)
        queries = folder / "queries.jsonl"
        with open(queries, "w") as handle:
            for index in range(args.queries):
                question = f"{QUESTIONS[index % len(QUESTIONS)]} ({index})"
                handle.write(json.dumps({"id": index, "question": question}) + "\n")
        output = folder / "answers.jsonl"
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
               "PHOTON_CACHE_DIR": str(folder / "cache")}
        command = [sys.executable, "-m", "photon_cli.cli", "serve-cache", str(document), "-i", str(queries),
                   "-o", str(output), "-m", str(model), "-n", str(args.max_tokens),
                   "--batch-size", str(args.batch_size)]

        started = time.monotonic()
        child = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        samples: list[Sample] = []
        while child.poll() is None:
            sample = read_sample(child.pid, started, output)
            if sample:
                samples.append(sample)
            time.sleep(args.interval)
        stderr = child.stderr.read()
        elapsed = time.monotonic() - started
        records = [json.loads(line) for line in output.read_text().splitlines()]

    working = [s for s in samples if s.answered > 0]
    if child.returncode != 0 or not working:
        print(f"serve-cache exited with {child.returncode}:\n{stderr}", file=sys.stderr)
        return 1
    warm = next(s for s in working if s.answered >= args.queries // 10)
    answering = [s for s in working if s.answered < args.queries]
    last = answering[-1] if answering else working[-1]  # steady state, before the files are closed
    errors = sum(1 for record in records if record["error"])

    shown_command = [Path(part).name if part.startswith(scratch) else part for part in command]
    print(f"command: {' '.join(shown_command)} (files in a temporary folder)")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{args.threads} thread(s)")
    print(f"queries: {args.queries} in {elapsed:.1f} s ({args.queries / elapsed:.1f} queries/s); "
          f"{len(records)} records, {errors} errors; answered at the last sample: {last.answered}")
    print(f"{'answered':>9} {'seconds':>8} {'RSS MiB':>8} {'peak MiB':>9} {'threads':>8} {'fds':>5}")
    shown = set()
    for fraction in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0):
        target = fraction * args.queries
        sample = min(working, key=lambda s: abs(s.answered - target))
        if id(sample) in shown:
            continue
        shown.add(id(sample))
        print(f"{sample.answered:>9} {sample.seconds:>8.1f} {sample.rss_kib / 1024:>8.1f} "
              f"{sample.peak_kib / 1024:>9.1f} {sample.threads:>8} {sample.fds:>5}")
    print(f"RSS after warm-up ({warm.answered} answered): {warm.rss_kib / 1024:.1f} MiB; last sample while "
          f"answering ({last.answered} answered): {last.rss_kib / 1024:.1f} MiB; change "
          f"{(last.rss_kib - warm.rss_kib) / 1024:+.1f} MiB")
    print(f"peak RSS after warm-up: {warm.peak_kib / 1024:.1f} MiB; at the end: {working[-1].peak_kib / 1024:.1f} MiB")
    print(f"threads: {warm.threads} -> {last.threads}; open file descriptors: {warm.fds} -> {last.fds} "
          f"(-> {working[-1].fds} once the input and output files are closed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
