"""Selective scan (vmambax.ops): chunked backend vs the float64 oracle, gradients, backend choice,
input errors, and (on CUDA machines with mamba-ssm) the CUDA kernel vs the chunked scan."""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys

import pytest
import torch

from vmambax.errors import ConfigError, InputError
from vmambax.ops import BACKENDS, ENV_VAR, active_backend, available_backends, selective_scan
from vmambax.ops import mamba_cuda
from vmambax.ops.chunked import _plan, chunked_selective_scan
from vmambax.ops.sequential import sequential_selective_scan

scan_module = importlib.import_module("vmambax.ops.selective_scan")  # the package attribute is the function


def make_inputs(b=2, d=16, n=8, length=100, g=4, dtype=torch.float64, device="cpu", stiff=False,
                seed=0):
    """Random inputs; g=None gives 3-D B/C. ``stiff``: decays exp(dt A) down to ~e^-100 per step."""
    gen = torch.Generator().manual_seed(seed)
    shape_bc = (b, n, length) if g is None else (b, g, n, length)
    t = {
        "u": torch.randn(b, d, length, generator=gen),
        "delta": torch.randn(b, d, length, generator=gen) * (3.0 if stiff else 0.5),
        "A": -torch.exp(torch.randn(d, n, generator=gen) * (1.5 if stiff else 0.5)),
        "B": torch.randn(*shape_bc, generator=gen),
        "C": torch.randn(*shape_bc, generator=gen),
        "D": torch.randn(d, generator=gen),
        "delta_bias": torch.randn(d, generator=gen) * 0.3,
    }
    return {k: v.to(device, dtype) for k, v in t.items()}


def rel_err(a, b):
    """max|a - b| / max|b|: the acceptance measure (max|a - b| when b is all zeros)."""
    diff, scale = (a.double() - b.double()).abs().max(), b.double().abs().max()
    return (diff / scale if scale > 0 else diff).item()


def assert_matches_oracle(out, ref, tol=1e-5):
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= tol
    # ... and elementwise, so that small entries are not hidden by the normalisation.
    torch.testing.assert_close(out.double(), ref.double(), rtol=1e-4, atol=tol * ref.abs().max().item())


CASES = [
    # (b, d, n, l, g, segment, chunk): default plans, L not a multiple of the segment or chunk,
    # several chunks per segment (the GPU layout), L = 1, 3-D B/C (g=None).
    (2, 16, 8, 100, 4, None, None),
    (2, 16, 8, 100, 4, 32, None),
    (2, 16, 8, 100, 4, 40, 8),
    (1, 12, 5, 77, 3, 30, 7),
    (2, 8, 4, 1, 4, None, None),
    (2, 8, 4, 1, 2, 16, 4),
    (1, 8, 16, 64, None, 24, 6),
    (3, 6, 3, 50, 1, None, None),
]


@pytest.mark.parametrize("b, d, n, length, g, segment, chunk", CASES)
@pytest.mark.parametrize("with_d, with_bias, softplus", [(True, True, True), (False, False, False),
                                                          (True, False, True), (False, True, False)])
def test_chunked_float32_matches_float64_oracle(b, d, n, length, g, segment, chunk, with_d, with_bias, softplus):
    x = make_inputs(b, d, n, length, g)
    if not softplus:  # delta (+ bias) is the step size itself: keep it positive, as in a model
        x["delta"], x["delta_bias"] = x["delta"].abs(), x["delta_bias"].abs()
    opt = {"D": x["D"] if with_d else None, "delta_bias": x["delta_bias"] if with_bias else None,
           "delta_softplus": softplus}
    ref = sequential_selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], **opt)
    f32 = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in opt.items()}
    out = chunked_selective_scan(*(x[k].float() for k in "u delta A B C".split()), **f32,
                                 segment=segment, chunk=chunk)
    assert out.dtype == torch.float32 and out.shape == (b, d, length)
    assert_matches_oracle(out, ref)


def test_acceptance_shape_slice_matches_oracle():
    """The acceptance set-up -- 4 groups, delta_bias, softplus, D -- at d=768, n=16 on 128 steps."""
    x = make_inputs(1, 768, 16, 128, 4)
    ref = sequential_selective_scan(**x, delta_softplus=True)
    out = selective_scan(**{k: v.float() for k, v in x.items()}, delta_softplus=True, backend="chunked")
    assert_matches_oracle(out, ref)


