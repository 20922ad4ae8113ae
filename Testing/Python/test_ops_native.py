"""The ``native`` selective-scan backend (vmambax/ops/_native, loaded with ctypes): values and every
gradient against the float64 oracle, thread-count independence, the SIMD variants and the
portable (MSVC) kernels against each other, the fallback when the library is missing, and its
builds (setup.py hook, build_native, CMake)."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_ops import assert_matches_oracle, make_inputs, rel_err
from vmambax.errors import ConfigError
from vmambax.ops import active_backend, available_backends, selective_scan, unavailable_reasons
from vmambax.ops import build_native, native
from vmambax.ops.chunked import chunked_selective_scan
from vmambax.ops.sequential import sequential_selective_scan

scan_module = importlib.import_module("vmambax.ops.selective_scan")
ROOT = Path(__file__).resolve().parents[2]
NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


@pytest.fixture(autouse=True)
def _plain_env(monkeypatch):
    for var in (native.ENV_LIB, native.ENV_ISA, "VMAMBAX_SCAN_BACKEND"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def lib():
    reason = native.unavailable_reason()
    if reason is not None:
        pytest.skip(f"native scan library not available ({reason})")
    return native._load()[0]


def model_like(b, d, n, length, g, seed=0):
    """Inputs as the model makes them: A = -exp(A_log), A_log = log(1..n) (+ noise, as after
    training), delta before softplus, delta_bias = softplus^-1(dt) for dt in [1e-3, 0.1]."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.rand(d, generator=gen) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3)))
                   + torch.log(torch.tensor(1e-3)))
    shape_bc = (b, n, length) if g is None else (b, g, n, length)
    x = {
        "u": torch.randn(b, d, length, generator=gen),
        "delta": torch.randn(b, d, length, generator=gen),
        "A": -torch.exp(torch.log(torch.arange(1, n + 1.0)).repeat(d, 1) + 0.1 * torch.randn(d, n, generator=gen)),
        "B": torch.randn(*shape_bc, generator=gen),
        "C": torch.randn(*shape_bc, generator=gen),
        "D": torch.ones(d) + 0.1 * torch.randn(d, generator=gen),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),
    }
    return {k: v.double() for k, v in x.items()}


def oracle_and_native(x, gy, **opt):
    """(y, grads) of the float64 oracle and of the native backend on float32 copies."""
    ref = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
    y_ref = sequential_selective_scan(**ref, **opt)
    y_ref.backward(gy)
    leaves = {k: v.detach().float().requires_grad_() for k, v in x.items()}
    y = native.native_selective_scan(**leaves, **opt)
    y.backward(gy.float())
    return (y_ref.detach(), {k: v.grad for k, v in ref.items()}), (y.detach(), {k: v.grad for k, v in leaves.items()})


CASES = [
    # (b, d, n, l, g): n = 16 (the encoder), 4 (the decoder; channel pairs in one vector when d/g
    # is even), odd n, n > 16; odd d and l;
    # 1 and 4 groups and 3-D B/C; l = 1; a longer sequence.
    (2, 16, 16, 100, 4),
    (2, 12, 4, 61, 4),
    (2, 16, 4, 150, 2),
    (1, 9, 5, 77, 3),
    (1, 7, 13, 33, 1),
    (2, 6, 20, 29, 2),
    (1, 8, 16, 64, None),
    (2, 8, 4, 1, 4),
    (1, 4, 16, 2500, 4),
]


