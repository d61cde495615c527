"""Strict weights loading: a file whose tensors do not match its config is rejected with every
offending tensor named, before the model is allocated."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from photon_cli.weights import WeightsError, load_weights, read_metadata
from support import DOCUMENT, invoke


def read_weights(path):
    with safe_open(str(path), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata()


@pytest.fixture
def edited(tiny_dir, tmp_path):
    """Write a copy of the tiny PHOTON weights with edited tensors or metadata; return its path."""
    shutil.copy(tiny_dir / "tokenizer.json", tmp_path / "tokenizer.json")

    def write(edit_tensors=None, **metadata_changes):
        tensors, metadata = read_weights(tiny_dir / "photon.safetensors")
        if edit_tensors:
            edit_tensors(tensors)
        path = tmp_path / "edited.safetensors"
        save_file(tensors, str(path), metadata={**metadata, **metadata_changes})
        return path

    return write


def test_missing_tensor_named(edited):
    path = edited(lambda t: t.pop("lm_head.weight"))
    with pytest.raises(WeightsError, match=r"missing tensors: lm_head\.weight"):
        load_weights(path)


def test_extra_tensor_named(edited):
    path = edited(lambda t: t.update({"encoders.0.extra.bias": torch.zeros(4)}))
    with pytest.raises(WeightsError, match=r"unexpected tensors: encoders\.0\.extra\.bias"):
        load_weights(path)


def test_wrong_shape_named(edited):
    path = edited(lambda t: t.update({"token_embed.weight": torch.zeros(320, 8)}))
    with pytest.raises(WeightsError, match=r"wrong shapes \(file != model\): token_embed\.weight "
                                           r"\(320, 8\) != \(320, 16\)"):
        load_weights(path)


def test_every_problem_listed_at_once(edited):
    def damage(tensors):
        tensors.pop("lm_head.weight")
        tensors.pop("start_latents")
        tensors["stray"] = torch.zeros(1)
        tensors["decoder_embed.weight"] = torch.zeros(3, 3)

    with pytest.raises(WeightsError) as caught:
        load_weights(edited(damage))
    message = str(caught.value)
    for name in ("lm_head.weight", "start_latents", "stray", "decoder_embed.weight (3, 3) != (320, 64)"):
        assert name in message


def test_integer_tensor_rejected(edited):
    path = edited(lambda t: t.update({"lm_head.weight": t["lm_head.weight"].to(torch.int32)}))
    with pytest.raises(WeightsError, match=r"non-float tensors: lm_head\.weight \(I32\)"):
        load_weights(path)


def test_huge_config_rejected_without_allocating(edited):
    """A config far larger than the file fails on the tensor shapes, not with an allocation."""
    config = json.loads(read_metadata(edited())["config"])
    path = edited(config=json.dumps({**config, "d_model": 2**20, "n_heads": 2**10, "d_ff": 2**24}))
    with pytest.raises(WeightsError, match="wrong shapes"):
        load_weights(path)


@pytest.mark.parametrize("config,fragment", [
    ("{not json", "invalid config"),
    ("[1, 2]", "invalid config"),
    (json.dumps({"kind": "photon", "vocab_size": 320}), "invalid config"),
    (json.dumps({"kind": "photon", "vocab_size": 320, "d_model": -64, "n_heads": 4, "d_ff": 128}),
     "invalid config"),
])
def test_invalid_config_rejected(edited, config, fragment):
    with pytest.raises(WeightsError, match=fragment):
        load_weights(edited(config=config))


def test_mismatched_weights_one_line_in_cli(edited, tmp_path):
    path = edited(lambda t: t.pop("lm_head.weight"))
    document = tmp_path / "doc.txt"
    document.write_text(DOCUMENT)

    result = invoke("ask", document, "Who?", "--model", path)

    assert result.exit_code == 1
    assert "Traceback" not in result.output
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("error: ") and "missing tensors: lm_head.weight" in line
