"""Fast tests of corpus extraction, splitting, tokenizer training and token files.

Every input is a small file that the test writes, and nothing is installed or downloaded.
"""

import json
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from photon_cli.data import corpus as corpus_module
from photon_cli.data import extract
from photon_cli.data.corpus import (
    MIX,
    MixNode,
    allocate_tokens,
    drop_heldout_copies,
    is_heldout,
    read_jsonl,
    sample_documents,
    split_records,
    tokenize_corpus,
    write_examples,
)
from photon_cli.text import normalize_text
from photon_cli.tokenizer import (
    EOS_ID,
    SPECIAL_TOKENS,
    load_tokenizer,
    tokenizer_sha256,
    train_tokenizer,
)

# ---------------------------------------------------------------------------
# Jane Austen: a synthetic R lazy-load database
# ---------------------------------------------------------------------------

_UTF8_LEVELS = 1 << 3


def _r_xdr_character_vector(strings: list[str | None], version: int = 3) -> bytes:
    data = b"X\n" + struct.pack(">iii", version, 0x040201, 0x030500)
    if version == 3:
        data += struct.pack(">i", 5) + b"UTF-8"
    data += struct.pack(">ii", 16, len(strings))
    for string in strings:
        if string is None:
            data += struct.pack(">ii", 9, -1)
        else:
            encoded = string.encode("utf-8")
            data += struct.pack(">ii", 9 | (_UTF8_LEVELS << 12), len(encoded)) + encoded
    return data


def _rdb(objects: list[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(raw)) + zlib.compress(raw) for raw in objects)


def _novel_lines(title: str) -> list[str | None]:
    return [title.upper(), "", "By Jane Austen", None, f"The story of {title}, café included."]


def test_austen_rdb_roundtrip(tmp_path):
    objects = [_r_xdr_character_vector(_novel_lines(title)) for title in extract.AUSTEN_TITLES]
    rdb_path = tmp_path / "Rdata.rdb"
    rdb_path.write_bytes(_rdb(objects))

    novels = extract.extract_austen_novels(rdb_path)

    assert [title for title, _ in novels] == list(extract.AUSTEN_TITLES)
    emma_text = novels[0][1]
    assert emma_text.startswith("EMMA\n\nBy Jane Austen\n\n")
    assert "The story of Emma, café included." in emma_text


def test_r_character_vector_version_2_and_na():
    data = _r_xdr_character_vector(["a", None, "ß"], version=2)
    assert extract.parse_r_character_vector(data) == ["a", None, "ß"]


def test_austen_rdb_rejects_wrong_order(tmp_path):
    titles = list(extract.AUSTEN_TITLES)
    titles[0], titles[1] = titles[1], titles[0]
    rdb_path = tmp_path / "Rdata.rdb"
    rdb_path.write_bytes(_rdb([_r_xdr_character_vector(_novel_lines(t)) for t in titles]))
    with pytest.raises(ValueError, match="expected the title 'Emma'"):
        extract.extract_austen_novels(rdb_path)


def test_rdb_rejects_truncated_stream():
    data = _rdb([_r_xdr_character_vector(["x" * 100])])
    with pytest.raises(ValueError, match="truncated"):
        extract.read_rdb_chunks(data[:-5])


def test_r_parser_rejects_other_types():
    data = b"X\n" + struct.pack(">iii", 2, 0, 0) + struct.pack(">ii", 13, 1) + struct.pack(">i", 7)
    with pytest.raises(ValueError, match="type 13"):
        extract.parse_r_character_vector(data)


# ---------------------------------------------------------------------------
# Other extractors
# ---------------------------------------------------------------------------


def test_wordnet_gloss_lines():
    data = (
        "  1 This software and database is being provided to you | under licence\n"
        "  2 more licence text\n"
        "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived to exist\n"
        "00002137 03 n 02 abstraction 0 abstract_entity 0 | a concept; \"caf\xe9 society\"  \n"
        "00002452 03 n 01 thing 0 000\n"
    ).encode("latin-1")

    glosses = extract.extract_wordnet_glosses(data)

    assert glosses == ["that which is perceived to exist", 'a concept; "café society"']