@pytest.mark.parametrize("b, d, n, length, g", CASES)
@pytest.mark.parametrize("inputs", ["random", "model"])
def test_forward_and_every_gradient_match_the_float64_oracle(lib, b, d, n, length, g, inputs):
    x = make_inputs(b, d, n, length, g) if inputs == "random" else model_like(b, d, n, length, g)
    gy = torch.randn(b, d, length, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (y_ref, g_ref), (y, grads) = oracle_and_native(x, gy, delta_softplus=True)
    assert y.dtype == torch.float32 and y.shape == (b, d, length)
    assert_matches_oracle(y, y_ref)
    for name in NAMES:
        assert grads[name].shape == x[name].shape and grads[name].dtype == torch.float32
        assert rel_err(grads[name], g_ref[name]) < 2e-5, (name, rel_err(grads[name], g_ref[name]))


@pytest.mark.parametrize("with_d, with_bias, softplus", [(False, False, False), (True, False, True),
                                                          (False, True, False)])
def test_optional_arguments(lib, with_d, with_bias, softplus):
    x = make_inputs(2, 8, 8, 50, 2)
    if not softplus:  # the step size itself: keep it positive, as in a model
        x["delta"], x["delta_bias"] = x["delta"].abs(), x["delta_bias"].abs()
    args = {k: x[k] for k in ("u", "delta", "A", "B", "C")}
    if with_d:
        args["D"] = x["D"]
    if with_bias:
        args["delta_bias"] = x["delta_bias"]
    gy = torch.randn(2, 8, 50, dtype=torch.float64)
    (y_ref, g_ref), (y, grads) = oracle_and_native(args, gy, delta_softplus=softplus)
    assert_matches_oracle(y, y_ref)
    for name in args:
        assert rel_err(grads[name], g_ref[name]) < 2e-5, name


def test_stiff_decays_and_large_steps_stay_exact(lib):
    """dt*A down to about -100 per step (exp underflows) and z > 20 (softplus is linear)."""
    x = make_inputs(2, 8, 8, 90, 4, stiff=True)
    x["delta"][0, 0, :10] = 25.0
    gy = torch.randn(2, 8, 90, dtype=torch.float64)
    (y_ref, g_ref), (y, grads) = oracle_and_native(x, gy, delta_softplus=True)
    assert_matches_oracle(y, y_ref)
    for name in NAMES:
        assert torch.isfinite(grads[name]).all()
        assert rel_err(grads[name], g_ref[name]) < 2e-5, name


def test_non_contiguous_inputs(lib):
    b, d, n, length, g = 2, 8, 16, 40, 2
    x = make_inputs(b, d, n, length, g)
    gen = torch.Generator().manual_seed(3)
    strided = {
        "u": torch.randn(b, length, d, generator=gen, dtype=torch.float64).transpose(1, 2),
        "delta": torch.randn(b, d, 2 * length, generator=gen, dtype=torch.float64)[..., ::2],
        "A": -torch.rand(n, d, generator=gen, dtype=torch.float64).t(),
        "B": torch.randn(b, g, length, n, generator=gen, dtype=torch.float64).transpose(-1, -2),
        "C": torch.randn(b, 2 * g, n, length, generator=gen, dtype=torch.float64)[:, ::2],
        "D": torch.randn(2 * d, generator=gen, dtype=torch.float64)[::2],
        "delta_bias": x["delta_bias"],
    }
    assert not any(strided[k].is_contiguous() for k in ("u", "delta", "A", "B", "C", "D"))
    gy = torch.randn(b, length, d, dtype=torch.float64).transpose(1, 2)
    (y_ref, g_ref), (y, grads) = oracle_and_native(strided, gy, delta_softplus=True)
    assert_matches_oracle(y, y_ref)
    for name in NAMES:
        assert rel_err(grads[name], g_ref[name]) < 2e-5, name


@pytest.mark.parametrize("n", [16, 4])
def test_results_do_not_depend_on_the_thread_count(lib, monkeypatch, n):
    """Bitwise equal values and gradients for 1, 2 and 3 threads (threads split the channels;
    the gB/gC/gA sums run in a fixed order)."""
    monkeypatch.setattr(native, "_MIN_WORK_PER_THREAD", 1)  # threads even for this small problem
    x = {k: v.float() for k, v in model_like(2, 24, n, 300, 4).items()}
    gy = torch.randn(2, 24, 300)
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
            y = native.native_selective_scan(**leaves, delta_softplus=True)
            y.backward(gy)
            runs.append([y.detach()] + [leaves[k].grad for k in NAMES])
    finally:
        torch.set_num_threads(before)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def test_float64_goes_to_chunked_and_low_precision_returns_its_dtype(lib):
    x = make_inputs(1, 8, 8, 30, 2)
    y = native.native_selective_scan(**x, delta_softplus=True)
    assert y.dtype == torch.float64
    assert torch.equal(y, chunked_selective_scan(**x, delta_softplus=True))
    xb = {k: v.to(torch.bfloat16) if k in ("u", "delta", "B", "C") else v.float() for k, v in x.items()}
    yb = native.native_selective_scan(**xb, delta_softplus=True)
    exact = sequential_selective_scan(**{k: v.double() for k, v in xb.items()}, delta_softplus=True)
    assert yb.dtype == torch.bfloat16 and rel_err(yb, exact) < 1e-2
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast does not lower the scan's precision
        ya = native.native_selective_scan(**{k: v.float() for k, v in x.items()}, delta_softplus=True)
    assert ya.dtype == torch.float32 and rel_err(ya, y) < 1e-6


_OVERFLOW_SCRIPT = """
import ctypes, sys
from vmambax.ops import native
lib = native._load()[0]
buf = (ctypes.c_float * 64)()
p = ctypes.addressof(buf)
big = 1 << 62  # b*g*l*np = 2**64 wraps to 0 in 64-bit size arithmetic
fwd = lib.vmx_scan_forward(p, p, p, p, p, None, None, p, 1, 1, 1, 1, big, 4, 0, 1, -1)
bwd = lib.vmx_scan_backward(p, p, p, p, p, None, None, p, p, p, p, p, p, None, None,
                            1, 1, 1, 1, big, 4, 0, 1, -1)
fwd2 = lib.vmx_scan_forward(p, p, p, p, p, None, None, p, 1 << 40, 1, 1, 1, 1 << 22, 4, 0, 1, -1)
print(fwd, bwd, fwd2)
"""


def test_buffer_sizes_that_overflow_are_refused_as_out_of_memory(lib):
    """The C side computes b*g*l*np etc. in 64 bits; a product that wraps must not become a
    small buffer that the kernels then write past (a crash, here in a child process)."""
    proc = subprocess.run([sys.executable, "-c", _OVERFLOW_SCRIPT], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-500:]}"
    assert proc.stdout.split() == ["2", "2", "2"]


