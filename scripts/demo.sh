#!/usr/bin/env bash
# Install (idempotent) and run the end-to-end demo: synthetic PET/CT case -> shipped demo model ->
# label, report and preview in ./demo-output, with Dice against the phantom's truth.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
vmambax demo --out demo-output "$@"
