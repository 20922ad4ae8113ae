"""``vmambax bench scan``: time and peak memory of the selective-scan backends.

Each backend runs in its own fresh Python process (``python -m vmambax.bench.scan --worker``) on
the same inputs, so one backend's allocations cannot hide another's peak. Inputs follow the
model's initialisation (spec §2): A = -exp(log(1..n)) per channel, D = 1, delta_bias =
softplus^-1(dt) with dt log-uniform in [1e-3, 0.1], u, delta, B, C standard normal.

Reported per backend: forward time (best and median of ``--repeats`` warm calls), optionally
forward+backward time, and peak memory of the first (cold) call above what the process held
before it:
* CPU: peak resident set size (RSS) growth, sampled every millisecond from /proc/self/statm
  (Linux) and from getrusage's max RSS; it counts everything the call touches, not just tensors.
* CUDA: ``torch.cuda.max_memory_allocated`` growth (tensors only).
Also the largest relative difference max|y - y_ref| / max|y_ref| from the reference backend
(the sequential oracle when it runs, else the first listed), the speed-up over the oracle and,
when ``chunked`` runs too, the speed-up over ``chunked`` (forward, and forward+backward).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

DTYPES = ("float32", "float64", "bfloat16", "float16")


def register(subparsers) -> None:
    """Add ``scan`` to the ``vmambax bench`` sub-commands."""
    p = subparsers.add_parser("scan", help="selective-scan backends: time, peak memory, speed-up",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("--batch", type=int, default=1, help="b (default 1)")
    p.add_argument("--dim", type=int, default=768,
                   help="channels d = 4 directions x d_inner (default 768: vMambaX stage 1)")
    p.add_argument("--state", type=int, default=16, help="state size n (default 16)")
    p.add_argument("--length", type=int, default=16384, help="sequence length l (default 16384 = 128x128)")
    p.add_argument("--groups", type=int, default=4, help="B/C groups g, one per scan direction (default 4)")
    p.add_argument("--backends", default=None,
                   help="comma-separated, compared in one run: native, chunked, mamba_ssm, sequential "
                        "(default: all that run on the device, e.g. native,chunked,sequential on CPU)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="input dtype (default float32)")
    p.add_argument("--repeats", "--repeat", type=int, default=3, help="timed calls per backend (default 3)")
    p.add_argument("--backward", action="store_true", help="also time forward+backward")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    p.add_argument("--segment", type=int, help="chunked: steps per segment (default: per device)")
    p.add_argument("--chunk", type=int, help="chunked: steps per chunk inside a segment (default: per device)")
    p.add_argument("--profile", action="store_true",
                   help="also print each backend's top operators (torch.profiler, one forward call)")
    p.add_argument("--json", dest="json_path", help="also write the results to this JSON file")
    p.set_defaults(func=run)


def _check_args(args) -> list[str]:
    from vmambax.errors import ConfigError

    for name in ("batch", "dim", "state", "length", "groups", "repeats"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(args, name)}.")
    for name in ("threads", "segment", "chunk"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.dim % args.groups:
        raise ConfigError(f"--groups {args.groups} must divide --dim {args.dim}.")
    if args.backends is None:  # run() fills in what the device has
        return None
    names = [b.strip().lower().replace("-", "_") for b in args.backends.split(",") if b.strip()]
    known = ("native", "chunked", "mamba_ssm", "sequential")
    bad = [b for b in names if b not in known]
    if bad or not names:
        raise ConfigError(f"--backends: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(known)}.")
    return list(dict.fromkeys(names))


def run(args) -> int:
    import torch

    from vmambax.errors import ConfigError
    from vmambax.infer.devices import resolve_device
    from vmambax.ops import available_backends

    names = _check_args(args)
    device = resolve_device(args.device)
    if names is None:  # the default: every backend that runs here, the oracle last
        names = available_backends(device)
    missing = [b for b in names if b not in available_backends(device)]
    if missing:
        raise ConfigError(f"backend(s) {', '.join(missing)} not available on {device}; "
                          f"available: {', '.join(available_backends(device))}.")
    if device.type == "cpu" and args.dtype in ("float16",):
        raise ConfigError("--dtype float16 is for CUDA; on CPU use float32, float64 or bfloat16.")

    spec = {k: getattr(args, k) for k in ("batch", "dim", "state", "length", "groups", "dtype",
                                          "repeats", "backward", "threads", "segment", "chunk",
                                          "profile")}
    spec["device"] = str(device)
    load_before = _loadavg()
    results = {}
    with tempfile.TemporaryDirectory(prefix="vmambax-bench-scan-") as tmp:
        outputs = {name: os.path.join(tmp, f"{name}.pt") for name in names}
        for name in names:
            print(f"running {name} ...", flush=True)
            results[name] = _run_worker(dict(spec, backend=name, out=outputs[name]))
        ref = "sequential" if "sequential" in results else names[0]
        y_ref = torch.load(outputs[ref], weights_only=True).double()
        for name, res in results.items():
            y = torch.load(outputs[name], weights_only=True).double()
            res["max_rel_diff"] = float((y - y_ref).abs().max() / y_ref.abs().max().clamp_min(1e-30))
    report = {
        "command": "vmambax bench scan " + " ".join(sys.argv[3:]) if sys.argv[1:3] == ["bench", "scan"] else None,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": _machine(device),
        "torch": torch.__version__,
        "threads": next(iter(results.values()))["threads"],
        "load_average_before_after": [load_before, _loadavg()],
        "sizes": {k: spec[k] for k in ("batch", "dim", "state", "length", "groups", "dtype")},
        "reference": ref,
        "results": results,
    }
    _print_table(report)
    for name, res in results.items():
        if "profile" in res:
            print(f"\n{name}: one forward call under torch.profiler\n{res['profile']}")
    if args.json_path:
        from vmambax import bench

        bench.emit_json(report, args.json_path)
    return 0


def _run_worker(spec: dict) -> dict:
    from vmambax.errors import VMambaXError

    cmd = [sys.executable, "-m", "vmambax.bench.scan", "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise VMambaXError(f"the {spec['backend']} benchmark process failed (exit {proc.returncode}):\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # Windows
        return None


def _machine(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs"


def _print_table(report) -> None:
    res, ref = report["results"], report["reference"]
    s = report["sizes"]
    print(f"\nselective scan  b={s['batch']} d={s['dim']} n={s['state']} l={s['length']} g={s['groups']} "
          f"{s['dtype']}  |  {report['machine']}, torch {report['torch']}, {report['threads']} threads, "
          f"load {report['load_average_before_after'][0]} -> {report['load_average_before_after'][1]}")
    has_bwd = any("fwd_bwd_ms" in r for r in res.values())
    head = f"{'backend':<12}{'forward ms (best/median)':>26}"
    if has_bwd:
        head += f"{'fwd+bwd ms (best/median)':>26}"
    vs_width = 16 if has_bwd else 12
    head += f"{'peak MB':>10}{'speed-up':>10}{'vs chunked':>{vs_width}}{'max rel diff':>14}"
    print(head)
    base = res.get("sequential", {}).get("forward_ms")
    chunked = res.get("chunked", {})
    for name, r in res.items():
        fw = r["forward_ms"]
        line = f"{name:<12}{f'{min(fw):.1f} / {statistics.median(fw):.1f}':>26}"
        if has_bwd:
            fb = r.get("fwd_bwd_ms")
            line += f"{f'{min(fb):.1f} / {statistics.median(fb):.1f}' if fb else '-':>26}"
        peak = r.get("peak_fwd_mb")
        line += f"{'n/a' if peak is None else f'{peak:.0f}':>10}"
        line += f"{f'{min(base) / min(fw):.1f}x' if base else '-':>10}"
        vs = "-"
        if chunked:
            vs = f"{min(chunked['forward_ms']) / min(fw):.2f}x"
            if has_bwd and r.get("fwd_bwd_ms") and chunked.get("fwd_bwd_ms"):
                vs += f" / {min(chunked['fwd_bwd_ms']) / min(r['fwd_bwd_ms']):.2f}x"
        line += f"{vs:>{vs_width}}"
        line += f"{r['max_rel_diff']:>14.1e}"
        print(line)
    if has_bwd:
        print("peak MB of forward+backward: " + ", ".join(
            f"{n} {r['peak_fwd_bwd_mb']:.0f}" for n, r in res.items() if r.get("peak_fwd_bwd_mb") is not None))
    print(f"speed-up = best sequential-oracle forward / best forward; vs chunked = best chunked / best "
          f"(forward{' / forward+backward' if has_bwd else ''}); max rel diff vs {ref}")


# ----------------------------------------------------------------------------- worker process

class _PeakMemory:
    """Peak memory growth during a block: CUDA allocator peak, or sampled RSS on CPU."""

    def __init__(self, device):
        self.device, self.peak_mb = device, None

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = _rss_bytes()
        self._maxrss0 = _max_rss_bytes()
        self._peak = self._base or 0
        self._stop = threading.Event()
        if self._base is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.001):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
            return False
        if self._base is None:  # no /proc: fall back on getrusage's lifetime max, when it grew
            maxrss = _max_rss_bytes()
            self.peak_mb = None if maxrss is None or self._maxrss0 is None else (maxrss - self._maxrss0) / 2**20
            return False
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes())
        maxrss = _max_rss_bytes()
        if maxrss is not None and self._maxrss0 is not None and maxrss > self._maxrss0:
            self._peak = max(self._peak, maxrss)  # a new lifetime peak inside the block
        self.peak_mb = (self._peak - self._base) / 2**20
        return False


def _rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _max_rss_bytes():
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def _inputs(spec, torch):
    """Inputs as the model initialises them (spec §2), generated on CPU for identical values."""
    gen = torch.Generator().manual_seed(0)
    b, d, n, length, g = (spec[k] for k in ("batch", "dim", "state", "length", "groups"))
    dt_init = torch.exp(torch.rand(d, generator=gen) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3)))
                        + torch.log(torch.tensor(1e-3))).clamp_min(1e-4)
    tensors = {
        "u": torch.randn(b, d, length, generator=gen),
        "delta": torch.randn(b, d, length, generator=gen),
        "A": -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1),  # -exp(A_log), A_log = log(1..n)
        "B": torch.randn(b, g, n, length, generator=gen),
        "C": torch.randn(b, g, n, length, generator=gen),
        "D": torch.ones(d),
        "delta_bias": dt_init + torch.log(-torch.expm1(-dt_init)),  # softplus^-1(dt)
    }
    dtype = getattr(torch, spec["dtype"])
    device = torch.device(spec["device"])
    # Activations in the benchmark dtype; parameters stay fp32 as in the model.
    return {k: v.to(device, dtype if k in ("u", "delta", "B", "C") else torch.float32) for k, v in tensors.items()}


def _worker(spec: dict) -> dict:
    import torch

    from vmambax.ops import selective_scan
    from vmambax.ops.chunked import chunked_selective_scan

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    x = _inputs(spec, torch)
    if spec["backend"] == "chunked" and (spec["segment"] or spec["chunk"]):
        def scan(**kw):
            return chunked_selective_scan(**kw, delta_softplus=True, segment=spec["segment"], chunk=spec["chunk"])
    else:
        def scan(**kw):
            return selective_scan(**kw, delta_softplus=True, backend=spec["backend"])

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(fn):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return (time.perf_counter() - start) * 1000

    result = {"backend": spec["backend"], "threads": torch.get_num_threads()}
    with torch.no_grad(), _PeakMemory(device) as mem:
        y = scan(**x)
    result["peak_fwd_mb"] = mem.peak_mb
    torch.save(y.cpu(), spec["out"])
    del y
    with torch.no_grad():
        result["forward_ms"] = [timed(lambda: scan(**x)) for _ in range(spec["repeats"])]

    if spec["backward"]:
        leaves = {k: v.detach().requires_grad_() for k, v in x.items()}
        grad = torch.ones(spec["batch"], spec["dim"], spec["length"], device=device, dtype=x["u"].dtype)

        def fwd_bwd():
            for leaf in leaves.values():
                leaf.grad = None
            scan(**leaves).backward(grad)

        with _PeakMemory(device) as mem:
            fwd_bwd()
        result["peak_fwd_bwd_mb"] = mem.peak_mb
        result["fwd_bwd_ms"] = [timed(fwd_bwd) for _ in range(spec["repeats"])]

    if spec.get("profile"):
        from torch.profiler import ProfilerActivity, profile

        cuda = device.type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with torch.no_grad(), profile(activities=activities) as prof:
            scan(**x)
            sync()
        result["profile"] = prof.key_averages().table(
            sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=12)
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(json.loads(sys.argv[2]))))
    else:
        sys.exit("internal worker of `vmambax bench scan`; run that command instead")
