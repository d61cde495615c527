"""Time `photon ask` with a cold and a warm document cache, and serve-cache answers/s by batch size.

Usage: python benchmarks/ask_cache.py [--document examples/northanger_abbey.txt] [--queries 32]

Runs the installed `photon` command in subprocesses with a fresh cache folder, so every figure
includes process start and model load, as a user sees it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


PHOTON = str(Path(sys.executable).parent / "photon")  # the entry point of this environment


def run(command: list[str], env: dict, stdin: str | None = None) -> tuple[str, float]:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, input=stdin)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--document", default="examples/northanger_abbey.txt")
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()

    import os

    with tempfile.TemporaryDirectory() as cache_dir:
        env = {**os.environ, "PHOTON_CACHE_DIR": cache_dir}
        question = "How does Chapter 3 begin?"
        for label in ("first ask (builds the cache)", "second ask (loads the cache)"):
            out, wall = run([PHOTON, "ask", args.document, question, "-n", str(args.max_tokens), "--json"], env)
            record = json.loads(out)
            t = record["timings"]
            print(f"{label}: document {t['document_ms']:,.0f} ms + first token {t['first_token_ms']:,.0f} ms "
                  f"= {t['document_ms'] + t['first_token_ms']:,.0f} ms to first token; "
                  f"process wall {wall:.1f} s; cache {record['cache']}")

        lines = "\n".join(json.dumps({"id": i, "question": f"How does Chapter {i % 31 + 1} begin?"})
                          for i in range(args.queries))
        for batch in (1, 8, 32):
            out, wall = run([PHOTON, "serve-cache", args.document, "--batch-size", str(batch),
                             "-n", str(args.max_tokens)], env, stdin=lines)
            records = [json.loads(line) for line in out.splitlines()]
            decode_ms = sum(r["timings"]["total_ms"] for r in records) / batch
            print(f"serve-cache batch {batch:>2}: {len(records)} answers in {wall:.1f} s process wall "
                  f"({len(records) / wall:.2f} answers/s incl. start-up and cache load; "
                  f"{len(records) / (decode_ms / 1e3):.2f} answers/s in decoding)")


if __name__ == "__main__":
    main()
