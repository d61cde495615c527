"""Shared fixtures: a tiny tokenizer and tiny random-weight models, and an isolated cache folder."""

import dataclasses
from pathlib import Path

import pytest
import torch

from photon_cli.config import PRESETS
from photon_cli.model import Photon
from photon_cli.tokenizer import tokenizer_sha256, train_tokenizer
from photon_cli.vanilla import Vanilla
from photon_cli.weights import save_weights

TOKENIZER_TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. The file format of the database is described in this section. "
    "Café naïve résumé 東京 日本語 😀 🎉 "
) * 20
TINY_VOCAB = 320


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A folder with tokenizer.json, photon.safetensors and vanilla.safetensors (random weights)."""
    folder = tmp_path_factory.mktemp("tiny-weights")
    train_tokenizer([TOKENIZER_TEXT], folder / "tokenizer.json", vocab_size=TINY_VOCAB)
    sha = tokenizer_sha256(folder / "tokenizer.json")
    torch.manual_seed(0)
    photon = Photon(dataclasses.replace(PRESETS["tiny"], vocab_size=TINY_VOCAB, max_context=2048))
    save_weights(photon, folder / "photon.safetensors", sha)
    vanilla = Vanilla(dataclasses.replace(PRESETS["tiny-vanilla"], vocab_size=TINY_VOCAB, max_context=2048))
    save_weights(vanilla, folder / "vanilla.safetensors", sha)
    return folder


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """Keep caches and chat history of every test in its own tmp_path."""
    monkeypatch.setenv("PHOTON_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
