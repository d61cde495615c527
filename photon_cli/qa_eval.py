"""Document question answering evaluation on held-out documents (`photon eval-qa`).

Each record contains a document excerpt, a question whose answer is written in the excerpt, and
the distance in tokens between that fact and the question. Answers are decoded greedily and
scored by exact match, by whether the reference answer is contained in the output, and by the
token F1 of SQuAD (the harmonic mean of word precision and recall, counted with multiplicity),
all after lower-casing and collapsing punctuation and whitespace. F1 gives partial credit to an
answer that copies the first half of a 30-word sentence, which exact match and contains do not.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable, Iterable

from photon_cli.engine import Document, Engine
from photon_cli.sampling import SamplingOptions


def normalize_answer(text: str) -> str:
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(text.split())


def score(prediction: str, reference: str) -> tuple[bool, bool, float]:
    """Return (exact match, reference contained in prediction, token F1)."""
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    common = sum((Counter(pred.split()) & Counter(ref.split())).values())
    f1 = 0.0 if common == 0 else 2 * common / (len(pred.split()) + len(ref.split()))
    return pred == ref, bool(ref) and ref in pred, f1


def select_records(records: list[dict], per_group: int) -> list[dict]:
    """Keep the first per_group records of every (kind, requested distance) group, in file order."""
    selected_per_group: Counter = Counter()
    selected = []
    for record in records:
        group = (record.get("kind"), record.get("target_distance", record["distance_tokens"]))
        if selected_per_group[group] < per_group:
            selected_per_group[group] += 1
            selected.append(record)
    return selected


def read_records(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        missing = {"document", "question", "answer", "distance_tokens"} - set(record)
        if missing:
            raise ValueError(f"{path} line {number}: missing keys {sorted(missing)}")
        records.append(record)
    return records


def evaluate_qa(engine: Engine, records: Iterable[dict], mode: str, max_new_tokens: int = 48,
                on_record: Callable[[dict], None] | None = None) -> list[dict]:
    """Decode an answer to every record greedily; return one row per record with its scores."""
    rows = []
    for record in records:
        text = record["document"]
        document = Document(text, record.get("id", "record"), hashlib.sha256(text.encode()).hexdigest())
        session = engine.open(document, truncate=True)
        reference_tokens = len(engine.tokenize(record["answer"]))
        options = SamplingOptions(max_tokens=min(max_new_tokens, reference_tokens + 16))
        answer = engine.answer(session, record["question"], options, mode)
        exact, contains, f1 = score(answer.text, record["answer"])
        # Group by the requested distance; distance_tokens is the measured one (padding included).
        distance = record.get("target_distance", record["distance_tokens"])
        row = {"id": record.get("id"), "kind": record.get("kind"), "distance": distance,
               "distance_tokens": record["distance_tokens"],
               "document_tokens": len(session.doc_ids), "prediction": answer.text,
               "reference": record["answer"], "exact": exact, "contains": contains, "f1": f1}
        rows.append(row)
        if on_record:
            on_record(row)
    return rows


def add_control_f1(rows: list[dict]) -> None:
    """Set each row's "control_f1": the F1 of its prediction against the next reference of its kind.

    That reference answers a question about another document, so the mean control F1 is what an
    answer scores without reading its own document. An F1 near the control means no reading.
    """
    by_kind = defaultdict(list)
    for row in rows:
        by_kind[row.get("kind")].append(row)
    for group in by_kind.values():
        for index, row in enumerate(group):
            other = next((candidate for candidate in group[index + 1:] + group[:index]
                          if candidate["reference"] != row["reference"]), None)
            row["control_f1"] = score(row["prediction"], other["reference"])[2] if other else 0.0


def summarise(rows: list[dict]) -> dict:
    """Exact-match rate, contains rate, mean F1 and mean control F1, overall, by distance and by kind."""
    add_control_f1(rows)

    def rates(group: list[dict]) -> dict:
        n = len(group)
        return {"n": n, **{key: sum(r[key] for r in group) / n for key in ("exact", "contains", "f1", "control_f1")}}

    by_distance, by_kind = defaultdict(list), defaultdict(list)
    for row in rows:
        by_distance[row["distance"]].append(row)
        by_kind[row["kind"]].append(row)
    return {"overall": rates(rows),
            "by_distance": {d: rates(g) for d, g in sorted(by_distance.items())},
            "by_kind": {k: rates(g) for k, g in sorted(by_kind.items(), key=lambda kv: str(kv[0]))}}
