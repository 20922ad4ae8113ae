"""Segmenter engine: geometry, progress, cancel, OOM back-off, batch invariance, devices, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from vmambax.errors import Cancelled, ConfigError
from vmambax.infer import devices
from vmambax.infer.devices import DeviceError
from vmambax.infer.segmenter import Segmenter


class HotSpotNet(torch.nn.Module):
    """Stand-in network: 'tumour' where normalised PET is bright (fast, deterministic)."""

    def forward(self, ct, pet):
        return (pet + 1.0) * 20.0 + 0.0 * ct  # threshold at normalised -1.0 = SUV ~2.8


def _volume(z=6, y=40, x=48, seed=0):
    rng = np.random.default_rng(seed)
    ct = rng.normal(-700, 100, (z, y, x)).astype(np.float32)
    pet = rng.uniform(0.3, 1.2, (z, y, x)).astype(np.float32)  # background well below SUV 2.8
    pet[2:4, 10:18, 20:30] = 12.0  # one hot lesion over two slices
    return ct, pet


def _image(arr, spacing=(0.8, 0.9, 2.5), origin=(-20.0, 15.0, 100.0),
           direction=(0, 1, 0, -1, 0, 0, 0, 0, 1)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def test_label_has_ct_geometry_and_finds_the_hot_lesion():
    ct, pet = _volume()
    ct_img, pet_img = _image(ct), _image(pet)
    result = Segmenter(HotSpotNet(), device="cpu", batch_size=4, image_size=64, all_slices=True).segment(ct_img, pet_img)
    label = result.label
    assert label.GetSize() == ct_img.GetSize() and label.GetPixelID() == sitk.sitkUInt8
    assert label.GetSpacing() == ct_img.GetSpacing() and label.GetOrigin() == ct_img.GetOrigin()
    assert label.GetDirection() == ct_img.GetDirection()
    mask = sitk.GetArrayFromImage(label)
    truth = pet > 10.0
    assert (mask[truth] == 1).mean() > 0.9 and mask[~truth].mean() < 0.01
    assert len(result.lesions) == 1 and result.lesions[0]["suv_max"] == pytest.approx(12.0, rel=0.01)
    assert result.n_slices == 6 and result.timings["inference"] > 0


def test_pet_on_another_grid_is_resampled_onto_the_ct():
    ct, pet = _volume()
    ct_img = _image(ct, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    pet_img = sitk.Resample(_image(pet, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)),
                            [24, 20, 6], sitk.Transform(), sitk.sitkLinear, (-20.0, 15.0, 100.0),
                            (1.6, 1.8, 2.5), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    result = Segmenter(HotSpotNet(), device="cpu", batch_size=6, image_size=64, all_slices=True).segment(ct_img, pet_img)
    assert result.label.GetSize() == ct_img.GetSize()
    assert sitk.GetArrayFromImage(result.label)[2:4, 11:17, 21:29].all()


def test_progress_is_monotonic_and_ends_at_one():
    ct, pet = _volume(z=7)
    seen = []
    Segmenter(HotSpotNet(), device="cpu", batch_size=2, image_size=64, all_slices=True,
              progress=lambda f, m: seen.append((f, m))).segment_arrays(ct, pet)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert sum("Segmented" in m for _, m in seen) == 4  # ceil(7 / 2) batches


def test_cancel_from_progress_callback_stops_within_one_batch():
    ct, pet = _volume(z=8)
    cancel = threading.Event()
    calls = []

    class Counting(HotSpotNet):
        def forward(self, ct, pet):
            calls.append(ct.shape[0])
            return super().forward(ct, pet)

    def progress(fraction, message):
        if message.startswith("Segmented"):
            cancel.set()  # the user clicks Cancel after the first batch

    seg = Segmenter(Counting(), device="cpu", batch_size=2, image_size=64, all_slices=True, progress=progress,
                    cancel=cancel)
    with pytest.raises(Cancelled, match="nothing was written"):
        seg.segment_arrays(ct, pet)
    assert calls == [2]


def test_out_of_memory_halves_the_batch_and_retries(monkeypatch):
    ct, pet = _volume(z=7)
    reference = Segmenter(HotSpotNet(), device="cpu", batch_size=7, image_size=64, all_slices=True).segment_arrays(ct, pet)
    seg = Segmenter(HotSpotNet(), device="cpu", batch_size=8, image_size=64, all_slices=True)
    real_forward, sizes = seg._forward, []

    def flaky_forward(ct_u8, pet_u8):
        sizes.append(len(ct_u8))
        if len(ct_u8) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(ct_u8, pet_u8)

    monkeypatch.setattr(seg, "_forward", flaky_forward)
    result = seg.segment_arrays(ct, pet)
    assert sizes[:3] == [7, 4, 2] and result.batch_size == 2 and seg.batch_size == 2
    assert np.array_equal(sitk.GetArrayFromImage(result.label),
                          sitk.GetArrayFromImage(reference.label))

    def always_oom(ct_u8, pet_u8):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(seg, "_forward", always_oom)
    with pytest.raises(DeviceError, match="out of memory even with 1 slice.*--device cpu"):
        seg.segment_arrays(ct, pet)


def test_non_oom_errors_are_not_swallowed(monkeypatch):
    seg = Segmenter(HotSpotNet(), device="cpu", batch_size=2, image_size=64, all_slices=True)
    monkeypatch.setattr(seg, "_forward", lambda a, b: (_ for _ in ()).throw(ValueError("bug")))
    with pytest.raises(ValueError, match="bug"):
        seg.segment_arrays(*_volume(z=2))


def test_real_nano_model_is_batch_size_invariant():
    from vmambax.model import build_model

    net = build_model("vmambax-nano").eval()
    ct, pet = _volume(z=3, y=100, x=120)
    out = [Segmenter(net, device="cpu", batch_size=b, image_size=128, all_slices=True, keep_probability=True,
                     threads=1)
           .segment_arrays(ct, pet, spacing=(1.0, 1.0, 3.0)) for b in (1, 3)]
    p1, p3 = (sitk.GetArrayFromImage(r.probability) for r in out)
    assert p1.shape == ct.shape
    np.testing.assert_allclose(p1, p3, atol=1e-4)
    assert np.array_equal(sitk.GetArrayFromImage(out[0].label), sitk.GetArrayFromImage(out[1].label))


def test_resolve_device_and_cpu_thread_restoring():
    assert devices.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert devices.resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        devices.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available.*--device cpu"):
            devices.resolve_device("cuda:0")
    before = torch.get_num_threads()
    with devices.cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    assert devices.is_out_of_memory(RuntimeError("CUDA out of memory"))
    assert not devices.is_out_of_memory(RuntimeError("shape mismatch"))
    assert devices.amp_dtype(torch.device("cpu"), None) is None


def test_bad_arrays_and_options_are_clear_errors():
    with pytest.raises(ConfigError, match="batch size"):
        Segmenter(HotSpotNet(), device="cpu", batch_size=0)
    seg = Segmenter(HotSpotNet(), device="cpu", image_size=64, all_slices=True)
    with pytest.raises(Exception, match="same shape"):
        seg.segment_arrays(np.zeros((2, 8, 8)), np.zeros((3, 8, 8)))
    with pytest.raises(Exception, match="3-D SimpleITK image"):
        seg.segment(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)))


def test_static_shape_padding_for_compiled_models_keeps_results():
    """With torch.compile the last batch is padded to the full batch size (no recompiles);
    the padding must not change the real slices' outputs."""
    ct, pet = _volume(z=7)
    calls = []

    class Recording(HotSpotNet):
        def forward(self, ct, pet):
            calls.append(ct.shape[0])
            return super().forward(ct, pet)

    plain = Segmenter(HotSpotNet(), device="cpu", batch_size=3, image_size=64, all_slices=True).segment_arrays(ct, pet)
    seg = Segmenter(Recording(), device="cpu", batch_size=3, image_size=64, all_slices=True)
    seg.compiled = True  # what compile=True sets (compiling itself needs a C++ toolchain)
    padded = seg.segment_arrays(ct, pet)
    assert calls == [3, 3, 3]
    assert np.array_equal(sitk.GetArrayFromImage(plain.label), sitk.GetArrayFromImage(padded.label))


def test_bf16_autocast_path_runs_and_stays_close_to_fp32():
    """The CUDA default (bf16 autocast) exercised on the CPU: same masks up to rounding."""
    from vmambax.model import build_model

    net = build_model("vmambax-nano").eval()
    ct, pet = _volume(z=1, y=128, x=128)
    fp32, bf16 = (Segmenter(net, device="cpu", amp=amp, image_size=128, all_slices=True, threads=1,
                            keep_probability=True).segment_arrays(ct, pet) for amp in (False, True))
    assert fp32.amp is None and bf16.amp == "bfloat16"
    p32, p16 = (sitk.GetArrayFromImage(r.probability) for r in (fp32, bf16))
    assert np.abs(p32 - p16).max() < 0.05
    disagree = (p32 > 0.5) != (p16 > 0.5)
    assert disagree.mean() < 0.01
