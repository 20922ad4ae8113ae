"""Time the Slicer-side work around the network on a full-size phantom (slicer-core, no GPU).

What VMambaX Segment adds to the Segmenter's own time: reading the CT and PET nodes into
SimpleITK + SUV conversion (main thread, before the worker starts) and writing the segment,
lesion table and subject hierarchy (main thread, after). Run from the repository root:

    python VMambaXSegment/Testing/Python/benchmark_scene_io.py
"""

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "VMambaXSegment")]


def main(size=512, repeats=3):
    import SimpleITK as sitk
    import slicer

    from vmambax.metrics import quantify_lesions
    from VMambaXSegmentLib import scene_output
    from VMambaXSegmentLib.logic import VMambaXSegmentLogic
    from VMambaXCommon.testing import add_phantom_case

    scene = slicer.vtkMRMLScene()
    ct, pet, phantom, _ = add_phantom_case(scene, seed=3, size=size, n_slices=None)
    print(f"CT {phantom.ct.GetSize()}, PET {phantom.pet_suv.GetSize()}")
    logic = VMambaXSegmentLogic()
    read, write = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        inputs = logic.prepare(ct, pet, petUnits="suv")
        read.append(time.perf_counter() - t)
        label = sitk.GetArrayFromImage(phantom.label)
        q = quantify_lesions(phantom.label, sitk.Resample(inputs.pet_suv, phantom.label))
        seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "bench")
        t = time.perf_counter()
        seg.SetReferenceImageGeometryParameterFromVolumeNode(ct)
        scene_output.write_tumour_segment(seg, label, ct)
        table = scene_output.lesion_table_for(seg, "bench lesions")
        scene_output.write_lesion_table(table, q["lesions"], q["total"])
        scene_output.place_next_to(seg, ct)
        scene_output.place_next_to(table, ct)
        write.append(time.perf_counter() - t)
    print(f"read + SUV (main thread): best {min(read):.3f} s of {repeats}")
    print(f"write segment + table + study (main thread): best {min(write):.3f} s of {repeats}")
    responsiveness(scene)


def responsiveness(scene, size=128, tick=0.02):
    """How long the main thread (Slicer's GUI) is held up while the network runs on the worker:
    a 20 ms timer loop stands in for Qt's event loop; its longest gap is the worst UI stall."""
    import tempfile

    from vmambax.model import build_model
    from vmambax.model.checkpoint import save_model_file
    from VMambaXSegmentLib.logic import VMambaXSegmentLogic
    from VMambaXCommon.testing import add_phantom_case

    model = Path(tempfile.mkdtemp()) / "nano.pt"
    save_model_file(model, build_model("vmambax-nano").eval(), config_name="vmambax-nano",
                    preprocessing={"image_size": size}, metadata={})
    ct, pet, _phantom, _ = add_phantom_case(scene, seed=4, size=size, n_slices=24, prefix="R ")
    t0 = time.perf_counter()
    task = VMambaXSegmentLogic().segmentAsync(ct, pet, model=str(model), device="cpu",
                                              petUnits="suv")
    started = time.perf_counter() - t0
    gaps, last = [], time.perf_counter()
    while not task.done:
        time.sleep(tick)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    t = time.perf_counter()
    out = task.apply()
    applied = time.perf_counter() - t
    print(f"segmentAsync returned in {started:.3f} s; worker ran {time.perf_counter() - t0:.1f} s "
          f"({out.result.n_slices} slices); main-thread timer gaps: median "
          f"{sorted(gaps)[len(gaps) // 2] * 1000:.0f} ms, max {max(gaps) * 1000:.0f} ms; "
          f"apply {applied:.3f} s")


if __name__ == "__main__":
    main()
