#!/usr/bin/env bash
# The native-scan targets of issue 13, measured side by side (docs/benchmarks.md, "Native scan"):
# each round runs every comparison once, backends alternating, so machine load hits both alike.
#   ROUNDS (default 3), OUT (default ./bench-native/), FULL=0 skips the full-model forward at 512^2.
# Prints the medians over rounds of each ratio at the end; the raw JSON stays in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
OUT="${OUT:-bench-native}"
FULL="${FULL:-1}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r / $ROUNDS ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"
  "$PY" -m vmambax bench scan --json "$OUT/scan-acceptance-passive-$r.json"
  # Like for like with the oracle: one thread each, OpenMP waiting actively (no 80 us pool wake-ups).
  OMP_WAIT_POLICY=ACTIVE "$PY" -m vmambax bench scan --threads 1 --json "$OUT/scan-acceptance-active-$r.json"
  "$PY" -m vmambax bench scan --backends native,chunked --length 4096 --backward \
    --json "$OUT/scan-train-$r.json"
  for backend in chunked native; do
    VMAMBAX_SCAN_BACKEND=$backend "$PY" -m vmambax bench forward --config vmambax-nano --size 512 \
      --repeats 3 --json > "$OUT/forward-nano-$backend-$r.json"
    if [ "$FULL" = 1 ]; then
      VMAMBAX_SCAN_BACKEND=$backend "$PY" -m vmambax bench forward --config vmambax --size 512 \
        --repeats 2 --json > "$OUT/forward-full-$backend-$r.json"
    fi
  done
done
"$PY" - "$OUT" "$ROUNDS" <<'EOF'
import json, statistics, sys
from pathlib import Path
out, rounds = Path(sys.argv[1]), int(sys.argv[2])
def load(name):
    return [json.loads((out / f"{name}-{r}.json").read_text()) for r in range(1, rounds + 1)
            if (out / f"{name}-{r}.json").is_file()]
def med(xs):
    return statistics.median(xs) if xs else float("nan")
for policy in ("passive", "active"):
    runs = load(f"scan-acceptance-{policy}")
    best = lambda run, b: min(run["results"][b]["forward_ms"])
    print(f"acceptance forward ({policy.upper()}{', 1 thread' if policy == 'active' else ''}): native {med([best(x, 'native') for x in runs]):.0f} ms, "
          f"chunked {med([best(x, 'chunked') for x in runs]):.0f} ms, sequential {med([best(x, 'sequential') for x in runs]):.0f} ms; "
          f"native vs chunked {med([best(x, 'chunked') / best(x, 'native') for x in runs]):.2f}x, "
          f"vs sequential {med([best(x, 'sequential') / best(x, 'native') for x in runs]):.1f}x "
          f"(medians of {len(runs)} runs)")
runs = load("scan-train")
fb = lambda run, b: min(run["results"][b]["fwd_bwd_ms"])
print(f"training size l=4096 forward+backward: native {med([fb(x, 'native') for x in runs]):.0f} ms, "
      f"chunked {med([fb(x, 'chunked') for x in runs]):.0f} ms; {med([fb(x, 'chunked') / fb(x, 'native') for x in runs]):.2f}x")
for cfg in ("nano", "full"):
    c, n = load(f"forward-{cfg}-chunked"), load(f"forward-{cfg}-native")
    if not c or not n:
        continue
    ratios = [a["seconds_per_forward"] / b["seconds_per_forward"] for a, b in zip(c, n)]
    print(f"{cfg} model forward 512^2: chunked {med([a['seconds_per_forward'] for a in c]):.3f} s, native "
          f"{med([b['seconds_per_forward'] for b in n]):.3f} s; {med(ratios):.2f}x (threads {n[0]['threads']})")
EOF
