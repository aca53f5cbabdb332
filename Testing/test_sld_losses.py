"""3D-SLD losses, schedules and the mask discriminator, on tiny synthetic tensors with known answers."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

from trainer.sld.discriminator import MaskDiscriminator
from trainer.sld.losses import (
    SLDLossWeights,
    adversarial_loss,
    axis_mips,
    brightness_prior_loss,
    cluster_prototypes,
    consistency_loss,
    consistency_weight,
    dice_loss,
    discriminator_loss,
    discriminator_mips,
    ema_momentum,
    entropy_loss,
    hypersphere_mixup_loss,
    instance_discrimination_loss,
    mixup_targets,
    patch_vectors,
    region_discrimination_loss,
    region_embeddings,
    reliability_refinement_loss,
    reliable_mask,
    update_ema,
)


def _unit(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    return F.normalize(tensor, dim=dim)


def _slab_clustering(count: int = 2, channels: int = 16, classes: int = 8, size: int = 4):
    """Embeddings constant per Z slab (direction e_c on slab c) and the one-hot clustering of the slabs."""
    embedding = torch.zeros(count, channels, classes, size, size)
    clusters = torch.zeros(count, classes, classes, size, size)
    for c in range(classes):
        embedding[:, c, c] = 1.0
        clusters[:, c, c] = 1.0
    return embedding, clusters


# --- region discrimination, eq. (2)-(5) -------------------------------------------------------------------


def test_region_loss_lower_for_perfect_clustering_than_random():
    torch.manual_seed(0)
    embedding, perfect = _slab_clustering()
    tau = 0.2
    perfect_loss = region_discrimination_loss(embedding, perfect, tau)
    # Regions = prototypes = e_c: logit 1/tau on the diagonal, 0 elsewhere.
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 7))
    assert perfect_loss.item() == pytest.approx(expected, rel=1e-5)

    random_hard = F.one_hot(torch.randint(0, 8, (2, 8, 4, 4)), 8).permute(0, 4, 1, 2, 3).float()
    random_soft = torch.softmax(torch.randn(2, 8, 8, 4, 4), dim=1)
    for random in (random_hard, random_soft):
        assert region_discrimination_loss(embedding, random, tau).item() > perfect_loss.item() + 1.0


def test_region_loss_gradients_are_finite():
    torch.manual_seed(1)
    embedding = _unit(torch.randn(3, 16, 4, 6, 6), 1).requires_grad_()
    logits = torch.randn(3, 8, 4, 6, 6, requires_grad=True)
    clusters = F.normalize(torch.sigmoid(logits), p=1, dim=1)
    loss = region_discrimination_loss(embedding, clusters)
    loss.backward()
    assert torch.isfinite(loss)
    for grad in (embedding.grad, logits.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_region_embeddings_and_prototypes_match_manual_computation():
    torch.manual_seed(2)
    embedding = _unit(torch.randn(3, 5, 2, 3, 4), 1)
    clusters = torch.softmax(torch.randn(3, 4, 2, 3, 4), dim=1)
    regions = region_embeddings(embedding, clusters)
    v = embedding.numpy().reshape(3, 5, -1)
    m = clusters.numpy().reshape(3, 4, -1)
    manual = np.empty((3, 4, 5))
    for n in range(3):
        for c in range(4):
            r = (m[n, c][None] * v[n]).mean(axis=1)
            manual[n, c] = r / np.linalg.norm(r)
    np.testing.assert_allclose(regions.numpy(), manual, rtol=1e-5, atol=1e-6)

    prototypes = cluster_prototypes(regions)
    mean = manual.mean(axis=0)
    np.testing.assert_allclose(
        prototypes.numpy(), mean / np.linalg.norm(mean, axis=1, keepdims=True), rtol=1e-5, atol=1e-6
    )
    regions_leaf = regions.clone().requires_grad_()
    cluster_prototypes(regions_leaf).sum().backward()
    assert regions_leaf.grad is not None and regions_leaf.grad.abs().sum() > 0  # not detached


# --- MIPs, eq. (6)-(7) ------------------------------------------------------------------------------------


def test_axis_mips_equal_numpy_max():
    torch.manual_seed(3)
    volume = torch.rand(2, 1, 5, 6, 7)
    array = volume.numpy()[:, 0]
    for mips in (axis_mips(volume), axis_mips(volume[:, 0])):
        along_x, along_y, along_z = mips
        np.testing.assert_array_equal(along_x.numpy(), array.max(axis=3))
        np.testing.assert_array_equal(along_y.numpy(), array.max(axis=2))
        np.testing.assert_array_equal(along_z.numpy(), array.max(axis=1))


def test_discriminator_mips_shape_order_and_gradient():
    torch.manual_seed(4)
    volume = torch.rand(2, 1, 8, 16, 16, requires_grad=True)
    stacked = discriminator_mips(volume, (16, 16))
    assert stacked.shape == (6, 1, 16, 16)
    along_x, _, along_z = axis_mips(volume.detach())
    # Row 3n + 2 is crop n's Z-MIP, already 16 x 16 and passed through unchanged.
    torch.testing.assert_close(stacked[5, 0].detach(), along_z[1])
    resized = F.interpolate(along_x[1:2, None], size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(stacked[3, 0].detach(), resized[0, 0])
    stacked.sum().backward()
    assert volume.grad is not None and volume.grad.abs().sum() > 0
    assert discriminator_mips(volume.detach(), 12).shape == (6, 1, 12, 12)


# --- patch vectors and the instance losses ----------------------------------------------------------------


def test_patch_vectors_shape_norm_and_cell_order():
    grid = 4
    cells = grid**3
    embedding = torch.zeros(2, cells, 8, 8, 8)  # each cell 2x2x2 voxels, constant direction
    for z in range(grid):
        for y in range(grid):
            for x in range(grid):
                index = (z * grid + y) * grid + x
                embedding[0, index, 2 * z : 2 * z + 2, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2] = 1.0
                embedding[1, cells - 1 - index, 2 * z : 2 * z + 2, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2] = 1.0
    vectors = patch_vectors(embedding, grid)
    assert vectors.shape == (2 * cells, cells)
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(2 * cells))
    expected = torch.cat([torch.eye(cells), torch.eye(cells).flip(1)])
    torch.testing.assert_close(vectors, expected)

    torch.manual_seed(5)
    random = patch_vectors(_unit(torch.randn(3, 16, 10, 12, 9), 1))  # not multiples of the grid
    assert random.shape == (3 * cells, 16)
    torch.testing.assert_close(random.norm(dim=1), torch.ones(3 * cells))


def _reference_instance_loss(anchors: torch.Tensor, positives: torch.Tensor, temperature: float):
    """Ye et al.'s formula written directly with exp and division (right-hand operands detached)."""
    x = torch.cat([anchors, positives])
    n2 = x.shape[0]
    half = n2 // 2
    similarity = torch.exp(x @ x.detach().t() / temperature) * (1 - torch.eye(n2))
    denominator = similarity.sum(dim=1)
    total = 0.0
    for i in range(n2):
        j = (i + half) % n2
        total = total + torch.log(similarity[i, j] / denominator[i])
        for k in range(n2):
            if k not in (i, j):
                total = total + torch.log(1 - similarity[i, k] / denominator[i])
    return -total / n2


