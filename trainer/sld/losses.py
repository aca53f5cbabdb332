"""3D-SLD losses and schedules: eq. (2)-(18) of Chen et al. [1]_ as the implementation notes reconstruct them.

Every loss is a pure function of tensors; nothing here holds state, so the trainer owns the models, the
optimisers and the iteration counter. Notation (notes Sec. 2): ``v_n`` is the voxel embedding of crop
``n`` (K channels, unit l2 norm per voxel), ``m_n`` its soft clustering (C channels, unit l1 norm per
voxel), ``m_n^t`` the vessel channel, ``tau`` and ``T`` temperatures.

=============================================  =======================================================
function                                       equation (paper [1]_ / notes ``3D-SLD.md``)
=============================================  =======================================================
:func:`region_embeddings`                      (2) [R], notes 2.3
:func:`cluster_prototypes`                     (3) [R]
:func:`region_discrimination_loss`             (4)-(5) [R], ``L_3drd``
:func:`axis_mips`, :func:`discriminator_mips`  (6)-(7) [R], notes 2.4
:func:`discriminator_loss`                     (8), ``L_d``
:func:`adversarial_loss`                       (9), ``L_adv``
:func:`update_ema`, :func:`ema_momentum`       (10)-(11)
:func:`consistency_loss`, :func:`dice_loss`    (12), ``L_con``
:func:`reliable_mask`                          (13)
:func:`reliability_refinement_loss`            (14), ``L_RR``
:func:`patch_vectors`, :func:`mixup_targets`   (15), ``L_3dPd`` and ``L_3dHm`` ([2]_, [3]_; notes 2.9)
:func:`instance_discrimination_loss`           (15), ``L_3dPd``
:func:`hypersphere_mixup_loss`                 (15), ``L_3dHm``
:class:`SLDLossWeights`                        (16)
:func:`entropy_loss`                           (17), ``L_e``
:func:`consistency_weight`                     (18)
=============================================  =======================================================

[R]: the paper's text lacks eq. (2)-(7); they are reconstructed from the same authors' 2D code (notes,
"Status of the source").

Dice losses. The paper writes ``L_dice = (-2 sum y y' + eps) / (sum y + sum y' + eps)`` (eq. 12, 14). Here
``1 - (2 sum y y' + eps) / (sum y + sum y' + eps)`` is used instead, so that the loss lies in [0, 1] and a
perfect match gives 0. It is ``1 +`` the negative smoothed Dice, so it has the same gradient; the paper's
literal numerator (``+eps`` after ``-2 sum y y'``) differs from that by ``2 eps / (sum y + sum y' + eps)``,
negligible for sums over a whole batch of crops (``eps = 1``).

References
----------
.. [1] Chen H, Wang X, Wang L. 3D Vessel Segmentation with Limited Guidance of 2D Structure-agnostic
       Vessel Annotations. arXiv 2302.03299, 2023. Sec. III-B to III-E, IV-B; eq. (2)-(18).
.. [2] Chen H, Wang R, Li J, Peng Q, Meng D, Wang L. Unsupervised Local Discrimination for Medical
       Images. arXiv 2108.09440, 2021. (Patch discrimination, hypersphere mixup.)
.. [3] Ye M, Zhang X, Yuen PC, Chang S-F. Unsupervised Embedding Learning via Invariant and Spreading
       Instance Feature. CVPR 2019. (The instance loss, eq. (3)-(5) there.)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

#: tau of eq. (4), from the authors' 2D code [R].
REGION_TEMPERATURE = 0.2
#: T of the instance loss of stage 1 (``BatchCriterion(1, 0.1)`` in the authors' 2D code) [R].
INSTANCE_TEMPERATURE = 0.1
#: eps of the Dice losses, eq. (12) and (14) [C].
DICE_EPSILON = 1.0
#: Inside the log2 of eq. (17), as the authors' 2D code.
ENTROPY_EPSILON = 1e-30
#: Largest probability inside ``log(1 - P)`` of the instance loss, so the log stays finite.
PROBABILITY_CEILING = 1.0 - 1e-7
#: v_c of eq. (13) and the pseudo-label threshold (Sec. IV-B).
CONFIDENCE_RATE = 0.9
PSEUDO_LABEL_THRESHOLD = 0.5
#: The patch grid of stage 1, 4 x 4 x 4 cells per crop (Sec. IV-B).
PATCH_GRID = 4


def _check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0; got {temperature!r}.")


def _check_volumes(name: str, tensor: torch.Tensor) -> None:
    if tensor.ndim != 5:
        raise ValueError(f"{name} must have shape (N, channels, Z, Y, X); got {tuple(tensor.shape)}.")


def _check_same_shape(first_name: str, first: torch.Tensor, second_name: str, second: torch.Tensor) -> None:
    if first.shape != second.shape:
        raise ValueError(
            f"{first_name} {tuple(first.shape)} and {second_name} {tuple(second.shape)} must have the same shape."
        )


# ---------------------------------------------------------------------------------------------------------
# 3D region discrimination, eq. (2)-(5)
# ---------------------------------------------------------------------------------------------------------


def region_embeddings(embedding: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """Region embeddings ``r_n^c = l2norm(mean_{d,h,w} m_n^c v_n)``, eq. (2) [R].

    Parameters
    ----------
    embedding : tensor, shape (N, K, Z, Y, X)
        ``v_n``, unit l2 norm along K at every voxel.
    clusters : tensor, shape (N, C, Z, Y, X)
        ``m_n``, soft cluster memberships (unit l1 norm along C at every voxel).

    Returns
    -------
    tensor, shape (N, C, K)
        One unit vector per crop and cluster, differentiable in both inputs. A cluster with no membership
        anywhere in a crop gives the zero vector (``F.normalize`` leaves it at 0 instead of NaN).
    """
    _check_volumes("embedding", embedding)
    _check_volumes("clusters", clusters)
    if embedding.shape[0] != clusters.shape[0] or embedding.shape[2:] != clusters.shape[2:]:
        raise ValueError(
            "embedding (N, K, Z, Y, X) and clusters (N, C, Z, Y, X) must share N, Z, Y and X; "
            f"got {tuple(embedding.shape)} and {tuple(clusters.shape)}."
        )
    voxels = math.prod(embedding.shape[2:])
    # The mean (not the sum) as eq. (2) writes it; after the l2 norm only the direction is left anyway.
    weighted = torch.einsum("nczyx,nkzyx->nck", clusters, embedding) / voxels
    return F.normalize(weighted, dim=-1)


def cluster_prototypes(regions: torch.Tensor) -> torch.Tensor:
    """Prototypes ``mu^c = l2norm(mean_n r_n^c)`` of the current batch, eq. (3) [R].

    Parameters
    ----------
    regions : tensor, shape (N, C, K)
        Region embeddings (:func:`region_embeddings`).

    Returns
    -------
    tensor, shape (C, K)
        Unit vectors. Not detached: as in the authors' code, the gradient also flows through the
        prototypes (no memory bank, notes 2.3).
    """
    if regions.ndim != 3:
        raise ValueError(f"regions must have shape (N, C, K); got {tuple(regions.shape)}.")
    return F.normalize(regions.mean(dim=0), dim=-1)


def region_discrimination_loss(
    embedding: torch.Tensor, clusters: torch.Tensor, temperature: float = REGION_TEMPERATURE
) -> torch.Tensor:
    """``L_3drd``, the 3D region discrimination loss, eq. (4)-(5) [R].

    ``P(c | r_n^c) = exp(<r_n^c, mu^c> / tau) / sum_j exp(<r_n^c, mu^j> / tau)`` (eq. 4) and
    ``L_3drd = -(1 / (N C)) sum_{n,c} log P(c | r_n^c)`` (eq. 5): every region must be closer to its own
    cluster's prototype than to the others, which pulls voxels of one cluster together across crops and
    pushes the clusters apart.

    Parameters
    ----------
    embedding : tensor, shape (N, K, Z, Y, X)
        ``v_n``, unit l2 norm along K.
    clusters : tensor, shape (N, C, Z, Y, X)
        ``m_n``, unit l1 norm along C. N counts the non-mixup crops of the iteration (notes 5.2).
    temperature : float, > 0
        ``tau``; 0.2 [R].

    Returns
    -------
    tensor, shape ()
        Between about ``-log(1 / (1 + (C - 1) exp(-2 / tau)))`` (perfectly separated clusters) and
        ``log C`` or more (indistinguishable ones); differentiable in both inputs.
    """
    _check_temperature(temperature)
    regions = region_embeddings(embedding, clusters)
    prototypes = cluster_prototypes(regions)
    logits = torch.einsum("nck,jk->ncj", regions, prototypes) / temperature
    count, classes = logits.shape[:2]
    # Region c of every crop belongs to prototype c: a C-way classification with target c.
    targets = torch.arange(classes, device=logits.device).repeat(count)
    return F.cross_entropy(logits.reshape(count * classes, classes), targets)


# ---------------------------------------------------------------------------------------------------------
# MIPs, eq. (6)-(7)
# ---------------------------------------------------------------------------------------------------------


def axis_mips(probability: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three maximum intensity projections ``s_n^1, s_n^2, s_n^3`` of a soft mask, eq. (6)-(7) [R].

    Parameters
    ----------
    probability : tensor, shape (N, 1, Z, Y, X) or (N, Z, Y, X)
        ``x_n^t = m_n^t``, the vessel channel.

    Returns
    -------
    along_x : tensor, shape (N, Z, Y)
        ``s_n^1``, maximum along X.
    along_y : tensor, shape (N, Z, X)
        ``s_n^2``, maximum along Y.
    along_z : tensor, shape (N, Y, X)
        ``s_n^3``, maximum along Z.

    Notes
    -----
    ``torch.amax`` is differentiable: the gradient reaches the voxel(s) holding each ray's maximum (split
    evenly between ties), which is how the adversarial loss shapes the 3D mask through its projections.
    """
    if probability.ndim == 5:
        if probability.shape[1] != 1:
            raise ValueError(
                f"probability must have one channel, shape (N, 1, Z, Y, X); got {tuple(probability.shape)}."
            )
        probability = probability[:, 0]
    elif probability.ndim != 4:
        raise ValueError(
            f"probability must have shape (N, 1, Z, Y, X) or (N, Z, Y, X); got {tuple(probability.shape)}."
        )
    return probability.amax(dim=3), probability.amax(dim=2), probability.amax(dim=1)


