"""The "VMambaX PET/CT phantom" entry of Slicer's Sample Data module, generated locally.

Slicer's SampleData downloads files; a source may instead carry a ``customDownloader``, a Python
callable that the module's button calls with the source (SampleData.py: the category buttons
call ``source.customDownloader(source)`` when it is set). VMambaX uses that: pressing the button
builds a synthetic thorax PET/CT (``vmambax.phantom``, deterministic by seed, a few seconds
on a CPU) and adds the CT (HU) and the PET (body-weight SUV) to the scene, so a new user can
press Segment Tumor at once. Nothing is downloaded or written to disk.

``SampleData.downloadSample(name)`` does not call custom downloaders (it always goes through
``downloadFromSource``, which fetches ``uris``), so from Python use ``add_phantom_sample``.

Qt-free (``add_phantom_sample`` runs under slicer-core in the tests); the module registers the
source after Slicer's start-up (``VMambaXSegment.registerSampleData``).
"""

from __future__ import annotations

CATEGORY = "VMambaX"
# SampleData shows the sample name under the button (its sampleDescription defaults to it), so
# it is words; files and the thumbnail keep an identifier without spaces.
SAMPLE_NAME = "VMambaX PET/CT phantom"
SAMPLE_ID = "VMambaXPETCTPhantom"
CT_NAME = "VMambaX phantom CT"
PET_NAME = "VMambaX phantom PET"
# One realistic CT matrix; 48 slices over the phantom's ~250 mm (about 5 mm thick, as in many
# low-dose PET/CT CTs) keep the first segmentation on a laptop CPU well under a minute or two.
SEED, SIZE, N_SLICES = 3, 512, 48

# How PETDICOMExtension labels a PET in SUV (UCUM units, DCM quantity): readers of the node can
# tell SUV from Bq/mL without guessing from the values.
SUV_UNITS = ("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight")
SUV_QUANTITY = ("126400", "DCM", "Standardized Uptake Value")


def _coded_entry(value, scheme, meaning):
    import slicer

    entry = slicer.vtkCodedEntry()
    entry.SetValueSchemeMeaning(value, scheme, meaning)
    return entry


def add_phantom_sample(scene, seed: int = SEED, size: int = SIZE, n_slices: int | None = N_SLICES):
    """Add the phantom's CT (HU) and PET (SUVbw) to ``scene``; return ``(ct_node, pet_node)``.

    Both are placed in one patient / study of the subject hierarchy with their modality
    (CT / PT) as series attribute, as Slicer's DICOM import does, and get display settings for
    reading PET/CT (a soft-tissue CT window; the PET on a PET colour map from 0 to 8 SUV).
    """
    import slicer

    from vmambax.phantom import make_phantom
    from VMambaXCommon.display import pet_heat_color_node
    from VMambaXCommon.mrml_sitk import add_volume_node_from_image

    phantom = make_phantom(seed=seed, size=size, n_slices=n_slices)
    ct = add_volume_node_from_image(scene, phantom.ct, CT_NAME)
    pet = add_volume_node_from_image(scene, phantom.pet_suv, PET_NAME)
    pet.SetVoxelValueUnits(_coded_entry(*SUV_UNITS))
    pet.SetVoxelValueQuantity(_coded_entry(*SUV_QUANTITY))

    ct_display = ct.GetDisplayNode()
    ct_display.AutoWindowLevelOff()
    ct_display.SetWindowLevel(400.0, 40.0)
    pet_display = pet.GetDisplayNode()
    pet_display.AutoWindowLevelOff()
    pet_display.SetWindowLevelMinMax(0.0, 8.0)
    # Slicer's PET-Heat node (made when a bare slicer-core scene lacks it), as after a run.
    pet_display.SetAndObserveColorNodeID(pet_heat_color_node(scene).GetID())

    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), f"VMambaX phantom {seed} (synthetic)")
    study = sh.CreateStudyItem(patient, "PET/CT (synthetic, not a patient)")
    modality = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMSeriesModalityAttributeName()
    for node, code in ((ct, "CT"), (pet, "PT")):
        item = sh.GetItemByDataNode(node) or sh.CreateItem(sh.GetSceneItemID(), node)
        sh.SetItemParent(item, study)
        sh.SetItemAttribute(item, modality, code)
    return ct, pet


def sample_source_arguments(custom_downloader, thumbnail: str | None = None) -> dict:
    """Keyword arguments for ``SampleData.SampleDataLogic.registerCustomSampleDataSource``.

    ``uris`` / ``fileNames`` are required by SampleDataSource (their lengths must agree) but are
    never fetched: the button calls ``custom_downloader`` instead. The ``vmambax-phantom:``
    scheme makes any attempt to download them fail at once instead of reaching a network.
    """
    return dict(
        category=CATEGORY,
        sampleName=SAMPLE_NAME,
        uris=["vmambax-phantom:ct", "vmambax-phantom:pet"],
        fileNames=[f"{SAMPLE_ID}-CT.nrrd", f"{SAMPLE_ID}-PET.nrrd"],
        nodeNames=[CT_NAME, PET_NAME],
        thumbnailFileName=thumbnail,
        customDownloader=custom_downloader,
    )
