"""PET units in the Slicer modules: the node decides first, then its RWVM, then the files' tags.

PETDICOMExtension's RWVM plugin loads PET already in SUVbw, says so in the node's voxel-value
units and quantity, and leaves ``DICOM.instanceUIDs`` pointing at the Bq/mL files: those files'
tags must not convert the SUVs again (SUVmax 16.4 -> 0.008). Real vtkMRMLScalarVolumeNode and
vtkCodedEntry objects (slicer-core); the RWVM object is a real DICOM file written with pydicom.
"""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicer
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from vmambax.data.suv import check_suv_plausible
from vmambax.errors import InputError
from VMambaXCommon.pet import pet_node_to_suv
from VMambaXCommon.mrml_sitk import add_volume_node_from_image
from VMambaXCommon.testing import phantom_pet_tags as _bqml_tags
from VMambaXSegmentLib.logic import SegmentOutput, VMambaXSegmentLogic

SUVBW_UNITS = ("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight")
SUV_QUANTITY = ("126400", "DCM", "Standardized Uptake Value")


def _coded(value, scheme, meaning):
    entry = slicer.vtkCodedEntry()
    entry.SetValueSchemeMeaning(value, scheme, meaning)
    return entry




@pytest.fixture(scope="module")
def phantom():
    from vmambax.phantom import make_phantom

    return make_phantom(seed=4, size=64, n_slices=8)


def _add_case(phantom, pet_units="suv"):
    """A new scene with the phantom's CT and its PET in SUV or Bq/mL (fresh nodes)."""
    scene = slicer.vtkMRMLScene()
    ct = add_volume_node_from_image(scene, phantom.ct, "CT")
    pet = add_volume_node_from_image(
        scene, phantom.pet_suv if pet_units == "suv" else phantom.pet_bqml, "PET")
    return scene, ct, pet


@pytest.fixture()
def scene_case(phantom):
    return (*_add_case(phantom), phantom)


def _as_petdicom_rwvm_load(pet_node, units=SUVBW_UNITS, quantity=SUV_QUANTITY):
    """What PETDICOMExtension's RWVM plugin leaves on the node it loads."""
    if quantity:
        pet_node.SetVoxelValueQuantity(_coded(*quantity))
    if units:
        pet_node.SetVoxelValueUnits(_coded(*units))
    pet_node.SetAttribute("DICOM.instanceUIDs", " ".join(generate_uid() for _ in range(3)))
    pet_node.SetAttribute("DICOM.RWV.instanceUID", generate_uid())


def _write_rwvm(path, units):
    """A Real World Value Mapping object whose first mapping is in ``units``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.67"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "RWV"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = units
    mapping = Dataset()
    mapping.MeasurementUnitsCodeSequence = [code]
    mapping.RealWorldValueSlope = 0.00123
    mapping.RealWorldValueIntercept = 0.0
    reference = Dataset()
    reference.RealWorldValueMappingSequence = [mapping]
    ds.ReferencedImageRealWorldValueMappingSequence = [reference]
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    return path


def _max(image):
    return float(sitk.GetArrayViewFromImage(image).max())


# -- the lower bound ------------------------------------------------------------------------------
def test_suv_converted_twice_is_refused_with_the_fix():
    rng = np.random.default_rng(0)
    suv = rng.gamma(2.0, 0.4, (12, 64, 64)).astype(np.float32)  # body background ~0.8
    suv[5:7, 30:34, 30:34] = 16.4  # a tumour
    check_suv_plausible(suv)  # real SUVs pass
    twice = suv * np.float32(70_000.0 / 350e6)  # x weight/dose again: SUVmax 16.4 -> 0.003
    with pytest.raises(InputError, match=r"converted to SUV twice.*--pet-units suv"):
        check_suv_plausible(twice)
    with pytest.raises(InputError, match="converted to SUV twice.*pick SUV"):
        check_suv_plausible(twice, low_hint="pick SUV")
    check_suv_plausible(np.zeros((4, 8, 8), np.float32))  # empty: not a double conversion


# -- the node decides first ------------------------------------------------------------------------
def test_petdicom_suv_node_is_not_converted_again(scene_case):
    _scene, _ct, pet, phantom = scene_case
    _as_petdicom_rwvm_load(pet)
    looked_up = []

    def tag_lookup(node):  # the Bq/mL files' tags, which must not be used
        looked_up.append(node)
        return _bqml_tags(phantom)

    out = pet_node_to_suv(pet, "auto", tag_lookup=tag_lookup)
    assert _max(out.image) == pytest.approx(_max(phantom.pet_suv), rel=1e-6)
    assert out.rule == "node voxel-value units {SUVbw}g/ml"
    assert "already in SUVbw" in out.conversion and not looked_up
    # Even with the files' tags handed in (what the widget did), the node wins.
    out = pet_node_to_suv(pet, "auto", _bqml_tags(phantom))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out.image),
                                  sitk.GetArrayFromImage(phantom.pet_suv).astype(np.float32))


def test_logic_keeps_the_suv_and_records_the_rule(scene_case):
    """The issue's case end to end through prepare(): before, SUVmax became ~0.008."""
    _scene, ct, pet, phantom = scene_case
    _as_petdicom_rwvm_load(pet)
    inputs = VMambaXSegmentLogic().prepare(ct, pet, petTags=_bqml_tags(phantom))
    assert _max(inputs.pet_suv) == pytest.approx(_max(phantom.pet_suv), rel=1e-6)
    assert inputs.pet_units_rule == "node voxel-value units {SUVbw}g/ml"


