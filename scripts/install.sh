#!/usr/bin/env bash
# Create ./.venv (once) and install VMambaX with its test dependencies into it; later calls only
# check that nothing changed (a second), and install again when it did: pyproject.toml, setup.py,
# the torch requirement or the Python. A native scan library older than its C sources is rebuilt
# (a few seconds, no pip; VMAMBAX_NO_NATIVE=1 skips that). torch is pinned to 2.13.0 first: on our CPU build machines pip takes
# that local CPU wheel; a bare "torch" would pull several GB of CUDA packages. Set VMAMBAX_TORCH
# to override (for example VMAMBAX_TORCH="torch" on a CUDA workstation); VMAMBAX_REINSTALL=1
# installs again whatever the check says.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
TORCH_REQUIREMENT="${VMAMBAX_TORCH:-torch==2.13.0}"
STAMP=.venv/.vmambax-install-stamp

# What the install depends on, as one hash (Python does it: no sha256sum on macOS).
wanted=$(python - "$TORCH_REQUIREMENT" <<'EOF'
import hashlib, os, sys
h = hashlib.sha256()
for name in ("pyproject.toml", "setup.py"):
    with open(name, "rb") as fh:
        h.update(name.encode() + b"\0" + fh.read() + b"\0")
h.update(f"{sys.argv[1]}\0{sys.version}\0{os.getcwd()}".encode())
print(h.hexdigest())
EOF
)

installed() {  # the stamp matches and vmambax is installed (an editable install of this checkout)
  [ "${VMAMBAX_REINSTALL:-0}" = "0" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ] \
    && python -c "import importlib.metadata as m; m.version('vmambax')" >/dev/null 2>&1
}

if ! installed; then
  echo "vmambax: installing into .venv (first run, or pyproject.toml / setup.py / torch changed) ..." >&2
  python -m pip install -q --upgrade pip >/dev/null
  python -m pip install -q "$TORCH_REQUIREMENT"
  # setuptools' "Editable installation ... folders with the same name as your package" notice
  # is for every editable install; vmambax itself explains a shadowing folder when it happens.
  PYTHONWARNINGS="ignore:Editable installation" python -m pip install -q -e ".[test]"
  echo "$wanted" > "$STAMP"
elif [ "${VMAMBAX_NO_NATIVE:-0}" = "0" ]; then
  # The same install, but the C kernels may have changed since (git pull): rebuild if stale.
  python - <<'EOF'
import os, subprocess, sys
from pathlib import Path
from vmambax.ops.build_native import SOURCE_DIR, library_name

lib = SOURCE_DIR / library_name()
sources = [p for p in SOURCE_DIR.iterdir() if p.suffix in (".c", ".h")]
newest = max((p.stat().st_mtime for p in sources), default=0.0)
if lib.is_file() and lib.stat().st_mtime < newest:  # missing: no compiler (vmambax info says so)
    done = subprocess.run([sys.executable, "-m", "vmambax.ops.build_native"], capture_output=True, text=True)
    if done.returncode != 0:
        print("vmambax: note: the native selective-scan library was not rebuilt "
              f"({(done.stderr or done.stdout).strip().splitlines()[-1:]}); the chunked scan is used",
              file=sys.stderr)
EOF
fi