def _size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or any(not isinstance(s, int) or s < 1 for s in pair):
        raise ValueError(f"size must be a positive int or a pair (H, W) of positive ints; got {size!r}.")
    return pair


def discriminator_mips(probability: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """The MIP set ``S`` as the discriminator's input batch: all MIPs resized to ``size`` (notes 2.4, 2.6).

    Parameters
    ----------
    probability : tensor, shape (N, 1, Z, Y, X) or (N, Z, Y, X)
        The vessel channel ``m_n^t``.
    size : int or (H, W)
        The reference masks' size in pixels; an int means ``(size, size)``. A MIP already of that size is
        passed through; the others are resized bilinearly (``align_corners=False``), which keeps them soft
        and differentiable (e.g. the X and Y MIPs of a 32 x 64 x 64 crop, 32 x 64 pixels, to 64 x 64).

    Returns
    -------
    tensor, shape (3 N, 1, H, W)
        Sample-major, as the paper lists ``S = {s_1^1, s_1^2, s_1^3, s_2^1, ...}``: row ``3 n + a`` is
        MIP ``a`` (0: along X, 1: along Y, 2: along Z) of crop ``n``.
    """
    height, width = _size_pair(size)
    resized = []
    for mip in axis_mips(probability):
        mip = mip.unsqueeze(1)
        if mip.shape[2:] != (height, width):
            mip = F.interpolate(mip, size=(height, width), mode="bilinear", align_corners=False)
        resized.append(mip)
    # (N, 3, 1, H, W) -> (3N, 1, H, W): the three projections of one crop stay next to each other.
    return torch.stack(resized, dim=1).reshape(-1, 1, height, width)


# ---------------------------------------------------------------------------------------------------------
# Stage 1: patch discrimination and hypersphere mixup, eq. (15)
# ---------------------------------------------------------------------------------------------------------


def patch_vectors(embedding: torch.Tensor, grid: int = PATCH_GRID) -> torch.Tensor:
    """Patch vectors: the embedding averaged over a ``grid^3`` cell grid, then l2-normalised (notes 2.9).

    Parameters
    ----------
    embedding : tensor, shape (N, K, Z, Y, X)
        ``v_n``. Cells follow ``adaptive_avg_pool3d``, so Z, Y, X need not be multiples of ``grid``.
    grid : int, >= 1
        Cells per axis; 4 in the paper (4 x 4 x 4 patches per crop).

    Returns
    -------
    tensor, shape (N * grid**3, K)
        Unit vectors. Row ``n grid^3 + (z grid + y) grid + x`` is cell ``(z, y, x)`` of crop ``n``: crop
        after crop, cells in raster (C) order with X fastest. Two views of one crop, both mapped back to
        the crop's orientation, therefore give their positive pairs on the same rows.
    """
    _check_volumes("embedding", embedding)
    if not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be a positive int; got {grid!r}.")
    pooled = F.normalize(F.adaptive_avg_pool3d(embedding, grid), dim=1)
    return pooled.permute(0, 2, 3, 4, 1).reshape(-1, embedding.shape[1])


def instance_discrimination_loss(
    anchors: torch.Tensor, positives: torch.Tensor, temperature: float = INSTANCE_TEMPERATURE
) -> torch.Tensor:
    """The invariant-and-spreading instance loss of Ye et al. [3]_, as the notes 2.9 define ``L_3dPd``.

    With ``x = cat(anchors, positives)`` (2n rows), row ``i``'s positive ``j`` is the same row of the
    other view (``j = i + n`` or ``i - n``), every other row a negative, and

    ``P(k | i) = exp(x_i . x_k / T) / sum_{k' != i} exp(x_i . x_k' / T)``,

    ``L = -(1 / 2n) sum_i [log P(j | i) + sum_{k != i, j} log(1 - P(k | i))]``.

    The first term pulls the two views of an instance together (invariance), the second pushes every
    other instance away (spreading).

    Parameters
    ----------
    anchors, positives : tensor, shape (n, K)
        Unit vectors; row ``i`` of both is one instance (e.g. :func:`patch_vectors` of two views).
    temperature : float, > 0
        ``T``; 0.1 [R].

    Returns
    -------
    tensor, shape ()
        Non-negative.

    Notes
    -----
    Right-hand operands are detached, as in Ye et al.'s code (notes 2.9): every similarity is
    ``x_i . stopgrad(x_k)``, so row ``i`` receives the gradient of its own terms only, and a pair's
    positive is treated as a fixed target from each side. Both views still learn, each as a left operand.
    ``log P`` is computed as a log-softmax (no overflow of ``exp(1 / T)``); ``P(k | i)`` is clamped to
    at most ``1 - 1e-7`` inside ``log(1 - P)``.
    """
    if anchors.ndim != 2:
        raise ValueError(f"anchors must have shape (n, K); got {tuple(anchors.shape)}.")
    _check_same_shape("anchors", anchors, "positives", positives)
    _check_temperature(temperature)
    count = anchors.shape[0]
    features = torch.cat([anchors, positives], dim=0)
    similarity = features @ features.detach().t() / temperature
    rows = torch.arange(2 * count, device=features.device)
    partner = torch.cat([rows[count:], rows[:count]])
    self_mask = torch.eye(2 * count, dtype=torch.bool, device=features.device)
    # Denominator over k != i (eq. 3 of [3]): the self-similarity is left out with -inf.
    log_normaliser = torch.logsumexp(similarity.masked_fill(self_mask, float("-inf")), dim=1)
    log_positive = similarity[rows, partner] - log_normaliser
    negative_probability = torch.exp(similarity - log_normaliser.unsqueeze(1))
    negative_mask = ~self_mask
    negative_mask[rows, partner] = False
    log_not_chosen = torch.log1p(-negative_probability.clamp(max=PROBABILITY_CEILING))
    log_not_chosen = (log_not_chosen * negative_mask).sum(dim=1)
    return -(log_positive + log_not_chosen).sum() / (2 * count)


def _mixing_weight(lam: float | torch.Tensor, rows: int, like: torch.Tensor) -> float | torch.Tensor:
    if isinstance(lam, torch.Tensor):
        lam = lam.to(dtype=like.dtype, device=like.device)
        # One weight per row, (n,) -> (n, 1), so it scales whole vectors.
        return lam.unsqueeze(-1) if lam.ndim == 1 and lam.shape[0] == rows else lam
    if not (math.isfinite(lam) and 0.0 <= lam <= 1.0):
        raise ValueError(f"lam must lie in [0, 1]; got {lam!r}.")
    return float(lam)


def mixup_targets(
    vectors_a: torch.Tensor, vectors_b: torch.Tensor, lam: float | torch.Tensor
) -> torch.Tensor:
    """Hypersphere mixup targets ``l2norm(lam p_a + (1 - lam) p_b)``, detached (notes 2.9).

    Parameters
    ----------
    vectors_a, vectors_b : tensor, shape (n, K)
        Patch vectors of the two volumes that were mixed (:func:`patch_vectors`), same rows.
    lam : float in [0, 1] or tensor
        Weight of volume ``a`` (``x_mix = lam x_a + (1 - lam) x_b``). A tensor of shape (n,) gives one
        weight per row (for one lambda per crop, repeat it ``grid**3`` times with ``repeat_interleave``);
        any other tensor must broadcast against (n, K).

    Returns
    -------
    tensor, shape (n, K)
        Unit vectors on the great circle between ``p_a`` and ``p_b``; no gradient.
    """
    _check_same_shape("vectors_a", vectors_a, "vectors_b", vectors_b)
    weight = _mixing_weight(lam, vectors_a.shape[0], vectors_a)
    return F.normalize(weight * vectors_a + (1.0 - weight) * vectors_b, dim=-1).detach()


def hypersphere_mixup_loss(
    mixed_vectors: torch.Tensor,
    vectors_a: torch.Tensor,
    vectors_b: torch.Tensor,
    lam: float | torch.Tensor,
    temperature: float = INSTANCE_TEMPERATURE,
) -> torch.Tensor:
    """``L_3dHm``: the instance loss with the mixed crop's patches and their mixup targets as pairs.

    Parameters
    ----------
    mixed_vectors : tensor, shape (n, K)
        Patch vectors of the mixed volume ``lam x_a + (1 - lam) x_b``.
    vectors_a, vectors_b : tensor, shape (n, K)
        Patch vectors of ``x_a`` and ``x_b``.
    lam : float in [0, 1] or tensor of shape (n,) or broadcastable to (n, K)
        See :func:`mixup_targets`; ``lam ~ U(0.2, 0.8)`` in the notes.
    temperature : float, > 0
        ``T`` of :func:`instance_discrimination_loss`.

    Returns
    -------
    tensor, shape ()
        Differentiable in ``mixed_vectors`` only: the targets are detached.
    """
    targets = mixup_targets(vectors_a, vectors_b, lam)
    return instance_discrimination_loss(mixed_vectors, targets, temperature)


# ---------------------------------------------------------------------------------------------------------
# Dice, temporal consistency and entropy, eq. (12), (17)
# ---------------------------------------------------------------------------------------------------------


def dice_loss(prediction: torch.Tensor, target: torch.Tensor, eps: float = DICE_EPSILON) -> torch.Tensor:
    """``1 - (2 sum p t + eps) / (sum p + sum t + eps)``, one Dice over the whole set (eq. 12).

    Parameters
    ----------
    prediction, target : tensor, any shape (the same for both)
        Probabilities or binary masks in [0, 1]. The sums run over every element, so a batch counts as
        one volume (the paper's ``sum_n``).
    eps : float, >= 0
        Smoothing; 1 [C]. Two empty masks give 0.

    Returns
    -------
    tensor, shape ()
        In [0, 1]; 0 for identical binary masks, ``1 - eps / (sum p + sum t + eps)`` for disjoint ones.
        The paper writes the negative Dice: this differs by a constant and has the same gradient (module
        docstring).
    """
    _check_same_shape("prediction", prediction, "target", target)
    intersection = (prediction * target).sum()
    return 1.0 - (2.0 * intersection + eps) / (prediction.sum() + target.sum() + eps)


def consistency_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = DICE_EPSILON) -> torch.Tensor:
    """``L_con = L_dice(M^t, M^*t) + L_dice(MIPs of M^t, MIPs of M^*t)``, eq. (12).

    Parameters
    ----------
    student : tensor, shape (N, 1, Z, Y, X) or (N, Z, Y, X)
        ``M^t``, the vessel channel of ``f`` on the crops.
    teacher : tensor, same shape
        ``M^*t``, the vessel channel of the EMA model ``f_e`` on the same crops; detached here, so no
        gradient ever reaches the teacher (it changes only through :func:`update_ema`).
    eps : float
        Of :func:`dice_loss`.

    Returns
    -------
    tensor, shape ()
        In [0, 2]; the MIP term is one Dice over the three MIPs of every crop together.
    """
    _check_same_shape("student", student, "teacher", teacher)
    teacher = teacher.detach()
    volume_term = dice_loss(student, teacher, eps)
    student_mips = torch.cat([mip.reshape(-1) for mip in axis_mips(student)])
    teacher_mips = torch.cat([mip.reshape(-1) for mip in axis_mips(teacher)])
    return volume_term + dice_loss(student_mips, teacher_mips, eps)


