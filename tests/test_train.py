"""Trainer: exact resume from a checkpoint, weights export, and two-process DDP on CPU."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import torch.nn.functional as F

from photon_cli.config import PRESETS
from photon_cli.prompt import ANSWER_ID, DOCUMENT_ID, EOS_ID, PAD_ID, QUESTION_ID, answer_loss_weights
from photon_cli.train import TrainConfig, train
from photon_cli.weights import build_model
from photon_cli.weights import load_weights


@pytest.fixture
def data_dir(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "corpus"
    folder.mkdir()
    rng.integers(0, 256, 20_000).astype(np.uint16).tofile(folder / "train.bin")
    rng.integers(0, 256, 4_000).astype(np.uint16).tofile(folder / "val.bin")
    return folder


def config(data_dir, out_dir, **changes):
    values = dict(data_dir=data_dir, out_dir=out_dir, model="tiny", tokenizer=data_dir / "none.json",
                  context=64, batch_size=4, max_steps=4, warmup_steps=1, eval_every=2, eval_batches=1,
                  checkpoint_every=1, precision="fp32", threads=1, lr=1e-3)
    values.update(changes)
    return TrainConfig(**values)


class Stop(Exception):
    pass


def test_resume_is_exact(data_dir, tmp_path):
    straight = load_weights(train(config(data_dir, tmp_path / "straight"))).model.state_dict()

    def stop_at_two(record):
        if record["step"] == 2:
            raise Stop

    with pytest.raises(Stop):
        train(config(data_dir, tmp_path / "resumed"), on_metrics=stop_at_two)
    resumed = load_weights(train(config(data_dir, tmp_path / "resumed"))).model.state_dict()
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), name


def test_export_records_training(data_dir, tmp_path):
    path = train(config(data_dir, tmp_path / "run", max_steps=2))
    loaded = load_weights(path)
    assert loaded.config.train_context == 64
    import json
    phases = json.loads(loaded.metadata["training"])["phases"]
    assert phases[0]["steps"] == 2
    assert phases[0]["tokens_seen"] == 2 * 4 * 64
    assert "val_loss" in phases[0]["final_eval"]


def test_mix_file_rows(data_dir, tmp_path):
    rows = np.full((3, 64), 7, dtype=np.uint16)
    rows.tofile(tmp_path / "mix.bin")
    path = train(config(data_dir, tmp_path / "run", max_steps=1, mix_file=tmp_path / "mix.bin", mix_ratio=0.5))
    assert path.exists()


def test_answer_weights_mark_answers_after_the_lead():
    words = [11, 12, 13]
    row = [DOCUMENT_ID, 20, 21, QUESTION_ID, 22, ANSWER_ID, PAD_ID, PAD_ID, *words, EOS_ID, PAD_ID,
           DOCUMENT_ID, 23, QUESTION_ID, 24, ANSWER_ID, PAD_ID, 30, EOS_ID, 31, 32]
    weights = answer_loss_weights(torch.tensor([row, [40] * len(row)]), 5.0)
    marked = [position for position, weight in enumerate(weights[0].tolist()) if weight == 5.0]
    assert marked == [8, 9, 10, 11, 19, 20]
    assert (weights[1] == 1.0).all()


def test_answer_weights_run_to_row_end_without_eos():
    row = torch.tensor([[DOCUMENT_ID, 20, ANSWER_ID, PAD_ID, 30, 31]])
    assert answer_loss_weights(row, 3.0)[0].tolist() == [1.0, 1.0, 1.0, 1.0, 3.0, 3.0]


@pytest.mark.parametrize("preset", ["tiny", "tiny-vanilla"])
def test_weighted_loss_is_weighted_mean(preset):
    torch.manual_seed(0)
    model = build_model(PRESETS[preset]).eval()
    tokens = torch.randint(0, 256, (2, 32))
    plain = model.loss(tokens)
    ones = model.loss(tokens, torch.ones(2, 32))
    torch.testing.assert_close(ones["loss"], plain["loss"])
    weights = torch.zeros(2, 32)
    weights[1, 20] = 1.0  # only the target at position 20 of row 1 counts
    out = model.loss(tokens, weights)
    expected = F.cross_entropy(out["logits"][1, 20].float(), tokens[1, 20])
    rec_weight = getattr(PRESETS[preset], "rec_loss_weight", 0.0)
    torch.testing.assert_close(out["loss"], expected + rec_weight * out["rec_loss"])
    torch.testing.assert_close(out["token_loss"], plain["token_loss"])


def test_answer_weight_trains(data_dir, tmp_path):
    row = np.full(64, 7, dtype=np.uint16)
    row[10], row[11:15], row[20] = ANSWER_ID, PAD_ID, EOS_ID
    np.stack([row] * 3).tofile(tmp_path / "mix.bin")
    path = train(config(data_dir, tmp_path / "run", max_steps=1, mix_file=tmp_path / "mix.bin",
                        mix_ratio=0.5, answer_weight=4.0))
    import json
    phases = json.loads(load_weights(path).metadata["training"])["phases"]
    assert phases[-1]["answer_weight"] == 4.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_two_cpu_processes(data_dir, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
               "-m", "photon_cli.cli", "train", "--data-dir", str(data_dir), "--out-dir", str(out),
               "--model", "tiny", "--context", "64", "--batch-size", "2", "--max-steps", "3",
               "--warmup-steps", "1", "--eval-every", "3", "--device", "cpu", "--threads", "1",
               "--precision", "fp32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = load_weights(out / "model.safetensors")
    import json
    phase = json.loads(loaded.metadata["training"])["phases"][0]
    assert phase["world_size"] == 2
    assert phase["tokens_seen"] == 3 * 2 * 2 * 64


@pytest.mark.parametrize("changes, message", [({"answer_weight": 0.0}, "answer_weight"), ({"mix_ratio": 1.5}, "mix_ratio")])
def test_bad_loss_options_are_refused(data_dir, tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        train(config(data_dir, tmp_path / "run", **changes))
