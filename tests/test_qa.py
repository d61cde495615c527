"""Fast tests of the question-answering examples, training rows and evaluation set.

Every record, WordNet data file, diatheke export and token file is small and written by
the test, and the tokenizer is trained on the test's own text.
"""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from photon_cli.data import qa
from photon_cli.prompt import ANSWER_ID, DOCUMENT_ID, EOS_ID, PAD_ID, QUESTION_ID, training_sample
from photon_cli.tokenizer import load_tokenizer, train_tokenizer

WORDS = (
    "the a of and to in that it with as for his was on be at by this had not are but from or have an they "
    "which one you were her all she there would their we him been has when who will more no if out so said "
    "what up its about into than them can only other new some could time these two may then do first any my "
    "now such like our over man me even most made after also did many before must through back years where "
    "much your way well down should because each just those people how too little state good very make world "
    "still own see men work long get here between both life being under never day same another know while "
    "last might great old year off come since against go came right used take three house garden letter "
    "river window morning evening journey friend sister brother carriage library table question answer"
).split()
HELDOUT_MARKER = "zanzibarquux"
TRAIN_ONLY_MARKER = "glorpfizzle"


def make_sentences(rng: random.Random, count: int, marker: str | None = None) -> list[str]:
    sentences = []
    for _ in range(count):
        words = rng.choices(WORDS, k=rng.randint(8, 16))
        if marker is not None:
            words[rng.randrange(len(words))] = marker
        sentences.append(" ".join(words).capitalize() + ".")
    return sentences