def test_html_to_text_blocks_and_scripts():
    html = (
        "<html><head><style>p {color: red}</style><script>var x = '<p>';</script></head>"
        "<body><h1>Title</h1><p>First   paragraph\nwraps &amp; joins.</p>"
        "<div><p>Second</p></div><br><br><br>"
        "<pre>line one\n  indented  two\n</pre><ul><li>item a</li><li>item b</li></ul></body></html>"
    )

    text = extract.html_to_text(html)

    assert "color" not in text
    assert "var x" not in text
    assert text.startswith("Title\n\nFirst paragraph wraps & joins.\n\nSecond\n")
    assert "\n\n\n" not in text
    assert "line one\n  indented  two\n" in text
    assert "item a\n\nitem b\n" in text


def test_diatheke_reference_stripping():
    export = (
        "Genesis 1:1: In the beginning God created the heaven and the earth.\n"
        "Genesis 1:2: And the earth was without form. \n"
        "I Samuel 1:1: ¶ Now there was a certain man.\n"
        "a poetry continuation line\n"
        "Psalm heading.\n"
        "   I Samuel 1:2: And he had two wives.\n"
        "Psalm heading.\n"
        "   I Samuel 1:3: And this man went up.\n"
        "Revelation of John 22:21: The grace be with you all. Amen.\n"
        "(engKJV2006eb)\n"
    )

    books = extract.split_diatheke_books(export)

    assert [book for book, _ in books] == ["Genesis", "I Samuel", "Revelation of John"]
    assert books[0][1] == (
        "In the beginning God created the heaven and the earth.\nAnd the earth was without form.\n"
    )
    samuel = books[1][1]
    assert samuel.startswith("Now there was a certain man.\na poetry continuation line\nPsalm heading.\n")
    assert samuel.count("Psalm heading.") == 1
    assert "1:2" not in samuel
    assert "engKJV2006eb" not in books[2][1]


def test_sotu_filename_parsing():
    assert extract.parse_sotu_filename("1934_franklin_d_roosevelt_d.txt") == (1934, "Franklin D. Roosevelt", "Democratic")
    assert extract.parse_sotu_filename("1897_william_mc_kinley_r.txt") == (1897, "William McKinley", "Republican")
    assert extract.parse_sotu_filename("1841_john_tyler_wd.txt") == (1841, "John Tyler", "Whig & Democratic")
    with pytest.raises(ValueError, match="unknown party code"):
        extract.parse_sotu_filename("1900_someone_xx.txt")


