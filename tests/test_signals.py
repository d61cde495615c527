"""Ctrl+C (SIGINT) and SIGTERM at known points of `photon ask`: no partial cache files, the
conventional exit codes, and a cache written before the interrupt is reused."""

import signal

import pytest

from photon_cli.doc_cache import read_cache
from support import (DOCUMENT, ask_json, cache_files, model_args, photon_env, start_photon,
                     temporary_files, wait_for_pause)

QUESTION = "Who wants a wife?"


@pytest.fixture
def document(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text(DOCUMENT)
    return path


def interrupt_at(tiny_dir, document, point, signum, *extra):
    process = start_photon("ask", document, QUESTION, *model_args(tiny_dir), "-n", 64, *extra,
                           env=photon_env(PHOTON_TEST_PAUSE=point))
    before = wait_for_pause(process, point)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    return process.returncode, out, before + err


@pytest.mark.parametrize("point", ["prefill", "write"])
def test_sigint_before_cache_saved(tiny_dir, document, tmp_path, point):
    code, _, err = interrupt_at(tiny_dir, document, point, signal.SIGINT)

    assert code == 130
    assert err.strip().splitlines()[-1] == "interrupted"
    assert "Traceback" not in err
    assert cache_files(tmp_path / "cache") == []
    assert temporary_files(tmp_path / "cache") == []


def test_sigint_while_answering_keeps_cache(tiny_dir, document, tmp_path):
    code, out, err = interrupt_at(tiny_dir, document, "decode", signal.SIGINT)

    assert code == 130
    assert "Traceback" not in err
    assert out.strip()  # the part of the answer decoded before Ctrl+C
    [cache] = cache_files(tmp_path / "cache")
    read_cache(cache, {})
    rerun = ask_json(tiny_dir, document, QUESTION)
    assert rerun["cache"] == "loaded"
    assert rerun["usage"]["reused_tokens"] > 0


def test_sigterm_mid_write_leaves_no_partial_files(tiny_dir, document, tmp_path):
    code, _, err = interrupt_at(tiny_dir, document, "write", signal.SIGTERM)

    assert code == 143
    assert "Traceback" not in err
    assert cache_files(tmp_path / "cache") == []
    assert temporary_files(tmp_path / "cache") == []
