"""VMambaX Segment logic (slicer-core): same-patient check, refusals and warnings on the output
(issue 10.4, 10.5). Tags are passed as dicts, as a script would; in Slicer they come from the
nodes' DICOM instances."""

from __future__ import annotations

import pytest
import SimpleITK as sitk
import slicer

from vmambax.data.patient import DifferentPatientsError
from vmambax.errors import InputError
from VMambaXCommon.mrml_sitk import add_volume_node_from_image
from VMambaXCommon.testing import add_phantom_case
from VMambaXSegmentLib.logic import VMambaXSegmentLogic

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
SIZE, N_SLICES = 128, 8
CT_TAGS = {"PatientID": "PAT-1", "StudyInstanceUID": "1.2.3", "FrameOfReferenceUID": "1.2.4"}


@pytest.fixture(scope="module")
def scene_case():
    scene = slicer.vtkMRMLScene()
    ct, pet, phantom, _ = add_phantom_case(scene, seed=4, size=SIZE, n_slices=N_SLICES)
    return scene, ct, pet, phantom


@pytest.fixture(scope="module")
def model_file(nano_file):
    """The shared random-init nano model file (128 px), as the path string Slicer code gets."""
    return str(nano_file)


def test_other_patient_is_refused_and_changes_nothing(scene_case):
    scene, ct, pet, _ = scene_case
    before = scene.GetNumberOfNodes()
    with pytest.raises(DifferentPatientsError, match="PAT-1.*PAT-2"):
        VMambaXSegmentLogic().prepare(ct, pet, ctTags=CT_TAGS,
                                      petTags={**CT_TAGS, "PatientID": "PAT-2"})
    assert scene.GetNumberOfNodes() == before
    inputs = VMambaXSegmentLogic().prepare(ct, pet, ctTags=CT_TAGS, petTags=dict(CT_TAGS))
    assert inputs.warnings == []


def test_confirmed_other_patient_runs_and_the_output_carries_the_warnings(scene_case,
                                                                          model_file):
    _, ct, pet, _ = scene_case
    out = VMambaXSegmentLogic().segment(
        ct, pet, model=model_file, device="cpu", ctTags=CT_TAGS,
        petTags={**CT_TAGS, "PatientID": "PAT-2", "StudyInstanceUID": "9.9"},
        allowDifferentPatients=True)
    text = "\n".join(out.warnings)
    assert "PAT-2" in text and "different studies" in text, out.warnings
    assert out.segmentationNode.GetScene() is not None


def _pet_node(scene, pet_image, name):
    return add_volume_node_from_image(scene, sitk.Cast(pet_image, sitk.sitkFloat32), name)


def test_partial_pet_is_a_warning_and_a_sliver_is_refused(scene_case):
    scene, ct, _, phantom = scene_case
    pet = phantom.pet_suv
    n = pet.GetSize()[2]
    half = _pet_node(scene, pet[:, :, : n // 2], "half PET")
    inputs = VMambaXSegmentLogic().prepare(ct, half)
    assert any("covers only" in w for w in inputs.warnings), inputs.warnings
    # A quarter of one of the CT's 8 slices: 3 % of the CT.
    box = phantom.ct[:, : SIZE // 4, N_SLICES // 2: N_SLICES // 2 + 1]
    sliver = sitk.Resample(pet, box, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    with pytest.raises(InputError, match="covers only .*at least 10%"):
        VMambaXSegmentLogic().prepare(ct, _pet_node(scene, sliver, "sliver PET"))


def test_absurd_ct_voxels_are_refused(scene_case):
    scene, _, pet, phantom = scene_case
    coarse = sitk.Image(phantom.ct)
    coarse.SetSpacing((25.0, 25.0, coarse.GetSpacing()[2]))
    node = add_volume_node_from_image(scene, coarse, "coarse CT")
    with pytest.raises(InputError, match="more than 20 mm in-plane"):
        VMambaXSegmentLogic().prepare(node, pet)


class _FakeDicomDatabase:
    """Slicer's DICOM database, as far as the modules use it (instance UID -> file)."""

    def __init__(self, files: dict[str, str]):
        self.files = files

    def fileForInstance(self, uid):  # noqa: N802 - Slicer's name
        return self.files.get(uid, "")


def test_identity_comes_from_the_nodes_dicom_instances(scene_case, tmp_path, monkeypatch):
    """In Slicer the tags are read from the files behind the nodes' DICOM.instanceUIDs."""
    import numpy as np
    import pydicom
    from dicom_helpers import pet_tags, write_series

    from VMambaXCommon.dicom_tags import identity_tags_from_node

    _, ct, pet, _ = scene_case
    write_series(tmp_path / "ct", np.full((1, 4, 4), -1000.0), modality="CT", patient_id="PAT-1")
    top, radio = pet_tags(units="GML")  # already SUV, as the phantom PET node is
    write_series(tmp_path / "pet", np.full((1, 4, 4), 1.0), modality="PT", patient_id="PAT-2",
                 pet_top=top, pet_radio=radio)
    files = {}
    for role, node in (("ct", ct), ("pet", pet)):
        path = str(next((tmp_path / role).glob("*.dcm")))
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        files[uid] = path
        node.SetAttribute("DICOM.instanceUIDs", uid)  # what Slicer's DICOM loader sets
    try:
        assert identity_tags_from_node(ct) is None  # slicer-core: no DICOM database
        monkeypatch.setattr(slicer, "dicomDatabase", _FakeDicomDatabase(files), raising=False)
        assert identity_tags_from_node(ct)["PatientID"] == "PAT-1"
        with pytest.raises(DifferentPatientsError, match="PAT-1.*PAT-2"):
            VMambaXSegmentLogic().prepare(ct, pet)
        assert VMambaXSegmentLogic().prepare(ct, pet, allowDifferentPatients=True).warnings
    finally:
        for node in (ct, pet):
            node.RemoveAttribute("DICOM.instanceUIDs")


def test_one_dicom_database_lookup_serves_identity_suv_tags_rwvm_and_modality(scene_case,
                                                                               monkeypatch):
    """All the modules' DICOM-database look-ups go through VMambaXCommon.dicom_tags."""
    from VMambaXCommon import dicom_tags, pet as pet_module
    from VMambaXSegmentLib import inputs

    _, ct, pet, _ = scene_case
    assert dicom_tags.dicom_database() is None  # slicer-core
    assert dicom_tags.file_for_instance("1.2") is None and dicom_tags.instance_value("1.2", "x") == ""

    class Database(_FakeDicomDatabase):
        def instanceValue(self, uid, tag):  # noqa: N802 - Slicer's name
            return {("1.2.3", "0008,0060"): "PT"}.get((uid, tag), "")

    asked = []
    monkeypatch.setattr(slicer, "dicomDatabase", Database({"1.2.3": ""}), raising=False)
    monkeypatch.setattr(dicom_tags, "file_for_instance",
                        lambda uid: asked.append(uid) or None)
    pet.SetAttribute("DICOM.instanceUIDs", "1.2.3")
    pet.SetAttribute("DICOM.RWV.instanceUID", "9.8.7")
    try:
        assert inputs.dicom_modality(pet) == "PT"
        assert dicom_tags.identity_tags_from_node(pet) is None  # the file is gone
        assert pet_module.pet_tags_from_node(pet) is None
        pet_module.units_from_node(pet)
        assert asked == ["1.2.3", "1.2.3", "9.8.7"]
    finally:
        pet.RemoveAttribute("DICOM.instanceUIDs")
        pet.RemoveAttribute("DICOM.RWV.instanceUID")
