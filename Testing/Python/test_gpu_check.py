"""scripts/gpu_check.sh, the one-call GPU check: its plumbing on CPU (it has not run on a GPU
here). The dry run lists every step and writes the JSON and the log; a CPU run records real step
results and skips steps once its time budget is spent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
ALL_STEPS = ["env", "wheels", "native", "gpu_tests", "scan", "infer_demo", "infer_full", "infer_full_compile"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")


def run(tmp_path, *args, **env):
    full_env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, **env)
    proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env,
                          timeout=120)
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    return proc, report


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_dry_run_lists_every_step_and_writes_json_and_log(tmp_path):
    proc, report = run(tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert [s["step"] for s in report["steps"]] == ALL_STEPS
    assert report["mode"] == "dry" and report["ok"]
    commands = {s["step"]: s["command"] for s in report["steps"]}
    assert "-m gpu" in commands["gpu_tests"]
    assert "--device cuda" in commands["scan"] and "sequential" in commands["scan"]
    assert "--amp --channels-last --compile" in commands["infer_demo"] and "vmambax-nano" in commands["infer_demo"]
    assert "--e2e-slices 300" in commands["infer_full"] and "--size 512" in commands["infer_full"]
    log = (tmp_path / "gpu-check.log").read_text()
    assert "step infer_full_compile" in log and "done in" in log
    assert not (tmp_path / ".steps.jsonl").exists()


def test_cpu_run_records_results_and_respects_the_budget(tmp_path):
    """The env step really runs; the scan step finds the budget spent and is skipped."""
    proc, report = run(tmp_path, "--cpu", STEPS="env,scan", BUDGET="16")
    steps = {s["step"]: s for s in report["steps"]}
    assert steps["env"]["status"] == "ok" and steps["env"]["exit"] == 0
    assert steps["scan"]["status"] in ("skipped-budget", "timeout")
    assert steps["native"]["status"] == "not-selected"
    assert report["mode"] == "cpu" and report["ok"] is False and report["total_s"] <= 16 + 15
    assert "torch" in (tmp_path / "gpu-check.log").read_text()


def test_unknown_option_is_refused(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True,
                          env=dict(os.environ, OUT=str(tmp_path)))
    assert proc.returncode == 2 and "unknown option --fast" in proc.stderr