def entropy_loss(clusters: torch.Tensor, eps: float = ENTROPY_EPSILON) -> torch.Tensor:
    """``L_e``, the mean binary entropy in bits of every cluster membership, eq. (17) as the notes 2.8.

    ``mean(-m log2(m + eps) - (1 - m) log2(1 - m + eps))`` over N C Z Y X: minimised, it pushes every
    membership to 0 or 1. (Eq. 17's bracket puts ``1 / NCDHW`` on the first sum only; the authors' code
    averages both.)

    Parameters
    ----------
    clusters : tensor, any shape, typically (N, C, Z, Y, X)
        ``m_n`` in [0, 1].
    eps : float
        Keeps the logs and their gradients finite at exactly 0 and 1 (1e-30, as the authors' code; in
        float32 it changes nothing else).

    Returns
    -------
    tensor, shape ()
        In [0, 1] bit: 1 at m = 0.5, 0 at m = 0 or 1.
    """
    return (
        -clusters * torch.log2(clusters + eps) - (1.0 - clusters) * torch.log2(1.0 - clusters + eps)
    ).mean()


# ---------------------------------------------------------------------------------------------------------
# Reliability-Refinement, eq. (13)-(14)
# ---------------------------------------------------------------------------------------------------------


def _check_confidence(confidence: float) -> None:
    if not (math.isfinite(confidence) and 0.5 <= confidence <= 1.0):
        raise ValueError(f"confidence must lie in [0.5, 1]; got {confidence!r}.")


