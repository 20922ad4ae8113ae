"""The shared preprocessing: windows, rounding, padding/resizing and the exact inverse."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from vmambax.data.preprocess import (CT_WINDOW_HU, SUV_WINDOW, SliceGeometry, ct_to_uint8,
                                     mask_to_slices, normalize_uint8, preprocessing_info,
                                     resize_slices, slices_to_label, slices_to_volume,
                                     suv_to_uint8, volume_to_slices)
from vmambax.errors import InputError


def test_windows_and_rounding():
    assert CT_WINDOW_HU == (-1200.0, -200.0) and SUV_WINDOW == (0.0, 15.0)
    np.testing.assert_array_equal(ct_to_uint8([-3000, -1200, -700, -200, 500]),
                                  [0, 0, 128, 255, 255])
    np.testing.assert_array_equal(suv_to_uint8([-0.5, 0.0, 2.5, 7.5, 15.0, 40.0]),
                                  [0, 0, 42, 128, 255, 255])
    assert ct_to_uint8(np.array([-1000.0])).dtype == np.uint8
    assert preprocessing_info()["suv_window"] == [0.0, 15.0]


def test_normalize_numpy_and_torch_agree():
    v = np.array([0, 1, 128, 254, 255], np.uint8)
    a = normalize_uint8(v)
    b = normalize_uint8(torch.from_numpy(v))
    assert a.dtype == np.float32 and b.dtype == torch.float32
    np.testing.assert_allclose(a, [-1.6, -1.6 + 3.2 / 255, 128 / 255 * 3.2 - 1.6,
                                   254 / 255 * 3.2 - 1.6, 1.6], atol=1e-6)
    np.testing.assert_allclose(b.numpy(), a, atol=1e-7)


def test_resize_is_bilinear_half_pixel():
    x = np.arange(4, dtype=np.float32)[None, None, :].repeat(2, 1)  # (1, 2, 4)
    up = resize_slices(x, (2, 8))
    # align_corners=False: sample positions (i + 0.5) / 2 - 0.5, clamped at the borders.
    np.testing.assert_allclose(up[0, 0], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3], atol=1e-6)
    ramp = np.tile(np.arange(64, dtype=np.float32), (1, 64, 1))
    down = resize_slices(ramp, (32, 32))
    # Shrinking averages (antialias) instead of skipping pixels: a ramp stays a ramp inside.
    np.testing.assert_allclose(down[0, 5, 1:-1], np.arange(1, 31) * 2 + 0.5, atol=1e-4)
    noise = np.random.default_rng(0).random((1, 128, 128)).astype(np.float32)
    # Plain bilinear keeps half the noise std at 4x shrink (~0.14); antialiasing averages ~0.05.
    assert resize_slices(noise, (32, 32)).std() < 0.3 * noise.std()


def test_non_square_padding_geometry_and_inverse():
    g = SliceGeometry.for_volume(np.zeros((3, 40, 60)), size=64)
    assert (g.side, g.pad_top, g.pad_left) == (60, 10, 0)
    # A smooth field survives the round trip closely; the padding is cropped away.
    y, x = np.mgrid[0:40, 0:60]
    field = np.sin(x / 9.0) + np.cos(y / 7.0)
    vol = np.repeat(field[None], 3, 0).astype(np.float32)
    net = g.to_network(vol)
    assert net.shape == (3, 64, 64)
    assert np.all(net[:, :4] == 0)  # padded rows at the top stay at the pad value
    back = g.from_network(net)
    assert back.shape == vol.shape
    assert np.abs(back - vol)[:, 2:-2, 2:-2].max() < 0.05
    with pytest.raises(InputError, match="does not match the geometry"):
        g.from_network(np.zeros((3, 32, 32)))


def test_label_round_trip_through_network_size():
    label = np.zeros((2, 50, 70), np.uint8)
    yy, xx = np.mgrid[0:50, 0:70]
    label[1][(yy - 25) ** 2 + (xx - 40) ** 2 < 100] = 1
    g = SliceGeometry.for_volume(label, size=128)
    masks = mask_to_slices(label, g)
    assert masks.dtype == np.uint8 and set(np.unique(masks)) == {0, 1} and masks[0].sum() == 0
    back = slices_to_label(masks.astype(np.float32), g)
    dice = 2 * (back & label).sum() / (back.sum() + label.sum())
    assert dice > 0.97 and back[0].sum() == 0
    # (z, 1, H, W) tensors straight from a network are accepted.
    prob = torch.from_numpy(masks.astype(np.float32))[:, None]
    np.testing.assert_array_equal(slices_to_volume(prob, g) > 0.5, back.astype(bool))


def test_volume_to_slices_reorients_and_inverts_exactly():
    """A flipped/permuted CT gives display-oriented slices and a label on the CT's own voxels."""
    hu = np.full((4, 30, 20), -1000.0, np.float32)
    hu[2, 3, 5] = 0.0  # a marker voxel
    ct = sitk.GetImageFromArray(hu)
    ct.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))  # x axis runs towards patient right
    pet = sitk.GetImageFromArray(np.zeros_like(hu) + 1.0)
    pet.CopyInformation(ct)
    ct_u8, pet_u8, g = volume_to_slices(ct, pet, size=30)
    assert ct_u8.shape == pet_u8.shape == (4, 30, 30) and ct_u8.dtype == np.uint8
    assert g.axes.flip == (False, False, True)
    # Display order: the marker appears mirrored in x (column 20-1-5 = 14, plus 5 columns of pad).
    row, col = np.unravel_index(np.argmax(ct_u8[2]), (30, 30))
    assert (row, col) == (3, 14 + 5)
    assert pet_u8[0, 15, 15] == suv_to_uint8(1.0)
    back = slices_to_label((ct_u8 > 128).astype(np.float32), g)
    assert back.shape == hu.shape and back[2, 3, 5] == 1 and back.sum() == 1
    other = sitk.GetImageFromArray(np.zeros((4, 30, 21), np.float32))
    with pytest.raises(InputError, match="size"):
        volume_to_slices(ct, other, size=30)
