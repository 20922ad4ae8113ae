"""Volume cases -> network-ready slice stacks, for training on a clinic's own cases.

A folder of volume cases (``<case>/ct.nii.gz`` HU, ``pet.nii.gz`` SUV, ``label.nii.gz`` or
``label.dcm``; see ``pclt_export.find_case_folders``) is exported once into a *volume export*:

    <root>/export.json          format "vmambax-volumes", the input windows and slice size,
                                per-case facts (slices, tumour slices, pixel size), warnings
    <root>/<case>/ct.npy        uint8 (z, n_ct_windows, S, S): every axial slice, each window
    <root>/<case>/pet.npy       uint8 (z, n_suv_windows, S, S)
    <root>/<case>/mask.npy      uint8 0/1 (z, S, S)

The stacks are made by ``InputSpec.volume_to_stacks``, the very function inference runs on a CT
and PET (PET resampled onto the CT by ``case.make_case``, the same checks as ``vmambax
segment``), so training sees exactly the inputs the model will get. Every slice is kept, in
order: neighbouring slices (``InputSpec.context``) and whole-case validation (3-D Dice per case)
need them; which slices a training epoch draws is the dataset's choice (``VolumeSlices``).
Written to a staging folder, every file verified, then renamed (``utils.atomic_dir``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

import numpy as np

from vmambax.data.input_spec import InputSpec
from vmambax.data.pclt_export import (find_case_folders, load_case_folder, lung_slices,
                                      sanitize_case_id, select_slices)
from vmambax.errors import InputError
from vmambax.utils import atomic_dir

FORMAT = "vmambax-volumes"


def is_volume_export(root) -> bool:
    try:
        return json.loads((Path(root) / "export.json").read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_export_info(root) -> dict:
    try:
        return json.loads((Path(root) / "export.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def export_volume_cases(cases_dir, out_root, spec: InputSpec, *, extra_info: dict | None = None,
                        progress=None) -> dict:
    """Export every case folder under ``cases_dir`` (see the module docstring); returns the
    export.json dict. ``progress(done, total, case_id)`` after each case. Refuses two cases
    whose IDs map to one folder name."""
    import SimpleITK as sitk

    from vmambax.data.case import make_case
    from vmambax.data.io import as_binary_label
    from vmambax.data.orientation import image_axis_map
    from vmambax.data.preprocess import mask_to_slices

    folders = find_case_folders(cases_dir)
    out_root = Path(out_root)
    cases: dict[str, dict] = {}
    notes: list[str] = []
    with atomic_dir(out_root, replace=True) as tmp:
        for n, (case_id, paths) in enumerate(folders):
            cid = sanitize_case_id(case_id)
            if cid in cases:
                raise InputError(f"Two cases map to the folder name {cid!r} ({cases[cid]['source_id']!r} "
                                 f"and {case_id!r}); give them distinct IDs.")
            case = load_case_folder(case_id, paths)
            label = as_binary_label(case.label, case.ct, f"The label of case {case_id}")
            pct = make_case(case.ct, case.pet_suv)
            notes += [f"{case_id}: {w}" for w in list(case.notes) + list(pct.warnings)]
            ct_u8, pet_u8, geometry = spec.volume_to_stacks(pct.ct, pct.pet_suv)
            mask = mask_to_slices(label, geometry)
            folder = tmp / cid
            folder.mkdir()
            for name, arr in (("ct", ct_u8), ("pet", pet_u8), ("mask", mask)):
                np.save(folder / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
            axes = image_axis_map(pct.ct)
            spacing = axes.axial_spacing(pct.ct.GetSpacing())
            scale = geometry.side / geometry.size
            positive = mask.reshape(len(mask), -1).any(axis=1)
            cases[cid] = {
                "source_id": str(case_id), "source": {k: str(v) for k, v in paths.items()},
                "slices": int(len(mask)), "slices_with_tumour": int(positive.sum()),
                "lung_slices": [int(k) for k in np.flatnonzero(lung_slices(
                    axes.to_axial(sitk.GetArrayViewFromImage(pct.ct))))],
                "slice_thickness_mm": spacing[0],
                "pixel_mm_at_network_size": [spacing[1] * scale, spacing[2] * scale],
                "pet_overlap": round(pct.overlap, 4)}
            if progress is not None:
                progress(n + 1, len(folders), case_id)
        from vmambax import __version__

        info = {"format": FORMAT, "format_version": 1, "created_by": f"vmambax {__version__}",
                "spec": {"ct_windows_hu": [list(w) for w in spec.ct_windows],
                         "suv_windows": [list(w) for w in spec.suv_windows],
                         "image_size": spec.image_size},
                "cases": cases, "warnings": notes, **(extra_info or {})}
        (tmp / "export.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return info


def check_export_matches(root, spec: InputSpec) -> None:
    """Refuse training a spec on an export made with other windows or another slice size."""
    have = read_export_info(root).get("spec") or {}
    want = {"ct_windows_hu": [list(w) for w in spec.ct_windows],
            "suv_windows": [list(w) for w in spec.suv_windows], "image_size": spec.image_size}
    if have != want:
        raise InputError(f"the volume export in {root} was made with {have}, not the {want} this run "
                         "trains with; remove that folder (it is re-made) or train with its settings.")


class VolumeSlices:
    """Slices of some cases of a volume export as ``{"id", "patient", "ct", "pet", "mask",
    "case_index"}`` dicts (``ct``/``pet`` uint8 ``(C, S, S)`` with the spec's neighbouring
    slices, ``mask`` uint8 0/1 ``(S, S)``); the same item form as ``pclt.PcltDataset`` plus
    channels, so ``train.datamodule.SliceDataset`` augments both alike.

    ``select="all"`` takes every slice (validation: whole cases for 3-D Dice); ``"train"`` takes
    every slice with tumour plus ``negatives_per_positive`` times as many without, drawn once per
    case from ``seed`` (lung slices first, as the PCLT exporter does).
    """

    def __init__(self, root, case_ids: Sequence[str], spec: InputSpec, *, select: str = "all",
                 negatives_per_positive: float = 1.0, seed: int = 0):
        self.root = Path(root)
        info = read_export_info(self.root)
        known = info.get("cases") or {}
        unknown = [c for c in case_ids if c not in known]
        if unknown:
            raise InputError(f"case(s) {', '.join(unknown[:5])} are not in the volume export {self.root} "
                             f"(it has {', '.join(sorted(known)[:8])}...).")
        check_export_matches(self.root, spec)
        self.spec, self.case_ids = spec, list(case_ids)
        self.info = {c: known[c] for c in self.case_ids}
        self.items: list[tuple[int, int]] = []
        for ci, cid in enumerate(self.case_ids):
            n = int(self.info[cid]["slices"])
            if select == "all":
                chosen = range(n)
            elif select == "train":
                mask = np.load(self.root / cid / "mask.npy", mmap_mode="r")
                positive = mask.reshape(n, -1).any(axis=1)
                lung = np.zeros(n, bool)
                lung[self.info[cid].get("lung_slices", [])] = True
                chosen = select_slices(positive, lung, negatives_per_positive,
                                       random.Random(f"{seed}:{cid}"))
            else:
                raise ValueError(f"select must be 'all' or 'train', got {select!r}")
            self.items += [(ci, int(z)) for z in chosen]
        self._open: dict[str, dict[str, np.ndarray]] = {}

    @property
    def ids(self) -> list[str]:
        return [f"{self.case_ids[ci]}_{z:04d}" for ci, z in self.items]

    @property
    def patients(self) -> list[str]:
        return list(self.case_ids)

    def __len__(self) -> int:
        return len(self.items)

    def _arrays(self, cid: str) -> dict[str, np.ndarray]:
        # Opened lazily (memory-mapped) in each data-loader worker; the page cache shares them.
        if cid not in self._open:
            self._open[cid] = {k: np.load(self.root / cid / f"{k}.npy", mmap_mode="r")
                               for k in ("ct", "pet", "mask")}
        return self._open[cid]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_open"] = {}
        return state

    def has_tumour(self, index: int) -> bool:
        ci, z = self.items[index]
        return bool(np.asarray(self._arrays(self.case_ids[ci])["mask"][z]).any())

    def __getitem__(self, index: int) -> dict:
        ci, z = self.items[index]
        cid = self.case_ids[ci]
        a = self._arrays(cid)
        try:
            ct = self.spec.gather(a["ct"], [z])[0]
            pet = self.spec.gather(a["pet"], [z])[0]
            mask = np.array(a["mask"][z])  # a copy: the memory map is read-only
        except (ValueError, OSError) as exc:
            raise InputError(f"slice {z} of case {cid} in {self.root} cannot be read ({exc}); remove "
                             "the export folder so that it is made again.") from None
        return {"id": f"{cid}_{z:04d}", "patient": cid, "ct": ct, "pet": pet, "mask": mask,
                "case_index": ci}


def positive_slices(ds: VolumeSlices) -> int:
    """Slices with tumour among ``ds``'s items (from the masks, memory-mapped)."""
    count = 0
    for ci, cid in enumerate(ds.case_ids):
        mask = np.load(ds.root / cid / "mask.npy", mmap_mode="r")
        zs = [z for c, z in ds.items if c == ci]
        count += int(mask[zs].reshape(len(zs), -1).any(axis=1).sum()) if zs else 0
    return count
