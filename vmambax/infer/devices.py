"""Device choice, CPU thread budget, mixed precision and CUDA out-of-memory detection for inference."""

from __future__ import annotations

import contextlib
import os

import torch

from vmambax.errors import ConfigError, VMambaXError
from vmambax.utils import cpu_threads, plural  # noqa: F401 - cpu_threads: part of this module's API

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


class DeviceError(VMambaXError):
    """The requested compute device is unavailable or ran out of memory."""


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N``/``mps`` into a usable ``torch.device``.

    ``auto`` picks CUDA when present, else the CPU. Apple MPS is used only when asked for by name:
    its results have not been verified against the CPU/CUDA ones, so it is never picked silently.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {spec!r} was requested but CUDA is not available (no NVIDIA GPU/driver, or "
                f"this PyTorch {torch.__version__} is a CPU-only build); use --device cpu or auto")
        try:
            device = torch.device(spec)
        except RuntimeError as exc:
            raise ConfigError(f"invalid CUDA device {spec!r}; use cuda or cuda:N") from exc
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"device {spec!r} does not exist: this machine has {count} CUDA "
                              f"device(s), cuda:0..cuda:{count - 1}")
        return device
    if spec == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError("device 'mps' was requested but Apple Metal (MPS) is not available "
                              "here; use --device cpu or auto")
        return torch.device("mps")
    raise ConfigError(f"unknown device {spec!r}; choose one of auto, cpu, cuda, cuda:N, mps")


def available_cpus() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS / Windows
        return max(1, os.cpu_count() or 1)


def default_cpu_threads() -> int:
    """Threads for CPU inference: an explicit OMP_NUM_THREADS wins; else the CPUs not already busy.

    Oversubscribing cores is catastrophic for PyTorch's OpenMP kernels (threads spin-wait for
    each other): on a 2-core machine with other jobs running, the nano model ran 15x slower with
    2 threads than with 1 (docs/benchmarks.md, Inference). So the 1-minute load average, minus
    this process's own share, is subtracted from the usable CPUs; on an idle machine this gives
    all of them (capped at 16, beyond which the per-slice kernels stop scaling).
    """
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    cpus = available_cpus()
    try:
        busy = max(0.0, os.getloadavg()[0] - 1.0)
    except (AttributeError, OSError):  # Windows
        busy = 0.0
    return int(max(1, min(cpus - round(busy), cpus, 16)))




def default_batch_size(device: torch.device, image_size: int = 512) -> int:
    """Slices per forward pass: small on CPU (memory-bound, no gain from big batches), larger on GPUs.

    On CUDA it scales with free memory; the out-of-memory back-off corrects an optimistic guess.
    """
    if device.type == "cuda":
        try:
            free, _total = torch.cuda.mem_get_info(device)
        except RuntimeError:
            return 8
        # ~1.2 GiB per 512x512 slice of the full model in bf16 (activations of both branches,
        # DCIM and the decoder) with head-room; scales with the pixel count.
        per_slice = 1.2 * 2**30 * (image_size / 512) ** 2
        return int(max(1, min(64, free * 0.8 // per_slice)))
    if device.type == "mps":
        return 4
    return 2 if image_size >= 512 else 4


def amp_dtype(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """Autocast dtype: bf16 on CUDA GPUs that support it (fp16 otherwise), none on CPU by default.

    ``amp=None`` means "on for CUDA, off elsewhere"; bf16 keeps fp32's exponent range, so the
    sigmoid/threshold at 0.5 is unaffected in practice (see docs/benchmarks.md for the parity).
    """
    if amp is None:
        amp = device.type == "cuda"
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for ``device`` (a no-op when ``dtype`` is None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/MPS allocator failures (typed or as the older RuntimeError message)."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_cached_memory(device: torch.device) -> None:
    """Give cached allocator blocks back before retrying with a smaller batch."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def describe_device(device: torch.device) -> str:
    """Human-readable device name for reports (GPU model, or CPU thread count)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "cpu":
        return f"cpu ({plural(torch.get_num_threads(), 'thread')})"
    return str(device)
