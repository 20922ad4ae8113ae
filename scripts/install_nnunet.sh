#!/usr/bin/env bash
# The 2-D nnU-Net benchmark (scripts/nnunet_baseline.py) needs nnunetv2, which VMambaX itself
# never uses at run time. This makes a separate venv, ./.venv-nnunet (once; later calls only check),
# holding VMambaX and the pinned `benchmark` extra (nnunetv2==2.8.1, pyproject.toml).
# torch is pinned first and held by a constraint, so pip never swaps the CPU build for a CUDA
# one (a bare "torch" pulls several GB); VMAMBAX_TORCH overrides it, as for scripts/install.sh.
# pip also brings PyPI's torchvision (through timm, for nnU-Net's Primus networks): a CUDA build
# that does not load next to the CPU torch. The 2-D U-Net never imports it, and the benchmark
# script avoids nnU-Net's trainer lookup, which would (see scripts/nnunet_ext/nnunet_time_budget.py).
# Then run:  .venv-nnunet/bin/python scripts/nnunet_baseline.py --data DIR --out RUN ...
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${NNUNET_VENV:-.venv-nnunet}
TORCH_REQUIREMENT="${VMAMBAX_TORCH:-torch==2.13.0}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
. "$VENV/bin/activate"
if python -c "import nnunetv2, vmambax, importlib.metadata as m; assert m.version('nnunetv2') == '2.8.1'" 2>/dev/null \
   && [ "${VMAMBAX_REINSTALL:-0}" = "0" ]; then
  exit 0
fi
echo "nnunet benchmark: installing nnunetv2 2.8.1 and vmambax into $VENV ..." >&2
python -m pip install -q --upgrade pip >/dev/null
python -m pip install -q "$TORCH_REQUIREMENT"
constraint=$(mktemp)
trap 'rm -f "$constraint"' EXIT
python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$constraint"
PYTHONWARNINGS="ignore:Editable installation" python -m pip install -q -c "$constraint" -e ".[benchmark]"
python -c "import nnunetv2, torch; print('nnunetv2 ready; torch', torch.__version__)"
