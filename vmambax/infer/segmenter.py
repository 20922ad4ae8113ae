"""The inference engine: a whole PET/CT volume in, a tumour label in the CT's geometry out.

Used by ``vmambax segment``/``demo``, the Slicer "Segment Tumor" button and scripts::

    seg = Segmenter("default", device="auto", progress=lambda f, msg: print(f, msg))
    result = seg.segment(ct_image, pet_suv_image)      # SimpleITK images, PET in SUV
    sitk.WriteImage(result.label, "label.nii.gz")

Flow: the shared preprocessing (``vmambax.data.preprocess``) turns the volume into uint8 axial
slices at the model's input size, vectorised up front (two uint8 (z, 512, 512) stacks are small);
the model runs over batches of slices under ``torch.inference_mode`` (bf16 autocast and
channels-last on CUDA); sigmoid probabilities are mapped back to the native CT grid and thresholded
at 0.5 (prob > 0.5, as the reference ``pred.py``). By default only the slices around the lungs
run (``vmambax.infer.lung_field``: the CT's lung field plus 2 cm); the others are left empty, as
the network segments lung tumours. ``all_slices=True`` runs every slice, so results then match
slice-wise evaluation exactly. A slice's result never depends on which other slices ran.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vmambax.errors import Cancelled, ConfigError, InputError, ModelFileError
from vmambax.infer import devices
from vmambax.infer.devices import DeviceError
from vmambax.utils import plural

ProgressFn = Callable[[float, str], None]
THRESHOLD = 0.5


@dataclasses.dataclass
class SegmentationResult:
    """What one ``Segmenter.segment`` call produced (nothing is written to disk)."""

    label: Any  # SimpleITK.Image, uint8 0/1, exactly the CT's size/spacing/origin/direction
    probability: Any | None  # SimpleITK.Image float32 on the CT grid when keep_probability=True
    lesions: list[dict]  # one dict per connected lesion (SUVmax, SUVmean, SUVpeak, MTV, TLG, ...)
    totals: dict  # whole-body totals (total MTV, TLG, lesion count, SUVmax)
    timings: dict  # seconds: preprocess, inference, postprocess, quantify, total
    model_name: str
    model: dict  # name, file, sha256, config, preprocessing
    device: str  # e.g. "cuda:0 (NVIDIA H100)" or "cpu (2 threads)"
    scan_backend: str
    batch_size: int  # the batch size finally used (after any out-of-memory back-off)
    amp: str | None  # autocast dtype name, or None for fp32
    n_slices: int  # axial slices in the volume
    n_slices_run: int = 0  # slices the network ran on (the lung field, or all)
    slice_selection: dict = dataclasses.field(default_factory=dict)  # lung_field summary
    warnings: list[str] = dataclasses.field(default_factory=list)  # for the user's eyes

    @property
    def slices_per_second(self) -> float:
        t = self.timings.get("inference", 0.0)
        return self.n_slices_run / t if t > 0 else float("nan")


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel() if callable(cancel) else cancel)


def _spec_of(preprocessing: dict, path):
    """The model file's InputSpec (the papers' when it names none); a spec this VMambaX cannot
    apply is a ModelFileError naming the file."""
    from vmambax.data.input_spec import InputSpec

    try:
        return InputSpec.from_dict(preprocessing)
    except (ConfigError, TypeError, ValueError) as exc:
        raise ModelFileError(f"model file {path} asks for inputs this VMambaX cannot prepare ({exc}); "
                             "use the VMambaX version the model was trained with, or retrain it") from None


class Segmenter:
    """Segment lung tumours on co-registered PET/CT volumes with a vMambaX model.

    model: ``"default"`` (the shipped demo model), a registry name, a model file path, or an
        ``nn.Module`` already built (its input size is taken as 512 unless ``image_size`` is given).
    device: ``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    batch_size: slices per forward pass; None picks 2-4 on CPU, more on CUDA (by free memory).
        On CUDA out-of-memory the batch is halved and retried; at 1 slice a DeviceError is raised.
    amp: autocast (bf16 on CUDA); None = on for CUDA, off on CPU.
    progress: ``progress(fraction, message)``, fraction non-decreasing from 0 to 1.0.
    cancel: a ``threading.Event`` (or a callable returning bool) checked before every batch; when
        set, ``segment`` raises ``Cancelled`` within one batch and returns nothing.
    threads: CPU threads while segmenting (None: OMP_NUM_THREADS or the usable CPUs, max 16);
        the previous torch setting is restored afterwards, so a host application (Slicer) keeps its own.
    channels_last / compile: CUDA speed options (channels-last memory format, ``torch.compile``).
    all_slices: run every axial slice; by default only the slices within ``lung_margin_mm`` of
        the CT's lung field run (a CT without lungs raises ``InputError`` naming this option).
    spec: the model's inputs (``vmambax.data.input_spec.InputSpec``): CT/PET windows, slice size,
        neighbouring slices, threshold, test-time flips, post-processing. A model file carries its
        own (the papers' when it names none); give one for an ``nn.Module``. ``image_size``,
        ``tta`` and ``postprocess`` override single fields of it.
    """

    def __init__(self, model: str | Path | torch.nn.Module = "default", device: str = "auto",
                 batch_size: int | None = None, amp: bool | None = None,
                 progress: ProgressFn | None = None, cancel=None, threads: int | None = None,
                 channels_last: bool | None = None, compile: bool | str = False,
                 keep_probability: bool = False, image_size: int | None = None,
                 all_slices: bool = False, lung_margin_mm: float | None = None,
                 spec=None, tta: str | None = None, postprocess: str | None = None):
        if batch_size is not None and int(batch_size) < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        self.device = devices.resolve_device(device)
        self.progress = progress
        self.cancel = cancel
        self.threads = threads if threads is not None else (
            devices.default_cpu_threads() if self.device.type == "cpu" else None)
        self.keep_probability = keep_probability
        self.all_slices = bool(all_slices)
        self.lung_margin_mm = lung_margin_mm
        self.amp_dtype = devices.amp_dtype(self.device, amp)
        self.channels_last = self.device.type == "cuda" if channels_last is None else channels_last
        self.model, self.model_info = self._load_model(model, spec)
        changes = {k: v for k, v in (("image_size", image_size), ("tta", tta),
                                     ("postprocess", postprocess)) if v is not None}
        spec0 = self.model_info.pop("spec")  # the report gets it as the plain preprocessing dict
        self.spec = spec0.replace(**changes) if changes else spec0
        self.model_info["preprocessing"] = {**self.model_info["preprocessing"], **self.spec.to_dict()}
        self.model_info["image_size"] = self.image_size = self.spec.image_size
        # The model's own decision threshold (training exports 0.5, as pred.py, unless it chose one).
        self.threshold = self.spec.threshold
        if self.spec.tta != "none":
            from vmambax.model.tta import FlipTTA

            self.model = FlipTTA(self.model, self.spec.tta)
        self.batch_size = int(batch_size) if batch_size else devices.default_batch_size(
            self.device, self.image_size)
        self.compiled = False
        if compile:
            # True: default inductor mode; a string picks the mode ("reduce-overhead" adds CUDA
            # graphs, which pay off for small batches where kernel-launch overhead dominates).
            mode = compile if isinstance(compile, str) else None
            self.model = torch.compile(self.model, mode=mode, dynamic=False)
            self.compiled = True
        from vmambax.ops import active_backend, fallback_note

        self.scan_backend = active_backend(self.device)
        # Said with every result: what the model is not fit for, and a slow fall-back scan.
        self.notices = list(self.model_info.get("notices") or []) + [
            n for n in (fallback_note(self.device),) if n]

    # -- model --------------------------------------------------------------------------------
    def _load_model(self, model, spec):
        from vmambax.data.input_spec import InputSpec

        if isinstance(model, torch.nn.Module):
            name = getattr(model, "config_name", None) or type(model).__name__
            info = {"name": name, "file": None, "sha256": None, "config": name,
                    "preprocessing": {}, "spec": spec or InputSpec(), "members": 1, "notices": []}
            net = model
        elif isinstance(model, (str, Path)):
            from vmambax.infer.registry import notices_for, resolve_model, sha256_file
            from vmambax.model.checkpoint import load_model_file

            path, entry = resolve_model(model, progress=self._download_progress)
            net, file_info = load_model_file(path, map_location="cpu")
            file_info = dict(file_info or {})
            sha = entry.sha256 if entry and entry.sha256 else sha256_file(path)
            name = entry.name if entry else Path(path).name
            metadata = file_info.get("metadata") or {}
            info = {"name": name, "file": str(path), "sha256": sha,
                    "config": file_info.get("config") or (entry.config if entry else ""),
                    "preprocessing": file_info.get("preprocessing") or {},
                    "metadata": metadata,
                    "members": int(file_info.get("members", 1)),
                    "notices": notices_for(model, path, entry, metadata, sha)}
            info["spec"] = spec or _spec_of(info["preprocessing"], path)
            in_chans = getattr(getattr(net, "config", None), "in_chans", None)
            bad = [c for c in (info["spec"].ct_channels, info["spec"].pet_channels)
                   if in_chans and c not in (1, in_chans)]
            if bad:
                raise ModelFileError(f"model file {path} is inconsistent: its inputs have {bad[0]} "
                                     f"channels but its network takes 1 or {in_chans}; export it again")
        else:
            raise ConfigError(f"model must be a registry name, a file path or a torch module, "
                              f"not {type(model).__name__}")
        net = net.to(self.device).eval()
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net, info

    def _download_progress(self, fraction: float, message: str) -> None:
        if self.progress:
            self.progress(0.0, message)  # downloads happen before segmentation progress starts

    # -- public API ---------------------------------------------------------------------------
    def segment(self, ct, pet_suv) -> SegmentationResult:
        """Segment ``ct`` (HU) + ``pet_suv`` (SUV) SimpleITK images. A PET on another grid is
        resampled onto the CT; swapped or non-overlapping inputs raise ``InputError``. The label
        has exactly the CT's size, spacing, origin and direction; ``result.warnings`` holds what
        the user should be told (partial PET coverage, non-square pixels)."""
        import SimpleITK as sitk
        from vmambax.data.case import inspect_pair, make_case
        from vmambax.data.io import check_same_grid

        for name, image in (("CT", ct), ("PET", pet_suv)):
            if not isinstance(image, sitk.Image):
                raise InputError(f"{name} must be a 3-D SimpleITK image, got {type(image).__name__}")
        t0 = time.perf_counter()
        try:
            check_same_grid(pet_suv, ct, "The PET", "the CT")
        except InputError:
            case = make_case(ct, pet_suv)  # validates, checks roles/overlap, resamples
            pet_suv, notes = case.pet_suv, case.warnings
        else:
            _, notes = inspect_pair(ct, pet_suv)  # the same checks, no resampling needed
            pet_suv = sitk.Cast(pet_suv, sitk.sitkFloat32)
        t_resample = time.perf_counter() - t0
        result = self._run(ct, pet_suv)
        result.timings["resample"] = round(t_resample, 4)
        result.warnings = list(dict.fromkeys(list(notes) + self.notices))
        return result

    def segment_arrays(self, ct_hu: np.ndarray, pet_suv: np.ndarray,
                       spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                       origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
                       direction: tuple[float, ...] | None = None) -> SegmentationResult:
        """``segment`` for ``(z, y, x)`` arrays on one grid; ``spacing`` and ``origin`` are in
        SimpleITK (x, y, z) order, ``direction`` a row-major 9-tuple (default identity, axial)."""
        import SimpleITK as sitk

        ct_hu = np.asarray(ct_hu, dtype=np.float32)
        pet_suv = np.asarray(pet_suv, dtype=np.float32)
        if ct_hu.ndim != 3 or ct_hu.shape != pet_suv.shape:
            raise InputError(f"CT and PET arrays must both be 3-D (z, y, x) with the same shape; "
                             f"got {ct_hu.shape} and {pet_suv.shape}. Resample the PET onto the CT "
                             f"first (or use Segmenter.segment with images)")
        images = []
        for arr in (ct_hu, pet_suv):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing([float(v) for v in spacing])
            img.SetOrigin([float(v) for v in origin])
            if direction is not None:
                img.SetDirection([float(v) for v in direction])
            images.append(img)
        return self.segment(*images)

    @property
    def device_name(self) -> str:
        """Device for reports: GPU model, or the CPU thread count used while segmenting."""
        if self.device.type == "cpu" and self.threads:
            return f"cpu ({plural(self.threads, 'thread')})"
        return devices.describe_device(self.device)

    # -- engine -------------------------------------------------------------------------------
    def _report(self, fraction: float, message: str) -> None:
        if self.progress:
            self.progress(float(min(max(fraction, 0.0), 1.0)), message)

    def _check_cancel(self) -> None:
        if _is_cancelled(self.cancel):
            raise Cancelled("segmentation cancelled by the user; nothing was written")

    def _run(self, ct, pet_suv) -> SegmentationResult:
        """``ct`` and ``pet_suv`` are validated images on one grid."""
        import SimpleITK as sitk
        from vmambax.data.preprocess import slices_to_volume
        from vmambax.data.postprocess import apply_postprocess

        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        self._check_cancel()
        self._report(0.0, "Preprocessing slices")
        with devices.cpu_threads(self.threads):
            t = time.perf_counter()
            # Orientation, windowing, pad-to-square and resize: the shared preprocessing, with the
            # model's windows (uint8 stacks (z, windows, S, S); context slices gathered per batch).
            ct_u8, pet_u8, geometry = self.spec.volume_to_stacks(ct, pet_suv)
            timings["preprocess"] = time.perf_counter() - t
            t = time.perf_counter()
            run, selection = self._select_slices(ct, geometry)
            timings["slice_selection"] = time.perf_counter() - t

            t = time.perf_counter()
            if run is None:
                prob = self._predict_slices(ct_u8, pet_u8, start=0.05, stop=0.9)
            else:
                prob = np.zeros((ct_u8.shape[0],) + ct_u8.shape[2:], dtype=np.float32)
                idx = np.flatnonzero(run)
                prob[idx] = self._predict_slices(ct_u8, pet_u8, idx, start=0.05, stop=0.9)
            timings["inference"] = time.perf_counter() - t

            self._check_cancel()
            self._report(0.9, "Mapping the segmentation back to the CT grid")
            t = time.perf_counter()
            # Probabilities (not masks) go back through the inverse resize, then prob > 0.5 on
            # the CT's own voxels: thresholding after the resize keeps lesion borders sub-pixel.
            prob_native = slices_to_volume(prob, geometry)
            del prob
            mask = apply_postprocess((prob_native > self.threshold).astype(np.uint8),
                                     self.spec.postprocess)
            label = sitk.GetImageFromArray(mask)
            label.CopyInformation(ct)
            probability = None
            if self.keep_probability:
                probability = sitk.GetImageFromArray(prob_native)
                probability.CopyInformation(ct)
            timings["postprocess"] = time.perf_counter() - t

            self._report(0.95, "Measuring lesions")
            t = time.perf_counter()
            lesions, totals = quantify(label, pet_suv)
            timings["quantify"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_start
        timings = {k: round(v, 4) for k, v in timings.items()}
        self._report(1.0, f"Done: {plural(len(lesions), 'lesion')}")
        return SegmentationResult(
            label=label, probability=probability, lesions=lesions, totals=totals, timings=timings,
            model_name=self.model_info["name"], model=dict(self.model_info),
            device=self.device_name, scan_backend=self.scan_backend, batch_size=self.batch_size,
            amp=str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else None,
            n_slices=int(ct_u8.shape[0]), n_slices_run=int(selection["slices_run"]),
            slice_selection=selection)

    def _select_slices(self, ct, geometry):
        """``(run, summary)``: the slices to segment (None = all) and the report entry."""
        from vmambax.infer.lung_field import DEFAULT_MARGIN_MM, all_slices, lung_field

        n = geometry.shape[0]
        if self.all_slices:
            return None, all_slices(n)
        import SimpleITK as sitk

        spacing = geometry.spacing or (1.0, 1.0, 1.0)
        axial = geometry.axes.to_axial(sitk.GetArrayViewFromImage(ct))
        margin = DEFAULT_MARGIN_MM if self.lung_margin_mm is None else float(self.lung_margin_mm)
        field = lung_field(axial, spacing, margin_mm=margin)
        return (None if field.n_run == n else field.run), field.summary()

    def predict_slices(self, ct_u8: np.ndarray, pet_u8: np.ndarray) -> np.ndarray:
        """Probabilities for preprocessed uint8 stacks (benchmarks, PCLT20K PNGs): ``(z, S, S)``
        single-window slices or ``volume_to_stacks``' ``(z, windows, S, S)``, with this
        Segmenter's thread count, batching and out-of-memory back-off."""
        if ct_u8.ndim == 3:
            ct_u8, pet_u8 = ct_u8[:, None], pet_u8[:, None]
        with devices.cpu_threads(self.threads):
            return self._predict_slices(ct_u8, pet_u8)

    def _predict_slices(self, ct_u8: np.ndarray, pet_u8: np.ndarray, indices=None,
                        start: float = 0.0, stop: float = 1.0) -> np.ndarray:
        """Sigmoid probabilities ``(len(indices), S, S)`` for the slices ``indices`` (default
        all) of uint8 ``(z, windows, S, S)`` stacks, batch by batch; neighbouring slices for the
        model's context come from the whole stacks.

        Out-of-memory halves the batch and retries the same slices; the smaller size is kept for
        the rest of the volume and later calls.
        """
        indices = np.arange(ct_u8.shape[0]) if indices is None else np.asarray(indices)
        n = len(indices)
        prob = np.empty((n,) + ct_u8.shape[2:], dtype=np.float32)
        i = 0
        while i < n:
            self._check_cancel()
            bs = min(self.batch_size, n - i)
            rows = indices[i:i + bs]
            try:
                prob[i:i + bs] = self._forward(self.spec.gather(ct_u8, rows),
                                               self.spec.gather(pet_u8, rows))
            except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                if not devices.is_out_of_memory(exc):
                    raise
                devices.release_cached_memory(self.device)
                if bs <= 1:
                    raise DeviceError(
                        f"{self.device} ran out of memory even with 1 slice per batch; close other "
                        f"GPU programs, use --device cpu, or a smaller model") from exc
                self.batch_size = (bs + 1) // 2  # halve (rounding up), retry the same slices
                self._report(start + (stop - start) * i / n,
                             f"Out of memory: retrying with batch size {self.batch_size}")
                continue
            i += bs
            self._report(start + (stop - start) * i / n, f"Segmented {i}/{n} slices")
        return prob

    def _forward(self, ct_u8: np.ndarray, pet_u8: np.ndarray) -> np.ndarray:
        """One batch: uint8 (b, C, S, S) network channels -> float32 probabilities (b, S, S)."""
        from vmambax.data.preprocess import normalize_uint8

        b = ct_u8.shape[0]
        # Static shapes for torch.compile / CUDA graphs: pad the last batch (eval-mode layers are
        # per-sample, so padding cannot change the real slices' outputs).
        pad = self.batch_size - b if self.compiled and b < self.batch_size else 0
        tensors = []
        for arr in (ct_u8, pet_u8):
            x = torch.from_numpy(np.ascontiguousarray(arr)).to(self.device, non_blocking=True)
            if pad:
                x = torch.cat([x, x.new_zeros((pad,) + tuple(x.shape[1:]))])
            x = normalize_uint8(x.float())  # uint8 over the bus, float on device
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            tensors.append(x)
        with torch.inference_mode(), devices.autocast(self.device, self.amp_dtype):
            logits = self.model(*tensors)
        return torch.sigmoid(logits[:b, 0].float()).cpu().numpy()


def quantify(label, pet_suv) -> tuple[list[dict], dict]:
    """Per-lesion and total PET measures of a label image (``vmambax.metrics`` does the maths):
    lesions sorted by MTV with id, voxels, mtv_ml, suv_max, suv_mean, suv_peak, tlg, centroid_mm."""
    import SimpleITK as sitk
    from vmambax.metrics import quantify_lesions

    q = quantify_lesions(label, pet_suv)
    lesions = []
    for les in q["lesions"]:
        les = dict(les)
        les["centroid_mm"] = les.pop("centroid")  # physical LPS mm for images
        lesions.append({k: round(v, 4) if isinstance(v, float) else v for k, v in les.items()})
    totals = dict(q["total"])
    totals["voxels"] = int(sitk.GetArrayViewFromImage(label).sum(dtype=np.int64))
    totals["suv_peak_radius_mm"] = q.get("peak_radius_mm")
    return lesions, totals
