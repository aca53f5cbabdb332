"""UMIS building blocks: the morphological pooling layers (eqs. 2-3, 12, 14-16) and the loss (eqs. 17-26).

Oracles: scikit-image's morphological snakes (``inf_sup``, ``sup_inf``, the planar elements ``_P3``) on
binary volumes, and ``scipy.ndimage.grey_dilation`` / ``grey_erosion`` with each planar footprint on grey
volumes; ``torch.autograd.gradcheck`` for the subgradients.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pytest
import torch
from scipy import ndimage

from VesselSegLib.models.morphology import (
    N_PLANES,
    MorphologicalSmoothing,
    inf_sup,
    morphological_smoothing,
    planar_dilations,
    planar_erosions,
    planar_footprints,
    sup_inf,
)
from VesselSegLib.unsupervised.loss import (
    CODE_TIGHT_WEIGHT_ON_SUM,
    PAPER_PATCH_VOXELS,
    TERM_NAMES,
    UMISLoss,
    UMISLossWeights,
    active_contour_loss,
    gradient_l1_norm,
    image_force,
    ranking_loss,
    region_means,
    tightness_loss,
    umis_loss_terms,
)

morphsnakes = pytest.importorskip("skimage.segmentation.morphsnakes")
if not all(hasattr(morphsnakes, name) for name in ("_P3", "inf_sup", "sup_inf")):
    pytest.skip("scikit-image's private morphsnakes helpers moved", allow_module_level=True)


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: the machine's other core is busy, and the speed check is specified for one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _volume(array: np.ndarray) -> torch.Tensor:
    """(Z, Y, X) array -> (1, 1, Z, Y, X) tensor."""
    return torch.from_numpy(np.ascontiguousarray(array))[None, None]


def _interior(array: np.ndarray, margin: int) -> np.ndarray:
    return array[(slice(margin, -margin),) * 3]


def _binary(shape: tuple[int, int, int], fraction: float, seed: int) -> np.ndarray:
    """A random binary volume with some structure (blurred noise thresholded), as int8."""
    noise = np.random.default_rng(seed).normal(size=shape)
    smooth = ndimage.gaussian_filter(noise, 1.0)
    return (smooth > np.quantile(smooth, 1.0 - fraction)).astype(np.int8)


# --- structuring elements ---------------------------------------------------------------------------------


def test_planar_footprints_are_morphsnakes_P3():  # noqa: N802 - skimage's name
    footprints = planar_footprints()
    assert footprints.shape == (N_PLANES, 3, 3, 3)
    assert footprints.dtype == torch.bool
    for index, reference in enumerate(morphsnakes._P3):
        np.testing.assert_array_equal(footprints[index].numpy(), reference.astype(bool), err_msg=f"P{index}")
    # Nine distinct 3x3 planes through the centre, each symmetric about it.
    assert footprints.sum(dim=(1, 2, 3)).tolist() == [9] * N_PLANES
    assert bool(footprints[:, 1, 1, 1].all())
    assert torch.equal(footprints, footprints.flip(1, 2, 3))
    assert len({tuple(f.flatten().tolist()) for f in footprints}) == N_PLANES


# --- grey dilation / erosion against scipy -----------------------------------------------------------------


@pytest.mark.parametrize("index", range(N_PLANES))
def test_planar_dilation_and_erosion_equal_scipy(index):
    grey = np.random.default_rng(index).normal(size=(7, 9, 11))
    footprint = morphsnakes._P3[index].astype(bool)
    dilated = planar_dilations(_volume(grey))[0, 0, index].numpy()
    eroded = planar_erosions(_volume(grey))[0, 0, index].numpy()

    # Interior: the padding does not matter, any scipy mode agrees.
    np.testing.assert_array_equal(
        _interior(dilated, 1), _interior(ndimage.grey_dilation(grey, footprint=footprint), 1)
    )
    np.testing.assert_array_equal(
        _interior(eroded, 1), _interior(ndimage.grey_erosion(grey, footprint=footprint), 1)
    )
    # Everywhere, border included: outside voxels are ignored (-inf for max, +inf for min).
    np.testing.assert_array_equal(
        dilated, ndimage.grey_dilation(grey, footprint=footprint, mode="constant", cval=-np.inf)
    )
    np.testing.assert_array_equal(
        eroded, ndimage.grey_erosion(grey, footprint=footprint, mode="constant", cval=np.inf)
    )


def test_outside_voxels_are_ignored_not_zero():
    """Eq. (16) read literally (zeros outside the mask win) would give 0 at the border of a negative volume."""
    negative = -1.0 - np.random.default_rng(1).random((5, 6, 7))
    dilated = planar_dilations(_volume(negative))[0, 0].numpy()
    assert dilated.max() < 0  # a zero padding would put 0 on every border voxel
    zero_padded = ndimage.grey_dilation(negative, footprint=morphsnakes._P3[0].astype(bool), mode="constant")
    assert zero_padded[0].max() == 0 and not np.array_equal(dilated[0], zero_padded)
    positive = -negative
    eroded = planar_erosions(_volume(positive))[0, 0].numpy()
    assert eroded.min() > 0
    # A constant volume is a fixed point of every operator, border included.
    constant = torch.full((1, 1, 4, 5, 6), -3.5)
    for operator in (inf_sup, sup_inf, morphological_smoothing):
        assert torch.equal(operator(constant), constant)


def test_grey_inf_sup_and_sup_inf_equal_scipy_min_max_over_planes():
    grey = np.random.default_rng(2).random((6, 8, 10))
    footprints = [p.astype(bool) for p in morphsnakes._P3]
    expected_is = np.min(
        [ndimage.grey_dilation(grey, footprint=f, mode="constant", cval=-np.inf) for f in footprints], axis=0
    )
    expected_si = np.max(
        [ndimage.grey_erosion(grey, footprint=f, mode="constant", cval=np.inf) for f in footprints], axis=0
    )
    np.testing.assert_array_equal(inf_sup(_volume(grey))[0, 0].numpy(), expected_is)
    np.testing.assert_array_equal(sup_inf(_volume(grey))[0, 0].numpy(), expected_si)


def test_batch_and_channels_are_independent():
    volumes = torch.rand(2, 3, 5, 6, 7, dtype=torch.float64)
    together = morphological_smoothing(volumes)
    for b in range(2):
        for c in range(3):
            alone = morphological_smoothing(volumes[b : b + 1, c : c + 1])
            assert torch.equal(together[b : b + 1, c : c + 1], alone)


# --- IS / SI against morphsnakes on binary volumes ---------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_inf_sup_equals_morphsnakes_everywhere(seed):
    binary = _binary((12, 14, 16), fraction=0.3, seed=seed)
    ours = inf_sup(_volume(binary.astype(np.float32)))[0, 0].numpy()
    # A binary dilation that counts outside voxels as 0 equals one that ignores them.
    np.testing.assert_array_equal(ours, morphsnakes.inf_sup(binary))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_sup_inf_equals_morphsnakes_in_the_interior(seed):
    binary = _binary((12, 14, 16), fraction=0.5, seed=seed)
    ours = sup_inf(_volume(binary.astype(np.float32)))[0, 0].numpy()
    np.testing.assert_array_equal(_interior(ours, 1), _interior(morphsnakes.sup_inf(binary), 1))


def test_sup_inf_border_differs_from_morphsnakes_as_documented():
    """scikit-image's binary erosion treats the outside as 0 and erodes a full volume's edges; UMIS does not.

    (On a face, the plane lying in the face still fits; on an edge, every plane leaves the volume.)
    """
    full = np.ones((5, 6, 7), dtype=np.int8)
    eroded = morphsnakes.sup_inf(full)
    assert eroded[0, 0, :].max() == 0 and eroded[0, 1:-1, 1:-1].min() == 1
    assert bool((sup_inf(_volume(full.astype(np.float32))) == 1).all())


@pytest.mark.parametrize("seed", [3, 4])
def test_binary_smoothing_equals_three_morphsnakes_si_is_in_the_interior(seed):
    binary = _binary((20, 22, 24), fraction=0.4, seed=seed)
    expected = binary
    for _ in range(3):  # SI o IS, as UMIS (morphsnakes' _curvop alternates SI o IS and IS o SI)
        expected = morphsnakes.sup_inf(morphsnakes.inf_sup(expected))
    ours = morphological_smoothing(_volume(binary.astype(np.float32)), iterations=3)[0, 0].numpy()
    # Only the SI steps differ at the border; each later operator spreads the difference by one voxel.
    np.testing.assert_array_equal(_interior(ours, 6), _interior(expected, 6))
    assert 0 < expected.sum() < expected.size  # the comparison is not trivial
    assert np.isin(ours, (0.0, 1.0)).all()


def test_smoothing_removes_a_speck_and_keeps_a_tube():
    volume = np.zeros((12, 16, 16), dtype=np.float32)
    zz, yy, xx = np.mgrid[:12, :16, :16]
    volume[(yy - 8) ** 2 + (xx - 8) ** 2 <= 9] = 1.0  # a tube along z, radius 3
    volume[6, 2, 2] = 1.0  # an isolated voxel
    smoothed = morphological_smoothing(_volume(volume))[0, 0].numpy()
    assert smoothed[6, 2, 2] == 0
    assert smoothed[:, 8, 8].min() == 1
    assert abs(smoothed.sum() - volume.sum()) < 0.1 * volume.sum()


# --- gradients --------------------------------------------------------------------------------------------


def _distinct(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Double tensor with well-separated distinct values, so no max/min ties within gradcheck's eps."""
    generator = torch.Generator().manual_seed(seed)
    count = math.prod(shape)
    return (torch.randperm(count, generator=generator).double() / count).reshape(shape).requires_grad_(True)