def test_kernel_exp_is_accurate_without_libm(lib):
    x = torch.cat([torch.linspace(-86.0, 88.0, 400_003), torch.linspace(-1e-3, 1e-3, 1001)])
    y = native.kernel_exp(x).double()
    exact = torch.exp(x.double())
    assert ((y - exact).abs() / exact).max() < 2e-7
    tiny = native.kernel_exp(torch.tensor([-200.0, -1e30, 0.0]))
    assert tiny[0] < 1e-37 and tiny[1] < 1e-37 and tiny[2] == 1.0


def test_baseline_and_simd_kernels_agree(lib, monkeypatch):
    """The run-time choice of instruction set changes nothing beyond 1e-6 (cross-platform)."""
    x = {k: v.float() for k, v in model_like(2, 16, 16, 500, 4).items()}
    y = native.native_selective_scan(**x, delta_softplus=True)
    monkeypatch.setenv(native.ENV_ISA, "baseline")
    assert "baseline" in native.describe()
    y_base = native.native_selective_scan(**x, delta_softplus=True)
    assert rel_err(y_base, y) < 1e-6


@pytest.mark.skipif(build_native._find_cc() is None or sys.platform.startswith("win"),
                    reason="needs a C compiler on PATH")
def test_portable_kernels_build_and_agree(lib, tmp_path, monkeypatch):
    """The plain-loop kernels (what MSVC compiles) against the vector-extension ones."""
    path = build_native.build(tmp_path, extra_flags=["-DVMX_NO_VECTOR_EXT"])
    x = {k: v.float() for k, v in model_like(1, 12, 16, 300, 4).items()}
    gy = torch.randn(1, 12, 300)

    def run():
        leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
        y = native.native_selective_scan(**leaves, delta_softplus=True)
        y.backward(gy)
        return [y.detach()] + [leaves[k].grad for k in NAMES]

    vector = run()
    monkeypatch.setenv(native.ENV_LIB, str(path))
    assert native.unavailable_reason() is None and str(path) in native.describe()
    portable = run()
    for name, a, b in zip(("y",) + NAMES, vector, portable):
        assert rel_err(b, a) < 1e-6, name


