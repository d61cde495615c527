"""Several photon processes on one document: one builds the cache, the others wait and load it,
and a writer killed halfway leaves no short file behind."""

import json
import os
import signal

from photon_cli.doc_cache import read_cache
from support import (DOCUMENT, ask_json, cache_files, model_args, photon_env, start_photon,
                     temporary_files, wait_for_pause, wait_for_stderr)

QUESTION = "Who wants a wife?"


def test_writer_killed_mid_write(tiny_dir, tmp_path):
    """One builder is killed (SIGKILL) after writing its temporary file and before the rename;
    the waiting builder then writes a complete cache and answers correctly."""
    document = tmp_path / "doc.txt"
    document.write_text(DOCUMENT)
    cache_dir = tmp_path / "cache"
    cold = ask_json(tiny_dir, document, QUESTION, "--no-cache")
    args = ("ask", document, QUESTION, *model_args(tiny_dir), "--json", "-n", 24)

    killed = start_photon(*args, env=photon_env(PHOTON_TEST_PAUSE="write"))
    wait_for_pause(killed, "write")
    survivor = start_photon(*args)
    wait_for_stderr(survivor, "waiting for another photon process")
    assert len(temporary_files(cache_dir)) == 1
    assert cache_files(cache_dir) == []
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=30)
    out, err = survivor.communicate(timeout=120)

    assert killed.returncode == -signal.SIGKILL
    assert survivor.returncode == 0, err
    record = json.loads(out)
    assert record["cache"] == "built"
    assert record["answer"] == cold["answer"]
    [cache] = cache_files(cache_dir)
    assert read_cache(cache, {}).tensors["tokens"].numel() == record["usage"]["document_tokens"]
    assert temporary_files(cache_dir) == []


def test_eight_parallel_asks_build_once(tiny_dir, tmp_path):
    document = tmp_path / "doc.txt"
    document.write_text(DOCUMENT)
    processes = [start_photon("ask", document, QUESTION, *model_args(tiny_dir), "--json", "-n", 16)
                 for _ in range(8)]
    results = [process.communicate(timeout=300) for process in processes]

    assert [p.returncode for p in processes] == [0] * 8, [err for _, err in results]
    records = [json.loads(out) for out, _ in results]
    assert sorted(r["cache"] for r in records) == ["built"] + ["loaded"] * 7
    assert len({r["answer"] for r in records}) == 1
    assert len(cache_files(tmp_path / "cache")) == 1
    assert all("Traceback" not in err for _, err in results)
