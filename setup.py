"""Build hook beside pyproject.toml: compiles the optional ``native`` selective-scan library.

The library (vmambax/ops/_native/scan.c) is plain C with no Python C-API, so it is built as a
shared library by vmambax/ops/build_native.py rather than as a Python extension module. It is
optional: when no C compiler is found or the build fails, one note is printed and the package
installs without it (``vmambax info`` then says why ``native`` is missing and ``auto`` uses
``chunked``). Editable installs (``pip install -e .``) build it next to the sources.
"""

import importlib.util
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.dist import Distribution

HERE = os.path.dirname(os.path.abspath(__file__))


def _build_native_module():
    # Loaded by path: vmambax (and torch) need not be importable while the package builds.
    path = os.path.join(HERE, "vmambax", "ops", "build_native.py")
    spec = importlib.util.spec_from_file_location("_vmambax_build_native", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildNativeScan(build_ext):
    """build_ext that compiles the native scan library; a failure is a note, not an error."""

    def run(self):
        super().run()
        self._outputs = []
        if os.environ.get("VMAMBAX_NO_NATIVE", "").strip() not in ("", "0"):
            print("vmambax: VMAMBAX_NO_NATIVE is set: not building the native scan library")
            return
        in_place = self.inplace or getattr(self, "editable_mode", False)
        # All of it inside the try: loading the helper, finding the sources, compiling. Nothing
        # of this optional library may ever make `pip install` fail.
        try:
            native = _build_native_module()
            out_dir = native.SOURCE_DIR if in_place else os.path.join(self.build_lib, "vmambax", "ops", "_native")
            path = native.build(out_dir)
        except Exception as exc:  # BuildError, OSError, a broken helper: works without the library
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"vmambax: note: the native selective-scan library was not built ({first}); "
                  f"the chunked backend will be used. Rebuild later with "
                  f"`python -m vmambax.ops.build_native`.", file=sys.stderr)
            return
        print(f"vmambax: built the native selective-scan library {path}")
        if not in_place:
            self._outputs.append(str(path))

    def get_outputs(self):
        return super().get_outputs() + list(getattr(self, "_outputs", []))


class BinaryDistribution(Distribution):
    """Always run build_ext (there is no ext_modules entry) and mark wheels platform-specific."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_ext": BuildNativeScan}, distclass=BinaryDistribution)
