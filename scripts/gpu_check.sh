#!/usr/bin/env bash
# One prepared GPU check for a bare CUDA machine that has PyTorch and no package index:
#   1. the environment (nvidia-smi, torch, CUDA)            5. vmambax bench infer, demo model (nano), 512^2:
#   2. wheels from $WHEELS, if set (pip --no-index)            fp32 eager vs bf16 + channels-last + compile
#   3. the native CPU scan library (for the CPU parity)     6. the same for the full model, with a 300-slice
#   4. the GPU tests (pytest -m gpu); chunked vs the           volume end to end
#      float64 oracle on CUDA (vmambax bench scan)          7. the full model with torch.compile as well
# Everything is written to $OUT (else ./gpu-check/): gpu-check.json (one object: per step its
# command, status, seconds and results) and gpu-check.log (all output). Each step has its own
# timeout, and a global budget (BUDGET seconds, default 450) keeps the whole run under 8 minutes:
# a step gets at most what is left, and steps are skipped once it is spent.
#
# Usage:  bash scripts/gpu_check.sh                 # on the CUDA machine, from the repository
#         WHEELS=./wheels bash scripts/gpu_check.sh # install the test dependencies from a folder
#         bash scripts/gpu_check.sh --cpu           # the same plumbing on CPU, tiny sizes
#         bash scripts/gpu_check.sh --dry-run       # list the steps and write the JSON, run nothing
# Without WHEELS the machine must already have vmambax's dependencies (numpy, scipy, SimpleITK,
# ... from pyproject.toml) and pytest; vmambax itself runs from this checkout (PYTHONPATH).
# Options by environment: OUT, WHEELS, BUDGET, PYTHON, STEPS (comma-separated step names to run,
# default all: env,wheels,native,gpu_tests,scan,infer_demo,infer_full,infer_full_compile).
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
MODE=gpu
for arg in "$@"; do
  case "$arg" in
    --cpu) MODE=cpu ;;
    --dry-run) MODE=dry ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "error: unknown option $arg (use --cpu, --dry-run or --help)" >&2; exit 2 ;;
  esac
done

OUT="${OUT:-$ROOT/gpu-check}"
mkdir -p "$OUT"
LOG="$OUT/gpu-check.log"
STEPS_FILE="$OUT/.steps.jsonl"
: > "$LOG"
: > "$STEPS_FILE"
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || PY=python
BUDGET="${BUDGET:-450}"
START=$(date +%s)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # vmambax from this checkout, installed or not
export PYTHONUNBUFFERED=1
VMX=("$PY" -m vmambax)

if [ "$MODE" = cpu ]; then
  DEVICE=cpu; SIZE=128; SLICES=2; E2E=3; DEMO_OPTS=(); FULL_OPTS=(); SCAN_LEN=512; SCAN_DIM=64
  TESTS=(Testing/Python/test_ops.py)
else
  DEVICE=cuda; SIZE=512; SLICES=64; E2E=300; DEMO_OPTS=(--amp --channels-last --compile)
  FULL_OPTS=(--amp --channels-last); SCAN_LEN=16384; SCAN_DIM=768
  # only the files that hold GPU tests: on a bare machine the others may need packages it lacks
  mapfile -t TESTS < <(grep -l "mark.gpu" Testing/Python/test_*.py)
  [ "${#TESTS[@]}" -gt 0 ] || TESTS=(Testing/Python)
fi

log() { echo "[gpu-check $(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }

wanted() {  # is step $1 in $STEPS (default: all)?
  [ -z "${STEPS:-}" ] && return 0
  case ",$STEPS," in *",$1,"*) return 0 ;; *) return 1 ;; esac
}

record() {  # record NAME STATUS RC SECONDS RESULT_FILE_OR_- COMMAND: one line of the JSON's steps
  "$PY" - "$STEPS_FILE" "$@" <<'EOF'
import json, sys
path, name, status, rc, secs, result, cmd = sys.argv[1:8]
entry = {"step": name, "status": status, "exit": None if rc == "null" else int(rc),
         "seconds": int(secs), "command": cmd, "result_file": None if result == "-" else result}
with open(path, "a") as f:
    f.write(json.dumps(entry) + "\n")
EOF
}

