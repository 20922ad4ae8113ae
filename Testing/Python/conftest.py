"""Shared pytest set-up: keep torch small on 2-core CI machines and make runs reproducible."""

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see vmambax.utils.prefer_passive_wait

# The Slicer-side packages (the shared glue and each module's Lib), importable as in Slicer's
# qt-scripted-modules folder, where they are installed side by side.
_ROOT = Path(__file__).resolve().parents[2]
for _folder in (_ROOT, _ROOT / "VMambaXSegment", _ROOT / "VMambaXTrain"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_cpu_thread():
    """One intra-op thread for a module (also for subprocesses such as the trainer, which inherit
    it): on a shared 2-core CI machine two OpenMP threads per process are often 10-20x slower."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="session")
def nano_file(tmp_path_factory):
    """A random-init vmambax-nano model file at 128 px, shared by the command-line tests (the
    shipped demo model is not needed to test plumbing; its numbers are tested on its own)."""
    from vmambax.data.preprocess import preprocessing_info
    from vmambax.model import build_model
    from vmambax.model.checkpoint import save_model_file

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "nano.pt"
    save_model_file(path, build_model("vmambax-nano"), config_name="vmambax-nano",
                    preprocessing=preprocessing_info(128), metadata={"note": "random init"})
    return path


@pytest.fixture()
def mount_tmpfs(tmp_path):
    """``mount_tmpfs(size="2m") -> folder``: a real small tmpfs for full-disk tests, unmounted
    afterwards; skips cleanly where mounting is not permitted (no root, no mount, a container
    without the capability): the injected-fault tests cover the same code paths."""
    import shutil
    import subprocess

    mounted = []

    def mount(size: str):
        mnt = tmp_path / f"tmpfs-{len(mounted)}"
        mnt.mkdir()
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("a real full-disk test needs root to mount a small tmpfs")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the injected-fault "
                        "tests cover it")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
