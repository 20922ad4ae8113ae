"""VMambaX core: the vMambaX PET/CT tumour segmentation network and everything around it.

Qt-free, so that the Slicer modules, the ``vmambax`` command line and the tests share one engine.
"""

__version__ = "0.1.0"

from vmambax.errors import VMambaXError  # noqa: E402,F401
