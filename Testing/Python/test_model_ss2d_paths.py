"""The two SS2D code paths (issue 19): ``fused`` (default) equals the authors' ``reference``
formulation in float64, forward and backward, on odd map sizes; the path and the allocator
tuning are selectable by environment variable, with a clear error for a bad value."""

import os
import subprocess
import sys

import pytest
import torch

from vmambax.errors import ConfigError
from vmambax.model import build_model
from vmambax.model.ss2d import SS2D, active_path, use_path


def _run(module, x, path):
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    with use_path(path):
        y = module(x)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)  # a non-uniform upstream gradient
    (y * weights).sum().backward()
    return y.detach(), x.grad, {n: p.grad for n, p in module.named_parameters()}


@pytest.mark.parametrize("batch,h,w", [(1, 5, 7), (2, 3, 11), (2, 8, 8)])
def test_fused_equals_reference_in_float64_forward_and_backward(batch, h, w):
    torch.manual_seed(h * w)
    ss = SS2D(16, d_state=4).double()
    x = torch.randn(batch, h, w, 16, dtype=torch.float64)
    y_ref, gx_ref, gp_ref = _run(ss, x, "reference")
    y_new, gx_new, gp_new = _run(ss, x, "fused")
    assert y_new.shape == y_ref.shape == (batch, h, w, 16)
    assert torch.allclose(y_new, y_ref, rtol=0, atol=1e-12)
    assert torch.allclose(gx_new, gx_ref, rtol=0, atol=1e-12)
    for name, g in gp_ref.items():
        assert torch.allclose(gp_new[name], g, rtol=0, atol=1e-11), name


def test_whole_model_logits_agree_between_paths_in_float64():
    torch.manual_seed(0)
    model = build_model("vmambax-nano", pretrained_encoder=None).double().eval()
    ct = torch.rand(1, 1, 128, 128, dtype=torch.float64) * 3.2 - 1.6
    pet = torch.rand(1, 1, 128, 128, dtype=torch.float64) * 3.2 - 1.6
    with torch.no_grad():
        with use_path("reference"):
            ref = model(ct, pet)
        with use_path("fused"):
            new = model(ct, pet)
    assert ref.abs().max() > 0
    assert torch.allclose(new, ref, rtol=0, atol=1e-10)


def test_path_from_environment_and_a_bad_value_names_the_variable(monkeypatch):
    monkeypatch.delenv("VMAMBAX_SS2D", raising=False)
    assert active_path() == "fused"
    monkeypatch.setenv("VMAMBAX_SS2D", "Reference")
    assert active_path() == "reference"
    with use_path("fused"):  # the context manager wins over the variable
        assert active_path() == "fused"
    monkeypatch.setenv("VMAMBAX_SS2D", "fastest")
    with pytest.raises(ConfigError, match=r"VMAMBAX_SS2D='fastest' is not one of fused, reference"):
        active_path()


def test_a_bad_path_on_the_command_line_is_a_clear_error_not_a_traceback(tmp_path):
    env = dict(os.environ, VMAMBAX_SS2D="bogus")
    out = subprocess.run([sys.executable, "-m", "vmambax", "bench", "forward", "--config", "vmambax-nano",
                          "--size", "128", "--repeats", "1", "--warmup", "0"],
                         env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2
    assert "VMAMBAX_SS2D='bogus' is not one of fused, reference" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_allocator_is_tuned_by_the_command_line_process_and_can_be_left_alone():
    code = ("import sys; from vmambax.allocator import tune_allocator; "
            "print(tune_allocator(), tune_allocator())")
    tuned = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "VMAMBAX_MALLOC"})
    left = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, VMAMBAX_MALLOC="default"))
    assert tuned.stdout.split() == ["True", "True"]  # applied once, the same answer after
    assert left.stdout.split() == ["False", "False"]


def test_flops_are_the_architectures_whatever_path_runs(monkeypatch):
    from vmambax.model.flops import count_flops

    model = build_model("vmambax-nano", pretrained_encoder=None)
    counts = {}
    for path in ("fused", "reference"):
        monkeypatch.setenv("VMAMBAX_SS2D", path)
        counts[path] = count_flops(model, size=128)["gflops_with_scans"]
    assert counts["fused"] == counts["reference"] > 0
