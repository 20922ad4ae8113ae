"""``vmambax bench floor``: the forward against the matmul floor, measured in one process, and
the before/after comparison in alternating child processes."""

import argparse
import json

import pytest

from vmambax.bench import floor
from vmambax.cli import main


def test_floor_json_is_measured_in_one_process_and_consistent(capsys):
    assert main(["bench", "floor", "--config", "vmambax-nano", "--size", "128", "--repeats", "1",
                 "--threads", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["config"] == "vmambax-nano" and r["threads"] == 1 and r["ss2d_path"] == "fused"
    assert r["matmul_gflops"] > 0 and r["forward_s"] > 0
    assert 0 < r["scan_gflop"] < r["model_gflop"]
    assert r["floor_s"] == pytest.approx(r["model_gflop"] / r["matmul_gflops"])
    assert r["ratio"] == pytest.approx(r["forward_s"] / r["floor_s"])
    assert r["ratio"] > 1  # nothing runs faster than its matmul-rate floor
    assert r["train"] == []


def test_a_child_run_uses_the_earlier_code_paths(monkeypatch):
    monkeypatch.delenv("VMAMBAX_SS2D", raising=False)
    args = argparse.Namespace(config="vmambax-nano", size=128, repeats=1, threads=1,
                              train_config="vmambax-nano", train_batch=2, train_steps=1, train_sizes=[128])
    before = floor._child(args, floor.BEFORE_ENV)
    assert before["ss2d_path"] == "reference" and before["allocator_tuned"] is False
    assert [t["size"] for t in before["train"]] == [128] and before["train"][0]["seconds_per_step"] > 0


def test_compare_alternates_before_and_after_and_reports_medians(monkeypatch):
    order, seq = [], iter([4.0, 2.0, 1.0, 6.0, 5.0, 3.0])  # forward seconds, in call order

    def fake_child(args, env):
        order.append(env["VMAMBAX_SS2D"])
        s = next(seq)
        return {"matmul_gflops": 10.0, "forward_s": s, "floor_s": 1.0, "ratio": s, "train": [
            {"config": "c", "size": 128, "batch": 2, "seconds_per_step": s, "images_per_s": 2 / s}]}

    monkeypatch.setattr(floor, "_child", fake_child)
    r = floor.compare(argparse.Namespace(rounds=3), progress=lambda m: None)
    assert order == ["reference", "fused", "fused", "reference", "reference", "fused"]
    assert r["before"]["forward_s"] == 5.0 and r["after"]["forward_s"] == 2.0  # medians of 4,6,5 / 2,1,3
    assert r["speedup"]["forward"] == pytest.approx(2.5)
    assert r["speedup"]["train"] == [pytest.approx(2.5)]


def test_bad_options_are_refused_with_the_rule(capsys):
    assert main(["bench", "floor", "--train-batch", "1"]) == 2
    assert "--train-batch at least 2" in capsys.readouterr().err
