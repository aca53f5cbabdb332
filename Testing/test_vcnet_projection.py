"""VC-Net's 3D-to-2D projection and 2D-to-3D unprojection (``VesselSegLib/models/mip.py``).

Wang et al., VC-Net, section 3.1.1-3.1.2:

* eq. (1): a ``K3``-slice patch gives ``m = floor((K3 - s) / t) + 1`` sliding MIPs; MIP ``k`` (0-based)
  covers slices ``k t .. k t + s - 1`` and records, per pixel, the slice its value came from;
* the ``m`` MIPs are tiled into one ``(m / 2) K1 x 2 K2`` composited image, MIP ``k`` at tile row ``k // 2``
  and tile column ``k % 2`` (Fig. 3a);
* eq. (2): the unprojection puts every MIP pixel's feature vector back on the voxel it came from and
  fuses voxels chosen by several overlapping MIPs with an element-wise maximum per channel; voxels no MIP
  selected get zeros.

The projection and the unprojection are checked against brute-force pure-Python/NumPy loops, the tiling
against arrays written out by hand, plus the gradients, the error messages and the label projection
(``gather_at_indices``, used by the auxiliary MIP loss of eq. 3). Everything runs on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from VesselSegLib.models.mip import (
    composite_tiles,
    gather_at_indices,
    project_sliding_mips,
    sliding_mip_count,
    split_tiles,
    unproject_features,
    valid_mip_settings,
)

# VC-Net's setting: 16-slice patches, 5-slice MIPs every 2 slices -> m = 6 (eq. 1).
DEPTH, SLAB, STRIDE, COUNT = 16, 5, 2, 6


# ------------------------------------------------------------------------------------------ references


def reference_projection(volume: np.ndarray, slab: int, stride: int, mode: str = "max"):
    """Brute-force sliding MIPs of a (B, C, K3, K1, K2) array: loops over every window by hand.

    Returns (mips, indices) of shape (B, C, m, K1, K2); ties take the first slice, like ``torch.max``.
    """
    batch, channels, depth, height, width = volume.shape
    count = 0
    while count * stride + slab <= depth:  # count the windows that fit, without eq. (1)
        count += 1
    mips = np.zeros((batch, channels, count, height, width), dtype=volume.dtype)
    indices = np.zeros((batch, channels, count, height, width), dtype=np.int64)
    better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
    for b in range(batch):
        for c in range(channels):
            for k in range(count):
                for i in range(height):
                    for j in range(width):
                        best_z = k * stride
                        for z in range(k * stride, k * stride + slab):
                            if better(volume[b, c, z, i, j], volume[b, c, best_z, i, j]):
                                best_z = z
                        indices[b, c, k, i, j] = best_z
                        mips[b, c, k, i, j] = volume[b, c, best_z, i, j]
    return mips, indices


def reference_unprojection(features: np.ndarray, indices: np.ndarray, depth: int):
    """Brute-force eq. (2): every MIP pixel's feature vector on its voxel, element-wise max on overlaps.

    Returns (volume (B, C, K3, K1, K2), selected (B, K3, K1, K2) bool).
    """
    batch, channels, count, height, width = features.shape
    volume = np.zeros((batch, channels, depth, height, width), dtype=features.dtype)
    selected = np.zeros((batch, depth, height, width), dtype=bool)
    for b in range(batch):
        for k in range(count):
            for i in range(height):
                for j in range(width):
                    z = indices[b, 0, k, i, j]
                    for c in range(channels):
                        value = features[b, c, k, i, j]
                        if selected[b, z, i, j]:
                            volume[b, c, z, i, j] = max(volume[b, c, z, i, j], value)
                        else:
                            volume[b, c, z, i, j] = value
                    selected[b, z, i, j] = True
    return volume, selected


def distinct_volume(shape, seed: int = 0) -> torch.Tensor:
    """A float volume whose values are a random permutation of 0..N-1: every MIP maximum is unique."""
    generator = torch.Generator().manual_seed(seed)
    numel = int(np.prod(shape))
    return torch.randperm(numel, generator=generator).to(torch.float32).reshape(shape)


def z_ramp(depth: int, height: int, width: int, increasing: bool = True) -> torch.Tensor:
    """(1, 1, K3, K1, K2) volume whose values increase (or decrease) with Z at every pixel."""
    ramp = torch.arange(depth, dtype=torch.float32)
    if not increasing:
        ramp = ramp.flip(0)
    # A per-pixel offset smaller than the Z step keeps every column strictly monotonic but distinct.
    offsets = torch.arange(height * width, dtype=torch.float32).reshape(height, width) / (height * width)
    return (ramp.view(depth, 1, 1) + offsets).reshape(1, 1, depth, height, width)


# ------------------------------------------------- 1. projection + unprojection puts values back in place


def test_projection_matches_brute_force_reference():
    volume = distinct_volume((2, 3, DEPTH, 8, 6), seed=1)
    mips, indices = project_sliding_mips(volume, SLAB, STRIDE)
    ref_mips, ref_indices = reference_projection(volume.numpy(), SLAB, STRIDE)
    assert mips.shape == indices.shape == (2, 3, COUNT, 8, 6)
    assert indices.dtype == torch.int64
    np.testing.assert_array_equal(indices.numpy(), ref_indices)
    np.testing.assert_array_equal(mips.numpy(), ref_mips)


def test_projection_then_unprojection_puts_every_selected_value_back_on_its_voxel():
    volume = distinct_volume((1, 1, DEPTH, 8, 6), seed=0)
    mips, indices = project_sliding_mips(volume, SLAB, STRIDE)
    restored = unproject_features(mips, indices, DEPTH)
    assert restored.shape == volume.shape

    # Brute force, independent of the module: argmax over slices [k t, k t + s) of every column by hand.
    array = volume.numpy()
    expected = np.zeros_like(array)
    selected = np.zeros(array.shape, dtype=bool)
    for k in range(COUNT):
        for i in range(8):
            for j in range(6):
                window = [array[0, 0, z, i, j] for z in range(k * STRIDE, k * STRIDE + SLAB)]
                z = k * STRIDE + int(np.argmax(window))
                expected[0, 0, z, i, j] = array[0, 0, z, i, j]
                selected[0, 0, z, i, j] = True

    np.testing.assert_array_equal(restored.numpy(), expected)
    # Selected voxels carry their own (unique) value, the rest exactly zero.
    np.testing.assert_array_equal(restored.numpy()[selected], array[selected])
    assert (restored.numpy()[~selected] == 0).all()
    # Between 1 and m voxels per column are selected; the 16th slice never is.
    per_column = selected.sum(axis=2)
    assert per_column.min() >= 1 and per_column.max() <= COUNT
    assert not selected[:, :, DEPTH - 1].any()


def test_unprojection_matches_brute_force_eq2_for_random_features():
    volume = distinct_volume((2, 1, DEPTH, 5, 7), seed=2)
    _, indices = project_sliding_mips(volume, SLAB, STRIDE)
    features = torch.randn(2, 4, COUNT, 5, 7, generator=torch.Generator().manual_seed(3))
    restored = unproject_features(features, indices, DEPTH)
    expected, selected = reference_unprojection(features.numpy(), indices.numpy(), DEPTH)
    assert restored.shape == (2, 4, DEPTH, 5, 7)
    np.testing.assert_array_equal(restored.numpy(), expected)
    # Unselected voxels are zero in every channel, even where the features are all negative.
    assert (restored.numpy().transpose(0, 2, 3, 4, 1)[~selected] == 0).all()


# ---------------------------------------------------------------------------- 2. index bookkeeping


@pytest.mark.parametrize(
    ("depth", "slab", "stride"), [(16, 5, 2), (16, 5, 1), (7, 5, 2), (32, 5, 2), (16, 4, 4), (12, 3, 3)]
)
def test_mip_count_is_eq1(depth, slab, stride):
    windows = sum(1 for start in range(0, depth, stride) if start + slab <= depth)
    assert sliding_mip_count(depth, slab, stride) == windows == (depth - slab) // stride + 1


def test_vcnet_setting_gives_six_mips():
    assert sliding_mip_count(DEPTH) == COUNT
    assert sliding_mip_count(DEPTH, SLAB, STRIDE) == COUNT


def test_indices_stay_inside_their_window():
    volume = torch.rand(3, 1, DEPTH, 9, 4, generator=torch.Generator().manual_seed(4))
    _, indices = project_sliding_mips(volume, SLAB, STRIDE)
    start = (torch.arange(COUNT) * STRIDE).view(1, 1, COUNT, 1, 1)
    assert (indices >= start).all()
    assert (indices <= start + SLAB - 1).all()
    # The windows of MIP k are exactly [2k, 2k + 4].
    assert [(k * STRIDE, k * STRIDE + SLAB - 1) for k in range(COUNT)] == [
        (0, 4),
        (2, 6),
        (4, 8),
        (6, 10),
        (8, 12),
        (10, 14),
    ]


def test_last_slice_is_in_no_mip():
    # Slice 15 (0-based, the 16th) is by far the brightest: no MIP may pick it or its value.
    volume = torch.rand(1, 1, DEPTH, 4, 4, generator=torch.Generator().manual_seed(5))
    volume[:, :, DEPTH - 1] = 1000.0
    mips, indices = project_sliding_mips(volume, SLAB, STRIDE)
    assert indices.max().item() == DEPTH - 2
    assert (indices != DEPTH - 1).all()
    assert (mips < 1000.0).all()
    restored = unproject_features(mips, indices, DEPTH)
    assert (restored[:, :, DEPTH - 1] == 0).all()
    # Meanwhile slices 0..14 are each covered by at least one window.
    covered = {z for k in range(COUNT) for z in range(k * STRIDE, k * STRIDE + SLAB)}
    assert covered == set(range(DEPTH - 1))


def test_increasing_volume_selects_the_last_slice_of_every_window():
    mips, indices = project_sliding_mips(z_ramp(DEPTH, 3, 2, increasing=True), SLAB, STRIDE)
    expected = (torch.arange(COUNT) * STRIDE + SLAB - 1).view(1, 1, COUNT, 1, 1).expand(1, 1, COUNT, 3, 2)
    torch.testing.assert_close(indices, expected, rtol=0, atol=0)
    assert indices[0, 0, :, 0, 0].tolist() == [4, 6, 8, 10, 12, 14]
    # The MIP value is the volume's value at that slice (the offset of pixel (0, 0) is 0).
    assert mips[0, 0, :, 0, 0].tolist() == [4.0, 6.0, 8.0, 10.0, 12.0, 14.0]


def test_decreasing_volume_selects_the_first_slice_of_every_window():
    _, indices = project_sliding_mips(z_ramp(DEPTH, 3, 2, increasing=False), SLAB, STRIDE)
    expected = (torch.arange(COUNT) * STRIDE).view(1, 1, COUNT, 1, 1).expand(1, 1, COUNT, 3, 2)
    torch.testing.assert_close(indices, expected, rtol=0, atol=0)
    assert indices[0, 0, :, 0, 0].tolist() == [0, 2, 4, 6, 8, 10]


def test_min_mode_picks_the_minimum():
    increasing = z_ramp(DEPTH, 3, 2, increasing=True)
    mips, indices = project_sliding_mips(increasing, SLAB, STRIDE, mode="min")
    assert indices[0, 0, :, 0, 0].tolist() == [0, 2, 4, 6, 8, 10]
    assert mips[0, 0, :, 0, 0].tolist() == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    _, indices = project_sliding_mips(z_ramp(DEPTH, 3, 2, increasing=False), SLAB, STRIDE, mode="min")
    assert indices[0, 0, :, 0, 0].tolist() == [4, 6, 8, 10, 12, 14]

    volume = distinct_volume((2, 2, DEPTH, 4, 5), seed=6)
    mips, indices = project_sliding_mips(volume, SLAB, STRIDE, mode="min")
    ref_mips, ref_indices = reference_projection(volume.numpy(), SLAB, STRIDE, mode="min")
    np.testing.assert_array_equal(indices.numpy(), ref_indices)
    np.testing.assert_array_equal(mips.numpy(), ref_mips)
    torch.testing.assert_close(mips, -project_sliding_mips(-volume, SLAB, STRIDE)[0])


@pytest.mark.parametrize("mode", ["max", "min"])
def test_ties_take_the_first_slice(mode):
    _, indices = project_sliding_mips(torch.ones(1, 1, DEPTH, 2, 2), SLAB, STRIDE, mode=mode)
    assert (indices[0, 0, :, 1, 1] == torch.arange(COUNT) * STRIDE).all()


def test_other_slab_and_stride_match_brute_force():
    volume = distinct_volume((1, 2, 9, 3, 3), seed=7)
    mips, indices = project_sliding_mips(volume, slab=3, stride=2)  # m = (9 - 3) // 2 + 1 = 4
    ref_mips, ref_indices = reference_projection(volume.numpy(), 3, 2)
    assert indices.shape[2] == 4
    np.testing.assert_array_equal(indices.numpy(), ref_indices)
    np.testing.assert_array_equal(mips.numpy(), ref_mips)


# --------------------------------------------------------------------------------- 3. composited tiles


def test_composite_of_constant_tiles_by_hand():
    # 6 MIPs of 2 x 3 pixels, MIP k filled with k -> 3 tile rows, 2 tile columns.
    mips = torch.arange(COUNT, dtype=torch.float32).view(1, 1, COUNT, 1, 1).expand(1, 1, COUNT, 2, 3)
    composite = composite_tiles(mips)
    expected = torch.tensor(
        [
            [0, 0, 0, 1, 1, 1],
            [0, 0, 0, 1, 1, 1],
            [2, 2, 2, 3, 3, 3],
            [2, 2, 2, 3, 3, 3],
            [4, 4, 4, 5, 5, 5],
            [4, 4, 4, 5, 5, 5],
        ],
        dtype=torch.float32,
    )
    assert composite.shape == (1, 1, 6, 6)
    torch.testing.assert_close(composite[0, 0], expected, rtol=0, atol=0)


def test_composite_of_distinct_pixels_by_hand():
    # MIP k, pixel (i, j) holds 6 k + 3 i + j.
    mips = torch.arange(36).view(1, 1, COUNT, 2, 3)
    composite = composite_tiles(mips)
    expected = torch.tensor(
        [
            [0, 1, 2, 6, 7, 8],
            [3, 4, 5, 9, 10, 11],
            [12, 13, 14, 18, 19, 20],
            [15, 16, 17, 21, 22, 23],
            [24, 25, 26, 30, 31, 32],
            [27, 28, 29, 33, 34, 35],
        ]
    )
    torch.testing.assert_close(composite[0, 0], expected, rtol=0, atol=0)


def test_composite_shape_is_half_m_k1_by_2_k2():
    mips = torch.rand(2, 3, COUNT, 32, 24)
    composite = composite_tiles(mips)
    assert composite.shape == (2, 3, (COUNT // 2) * 32, 2 * 24)
    for k in range(COUNT):
        row, column = k // 2, k % 2
        tile = composite[:, :, row * 32 : (row + 1) * 32, column * 24 : (column + 1) * 24]
        torch.testing.assert_close(tile, mips[:, :, k], rtol=0, atol=0)


@pytest.mark.parametrize("count", [2, 4, 6, 8])
def test_split_tiles_round_trips_exactly(count):
    mips = torch.randn(2, 3, count, 5, 7, generator=torch.Generator().manual_seed(count))
    composite = composite_tiles(mips)
    assert torch.equal(split_tiles(composite, count), mips)
    assert torch.equal(composite_tiles(split_tiles(composite, count)), composite)


# --------------------------------------------------------------------------- 4. overlap fusion (eq. 2)


def bright_voxel_at_slice_4():
    """One 1 x 1 column: a bright voxel at slice 4 (picked by MIPs 0, 1, 2), a small Z ramp elsewhere.

    The ramp makes MIPs 3, 4, 5 pick slices 10, 12, 14, each chosen by a single MIP.
    """
    volume = torch.arange(DEPTH, dtype=torch.float32).view(1, 1, DEPTH, 1, 1) * 0.01
    volume[0, 0, 4] = 100.0
    return volume


def test_voxel_shared_by_overlapping_mips_gets_channelwise_max():
    _, indices = project_sliding_mips(bright_voxel_at_slice_4(), SLAB, STRIDE)
    assert indices.flatten().tolist() == [4, 4, 4, 10, 12, 14]
    # features[channel][mip]: a different MIP wins in each channel; channel 2 is all negative, so the
    # fused value must be the max of the MIPs, not of the MIPs and a zero fill.
    features = torch.tensor(
        [
            [5.0, 1.0, 2.0, 10.0, 11.0, 12.0],
            [-1.0, 7.0, 3.0, 20.0, 21.0, 22.0],
            [-4.0, -3.0, -2.0, -30.0, -31.0, -32.0],
        ]
    ).view(1, 3, COUNT, 1, 1)
    restored = unproject_features(features, indices, DEPTH)[0, :, :, 0, 0]  # (C, K3)
    expected = torch.zeros(3, DEPTH)
    expected[:, 4] = torch.tensor([5.0, 7.0, -2.0])
    expected[:, 10] = torch.tensor([10.0, 20.0, -30.0])
    expected[:, 12] = torch.tensor([11.0, 21.0, -31.0])
    expected[:, 14] = torch.tensor([12.0, 22.0, -32.0])
    torch.testing.assert_close(restored, expected, rtol=0, atol=0)


def test_fused_voxel_gradient_goes_to_the_winning_mip():
    _, indices = project_sliding_mips(bright_voxel_at_slice_4(), SLAB, STRIDE)
    features = torch.tensor(
        [[5.0, 1.0, 2.0, 1.0, 1.0, 1.0], [-1.0, 7.0, 3.0, 1.0, 1.0, 1.0]], requires_grad=True
    )
    unproject_features(features.view(1, 2, COUNT, 1, 1), indices, DEPTH).sum().backward()
    expected = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(features.grad, expected, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ 5. gradients


def test_gradients_reach_every_mip_pixel():
    # An increasing volume makes each MIP select its own slice (2k + 4): no overlaps, so every feature
    # element must get the gradient of its own voxel.
    volume = z_ramp(DEPTH, 4, 3, increasing=True)
    _, indices = project_sliding_mips(volume, SLAB, STRIDE)
    features = torch.randn(1, 2, COUNT, 4, 3, generator=torch.Generator().manual_seed(8))
    features.requires_grad_(True)
    restored = unproject_features(features, indices, DEPTH)
    restored.sum().backward()
    assert torch.equal(features.grad, torch.ones_like(features))

    # With a voxel-dependent weight the gradient of each MIP pixel is the weight of its own voxel.
    features.grad = None
    weights = torch.rand(1, 2, DEPTH, 4, 3, generator=torch.Generator().manual_seed(9)) + 0.5
    (unproject_features(features, indices, DEPTH) * weights).sum().backward()
    torch.testing.assert_close(features.grad, gather_at_indices(weights, indices), rtol=0, atol=0)
    assert (features.grad != 0).all()


def test_gradients_are_nonzero_exactly_at_the_selected_mip_pixels():
    volume = distinct_volume((1, 1, DEPTH, 8, 6), seed=10)
    _, indices = project_sliding_mips(volume, SLAB, STRIDE)
    # Distinct features: no ties, so at a voxel shared by several MIPs only the maximum gets a gradient.
    features = distinct_volume((1, 3, COUNT, 8, 6), seed=11) - 400.0
    features.requires_grad_(True)
    restored = unproject_features(features, indices, DEPTH)
    restored.sum().backward()

    expected_volume, selected = reference_unprojection(features.detach().numpy(), indices.numpy(), DEPTH)
    winners = features.detach().numpy() == np.take_along_axis(
        expected_volume, np.broadcast_to(indices.numpy(), features.shape), axis=2
    )
    grad = features.grad.numpy()
    np.testing.assert_array_equal(grad != 0, winners)
    np.testing.assert_array_equal(grad[winners], 1.0)
    # Every voxel any MIP selected got exactly one winning MIP pixel per channel.
    assert winners.sum() == 3 * selected.sum()


def test_projection_gradient_counts_the_mips_that_chose_a_voxel():
    volume = distinct_volume((1, 1, DEPTH, 3, 3), seed=12).requires_grad_(True)
    mips, indices = project_sliding_mips(volume, SLAB, STRIDE)
    mips.sum().backward()
    counts = torch.zeros_like(volume).scatter_add_(2, indices, torch.ones_like(mips))
    torch.testing.assert_close(volume.grad, counts, rtol=0, atol=0)


# --------------------------------------------------------------------------------- 6. bad patch shapes


@pytest.mark.parametrize(
    ("depth", "slab", "stride", "fragment"),
    [
        (3, 5, 2, r"need 1 <= stride \(2\) <= slab \(5\) <= patch depth \(3\)"),  # depth < slab
        (16, 3, 4, r"need 1 <= stride \(4\) <= slab \(3\)"),  # stride > slab: slices skipped
        (16, 5, 0, r"need 1 <= stride \(0\)"),
        (9, 5, 2, r"m = 3 MIPs cannot fill a 2-column composite"),  # odd m
        (17, 5, 2, r"m = 7 MIPs cannot fill"),
    ],
)
def test_settings_that_do_not_tile_are_refused_with_valid_choices(depth, slab, stride, fragment):
    with pytest.raises(ValueError, match=fragment) as caught:
        sliding_mip_count(depth, slab, stride)
    message = str(caught.value)
    assert f"do not tile a {depth}-slice patch" in message
    assert f"Valid choices for {depth} slices:" in message
    assert "slab=" in message and "stride=" in message  # at least one concrete suggestion
    # The same check guards the projection itself.
    with pytest.raises(ValueError, match="Valid choices"):
        project_sliding_mips(torch.rand(1, 1, depth, 2, 2), slab, stride)


def test_odd_mip_count_example_and_its_even_neighbour():
    assert (9 - 5) // 2 + 1 == 3
    with pytest.raises(ValueError, match="cannot fill"):
        sliding_mip_count(9, 5, 2)
    assert sliding_mip_count(7, 5, 2) == 2  # 7 slices: windows 0-4 and 2-6, m = 2 is even


@pytest.mark.parametrize("depth", [3, 7, 9, 16, 17, 32])
def test_every_suggested_choice_is_accepted(depth):
    suggestions = valid_mip_settings(depth)
    assert suggestions
    for slab, stride in suggestions:
        assert sliding_mip_count(depth, slab, stride) % 2 == 0
    message = ""
    try:
        sliding_mip_count(depth, slab=depth + 1, stride=1)
    except ValueError as error:
        message = str(error)
    for slab, stride in suggestions:
        assert f"slab={slab} stride={stride}" in message


def test_vcnet_default_is_the_first_suggestion_for_16_slices():
    assert valid_mip_settings(DEPTH)[0] == (SLAB, STRIDE)


def test_depth_with_no_valid_setting_says_none():
    with pytest.raises(ValueError, match="Valid choices for 1 slices: none"):
        sliding_mip_count(1, 1, 1)


def test_4d_input_to_projection_is_refused():
    with pytest.raises(ValueError, match=r"Expected a \(B, C, Z, Y, X\) tensor, got shape \(1, 16, 8, 8\)"):
        project_sliding_mips(torch.rand(1, 16, 8, 8))


def test_unknown_projection_mode_is_refused():
    with pytest.raises(ValueError, match=r"must be 'max' or 'min', got 'mean'"):
        project_sliding_mips(torch.rand(1, 1, DEPTH, 2, 2), mode="mean")


@pytest.mark.parametrize(
    "indices_shape",
    [
        (1, 2, COUNT, 4, 4),  # one index map per channel instead of one shared map
        (1, 1, COUNT - 2, 4, 4),  # wrong m
        (1, 1, COUNT, 4, 5),  # wrong K2
        (2, 1, COUNT, 4, 4),  # wrong batch
    ],
)
def test_mismatched_indices_are_refused(indices_shape):
    features = torch.rand(1, 3, COUNT, 4, 4)
    indices = torch.zeros(indices_shape, dtype=torch.int64)
    with pytest.raises(ValueError, match="do not match features") as caught:
        unproject_features(features, indices, DEPTH)
    assert "expected (B, 1, m, K1, K2)" in str(caught.value)


def test_non_5d_features_or_indices_are_refused():
    with pytest.raises(ValueError, match=r"must be \(B, C, m, K1, K2\) tensors"):
        unproject_features(torch.rand(3, COUNT, 4, 4), torch.zeros(1, 1, COUNT, 4, 4, dtype=torch.int64), 16)
    with pytest.raises(ValueError, match=r"must be \(B, C, m, K1, K2\) tensors"):
        unproject_features(torch.rand(1, 3, COUNT, 4, 4), torch.zeros(1, COUNT, 4, 4, dtype=torch.int64), 16)


def test_odd_tile_counts_are_refused():
    with pytest.raises(ValueError, match="use an even count"):
        composite_tiles(torch.rand(1, 1, 3, 2, 2))
    with pytest.raises(ValueError, match="does not split into 3 tiles"):
        split_tiles(torch.rand(1, 1, 6, 4), 3)
    with pytest.raises(ValueError, match="does not split into 6 tiles"):
        split_tiles(torch.rand(1, 1, 7, 4), 6)  # 7 rows do not make 3 tile rows
    with pytest.raises(ValueError, match="does not split into 6 tiles"):
        split_tiles(torch.rand(1, 1, 6, 5), 6)  # 5 columns do not make 2 tile columns


# ------------------------------------------------------------------------------ 7. label projection


def test_gather_takes_the_label_of_the_voxel_the_image_selected():
    # Two pixels of a 16-slice patch; look at MIP 0 (slices 0-4).
    image = torch.zeros(1, 1, DEPTH, 1, 2)
    labels = torch.zeros(1, 1, DEPTH, 1, 2)
    image[0, 0, 1, 0, 0] = 1.0  # pixel 0: the image MIP picks slice 1 ...
    labels[0, 0, 3, 0, 0] = 1.0  # ... while the vessel label sits on slice 3
    image[0, 0, 3, 0, 1] = 1.0  # pixel 1: image and label agree on slice 3
    labels[0, 0, 3, 0, 1] = 1.0
    _, indices = project_sliding_mips(image, SLAB, STRIDE)
    assert indices[0, 0, 0].tolist() == [[1, 3]]
    projected = gather_at_indices(labels, indices)
    assert projected.shape == (1, 1, COUNT, 1, 2)
    assert projected[0, 0, 0].tolist() == [[0.0, 1.0]]  # not the label MIP ...
    label_mip, _ = project_sliding_mips(labels, SLAB, STRIDE)
    assert label_mip[0, 0, 0].tolist() == [[1.0, 1.0]]  # ... which would say "vessel" at pixel 0


def test_gather_matches_brute_force_for_multichannel_labels():
    image = distinct_volume((2, 1, DEPTH, 4, 3), seed=13)
    _, indices = project_sliding_mips(image, SLAB, STRIDE)
    generator = torch.Generator().manual_seed(14)
    classes = torch.randint(0, 3, (2, DEPTH, 4, 3), generator=generator)
    one_hot = torch.nn.functional.one_hot(classes, 3).permute(0, 4, 1, 2, 3).float()  # (B, 3, K3, K1, K2)
    projected = gather_at_indices(one_hot, indices)
    assert projected.shape == (2, 3, COUNT, 4, 3)
    idx = indices.numpy()
    for b in range(2):
        for k in range(COUNT):
            for i in range(4):
                for j in range(3):
                    z = idx[b, 0, k, i, j]
                    assert projected[b, :, k, i, j].argmax().item() == classes[b, z, i, j].item()
                    assert projected[b, :, k, i, j].sum().item() == 1.0
    # For the image itself, gathering at its own indices gives back its MIPs.
    torch.testing.assert_close(gather_at_indices(image, indices), project_sliding_mips(image)[0])
