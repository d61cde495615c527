#!/usr/bin/env bash
# Train the two shipped models with equal compute: both runs at once, one CPU thread each,
# the same wall-clock limit per phase. Phase 2 continues from phase 1 on long sequences with
# half of every batch taken from document-QA rows in the `ask` prompt format. Phase 3 trains
# both models on the same packed 2048-token QA rows (several samples per row, answer tokens
# weighted 20x in the loss) plus copy samples ("Repeat the document."), 7 of every 8 rows
# from that mix.
# Prerequisites: `photon data fetch` (data/corpus, weights/tokenizer.json),
# `python scripts/build_qa.py` (data/qa) and `python scripts/build_qa.py --pack --max-distance 768
# --photon-context 2048 --photon-rows 6000 --repeat-rows 2500 --out-dir data/qa2 --skip-eval`
# (data/qa2/mix-2048.bin).
# Resumes from runs/*/checkpoint.pt when rerun. The shipped phase 3 started from the bf16 exports
# in weights/ (phase 2 rounded to bfloat16), as the float32 phase-2 runs were gone by then, and
# its first 230 (PHOTON) and 110 (vanilla) steps drew from qa-2048.bin before the copy rows existed.
set -euo pipefail
cd "$(dirname "$0")/.."

phase1() {  # name preset steps warmup
  photon train --data-dir data/corpus --out-dir "runs/$1-p1" --model "$2" --context 512 \
    --batch-size 16 --max-steps "$3" --max-minutes 70 --lr 1e-3 --warmup-steps "$4" \
    --eval-every 50 --checkpoint-every 25 --threads 1
}
phase2() {  # name context batch steps qa-rows
  photon train --data-dir data/corpus --out-dir "runs/$1-p2" --model "runs/$1-p1/model.safetensors" \
    --context "$2" --batch-size "$3" --max-steps "$4" --max-minutes 35 --lr 3e-4 --warmup-steps 10 \
    --mix-file "$5" --mix-ratio 0.5 --eval-every 25 --checkpoint-every 10 --threads 1
}

phase1 photon small 950 40 > runs/photon-p1.log 2>&1 &
phase1 vanilla vanilla-small 560 25 > runs/vanilla-p1.log 2>&1 &
wait
# PHOTON reads 8k-token sequences (its encoders see only T/4 and T/16 units); the vanilla
# baseline's attention is quadratic in T, so it gets 2k-token rows with the same tokens per step.
phase2 photon 8192 2 260 data/qa/qa-8192.bin > runs/photon-p2.log 2>&1 &
phase2 vanilla 2048 8 140 data/qa/qa-2048.bin > runs/vanilla-p2.log 2>&1 &
wait
phase3() {  # name steps
  photon train --data-dir data/corpus --out-dir "runs/$1-qa2" --model "runs/$1-p2/model.safetensors" \
    --context 2048 --batch-size 8 --max-steps "$2" --max-minutes 92 --lr 5e-4 --warmup-steps 20 \
    --mix-file data/qa2/mix-2048.bin --mix-ratio 0.875 --answer-weight 20 --eval-every 100 \
    --checkpoint-every 10 --threads 1
}
phase3 photon 1350 > runs/photon-qa2.log 2>&1 &
phase3 vanilla 680 > runs/vanilla-qa2.log 2>&1 &
wait
python scripts/export_weights.py runs/photon-qa2/model.safetensors weights/photon-small.safetensors
python scripts/export_weights.py runs/vanilla-qa2/model.safetensors weights/vanilla-small.safetensors
