"""Fetch the corpus sources, build the splits, train the tokenizer and write the token files.

Usage: python scripts/build_corpus.py [--work-dir data/raw] [--out-dir data/corpus]
                                      [--tokenizer-out weights/tokenizer.json] [--examples-dir examples]
Progress goes to stderr. Installing missing Debian packages needs root.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from photon_cli.data.corpus import DEFAULT_SEED, prepare_corpus, write_examples  # noqa: E402
from photon_cli.data.sources import SourceUnavailableError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("data/raw"),
                        help="directory for downloaded packages and exported texts (default: data/raw)")
    parser.add_argument("--out-dir", type=Path, default=Path("data/corpus"),
                        help="directory for the JSONL splits, manifest and token files (default: data/corpus)")
    parser.add_argument("--tokenizer-out", type=Path, default=Path("weights/tokenizer.json"),
                        help="where to write the trained tokenizer (default: weights/tokenizer.json)")
    parser.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary size (default: 8192)")
    parser.add_argument("--target-tokens", type=int, default=None,
                        help="training tokens to sample (default: the natural size of the training documents)")
    parser.add_argument("--val-fraction", type=float, default=0.005,
                        help="fraction of each source's tokens held out as validation documents (default: 0.005)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"sampling seed (default: {DEFAULT_SEED})")
    parser.add_argument("--examples-dir", type=Path, default=None,
                        help="also write the small held-out example documents here (default: do not write them)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    start = time.monotonic()
    try:
        paths = prepare_corpus(
            work_dir=args.work_dir,
            out_dir=args.out_dir,
            tokenizer_out=args.tokenizer_out,
            vocab_size=args.vocab_size,
            target_tokens=args.target_tokens,
            val_fraction=args.val_fraction,
            seed=args.seed,
        )
    except SourceUnavailableError as error:
        logging.error("fetching the corpus sources failed: %s", error)
        return 1
    if args.examples_dir is not None:
        for path in write_examples(args.out_dir, args.examples_dir):
            logging.info("example: %s", path)
    for name, path in paths.items():
        logging.info("%s: %s", name, path)
    logging.info("finished in %.0f s", time.monotonic() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
