"""Slicer glue shared by the VMambaX Segment and VMambaX Train modules (no Qt: importable under
slicer-core, so the tests exercise it against real MRML nodes).

Neither module imports the other's Lib; what both need lives here:
``mrml_sitk`` (volume/segment node <-> SimpleITK), ``pet`` (a PET node to SUV), ``devices`` (the
device choices offered in both panels), ``install`` (first-use dependency setup), ``dialogs``
(the one error dialog; imports slicer's Qt lazily), ``testing`` (synthetic PET/CT scenes for
the self-tests and the slicer-core tests) and ``sample_data`` (the Sample Data module's
generated PET/CT phantom). Installed next to the modules (qt-scripted-modules)
by the top-level CMakeLists.txt.
"""
