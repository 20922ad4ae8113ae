"""MRML-side helpers of the VMambaX Segment module (no Qt: importable under slicer-core).

``logic``: the segmentation logic; ``scene_output``: segment, terminology, lesion table, subject
hierarchy; ``task``: the background worker. Glue shared with VMambaX Train (node <-> SimpleITK,
PET to SUV, devices, dependency setup, dialogs, test scenes) is in the ``VMambaXCommon`` package.
"""