# step NAME TIMEOUT RESULT_JSON_OR_- COMMAND...: run with min(TIMEOUT, budget left), record it.
step() {
  local name="$1" limit="$2" result="$3"; shift 3
  local now left status rc t0 t1
  now=$(date +%s); left=$((BUDGET - (now - START)))
  if ! wanted "$name"; then
    status=not-selected; rc=null; t0=$now; t1=$now
  elif [ "$MODE" = dry ]; then
    log "step $name (timeout ${limit}s): $*"
    status=dry-run; rc=null; t0=$now; t1=$now
  elif [ "$left" -lt 15 ]; then
    log "step $name: skipped, the ${BUDGET}s budget is spent"
    status=skipped-budget; rc=null; t0=$now; t1=$now
  else
    [ "$limit" -gt "$left" ] && limit=$left
    log "step $name (timeout ${limit}s): $*"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    t1=$(date +%s)
    case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
    log "step $name: $status (exit $rc, $((t1 - t0)) s)"
  fi
  record "$name" "$status" "$rc" "$((t1 - t0))" "$result" "$*"
}

log "mode $MODE, output $OUT, budget ${BUDGET}s, repository $ROOT"

step env 30 - "$PY" -c "
import platform, shutil, subprocess, torch
print('python', platform.python_version(), '| torch', torch.__version__, '| CUDA build', torch.version.cuda)
print('cuda available', torch.cuda.is_available(), '| devices', torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    print(' ', i, torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i))
if shutil.which('nvidia-smi'):
    print(subprocess.run(['nvidia-smi'], capture_output=True, text=True).stdout)
if '$MODE' == 'gpu' and not torch.cuda.is_available():
    raise SystemExit('error: CUDA is not available to this PyTorch; run with --cpu to test the plumbing')
"

if [ -n "${WHEELS:-}" ]; then
  # vmambax's runtime dependencies and pytest, nothing else (the [test] extra pulls Slicer/VTK)
  step wheels 150 - "$PY" -m pip install --no-index --find-links "$WHEELS" --no-build-isolation -e . pytest
else
  log "step wheels: not needed (WHEELS is not set; vmambax runs from this checkout)"
  record wheels not-needed null 0 - "WHEELS not set"
fi

step native 60 - "$PY" -m vmambax.ops.build_native

step gpu_tests 150 - "$PY" -m pytest -q -p no:cacheprovider -m gpu -o addopts="" "${TESTS[@]}"

SCAN_BACKENDS=chunked,sequential
if [ "$MODE" = gpu ] && "$PY" -c "import mamba_ssm" >/dev/null 2>&1; then SCAN_BACKENDS=mamba_ssm,chunked,sequential; fi
step scan 90 "$OUT/scan.json" "${VMX[@]}" bench scan --device "$DEVICE" --backends "$SCAN_BACKENDS" \
  --length "$SCAN_LEN" --dim "$SCAN_DIM" --backward --json "$OUT/scan.json"

step infer_demo 90 "$OUT/infer-demo.json" "${VMX[@]}" bench infer --config vmambax-nano --device "$DEVICE" \
  --size "$SIZE" --slices "$SLICES" "${DEMO_OPTS[@]}" --e2e-slices 0 --json "$OUT/infer-demo.json"

step infer_full 120 "$OUT/infer-full.json" "${VMX[@]}" bench infer --config vmambax --device "$DEVICE" \
  --size "$SIZE" --slices "$SLICES" "${FULL_OPTS[@]}" --e2e-slices "$E2E" --json "$OUT/infer-full.json"

if [ "$MODE" != cpu ]; then
  step infer_full_compile 150 "$OUT/infer-full-compile.json" "${VMX[@]}" bench infer --config vmambax \
    --device cuda --size 512 --slices "$SLICES" --amp --channels-last --compile --e2e-slices 0 \
    --json "$OUT/infer-full-compile.json"
fi

{ "$PY" - "$STEPS_FILE" "$OUT/gpu-check.json" "$MODE" "$BUDGET" "$(( $(date +%s) - START ))" <<'EOF'
import json, os, sys, time
steps_path, out, mode, budget, total = sys.argv[1:6]
steps = [json.loads(line) for line in open(steps_path) if line.strip()]
for s in steps:  # embed each benchmark's own JSON
    f = s.get("result_file")
    if f and os.path.isfile(f):
        try:
            s["result"] = json.load(open(f))
        except ValueError as exc:
            s["result"] = f"unreadable: {exc}"
report = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "mode": mode,
          "budget_s": int(budget), "total_s": int(total),
          "ok": all(s["status"] in ("ok", "dry-run", "not-selected", "not-needed") for s in steps), "steps": steps}
tmp = out + ".tmp"
with open(tmp, "w") as f:
    json.dump(report, f, indent=2)
os.replace(tmp, out)
print(f"[gpu-check] wrote {out}: " + ", ".join(f"{s['step']} {s['status']}" for s in steps))
EOF
} 2>&1 | tee -a "$LOG"
rm -f "$STEPS_FILE"
log "done in $(( $(date +%s) - START )) s; log $LOG"