def test_stiff_decays_stay_finite_and_exact():
    """dt*A down to about -100 per step underflows exp(); no inf/nan, still equal to the oracle."""
    x = make_inputs(2, 8, 8, 90, 4, stiff=True)
    assert (torch.nn.functional.softplus(x["delta"] + x["delta_bias"][:, None]).amax(-1)[..., None]
            * x["A"].amin(-1)[:, None]).min() < -50
    ref = sequential_selective_scan(**x, delta_softplus=True)
    for segment, chunk in ((None, None), (30, 5)):
        out = chunked_selective_scan(**{k: v.float() for k, v in x.items()}, delta_softplus=True,
                                     segment=segment, chunk=chunk)
        assert_matches_oracle(out, ref)


def test_half_precision_inputs_compute_in_float32_and_return_input_dtype():
    x = make_inputs(1, 16, 8, 60, 4)
    ref = sequential_selective_scan(**x, delta_softplus=True)
    xb = {k: v.to(torch.bfloat16) if k in ("u", "delta", "B", "C") else v.float() for k, v in x.items()}
    out = selective_scan(**xb, delta_softplus=True, backend="chunked")
    exact = sequential_selective_scan(**{k: v.double() for k, v in xb.items()}, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, exact) < 1e-2  # only the bf16 rounding of the output
    assert rel_err(out, ref) < 0.1