def wrap(text: str, width: int = 70, indent: str = "") -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(indent + line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(indent + line)
    return "\n".join(lines)


def make_paragraphs(rng: random.Random, count: int, marker: str | None = None, indent: str = "") -> str:
    return "\n\n".join(wrap(" ".join(make_sentences(rng, 4, marker)), indent=indent) for _ in range(count))


# ---------------------------------------------------------------------------
# Small records of every kind
# ---------------------------------------------------------------------------


def novel_record(rng: random.Random, title: str, marker: str | None = None) -> dict:
    chapters = [f"CHAPTER {numeral}\n\n\n{make_paragraphs(rng, 6, marker)}"
                for numeral in ("I", "II", "III", "IV", "V", "VI", "VII", "VIII")]
    text = f"{title.upper()}\n\nBy A. Writer\n\n\n\n" + "\n\n\n\n".join(chapters) + "\n"
    return {"source": "austen", "title": title, "text": text, "licence": "public domain"}


def speech_record(rng: random.Random, year: int, president: str, marker: str | None = None) -> dict:
    title = f"{year} State of the Union address, {president} (Republican)"
    text = "Fellow-Citizens of the Senate and House of Representatives: " + " ".join(make_sentences(rng, 80, marker))
    return {"source": "sotu", "title": title, "text": text, "licence": "public domain"}


def jargon_record(rng: random.Random) -> dict:
    entries = []
    for index in range(30):
        definition = wrap(" ".join(make_sentences(rng, 3)), indent="   ")
        entries.append(f"   :term{index}: /term/, n.\n\n   [from testing]{definition[2:]}")
    text = "   Glossary\n\n" + "\n\n".join(entries) + "\n\n                             Part III. Appendices\n"
    return {"source": "jargon_file", "title": "The Jargon File 4.4.7", "text": text, "licence": "public domain"}


def devils_record(rng: random.Random) -> dict:
    entries = []
    for index in range(30):
        headword = "WORD" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[index % 26] * (1 + index // 26)
        entries.append(wrap(f"{headword}, n.  " + " ".join(make_sentences(rng, 3))))
    return {"source": "devils_dictionary", "title": "The Devil's Dictionary", "text": "\n\n".join(entries) + "\n",
            "licence": "public domain"}


def wordnet_files(rng: random.Random, wordnet_dir: Path) -> dict:
    wordnet_dir.mkdir(parents=True, exist_ok=True)
    lines = ["  1 This software and database is being provided to you, the LICENSEE, by  "]
    glosses = []
    for index in range(60):
        gloss = " ".join(rng.choices(WORDS, k=10)) + f'; "an example {index}"'
        glosses.append(gloss)
        lines.append(f"{index:08d} 03 n 02 lemma_{index} 0 other_{index}(a) 0 000 | {gloss}  ")
    (wordnet_dir / "data.noun").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return {"source": "wordnet", "title": f"WordNet 3.0 noun glosses 1-{len(glosses)}",
            "text": "\n".join(glosses) + "\n", "licence": "WordNet 3.0 license"}


def rst_record(rng: random.Random, title: str = "library/testing", marker: str | None = None) -> dict:
    sections = [f"Section number {index}\n{'-' * 17}\n\n.. index:: single: test\n\n"
                + make_paragraphs(rng, 3, marker) for index in range(8)]
    text = f"Testing page\n{'=' * 12}\n\n" + "\n\n".join(sections) + "\n"
    return {"source": "python_docs", "title": title, "text": text, "licence": "PSF"}


def vim_record(rng: random.Random) -> dict:
    rule = "=" * 78
    sections = [f"{rule}\n*05.{index}*\tVim topic {index}\n\n{make_paragraphs(rng, 3)}\n\n\t:set number"
                for index in range(8)]
    text = "*testing.txt* For Vim\n\n" + "\n".join(sections) + "\n"
    return {"source": "vim_docs", "title": "testing.txt", "text": text, "licence": "Vim license"}


def sqlite_record(rng: random.Random) -> dict:
    toc = "\n\n".join(f"{index}. Topic number {index}" for index in range(1, 7))
    sections = []
    for index in range(1, 7):
        body = "\n\n".join(" ".join(make_sentences(rng, 4)) for _ in range(3))
        sections.append(f"{index}. Topic number {index}\n\n{body}")
    text = "Testing Page\n\nTable Of Contents\n\n" + toc + "\n\n" + "\n\n".join(sections) + "\n"
    return {"source": "sqlite_docs", "title": "testing.html", "text": text, "licence": "public domain"}


def bible_files(rng: random.Random, export_path: Path) -> list[dict]:
    lines, records = [], []
    for book in ("Genesis", "I Samuel"):
        contents = []
        for chapter in (1, 2, 3):
            for verse in range(1, 21):
                words = " ".join(rng.choices(WORDS, k=14))
                if book == "I Samuel" and verse == 5:
                    # A heading that diatheke prints before an indented reference line.
                    lines.append("A Psalm of testing.")
                    lines.append(f"   {book} {chapter}:{verse}: {words.capitalize()}.")
                else:
                    lines.append(f"{book} {chapter}:{verse}: {words.capitalize()}.")
                contents.append(f"{words.capitalize()}.")
        records.append({"source": "modern_bible", "title": book, "text": "\n".join(contents) + "\n",
                        "licence": "public domain"})
    lines.append("(engWEB2015eb)")
    export_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return records


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Training records of every kind, held-out records with a marker word, and their files."""
    folder = tmp_path_factory.mktemp("qa-corpus")
    rng = random.Random(7)
    export_path = folder / "bible.txt"
    train = [
        novel_record(rng, "Persuasion"),
        speech_record(rng, 1901, "Test President"),
        speech_record(rng, 1902, "Other Person"),
        jargon_record(rng),
        devils_record(rng),
        wordnet_files(rng, folder / "wordnet"),
        rst_record(rng),
        vim_record(rng),
        sqlite_record(rng),
        *bible_files(rng, export_path),
    ]
    # A held-out title in train.jsonl must be dropped as well.
    train.append(novel_record(rng, "Emma", marker=HELDOUT_MARKER))
    heldout = [
        novel_record(rng, "Northanger Abbey", marker=HELDOUT_MARKER),
        speech_record(rng, 1934, "Franklin D. Roosevelt", marker=HELDOUT_MARKER),
        speech_record(rng, 1935, "Franklin D. Roosevelt", marker=HELDOUT_MARKER),
        rst_record(rng, title="Python tutorial", marker=HELDOUT_MARKER),
    ]
    train[0]["text"] += make_paragraphs(rng, 2, TRAIN_ONLY_MARKER)

    texts = [record["text"] for record in train + heldout]
    tokenizer_path = folder / "tokenizer.json"
    train_tokenizer(texts, tokenizer_path, vocab_size=600)
    tokenizer = load_tokenizer(tokenizer_path)

    with open(folder / "train.jsonl", "w", encoding="utf-8") as file:
        for record in train:
            file.write(json.dumps(record) + "\n")
    with open(folder / "heldout.jsonl", "w", encoding="utf-8") as file:
        for record in heldout:
            file.write(json.dumps(record) + "\n")
    plain = [record["text"] for record in train if record["title"] != "Emma"]
    ids = [token for text in plain for token in tokenizer.encode(text).ids + [EOS_ID]]
    np.asarray(ids, dtype=np.uint16).tofile(folder / "train.bin")
    manifest = {"sources": {"modern_bible": {"raw_path": str(export_path)}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return {
        "dir": folder,
        "train": [record for record in train if record["title"] != "Emma"],
        "tokenizer_path": tokenizer_path,
        "wordnet_dir": folder / "wordnet",
        "bible_exports": {"modern_bible": export_path},
    }


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return load_tokenizer(corpus["tokenizer_path"])


def examples_for(corpus, tokenizer, distances, **options):
    return list(qa.iter_qa_examples(corpus["train"], tokenizer, distances, wordnet_dir=corpus["wordnet_dir"],
                                    bible_exports=corpus["bible_exports"], **options))


# ---------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------


def test_examples_cover_every_kind(corpus, tokenizer):
    examples = examples_for(corpus, tokenizer, [0, 40, 200])
    assert {example.kind for example in examples} == set(qa.KINDS)
    assert {example.source for example in examples if example.kind == "glossary"} <= {
        "jargon_file", "devils_dictionary", "wordnet"}


def test_answer_occurs_in_document(corpus, tokenizer):
    for example in examples_for(corpus, tokenizer, [0, 40, 200, 600], seed=3):
        if example.kind == "speech":
            header = example.document.split("\n", 1)[0]
            president, year = example.answer.rsplit(", ", 1)
            assert header == f"State of the Union Address, {year}, {president}"
            assert example.document[example.fact_start:example.fact_end] == header
        else:
            assert example.answer in example.document, example
            assert example.document[example.fact_start:example.fact_end] == example.answer
        assert "\n" not in example.answer
        assert 2 <= len(example.answer.split()) <= qa.MAX_ANSWER_WORDS


def test_questions_use_kind_wording(corpus, tokenizer):
    for example in examples_for(corpus, tokenizer, [100], seed=5):
        if example.kind == "novel":
            assert example.question.startswith("How does Chapter ")
        elif example.kind == "manual":
            assert example.question.startswith('What does the section "')
        elif example.kind == "bible":
            assert example.question.startswith(("What does Genesis ", "What does I Samuel "))
        elif example.kind == "speech":
            assert example.question == "Who delivered this address, and in what year?"
        else:
            assert example.question.endswith(" mean?")


@pytest.mark.parametrize("distance", [0, 120, 500])
def test_distance_tokens_near_request(corpus, tokenizer, distance):
    for example in examples_for(corpus, tokenizer, [distance], seed=distance):
        assert abs(example.distance_tokens - distance) <= 0.1 * distance + qa.UNIT + 4, (example.kind, example)


def test_distance_tokens_counts_to_question(corpus, tokenizer):
    for example in examples_for(corpus, tokenizer, [0, 300], seed=11):
        question_ids = tokenizer.encode(example.question).ids
        answer_ids = tokenizer.encode(example.answer).ids
        sample = training_sample(example.document_ids, question_ids, answer_ids, qa.UNIT)
        fact_tokens = len(tokenizer.encode(example.document[:example.fact_end]).ids)
        # <|document|> sits at position 0, so the fact's last token is at position fact_tokens.
        expected = sample.index(QUESTION_ID) - fact_tokens - 1
        assert abs(example.distance_tokens - expected) <= 2, example.kind


def test_answer_follows_lead_chunk(corpus, tokenizer):
    """<|answer|> ends a meta-context; a chunk of 4 padding tokens comes before the answer."""
    for example in examples_for(corpus, tokenizer, [0, 37, 250], seed=13):
        question_ids = tokenizer.encode(example.question).ids
        answer_ids = tokenizer.encode(example.answer).ids
        sample = training_sample(example.document_ids, question_ids, answer_ids, qa.UNIT)
        marker = sample.index(ANSWER_ID)
        assert (marker + 1) % qa.UNIT == 0
        assert sample[marker + 1:marker + 5] == [PAD_ID] * 4
        answer_start = marker + 5
        assert sample[0] == DOCUMENT_ID
        assert tokenizer.decode(sample[answer_start:-1]) == example.answer


def test_sample_fits_max_sample_tokens(corpus, tokenizer):
    for example in examples_for(corpus, tokenizer, [900], seed=17, before_tokens=400, max_sample_tokens=256):
        question_ids = tokenizer.encode(example.question).ids
        answer_ids = tokenizer.encode(example.answer).ids
        assert len(training_sample(example.document_ids, question_ids, answer_ids, qa.UNIT)) <= 256


def test_questions_name_unique_keys(tokenizer):
    # Two volumes that both number their chapters from I, as Emma does.
    rng = random.Random(5)
    first, second = novel_record(rng, "Two Volumes"), novel_record(rng, "Two Volumes")
    record = dict(first, text=first["text"] + "\n\n\n\nVOLUME II\n\n\n\n" + second["text"])
    builder = qa.ExampleBuilder(qa.annotate_records([record]), tokenizer)
    rng = np.random.default_rng(0)
    for _ in range(20):
        example = builder.build("novel", 1500, rng, before_tokens=1500)
        number = example.question.removeprefix("How does Chapter ").removesuffix(" begin?")
        assert example.document.count(f"CHAPTER {number}\n") == 1, example.question


# ---------------------------------------------------------------------------
# Parsing helpers
# ---------------------------------------------------------------------------


def test_answer_span_skips_abbreviations():
    text = "Mr. Darcy met Franklin D. Roosevelt at St. Paul. Then they left."
    start, end = qa.answer_span(text, 0)
    assert text[start:end] == "Mr. Darcy met Franklin D. Roosevelt at St. Paul."


def test_answer_span_cuts_long_sentences():
    text = " ".join(f"word{index}," for index in range(50)) + " end."
    start, end = qa.answer_span(text, 0, max_words=30)
    assert text[start:end] == " ".join(f"word{index}," for index in range(30))[:-1]


def test_diatheke_heading_is_dropped():
    export = (
        "Psalms 2:12: Kiss the son,\nlest he be angry. \n\n"
        "A Psalm by David.\n   Psalms 3:1: Yahweh, how my adversaries have increased!\n"
        "A Psalm by David.\n   Psalms 3:2: Many there be.\n(engWEB2015eb)\n"
    )
    assert qa.read_diatheke_verses(export) == [
        ("Psalms", "2:12", "Kiss the son, lest he be angry."),
        ("Psalms", "3:1", "Yahweh, how my adversaries have increased!"),
        ("Psalms", "3:2", "Many there be."),
    ]


def test_html_manual_skips_table_of_contents():
    text = ("1. Intro\n\n2. Details\n\nThis page describes the testing format in full detail here.\n\n"
            "1. Intro\n\nThe intro section explains the basic ideas of the format well.\n\n"
            "2. Details\n\nThe details section lists every field of the format in order.\n")
    annotated = qa.annotate_html_manual(text, "sqlite_docs", "testing.html")
    assert [(fact.key, fact.answer) for fact in annotated.facts] == [
        ("Intro", "The intro section explains the basic ideas of the format well."),
        ("Details", "The details section lists every field of the format in order."),
    ]


def test_wordnet_record_must_match_data_file(corpus):
    wordnet = next(record for record in corpus["train"] if record["source"] == "wordnet")
    record = dict(wordnet, text="a gloss that is not in the data file\n")
    assert qa.annotate_wordnet([record], corpus["wordnet_dir"]) == []


# ---------------------------------------------------------------------------
# Training rows and evaluation set
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rows(corpus, tmp_path_factory):
    out_path = tmp_path_factory.mktemp("qa-rows") / "qa-512.bin"
    sidecar_path = qa.build_qa_rows(corpus["dir"], corpus["tokenizer_path"], out_path, 512, 20, seed=1,
                                    wordnet_dir=corpus["wordnet_dir"])
    return out_path, sidecar_path


def test_rows_have_context_tokens(rows):
    out_path, sidecar_path = rows
    data = np.fromfile(out_path, dtype=np.uint16)
    assert data.size == 20 * 512
    data = data.reshape(20, 512)
    assert (data[:, 0] == DOCUMENT_ID).all()
    sidecar = json.loads(sidecar_path.read_text())
    assert sidecar["context"] == 512
    assert sidecar["n_rows"] == 20
    assert sum(sidecar["kinds"].values()) == 20
    assert set(sidecar["kinds"]) == set(qa.KINDS)
    assert sum(sidecar["distance_histogram"]["counts"]) == 20


def test_rows_put_answer_on_unit(rows, tokenizer):
    out_path, _ = rows
    data = np.fromfile(out_path, dtype=np.uint16).reshape(20, 512)
    row_records = [json.loads(line) for line in out_path.with_suffix(".rows.jsonl").read_text().splitlines()]
    for row, record in zip(data, row_records):
        answer_start = record["answer_start"]
        assert answer_start % qa.UNIT == 4
        assert row[answer_start - 5] == ANSWER_ID
        assert row[answer_start - 4:answer_start].tolist() == [PAD_ID] * 4
        assert row[record["sample_tokens"] - 1] == EOS_ID
        assert tokenizer.decode(row[answer_start:record["sample_tokens"] - 1].tolist()) == record["answer"]


def test_rows_exclude_heldout_text(rows, tokenizer):
    out_path, _ = rows
    data = np.fromfile(out_path, dtype=np.uint16).reshape(20, 512)
    for row in data:
        assert HELDOUT_MARKER not in tokenizer.decode(row.tolist())


def test_rows_depend_only_on_seed(corpus, rows, tmp_path):
    out_path, _ = rows
    again = tmp_path / "again.bin"
    qa.build_qa_rows(corpus["dir"], corpus["tokenizer_path"], again, 512, 20, seed=1, wordnet_dir=corpus["wordnet_dir"])
    assert again.read_bytes() == out_path.read_bytes()
    other = tmp_path / "other.bin"
    qa.build_qa_rows(corpus["dir"], corpus["tokenizer_path"], other, 512, 20, seed=2, wordnet_dir=corpus["wordnet_dir"])
    assert other.read_bytes() != out_path.read_bytes()


@pytest.fixture(scope="module")
def packed_rows(corpus, tmp_path_factory):
    out_path = tmp_path_factory.mktemp("qa-packed") / "qa-1024.bin"
    qa.build_qa_rows(corpus["dir"], corpus["tokenizer_path"], out_path, 1024, 6, seed=1,
                     wordnet_dir=corpus["wordnet_dir"], max_distance=200, pack=True)
    records = [json.loads(line) for line in out_path.with_suffix(".rows.jsonl").read_text().splitlines()]
    return np.fromfile(out_path, dtype=np.uint16).reshape(6, 1024), records


def test_packed_rows_hold_several_samples(packed_rows):
    data, records = packed_rows
    assert len(records) > len(data)
    assert {record["row"] for record in records} == set(range(len(data)))


def test_packed_samples_align_to_units(packed_rows, tokenizer):
    data, records = packed_rows
    for record in records:
        row, offset = data[record["row"]], record["offset"]
        assert offset % qa.UNIT == 0
        assert row[offset] == DOCUMENT_ID
        assert record["distance_tokens"] <= 200 + qa.UNIT
        answer_start = record["answer_start"]
        assert answer_start % qa.UNIT == 4
        assert row[answer_start - 5] == ANSWER_ID
        end = offset + record["sample_tokens"]
        assert row[end - 1] == EOS_ID
        assert tokenizer.decode(row[answer_start:end - 1].tolist()) == record["answer"]


def test_packed_samples_are_separated_by_padding_only(packed_rows):
    data, records = packed_rows
    for previous, record in zip(records, records[1:]):
        if previous["row"] == record["row"]:
            gap = data[record["row"]][previous["offset"] + previous["sample_tokens"]:record["offset"]]
            assert len(gap) < qa.UNIT
            assert (gap == PAD_ID).all()


def test_rows_reject_short_context(corpus, tmp_path):
    with pytest.raises(ValueError, match="too short"):
        qa.build_qa_rows(corpus["dir"], corpus["tokenizer_path"], tmp_path / "x.bin", 100, 2, seed=1)


def test_eval_uses_heldout_documents_only(corpus, tmp_path):
    out_path = tmp_path / "eval.jsonl"
    counts = qa.build_qa_eval(corpus["dir"], corpus["tokenizer_path"], out_path, [50, 200], 3, seed=1,
                              contexts=(512, 1024))
    records = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert counts == {"manual": 6, "speech": 6, "novel": 6}
    assert len(records) == 18
    assert {record["kind"] for record in records} == {"manual", "speech", "novel"}
    assert len({record["id"] for record in records}) == len(records)
    for record in records:
        assert record["title"] in {"Northanger Abbey", "Python tutorial",
                                   "1934 State of the Union address, Franklin D. Roosevelt (Republican)",
                                   "1935 State of the Union address, Franklin D. Roosevelt (Republican)"}
        assert TRAIN_ONLY_MARKER not in record["document"]
        if record["kind"] != "speech":
            assert record["answer"] in record["document"]
        assert record["sample_tokens"] <= 512


def test_repeat_rows_copy_the_document(corpus, tokenizer, tmp_path):
    path = qa.build_repeat_rows(corpus["dir"], corpus["tokenizer_path"], tmp_path / "repeat.bin", 512, 4, seed=1,
                                min_tokens=8, max_tokens=40)
    data = np.fromfile(path, dtype=np.uint16).reshape(4, 512)
    question = tokenizer.encode(qa.REPEAT_QUESTION, add_special_tokens=False).ids
    samples = 0
    for row in data.tolist():
        for start in [i for i, token in enumerate(row) if token == DOCUMENT_ID]:
            assert start % qa.UNIT == 0
            answer_at = row.index(ANSWER_ID, start)
            document = [t for t in row[start + 1:row.index(QUESTION_ID, start)] if t != PAD_ID]
            end = row.index(EOS_ID, answer_at)
            assert row[answer_at - len(question):answer_at] == question
            assert row[answer_at + 1:answer_at + 5] == [PAD_ID] * 4
            assert row[answer_at + 5:end] == document
            assert 8 <= len(document) <= 40
            assert EOS_ID not in document
            samples += 1
    assert samples > 4


def test_repeat_rows_refuse_too_short_context(corpus, tmp_path):
    with pytest.raises(ValueError, match="too short"):
        qa.build_repeat_rows(corpus["dir"], corpus["tokenizer_path"], tmp_path / "r.bin", 64, 1, seed=1, max_tokens=60)
