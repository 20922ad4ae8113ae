#!/usr/bin/env bash
# Reproduce the shipped demo model Resources/Models/vmambax-nano-phantom.pt and the numbers of its
# model card (Resources/Models/vmambax-nano-phantom.md), with documented `vmambax` commands only:
#   1. synthetic PET/CT phantoms: training cases and separate held-out test cases (other seeds)
#   2. vmambax train   (vmambax-nano; the held-out cases are never seen in training/validation)
#   3. vmambax segment / vmambax baseline (SUV >= 2.5, 41 % SUVmax) on the held-out cases
#   4. vmambax evaluate -> per-case and pooled 3-D Dice / HD95, tables for the model card
# Every step is skipped when its output exists, and training resumes, so the script can be
# re-run after an interruption. Settings (environment variables) default to the shipped recipe;
# the card records the exact values. On a CUDA machine add ACCELERATOR=gpu and e.g. more steps.
#
#   bash scripts/train_demo_model.sh                   # CPU: ~35 min on 2 shared cores
#   WORK=/tmp/demo TRAIN_CASES=3 TEST_CASES=1 TEST_SLICES=8 PHANTOM_SIZE=128 EPOCHS=1 \
#       WARMUP=0 BATCHES=2 VAL_BATCHES=1 DEST=/tmp/demo/model.pt \
#       bash scripts/train_demo_model.sh             # a ~1 min smoke run of the pipeline
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate

WORK=${WORK:-demo-model-work}
TRAIN_CASES=${TRAIN_CASES:-24}      # phantom seeds 1000.. (case i: seed 1000+i)
TEST_CASES=${TEST_CASES:-6}         # phantom seeds 9000.. (held out)
PHANTOM_SIZE=${PHANTOM_SIZE:-512}   # CT matrix of the phantoms
TEST_SLICES=${TEST_SLICES:-}        # CT slices of the held-out phantoms (default: the generator's)
IMAGE_SIZE=${IMAGE_SIZE:-256}       # network slice size (the model file records it)
CROP=${CROP:-128}                   # training crops (tumour-centred half of the time)
NEGATIVES=${NEGATIVES:-0.5}         # tumour-free training slices per tumour slice
EPOCHS=${EPOCHS:-24}
BATCHES=${BATCHES:-50}              # training batches per epoch
VAL_BATCHES=${VAL_BATCHES:-8}
BATCH=${BATCH:-4}
LR=${LR:-1e-3}
WARMUP=${WARMUP:-1}
ACCELERATOR=${ACCELERATOR:-auto}
WORKERS=${WORKERS:-2}
DEST=${DEST:-Resources/Models/vmambax-nano-phantom.pt}

mkdir -p "$WORK"
[ -d "$WORK/train-cases" ] || vmambax phantom --out "$WORK/train-cases" --cases "$TRAIN_CASES" \
    --seed 1000 --size "$PHANTOM_SIZE" --no-dicom
[ -d "$WORK/test-cases" ] || vmambax phantom --out "$WORK/test-cases" --cases "$TEST_CASES" \
    --seed 9000 --size "$PHANTOM_SIZE" --no-dicom ${TEST_SLICES:+--slices "$TEST_SLICES"}

if [ ! -f "$WORK/run/model.pt" ] || [ -f "$WORK/run/checkpoints/last.ckpt" -a ! -f "$WORK/run/.done" ]; then
    resume=()
    [ -f "$WORK/run/checkpoints/last.ckpt" ] && resume=(--resume)
    vmambax train --data "$WORK/train-cases" --recipe paper --config vmambax-nano --out "$WORK/run" \
        --image-size "$IMAGE_SIZE" --crop-size "$CROP" --negatives-per-positive "$NEGATIVES" --epochs "$EPOCHS" --limit-train-batches "$BATCHES" \
        --limit-val-batches "$VAL_BATCHES" --batch-size "$BATCH" --lr "$LR" \
        --warmup-epochs "$WARMUP" --accelerator "$ACCELERATOR" --num-workers "$WORKERS" \
        --no-progress-bar "${resume[@]}"
    tail -n 1 "$WORK/run/progress.jsonl" | grep -q '"event": "done"' && touch "$WORK/run/.done"
