"""The 2PM V-Net's loss (balanced BCE + Sobel TV, eqs. 1-3), weight decay, and its stack preprocessing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from trainer.config import load_config
from trainer.loop import Trainer
from trainer.losses import MIPAuxiliaryLoss, build_loss
from trainer.losses_2pm import (
    PAPER_TV_WEIGHT,
    BalancedBCETVLoss,
    class_balance_beta,
    class_balanced_bce,
    sobel_total_variation_3d,
)
from VesselSegLib.preprocessing import (
    estimate_intensity_scale,
    median_filter_3d,
    preprocess_microscopy_stack,
    scale_intensity,
    subtract_slice_median,
)
from VesselSegLib.request import MicroscopyOptions

TINY = Path(__file__).resolve().parents[1] / "trainer" / "configs" / "tiny_test.toml"


def _tube_target(shape=(12, 12, 12)) -> torch.Tensor:
    """A bar of vessel running along X, shape (1, 1, Z, Y, X)."""
    target = torch.zeros(1, 1, *shape)
    target[..., 5:8, 4:7, :] = 1.0
    return target


# ---------------------------------------------------------------------------------------- total variation


def test_tv_of_a_constant_output_is_zero():
    constant = torch.full((2, 3, 6, 7, 8), 0.37)
    assert float(sobel_total_variation_3d(constant)) == 0.0
    assert float(sobel_total_variation_3d(constant, reduction="mean")) == 0.0


def test_tv_is_larger_for_noise_than_for_a_smooth_blob_with_the_same_values():
    # The blob must vary slowly compared with the kernel: Sobel's [1, 2, 1] smoothing averages noise over
    # 3x3 cross-sections, and a blob of sigma 4 voxels in 16^3 has about the TV of its scattered values.
    z, y, x = np.meshgrid(*(np.arange(32) - 15.5,) * 3, indexing="ij")
    blob = np.exp(-(z**2 + y**2 + x**2) / (2 * 8.0**2)).astype(np.float32)
    # Same voxel values (so the same mean), scattered: only the arrangement differs.
    scattered = np.random.default_rng(0).permutation(blob.ravel()).reshape(blob.shape)
    tv_blob = float(sobel_total_variation_3d(torch.from_numpy(blob)[None, None]))
    tv_noise = float(sobel_total_variation_3d(torch.from_numpy(scattered)[None, None]))
    assert scattered.mean() == pytest.approx(blob.mean())
    assert tv_noise > 1.5 * tv_blob > 0  # about 1.9x


def test_tv_of_a_linear_ramp_is_the_hand_computed_value():
    # P = a z + b y + c x: each 3D Sobel response is 2 x (1 + 2 + 1)^2 = 32 times its slope, at each of the
    # (Z - 2)(Y - 2)(X - 2) inner voxels (eq. 2, summed over voxels).
    a, b, c = 0.05, -0.02, 0.1
    shape = (5, 6, 7)
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in shape), indexing="ij")
    ramp = (a * z + b * y + c * x)[None, None]
    inner = (5 - 2) * (6 - 2) * (7 - 2)
    expected_per_voxel = 32 * (abs(a) + abs(b) + abs(c))
    assert float(sobel_total_variation_3d(ramp)) == pytest.approx(expected_per_voxel * inner)
    assert float(sobel_total_variation_3d(ramp, reduction="mean")) == pytest.approx(expected_per_voxel)


def test_tv_matches_scipy_sobel_on_the_inner_voxels():
    volume = np.random.default_rng(1).random((2, 7, 8, 9))  # two channels
    expected = sum(
        np.abs(ndimage.sobel(channel, axis=axis))[1:-1, 1:-1, 1:-1].sum()
        for channel in volume
        for axis in range(3)
    )
    got = float(sobel_total_variation_3d(torch.from_numpy(volume)[None]))
    assert got == pytest.approx(expected, rel=1e-10)


def test_tv_equals_conv3d_with_the_3x3x3_sobel_kernels():
    difference, smoothing = torch.tensor([-1.0, 0.0, 1.0]), torch.tensor([1.0, 2.0, 1.0])
    kernels = torch.stack(
        [
            torch.einsum("i,j,k->ijk", difference, smoothing, smoothing),
            torch.einsum("i,j,k->ijk", smoothing, difference, smoothing),
            torch.einsum("i,j,k->ijk", smoothing, smoothing, difference),
        ]
    )[:, None].double()
    volume = torch.rand(3, 1, 6, 7, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = torch.nn.functional.conv3d(volume, kernels).abs().sum()
    torch.testing.assert_close(sobel_total_variation_3d(volume), expected)


def test_tv_of_a_volume_thinner_than_the_kernel_is_zero_and_bad_shapes_raise():
    assert float(sobel_total_variation_3d(torch.rand(1, 1, 2, 8, 8))) == 0.0
    with pytest.raises(ValueError, match=r"\(B, C, Z, Y, X\)"):
        sobel_total_variation_3d(torch.rand(8, 8, 8))
    with pytest.raises(ValueError, match="reduction"):
        sobel_total_variation_3d(torch.rand(1, 1, 4, 4, 4), reduction="max")


# ----------------------------------------------------------------------------------------- balanced BCE


def test_beta_is_the_background_fraction_and_weights_the_vessels():
    # 1 vessel voxel out of 4: beta = |Y-| / |Y| = 3/4 on the vessel term, 1 - beta = 1/4 on the background.
    targets = torch.tensor([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 1, 1, 4)
    assert class_balance_beta(targets).tolist() == [0.75]
    logits = torch.tensor([0.5, -1.0, 2.0, 0.0]).reshape(1, 1, 1, 1, 4)
    p = torch.sigmoid(logits).flatten().double()
    by_hand = -(0.75 * torch.log(p[0]) + 0.25 * torch.log(1 - p[1:]).sum())  # eq. (1)
    assert float(class_balanced_bce(logits, targets, reduction="sum")) == pytest.approx(
        float(by_hand), rel=1e-6
    )
    assert float(class_balanced_bce(logits, targets)) == pytest.approx(float(by_hand) / 4, rel=1e-6)


def test_beta_is_computed_per_class_channel_over_the_batch():
    targets = torch.zeros(2, 2, 1, 2, 2)
    targets[0, 0, 0, 0, 0] = 1.0  # channel 0: 1 of 8 voxels
    targets[:, 1, 0, 0, :] = 1.0  # channel 1: 4 of 8 voxels
    torch.testing.assert_close(class_balance_beta(targets), torch.tensor([7 / 8, 0.5]))


def test_balanced_bce_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ"):
        class_balanced_bce(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 2, 4, 4, 4))


# ------------------------------------------------------------------------------------------ the whole loss


def test_combined_loss_decreases_as_the_prediction_approaches_the_target():
    target = _tube_target()
    noise = torch.rand(target.shape, generator=torch.Generator().manual_seed(0))
    loss = BalancedBCETVLoss()
    values = []
    for closeness in (0.0, 0.3, 0.6, 0.9):
        probabilities = (1 - closeness) * noise + closeness * target
        values.append(float(loss.from_probabilities(probabilities, target)))
        logits = torch.logit(probabilities.clamp(1e-4, 1 - 1e-4))
        assert float(loss(logits, target)) == pytest.approx(values[-1], rel=1e-3)
    assert values == sorted(values, reverse=True) and values[-1] < 0.5 * values[0]


def test_tv_term_is_weighted_by_alpha():
    target = _tube_target()
    logits = torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
    without_tv = float(BalancedBCETVLoss(alpha=0.0)(logits, target))
    tv = float(sobel_total_variation_3d(torch.sigmoid(logits)))
    assert float(BalancedBCETVLoss(alpha=1e-3)(logits, target)) == pytest.approx(without_tv + 1e-3 * tv)
    assert BalancedBCETVLoss().alpha == PAPER_TV_WEIGHT == 5e-9


def test_gradients_flow_through_both_terms():
    target = _tube_target()
    logits = torch.randn(target.shape, generator=torch.Generator().manual_seed(2), requires_grad=True)
    BalancedBCETVLoss()(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    tv_only = logits.detach().clone().requires_grad_(True)
    sobel_total_variation_3d(torch.sigmoid(tv_only)).backward()
    assert torch.isfinite(tv_only.grad).all() and tv_only.grad.abs().sum() > 0


def test_bad_loss_arguments_raise():
    with pytest.raises(ValueError, match="alpha"):
        BalancedBCETVLoss(alpha=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        BalancedBCETVLoss(bce_reduction="none")


def test_build_loss_knows_balanced_bce_tv_also_with_a_mip_stream():
    assert isinstance(build_loss("balanced_bce_tv"), BalancedBCETVLoss)
    wrapped = build_loss("balanced_bce_tv", mip_weight=0.2)
    assert isinstance(wrapped, MIPAuxiliaryLoss)
    target = _tube_target()
    assert math.isfinite(float(wrapped(torch.zeros(target.shape), target)))
    with pytest.raises(ValueError, match="balanced_bce_tv"):
        build_loss("tv")


def test_cldice_term_penalises_a_broken_vessel_more_than_a_thickened_one():
    """The soft clDice term is about centrelines: a gap in a tube costs more than extra thickness."""
    target = _tube_target()
    loss = build_loss("dice_bce_cldice")
    thick = torch.from_numpy(
        ndimage.binary_dilation(target.numpy()[0, 0] > 0, iterations=1)[None, None]
    ).float()
    broken = target.clone()
    broken[..., target.shape[-1] // 2 - 3 : target.shape[-1] // 2 + 3] = 0.0  # a 6-voxel gap across X
    cl_thick = float(loss.cldice(thick, target))
    cl_broken = float(loss.cldice(broken, target))
    assert cl_broken > cl_thick + 0.02
    perfect = float(loss.from_probabilities(target.clamp(1e-4, 1 - 1e-4), target))
    assert perfect < float(loss.from_probabilities(broken.clamp(1e-4, 1 - 1e-4), target))
    logits = torch.zeros(target.shape, requires_grad=True)
    loss(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ weight decay


def test_weight_decay_is_read_from_the_config_and_reaches_adam(tmp_path):
    text = TINY.read_text().replace('loss = "dice"', 'loss = "balanced_bce_tv"\nweight_decay = 0.01')
    assert "weight_decay = 0.01" in text
    path = tmp_path / "tiny_2pm.toml"
    path.write_text(text)
    config = load_config(path)
    assert config.training.weight_decay == 0.01 and config.training.loss == "balanced_bce_tv"
    optimizer = Trainer(config).build_optimizer(torch.nn.Linear(3, 2))
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["weight_decay"] == 0.01
    assert load_config(TINY).training.weight_decay == 0.0  # off unless asked for

    path.write_text(text.replace("weight_decay = 0.01", "weight_decay = -0.1"))
    with pytest.raises(ValueError, match=r"training\.weight_decay"):
        load_config(path)


# ----------------------------------------------------------------------------------------- preprocessing


def _two_photon_stack(seed: int, shape=(8, 32, 32)) -> np.ndarray:
    """Background that rises with depth, Poisson-like noise and a few bright vessels; uint16 like a detector."""
    rng = np.random.default_rng(seed)
    depth_background = np.linspace(200, 600, shape[0])[:, None, None]
    stack = rng.gamma(4.0, depth_background / 4.0, size=shape)
    stack[:, 10:13, :] += 3000.0
    stack[:, :, 20:22] += 2500.0
    return stack.astype(np.uint16)


def test_estimated_scale_recovers_a_factor_of_2_5():
    stack = _two_photon_stack(0)
    reference = 2.5 * _two_photon_stack(1).astype(np.float64)  # another stack from the "training" microscope
    factor = estimate_intensity_scale(stack, np.percentile(reference, (50, 99.5)))
    assert factor == pytest.approx(2.5, rel=0.02)
    exact = estimate_intensity_scale(stack, np.percentile(2.5 * stack.astype(np.float64), (50, 99.5)))
    assert exact == pytest.approx(2.5, rel=1e-6)


def test_scale_estimate_rejects_bad_references():
    stack = _two_photon_stack(0)
    with pytest.raises(ValueError, match="reference_percentiles has 1 values"):
        estimate_intensity_scale(stack, [100.0])
    with pytest.raises(ValueError, match="all 0"):
        estimate_intensity_scale(np.zeros((4, 4, 4)), [1.0, 2.0])
    with pytest.raises(ValueError, match=r"3D \(Z, Y, X\)"):
        estimate_intensity_scale(stack[0], [1.0, 2.0])
    with pytest.raises(ValueError, match=">= 0"):
        scale_intensity(stack, -1.0)


def test_slice_median_subtraction_zeroes_each_slice_median():
    stack = _two_photon_stack(2).astype(np.float32)
    original = stack.copy()
    centred = subtract_slice_median(stack, clip_negative=False)
    np.testing.assert_allclose(np.median(centred, axis=(1, 2)), 0.0, atol=1e-3)
    clipped = subtract_slice_median(stack)  # default: negative background set to 0
    assert clipped.dtype == np.float32 and clipped.min() == 0.0
    np.testing.assert_array_equal(clipped, np.maximum(centred, 0.0))
    assert np.all(np.mean(clipped == 0.0, axis=(1, 2)) >= 0.5)  # the lower half of every slice is 0
    np.testing.assert_array_equal(stack, original)  # float32 input: no copy on the way in, no write either


def test_median_filter_removes_an_isolated_bright_voxel_and_keeps_a_vessel():
    volume = np.zeros((9, 9, 9), dtype=np.uint16)
    volume[4, 4, 4] = 1000  # shot noise
    volume[:, 0:3, 0:3] = 500  # a 3-voxel-wide vessel along Z
    filtered = median_filter_3d(volume)
    assert filtered.dtype == np.float32 and volume[4, 4, 4] == 1000
    assert filtered[4, 4, 4] == 0.0
    assert np.all(filtered[:, 0:2, 0:2] == 500.0)
    with pytest.raises(ValueError, match="odd"):
        median_filter_3d(volume, size=2)


def test_preprocessing_never_modifies_the_input_and_records_what_it_did():
    reference = 2.5 * _two_photon_stack(1).astype(np.float64)
    for stack in (_two_photon_stack(0), _two_photon_stack(0).astype(np.float32)):
        original = stack.copy()
        processed, record = preprocess_microscopy_stack(
            stack, reference_percentiles=np.percentile(reference, (50, 99.5))
        )
        np.testing.assert_array_equal(stack, original)
        assert processed.dtype == np.float32 and processed.shape == stack.shape
        assert record["steps"] == ["scale_intensity", "subtract_slice_median", "median_filter_3d"]
        assert record["intensity_scale_source"] == "estimated"
        assert record["intensity_scale"] == pytest.approx(2.5, rel=0.02)
        assert len(record["slice_medians"]) == stack.shape[0] and record["median_size"] == 3
    # The order is the paper's: scale, subtract slice medians, median filter.
    stack = _two_photon_stack(0)
    by_steps = median_filter_3d(subtract_slice_median(scale_intensity(stack, 16.0)))
    processed, record = preprocess_microscopy_stack(stack, scale_factor=16.0)
    np.testing.assert_allclose(processed, by_steps, rtol=1e-6)
    assert record["intensity_scale_source"] == "given" and record["intensity_scale"] == 16.0


def test_preprocessing_options_and_errors():
    stack = _two_photon_stack(0)
    untouched, record = preprocess_microscopy_stack(stack, subtract_median=False, median_size=None)
    np.testing.assert_array_equal(untouched, stack.astype(np.float32))
    assert record["steps"] == [] and record["intensity_scale_source"] == "none"
    with pytest.raises(ValueError, match="not both"):
        preprocess_microscopy_stack(stack, reference_percentiles=[1.0, 2.0], scale_factor=2.0)
    with pytest.raises(ValueError, match="median_size"):
        preprocess_microscopy_stack(stack, median_size=4)
    with pytest.raises(ValueError, match="constant"):
        preprocess_microscopy_stack(np.ones((4, 4, 4)))


def test_auto_intensity_scale_is_estimated_against_the_model_card_and_leaves_the_segmentation_unchanged():
    from VesselSegLib.inference.pipeline import segment_image
    from VesselSegLib.models.registry import ModelRegistry
    from VesselSegLib.phantoms import make_phantom_case

    registry = ModelRegistry.default()
    percentiles, reference = registry.get("vnet-2pm").intensity_reference()
    assert percentiles == (50.0, 99.5) and reference[1] > reference[0] > 0
    case = make_phantom_case("2PM", (16, 64, 64), seed=4250)
    runs = {}
    for gain in (1.0, 16.0):  # the same stack as a 16x brighter microscope would record it
        runs[gain] = segment_image(
            case.image * gain,
            case.spacing_zyx,
            modality="2PM",
            method="vnet-2pm",
            device="cpu",
            microscopy=MicroscopyOptions(intensity_scale="auto"),
        )
    records = {gain: run.preprocessing for gain, run in runs.items()}
    assert records[1.0]["intensity_scale_source"] == "estimated"
    assert records[1.0]["reference_percentiles"] == list(reference)
    assert records[1.0]["intensity_scale"] / records[16.0]["intensity_scale"] == pytest.approx(16.0, rel=1e-3)
    # Percentile normalisation absorbs the linear factor: the same voxels are vessels.
    np.testing.assert_array_equal(runs[1.0].class_map, runs[16.0].class_map)
    assert runs[1.0].class_map.any()
    for method, scale, message in (
        ("frangi", "auto", "no intensity reference"),  # a filter has no training data to compare with
        ("vnet-2pm", "bright", "must be a number"),
    ):
        with pytest.raises(ValueError, match=message):
            options = {"intensity_scale": scale}
            segment_image(
                case.image,
                case.spacing_zyx,
                modality="2PM",
                method=method,
                microscopy=MicroscopyOptions(**options),
            )
