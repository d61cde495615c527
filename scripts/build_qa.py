"""Build the question-answering training rows and the held-out evaluation set.

Usage: python scripts/build_qa.py [--corpus-dir data/corpus] [--tokenizer weights/tokenizer.json]
                                  [--out-dir data/qa] [--seed 1234] [--pack] [--max-distance N]

Writes, under --out-dir:
  qa-8192.bin    rows for the PHOTON model (uint16, shape (rows, 8192)), with .json and .rows.jsonl
  qa-2048.bin    rows for the vanilla baseline, the same number of tokens in 2048-token rows
                 (one file when --photon-context equals --vanilla-context)
  eval.jsonl     questions about held-out documents only

The shipped models' last QA phase trained on data/qa2/mix-2048.bin from `--pack --max-distance 768
--photon-context 2048 --photon-rows 6000 --repeat-rows 2500 --out-dir data/qa2 --skip-eval`.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from photon_cli.data.qa import DEFAULT_WORDNET_DIR, build_qa_eval, build_qa_rows, build_repeat_rows  # noqa: E402

DEFAULT_SEED = 1234


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-dir", type=Path, default=Path("data/corpus"),
                        help="directory with train.jsonl, heldout.jsonl, train.bin and manifest.json "
                             "(default: data/corpus)")
    parser.add_argument("--tokenizer", type=Path, default=Path("weights/tokenizer.json"),
                        help="tokenizer JSON file (default: weights/tokenizer.json)")
    parser.add_argument("--out-dir", type=Path, default=Path("data/qa"),
                        help="directory for the rows and the evaluation set (default: data/qa)")
    parser.add_argument("--wordnet-dir", type=Path, default=DEFAULT_WORDNET_DIR,
                        help=f"WordNet data files, for the glossary lemmas (default: {DEFAULT_WORDNET_DIR})")
    parser.add_argument("--photon-context", type=int, default=8192,
                        help="row length in tokens of the PHOTON rows (default: 8192)")
    parser.add_argument("--photon-rows", type=int, default=1200, help="number of PHOTON rows (default: 1200)")
    parser.add_argument("--vanilla-context", type=int, default=2048,
                        help="row length in tokens of the vanilla baseline rows (default: 2048)")
    parser.add_argument("--eval-distances", type=int, nargs="+", default=[0, 256, 1024, 1800, 4096],
                        help="tokens between fact and question in the evaluation set (default: 0 256 1024 1800 4096)")
    parser.add_argument("--per-distance", type=int, default=20,
                        help="evaluation questions per kind and distance (default: 20)")
    parser.add_argument("--pack", action="store_true",
                        help="pack several samples into each row instead of one sample and plain text")
    parser.add_argument("--max-distance", type=int, default=None,
                        help="largest fact-to-question distance in the rows (default: the row length - 192)")
    parser.add_argument("--repeat-rows", type=int, default=0,
                        help="also write this many rows of copy samples (repeat-CONTEXT.bin) and "
                             "mix-CONTEXT.bin, the QA rows followed by them (default: 0)")
    parser.add_argument("--skip-eval", action="store_true", help="write the rows only")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"sampling seed (default: {DEFAULT_SEED})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    start = time.monotonic()
    photon_tokens = args.photon_context * args.photon_rows
    vanilla_rows = photon_tokens // args.vanilla_context
    jobs = {args.photon_context: args.photon_rows, args.vanilla_context: vanilla_rows}
    for context, n_rows in jobs.items():
        out_path = args.out_dir / f"qa-{context}.bin"
        logging.info("building %d rows of %d tokens into %s", n_rows, context, out_path)
        build_qa_rows(args.corpus_dir, args.tokenizer, out_path, context, n_rows, args.seed,
                      wordnet_dir=args.wordnet_dir, max_distance=args.max_distance, pack=args.pack)
        if args.repeat_rows:
            repeat_path = build_repeat_rows(args.corpus_dir, args.tokenizer, args.out_dir / f"repeat-{context}.bin",
                                            context, args.repeat_rows, args.seed)
            mix_path = args.out_dir / f"mix-{context}.bin"
            mix_path.write_bytes(out_path.read_bytes() + repeat_path.read_bytes())
            logging.info("wrote %s: %d QA rows, then %d copy rows", mix_path, n_rows, args.repeat_rows)
    if args.skip_eval:
        logging.info("done in %.0f s", time.monotonic() - start)
        return 0
    eval_path = args.out_dir / "eval.jsonl"
    counts = build_qa_eval(args.corpus_dir, args.tokenizer, eval_path, args.eval_distances,
                           args.per_distance, args.seed)
    logging.info("evaluation records per kind: %s", counts)
    logging.info("done in %.0f s", time.monotonic() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