@pytest.mark.parametrize(
    "operator",
    [inf_sup, sup_inf, planar_dilations, planar_erosions, morphological_smoothing],
    ids=lambda operator: operator.__name__,
)
def test_gradcheck(operator):
    x = _distinct((1, 2, 4, 5, 6), seed=0)
    assert torch.autograd.gradcheck(operator, (x,), eps=1e-6, atol=1e-8)


def test_gradient_mass_is_routed_not_lost():
    """Each output takes its value from one input voxel (or splits ties): d sum(out) / dx sums to numel."""
    x = torch.rand(2, 1, 6, 7, 8, requires_grad=True)
    morphological_smoothing(x).sum().backward()
    assert math.isclose(x.grad.sum().item(), x.numel(), rel_tol=1e-5)
    assert bool((x.grad >= 0).all())


def test_dtype_shape_and_range_are_kept():
    for dtype in (torch.float32, torch.float64):
        x = torch.rand(1, 1, 5, 6, 7, dtype=dtype)
        out = MorphologicalSmoothing(iterations=2)(x)
        assert out.dtype == dtype and out.shape == x.shape
        assert x.min() <= out.min() and out.max() <= x.max()
        assert torch.equal(out, morphological_smoothing(x, iterations=2))
    assert torch.equal(morphological_smoothing(x, iterations=0), x)
    assert planar_dilations(x).shape == (1, 1, N_PLANES, 5, 6, 7)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"\(B, C, Z, Y, X\)"):
        inf_sup(torch.rand(1, 5, 6, 7))
    with pytest.raises(TypeError, match="floating-point"):
        sup_inf(torch.ones(1, 1, 3, 3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="iterations"):
        morphological_smoothing(torch.rand(1, 1, 3, 3, 3), iterations=-1)
    with pytest.raises(ValueError, match="iterations"):
        MorphologicalSmoothing(iterations=1.5)


def test_smoothing_speed_is_printed(capsys):
    """Forward + backward of (SI o IS)^3 on (1, 1, 16, 128, 128), one thread. Printed, not asserted."""
    x = torch.rand(1, 1, 16, 128, 128, requires_grad=True)
    morphological_smoothing(x).sum().backward()  # warm-up
    forward, backward = [], []
    for _ in range(3):
        start = time.perf_counter()
        out = morphological_smoothing(x)
        middle = time.perf_counter()
        out.sum().backward()
        forward.append(middle - start)
        backward.append(time.perf_counter() - middle)
    with capsys.disabled():
        print(
            f"\n(SI o IS)^3 on (1, 1, 16, 128, 128), {torch.get_num_threads()} thread(s): "
            f"forward {min(forward):.3f} s + backward {min(backward):.3f} s (best of 3)"
        )


# --- loss ---------------------------------------------------------------------------------------------------


def _tube_scene(shape=(12, 32, 32), radius=4.0, seed=0):
    """A bright tube along z on a dark, noisy background: (image, mask), both (1, 1, Z, Y, X) float64."""
    _, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    mask = ((yy - shape[1] / 2) ** 2 + (xx - shape[2] / 2) ** 2 <= radius**2).astype(np.float64)
    noise = np.random.default_rng(seed).normal(0.0, 0.05, size=shape)
    image = np.clip(0.1 + 0.7 * mask + noise, 0.0, 1.0)
    return _volume(image), _volume(mask)


@pytest.mark.parametrize("mean", ["balanced", "voxel"])
def test_active_contour_loss_prefers_the_true_mask(mean):
    image, mask = _tube_scene()
    losses = {}
    for name, candidate in (("true", mask), ("shifted", torch.roll(mask, shifts=6, dims=4))):
        raw = 0.02 + 0.96 * candidate
        segmentation = morphological_smoothing(raw)
        c1, c2 = region_means(image, raw)
        gamma = image_force(image, raw, c1, c2)
        losses[name] = active_contour_loss(gamma, segmentation, mean=mean).item()
        losses[name + " rank"] = ranking_loss(c1, c2).item()
    assert losses["true"] < losses["shifted"]
    assert losses["true rank"] < losses["shifted rank"]


def test_image_force_sign_on_the_tube():
    """Eq. (18): on the edges, Gamma < 0 inside the bright tube (grow) and > 0 just outside (shrink)."""
    image, mask = _tube_scene(seed=1)
    c1, c2 = region_means(image, mask)
    assert c1.item() > 0.7 and c2.item() < 0.2
    gamma = image_force(image, mask, c1, c2)[0, 0]
    edges = gradient_l1_norm(mask)[0, 0] > 0
    inner = edges & (mask[0, 0] == 1)
    outer = edges & (mask[0, 0] == 0)
    assert bool((gamma[inner] < 0).all())
    assert bool((gamma[outer] > 0).all())


def test_gradient_l1_norm_central_differences_with_zero_padding():
    zz, yy, xx = torch.meshgrid(torch.arange(5.0), torch.arange(6.0), torch.arange(7.0), indexing="ij")
    ramp = (2.0 * zz - 3.0 * yy + 0.5 * xx)[None, None]
    norm = gradient_l1_norm(ramp)[0, 0]
    assert torch.allclose(norm[1:-1, 1:-1, 1:-1], torch.tensor(5.5))
    constant = torch.full((1, 1, 3, 3, 3), 2.0)
    # Zero outside: each border face sees 0.5 * 2; the centre voxel sees nothing.
    assert gradient_l1_norm(constant)[0, 0, 1, 1, 1] == 0
    assert gradient_l1_norm(constant)[0, 0, 0, 1, 1] == 1.0
    assert gradient_l1_norm(constant)[0, 0, 0, 0, 0] == 3.0


def _random_inputs(seed=0, shape=(2, 1, 8, 16, 16)):
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(shape, generator=generator)
    logits = torch.randn(shape, generator=generator).requires_grad_(True)
    rec_logits = torch.randn(shape, generator=generator).requires_grad_(True)
    return image, logits, rec_logits


@pytest.mark.parametrize("preset", ["notes", "code", "paper"])
def test_every_term_is_finite_and_has_gradients(preset):
    weights = UMISLossWeights.preset(preset)
    image, logits, rec_logits = _random_inputs()
    raw = torch.sigmoid(logits)
    terms = umis_loss_terms(
        image,
        raw_segmentation=raw,
        segmentation=morphological_smoothing(raw),
        reconstruction=torch.sigmoid(rec_logits),
        region_input=weights.region_input,
        active_contour_mean=weights.active_contour_mean,
        tight_reduction=weights.tight_reduction,
    )
    for name in TERM_NAMES:
        assert terms[name].shape == () and torch.isfinite(terms[name]), name
        grad_seg, grad_rec = torch.autograd.grad(
            terms[name], (logits, rec_logits), retain_graph=True, allow_unused=True
        )
        depends_on = grad_rec if name == "rec" else grad_seg
        other = grad_seg if name == "rec" else grad_rec
        assert depends_on is not None and bool(torch.isfinite(depends_on).all()), name
        assert depends_on.abs().sum() > 0, name
        assert other is None, name
    assert terms["c1"].shape == (2,) and terms["c2"].shape == (2,)


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_total_is_finite_for_empty_and_full_segmentations(fill):
    image = torch.rand(1, 1, 4, 8, 8)
    raw = torch.full_like(image, fill, requires_grad=True)
    for preset in ("notes", "code", "paper"):
        total, terms = UMISLoss(weights=preset)(image, raw_segmentation=raw, reconstruction=image)
        (grad,) = torch.autograd.grad(total, raw)
        assert torch.isfinite(total) and bool(torch.isfinite(grad).all()), preset
        assert all(torch.isfinite(value) for value in terms.values()), preset


def test_active_contour_loss_has_no_overflow_for_large_forces():
    gamma = torch.tensor([-1e4, -1.0, 0.0, 1.0, 1e4], dtype=torch.float32).reshape(1, 1, 1, 1, 5)
    segmentation = torch.tensor([0.0, 0.5, 0.3, 0.5, 1.0]).reshape(1, 1, 1, 1, 5).requires_grad_(True)
    for mean in ("balanced", "voxel"):
        loss = active_contour_loss(gamma.clone().requires_grad_(True), segmentation, mean=mean)
        (grad,) = torch.autograd.grad(loss, segmentation)
        assert torch.isfinite(loss) and bool(torch.isfinite(grad).all())
        assert 0 < loss.item() <= 1
    # Balanced means: (exp(0) + exp(-0.5)) / 2 inside, (exp(-0.5) + exp(-1e4 * 0)) / 2 outside.
    expected = 0.5 * (1 + math.exp(-0.5)) / 2 + 0.5 * (math.exp(-0.5) + 1) / 2
    assert math.isclose(active_contour_loss(gamma, segmentation.detach()).item(), expected, rel_tol=1e-6)
    # The paper's voxel mean counts Gamma = 0 as "push to 1": exp(0) = 1.
    expected_voxel = (1 + math.exp(-0.5) + 1 + math.exp(-0.5) + 1) / 5
    assert math.isclose(
        active_contour_loss(gamma, segmentation.detach(), mean="voxel").item(), expected_voxel, rel_tol=1e-6
    )


def test_active_contour_loss_skips_an_empty_side():
    gamma = -torch.ones(1, 1, 2, 2, 2)  # no Gamma > 0 voxel
    segmentation = torch.full_like(gamma, 0.5)
    assert math.isclose(active_contour_loss(gamma, segmentation).item(), 0.5 * math.exp(-0.5), rel_tol=1e-6)


def test_presets():
    notes, code, paper = (UMISLossWeights.preset(name) for name in ("notes", "code", "paper"))
    assert notes == UMISLossWeights()
    assert (notes.ac, notes.rank, notes.rec, notes.mv, notes.me) == (1.0, 1e-2, 1e-6, 1e-3, 1e-3)
    assert (notes.tight_reduction, notes.active_contour_mean, notes.region_input) == (
        "mean",
        "balanced",
        "raw",
    )
    assert (code.tight, code.tight_reduction) == (5e-8, "sum")
    assert (paper.tight, paper.rec, paper.me, paper.tight_reduction) == (1e-3, 1e-3, 1e-6, "sum")
    assert (paper.active_contour_mean, paper.region_input) == ("voxel", "smoothed")
    # The notes' mean form equals the code's sum form at the paper's 32 x 128 x 128 patches.
    assert math.isclose(notes.tight, CODE_TIGHT_WEIGHT_ON_SUM * PAPER_PATCH_VOXELS)
    raw = torch.rand(1, 1, 32, 128, 128)
    assert math.isclose(
        notes.tight * tightness_loss(raw, reduction="mean").item(),
        code.tight * tightness_loss(raw, reduction="sum").item(),
        rel_tol=1e-5,
    )
    assert set(notes.as_dict()) >= set(TERM_NAMES)


def test_bad_weights():
    with pytest.raises(ValueError, match="'notes', 'code', 'paper'; got 'papr'"):
        UMISLossWeights.preset("papr")
    with pytest.raises(ValueError, match="'notes', 'code', 'paper'"):
        UMISLoss(weights="papr")
    with pytest.raises(TypeError, match="UMISLossWeights"):
        UMISLoss(weights={"ac": 1.0})
    with pytest.raises(ValueError, match="'rank' must be >= 0"):
        UMISLossWeights(rank=-1.0)
    with pytest.raises(ValueError, match="finite"):
        UMISLossWeights(me=float("nan"))
    with pytest.raises(ValueError, match="tight_reduction"):
        UMISLossWeights(tight_reduction="max")
    with pytest.raises(ValueError, match="region_input"):
        UMISLossWeights(region_input="S")
    image = torch.rand(1, 1, 4, 8, 8)
    with pytest.raises(ValueError, match="reconstruction"):
        UMISLoss()(image, raw_segmentation=image, reconstruction=image[..., :4])
    with pytest.raises(ValueError, match=r"\(B, 1, Z, Y, X\)"):
        UMISLoss()(image.expand(1, 2, 4, 8, 8), raw_segmentation=image, reconstruction=image)


@pytest.mark.parametrize("preset", ["notes", "code", "paper"])
def test_total_is_the_weighted_sum_of_the_logged_terms(preset):
    image, logits, rec_logits = _random_inputs(seed=1)
    loss = UMISLoss(weights=preset)
    raw = torch.sigmoid(logits)
    total, terms = loss(image, raw_segmentation=raw, reconstruction=torch.sigmoid(rec_logits))
    expected = sum(getattr(loss.weights, name) * terms[name] for name in TERM_NAMES)
    assert math.isclose(total.item(), expected.item(), rel_tol=1e-5)
    assert set(terms) == {*TERM_NAMES, "c1", "c2", "fraction"}
    assert all(not value.requires_grad and value.shape == () for value in terms.values())
    total.backward()
    assert logits.grad is not None and rec_logits.grad is not None
    # segmentation=None smooths raw_segmentation itself with (SI o IS)^3.
    same, _ = loss(
        image,
        raw_segmentation=raw.detach(),
        segmentation=morphological_smoothing(raw.detach()),
        reconstruction=torch.sigmoid(rec_logits.detach()),
    )
    assert torch.equal(same, total.detach())


def test_weights_select_terms_and_forms():
    image, logits, rec_logits = _random_inputs(seed=2)
    raw = torch.sigmoid(logits).detach()
    rec = torch.sigmoid(rec_logits).detach()
    zero = dict.fromkeys(TERM_NAMES, 0.0)
    for name in TERM_NAMES:
        only = UMISLossWeights(**{**zero, name: 2.0})
        total, terms = UMISLoss(weights=only)(image, raw_segmentation=raw, reconstruction=rec)
        assert math.isclose(total.item(), 2.0 * terms[name].item(), rel_tol=1e-6), name
    # region_input: the paper's c1, c2 come from S, the code's from S_bar.
    _, from_raw = UMISLoss(weights="code")(image, raw_segmentation=raw, reconstruction=rec)
    _, from_smoothed = UMISLoss(weights="paper")(image, raw_segmentation=raw, reconstruction=rec)
    smoothed = morphological_smoothing(raw)
    assert math.isclose(from_raw["c1"].item(), region_means(image, raw)[0].mean().item(), rel_tol=1e-6)
    assert math.isclose(
        from_smoothed["c1"].item(), region_means(image, smoothed)[0].mean().item(), rel_tol=1e-6
    )
    # tight_reduction: the sum is the mean times the voxels per sample.
    mean_form = UMISLossWeights(tight_reduction="mean")
    sum_form = dataclasses.replace(mean_form, tight_reduction="sum")
    _, with_mean = UMISLoss(weights=mean_form)(image, raw_segmentation=raw, reconstruction=rec)
    _, with_sum = UMISLoss(weights=sum_form)(image, raw_segmentation=raw, reconstruction=rec)
    assert math.isclose(with_sum["tight"].item(), with_mean["tight"].item() * 8 * 16 * 16, rel_tol=1e-5)
