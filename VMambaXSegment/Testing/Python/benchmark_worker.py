"""What running the network in a worker process costs, and how fast Cancel ends it (issue 17.1).

One 512 x 512 x 300 whole-body phantom (slicer-core scene), segmented by the Segment logic with
the shipped demo model, in Slicer's own process (``inProcess=True``) and through the worker, side
by side in one run. The hand-over is everything the worker path does that the in-process path
does not: writing CT and PET to the job folder, starting the worker (Python, torch, vmambax
imports, until its first progress line), reading the label and result back. Then a cancel in
the middle of a batch: seconds until the worker's whole process tree is gone. Run from the
repository root:

    python VMambaXSegment/Testing/Python/benchmark_worker.py [--slices 300] [--repeats 1]
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "VMambaXSegment")]


def _case(slices: int):
    import slicer

    from vmambax.phantom import make_phantom
    from VMambaXCommon.mrml_sitk import add_volume_node_from_image

    t = time.perf_counter()
    phantom = make_phantom(seed=3, size=512, n_slices=slices, whole_body=True)
    scene = slicer.vtkMRMLScene()
    ct = add_volume_node_from_image(scene, phantom.ct, "WB CT")
    pet = add_volume_node_from_image(scene, phantom.pet_suv, "WB PET")
    print(f"phantom CT {phantom.ct.GetSize()}, PET {phantom.pet_suv.GetSize()} "
          f"({time.perf_counter() - t:.0f} s to make)", flush=True)
    return scene, ct, pet


def _run(logic, ct, pet, in_process: bool) -> dict:
    t = time.perf_counter()
    out = logic.segment(ct, pet, model="default", device="cpu", petUnits="suv",
                        inProcess=in_process)
    wall = time.perf_counter() - t
    result = out.result
    row = {"path": "in-process" if in_process else "worker", "wall_s": round(wall, 2),
           "segmenter_total_s": result.timings["total"],
           "inference_s": result.timings["inference"],
           "slices_run": f"{result.n_slices_run}/{result.n_slices}",
           "segmenter_timings_s": result.timings}
    if not in_process:
        row["handover_s"] = {k: round(v, 3) for k, v in result.handover.items()}
    return row


def _cancel(logic, ct, pet) -> dict:
    """Cancel right after a batch was reported (the worker is inside the next one)."""
    import psutil

    started = []
    logic.workerOptions = {"on_started": started.append}
    task = logic.segmentAsync(ct, pet, model="default", device="cpu", petUnits="suv",
                              batchSize=8, inProcess=False)
    while not (task.snapshot()[1].startswith("Segmented ") and started):
        if task.done:
            return {"error": repr(task.error)}
        time.sleep(0.01)
    tree = [psutil.Process(started[0].pid)] + psutil.Process(started[0].pid).children(True)
    t = time.perf_counter()
    task.cancel()
    while not task.done or any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                               for p in tree if psutil.pid_exists(p.pid)):
        time.sleep(0.005)
    logic.workerOptions = {}
    return {"cancel_to_no_process_s": round(time.perf_counter() - t, 3),
            "processes_ended": len(tree)}


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    from VMambaXSegmentLib.logic import VMambaXSegmentLogic

    _scene, ct, pet = _case(args.slices)
    logic = VMambaXSegmentLogic()
    rows = []
    for _ in range(args.repeats):
        for in_process in (True, False):
            rows.append(_run(logic, ct, pet, in_process))
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps(_cancel(logic, ct, pet)), flush=True)


if __name__ == "__main__":
    main()
