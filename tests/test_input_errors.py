"""Bad input a user can give: empty and non-text documents, documents over the token budget,
BOM and CRLF text, and every other user error, each reported in one line without a traceback."""

import json
import os
import shutil
from pathlib import Path

import pytest

from photon_cli.doc_cache import read_header
from photon_cli.engine import NORMALIZATION, read_document
from support import (DOCUMENT, ask_json, cache_files, digits_text, invoke, model_args,
                     stderr_lines)


def assert_one_line_error(result, *fragments, code=1):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = stderr_lines(result)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("content", [b"", b" \n\t \r\n  ", b"\xef\xbb\xbf", b"\xef\xbb\xbf \r\n"],
                         ids=["0 bytes", "whitespace", "BOM only", "BOM and whitespace"])
def test_empty_document_rejected(tiny_dir, tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)

    result = invoke("ask", path, "Who?", *model_args(tiny_dir))

    assert_one_line_error(result, str(path), "is empty")
    assert cache_files(tmp_path / "cache") == []


def test_empty_stdin_rejected(tiny_dir, tmp_path):
    result = invoke("ask", "-", "Who?", *model_args(tiny_dir), input="")
    assert_one_line_error(result, "<stdin>", "is empty")


def test_bom_and_crlf_normalised(tiny_dir, tmp_path):
    """The documented rule: BOM removed, CRLF and CR become LF, NFC; both files share one cache."""
    text = "Café owners open at nine.\nThe résumé lists 東京.\nLast line.\n"
    lf, crlf = tmp_path / "lf.txt", tmp_path / "crlf.txt"
    lf.write_bytes(text.encode())
    crlf.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    decomposed = tmp_path / "nfd.txt"
    decomposed.write_bytes(text.replace("é", "e\u0301").encode())

    assert read_document(crlf).text == text
    assert read_document(decomposed).text == text
    from_lf = ask_json(tiny_dir, lf, "When do they open?")
    from_crlf = ask_json(tiny_dir, crlf, "When do they open?")
    from_nfd = ask_json(tiny_dir, decomposed, "When do they open?")

    assert from_crlf["answer"] == from_lf["answer"]
    assert from_nfd["answer"] == from_lf["answer"]
    assert (from_lf["cache"], from_crlf["cache"], from_nfd["cache"]) == ("built", "loaded", "loaded")
    [cache] = cache_files(tmp_path / "cache")
    assert read_header(cache)["normalization"] == NORMALIZATION == "strip-bom,crlf-to-lf,nfc/v1"


BUDGET = 40


@pytest.mark.parametrize("tokens", [BUDGET - 1, BUDGET])
def test_document_within_budget_answers(tiny_dir, tmp_path, tokens):
    path = tmp_path / "digits.txt"
    path.write_text(digits_text(tokens))

    record = ask_json(tiny_dir, path, "Which digit?", "--max-context", BUDGET)

    assert record["truncated"] is False
    assert record["usage"]["document_tokens"] == tokens + 1  # with the <|document|> marker


def test_document_over_budget_rejected(tiny_dir, tmp_path):
    path = tmp_path / "digits.txt"
    path.write_text(digits_text(BUDGET + 1))

    result = invoke("ask", path, "Which digit?", *model_args(tiny_dir), "--max-context", BUDGET)

    assert_one_line_error(result, str(path), f"has {BUDGET + 1} tokens", f"budget of {BUDGET} tokens",
                          "--truncate")
    assert result.stdout == ""
    assert cache_files(tmp_path / "cache") == []


def test_truncate_warns_and_marks_json(tiny_dir, tmp_path):
    path = tmp_path / "digits.txt"
    path.write_text(digits_text(BUDGET + 1))

    result = invoke("ask", path, "Which digit?", *model_args(tiny_dir), "--max-context", BUDGET,
                    "--truncate", "--json", "-n", 4)
    record = json.loads(result.stdout)

    assert result.exit_code == 0, result.output
    [warning] = stderr_lines(result)
    assert warning.startswith("WARNING: document")
    assert f"truncated from {BUDGET + 1} to its first {BUDGET} tokens" in warning
    assert record["truncated"] is True
    assert record["usage"]["document_tokens"] == BUDGET + 1


def test_fact_on_first_line_of_long_document(tiny_dir, tmp_path):
    """Asking for a fact from the first line of an over-budget document fails by default rather
    than answering from a cut text."""
    path = tmp_path / "long.txt"
    path.write_text("The vault code is 4711.\n" + DOCUMENT)

    result = invoke("ask", path, "What is the vault code?", *model_args(tiny_dir), "--max-context", 100)

    assert_one_line_error(result, "tokens, over the budget of 100 tokens", "--truncate")
    assert result.stdout == ""


# ---- every other user error: non-zero exit, one line naming the value, no traceback ----------