def test_full_model_output_equals_chunked(lib, monkeypatch):
    from vmambax.model import build_model

    torch.manual_seed(0)
    model = build_model("vmambax-nano", pretrained_encoder=None).eval()
    ct, pet = torch.rand(1, 1, 128, 128) * 3.2 - 1.6, torch.rand(1, 1, 128, 128) * 3.2 - 1.6
    outs = {}
    for backend in ("chunked", "native"):
        monkeypatch.setenv("VMAMBAX_SCAN_BACKEND", backend)
        with torch.inference_mode():
            outs[backend] = model(ct, pet)
    assert rel_err(outs["native"], outs["chunked"]) < 1e-5


# ----------------------------------------------------------------------------- selection, fallback

def test_auto_picks_native_on_cpu_when_it_loads(lib):
    assert active_backend("cpu") == "native"
    assert available_backends("cpu")[0] == "native"
    assert unavailable_reasons("cpu") == {}
    calls = []
    real = scan_module._IMPLEMENTATIONS["native"]
    scan_module._IMPLEMENTATIONS["native"] = lambda *a, **kw: calls.append(1) or real(*a, **kw)
    try:
        selective_scan(**{k: v.float() for k, v in make_inputs(1, 4, 2, 5, 2).items()})
    finally:
        scan_module._IMPLEMENTATIONS["native"] = real
    assert calls == [1]


@pytest.mark.parametrize("shape_b, shape_c", [((1, 2, 4, 9), (1, 4, 9)), ((1, 4, 9), (1, 2, 4, 9)),
                                             ((1, 2, 4, 9), (1, 4, 4, 9))])
def test_b_and_c_with_different_group_counts_are_refused(lib, shape_b, shape_c):
    """Both through selective_scan and when native is called directly (it would read past C)."""
    from vmambax.errors import InputError

    x = {k: v.float() for k, v in make_inputs(1, 8, 4, 9, None).items()}
    x["B"], x["C"] = torch.randn(*shape_b), torch.randn(*shape_c)
    with pytest.raises(InputError, match="B has .* but C has"):
        selective_scan(**x, backend="native")
    with pytest.raises(InputError, match="B has .* but C has"):
        native.native_selective_scan(**x)


