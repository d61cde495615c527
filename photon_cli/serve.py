"""serve-cache: answer a JSONL batch of questions against one shared document state.

Input lines are read in windows of WINDOW_LINES. Within a window, queries whose encoded length
and sampling options match are decoded together, `batch_size` at a time. Results are written in
input order as soon as every earlier line is done and are not kept afterwards, so memory stays
flat however many lines come in. A line that cannot be parsed or answered becomes an error record
with its line number, and the other lines continue.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from photon_cli.engine import Answer, Engine, InputError, Session
from photon_cli.sampling import SamplingError, SamplingOptions

OPTION_KEYS = {"temperature": float, "top_k": int, "top_p": float, "repetition_penalty": float,
               "seed": int, "max_tokens": int, "stop": list}
# Lines parsed and grouped together; larger windows batch more evenly but hold more queries.
WINDOW_LINES = 256


@dataclass
class Query:
    index: int  # line order in the input, from 0
    id: object
    question: str = ""
    options: SamplingOptions | None = None
    tokens: list[int] | None = None
    error: str | None = None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _decode_json(where: str, line: str | bytes) -> tuple[object, str | None]:
    """Decode one line; return (value, None) or (None, error message)."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as error:
            return None, f"{where}: not valid UTF-8 (byte 0x{line[error.start]:02x} at offset {error.start})"
    try:
        return json.loads(line, parse_constant=_reject_constant), None
    except json.JSONDecodeError as error:
        return None, f"{where}: invalid JSON ({error.msg} at column {error.colno})"
    except ValueError as error:  # NaN/Infinity, or an integer with too many digits
        return None, f"{where}: invalid JSON ({error})"
    except RecursionError:
        return None, f"{where}: invalid JSON (nested too deeply)"


def parse_line(index: int, line: str | bytes, defaults: SamplingOptions) -> Query:
    """Parse one JSONL line into a Query; never raises, problems become Query.error naming the line."""
    where = f"line {index + 1}"
    record, problem = _decode_json(where, line)
    if problem:
        return Query(index, None, error=problem)
    if not isinstance(record, dict):
        return Query(index, None, error=f"{where}: expected a JSON object, got {type(record).__name__}")
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return Query(index, None, error=f"{where}: contains an unpaired surrogate escape such as \\ud800")
    query_id = record.get("id", index + 1)
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        return Query(index, query_id, error=f"{where}: 'question' must be a non-empty string")
    unknown = sorted(set(record) - {"id", "question"} - set(OPTION_KEYS))
    if unknown:
        return Query(index, query_id, error=f"{where}: unknown keys {unknown}; allowed: id, question, "
                                            f"{', '.join(OPTION_KEYS)}")
    changes = {}
    for key, kind in OPTION_KEYS.items():
        if key in record and record[key] is not None:
            value = record[key]
            valid = isinstance(value, kind) or (kind is float and isinstance(value, int))
            if isinstance(value, bool) or not valid or (kind is list and not all(isinstance(s, str) for s in value)):
                return Query(index, query_id, error=f"{where}: '{key}' must be {kind.__name__}, got {value!r:.60}")
            changes[key] = value
    try:
        options = defaults.updated(**changes)
    except SamplingError as error:
        return Query(index, query_id, error=f"{where}: {error}")
    return Query(index, query_id, question, options)


def answered_ids(path: Path) -> set[str]:
    """Ids with a successful answer in an existing output file (for --resume)."""
    done = set()
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict) and not record.get("error"):
            done.add(json.dumps(record.get("id")))
    return done


def result_record(query: Query, answer: Answer | None) -> dict:
    if answer is None:
        return {"id": query.id, "line": query.index + 1, "answer": None, "finish_reason": "error",
                "usage": None, "timings": None, "error": query.error}
    return {"id": query.id, "line": query.index + 1, **answer.to_dict()}


@dataclass
class BatchFiles:
    """The opened input and output of a serve-cache run."""

    source: IO[bytes]
    sink: IO[str]
    skip: set[str]  # json.dumps(id) of lines answered by an earlier run (--resume)
    total_lines: int | None  # None when reading a pipe

    def close(self) -> None:
        if self.source is not sys.stdin.buffer:
            self.source.close()
        if self.sink is not sys.stdout:
            self.sink.close()


