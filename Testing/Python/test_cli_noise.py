"""The command line keeps library chatter off stderr but still shows real warnings (issue 10.10).

Runs ``vmambax.cli.main`` in a subprocess, as the console script does (it installs the filters),
each time next to a control run without ``main`` that shows the chatter really is produced.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
from dicom_helpers import pet_tags, write_series

ROOT = Path(__file__).resolve().parents[2]
VR_CHATTER = "exceeds the maximum length"
LIGHTNING_CHATTER = ("litlogger", "GPU available:", "TPU available:")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="default")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


_PROBE = textwrap.dedent("""
    # Runs `vmambax segment ARGS...` and a probe command through vmambax.cli.main, as the
    # console script does. The probe makes a Lightning Trainer (banner and tip) and warns.
    import sys, types, warnings

    def probe(args):
        import pytorch_lightning as pl
        pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False)
        warnings.warn("a real problem the user must see", RuntimeWarning)
        return 0

    import vmambax.cli as cli
    module = types.ModuleType("vmambax.cli.probe")
    module.register = lambda sub: sub.add_parser("probe").set_defaults(func=probe)
    sys.modules["vmambax.cli.probe"] = module
    cli.COMMAND_MODULES = (*cli.COMMAND_MODULES, "probe")
    status = cli.main(["segment", *sys.argv[1:]])
    print("--- probe ---", file=sys.stderr)
    sys.exit(status or cli.main(["probe"]))
""")


def _case(folder: Path) -> None:
    rng = np.random.default_rng(0)
    ct = np.round(np.full((6, 24, 20), -850.0) + rng.normal(0, 20, (6, 24, 20)))
    ct[:, :, :4] = -1000
    ct[:, 8:16, 6:14] = 40.0
    long_id = {"StationName": "SCANNER-ROOM-0042"}  # SH allows 16 characters; scanners do this
    uids = write_series(folder / "ct", ct, modality="CT", spacing=(0.9, 0.9, 2.0),
                        extra_tags=long_id)
    top, radio = pet_tags(weight=70.0, dose_bq=3.5e8, injection="100000", series_time="110000")
    pet = np.full((2, 12, 10), 4000.0)
    pet[:, 4:8, 3:7] = 30000.0
    write_series(folder / "pet", pet, modality="PT", spacing=(2.0, 2.0, 3.0),
                 origin=(0.0, 0.0, 0.0), study_uid=uids["study"], frame_uid=uids["frame"],
                 pet_top=top, pet_radio=radio, extra_tags=long_id)  # covers half of the CT


def test_cli_drops_pydicom_and_lightning_chatter_but_shows_real_warnings(tmp_path, nano_file,
                                                                        caplog):
    import pytorch_lightning as pl

    from vmambax.data.io import read_image

    _case(tmp_path)
    # Controls (no main): the libraries really do produce the chatter.
    with warnings.catch_warnings(record=True) as pydicom_says:
        warnings.simplefilter("always")
        read_image(tmp_path / "ct")
    assert any(VR_CHATTER in str(w.message) for w in pydicom_says)
    with caplog.at_level(logging.INFO, logger="pytorch_lightning"):
        pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False)
    assert all(c in caplog.text for c in LIGHTNING_CHATTER), caplog.text

    script = tmp_path / "cli.py"
    script.write_text(_PROBE)
    proc = _run([str(script), "--ct", str(tmp_path / "ct"), "--pet", str(tmp_path / "pet"),
                 "-o", str(tmp_path / "label.nii.gz"), "--model", str(nano_file), "--device",
                 "cpu", "--threads", "1", "-q", "--all-slices"], ROOT)  # synthetic CT, no lungs
    assert proc.returncode == 0, proc.stderr
    segment_err, probe_err = proc.stderr.split("--- probe ---")
    assert VR_CHATTER not in segment_err, segment_err
    assert "warning: The PET covers only" in segment_err, segment_err  # ours, still shown
    for chatter in LIGHTNING_CHATTER:
        assert chatter not in probe_err, probe_err
    assert "warning: RuntimeWarning: a real problem the user must see" in probe_err, probe_err
