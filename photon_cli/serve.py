"""serve-cache: answer a JSONL batch of questions against one shared document state.

Queries whose encoded length and sampling options match are decoded together, `batch_size` at a
time; results are written in input order. A line that cannot be parsed or answered becomes an
error record and the others continue.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from photon_cli.engine import Answer, Engine, InputError, Session
from photon_cli.sampling import SamplingError, SamplingOptions

OPTION_KEYS = {"temperature": float, "top_k": int, "top_p": float, "repetition_penalty": float,
               "seed": int, "max_tokens": int, "stop": list}


@dataclass
class Query:
    index: int  # line order in the input
    id: object
    question: str = ""
    options: SamplingOptions | None = None
    tokens: list[int] | None = None
    error: str | None = None


def parse_line(index: int, line: str, defaults: SamplingOptions) -> Query:
    """Parse one JSONL line into a Query; problems become Query.error naming the line."""
    where = f"line {index + 1}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        return Query(index, None, error=f"{where}: invalid JSON ({error.msg} at column {error.colno})")
    if not isinstance(record, dict):
        return Query(index, None, error=f"{where}: expected a JSON object, got {type(record).__name__}")
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
                return Query(index, query_id, error=f"{where}: '{key}' must be {kind.__name__}, got {value!r}")
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
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and not record.get("error"):
            done.add(json.dumps(record.get("id")))
    return done


def result_record(query: Query, answer: Answer | None) -> dict:
    if answer is None:
        return {"id": query.id, "answer": None, "finish_reason": "error", "usage": None,
                "timings": None, "error": query.error}
    record = {"id": query.id, **answer.to_dict()}
    return record


def run_batch_file(engine: Engine, session: Session, input_file: str, output_file: str,
                   defaults: SamplingOptions, mode: str, batch_size: int, resume: bool,
                   max_question_tokens: int, console: Console) -> int:
    """Answer every line of input_file into output_file; return the number of error records."""
    source = sys.stdin if input_file == "-" else open(input_file, encoding="utf-8", errors="replace")
    with source:
        lines = [line for line in source.read().splitlines()]
    skip = answered_ids(Path(output_file)) if resume else set()
    queries = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        query = parse_line(index, line, defaults)
        if resume and query.error is None and json.dumps(query.id) in skip:
            continue
        if query.error is None:
            try:
                query.tokens = engine.question_ids(session, query.question)
                question_length = len(query.tokens) - len(session.tail)
                if question_length > max_question_tokens:
                    query.error = (f"line {index + 1}: question has {question_length} tokens, over "
                                   f"--max-question-tokens {max_question_tokens}")
            except InputError as error:
                query.error = f"line {index + 1}: {error}"
        queries.append(query)

    sink = sys.stdout if output_file == "-" else open(output_file, "a" if resume else "w", encoding="utf-8")
    results: dict[int, dict] = {q.index: result_record(q, None) for q in queries if q.error}
    pending = [q for q in queries if not q.error]
    groups: dict[tuple, list[Query]] = {}
    for query in pending:
        groups.setdefault((len(query.tokens), query.options), []).append(query)
    order = [q.index for q in queries]
    written = 0

    def flush() -> None:
        nonlocal written
        while written < len(order) and order[written] in results:
            sink.write(json.dumps(results[order[written]], ensure_ascii=False) + "\n")
            written += 1
        sink.flush()

    progress = Progress(TextColumn("answering"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=console, transient=True)
    try:
        with progress:
            task = progress.add_task("answering", total=len(queries), completed=len(results))
            flush()
            for (_, options), members in groups.items():
                for start in range(0, len(members), batch_size):
                    chunk = members[start:start + batch_size]
                    answers = engine.generate_batch(session, [q.tokens for q in chunk], options, mode)
                    if any(a.finish_reason == "interrupted" for a in answers):
                        raise KeyboardInterrupt  # partial answers are not written; --resume redoes them
                    for query, answer in zip(chunk, answers):
                        results[query.index] = result_record(query, answer)
                    progress.update(task, advance=len(chunk))
                    flush()
    finally:
        flush()
        if sink is not sys.stdout:
            sink.close()
    return sum(1 for r in results.values() if r.get("error"))