def open_batch_files(input_file: str, output_file: str, resume: bool) -> BatchFiles:
    """Open input and output before any model work, so a wrong path fails at once (OSError).

    The output file is opened for appending and emptied only when the first record is written
    (unless resuming), so a run that fails before that leaves an old output file intact.
    """
    skip = answered_ids(Path(output_file)) if resume else set()
    total = None
    if input_file == "-":
        source = sys.stdin.buffer
    else:
        source = open(input_file, "rb")
        if Path(input_file).is_file():
            total = sum(1 for line in source if line.strip())
            source.seek(0)
    try:
        sink = sys.stdout if output_file == "-" else open(output_file, "a", encoding="utf-8")
    except OSError:
        if source is not sys.stdin.buffer:
            source.close()
        raise
    return BatchFiles(source, sink, skip, total)


def numbered_windows(source: IO[bytes], size: int) -> Iterator[list[tuple[int, bytes]]]:
    """Non-blank input lines with their 0-based line index, `size` lines at a time."""
    window = []
    for index, line in enumerate(source):
        line = line.rstrip(b"\r\n")
        if not line.strip():
            continue
        window.append((index, line))
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def prepare(engine: Engine, session: Session, index: int, line: bytes, defaults: SamplingOptions,
            max_question_tokens: int) -> Query:
    """Parse a line and encode its question; problems become Query.error."""
    query = parse_line(index, line, defaults)
    if query.error is not None:
        return query
    try:
        query.tokens = engine.question_ids(session, query.question)
    except InputError as error:
        query.error = f"line {index + 1}: {error}"
        return query
    question_length = len(query.tokens) - len(session.tail)
    if question_length > max_question_tokens:
        query.error = (f"line {index + 1}: question has {question_length} tokens, over "
                       f"--max-question-tokens {max_question_tokens}")
    return query


def run_batch(engine: Engine, session: Session, files: BatchFiles, defaults: SamplingOptions, mode: str,
              batch_size: int, resume: bool, max_question_tokens: int, console: Console) -> int:
    """Answer every input line into the output; return the number of error records.

    KeyboardInterrupt stops the run after writing every finished line that has no unfinished
    line before it; --resume continues from there.
    """
    if not resume and files.sink is not sys.stdout:
        files.sink.seek(0)
        files.sink.truncate()
    failures = 0
    progress = Progress(TextColumn("answering"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=console, transient=True, disable=not console.is_terminal)
    with progress:
        task = progress.add_task("answering", total=files.total_lines)
        for window in numbered_windows(files.source, WINDOW_LINES):
            queries = [prepare(engine, session, index, line, defaults, max_question_tokens)
                       for index, line in window]
            if resume:
                queries = [q for q in queries if q.error is not None or json.dumps(q.id) not in files.skip]
            failures += answer_window(engine, session, queries, mode, batch_size, files.sink,
                                      lambda n: progress.update(task, advance=n))
    return failures


def answer_window(engine: Engine, session: Session, queries: list[Query], mode: str, batch_size: int,
                  sink: IO[str], advance) -> int:
    """Answer one window of queries in input order; return its number of error records."""
    results: dict[int, dict] = {q.index: result_record(q, None) for q in queries if q.error}
    groups: dict[tuple, list[Query]] = {}
    for query in queries:
        if not query.error:
            groups.setdefault((len(query.tokens), query.options), []).append(query)
    order = [q.index for q in queries]
    written = 0
    failures = 0

    def flush() -> None:
        nonlocal written, failures
        while written < len(order) and order[written] in results:
            record = results.pop(order[written])
            failures += record["error"] is not None
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            written += 1
        sink.flush()

    try:
        advance(len(results))
        flush()
        for (_, options), members in groups.items():
            for start in range(0, len(members), batch_size):
                chunk = members[start:start + batch_size]
                answers = engine.generate_batch(session, [q.tokens for q in chunk], options, mode)
                if any(a.finish_reason == "interrupted" for a in answers):
                    raise KeyboardInterrupt  # partial answers are not written; --resume redoes them
                for query, answer in zip(chunk, answers):
                    results[query.index] = result_record(query, answer)
                advance(len(chunk))
                flush()
    finally:
        flush()
    return failures
