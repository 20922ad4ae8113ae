"""PET over CT, as both the finished run and the Sample Data phantom are shown: the PET fused over
the CT in every slice view, with Slicer's PET colour map.

Qt-free (MRML only), so slicer-core tests check it on a real scene: the slice composite nodes
get the CT as background and the PET as foreground at half opacity (what
``slicer.util.setSliceViewerLayers`` does, without needing the application), and the PET's
display node uses Slicer's "PET-Heat" colour node.
"""

from __future__ import annotations

PET_COLOR_NAME = "PET-Heat"
FOREGROUND_OPACITY = 0.5


def pet_heat_color_node(scene):
    """Slicer's PET-Heat colour node in ``scene`` (made by the Colors module at start-up; the
    ID comes from ``vtkMRMLColorLogic.GetPETColorNodeID``). Created when the scene lacks it
    (a bare scene, e.g. in scripts), so the PET is never shown in grey by accident."""
    import slicer

    probe = slicer.vtkMRMLPETProceduralColorNode()
    probe.SetTypeToHeat()
    node = scene.GetNodeByID(slicer.vtkMRMLColorLogic.GetPETColorNodeID(probe.GetType()))
    if node is None:
        nodes = scene.GetNodesByClassByName("vtkMRMLPETProceduralColorNode", PET_COLOR_NAME)
        node = nodes.GetItemAsObject(0) if nodes.GetNumberOfItems() else None
    if node is None:
        node = scene.AddNode(probe)
        node.SetName(PET_COLOR_NAME)
    return node


def show_pet_over_ct(ct_node, pet_node, opacity: float = FOREGROUND_OPACITY,
                     auto_window_level: bool = True) -> None:
    """CT in the background and the PET (PET-Heat colours) in the foreground of every slice
    view of the CT's scene; ``auto_window_level=False`` keeps the PET's own window (the
    phantom sample's 0-8 SUV)."""
    scene = ct_node.GetScene()
    if pet_node.GetDisplayNode() is None:
        pet_node.CreateDefaultDisplayNodes()
    display = pet_node.GetDisplayNode()
    display.SetAndObserveColorNodeID(pet_heat_color_node(scene).GetID())
    if auto_window_level:
        display.AutoWindowLevelOn()  # Bq/mL or SUV: the PET node keeps its own units
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(ct_node.GetID())
        composite.SetForegroundVolumeID(pet_node.GetID())
        composite.SetForegroundOpacity(opacity)