def test_dictd_extraction_skips_metadata():
    entries = [
        ("00databaseshort", b"00-database-short\n     A Dictionary\n"),
        ("00databaseinfo", b"Preface text.\n"),
        ("apple", b"APPLE, n.  A fruit.\n"),
        ("zebra", b"ZEBRA, n.  A striped horse.\n"),
    ]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def b64(n):
        return alphabet[n // 64] + alphabet[n % 64]

    dict_bytes = b""
    index_lines = []
    for headword, body in entries:
        index_lines.append(f"{headword}\t{b64(len(dict_bytes))}\t{b64(len(body))}")
        dict_bytes += body
    index_lines.sort()  # dictd indexes are sorted by headword, not by offset

    text = extract.extract_dictd_text(dict_bytes, "\n".join(index_lines))

    assert text == "Preface text.\n\nAPPLE, n.  A fruit.\n\nZEBRA, n.  A striped horse.\n"


def test_toctree_names():
    index = "Intro\n\n.. toctree::\n   :numbered:\n\n   appetite.rst\n   Title <interpreter.rst>\n\nAfter.\n   notlisted.rst\n"
    assert extract.read_toctree(index) == ["appetite", "interpreter"]


# ---------------------------------------------------------------------------
# Normalisation and splits
# ---------------------------------------------------------------------------


def test_normalize_text_bom_newlines_nfc():
    decomposed = "cafe\u0301"
    text = "\ufeffline one\r\nline two\rline three\n" + decomposed

    normalized = normalize_text(text)

    assert not normalized.startswith("\ufeff")
    assert "\r" not in normalized
    assert normalized == "line one\nline two\nline three\ncafé"
    assert normalized.endswith("\u00e9")


def test_normalize_text_keeps_inner_bom():
    assert normalize_text("a\ufeffb") == "a\ufeffb"


def _record(source, title, text="some text"):
    return {"source": source, "title": title, "text": text, "licence": "test"}


def test_heldout_documents_never_in_train():
    records = [
        _record("austen", "Emma"),
        _record("austen", "Persuasion"),
        _record("austen", "Northanger Abbey"),
        _record("sotu", "1934 State of the Union address, Franklin D. Roosevelt (Democratic)"),
        _record("sotu", "1905 State of the Union address, Theodore Roosevelt (Republican)"),
        _record("vim_docs", "Vim user manual"),
        _record("vim_docs", "options.txt"),
        _record("python_docs", "Python tutorial"),
        _record("python_docs", "library/os"),
        _record("sqlite_docs", "fileformat2.html"),
        _record("licences", "GPL-3"),
        _record("licences", "GPL-2"),
        _record("emma_fan_fiction", "Emma"),
    ]

    train, heldout = split_records(records)

    train_keys = {(r["source"], r["title"]) for r in train}
    heldout_keys = {(r["source"], r["title"]) for r in heldout}
    assert heldout_keys == {
        ("austen", "Emma"),
        ("austen", "Northanger Abbey"),
        ("sotu", "1934 State of the Union address, Franklin D. Roosevelt (Democratic)"),
        ("vim_docs", "Vim user manual"),
        ("python_docs", "Python tutorial"),
        ("sqlite_docs", "fileformat2.html"),
        ("licences", "GPL-3"),
    }
    assert not train_keys & heldout_keys
    assert len(train) + len(heldout) == len(records)
    assert all(not is_heldout(r) for r in train)


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

_WORDS = (
    "the of and to in that it was he for on are with as his they be at one have this from "
    "table select index column vim buffer window python module class function grace lord "
    "definition noun verb licence copyright software warranty"
).split()


def _random_text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n_words)) + ".\n"


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory) -> Path:
    rng = random.Random(0)
    texts = [_random_text(rng, 200) for _ in range(50)]
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(iter(texts), path, vocab_size=400)
    return path


def test_tokenizer_special_token_ids(small_tokenizer):
    tokenizer = load_tokenizer(small_tokenizer)
    for expected_id, token in enumerate(SPECIAL_TOKENS.values()):
        assert tokenizer.token_to_id(token) == expected_id
    assert EOS_ID == 0
    assert tokenizer.get_vocab_size() == 400


def test_tokenizer_roundtrip_bytes(small_tokenizer):
    tokenizer = load_tokenizer(small_tokenizer)
    text = "select column from table; ünïcødé — ✓ and  spaces\n\ttab"
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode("the table").ids[0] != tokenizer.encode(" the table").ids[0]


def test_tokenizer_sha256_changes_with_file(small_tokenizer, tmp_path):
    copy = tmp_path / "copy.json"
    copy.write_bytes(small_tokenizer.read_bytes())
    assert tokenizer_sha256(copy) == tokenizer_sha256(small_tokenizer)
    copy.write_bytes(small_tokenizer.read_bytes() + b" ")
    assert tokenizer_sha256(copy) != tokenizer_sha256(small_tokenizer)


