"""Pre-selection of the CT and the PET among the scene's volumes (real MRML nodes, slicer-core).

The DICOM modality decides first (through an injected tag lookup here, Slicer's DICOM database
in Slicer); names only as a fallback, on whole words.
"""

import slicer
from pydicom.uid import generate_uid

from VMambaXSegmentLib.inputs import guess_pet_ct, name_words, role_of


def _volume(scene, name, modality=None, label=False):
    node = scene.AddNewNodeByClass(
        "vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode", name)
    if modality:
        uids = [generate_uid() for _ in range(2)]
        node.SetAttribute("DICOM.instanceUIDs", " ".join(uids))
        _DATABASE.update({(uid, "0008,0060"): modality for uid in uids})
    return node


_DATABASE = {}  # (instance UID, tag) -> value, as Slicer's DICOM database answers


def _instance_value(uid, tag):
    return _DATABASE.get((uid, tag), "")


def _nodes(scene):
    collection = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def test_modality_beats_names():
    """A PET series called "CTAC ..." (attenuation-corrected with the CT), loaded before the CT:
    by name it would be taken as the CT (the old substring match) or missed; by modality it is
    the PET."""
    scene = slicer.vtkMRMLScene()
    pet = _volume(scene, "CT AC WB 3D", modality="PT")  # the word "CT" in a PET's name
    ct = _volume(scene, "Chest 1.0 B31f", modality="CT")
    assert guess_pet_ct(_nodes(scene), _instance_value) == (ct, pet)
    assert role_of(pet, _instance_value) == ("PET", "DICOM modality PT")


def test_names_match_whole_words_only():
    scene = slicer.vtkMRMLScene()
    _volume(scene, "PET CTAC")  # a PET: "CTAC" is not the word "CT"
    _volume(scene, "corrected")  # nothing: "corrected" holds "ct" but is not the word
    ct = _volume(scene, "WB_CT_2mm")
    assert guess_pet_ct(_nodes(scene))[0] is ct
    assert role_of(_nodes(scene)[0]) == ("PET", "name")
    assert role_of(_nodes(scene)[1]) == ("", "")
    scene2 = slicer.vtkMRMLScene()
    ctac = _volume(scene2, "CTAC 3.0")
    _volume(scene2, "attenuation corrected")
    assert guess_pet_ct(_nodes(scene2)) == (None, None)
    assert role_of(ctac) == ("", "")


def test_name_words():
    assert name_words("PET CTAC") == ["pet", "ctac"]
    assert name_words("ctChest_2mm") == ["ct", "chest", "2", "mm"]
    assert name_words("SUVbw") == ["suvbw"]
    assert "ct" not in name_words("corrected")


def test_dicom_volumes_first_then_names_and_no_label_maps():
    scene = slicer.vtkMRMLScene()
    _volume(scene, "CT label", label=True)
    named_ct = _volume(scene, "my CT")
    mr = _volume(scene, "CT-like MR", modality="MR")  # an MR is never taken as CT by name
    dicom_ct = _volume(scene, "Series 3", modality="CT")
    named_pet = _volume(scene, "Patient 2024-01-01 Standardized Uptake Value body weight")
    ct, pet = guess_pet_ct(_nodes(scene), _instance_value)
    assert ct is dicom_ct and pet is named_pet
    assert role_of(mr, _instance_value) == ("", "DICOM modality MR")
    assert guess_pet_ct([named_ct, named_pet])[0] is named_ct


def test_voxel_value_units_mark_a_pet():
    scene = slicer.vtkMRMLScene()
    node = _volume(scene, "Series 7")
    units = slicer.vtkCodedEntry()
    units.SetValueSchemeMeaning("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight")
    node.SetVoxelValueUnits(units)
    assert role_of(node) == ("PET", "voxel-value units")
    assert guess_pet_ct(_nodes(scene)) == (None, node)


def _sized(scene, name, slices, modality=None, tags=None, size=8):
    """A volume with voxels (``slices`` axial slices) and DICOM tags in the fake database."""
    import numpy as np
    import SimpleITK as sitk

    from VMambaXCommon.mrml_sitk import add_volume_node_from_image

    node = add_volume_node_from_image(scene, sitk.GetImageFromArray(
        np.zeros((slices, size, size), np.int16)), name)
    if modality:
        uids = [generate_uid() for _ in range(2)]
        node.SetAttribute("DICOM.instanceUIDs", " ".join(uids))
        for uid in uids:
            _DATABASE[(uid, "0008,0060")] = modality
            for tag, value in (tags or {}).items():
                _DATABASE[(uid, tag)] = value
    return node


def test_the_largest_ct_series_wins_and_a_localizer_never_does():
    from VMambaXSegmentLib.inputs import choose_pet_ct

    scene = slicer.vtkMRMLScene()
    scout = _sized(scene, "Topogram 0.6 T20f", 1, "CT", {"0008,0008": "ORIGINAL\\PRIMARY\\LOCALIZER"},
                   size=64)  # loaded first, and the most pixels per slice
    thick = _sized(scene, "CT 5mm", 60, "CT")
    thin = _sized(scene, "CT 2mm", 150, "CT")
    pet = _sized(scene, "PET AC", 50, "PT", {"0028,0051": "DECY\\ATTN\\SCAT\\DTIM"})
    choice = choose_pet_ct(_nodes(scene), _instance_value)
    assert (choice.ct, choice.pet) == (thin, pet)
    assert "CT 'CT 2mm' (the largest of 3 CT series, 150 slices" in choice.note
    assert "not the localizer 'Topogram 0.6 T20f'" in choice.note
    # A localizer alone is not taken: the user chooses, and is told why.
    only = slicer.vtkMRMLScene()
    _sized(only, "Scout", 1, "CT")
    choice = choose_pet_ct(_nodes(only), _instance_value)
    assert choice.ct is None and "look like localizers" in choice.note
    assert thick is not None


def test_the_attenuation_corrected_pet_wins_and_the_choice_is_named():
    from VMambaXSegmentLib.inputs import attenuation_corrected, choose_pet_ct

    scene = slicer.vtkMRMLScene()
    nac = _sized(scene, "PET WB", 50, "PT", {"0028,0051": "DECY\\DTIM",
                                             "0008,103E": "PET NAC WB"})  # loaded first
    by_name = _sized(scene, "PET non-AC 3D", 50)  # no DICOM: "non AC" in the name
    ac = _sized(scene, "PET WB", 50, "PT", {"0028,0051": "DECY\\ATTN\\SCAT\\DTIM"})
    ct = _sized(scene, "CT", 50, "CT")
    assert attenuation_corrected(nac, _instance_value) is False
    assert attenuation_corrected(by_name, _instance_value) is False
    assert attenuation_corrected(ac, _instance_value) is True
    choice = choose_pet_ct(_nodes(scene), _instance_value)
    assert (choice.ct, choice.pet) == (ct, ac)
    assert "PET 'PET WB' (attenuation-corrected; not the non-attenuation-corrected 'PET WB', " \
           "'PET non-AC 3D')" in choice.note
    # Only an uncorrected PET: taken, and said loudly.
    scene2 = slicer.vtkMRMLScene()
    _sized(scene2, "PET NAC", 50, "PT")
    choice = choose_pet_ct(_nodes(scene2), _instance_value)
    assert choice.pet is not None and "NOT attenuation-corrected" in choice.note
