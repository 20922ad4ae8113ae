"""`vmambax bench infer` machinery on a tiny CPU run (timings are reported, never asserted)."""

from __future__ import annotations

from vmambax.bench.infer import benchmark


def test_bench_infer_reports_speed_memory_and_parity():
    lines = []
    out = benchmark(config="vmambax-nano", size=128, batch=2, slices=2, warmup=0, device="cpu",
                    threads=1, channels_last=True, e2e_slices=2, log=lines.append)
    for key in ("fp32", "optimised"):
        assert out[key]["slices_per_s"] > 0 and out[key]["peak_mem_mib"] > 0
        assert out[key]["batch"] == 2 and out[key]["device"] == "cpu (1 thread)"
    assert out["optimised"]["channels_last"] and not out["fp32"]["channels_last"]
    # channels-last changes only the memory layout: same probabilities up to float rounding.
    assert out["parity"]["max_abs_prob_diff"] < 1e-4 and out["parity"]["mask_dice"] > 0.99
    assert out["end_to_end"]["slices"] == 2 and out["end_to_end"]["seconds"] > 0
    assert any("slices/s" in line for line in lines) and any("parity" in line for line in lines)