def test_instance_loss_matches_direct_formula_values_and_gradients():
    torch.manual_seed(6)
    anchors = _unit(torch.randn(6, 8, dtype=torch.float64), 1).requires_grad_()
    positives = _unit(torch.randn(6, 8, dtype=torch.float64), 1).requires_grad_()
    loss = instance_discrimination_loss(anchors, positives, 0.1)
    reference = _reference_instance_loss(anchors, positives, 0.1)
    torch.testing.assert_close(loss, reference)
    grads = torch.autograd.grad(loss, (anchors, positives))
    reference_grads = torch.autograd.grad(reference, (anchors, positives))
    for grad, reference_grad in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(grad, reference_grad)


def test_instance_loss_lower_for_matching_positives():
    torch.manual_seed(7)
    anchors = _unit(torch.randn(64, 16), 1)
    matching = instance_discrimination_loss(anchors, anchors.clone())
    shuffled = instance_discrimination_loss(anchors, anchors[torch.randperm(64)])
    noisy = instance_discrimination_loss(anchors, _unit(anchors + 0.1 * torch.randn(64, 16), 1))
    assert torch.isfinite(matching) and torch.isfinite(shuffled)
    assert matching < noisy < shuffled
    # Identical vectors in many rows push P(k | i) to 1: the clamp keeps the loss finite.
    collapsed = torch.ones(8, 4, requires_grad=True)
    loss = instance_discrimination_loss(collapsed, collapsed * 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(collapsed.grad).all()


def test_mixup_targets_are_normalised_blends():
    torch.manual_seed(8)
    a = _unit(torch.randn(10, 6), 1)
    b = _unit(torch.randn(10, 6), 1)
    target = mixup_targets(a, b, 0.3)
    blend = 0.3 * a.numpy() + 0.7 * b.numpy()
    np.testing.assert_allclose(
        target.numpy(), blend / np.linalg.norm(blend, axis=1, keepdims=True), rtol=1e-5
    )
    torch.testing.assert_close(target.norm(dim=1), torch.ones(10))

    lam = torch.linspace(0.2, 0.8, 10)
    per_row = mixup_targets(a, b, lam)
    blend = lam.numpy()[:, None] * a.numpy() + (1 - lam.numpy()[:, None]) * b.numpy()
    np.testing.assert_allclose(
        per_row.numpy(), blend / np.linalg.norm(blend, axis=1, keepdims=True), rtol=1e-5
    )


def test_mixup_loss_trains_the_mixed_vectors_only():
    torch.manual_seed(9)
    a = _unit(torch.randn(16, 8), 1).requires_grad_()
    b = _unit(torch.randn(16, 8), 1).requires_grad_()
    mixed = _unit(0.4 * a.detach() + 0.6 * b.detach() + 0.05 * torch.randn(16, 8), 1).requires_grad_()
    loss = hypersphere_mixup_loss(mixed, a, b, 0.4)
    loss.backward()
    assert torch.isfinite(loss)
    assert mixed.grad is not None and mixed.grad.abs().sum() > 0
    assert a.grad is None and b.grad is None
    far = hypersphere_mixup_loss(_unit(torch.randn(16, 8), 1), a, b, 0.4)
    assert loss < far


# --- Dice, consistency, entropy ---------------------------------------------------------------------------


def test_dice_loss_identical_and_disjoint():
    mask = torch.zeros(2, 1, 4, 8, 8)
    mask[:, :, 1:3, 2:6, 2:6] = 1.0
    assert dice_loss(mask, mask).item() == pytest.approx(0.0, abs=1e-7)
    disjoint = 1.0 - mask
    total = mask.sum() + disjoint.sum()
    assert dice_loss(mask, disjoint).item() == pytest.approx(1.0 - 1.0 / (total.item() + 1.0))
    assert dice_loss(mask, disjoint).item() > 0.99


def test_consistency_loss_zero_for_equal_and_no_gradient_to_teacher():
    torch.manual_seed(10)
    teacher_mask = (torch.rand(2, 1, 6, 8, 8) > 0.7).float()
    assert consistency_loss(teacher_mask, teacher_mask.clone()).item() == pytest.approx(0.0, abs=1e-6)

    student = torch.rand(2, 1, 6, 8, 8, requires_grad=True)
    teacher = torch.rand(2, 1, 6, 8, 8, requires_grad=True)
    loss = consistency_loss(student, teacher)
    loss.backward()
    assert loss.item() > 0
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    # The two terms: volume Dice + one Dice over all MIPs together.
    mips_s = torch.cat([m.reshape(-1) for m in axis_mips(student.detach())])
    mips_t = torch.cat([m.reshape(-1) for m in axis_mips(teacher.detach())])
    expected = dice_loss(student.detach(), teacher.detach()) + dice_loss(mips_s, mips_t)
    torch.testing.assert_close(loss.detach(), expected)


def test_entropy_one_bit_at_half_and_zero_at_certainty():
    assert entropy_loss(torch.full((2, 8, 3, 3, 3), 0.5)).item() == pytest.approx(1.0, rel=1e-6)
    certain = torch.zeros(2, 8, 3, 3, 3)
    certain[:, 0] = 1.0
    certain.requires_grad_()
    loss = entropy_loss(certain)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(certain.grad).all()
    assert entropy_loss(torch.full((4,), 0.1)).item() == pytest.approx(
        -(0.1 * math.log2(0.1) + 0.9 * math.log2(0.9)), rel=1e-5
    )


# --- Reliability-Refinement, eq. (13)-(14) -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reliable_mask_excludes_the_unsure_band(dtype):
    unsure = torch.linspace(0.1, 0.9, 81, dtype=dtype)[1:-1]
    assert unsure.min() > 0.1 and unsure.max() < 0.9
    assert reliable_mask(unsure).sum().item() == 0
    sure = torch.tensor([0.0, 0.02, 0.1, 0.9, 0.97, 1.0], dtype=dtype)
    mask = reliable_mask(sure)
    assert mask.dtype == dtype
    assert mask.tolist() == [1.0] * 6


def test_refinement_loss_ignores_unreliable_voxels():
    torch.manual_seed(11)
    pseudo = torch.rand(2, 1, 4, 8, 8)
    reliable = reliable_mask(pseudo).bool()
    assert reliable.any() and (~reliable).any()
    prediction = torch.rand(2, 1, 4, 8, 8)
    loss = reliability_refinement_loss(prediction, pseudo)
    changed = torch.where(reliable, prediction, torch.rand_like(prediction))
    torch.testing.assert_close(reliability_refinement_loss(changed, pseudo), loss)
    changed_reliable = torch.where(reliable, torch.rand_like(prediction), prediction)
    assert not torch.isclose(reliability_refinement_loss(changed_reliable, pseudo), loss)
    # Predicting the pseudo labels on the reliable voxels (anything elsewhere) gives 0.
    labels = (pseudo > 0.5).float()
    perfect = torch.where(reliable, labels, torch.rand_like(prediction))
    assert reliability_refinement_loss(perfect, pseudo).item() == pytest.approx(0.0, abs=1e-6)


# --- schedules and the EMA teacher, eq. (10), (11), (18) ---------------------------------------------------


def test_ema_momentum_schedule():
    assert ema_momentum(0, 200) == 0.0
    assert ema_momentum(200, 200) == pytest.approx(0.5)
    assert ema_momentum(2000, 200) == pytest.approx(10 / 11)
    assert ema_momentum(8000, 200) == pytest.approx(1 - 1 / 41)


def test_consistency_weight_ramps_and_caps():
    iterations = 200
    values = [consistency_weight(i, iterations) for i in range(0, 1001, 50)]
    assert values[0] == 0.0
    assert consistency_weight(100, iterations) == pytest.approx(2.0)
    assert consistency_weight(499, iterations) < 10.0
    assert consistency_weight(500, iterations) == pytest.approx(10.0)
    assert max(values) == pytest.approx(10.0)
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))


