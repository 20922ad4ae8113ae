"""MRML-side helpers of the VMambaX Segment module (no Qt: importable under slicer-core).

``logic``: the segmentation logic; ``mrml_sitk``: volume node <-> SimpleITK conversion (also used
by VMambaX Train); ``pet``: PET to SUV; ``scene_output``: segment, terminology, lesion table,
subject hierarchy; ``task``: the background worker; ``install``: first-use dependency setup;
``testing``: synthetic PET/CT scenes for the self-tests and the slicer-core tests.
"""