def test_autocast_does_not_lower_the_scan_precision():
    x = {k: v.float() for k, v in make_inputs(1, 16, 8, 50, 4).items()}
    plain = chunked_selective_scan(**x, delta_softplus=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = chunked_selective_scan(**x, delta_softplus=True)
    assert amp.dtype == torch.float32
    assert rel_err(amp, plain) < 1e-6


GRAD_CASES = [(2, 8, 4, 37, 4, None, None), (2, 8, 4, 37, 4, 10, 3), (1, 6, 5, 23, None, 8, 8),
              (2, 4, 3, 1, 2, None, None)]


@pytest.mark.parametrize("b, d, n, length, g, segment, chunk", GRAD_CASES)
def test_gradients_match_the_oracle(b, d, n, length, g, segment, chunk):
    x = make_inputs(b, d, n, length, g)
    gy = torch.randn(b, d, length, dtype=torch.float64)

    def grads(fn, dtype, **kw):
        leaves = {k: v.detach().to(dtype).requires_grad_() for k, v in x.items()}
        fn(**leaves, delta_softplus=True, **kw).backward(gy.to(dtype))
        return {k: v.grad for k, v in leaves.items()}

    ref = grads(sequential_selective_scan, torch.float64)
    g64 = grads(chunked_selective_scan, torch.float64, segment=segment, chunk=chunk)
    g32 = grads(chunked_selective_scan, torch.float32, segment=segment, chunk=chunk)
    for name in x:
        assert g64[name].shape == x[name].shape
        torch.testing.assert_close(g64[name], ref[name], rtol=1e-10, atol=1e-12 * ref[name].abs().max().item())
        assert g32[name].dtype == torch.float32
        assert rel_err(g32[name], ref[name]) < 1e-5, (name, rel_err(g32[name], ref[name]))


@pytest.mark.parametrize("segment, chunk, g", [(None, None, 2), (6, 2, 2), (5, 5, None)])
def test_gradcheck_float64(segment, chunk, g):
    x = make_inputs(1, 4, 2, 9, g, seed=1)
    names = list(x)

    def fn(*tensors):
        return chunked_selective_scan(**dict(zip(names, tensors)), delta_softplus=True,
                                      segment=segment, chunk=chunk)

    leaves = tuple(v.requires_grad_() for v in x.values())
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("grain", [None, 1])  # 1: the many-states path that keeps all threads
def test_cpu_forward_windows_and_blocks_match_the_oracle(monkeypatch, grain):
    """Force several time-major blocks (20 steps) and state windows (8 steps) that do not divide
    the sequence or the 30-step segments: values and gradients still equal the oracle."""
    chunked = importlib.import_module("vmambax.ops.chunked")
    b, d, n, length, g = 2, 8, 4, 77, 4
    monkeypatch.setattr(chunked, "_CPU_WINDOW", 1)  # -> the minimum window of 8 steps
    monkeypatch.setattr(chunked, "_CPU_BLOCK", 20 * b * d)  # -> blocks of 20 steps
    if grain is not None:
        monkeypatch.setattr(chunked, "_GRAIN", grain)
    x = make_inputs(b, d, n, length, g)
    gy = torch.randn(b, d, length, dtype=torch.float64)
    ref = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
    y_ref = sequential_selective_scan(**ref, delta_softplus=True)
    y_ref.backward(gy)
    leaves = {k: v.detach().float().requires_grad_() for k, v in x.items()}
    y = chunked_selective_scan(**leaves, delta_softplus=True, segment=30)
    assert_matches_oracle(y.detach(), y_ref.detach())
    y.backward(gy.float())
    for name in x:
        assert rel_err(leaves[name].grad, ref[name].grad) < 1e-5, name


def test_cpu_forward_restores_the_thread_setting():
    x = {k: v.float() for k, v in make_inputs(1, 8, 4, 50, 4).items()}
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        chunked_selective_scan(**x, delta_softplus=True)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_partial_requires_grad_and_no_grad():
    x = {k: v.float() for k, v in make_inputs(1, 8, 4, 20, 4).items()}
    with torch.no_grad():
        y0 = chunked_selective_scan(**x, delta_softplus=True)
    delta = x["delta"].clone().requires_grad_()
    y = chunked_selective_scan(**dict(x, delta=delta), delta_softplus=True)
    torch.testing.assert_close(y, y0)
    y.sum().backward()
    assert delta.grad is not None and torch.isfinite(delta.grad).all()


def test_backward_memory_is_bounded():
    """Autograd keeps only the inputs and one state per segment, never per-step states."""
    b, d, n, length = 1, 32, 16, 2048
    x = {k: v.float().requires_grad_() for k, v in make_inputs(b, d, n, length, 4).items()}
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chunked_selective_scan(**x, delta_softplus=True, segment=128)
    input_bytes = sum(v.numel() * v.element_size() for v in x.values())
    states_bytes = math.ceil(length / 128) * b * d * n * 4
    naive = b * d * length * n * 4  # one (b, d, l, n) float32 tensor
    assert sum(saved) <= input_bytes + states_bytes
    assert sum(saved) < naive / 2


def test_cpu_plan_is_cache_sized_and_covers_the_sequence():
    plan = _plan(16384, 1 * 768 * 16, torch.device("cpu"), None, None)
    assert plan[0][0] == 0 and plan[-1][1] == 16384
    assert all(a[1] == b[0] for a, b in zip(plan, plan[1:]))
    assert all(stop - start == T for start, stop, T in plan)  # one chunk per segment on CPU
    assert max(stop - start for start, stop, _ in plan) * 768 * 16 <= 1 << 20
    gpu = _plan(16384, 768 * 16, torch.device("cuda"), None, None)
    assert all((stop - start) % T == 0 and (stop - start) // T > 1 for start, stop, T in gpu)


# ----------------------------------------------------------------------------- backend choice

@pytest.fixture
def no_env(monkeypatch, tmp_path):
    """No backend chosen, and no native library (so ``auto`` is chunked on CPU; the native
    backend's selection is tested in test_ops_native.py)."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("VMAMBAX_NATIVE_LIB", str(tmp_path / "missing-libvmambax_scan.so"))
    return monkeypatch


@pytest.fixture
def spy(monkeypatch):
    """Record which implementation selective_scan dispatches to."""
    calls = []
    for name, fn in list(scan_module._IMPLEMENTATIONS.items()):
        def wrapper(*a, _name=name, _fn=fn, **kw):
            calls.append(_name)
            return _fn(*a, **kw)
        monkeypatch.setitem(scan_module._IMPLEMENTATIONS, name, wrapper)
    return calls


def test_auto_is_chunked_on_cpu_without_native_and_reported(no_env, spy):
    assert "auto" in BACKENDS
    assert active_backend("cpu") == "chunked"
    assert available_backends("cpu") == ["chunked", "sequential"]  # mamba_ssm needs CUDA tensors
    selective_scan(**make_inputs(1, 4, 2, 5, 2))
    assert spy == ["chunked"]


def test_env_var_selects_backend_and_argument_wins(no_env, spy):
    no_env.setenv(ENV_VAR, "Sequential")
    assert active_backend("cpu") == "sequential"
    x = make_inputs(1, 4, 2, 5, 2)
    selective_scan(**x)
    selective_scan(**x, backend="chunked")
    no_env.setenv(ENV_VAR, " ")  # blank = not set
    selective_scan(**x)
    assert spy == ["sequential", "chunked", "chunked"]


def test_unknown_backend_is_a_config_error_listing_the_choices(no_env):
    x = make_inputs(1, 4, 2, 5, 2)
    with pytest.raises(ConfigError, match=r"unknown selective-scan backend 'fast'.*backend=.*chunked, mamba_ssm"):
        selective_scan(**x, backend="fast")
    no_env.setenv(ENV_VAR, "triton")
    with pytest.raises(ConfigError, match=f"'triton'.*{ENV_VAR}"):
        selective_scan(**x)
    with pytest.raises(ConfigError, match="triton"):
        active_backend("cpu")


def test_mamba_ssm_requested_where_unavailable_is_a_config_error(no_env):
    x = make_inputs(1, 4, 2, 5, 2)
    with pytest.raises(ConfigError, match=r"'mamba_ssm'.*CUDA.*Available here: chunked, sequential"):
        selective_scan(**x, backend="mamba-ssm")
    no_env.setenv(ENV_VAR, "mamba_ssm")
    with pytest.raises(ConfigError, match=ENV_VAR):
        active_backend("cpu")


def test_auto_prefers_mamba_ssm_on_cuda_when_it_imports(no_env):
    no_env.setattr(mamba_cuda, "unavailable_reason", lambda device: None)
    assert active_backend("cuda") == "mamba_ssm"
    assert available_backends("cuda")[0] == "mamba_ssm"
    no_env.setattr(mamba_cuda, "unavailable_reason", lambda device: "does not import")
    assert active_backend("cuda") == "chunked"


class _BrokenCudaLibs:
    """An import hook that fails like a mamba-ssm build against the wrong CUDA libraries."""

    def find_spec(self, name, path=None, target=None):
        if name == "mamba_ssm" or name.startswith("mamba_ssm."):
            raise OSError("libcudart.so.11.0: cannot open shared object file")
        return None


def test_mamba_ssm_import_failures_of_any_kind_mean_unavailable(monkeypatch):
    for mod in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(sys, "meta_path", [_BrokenCudaLibs()] + sys.meta_path)
    mamba_cuda._load.cache_clear()
    try:
        fn, reason = mamba_cuda._load()
        assert fn is None and "OSError" in reason and "libcudart" in reason
        if torch.cuda.is_available():
            assert "libcudart" in mamba_cuda.unavailable_reason(torch.device("cuda"))
    finally:
        mamba_cuda._load.cache_clear()


@pytest.mark.parametrize("change, message", [
    (lambda x: x.update(u=x["u"][0]), "u has shape"),
    (lambda x: x.update(u=x["u"][:, :, :0], delta=x["delta"][:, :, :0]), "empty input"),
    (lambda x: x.update(delta=x["delta"][:, :, :-1]), "delta has shape"),
    (lambda x: x.update(A=x["A"][:-1]), "A has shape"),
    (lambda x: x.update(B=x["B"][:, :, :-1]), "B has shape"),
    (lambda x: x.update(C=torch.randn(2, 3, 8, 100, dtype=torch.float64)), "C has 3 groups"),
    (lambda x: x.update(D=x["D"][:-1]), "D has shape"),
    (lambda x: x.update(delta_bias=torch.zeros(16, dtype=torch.int64)), "delta_bias must be a floating"),
])
def test_bad_shapes_are_input_errors(change, message):
    x = make_inputs()
    change(x)
    with pytest.raises(InputError, match=message):
        selective_scan(**x)


@pytest.mark.parametrize("groups_b, groups_c", [(2, None), (None, 2), (2, 4), (4, 1)])
def test_b_and_c_with_different_group_counts_are_input_errors(groups_b, groups_c):
    """3-D B or C counts as one group; the backends index both with B's count."""
    x = make_inputs(2, 16, 8, 20, None)
    for name, groups in (("B", groups_b), ("C", groups_c)):
        if groups is not None:
            x[name] = torch.randn(2, groups, 8, 20, dtype=torch.float64)
    for backend in ("chunked", "sequential"):
        with pytest.raises(InputError, match="B has .* groups? but C has"):
            selective_scan(**x, backend=backend)


# ----------------------------------------------------------------------------- bench command

def test_bench_scan_command_runs_backends_in_fresh_processes(tmp_path, capsys, monkeypatch):
    import vmambax.bench
    from vmambax.cli import main

    written = []
    real_emit = vmambax.bench.emit_json
    monkeypatch.setattr(vmambax.bench, "emit_json", lambda result, path: written.append(path)
                        or real_emit(result, path))  # the one JSON writer of the benchmarks
    out = tmp_path / "scan.json"
    rc = main(["bench", "scan", "--length", "40", "--dim", "8", "--state", "4", "--groups", "2",
               "--repeats", "1", "--threads", "1", "--backward", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "chunked" in text and "sequential" in text and "speed-up" in text
    import json

    report = json.loads(out.read_text())
    assert written == [str(out)]
    res = report["results"]
    assert report["reference"] == "sequential" and report["threads"] == 1
    assert res["sequential"]["max_rel_diff"] == 0 and res["chunked"]["max_rel_diff"] < 1e-5
    for r in res.values():
        assert len(r["forward_ms"]) == 1 and r["forward_ms"][0] > 0 and len(r["fwd_bwd_ms"]) == 1
        assert r["peak_fwd_mb"] is None or r["peak_fwd_mb"] >= 0


def test_bench_rejects_bad_options(capsys):
    from vmambax.cli import main

    assert main(["bench", "scan", "--backends", "chunked,warp"]) == 2
    assert "unknown warp" in capsys.readouterr().err
    assert main(["bench", "scan", "--dim", "10", "--groups", "4"]) == 2
    assert main(["bench", "scan", "--backends", "mamba_ssm"]) == 2
    assert "not available" in capsys.readouterr().err
    assert main(["bench"]) == 1  # no benchmark named: help


# ----------------------------------------------------------------------------- CUDA

def _needs_mamba_ssm():
    if importlib.util.find_spec("mamba_ssm") is None or mamba_cuda.unavailable_reason(torch.device("cuda")):
        pytest.skip("mamba-ssm is not installed/importable on this CUDA machine")


@pytest.mark.gpu
@pytest.mark.parametrize("b, d, n, length, g", [(2, 96, 16, 777, 4), (1, 768, 16, 4096, 4), (2, 64, 8, 300, None)])
def test_mamba_ssm_matches_chunked_on_cuda(b, d, n, length, g):
    _needs_mamba_ssm()
    x = make_inputs(b, d, n, length, g, dtype=torch.float32, device="cuda")
    gy = torch.randn(b, d, length, device="cuda")
    ref = sequential_selective_scan(**{k: v.double().cpu() for k, v in x.items()}, delta_softplus=True)

    def run(backend):
        leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
        y = selective_scan(**leaves, delta_softplus=True, backend=backend)
        y.backward(gy)
        return y.detach(), {k: v.grad for k, v in leaves.items()}

    y_m, g_m = run("mamba_ssm")
    y_c, g_c = run("chunked")
    assert_matches_oracle(y_c.cpu(), ref, tol=1e-5)
    assert_matches_oracle(y_m.cpu(), ref, tol=1e-4)
    assert rel_err(y_m, y_c) < 1e-4
    for name in x:  # the kernel sums B/C/A/D gradients in fp32 with atomics: looser
        assert rel_err(g_m[name], g_c[name]) < 1e-3, name


@pytest.mark.gpu
def test_chunked_on_cuda_matches_oracle_and_auto_picks_a_cuda_backend():
    x = make_inputs(2, 64, 16, 1000, 4, dtype=torch.float32, device="cuda")
    ref = sequential_selective_scan(**{k: v.double().cpu() for k, v in x.items()}, delta_softplus=True)
    out = selective_scan(**x, delta_softplus=True, backend="chunked")
    assert out.is_cuda
    assert_matches_oracle(out.cpu(), ref)
    assert active_backend("cuda") in ("mamba_ssm", "chunked")