def _small_network() -> nn.Module:
    return nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.BatchNorm3d(3), nn.ReLU(), nn.Conv3d(3, 1, 1))


def test_update_ema_formula_with_batchnorm_buffers():
    torch.manual_seed(12)
    student = _small_network()
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(torch.randn_like(parameter))
    student.train()
    for _ in range(3):  # moves the running statistics and num_batches_tracked
        student(torch.randn(2, 1, 4, 4, 4) * 3 + 1)
    before = copy.deepcopy(teacher.state_dict())
    update_ema(teacher, student, 0.3)
    after = teacher.state_dict()
    for name, value in student.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(after[name], 0.3 * before[name] + 0.7 * value)
        else:
            assert torch.equal(after[name], value), name
    assert after["1.num_batches_tracked"].item() == 3
    assert not torch.equal(after["1.running_mean"], before["1.running_mean"])

    update_ema(teacher, student, 0.0)
    for name, value in student.state_dict().items():
        assert torch.equal(teacher.state_dict()[name], value), name
    with pytest.raises(ValueError, match="momentum"):
        update_ema(teacher, student, 1.5)
    with pytest.raises(ValueError, match="same"):
        update_ema(teacher, nn.Linear(2, 2), 0.5)


# --- discriminator and adversarial losses, eq. (8)-(9) -----------------------------------------------------