fi
[ -f "$WORK/run/.done" ] || { echo "training stopped; run the script again to resume" >&2; exit 0; }

for case_dir in "$WORK"/test-cases/*/; do
    case_id=$(basename "$case_dir")
    out="$WORK/pred/model/$case_id.nii.gz"
    [ -f "$out" ] || vmambax segment --ct "$case_dir/ct.nii.gz" --pet "$case_dir/pet.nii.gz" \
        -o "$out" --model "$WORK/run/model.pt" -q
    for method in suv2.5 pct41; do
        out="$WORK/pred/$method/$case_id.nii.gz"
        [ -f "$out" ] || vmambax baseline --pet "$case_dir/pet.nii.gz" --ct "$case_dir/ct.nii.gz" \
            --method "$method" -o "$out" > /dev/null
    done
done
mkdir -p "$WORK/eval"
for method in model suv2.5 pct41; do
    vmambax evaluate --pred "$WORK/pred/$method" --gt "$WORK/test-cases" --json "$WORK/eval/$method.json" > /dev/null
done

# Model-card tables: per-case and pooled 3-D Dice (pooled = 2*sum(TP)/sum(|P|+|G|) over all
# held-out voxels) and HD95 in mm.
python - "$WORK" <<'EOF' | tee "$WORK/card-tables.md"
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
names = {"model": "vmambax-nano (this model)", "suv2.5": "SUV >= 2.5", "pct41": "41 % SUVmax"}
res = {m: json.loads((work / "eval" / f"{m}.json").read_text()) for m in names}
cases = [c["case"] for c in res["model"]["cases"]]

def fmt(x, nd=3):
    return "n/a" if x is None else f"{x:.{nd}f}"

print("| case | GT volume (mL) | " + " | ".join(f"Dice {n}" for n in names.values())
      + " | " + " | ".join(f"HD95 mm {n}" for n in names.values()) + " |")
print("|---" * (2 + 2 * len(names)) + "|")
for i, case in enumerate(cases):
    rows = [res[m]["cases"][i] for m in names]
    assert all(r["case"] == case for r in rows)
    print(f"| {case} | {rows[0]['volume_gt_ml']:.1f} | " + " | ".join(fmt(r["dice"]) for r in rows)
          + " | " + " | ".join(fmt(r["hd95_mm"], 1) for r in rows) + " |")
print()
print("| method | mean Dice | pooled Dice | mean HD95 (mm) | lesion sensitivity | false-positive lesions |")
print("|---|---|---|---|---|---|")
for m, label in names.items():
    rs = res[m]["cases"]
    den = sum(r["volume_pred_ml"] + r["volume_gt_ml"] for r in rs)
    pooled = sum(r["dice"] * (r["volume_pred_ml"] + r["volume_gt_ml"]) for r in rs) / den if den else 1.0
    hd = [r["hd95_mm"] for r in rs if r["hd95_mm"] is not None]
    det = sum(r["lesions_detected"] for r in rs) / max(sum(r["lesions_gt"] for r in rs), 1)
    fp = sum(r["false_positive_lesions"] for r in rs)
    print(f"| {label} | {sum(r['dice'] for r in rs) / len(rs):.3f} | {pooled:.3f} | "
          f"{fmt(sum(hd) / len(hd) if hd else None, 1)} | {det:.2f} | {fp} |")
EOF

mkdir -p "$(dirname "$DEST")"
cp "$WORK/run/model.pt" "$DEST"
echo "model file: $DEST ($(du -h "$DEST" | cut -f1)), sha256 $(sha256sum "$DEST" | cut -d' ' -f1)"
