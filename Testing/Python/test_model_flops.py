"""FLOP counting (scans apart), `vmambax info` and `vmambax bench forward`."""

import json

import pytest

from vmambax.cli import main
from vmambax.model import build_model
from vmambax.model.flops import count_flops, scan_flops

TINY = dict(dims=(16, 32, 64, 128), depths=(1, 1, 2, 1), decoder_depths=(1, 1, 1), cgm_min_channels=4)


def _expected_scan_flops(cfg, size: int, batch: int = 1) -> int:
    """Every selective scan of the architecture, from the spec: encoder (CT and PET), DCIM
    (region grid + 4x4 windows), decoder (d_state 4, C3/C2/C1 stages)."""
    total = 0
    for i, (c, depth) in enumerate(zip(cfg.dims, cfg.depths)):
        length = (size // 4 // 2 ** i) ** 2
        d = 4 * int(cfg.ssm_ratio * c)  # K·Di channels
        total += depth * scan_flops(2 * batch, d, length, cfg.d_state)
        if cfg.use_dcim:
            total += scan_flops(batch, d, length // 16, cfg.d_state)  # region tokens
            total += scan_flops(batch * length // 16, d, 16, cfg.d_state)  # words in windows
    for stage, depth in zip((2, 1, 0), cfg.decoder_depths):
        length = (size // 4 // 2 ** stage) ** 2
        d = 4 * int(cfg.ssm_ratio * cfg.dims[stage])
        total += depth * scan_flops(batch, d, length, cfg.dec_d_state)
    return total


def test_scan_flops_are_counted_analytically_for_every_call():
    model = build_model("vmambax", **TINY)
    f = count_flops(model, size=128)
    assert f["gflops_scans"] * 1e9 == pytest.approx(_expected_scan_flops(model.config, 128), rel=1e-12)
    assert f["gflops_with_scans"] == pytest.approx(f["gflops_without_scans"] + f["gflops_scans"])
    assert set(f["by_component"]) == {"encoder", "cgm", "dcim", "decoder"}
    assert sum(f["by_component"].values()) == pytest.approx(f["gflops_without_scans"], rel=1e-9)
    # the patch embedding alone: 2 passes x (size/4)^2 positions x 16·3 MACs x C
    assert f["by_component"]["encoder"] > 2 * 32 * 32 * 48 * 16 / 1e9
    assert model.training  # counting leaves the mode alone


def test_info_cli_reports_exact_counts(capsys):
    assert main(["info", "--config", "vmambax", "--no-flops", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"]["total"] == 53_403_682 and info["fusion"] == "cgm+dcim"
    assert info["scan_backend"] in info["scan_backends_available"]
    assert main(["info", "--config", "cipa", "--no-flops"]) == 0
    out = capsys.readouterr().out
    assert "54,572,198" in out and "CRM x4" in out and "CGM x4" not in out
    assert main(["info", "--config", "vmambax-nano", "--size", "128"]) == 0
    out = capsys.readouterr().out
    assert "without selective scans" in out and "with selective scans" in out
    assert main(["info", "--config", "vmambx", "--no-flops"]) == 2
    assert "Did you mean 'vmambax'" in capsys.readouterr().err
    assert main(["info", "--config", "vmambax", "--size", "300"]) == 2
    assert "multiple of 128" in capsys.readouterr().err


def test_bench_forward_reports_time_per_slice(capsys):
    args = ["bench", "forward", "--config", "vmambax-nano", "--size", "128", "--batch", "2",
            "--repeats", "1", "--warmup", "0", "--device", "cpu"]
    assert main(args + ["--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["seconds_per_slice"] == pytest.approx(r["seconds_per_forward"] / 2)
    assert r["seconds_per_forward"] > 0 and r["device"] == "cpu" and r["scan_backend"] and r["batch"] == 2
    assert main(args[:4] + ["--size", "200"]) == 2
    assert "multiple of 128" in capsys.readouterr().err