@torch.no_grad()
def flipped_decision_maps(network: nn.Module, images: torch.Tensor, views: int = 8) -> Iterator[torch.Tensor]:
    """The decision map of each of ``views`` flips of (Z, Y, X) of ``images``, turned back (eq. 13's views).

    Parameters
    ----------
    network : module with ``decision_probability(images) -> (N, 1, Z, Y, X)``
        ``f'`` (an ``SLDNet``): its decision map is ``m^t``, or with ``decision = "largest"`` the share of
        ``m^t`` against the largest rival cluster; ``y = [y' > 0.5]`` is then the decision the model makes.
    images : tensor, shape (N, 1, Z, Y, X)
    views : int in [1, 8]
        ``N_e``; the first ``views`` of the 8 flips, the identity first.

    Yields
    ------
    tensor, shape (N, 1, Z, Y, X), float32: one view's map on the grid of ``images``.
    """
    flips = [(z, y, x) for z in (False, True) for y in (False, True) for x in (False, True)][:views]
    for flip in flips:
        dims = [2 + i for i, flipped in enumerate(flip) if flipped]
        turned = torch.flip(images, dims) if dims else images
        probability = network.decision_probability(turned).float()
        yield torch.flip(probability, dims) if dims else probability


def average_view_maps(maps: Iterable[torch.Tensor], mode: str = "map") -> torch.Tensor:
    """``y'_n``, eq. (13): the mean of the views' decision maps (:func:`flipped_decision_maps`).

    Parameters
    ----------
    maps : iterable of tensors of one shape, in [0, 1]
    mode : "map" or "votes"
        Average the decision maps (eq. 13 as written) or the decisions themselves (1 where a view calls the
        voxel vessel), so that ``y'`` is the share of the views that agree (ours: with soft clusters the
        averaged map never leaves (0.1, 0.9) and no voxel is reliable).

    Returns
    -------
    tensor, float32 in [0, 1], the maps' shape
    """
    if mode not in ("map", "votes"):
        raise ValueError(f'mode must be "map" or "votes"; got {mode!r}.')
    total, count = None, 0
    for probability in maps:
        if mode == "votes":
            probability = (probability > PSEUDO_LABEL_THRESHOLD).float()
        total = probability.float().clone() if total is None else total + probability
        count += 1
    if total is None:
        raise ValueError("average_view_maps needs at least one map.")
    return total / count


