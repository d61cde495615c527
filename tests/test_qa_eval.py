"""eval-qa: answer scoring, record selection, and the command on tiny models."""

import json

import pytest

from photon_cli.qa_eval import add_control_f1, score, select_records, summarise
from support import invoke, model_args


@pytest.mark.parametrize("prediction, reference, expected", [
    ("James Monroe, 1820", "James Monroe, 1820", (True, True, 1.0)),
    ("  james monroe 1820!", "James Monroe, 1820", (True, True, 1.0)),
    ("It was James Monroe, 1820.", "James Monroe, 1820", (False, True, 0.75)),
    ("James Madison, 1815", "James Monroe, 1820", (False, False, 1 / 3)),
    ("", "James Monroe, 1820", (False, False, 0.0)),
])
def test_score(prediction, reference, expected):
    exact, contains, f1 = score(prediction, reference)
    assert (exact, contains) == expected[:2]
    assert f1 == pytest.approx(expected[2])


def test_f1_counts_repeated_words_once_each():
    # "the the the" shares one "the" with "the cat": precision 1/3, recall 1/2.
    assert score("the the the", "the cat")[2] == pytest.approx(0.4)


def test_select_records_keeps_first_of_each_group():
    records = [{"kind": kind, "target_distance": distance, "distance_tokens": distance + 3, "n": n}
               for n, (kind, distance) in enumerate([("a", 0), ("a", 0), ("a", 0), ("b", 0), ("a", 9), ("b", 0)])]
    assert [r["n"] for r in select_records(records, 2)] == [0, 1, 3, 4, 5]


def test_summarise_rates():
    rows = [{"distance": 0, "kind": "a", "exact": True, "contains": True, "f1": 1.0},
            {"distance": 0, "kind": "b", "exact": False, "contains": True, "f1": 0.5},
            {"distance": 8, "kind": "a", "exact": False, "contains": False, "f1": 0.0}]
    for row, reference in zip(rows, ["x y", "z", "x y"]):
        row["prediction"], row["reference"] = "x y", reference
    summary = summarise(rows)
    assert summary["overall"]["n"] == 3
    assert summary["overall"]["exact"] == pytest.approx(1 / 3)
    assert summary["overall"]["contains"] == pytest.approx(2 / 3)
    assert summary["overall"]["f1"] == pytest.approx(0.5)
    assert summary["by_distance"][0]["f1"] == pytest.approx(0.75)
    assert summary["by_kind"]["a"]["contains"] == pytest.approx(0.5)


def eval_file(path, n=3):
    records = [{"id": f"r{i}", "kind": "speech", "document": f"State of the Union Address, 19{i}0, A. Person\n\nText.",
                "question": "Who delivered this address, and in what year?", "answer": f"A. Person, 19{i}0",
                "distance_tokens": 4, "target_distance": 0} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_eval_qa_runs_every_mode(tiny_dir, tmp_path):
    out = tmp_path / "out.json"
    result = invoke("eval-qa", "--eval-file", eval_file(tmp_path / "eval.jsonl"), *model_args(tiny_dir, "photon"),
                    *model_args(tiny_dir, "vanilla"), "--per-group", 2, "--max-new-tokens", 4, "--json-out", out)
    assert result.exit_code == 0, result.output
    summaries = json.loads(out.read_text())["summaries"]
    assert sorted(summaries) == ["photon hiergen", "photon recgen", "vanilla vanilla"]
    assert all(summary["overall"]["n"] == 2 for summary in summaries.values())
    assert "F1" in result.stdout


def test_eval_qa_refuses_empty_file(tiny_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    result = invoke("eval-qa", "--eval-file", empty, *model_args(tiny_dir))
    assert result.exit_code != 0
    assert "no records" in result.stderr


def test_control_f1_uses_another_reference_of_the_kind():
    rows = [{"kind": "a", "prediction": "red fox", "reference": "red fox"},
            {"kind": "a", "prediction": "blue sky", "reference": "blue sky"},
            {"kind": "b", "prediction": "red fox", "reference": "red fox"}]
    add_control_f1(rows)
    assert rows[0]["control_f1"] == 0.0  # scored against "blue sky"
    assert rows[1]["control_f1"] == 0.0  # scored against "red fox"
    assert rows[2]["control_f1"] == 0.0  # no other reference of kind b


def test_control_f1_equals_f1_without_reading():
    rows = [{"kind": "a", "prediction": "the cat sat", "reference": reference}
            for reference in ("the cat ran", "the dog sat", "a cat sat")]
    add_control_f1(rows)
    own = [score(row["prediction"], row["reference"])[2] for row in rows]
    control = [row["control_f1"] for row in rows]
    assert sum(control) / 3 == pytest.approx(sum(own) / 3)
