"""Screenshots of a VMambaX Segment result, rendered by 3D Slicer's own view code (slicer-core).

    python docs/images/render_screenshots.py            # writes the PNGs named below
    python docs/images/render_screenshots.py --quick --out /tmp/shots   # small phantom, a trial

What is real here: the scene is Slicer MRML; the CT and PET are the "VMambaX PET/CT phantom"
sample (``VMambaXCommon.sample_data``, as the Sample Data button makes it); the tumour
segmentation is made by ``VMambaXSegmentLogic`` with the shipped demo model
(Resources/Models/vmambax-nano-phantom.pt), exactly as the Segment Tumor button runs it; the
slice images are resliced and blended (CT background, PET foreground) by ``vtkMRMLSliceLogic``;
the segmentation outlines, 3D surface, slice planes, ruler, orientation marker and PET colour
legend are drawn by Slicer's displayable managers (``vtkMRMLSegmentationsDisplayableManager2D``
/``3D``, ``vtkMRMLModelDisplayableManager``, ...), all rendered by VTK offscreen (EGL or OSMesa,
no display needed). The slice image is shown the way CTK's slice view (``ctkVTKSliceView``)
shows it in Slicer: a ``vtkImageMapper`` (window 255, level 127.5) on a 2D actor.

What is not there: Slicer's Qt application (menus, module panel, view controller bars, the
DataProbe corner annotations). These are images of the views, not of the whole window.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for _folder in (ROOT, ROOT / "VMambaXSegment"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

import numpy as np  # noqa: E402
import slicer  # noqa: E402  (slicer-core)
import vtk  # noqa: E402
from PIL import Image  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from VMambaXCommon import sample_data  # noqa: E402
from VMambaXSegmentLib.logic import VMambaXSegmentLogic  # noqa: E402

# The screenshots the catalog entry points at (CMakeLists.txt EXTENSION_SCREENSHOTURLS) and the
# Sample Data thumbnail.
FOUR_UP = ROOT / "docs" / "images" / "screenshot-four-up.png"
AXIAL = ROOT / "docs" / "images" / "screenshot-axial.png"
THUMBNAIL = ROOT / "VMambaXSegment" / "Resources" / "Icons" / f"{sample_data.SAMPLE_ID}.png"

SLICE_DISPLAYABLE_MANAGERS = (  # of those qMRMLSliceView and the Segmentations/Colors modules add
    "vtkMRMLSegmentationsDisplayableManager2D", "vtkMRMLRulerDisplayableManager",
    "vtkMRMLColorLegendDisplayableManager")
THREED_DISPLAYABLE_MANAGERS = (
    "vtkMRMLCameraDisplayableManager", "vtkMRMLViewDisplayableManager",
    "vtkMRMLModelDisplayableManager", "vtkMRMLSegmentationsDisplayableManager3D",
    "vtkMRMLOrientationMarkerDisplayableManager")


def _capture(render_window) -> Image.Image:
    render_window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(render_window)
    grab.ReadFrontBufferOff()
    grab.Update()
    image = grab.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    pixels = pixels.reshape(height, width, -1)[::-1, :, :3]  # VTK rows run bottom-up
    return Image.fromarray(np.ascontiguousarray(pixels))


def _offscreen_window(renderer, width: int, height: int):
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(width, height)
    window.AddRenderer(renderer)
    interactor = vtk.vtkRenderWindowInteractor()  # some displayable managers need one
    interactor.SetRenderWindow(window)
    return window


class SliceView:
    """One slice view (Red / Yellow / Green) as Slicer builds it, without the Qt widget."""

    ORIENTATION = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal", "Axial": "Axial"}

    def __init__(self, app_logic, scene, name: str, width: int, height: int):
        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(app_logic)
        self.logic.SetMRMLScene(scene)
        self.node = self.logic.AddSliceNode(name)
        self.node.SetOrientation(self.ORIENTATION[name])
        # The application knows its slice views (the colour legend and 3D managers ask it), and
        # must before the managers are made.
        logics = app_logic.GetSliceLogics()
        if logics is None:
            logics = vtk.vtkCollection()
            app_logic.SetSliceLogics(logics)
        logics.AddItem(self.logic)
        self.node.SetDimensions(width, height, 1)
        self.logic.ResizeSliceNode(width, height)
        self.renderer = vtk.vtkRenderer()
        self.renderer.SetBackground(0.0, 0.0, 0.0)
        self.window = _offscreen_window(self.renderer, width, height)
        self.mapper = vtk.vtkImageMapper()  # as ctkVTKLightBoxRendererManager shows the slice
        self.mapper.SetColorWindow(255)
        self.mapper.SetColorLevel(127.5)
        actor = vtk.vtkActor2D()
        actor.SetMapper(self.mapper)
        self.renderer.AddViewProp(actor)
        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(app_logic)
        for manager in SLICE_DISPLAYABLE_MANAGERS:
            if not factory.IsDisplayableManagerRegistered(manager):
                factory.RegisterDisplayableManager(manager)
        self.managers = factory.InstantiateDisplayableManagers(self.renderer)
        self.managers.SetMRMLDisplayableNode(self.node)

    def show(self, background, foreground, opacity: float, centre_ras, zoom: float = 1.0) -> None:
        composite = self.logic.GetSliceCompositeNode()
        composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(foreground.GetID())
        composite.SetForegroundOpacity(opacity)
        self.logic.FitSliceToBackground()  # the CT fills the view, as "Reset field of view"
        if zoom != 1.0:
            fov = self.node.GetFieldOfView()
            self.node.SetFieldOfView(fov[0] / zoom, fov[1] / zoom, fov[2])
        self.node.JumpSliceByOffsetting(*centre_ras)  # through the lesion, view kept centred
        self.node.SetRulerType(slicer.vtkMRMLAbstractViewNode.RulerTypeThin)

    def capture(self) -> Image.Image:
        # The slice logic swaps its output when the layers change; Slicer's slice widget follows
        # it (imageDataConnectionChanged), so take the current one.
        self.mapper.SetInputConnection(self.logic.GetImageDataConnection())
        self.managers.RequestRender()
        return _capture(self.window)


class ThreeDView:
    """The 3D view: tumour surfaces, the slice planes, Slicer's camera and view managers."""

    def __init__(self, app_logic, scene, width: int, height: int):
        self.node = scene.AddNewNodeByClass("vtkMRMLViewNode", "View1")
        self.node.SetLayoutName("1")
        self.node.SetBoxVisible(False)
        self.node.SetAxisLabelsVisible(False)
        self.node.SetBackgroundColor(0.0, 0.0, 0.0)
        self.node.SetBackgroundColor2(0.0, 0.0, 0.0)
        self.renderer = vtk.vtkRenderer()
        self.window = _offscreen_window(self.renderer, width, height)
        factory = slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(app_logic)
        for manager in THREED_DISPLAYABLE_MANAGERS:
            if not factory.IsDisplayableManagerRegistered(manager):
                factory.RegisterDisplayableManager(manager)
        self.managers = factory.InstantiateDisplayableManagers(self.renderer)
        self.managers.SetMRMLDisplayableNode(self.node)

    def look_at(self, centre_ras, distance_mm: float) -> None:
        view_node = slicer.vtkMRMLAbstractViewNode
        self.node.SetOrientationMarkerType(view_node.OrientationMarkerTypeAxes)
        self.node.SetOrientationMarkerSize(view_node.OrientationMarkerSizeSmall)
        camera = self.renderer.GetActiveCamera()
        camera.SetFocalPoint(*centre_ras)
        # From the patient's front, left and above, onto the axial slice and the tumours.
        direction = np.array([-0.35, 0.75, 0.55])
        direction *= distance_mm / np.linalg.norm(direction)
        camera.SetPosition(*(np.asarray(centre_ras) + direction))
        camera.SetViewUp(0.0, 0.0, 1.0)
        self.renderer.ResetCameraClippingRange()

    def capture(self) -> Image.Image:
        self.managers.RequestRender()
        return _capture(self.window)


