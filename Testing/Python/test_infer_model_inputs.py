"""A model's own inputs (InputSpec in its file) drive segment; ensembles, test-time flips and
post-processing behave as their definitions say."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from vmambax.data.input_spec import PAPER, InputSpec, in_chans_for, parse_windows
from vmambax.data.preprocess import normalize_uint8, preprocessing_info
from vmambax.errors import ConfigError
from vmambax.infer import Segmenter
from vmambax.model import build_model
from vmambax.model.checkpoint import load_model_file, model_file_info, save_model_file
from vmambax.model.ensemble import Ensemble


def _volume(z=6, n=40, seed=0):
    """A CT with a soft-tissue ramp (-300..500 HU) and a PET with a hot spot, on one grid."""
    rng = np.random.default_rng(seed)
    ct = np.broadcast_to(np.linspace(-300, 500, n, dtype=np.float32), (z, n, n)).copy()
    ct[:, :4] = -1000  # air at the front, so that a lung window is not constant
    ct += rng.normal(0, 5, ct.shape).astype(np.float32)
    pet = np.full((z, n, n), 0.8, np.float32)
    pet[:, 15:25, 15:25] = 9.0
    images = []
    for arr in (ct, pet):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((1.5, 1.5, 3.0))
        images.append(img)
    return images


class _Capture:
    """Forward pre-hook that keeps the (ct, pet) tensors the network receives."""

    def __init__(self, module):
        self.inputs = []
        module.register_forward_pre_hook(lambda m, args: self.inputs.append(
            tuple(a.detach().clone() for a in args)))


def _save(path, model, spec=None, pre=None):
    return save_model_file(path, model, config_name="vmambax-nano",
                           preprocessing=pre if pre is not None else spec.to_dict(), metadata={})


def test_a_model_files_preprocessing_is_used_by_segment(tmp_path):
    spec = InputSpec(ct_windows=parse_windows("soft,lung,bone"), suv_windows=((0.0, 20.0),),
                     image_size=128, threshold=0.4)
    model = build_model("vmambax-nano", in_chans=spec.in_chans)
    path = _save(tmp_path / "m.pt", model, spec)
    assert model_file_info(path)["format_version"] == 2  # older readers refuse it
    seg = Segmenter(path, device="cpu", all_slices=True)
    assert seg.spec == spec and seg.threshold == 0.4 and seg.image_size == 128
    cap = _Capture(seg.model)
    ct, pet = _volume()
    result = seg.segment(ct, pet)
    ct_in, pet_in = cap.inputs[0]
    assert ct_in.shape[1:] == (3, 128, 128) and pet_in.shape[1:] == (1, 128, 128)
    # each CT channel is its own window of the HU, made the papers' way (window, resize, round)
    from vmambax.data.preprocess import volume_to_channels

    want_ct, want_pet, _ = volume_to_channels(ct, pet, spec.ct_windows, spec.suv_windows, 128)
    n = ct_in.shape[0]
    assert torch.equal(ct_in, normalize_uint8(torch.from_numpy(want_ct[:n]).float()))
    assert torch.equal(pet_in, normalize_uint8(torch.from_numpy(want_pet[:n]).float()))
    assert not torch.equal(ct_in[:, 0], ct_in[:, 1])  # really different windows
    assert result.model["preprocessing"]["ct_windows_hu"][0] == [-160.0, 240.0]


def test_a_model_file_without_a_spec_means_the_papers_inputs(tmp_path, nano_file):
    seg = Segmenter(nano_file, device="cpu", all_slices=True)
    assert seg.spec == PAPER.replace(image_size=128)
    assert model_file_info(nano_file)["format_version"] == 1  # papers' inputs: readable by older VMambaX
    cap = _Capture(seg.model)
    ct, pet = _volume()
    seg.segment(ct, pet)
    from vmambax.data.preprocess import volume_to_slices

    want, _, _ = volume_to_slices(ct, pet, 128)
    ct_in = cap.inputs[0][0]
    assert ct_in.shape[1] == 1
    assert torch.equal(ct_in[:, 0], normalize_uint8(torch.from_numpy(want[:ct_in.shape[0]]).float()))


def test_neighbouring_slices_are_gathered_with_the_ends_repeated():
    spec = InputSpec(ct_windows=((-100.0, 100.0),), context=1)
    stack = np.arange(4, dtype=np.uint8)[:, None, None, None] * np.ones((1, 1, 2, 2), np.uint8)
    out = spec.gather(stack, [0, 3])
    assert out.shape == (2, 3, 2, 2)
    assert out[0, :, 0, 0].tolist() == [0, 0, 1] and out[1, :, 0, 0].tolist() == [2, 3, 3]
    both = InputSpec(ct_windows=((-100.0, 100.0), (0, 50)), suv_windows=((0, 5), (0, 20)), context=1)
    assert both.ct_channels == 6 and both.pet_channels == 6 and both.in_chans == 6
    with pytest.raises(ConfigError, match="same channel count"):  # 6 CT and 3 PET channels
        InputSpec(ct_windows=((-100.0, 100.0), (0.0, 50.0)), context=1)
    assert in_chans_for(1, 1) == 3 and in_chans_for(3, 1) == 3 and in_chans_for(2, 1) == 2


def test_spec_round_trips_and_bad_specs_are_clear_errors():
    spec = InputSpec(ct_windows=((-160, 240), (-1000, 200)), suv_windows=((0, 5), (0, 25)), context=1,
                     image_size=256, threshold=0.35, tta="hvflip", postprocess="largest")
    assert InputSpec.from_dict(spec.to_dict()) == spec
    assert InputSpec.from_dict({}) == PAPER
    assert InputSpec.from_dict(preprocessing_info(256)) == PAPER.replace(image_size=256)
    for bad, words in ((dict(ct_windows=((10, -10),)), "high > low"), (dict(tta="spin"), "tta"),
                       (dict(threshold=1.5), "threshold"), (dict(postprocess="x"), "postprocess")):
        with pytest.raises(ConfigError, match=words):
            InputSpec(**bad)
    with pytest.raises(ConfigError, match="neither a window name"):
        parse_windows("soft,wobbly")


def test_the_ensemble_is_the_mean_of_its_members_probabilities(tmp_path):
    spec = InputSpec(ct_windows=parse_windows("soft"), image_size=128)
    members = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        members.append(build_model("vmambax-nano").eval())
    paths = [_save(tmp_path / f"m{i}.pt", m, spec) for i, m in enumerate(members)]
    ens_path = _save(tmp_path / "ensemble.pt", Ensemble(members), spec)
    loaded, info = load_model_file(ens_path)
    assert isinstance(loaded, Ensemble) and info["members"] == 3
    assert ens_path.stat().st_size < 3.5 * paths[0].stat().st_size  # first member stored once
    ct, pet = _volume(seed=4)
    probs = [Segmenter(p, device="cpu", all_slices=True, keep_probability=True).segment(ct, pet)
             for p in paths]
    ens = Segmenter(ens_path, device="cpu", all_slices=True, keep_probability=True).segment(ct, pet)
    mean = np.mean([sitk.GetArrayFromImage(r.probability) for r in probs], axis=0)
    got = sitk.GetArrayFromImage(ens.probability)
    assert np.abs(got - mean).max() < 1e-5
    assert ens.model["members"] == 3


def test_horizontal_flip_tta_averages_the_flipped_prediction(tmp_path):
    torch.manual_seed(5)
    model = build_model("vmambax-nano").eval()
    ct = torch.randn(2, 1, 128, 128)
    pet = torch.randn(2, 1, 128, 128)
    from vmambax.model.tta import FlipTTA

    with torch.inference_mode():
        plain = torch.sigmoid(model(ct, pet))
        flipped = torch.sigmoid(model(ct.flip(-1), pet.flip(-1))).flip(-1)
        tta = torch.sigmoid(FlipTTA(model, "hflip")(ct, pet))
    assert torch.allclose(tta, (plain + flipped) / 2, atol=1e-5)
    assert not torch.allclose(tta, plain, atol=1e-4)


def test_largest_component_post_processing_drops_the_small_false_positive(tmp_path):
    from vmambax.data.postprocess import keep_largest_component

    mask = np.zeros((5, 20, 20), np.uint8)
    mask[1:4, 2:10, 2:10] = 1
    mask[2, 15:17, 15:17] = 1
    assert keep_largest_component(mask).sum() == 3 * 64
    assert keep_largest_component(np.zeros((2, 3, 3))).sum() == 0
    # and a model that asks for it gets it from segment
    spec = InputSpec(image_size=128, postprocess="largest", threshold=0.5)
    path = _save(tmp_path / "m.pt", build_model("vmambax-nano"), spec)
    seg = Segmenter(path, device="cpu", all_slices=True)
    assert seg.spec.postprocess == "largest"