def test_quantity_alone_and_rwvm_decide_before_the_tags(scene_case, tmp_path):
    _scene, _ct, pet, phantom = scene_case
    _as_petdicom_rwvm_load(pet, units=None)  # quantity only
    out = pet_node_to_suv(pet, "auto", _bqml_tags(phantom))
    assert out.rule.startswith("node voxel-value quantity 126400")
    assert _max(out.image) == pytest.approx(_max(phantom.pet_suv), rel=1e-6)

    fresh = _scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "RWVM PET")
    fresh.SetAndObserveImageData(pet.GetImageData())
    _as_petdicom_rwvm_load(fresh, units=None, quantity=None)
    uid = fresh.GetAttribute("DICOM.RWV.instanceUID")
    rwvm = _write_rwvm(tmp_path / "rwvm.dcm", SUVBW_UNITS)
    asked = []
    out = pet_node_to_suv(fresh, "auto", _bqml_tags(phantom),
                          rwvm_file=lambda u: asked.append(u) or str(rwvm))
    assert asked == [uid] and out.rule == f"RWVM {uid} units {{SUVbw}}g/ml"
    assert _max(out.image) == pytest.approx(_max(phantom.pet_suv), rel=1e-6)
    # Without the RWVM file (not in the database) the files' tags decide, and the double
    # conversion is then refused by the lower bound, naming the fix.
    with pytest.raises(InputError, match="converted to SUV twice.*SUV \\(already converted\\)"):
        pet_node_to_suv(fresh, "auto", _bqml_tags(phantom), rwvm_file=lambda u: None)


def test_bqml_node_uses_the_tags_and_other_suv_kinds_are_refused(phantom):
    _scene, _ct, pet = _add_case(phantom, "bqml")
    pet.SetVoxelValueUnits(_coded("Bq/ml", "UCUM", "Becquerels/milliliter"))
    out = pet_node_to_suv(pet, "auto", _bqml_tags(phantom))
    assert out.rule == ("node voxel-value units Bq/ml; factor from the DICOM Units tag BQML of "
                        "the PET files")
    np.testing.assert_allclose(sitk.GetArrayFromImage(out.image),
                               sitk.GetArrayFromImage(phantom.pet_suv), rtol=1e-4, atol=1e-4)
    pet.SetVoxelValueUnits(_coded("{SUVlbm}g/ml", "UCUM", "Standardized Uptake Value lean body mass"))
    with pytest.raises(InputError, match="SUVlbm.*load the SUVbw series"):
        pet_node_to_suv(pet, "auto", _bqml_tags(phantom))


def test_plain_nodes_keep_the_old_rules(scene_case):
    _scene, _ct, pet, phantom = scene_case
    out = pet_node_to_suv(pet, "auto")  # no units, no DICOM: the values decide
    assert out.rule.startswith("value range")
    out = pet_node_to_suv(pet, "suv")
    assert out.rule == "PET units chosen: SUV"