def test_discriminator_architecture_and_output_range():
    torch.manual_seed(13)
    d = MaskDiscriminator()
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in d.modules() if isinstance(m, nn.Linear)]
    assert [c.out_channels for c in convs] == [16, 32, 32, 32]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(32, 32), (32, 1)]
    assert sum(isinstance(m, nn.MaxPool2d) for m in d.modules()) == 2
    assert all(m.negative_slope == 0.2 for m in d.modules() if isinstance(m, nn.LeakyReLU))
    for size in (96, 32, 4):
        x = torch.rand(5, 1, size, size)
        logits = d(x)
        probability = d.probability(x)
        assert logits.shape == probability.shape == (5, 1)
        assert ((probability > 0) & (probability < 1)).all()
        torch.testing.assert_close(probability, torch.sigmoid(logits))
    with pytest.raises(ValueError, match="at least 4"):
        d(torch.rand(1, 1, 3, 8))
    with pytest.raises(ValueError, match="4 positive ints"):
        MaskDiscriminator(widths=(16, 32, 32))


def test_discriminator_and_adversarial_losses_match_manual_bce():
    torch.manual_seed(14)
    real = torch.randn(24, 1, dtype=torch.float64) * 3
    fake = torch.randn(36, 1, dtype=torch.float64) * 3
    sig_r, sig_f = torch.sigmoid(real), torch.sigmoid(fake)
    expected_d = -torch.log(sig_r).mean() - torch.log(1 - sig_f).mean()
    torch.testing.assert_close(discriminator_loss(real, fake), expected_d)
    torch.testing.assert_close(adversarial_loss(fake), -torch.log(sig_f).mean())


