"""Terminal rendering for the CLI: prefill progress bars and statistics lines (stderr only)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeRemainingColumn)

from photon_cli.engine import Answer, Session


@contextmanager
def prefill_progress(console: Console, label: str) -> Iterator[Callable[[int, int], None]]:
    """Yield a callback(done, total) that shows a progress bar once encoding starts.

    The bar is drawn only on a terminal, so logs and pipes get no stray lines.
    """
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("tokens"), TaskProgressColumn(),
                        TextColumn("{task.fields[rate]:>8} tok/s"), TimeRemainingColumn(),
                        console=console, transient=True, disable=not console.is_terminal)
    state = {"task": None, "started": None}

    def update(done: int, total: int) -> None:
        import time

        if state["task"] is None:
            progress.start()
            state["task"] = progress.add_task(label, total=total, rate="-")
            state["started"] = time.perf_counter()
        elapsed = time.perf_counter() - state["started"]
        rate = f"{done / elapsed:,.0f}" if elapsed > 0 else "-"
        progress.update(state["task"], completed=done, rate=rate)

    try:
        yield update
    finally:
        if state["task"] is not None:
            progress.stop()


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def stats_line(session: Session, answer: Answer, peak_mib: float) -> str:
    u, t = answer.usage, answer.timings
    parts = [
        f"document {u.document_tokens:,} tokens ({u.reused_tokens:,} reused from cache, "
        f"{u.encoded_tokens:,} encoded now)",
        f"question {u.question_tokens:,} tokens",
        f"document {'load' if session.cache_status == 'loaded' else 'prefill'} {t.document_ms:,.0f} ms",
        f"first token {t.first_token_ms:,.0f} ms",
        f"decode {t.decode_tokens_per_s:,.1f} tok/s ({u.completion_tokens} tokens, {answer.finish_reason})",
        f"cache {human_bytes(session.cache_bytes)} {session.cache_summary}",
        f"peak {peak_mib:,.0f} MiB",
    ]
    return " | ".join(parts)