def build_scene(quick: bool):
    """The sample phantom in a scene with Slicer's application and colour logic, segmented."""
    # What Slicer's Segmentations module registers at start-up (labelmap <-> closed surface).
    converters = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not converters.GetConverterRules():
        converters.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        converters.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    if scene.GetFirstNodeByClass("vtkMRMLInteractionNode") is None:  # the app makes it in Slicer
        interaction = slicer.vtkMRMLInteractionNode()
        interaction.SetSingletonTag("Singleton")
        scene.AddNode(interaction)
    colours = slicer.vtkSlicerColorLogic()
    colours.SetMRMLApplicationLogic(app_logic)
    colours.SetMRMLScene(scene)  # the default colour tables, PET-Heat among them
    size, slices = (256, 24) if quick else (sample_data.SIZE, sample_data.N_SLICES)
    ct, pet = sample_data.add_phantom_sample(scene, size=size, n_slices=slices)
    print(f"segmenting {ct.GetName()} ({'x'.join(map(str, ct.GetImageData().GetDimensions()))}) "
          f"with the shipped demo model ...", flush=True)
    out = VMambaXSegmentLogic().segment(ct, pet, model="default", device="cpu")
    print(out.summary(), flush=True)
    segmentation = out.segmentationNode
    segmentation.CreateClosedSurfaceRepresentation()
    display = segmentation.GetDisplayNode()
    display.SetVisibility2DFill(False)  # outline only, so the PET underneath stays visible
    display.SetSliceIntersectionThickness(3)
    # The colour logic must outlive the rendering (the colour tables' lookup tables go with it).
    return scene, app_logic, colours, ct, pet, out


