"""The "Lung tumour" segment's terminology, looked up with Slicer's own terminologies logic.

slicer-core has the logic (vtkSlicerTerminologiesModuleLogic) but not Slicer's terminology
files, so gzipped copies of the three needed ones are in Testing/Data/terminologies (from the
Slicer source, with Slicer's license; see the README there). The test loads them into the logic
and looks the segment's category, type and region up by code, as Slicer's terminology
selector and the DICOM SEG export do: string comparison alone would not show that the named
context really holds the code.
"""

import gzip
import shutil
from pathlib import Path

import pytest
import slicer
import vtk

from VMambaXSegmentLib import scene_output

DATA = Path(__file__).resolve().parents[1] / "Data" / "terminologies"
CATEGORY_FILES = ("SegmentationCategoryTypeModifier-DICOM-Master.json",
                  "SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json")
REGION_FILE = "AnatomicRegionAndModifier-DICOM-Master.json"


@pytest.fixture(scope="module")
def terminologies(tmp_path_factory):
    """A terminologies logic loaded with Slicer's category/type and anatomic region files."""
    folder = tmp_path_factory.mktemp("terminologies")
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    for name in CATEGORY_FILES + (REGION_FILE,):
        path = folder / name
        with gzip.open(DATA / f"{name}.gz", "rb") as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        loaded = (logic.LoadRegionContextFromFile(str(path)) if name == REGION_FILE
                  else logic.LoadTerminologyFromFile(str(path)))
        assert loaded, f"Slicer's terminologies logic could not load {name}"
    return logic


def _find_type(logic, context, category_code, type_code):
    """(category, type) found through the logic in ``context``, or None where it has neither."""
    category = slicer.vtkSlicerTerminologyCategory()
    for i in range(logic.GetNumberOfCategoriesInTerminology(context)):
        assert logic.GetNthCategoryInTerminology(context, i, category)
        if category.GetCodeValue() != category_code:
            continue
        found_type = slicer.vtkSlicerTerminologyType()
        for j in range(logic.GetNumberOfTypesInTerminologyCategory(context, category)):
            assert logic.GetNthTypeInTerminologyCategory(context, category, j, found_type)
            if found_type.GetCodeValue() == type_code:
                return category, found_type
    return None


def _find_region(logic, context, region_code):
    region = slicer.vtkSlicerTerminologyType()
    for i in range(logic.GetNumberOfRegionsInRegionContext(context)):
        assert logic.GetNthRegionInRegionContext(context, i, region)
        if region.GetCodeValue() == region_code:
            return region
    return None


def _entry():
    entry = slicer.vtkSlicerTerminologyEntry()
    assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(
        scene_output.TERMINOLOGY_ENTRY, entry)
    return entry


def _loaded_contexts(logic):
    names = vtk.vtkStringArray()
    logic.GetLoadedTerminologyNames(names)
    return {names.GetValue(i) for i in range(names.GetNumberOfValues())}


def test_segment_category_and_type_are_in_the_named_context(terminologies):
    entry = _entry()
    context = entry.GetTerminologyContextName()
    assert context in _loaded_contexts(terminologies), f"{context!r} is not a Slicer context"
    category, type_ = entry.GetCategoryObject(), entry.GetTypeObject()
    found = _find_type(terminologies, context, category.GetCodeValue(), type_.GetCodeValue())
    assert found is not None, (f"{context!r} has no type {type_.GetCodeValue()} under category "
                               f"{category.GetCodeValue()}")
    found_category, found_type = found
    assert found_category.GetCodingSchemeDesignator() == category.GetCodingSchemeDesignator()
    assert found_category.GetCodeMeaning() == category.GetCodeMeaning()
    assert (found_type.GetCodingSchemeDesignator(), found_type.GetCodeMeaning()) == (
        type_.GetCodingSchemeDesignator(), type_.GetCodeMeaning())


def test_general_anatomy_list_has_no_neoplasm(terminologies):
    """Why the context changed: the old one cannot resolve the segment's type."""
    context = "Segmentation category and type - 3D Slicer General Anatomy list"
    assert context in _loaded_contexts(terminologies)
    assert _find_type(terminologies, context, "49755003", "108369006") is None


def test_segment_region_is_in_the_named_region_context(terminologies):
    entry = _entry()
    region = entry.GetRegionObject()
    found = _find_region(terminologies, entry.GetRegionContextName(), region.GetCodeValue())
    assert found is not None
    assert found.GetCodeMeaning() == region.GetCodeMeaning() == "Lung"