# --- weights and argument checks ---------------------------------------------------------------------------


def test_loss_weights_defaults_and_checks():
    weights = SLDLossWeights()
    assert (weights.patch, weights.mixup, weights.region, weights.adversarial) == (1.0, 1.0, 10.0, 1.0)
    assert (weights.consistency_max, weights.entropy, weights.refinement) == (10.0, 0.1, 1.0)
    assert (weights.region_temperature, weights.instance_temperature) == (0.2, 0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        weights.region = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="entropy"):
        SLDLossWeights(entropy=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        SLDLossWeights(region_temperature=0.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: region_embeddings(torch.rand(1, 4, 2, 2, 2), torch.rand(2, 3, 2, 2, 2)), "share"),
        (
            lambda: region_discrimination_loss(torch.rand(1, 4, 2, 2, 2), torch.rand(1, 3, 2, 2, 2), 0.0),
            "temperature",
        ),
        (lambda: axis_mips(torch.rand(1, 2, 3, 3, 3)), "one channel"),
        (lambda: axis_mips(torch.rand(3, 3, 3)), "shape"),
        (lambda: discriminator_mips(torch.rand(1, 1, 3, 3, 3), (0, 4)), "size"),
        (lambda: instance_discrimination_loss(torch.rand(4, 3), torch.rand(5, 3)), "same shape"),
        (lambda: mixup_targets(torch.rand(4, 3), torch.rand(4, 3), 1.5), "lam"),
        (lambda: dice_loss(torch.rand(3), torch.rand(4)), "same shape"),
        (lambda: reliable_mask(torch.rand(3), confidence=0.3), "confidence"),
        (lambda: ema_momentum(5, 0), "iterations_per_epoch"),
        (lambda: consistency_weight(-1, 10), "iteration"),
    ],
)
def test_bad_arguments_say_the_rule(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_brightness_prior_is_lower_when_the_vessel_channel_covers_the_bright_voxels():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 1, 8, 8, 8, generator=generator) * 0.2
    bright = torch.zeros_like(images, dtype=torch.bool)
    bright[:, :, 2:4, 2:6, 3] = True
    images = torch.where(bright, images + 0.8, images)
    on_bright = bright.float().clamp(0.05, 0.95).requires_grad_(True)
    on_dark = (~bright).float().clamp(0.05, 0.95)
    good = brightness_prior_loss(images, on_bright)
    bad = brightness_prior_loss(images, on_dark)
    assert (
        float(good) < 1.0 < float(bad)
    )  # exp(c_rest - c_vessel): below 1 exactly when the vessel is brighter
    good.backward()
    assert torch.isfinite(on_bright.grad).all() and on_bright.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="one shape"):
        brightness_prior_loss(images, on_bright[:, :, :4])