def _lesion_centre_ras(out, ct):
    """RAS of the largest lesion's centroid (lesions come sorted by decreasing MTV)."""
    if out.result.lesions:
        lesion = out.result.lesions[0]
        lps = lesion.get("centroid_mm") or lesion.get("centroid")
        return (-float(lps[0]), -float(lps[1]), float(lps[2]))
    bounds = [0.0] * 6
    ct.GetRASBounds(bounds)
    return tuple((bounds[2 * i] + bounds[2 * i + 1]) / 2 for i in range(3))


def _show_pet_colour_legend(colours, pet, view_nodes) -> None:
    """The PET's colour legend (Colors module, "Show color legend"), in the given views only.

    Added after the views exist, as a user would: the legend manager only follows legends
    that are added while it is there.
    """
    legend = colours.AddDefaultColorLegendDisplayNode(pet)
    legend.SetTitleText("SUV")
    legend.SetLabelFormat("%.0f")
    legend.SetSize(0.1, 0.35)
    legend.SetViewNodeIDs([node.GetID() for node in view_nodes])
    legend.SetVisibility(True)


def render(quick: bool = False, out_dir: Path | None = None) -> list[Path]:
    four_up_path, axial_path, thumbnail_path = (
        (FOUR_UP, AXIAL, THUMBNAIL) if out_dir is None
        else tuple(Path(out_dir) / p.name for p in (FOUR_UP, AXIAL, THUMBNAIL)))
    scene, app_logic, colours, ct, pet, out = build_scene(quick)
    centre = _lesion_centre_ras(out, ct)
    width, height = 560, 420  # 4:3 views: the CT's coronal and sagittal extents fill them
    views = {name: SliceView(app_logic, scene, name, width, height)
             for name in ("Red", "Yellow", "Green")}
    big = SliceView(app_logic, scene, "Axial", 900, 700)  # a larger axial view of its own
    for name, view in views.items():
        view.show(ct, pet, opacity=0.45, centre_ras=centre, zoom=1.3 if name == "Red" else 1.1)
    big.show(ct, pet, opacity=0.45, centre_ras=centre, zoom=1.35)
    _show_pet_colour_legend(colours, pet, [views["Red"].node, big.node])
    # The axial slice in 3D under the tumour surfaces, as the Red view's "eye" button shows it.
    views["Red"].logic.GetSliceModelDisplayNode().SetVisibility(True)
    views["Red"].logic.GetSliceModelDisplayNode().SetVisibility3D(True)
    three_d = ThreeDView(app_logic, scene, width, height)
    three_d.look_at(centre, distance_mm=900.0)

    # Slicer's "Four-Up" layout: Red | 3D over Yellow | Green, views separated by thin gaps.
    gap = 4
    four_up = Image.new("RGB", (2 * width + gap, 2 * height + gap), (52, 52, 52))
    for (col, row), image in {(0, 0): views["Red"].capture(), (1, 0): three_d.capture(),
                              (0, 1): views["Yellow"].capture(),
                              (1, 1): views["Green"].capture()}.items():
        four_up.paste(image, (col * (width + gap), row * (height + gap)))
    four_up_path.parent.mkdir(parents=True, exist_ok=True)
    four_up.save(four_up_path, optimize=True)

    # A larger axial view, zoomed onto the thorax.
    axial = big.capture()
    axial.save(axial_path, optimize=True)

    thumb = views["Red"].capture().crop(((width - height) // 2 + height // 8, height // 8,
                                         (width + height) // 2 - height // 8, height - height // 8))
    thumb.resize((128, 128), Image.LANCZOS).save(thumbnail_path, optimize=True)
    return [four_up_path, axial_path, thumbnail_path]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small phantom (a trial run)")
    parser.add_argument("--out", type=Path, help="write the PNGs here instead of into the repo")
    args = parser.parse_args(argv)
    if args.quick and args.out is None:
        parser.error("--quick needs --out (the committed screenshots use the full sample)")
    for path in render(quick=args.quick, out_dir=args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