def test_missing_library_falls_back_to_chunked_and_says_why(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere" / build_native.library_name()
    monkeypatch.setenv(native.ENV_LIB, str(missing))
    reason = native.unavailable_reason()
    assert str(missing) in reason and "python -m vmambax.ops.build_native" in reason
    assert "native" not in available_backends("cpu")
    assert active_backend("cpu") == "chunked"
    assert "build_native" in unavailable_reasons("cpu")["native"]
    x = {k: v.float() for k, v in make_inputs(1, 4, 2, 5, 2).items()}
    torch.testing.assert_close(selective_scan(**x), chunked_selective_scan(**x))
    with pytest.raises(ConfigError, match=r"'native'.*missing.*build_native.*Available here: chunked"):
        selective_scan(**x, backend="native")


def test_a_relative_library_path_is_made_absolute(monkeypatch, tmp_path):
    """dlopen searches LD_LIBRARY_PATH and the system folders for a bare name; never let it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(native.ENV_LIB, "libvmambax_scan.so")
    assert native.library_path() == tmp_path.resolve() / "libvmambax_scan.so"
    monkeypatch.setenv(native.ENV_LIB, "~/x/lib.so")
    assert native.library_path() == (Path.home() / "x" / "lib.so").resolve()
    assert native.library_path().is_absolute()


def test_broken_library_file_is_reported(monkeypatch, tmp_path):
    bad = tmp_path / build_native.library_name()
    bad.write_bytes(b"not a shared library")
    monkeypatch.setenv(native.ENV_LIB, str(bad))
    assert "does not load" in native.unavailable_reason()
    assert active_backend("cpu") == "chunked"


def test_native_on_cuda_tensors_is_a_config_error():
    with pytest.raises(ConfigError, match="native.*CPU tensors only"):
        scan_module._resolve("native", torch.device("cuda"))


def test_info_names_the_backend_and_why_native_is_missing(monkeypatch, capsys, tmp_path):
    from vmambax.cli import main

    monkeypatch.setenv(native.ENV_LIB, str(tmp_path / "missing.so"))
    assert main(["info", "--config", "vmambax-nano", "--no-flops"]) == 0
    out = capsys.readouterr().out
    assert "backend chunked on cpu" in out and "native not available" in out and "build_native" in out


# ----------------------------------------------------------------------------- builds

def _env_without_cc(tmp_path):
    env = dict(os.environ, CC=str(tmp_path / "no-such-cc"))
    return env


def test_build_without_a_compiler_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(build_native.BuildError, match="no C compiler"):
        build_native.build(tmp_path / "out")
    assert not (tmp_path / "out" / build_native.library_name()).exists()


@pytest.mark.skipif(build_native._find_cc() is None or sys.platform.startswith("win"),
                    reason="needs a C compiler on PATH")
def test_a_failed_copy_leaves_no_staging_file_and_keeps_the_old_library(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / build_native.library_name()).write_bytes(b"old")

    def refuse(src, dst, *args, **kwargs):
        Path(dst).write_bytes(b"partial")
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(build_native.shutil, "copy2", refuse)
    with pytest.raises(build_native.BuildError, match="cannot write"):
        build_native.build(out)
    assert sorted(p.name for p in out.iterdir()) == [build_native.library_name()]
    assert (out / build_native.library_name()).read_bytes() == b"old"


def test_build_command_reports_os_errors_without_a_traceback(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert build_native.main(["--out-dir", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot build the native library into") and "Traceback" not in err


def test_build_uses_a_temporary_folder_that_tolerates_cleanup_errors(tmp_path, monkeypatch):
    """Windows cannot delete the staged DLL while it is loaded: that must not fail the build."""
    seen = {}
    real = build_native.tempfile.TemporaryDirectory

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(build_native.tempfile, "TemporaryDirectory", spy)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(build_native.BuildError):
        build_native.build(tmp_path / "out")
    assert seen.get("ignore_cleanup_errors") is True


@pytest.mark.skipif(build_native._find_cc() is None, reason="needs a C compiler on PATH")
def test_setup_hook_builds_the_library_and_survives_a_missing_compiler(tmp_path):
    """`pip install` runs this build_ext: with a compiler the library lands in the build tree;
    without one the build still succeeds, with a one-line note."""
    pytest.importorskip("setuptools")
    ok = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "ok"),
                         "--build-temp", str(tmp_path / "tmp")], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "ok" / "vmambax" / "ops" / "_native" / build_native.library_name()).is_file()
    no_cc = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "no"),
                            "--build-temp", str(tmp_path / "tmp")], cwd=ROOT, capture_output=True, text=True,
                           env=_env_without_cc(tmp_path))
    assert no_cc.returncode == 0, no_cc.stderr
    assert "native selective-scan library was not built" in no_cc.stderr and "no C compiler" in no_cc.stderr
    assert not (tmp_path / "no" / "vmambax" / "ops" / "_native" / build_native.library_name()).exists()


@pytest.mark.parametrize("helper", [None, "raise ImportError('broken helper')\n",
                                    "SOURCE_DIR = property()\ndef build(out):\n    raise OSError('x')\n"])
def test_setup_hook_survives_a_missing_or_broken_build_helper(tmp_path, helper):
    """Loading the helper by path and finding the sources are inside the hook's try as well."""
    pytest.importorskip("setuptools")
    tree = tmp_path / "tree"
    (tree / "vmambax" / "ops").mkdir(parents=True)
    shutil.copy2(ROOT / "setup.py", tree / "setup.py")
    if helper is not None:
        (tree / "vmambax" / "ops" / "build_native.py").write_text(helper)
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "out"),
                           "--build-temp", str(tmp_path / "tmp")], cwd=tree, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "native selective-scan library was not built" in proc.stderr


