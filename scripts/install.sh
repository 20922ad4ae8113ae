#!/usr/bin/env bash
# Create ./.venv (once) and install VMambaX with its test dependencies into it.
# torch is pinned to 2.13.0 first: on our CPU build machines pip takes that local CPU wheel;
# a bare "torch" would pull several GB of CUDA packages. Set VMAMBAX_TORCH to override
# (for example VMAMBAX_TORCH="torch" on a CUDA workstation).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
python -m pip install -q "${VMAMBAX_TORCH:-torch==2.13.0}"
python -m pip install -q -e ".[test]"