@pytest.fixture
def document(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text(DOCUMENT)
    return path


def test_missing_document(tiny_dir, tmp_path):
    missing = tmp_path / "nowhere.txt"
    assert_one_line_error(invoke("ask", missing, "Who?", *model_args(tiny_dir)), str(missing), "not found")


def test_directory_as_document(tiny_dir, tmp_path):
    assert_one_line_error(invoke("ask", tmp_path, "Who?", *model_args(tiny_dir)), str(tmp_path),
                          "is a directory")


def test_binary_document(tiny_dir, tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert_one_line_error(invoke("ask", path, "Who?", *model_args(tiny_dir)), str(path), "binary",
                          "offset 8")


def test_latin1_document(tiny_dir, tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Café au lait".encode("latin-1"))
    assert_one_line_error(invoke("ask", path, "Who?", *model_args(tiny_dir)), str(path),
                          "not valid UTF-8", "0xe9", "iconv")


def test_unreadable_document(tiny_dir, document, monkeypatch):
    original = Path.read_bytes

    def denied(self):
        if self == document:
            raise PermissionError(13, "Permission denied", str(self))
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    assert_one_line_error(invoke("ask", document, "Who?", *model_args(tiny_dir)), str(document),
                          "Permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
def test_document_without_read_permission(tiny_dir, document):
    document.chmod(0)
    try:
        result = invoke("ask", document, "Who?", *model_args(tiny_dir))
    finally:
        document.chmod(0o644)
    assert_one_line_error(result, str(document), "Permission denied")


@pytest.mark.parametrize("question", ["", "   \n "])
def test_empty_question(tiny_dir, document, tmp_path, question):
    assert_one_line_error(invoke("ask", document, question, *model_args(tiny_dir)), "question is empty")
    assert cache_files(tmp_path / "cache") == []  # rejected before the document is encoded


def test_weights_not_safetensors(tiny_dir, document, tmp_path):
    fake = tmp_path / "model.safetensors"
    fake.write_text("this is not a weights file\n")
    assert_one_line_error(invoke("ask", document, "Who?", "--model", fake), str(fake),
                          "not a readable safetensors file")


def test_weights_truncated(tiny_dir, document, tmp_path):
    cut = tmp_path / "cut.safetensors"
    data = (tiny_dir / "photon.safetensors").read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    shutil.copy(tiny_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    assert_one_line_error(invoke("ask", document, "Who?", "--model", cut), str(cut))


def test_weights_missing(document, tmp_path):
    missing = tmp_path / "gone.safetensors"
    assert_one_line_error(invoke("ask", document, "Who?", "--model", missing), str(missing), "not found")


def test_tokenizer_not_matching_weights(tiny_dir, document, tmp_path):
    other = tmp_path / "tokenizer.json"
    other.write_text(json.dumps(json.loads((tiny_dir / "tokenizer.json").read_text()), indent=1))
    result = invoke("ask", document, "Who?", *model_args(tiny_dir), "--tokenizer", other)
    assert_one_line_error(result, str(other), "does not match the weights", "--tokenizer")


def test_tokenizer_not_json(tiny_dir, document, tmp_path):
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json")
    result = invoke("ask", document, "Who?", *model_args(tiny_dir), "--tokenizer", broken)
    assert_one_line_error(result, str(broken), "invalid tokenizer file")


@pytest.mark.parametrize("option,value,fragment", [
    ("--device", "tpu", "unknown device 'tpu'"),
    ("--device", "cuda:7", "no CUDA device"),
    ("--dtype", "float8", "unknown dtype 'float8'"),
    ("--max-context", "0", "--max-context 0"),
    ("--top-p", "0", "top_p 0.0"),
    ("--temperature", "-1", "temperature -1.0"),
    ("--max-tokens", "0", "max_tokens 0"),
    ("--mode", "fastgen", "fastgen"),
])
def test_invalid_option(tiny_dir, document, option, value, fragment):
    result = invoke("ask", document, "Who?", *model_args(tiny_dir), option, value)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert fragment in result.stderr


def test_serve_cache_missing_input(tiny_dir, document, tmp_path):
    missing = tmp_path / "queries.jsonl"
    result = invoke("serve-cache", document, "--input", missing, *model_args(tiny_dir))
    assert_one_line_error(result, str(missing), "No such file")
    assert cache_files(tmp_path / "cache") == []  # rejected before the document is encoded


def test_eval_document_too_short(tiny_dir, tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("Too short.")
    result = invoke("eval", tiny_dir / "photon.safetensors", path, "--context", 64)
    assert_one_line_error(result, "fewer than one window of 64")


def test_cache_info_unknown_target(tmp_path):
    missing = tmp_path / "nothing.txt"
    assert_one_line_error(invoke("cache", "info", missing), str(missing), "not found")


def test_verbose_shows_traceback(tiny_dir, tmp_path):
    missing = tmp_path / "nowhere.txt"
    result = invoke("--verbose", "ask", missing, "Who?", *model_args(tiny_dir))
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