@pytest.mark.skipif(shutil.which("cmake") is None or build_native._find_cc() is None,
                    reason="needs cmake and a C compiler")
def test_cmake_builds_a_library_the_loader_accepts(tmp_path, monkeypatch):
    out = tmp_path / "out"
    src = ROOT / "vmambax" / "ops" / "_native"
    conf = subprocess.run(["cmake", "-S", str(src), "-B", str(tmp_path / "b"), f"-DVMAMBAX_NATIVE_OUTPUT_DIR={out}",
                           "-DCMAKE_BUILD_TYPE=Release"], capture_output=True, text=True)
    assert conf.returncode == 0, conf.stdout + conf.stderr
    make = subprocess.run(["cmake", "--build", str(tmp_path / "b")], capture_output=True, text=True)
    assert make.returncode == 0, make.stdout + make.stderr
    monkeypatch.setenv(native.ENV_LIB, str(out / build_native.library_name()))
    assert native.unavailable_reason() is None
    x = {k: v.float() for k, v in make_inputs(1, 8, 16, 40, 2).items()}
    assert rel_err(native.native_selective_scan(**x, delta_softplus=True),
                   sequential_selective_scan(**x, delta_softplus=True)) < 1e-5


def test_build_without_the_c_sources_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(build_native, "SOURCE_DIR", tmp_path / "no-sources")
    with pytest.raises(build_native.BuildError, match="the C sources are not installed"):
        build_native.build(tmp_path / "out")


def _native_block_of_the_extension_cmake() -> str:
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    start = text.index("option(VMAMBAX_BUILD_NATIVE_SCAN")
    return text[start:text.index("#----", start)]


def test_extension_cmake_installs_the_c_sources_with_the_package():
    block = _native_block_of_the_extension_cmake()
    assert "vmambax/ops/_native/*.c" in block and "vmambax/ops/_native/*.h" in block
    assert "install(FILES ${VMAMBAX_NATIVE_SOURCES}" in block


@pytest.mark.skipif(shutil.which("cmake") is None or build_native._find_cc() is None,
                    reason="needs cmake and a C compiler")
def test_extension_native_block_builds_and_installs_library_and_sources(tmp_path):
    """The top-level CMakeLists' native block, with Slicer's two folder variables stood in."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "vmambax" / "ops" / "_native", src / "vmambax" / "ops" / "_native",
                    ignore=shutil.ignore_patterns("*.so", "*.dylib", "*.dll", "build*"))
    (src / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.16.3)\nproject(T C)\n"
        "set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/qt-scripted-modules)\n"
        "set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/qt-scripted-modules)\n"
        + _native_block_of_the_extension_cmake(), encoding="utf-8")
    build, prefix = tmp_path / "b", tmp_path / "prefix"
    for cmd in (["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
                ["cmake", "--build", str(build)], ["cmake", "--install", str(build), "--prefix", str(prefix)]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    for root in (build, prefix):
        folder = root / "lib" / "qt-scripted-modules" / "vmambax" / "ops" / "_native"
        assert {"scan.c", "scan_kernel.h", build_native.library_name()} <= {p.name for p in folder.iterdir()}, root


def test_bench_scan_compares_native_and_chunked_in_one_run(lib, tmp_path, capsys):
    from vmambax.cli import main

    out = tmp_path / "scan.json"
    assert main(["bench", "scan", "--length", "40", "--dim", "8", "--state", "16", "--groups", "2",
                 "--repeats", "1", "--backward", "--backends", "native,chunked", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "vs chunked" in text and "native" in text
    import json

    res = json.loads(out.read_text())["results"]
    assert list(res) == ["native", "chunked"]
    assert res["native"]["max_rel_diff"] < 1e-5 and len(res["native"]["fwd_bwd_ms"]) == 1