def test_rule_reaches_the_attributes_and_the_status_line(scene_case):
    _scene, ct, pet, phantom = scene_case
    _as_petdicom_rwvm_load(pet)

    class AllTumourSegmenter:  # the network's place, so no model is needed here
        def __init__(self, **kwargs):
            pass

        def segment(self, ct_image, pet_image):
            label = sitk.Image(ct_image.GetSize(), sitk.sitkUInt8)
            label.CopyInformation(ct_image)
            label[30:34, 30:34, 3:5] = 1
            return SimpleNamespace(label=label, lesions=[], totals={}, model={},
                                   model_name="fixed", device="cpu", timings={"total": 0.0})

    out = VMambaXSegmentLogic(segmenterClass=AllTumourSegmenter).segment(
        ct, pet, model="fixed", petTags=_bqml_tags(phantom))
    seg = out.segmentationNode
    assert seg.GetAttribute("VMambaX.PETUnitsRule") == "node voxel-value units {SUVbw}g/ml"
    assert isinstance(out, SegmentOutput)
    assert "[units: node voxel-value units {SUVbw}g/ml]" in out.statusText()


# -- swapped inputs ---------------------------------------------------------------------------------
def test_swap_is_reported_before_weight_and_dose_are_asked(phantom):
    scene, ct, pet = _add_case(phantom, "bqml")
    logic = VMambaXSegmentLogic()
    with pytest.raises(InputError, match="weight and the injected dose"):
        logic.prepare(ct, pet)  # the right way round: the Bq/mL PET needs weight and dose
    before = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="swapped"):
        logic.prepare(pet, ct)  # swapped: say so, not "enter the weight and dose"
    assert scene.GetNumberOfNodes() == before


def test_panel_note_names_the_swap_before_asking_for_weight_and_dose(phantom):
    from VMambaXSegmentLib.inputs import pet_info_text

    _scene, ct, pet = _add_case(phantom, "bqml")
    assert "enter the patient weight" in pet_info_text(ct, pet)  # right way round, no DICOM
    swapped = pet_info_text(pet, ct)
    assert "swapped" in swapped and "weight" not in swapped
    _as_petdicom_rwvm_load(pet)
    assert pet_info_text(ct, pet) == ("PET already in SUV (node voxel-value units {SUVbw}g/ml): "
                                      "used as it is.")


REAL_PET = Path(__file__).resolve().parents[2].parent / "shared" / "realdata" / "sts_001"


def test_real_pet_loaded_as_suv_is_kept_and_twice_converted_is_refused():
    """STS_001 (TCIA, GE Discovery ST): the Bq/mL series and its tags as Slicer's database would
    give them, and the same voxels in SUVbw on a node marked as PETDICOMExtension marks it."""
    folder = REAL_PET / "pet_raw_bqml" / "image"
    if not folder.is_dir():
        pytest.skip(f"real data not found: {folder} (../shared/realdata is not in this checkout)")
    from vmambax.data.dicom import read_tags, series_tags
    from vmambax.data.io import read_image_source

    bqml, series = read_image_source(str(folder), modality="PT")
    tags = series_tags(read_tags([str(f) for f in series.files]))
    suv = sitk.Cast(bqml, sitk.sitkFloat32) * 2.429029766e-4  # the README's SUVbw factor
    scene = slicer.vtkMRMLScene()
    node = add_volume_node_from_image(scene, suv, "STS_001 PET SUVbw")
    _as_petdicom_rwvm_load(node)
    out = pet_node_to_suv(node, "auto", tags)
    assert out.rule == "node voxel-value units {SUVbw}g/ml"
    assert _max(out.image) == pytest.approx(_max(suv), rel=1e-6)  # SUVmax ~66.5, not ~0.016
    # The old path: the files' BQML tags applied to the SUV voxels; the lower bound refuses it.
    node.SetVoxelValueUnits(None)
    node.SetVoxelValueQuantity(None)
    node.RemoveAttribute("DICOM.RWV.instanceUID")
    with pytest.raises(InputError, match="converted to SUV twice"):
        pet_node_to_suv(node, "auto", tags)
