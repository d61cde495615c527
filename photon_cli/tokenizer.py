"""Byte-level BPE tokenizer: training, loading and fingerprinting."""

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

logger = logging.getLogger(__name__)

# Special tokens and their fixed ids. Training reserves them first, in this order,
# so id 0 is always end-of-text. Model and data code may rely on these ids.
SPECIAL_TOKENS: dict[str, str] = {
    "eos": "<|endoftext|>",
    "pad": "<|pad|>",
    "document": "<|document|>",
    "question": "<|question|>",
    "answer": "<|answer|>",
    "reserved_0": "<|reserved_0|>",
    "reserved_1": "<|reserved_1|>",
    "reserved_2": "<|reserved_2|>",
}
SPECIAL_TOKEN_IDS: dict[str, int] = {token: i for i, token in enumerate(SPECIAL_TOKENS.values())}
EOS_TOKEN = SPECIAL_TOKENS["eos"]
EOS_ID = SPECIAL_TOKEN_IDS[EOS_TOKEN]
PAD_ID = SPECIAL_TOKEN_IDS[SPECIAL_TOKENS["pad"]]

DEFAULT_VOCAB_SIZE = 8192


def _new_byte_level_bpe() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    # No normalizer: callers normalise text with photon_cli.text.normalize_text first.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_tokenizer(
    text_iter: Iterable[str],
    out_path: Path,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    min_frequency: int = 2,
) -> Tokenizer:
    """Train a byte-level BPE on the texts, save it as JSON at out_path and return it.

    The special tokens take ids 0..7 in the order of SPECIAL_TOKENS. Every byte
    has a token, so any text can be encoded without an unknown token.
    """
    n_reserved = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size <= n_reserved:
        raise ValueError(
            f"vocab_size {vocab_size} is too small: the special tokens and the 256 byte tokens "
            f"already need {n_reserved} ids. Use a vocab_size above {n_reserved}."
        )
    if vocab_size > 2**16:
        raise ValueError(
            f"vocab_size {vocab_size} does not fit the uint16 token files; use at most {2**16}."
        )

    tokenizer = _new_byte_level_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    logger.info("training a byte-level BPE tokenizer with vocab_size=%d", vocab_size)
    tokenizer.train_from_iterator(text_iter, trainer=trainer)
    _check_special_token_ids(tokenizer, out_path)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_path))
    logger.info(
        "saved tokenizer with %d tokens to %s (sha256 %s)",
        tokenizer.get_vocab_size(),
        out_path,
        tokenizer_sha256(out_path),
    )
    return tokenizer


def load_tokenizer(path: Path) -> Tokenizer:
    """Load a tokenizer JSON file and check that its special-token ids are the fixed ones."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"tokenizer file not found: {path}. Build it with scripts/build_corpus.py "
            f"or pass the path of an existing tokenizer.json."
        )
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # the Rust side raises a plain Exception for any parse error
        raise ValueError(f"invalid tokenizer file {path}: {error}") from error
    _check_special_token_ids(tokenizer, path)
    return tokenizer


def tokenizer_sha256(path: Path) -> str:
    """Return the hex SHA-256 of the tokenizer file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_special_token_ids(tokenizer: Tokenizer, path: Path) -> None:
    for token, expected_id in SPECIAL_TOKEN_IDS.items():
        actual_id = tokenizer.token_to_id(token)
        if actual_id != expected_id:
            raise ValueError(
                f"invalid tokenizer {path}: special token {token} has id {actual_id}, "
                f"expected {expected_id}. Retrain it with photon_cli.tokenizer.train_tokenizer."
            )