def averaged_pseudo_labels(
    network: nn.Module, images: torch.Tensor, views: int = 8, mode: str = "map"
) -> torch.Tensor:
    """``y'_n``, eq. (13): ``f'``'s decision maps (``mode = "map"``) or decisions (``"votes"``) averaged over
    ``views`` flips of (Z, Y, X), turned back; (N, 1, Z, Y, X) float32 in [0, 1] for images (N, 1, Z, Y, X)."""
    return average_view_maps(flipped_decision_maps(network, images, views), mode)


def reliable_mask(pseudo_probability: torch.Tensor, confidence: float = CONFIDENCE_RATE) -> torch.Tensor:
    """``q_n``: 0 where ``(1 - v_c) < y' < v_c``, 1 elsewhere, eq. (13).

    Parameters
    ----------
    pseudo_probability : tensor, any shape
        ``y'_n``, the mean prediction of the best model over ``N_e`` augmentations, in [0, 1].
    confidence : float in [0.5, 1]
        ``v_c``; 0.9.

    Returns
    -------
    tensor, same shape and dtype (floating)
        1.0 on reliable voxels (``y' <= 1 - v_c`` or ``y' >= v_c``), 0.0 on the others.

    Notes
    -----
    Evaluated as ``max(y', 1 - y') < v_c``, the same set, so that ``y' = 0.1`` counts as reliable in
    float64 too (``1 - 0.9`` is ``0.0999...`` there).
    """
    _check_confidence(confidence)
    unsure = torch.maximum(pseudo_probability, 1.0 - pseudo_probability) < confidence
    dtype = pseudo_probability.dtype if pseudo_probability.is_floating_point() else torch.float32
    return (~unsure).to(dtype)