def test_load_tokenizer_errors(tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_tokenizer(missing)
    invalid = tmp_path / "invalid.json"
    invalid.write_text("{not json")
    with pytest.raises(ValueError, match="invalid.json"):
        load_tokenizer(invalid)


# ---------------------------------------------------------------------------
# Mix allocation and token files
# ---------------------------------------------------------------------------


def test_allocate_tokens_caps():
    natural = {
        "austen": 750_000, "sotu": 2_300_000, "jargon_file": 500_000, "devils_dictionary": 100_000,
        "modern_bible": 1_800_000, "kjv": 1_300_000,
        "python_docs": 2_900_000, "sqlite_docs": 2_200_000, "postgresql_docs": 2_000_000, "vim_docs": 2_900_000,
        "wordnet": 2_400_000, "licences": 50_000,
    }
    total = 20_000_000

    targets = allocate_tokens(MIX, natural, total)

    assert targets["licences"] == pytest.approx(150_000)  # three passes, far below 5 %
    assert targets["modern_bible"] + targets["kjv"] == pytest.approx(0.12 * total)
    assert targets["kjv"] <= 0.05 * total + 1
    assert sum(targets.values()) == pytest.approx(total)
    rest = total - targets["licences"]
    prose = sum(targets[s] for s in ("austen", "sotu", "jargon_file", "devils_dictionary", "modern_bible", "kjv"))
    technical = sum(targets[s] for s in ("python_docs", "sqlite_docs", "postgresql_docs", "vim_docs"))
    assert prose == pytest.approx(rest * 0.40 / 0.95)
    assert technical == pytest.approx(rest * 0.45 / 0.95)
    assert targets["wordnet"] == pytest.approx(rest * 0.10 / 0.95)
    assert targets["python_docs"] / targets["sqlite_docs"] == pytest.approx(2_900_000 / 2_200_000)


def test_allocate_tokens_kjv_cap_redistributes():
    mix = MixNode("all", children=(
        MixNode("bibles", weight=1.0, children=(MixNode("modern_bible"), MixNode("kjv", max_share=0.05))),
    ))
    targets = allocate_tokens(mix, {"modern_bible": 100, "kjv": 900}, 1000)
    assert targets["kjv"] == pytest.approx(50)
    assert targets["modern_bible"] == pytest.approx(950)


def test_sample_documents_repeats_to_target():
    rng = np.random.default_rng(0)
    lengths = [10] * 10
    picks = sample_documents(lengths, 250, rng)
    assert sum(lengths[i] for i in picks) == 250
    assert sorted(set(picks)) == list(range(10))
    assert sample_documents(lengths, 0, rng) == []


def _split_at_eos(tokens: np.ndarray) -> list[tuple[int, ...]]:
    documents, current = [], []
    for token in tokens.tolist():
        if token == EOS_ID:
            documents.append(tuple(current))
            current = []
        else:
            current.append(token)
    assert not current, "token file does not end with the end-of-text id"
    return documents


def test_tokenize_corpus_bins_and_weights(tmp_path, small_tokenizer):
    rng = random.Random(1)
    records = []
    for source in MIX.leaves():
        for i in range(40):
            # A unique first word per document makes documents distinguishable after tokenizing.
            text = f"{source}{i}: " + _random_text(rng, rng.randint(20, 60))
            records.append(_record(source, f"{source} {i}", text))
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    with open(corpus_dir / "train.jsonl", "w") as file:
        for record in records:
            file.write(json.dumps(record) + "\n")
    with open(corpus_dir / "heldout.jsonl", "w") as file:
        file.write(json.dumps(_record("austen", "Emma", "EMMA\nA held-out novel.\n")) + "\n")

    bins_path = tokenize_corpus(corpus_dir, small_tokenizer, tmp_path / "out", target_tokens=60_000, val_fraction=0.05)

    stats = json.loads(bins_path.read_text())
    train = np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "out" / "val.bin", dtype=np.uint16)
    assert train[-1] == EOS_ID
    assert val[-1] == EOS_ID
    assert len(train) == stats["train_tokens"]
    assert len(val) == stats["val_tokens"]
    assert abs(len(train) - 60_000) < 60_000 * 0.02

    train_docs = _split_at_eos(train)
    val_docs = _split_at_eos(val)
    assert all(train_docs)
    assert all(val_docs)
    assert len(val_docs) == sum(s["val_documents"] for s in stats["sources"].values())
    assert not set(train_docs) & set(val_docs)

    for group in MIX.children:
        assert stats["groups"][group.name]["share"] == pytest.approx(group.weight, abs=0.02), group.name
    bible_share = stats["sources"]["modern_bible"]["share"] + stats["sources"]["kjv"]["share"]
    assert bible_share <= 0.12 + 0.01
    assert stats["sources"]["kjv"]["share"] <= 0.05 + 0.01

    heldout_file = tmp_path / "out" / "heldout" / "austen_emma.txt"
    assert heldout_file.read_text() == "EMMA\nA held-out novel.\n"
    assert stats["heldout"]["austen_emma.txt"]["tokens"] > 0


