"""No leftovers after a kill, and no lost truth (issue 18): stale staging files removed by the
next run (only its own), cohort resume with the write's verification, reserved case ids, one run
per cohort folder / training run folder, a per-case time limit, and a refused training run that
leaves its folder as it found it."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fault_helpers import staging_left_by_a_killed_writer
from vmambax.cli import main

SIZE = 128


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    from vmambax.phantom import make_phantom, write_case

    root = tmp_path_factory.mktemp("leftovers") / "cases"
    for i, case_id in enumerate(("a", "b")):
        write_case(make_phantom(20 + i, size=SIZE, n_slices=5), root, case_id, dicom=False)
    return root


def _segment(case: Path, out: Path, model, *extra):
    return ["segment", "--ct", str(case / "ct.nii.gz"), "--pet", str(case / "pet.nii.gz"),
            "-o", str(out / "label.nii.gz"), "--report", str(out / "report.json"),
            "--preview", str(out / "preview.png"), "--model", str(model), "--device", "cpu",
            "--threads", "1", "-q", "--overwrite", *extra]


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------ staging after a kill -9
def test_staging_files_a_kill_9_left_are_removed_by_the_next_run_into_that_folder(cases, tmp_path,
                                                                                 nano_file, capsys):
    """A real kill -9 while the outputs are staged leaves .label.*.tmp.nii.gz (and the preview's,
    the report's). Before: no later run removed them. Now the next run writing those outputs
    removes them, and nothing else: another output's staging file, a file that only looks
    similar, and a staging file whose writer still runs stay."""
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, signal, sys
        import vmambax.infer.report as report
        from vmambax.cli import main
        def die(*a, **k):  # kill -9 in the write phase: label and preview staged, report next
            os.kill(os.getpid(), signal.SIGKILL)
        report.report_json = die
        sys.exit(main({_segment(cases / "a", out, nano_file)!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    left = _hidden(out)
    assert any(n.startswith(".label.") and n.endswith(".tmp.nii.gz") for n in left), left
    assert any(n.startswith(".preview.") and n.endswith(".tmp.png") for n in left), left
    not_ours = [staging_left_by_a_killed_writer(out / "other.nii.gz"),  # another output's
                out / ".label.nii.gz.bak"]                            # not a staging name
    not_ours[1].write_bytes(b"the user's")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        from vmambax.utils import staging_path

        writing = staging_path(out / "label.nii.gz")  # a live writer's: its PID is in the name
        writing = writing.with_name(writing.name.replace(f".p{os.getpid()}h", f".p{live.pid}h"))
        writing.write_bytes(b"being written")
        assert main(_segment(cases / "a", out, nano_file)) == 0, capsys.readouterr().err
        assert sorted(_hidden(out)) == sorted(p.name for p in not_ours + [writing])
    finally:
        live.kill()
        live.wait()
    assert (out / "label.nii.gz").is_file() and (out / "preview.png").is_file()