def reliability_refinement_loss(
    probability: torch.Tensor,
    pseudo_probability: torch.Tensor,
    confidence: float = CONFIDENCE_RATE,
    threshold: float = PSEUDO_LABEL_THRESHOLD,
    eps: float = DICE_EPSILON,
) -> torch.Tensor:
    """``L_RR``, a Dice loss against the pseudo labels on reliable voxels only, eq. (14).

    ``y = [y' > threshold]``, ``q = reliable_mask(y')`` (eq. 13) and
    ``L_RR = 1 - (2 sum y p q + eps) / (sum y q + sum p q + eps)`` (``1 -`` Dice, module docstring).

    Parameters
    ----------
    probability : tensor, any shape
        ``f(x_n)``, the vessel probability of the model being refined.
    pseudo_probability : tensor, same shape
        ``y'_n`` (detached here: the pseudo labels are targets).
    confidence : float in [0.5, 1]
        ``v_c``; 0.9.
    threshold : float
        Pseudo-label threshold; 0.5.
    eps : float
        Smoothing; 1 [C].

    Returns
    -------
    tensor, shape ()
        In [0, 1]; independent of ``probability`` wherever ``q = 0``.
    """
    _check_same_shape("probability", probability, "pseudo_probability", pseudo_probability)
    pseudo_probability = pseudo_probability.detach()
    label = (pseudo_probability > threshold).to(probability.dtype)
    reliable = reliable_mask(pseudo_probability, confidence).to(probability.dtype)
    masked = probability * reliable
    intersection = (label * masked).sum()
    return 1.0 - (2.0 * intersection + eps) / ((label * reliable).sum() + masked.sum() + eps)