def test_tokenize_corpus_is_deterministic(tmp_path, small_tokenizer):
    rng = random.Random(2)
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    with open(corpus_dir / "train.jsonl", "w") as file:
        for i in range(30):
            file.write(json.dumps(_record("sotu", f"speech {i}", _random_text(rng, 40))) + "\n")
    outputs = []
    for name in ("a", "b"):
        tokenize_corpus(corpus_dir, small_tokenizer, tmp_path / name, target_tokens=5_000)
        outputs.append((tmp_path / name / "train.bin").read_bytes())
    assert outputs[0] == outputs[1]


def test_read_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert [r["a"] for r in read_jsonl(path)] == [1, 2]


def test_write_examples_from_heldout(tmp_path):
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    heldout = [
        _record("austen", "Northanger Abbey", "NORTHANGER ABBEY\n"),
        _record("sqlite_docs", "fileformat2.html", "Database File Format\n"),
        _record("sotu", "1935 State of the Union address, Franklin D. Roosevelt (Democratic)", "Second.\n"),
        _record("sotu", "1934 State of the Union address, Franklin D. Roosevelt (Democratic)", "First.\n"),
        _record("austen", "Emma", "EMMA\n"),
    ]
    with open(corpus_dir / "heldout.jsonl", "w") as file:
        for record in heldout:
            file.write(json.dumps(record) + "\n")

    written = write_examples(corpus_dir, tmp_path / "examples")

    assert sorted(path.name for path in written) == [
        "fdr_state_of_the_union.txt", "northanger_abbey.txt", "sqlite_fileformat.txt",
    ]
    assert (tmp_path / "examples" / "northanger_abbey.txt").read_text() == "NORTHANGER ABBEY\n"
    fdr = (tmp_path / "examples" / "fdr_state_of_the_union.txt").read_text()
    assert fdr == (
        "# 1934 State of the Union address, Franklin D. Roosevelt (Democratic)\n\nFirst.\n\n"
        "# 1935 State of the Union address, Franklin D. Roosevelt (Democratic)\n\nSecond.\n"
    )


def test_drop_heldout_copies():
    shared = "\n".join(f"This sentence number {i} appears in the held-out specification." for i in range(20))
    heldout = [_record("sqlite_docs", "fileformat2.html", "Header\n" + shared + "\n")]
    train = [
        _record("sqlite_docs", "fileformat.html", "Other header\n" + shared + "\n"),
        _record("sqlite_docs", "lang.html", "A page that quotes one line:\n" + shared.split("\n")[0] + "\n" + "x" * 2000),
        _record("sqlite_docs", "short.html", "Short lines\nare never matched\n"),
    ]

    kept, dropped = drop_heldout_copies(train, heldout)

    assert [r["title"] for r in dropped] == ["fileformat.html"]
    assert [r["title"] for r in kept] == ["lang.html", "short.html"]


@pytest.mark.parametrize("exists, retrain, trained", [(True, False, False), (True, True, True), (False, False, True)])
def test_fetch_keeps_an_existing_tokenizer(tmp_path, monkeypatch, exists, retrain, trained):
    # The shipped weights record weights/tokenizer.json's sha256; rebuilding the corpus must not replace it.
    tokenizer_path = tmp_path / "tokenizer.json"
    if exists:
        tokenizer_path.write_text("{}")
    calls = []
    monkeypatch.setattr(corpus_module, "build_corpus", lambda work_dir, out_dir: out_dir / "manifest.json")
    monkeypatch.setattr(corpus_module, "read_jsonl", lambda path: iter([{"text": "x"}]))
    monkeypatch.setattr(corpus_module, "tokenizer_sha256", lambda path: "0" * 64)
    monkeypatch.setattr(corpus_module, "train_tokenizer", lambda texts, path, vocab_size: calls.append(path))
    monkeypatch.setattr(corpus_module, "tokenize_corpus", lambda *args: tmp_path / "bins.json")
    corpus_module.prepare_corpus(tmp_path / "raw", tmp_path / "corpus", tokenizer_path, retrain_tokenizer=retrain)
    assert bool(calls) == trained