# ---------------------------------------------------------------------------------------------------------
# Adversarial losses, eq. (8)-(9)
# ---------------------------------------------------------------------------------------------------------


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``L_d = BCE(d(R'), 1) + BCE(d(S), 0)``, eq. (8).

    Parameters
    ----------
    real_logits : tensor, shape (B_real, 1)
        Discriminator logits of the reference masks ``R'``.
    fake_logits : tensor, shape (B_fake, 1)
        Logits of the MIPs ``S`` (detach them when updating ``d`` only).

    Returns
    -------
    tensor, shape ()
        Each BCE averaged over its own set, then summed, so the 36 fake vs 24 real of the paper weigh
        equally. Computed from logits, which stays finite where ``log(sigmoid)`` would underflow.
    """
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """``L_adv = BCE(d(S), 1)``, eq. (9): the segmenter is rewarded when its MIPs pass for references.

    Parameters
    ----------
    fake_logits : tensor, shape (B_fake, 1)
        Discriminator logits of the MIPs ``S`` (not detached: the gradient goes through ``d`` into ``f``).

    Returns
    -------
    tensor, shape ()
    """
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


# ---------------------------------------------------------------------------------------------------------
# EMA teacher and schedules, eq. (10), (11), (18)
# ---------------------------------------------------------------------------------------------------------


def _check_schedule(iteration: int | float, iterations_per_epoch: int | float) -> None:
    if not (math.isfinite(iteration) and iteration >= 0):
        raise ValueError(f"iteration must be >= 0; got {iteration!r}.")
    if not (math.isfinite(iterations_per_epoch) and iterations_per_epoch > 0):
        raise ValueError(f"iterations_per_epoch must be > 0; got {iterations_per_epoch!r}.")


def ema_momentum(iteration: int | float, iterations_per_epoch: int | float) -> float:
    """``a_i = 1 - 1 / (i / I + 1)``, the EMA smoothing coefficient, eq. (11).

    Parameters
    ----------
    iteration : int, >= 0
        ``i``, counted from the start of stage 2 (notes 5.6).
    iterations_per_epoch : int, > 0
        ``I``; 200 in the paper. A shortened run must shorten it too, to keep the schedule's shape.

    Returns
    -------
    float in [0, 1)
        0 at ``i = 0`` (the teacher becomes the student), 0.5 after one epoch, 10/11 after ten.
    """
    _check_schedule(iteration, iterations_per_epoch)
    return 1.0 - 1.0 / (iteration / iterations_per_epoch + 1.0)


def consistency_weight(
    iteration: int | float,
    iterations_per_epoch: int | float,
    slope: float = 4.0,
    maximum: float = 10.0,
) -> float:
    """``lambda_i = min(slope i / I, maximum)``, the ramp-up weight of ``L_con``, eq. (18).

    Parameters
    ----------
    iteration : int, >= 0
        ``i``, counted from the start of stage 2.
    iterations_per_epoch : int, > 0
        ``I``.
    slope : float
        Weight gained per epoch; 4.
    maximum : float
        The cap; 10 (reached after ``maximum / slope = 2.5`` epochs).

    Returns
    -------
    float
    """
    _check_schedule(iteration, iterations_per_epoch)
    return min(slope * iteration / iterations_per_epoch, maximum)


@torch.no_grad()
def update_ema(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``theta* <- a theta* + (1 - a) theta``, eq. (10), in place on ``teacher``.

    Parameters
    ----------
    teacher : nn.Module
        ``f_e``; same architecture as ``student`` (same parameter and buffer names and shapes).
    student : nn.Module
        ``f``.
    momentum : float in [0, 1]
        ``a_i`` (:func:`ema_momentum`): 0 copies the student, 1 leaves the teacher as it is.

    Notes
    -----
    Floating-point buffers (BatchNorm running mean and variance) are averaged the same way [C], so the
    teacher's normalisation follows its averaged weights; integer buffers (``num_batches_tracked``) are
    copied, since an average of counters means nothing.
    """
    if not (math.isfinite(momentum) and 0.0 <= momentum <= 1.0):
        raise ValueError(f"momentum must lie in [0, 1]; got {momentum!r}.")
    pairs = (
        (dict(teacher.named_parameters()), dict(student.named_parameters()), "parameters"),
        (dict(teacher.named_buffers()), dict(student.named_buffers()), "buffers"),
    )
    for teacher_tensors, student_tensors, kind in pairs:
        if teacher_tensors.keys() != student_tensors.keys():
            raise ValueError(f"teacher and student must have the same {kind} (same architecture).")
        for name, target in teacher_tensors.items():
            source = student_tensors[name]
            if target.shape != source.shape:
                raise ValueError(
                    f"{kind[:-1]} {name!r}: teacher {tuple(target.shape)} vs student {tuple(source.shape)}."
                )
            if target.is_floating_point():
                # mul then add (not lerp): momentum 0 then gives the student's values exactly.
                target.mul_(momentum).add_(source.to(target.dtype), alpha=1.0 - momentum)
            else:
                target.copy_(source)


# ---------------------------------------------------------------------------------------------------------
# Weights, eq. (16)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SLDLossWeights:
    """The weights and temperatures of the stage-2 objective, eq. (16), and of ``L_RR`` (stage 3).

    ``L_f = patch L_3dPd + mixup L_3dHm + region L_3drd + adversarial L_adv + lambda_i L_con
    + entropy L_e`` (+ ``refinement L_RR`` in stage 3, notes 2.11 [C]), with
    ``lambda_i = min(consistency_slope i / I, consistency_max)`` (eq. 18).

    Parameters
    ----------
    patch, mixup : float, >= 0
        Weights of ``L_3dPd`` and ``L_3dHm``; 1 and 1.
    region : float, >= 0
        Weight of ``L_3drd``; 10.
    adversarial : float, >= 0
        Weight of ``L_adv``; 1.
    consistency_max, consistency_slope : float, >= 0
        Cap and slope per epoch of the ``L_con`` ramp; 10 and 4.
    entropy : float, >= 0
        Weight of ``L_e``; 0.1.
    refinement : float, >= 0
        Weight of ``L_RR`` in stage 3; 1 (the paper gives none: [C]).
    brightness : float, >= 0
        Weight of :func:`brightness_prior_loss` in stages 2-3; 0 (not in the paper). A label-free prior
        (vessels are brighter than their surroundings in TOF-MRA and 2PM) that ties the vessel channel to
        bright voxels: without it the adversarial term is met by any structure whose MIPs look like the
        references, and on the TOF phantoms the vessel channel chose dark tissue (AP 0.01).
    region_temperature : float, > 0
        ``tau`` of eq. (4); 0.2 [R].
    instance_temperature : float, > 0
        ``T`` of the instance losses; 0.1 [R].
    """

    patch: float = 1.0
    mixup: float = 1.0
    region: float = 10.0
    adversarial: float = 1.0
    consistency_max: float = 10.0
    consistency_slope: float = 4.0
    entropy: float = 0.1
    refinement: float = 1.0
    brightness: float = 0.0
    region_temperature: float = REGION_TEMPERATURE
    instance_temperature: float = INSTANCE_TEMPERATURE

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{field.name} must be a finite number; got {value!r}.")
            if field.name.endswith("temperature"):
                if value <= 0:
                    raise ValueError(f"{field.name} must be > 0; got {value!r}.")
            elif value < 0:
                raise ValueError(f"{field.name} must be >= 0 (every term is minimised); got {value!r}.")

    def as_dict(self) -> dict[str, float]:
        """All fields, for a run's configuration log."""
        return dataclasses.asdict(self)


def brightness_prior_loss(images: torch.Tensor, vessel: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``L_bright = exp(c_rest - c_vessel)``, averaged over the batch: the vessel channel must be brighter.

    Not part of 3D-SLD: the ranking term of UMIS (eq. 22 there,
    :func:`VesselSegLib.unsupervised.loss.ranking_loss`) applied to the vessel channel's memberships,
    ``c_vessel = sum(m I) / sum(m)`` and ``c_rest = sum((1 - m) I) / sum(1 - m)`` per crop (UMIS's region
    means, eq. 19-20 there, :func:`VesselSegLib.unsupervised.loss.region_means`). It reads images
    only (no label), and assumes vessels brighter than background, true of TOF-MRA and 2PM inputs as the
    pipeline normalises them.

    Parameters
    ----------
    images : tensor, shape (B, 1, Z, Y, X)
        The crops the network saw.
    vessel : tensor, shape (B, 1, Z, Y, X)
        The vessel channel's memberships m^t in [0, 1].

    Returns
    -------
    tensor, shape ()
    """
    from VesselSegLib.unsupervised.loss import ranking_loss, region_means

    if images.shape != vessel.shape:
        raise ValueError(f"images {tuple(images.shape)} and vessel {tuple(vessel.shape)} must have one shape")
    return ranking_loss(*region_means(images, vessel, eps=eps))
