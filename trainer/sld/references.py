"""Crop-and-Overlap reference masks of 3D-SLD and their label-free parameter choice (notes Sec. 2.5, 6.3).

The discriminator of 3D-SLD sees "real" 2D vessel masks R' next to the network's soft MIPs. A reference is
made by Crop-and-Overlap (Chen et al., Sec. III-C): K random crops of random 2D guidance masks, each
resized to the MIP size, united pixel-wise. Two knobs shape what the network learns: a smaller crop
makes thicker vessels after the resize, more patches make denser references. The paper tunes them per
target without saying how; here they are chosen from label-free knowledge only (notes Sec. 6.3):

- the target vessel width in voxels, from a physical prior of the modality (:data:`VESSEL_WIDTH_PRIORS`)
  and the voxel size (:func:`target_vessel_width_voxels`);
- the target density, the foreground fraction of Otsu-thresholded *intensity* MIPs of unlabelled
  training crops (:func:`foreground_fraction_of_intensity_mips`).

:func:`choose_crop_settings` turns both into :class:`CropOverlapSettings`. No function here takes, or may
be given, a 3D label: the inputs are 2D guidance masks of another structure, physical priors, and images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: Tries per patch to find a crop with at least ``min_foreground`` vessel; after that the crop with the most
#: foreground among the tries is taken.
MAX_CROP_TRIES = 20

#: Physical median vessel diameter priors by modality, in millimetres (notes Sec. 6.3). Prior knowledge of
#: anatomy and imaging, not measured on any label:
#: - "2PM" (two-photon microscopy of cortex): capillaries are 3-8 um wide and dominate the vessel count,
#:   with penetrating and pial vessels up to ~30 um; 6 um is the typical (median) width.
#: - "TOF-MRA": the visible arteries are 1-8 voxels wide at 0.4-0.5 mm voxels; the median is ~3 voxels,
#:   1.5 mm.
#: - "SWI": the veins (and micro-vessels) seen in SWI are mostly thinner than the TOF arteries, ~1 mm.
VESSEL_WIDTH_PRIORS: dict[str, float] = {"2PM": 0.006, "TOF-MRA": 1.5, "SWI": 1.0}


@dataclass(frozen=True)
class CropOverlapSettings:
    """How Crop-and-Overlap draws a reference mask (notes Sec. 2.5).

    Attributes
    ----------
    size : tuple of int
        (H, W) of a reference, the MIP size (96 x 96 in the paper).
    crop_scale : tuple of float
        (s_min, s_max): the crop's (longer) side is ``s * min(source H, W)`` with s ~ U[s_min, s_max],
        0 < s_min <= s_max <= 1.
    max_patches : int
        K_max >= 1: a reference unites K ~ U{1, ..., K_max} patches.
    min_foreground : float
        A crop with less vessel than this fraction is drawn again (up to :data:`MAX_CROP_TRIES` times, then
        the crop with the most vessel is taken), in [0, 1).
    rotate : bool
        Flip each patch at random and rotate it by a random multiple of 90 degrees.
    """

    size: tuple[int, int]
    crop_scale: tuple[float, float] = (0.10, 0.50)
    max_patches: int = 4
    min_foreground: float = 0.005
    rotate: bool = True

    def __post_init__(self) -> None:
        size = tuple(self.size)
        if len(size) != 2 or not all(isinstance(v, int | np.integer) and v >= 2 for v in size):
            raise ValueError(f"size must be two integers >= 2 (H, W) of the MIPs; got {self.size!r}")
        object.__setattr__(self, "size", (int(size[0]), int(size[1])))
        scale = tuple(self.crop_scale)
        if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(
                f"crop_scale must be (s_min, s_max) with 0 < s_min <= s_max <= 1; got {self.crop_scale!r}"
            )
        object.__setattr__(self, "crop_scale", (float(scale[0]), float(scale[1])))
        if not isinstance(self.max_patches, int | np.integer) or self.max_patches < 1:
            raise ValueError(f"max_patches must be an integer >= 1; got {self.max_patches!r}")
        object.__setattr__(self, "max_patches", int(self.max_patches))
        if not 0.0 <= self.min_foreground < 1.0:
            raise ValueError(f"min_foreground must lie in [0, 1); got {self.min_foreground!r}")


def _check_masks(masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    if len(masks) == 0:
        raise ValueError("masks is empty; give at least one 2D guidance mask (see trainer.sld.guidance)")
    checked = []
    for index, mask in enumerate(masks):
        mask = np.asarray(mask)
        if mask.ndim != 2 or min(mask.shape) < 2:
            raise ValueError(
                f"masks[{index}] must be a 2D mask of at least 2 x 2 pixels; got shape {mask.shape}"
            )
        checked.append(mask > 0)
    return checked


def _draw_patch(mask: np.ndarray, settings: CropOverlapSettings, rng: np.random.Generator) -> np.ndarray:
    """One random crop of ``mask``, flipped/rotated, resized to ``settings.size`` (float, not yet binary).

    The crop has the aspect of the MIP (its longer side is ``s * min(mask.shape)``), so the resize scales
    both axes by the same factor ``max(size) / crop side``."""
    from skimage.transform import resize

    height, width = settings.size
    longer = max(height, width)
    k = int(rng.integers(4)) if settings.rotate else 0
    flip_rows, flip_columns = (
        (bool(rng.integers(2)), bool(rng.integers(2))) if settings.rotate else (False, False)
    )
    # For an odd number of quarter turns crop the transposed shape, which rot90 turns into (H, W).
    target = (height, width) if k % 2 == 0 else (width, height)
    best, best_foreground = None, -1.0
    for _ in range(MAX_CROP_TRIES):
        side = float(rng.uniform(*settings.crop_scale)) * min(mask.shape)
        crop_h = min(mask.shape[0], max(1, round(side * target[0] / longer)))
        crop_w = min(mask.shape[1], max(1, round(side * target[1] / longer)))
        top = int(rng.integers(mask.shape[0] - crop_h + 1))
        left = int(rng.integers(mask.shape[1] - crop_w + 1))
        crop = mask[top : top + crop_h, left : left + crop_w]
        foreground = float(crop.mean())
        if foreground > best_foreground:
            best, best_foreground = crop, foreground
        if foreground >= settings.min_foreground:
            break
    patch = np.rot90(best, k)
    if flip_rows:
        patch = patch[::-1]
    if flip_columns:
        patch = patch[:, ::-1]
    return resize(
        patch.astype(np.float32), (height, width), order=1, anti_aliasing=False, preserve_range=True
    )


def crop_and_overlap(
    masks: Sequence[np.ndarray], settings: CropOverlapSettings, rng: np.random.Generator
) -> np.ndarray:
    """One Crop-and-Overlap reference mask, (H, W) float32 with values in {0, 1} (notes Sec. 2.5).

    K ~ U{1, ..., ``max_patches``} patches, each a random crop (side ``s * min(H_i, W_i)``,
    s ~ U(``crop_scale``)) of a mask drawn uniformly from ``masks``, redrawn while its foreground is below
    ``min_foreground``, optionally flipped and rotated by k * 90 degrees, resized to ``size`` (bilinear,
    ``skimage.transform.resize(order=1, anti_aliasing=False)``); the patches are united by the pixel-wise
    maximum and binarised at 0.5.
    """
    masks = _check_masks(masks)
    count = int(rng.integers(1, settings.max_patches + 1))
    union = np.zeros(settings.size, dtype=np.float32)
    for _ in range(count):
        mask = masks[int(rng.integers(len(masks)))]
        np.maximum(union, _draw_patch(mask, settings, rng), out=union)
    return (union >= 0.5).astype(np.float32)


def reference_batch(
    masks: Sequence[np.ndarray], settings: CropOverlapSettings, count: int, rng: np.random.Generator
) -> np.ndarray:
    """``count`` references (:func:`crop_and_overlap`) as a (count, 1, H, W) float32 batch."""
    if int(count) < 1:
        raise ValueError(f"count must be an integer >= 1; got {count!r}")
    masks = _check_masks(masks)
    return np.stack([crop_and_overlap(masks, settings, rng) for _ in range(int(count))])[:, None]


def _skeleton_widths(mask: np.ndarray) -> np.ndarray:
    """Vessel width in pixels at every skeleton pixel: 2 x EDT (see :func:`median_vessel_width`)."""
    from scipy.ndimage import distance_transform_edt
    from skimage.morphology import skeletonize

    mask = np.asarray(mask) > 0
    skeleton = skeletonize(mask)
    return 2.0 * distance_transform_edt(mask)[skeleton]


def median_vessel_width(mask: np.ndarray) -> float:
    """Median vessel width of a 2D mask in pixels: the median over its skeleton pixels
    (``skimage.morphology.skeletonize``) of 2 x the Euclidean distance to the background
    (``scipy.ndimage.distance_transform_edt``).

    The distance runs from a pixel centre to the centre of the nearest background pixel, so the reading is
    within about one pixel of the true width w: an axis-aligned band of odd width w reads w + 1 (even
    width: w), an oblique line reads a little below w (about w - 0.7 at slope 1/2, as the skeleton and the
    background pixels sit off the centreline), a one-pixel line reads 2. The same measure is used for the
    guidance masks and the references, so the ratios that :func:`choose_crop_settings` relies on hold.

    Raises ValueError for a mask with no foreground.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2D; got shape {mask.shape}")
    widths = _skeleton_widths(mask)
    if widths.size == 0:
        raise ValueError("mask has no foreground; the vessel width of an empty mask is undefined")
    return float(np.median(widths))


def foreground_fraction_of_intensity_mips(
    volumes: Sequence[np.ndarray],
    crop_shape_zyx: tuple[int, int, int],
    count: int,
    rng: np.random.Generator,
) -> float:
    """Mean foreground fraction of Otsu-thresholded intensity MIPs of random crops of unlabelled volumes.

    Label-free: it reads images only. For each of ``count`` crops (a volume drawn uniformly, a crop of
    ``crop_shape_zyx`` at a uniform position; an axis shorter than the crop is taken whole) the maximum
    intensity projections along Z, Y and X are thresholded by ``skimage.filters.threshold_otsu`` (a
    constant projection counts as no foreground) and the fractions of pixels above the threshold averaged.
    This is the density Crop-and-Overlap references should match (notes Sec. 6.3).

    Parameters
    ----------
    volumes : sequence of np.ndarray
        Float images (Z, Y, X), roughly in [0, 1] (vessels bright).
    crop_shape_zyx : tuple of int
        Crop size (Z, Y, X) in voxels, as the trainer crops.
    count : int
        Number of random crops.
    rng : np.random.Generator
    """
    if len(volumes) == 0:
        raise ValueError("volumes is empty; give at least one unlabelled (Z, Y, X) training volume")
    for index, volume in enumerate(volumes):
        if np.ndim(volume) != 3:
            raise ValueError(f"volumes[{index}] must be 3D (Z, Y, X); got shape {np.shape(volume)}")
    crop = tuple(int(v) for v in crop_shape_zyx)
    if len(crop) != 3 or min(crop) < 1:
        raise ValueError(f"crop_shape_zyx must be three integers >= 1 (Z, Y, X); got {crop_shape_zyx!r}")
    if int(count) < 1:
        raise ValueError(f"count must be an integer >= 1; got {count!r}")
    volumes = [np.asarray(volume, dtype=np.float32) for volume in volumes]
    return foreground_fraction_of_mips(uniform_blocks(volumes, crop, int(count), rng))


def uniform_blocks(
    volumes: Sequence[np.ndarray], crop_shape_zyx: tuple[int, int, int], count: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """``count`` crops as :func:`foreground_fraction_of_intensity_mips` draws them: a volume drawn uniformly,
    a crop of ``crop_shape_zyx`` at a uniform position (an axis shorter than the crop is taken whole)."""
    blocks = []
    for _ in range(count):
        volume = volumes[int(rng.integers(len(volumes)))]
        shape = tuple(min(c, s) for c, s in zip(crop_shape_zyx, volume.shape, strict=True))
        starts = [int(rng.integers(s - c + 1)) for c, s in zip(shape, volume.shape, strict=True)]
        blocks.append(volume[tuple(slice(a, a + c) for a, c in zip(starts, shape, strict=True))])
    return blocks


def foreground_fraction_of_mips(crops: Sequence[np.ndarray]) -> float:
    """Mean foreground fraction of the Otsu-thresholded MIPs along Z, Y and X of given (Z, Y, X) crops.

    The measure of :func:`foreground_fraction_of_intensity_mips`, for crops drawn by the caller (the trainer
    draws them as it draws its training crops). A constant projection counts as no foreground.
    """
    from skimage.filters import threshold_otsu

    fractions = []
    for block in crops:
        block = np.asarray(block, dtype=np.float32)
        if block.ndim != 3:
            raise ValueError(f"each crop must be 3D (Z, Y, X); got shape {block.shape}")
        for axis in range(3):
            mip = block.max(axis=axis)
            if not np.isfinite(mip).all():
                raise ValueError("volumes contain NaN or infinite values; clean or normalise them first")
            if mip.max() == mip.min():
                fractions.append(0.0)
                continue
            fractions.append(float((mip > threshold_otsu(mip)).mean()))
    if not fractions:
        raise ValueError("crops is empty; give at least one (Z, Y, X) crop")
    return float(np.mean(fractions))


def target_vessel_width_voxels(modality: str, spacing_yx: Sequence[float]) -> float:
    """The prior median vessel width of ``modality`` (:data:`VESSEL_WIDTH_PRIORS`, mm) in in-plane voxels:
    prior / mean(spacing_yx). ``modality`` is matched case-insensitively; spacing in mm."""
    known = {name.upper(): name for name in VESSEL_WIDTH_PRIORS}
    if str(modality).upper() not in known:
        raise ValueError(
            f"No vessel width prior for modality {modality!r}; known: {', '.join(VESSEL_WIDTH_PRIORS)}"
        )
    spacing = [float(v) for v in spacing_yx]
    if len(spacing) != 2 or not all(v > 0 and math.isfinite(v) for v in spacing):
        raise ValueError(f"spacing_yx must be two positive voxel sizes (Y, X) in mm; got {spacing_yx!r}")
    return VESSEL_WIDTH_PRIORS[known[str(modality).upper()]] / float(np.mean(spacing))


@dataclass(frozen=True)
class CropOverlapChoice:
    """The settings :func:`choose_crop_settings` chose and the numbers it measured (for the model card).

    Attributes
    ----------
    settings : CropOverlapSettings
    source_width_px : float
        Median vessel width of the guidance masks, their pixels.
    target_width_px : float
        Vessel width asked for in the references (MIP pixels).
    crop_side_px : float
        The crop side L = P * source_width / target_width, source pixels (before clipping).
    crop_scale_clipped : bool
        Whether L / (source side) fell outside [0.02, 1] and the crop scale was clipped.
    reference_foreground : float
        Mean foreground fraction of the probe references with the chosen settings.
    target_foreground : float
        Foreground fraction asked for.
    reached_target : bool
        False when even ``max_patches_limit`` patches stayed below ``target_foreground``.
    reference_width_px : float
        Median vessel width of the probe references (MIP pixels), for comparison with the target width.
    """

    settings: CropOverlapSettings
    source_width_px: float
    target_width_px: float
    crop_side_px: float
    crop_scale_clipped: bool
    reference_foreground: float
    target_foreground: float
    reached_target: bool
    reference_width_px: float

    def to_dict(self) -> dict:
        """Plain, JSON-ready values (tuples as lists)."""
        values = asdict(self)
        values["settings"] = {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in values["settings"].items()
        }
        return values


#: References drawn to measure a setting's foreground fraction (:func:`choose_crop_settings`' probes).
DENSITY_PROBES = 64

#: Bounds of the chosen crop scale (fraction of the source side): at least ~10 px of a 512 px mask.
CROP_SCALE_BOUNDS = (0.02, 1.0)


def choose_crop_settings(
    masks: Sequence[np.ndarray],
    size: tuple[int, int],
    target_width_px: float,
    target_foreground: float,
    rng: np.random.Generator,
    *,
    spread: float = 0.5,
    max_patches_limit: int = 16,
    probe_count: int = DENSITY_PROBES,
) -> CropOverlapChoice:
    """Crop-and-Overlap settings whose references have the target vessel width and density (notes Sec. 6.3).

    Never sees a 3D label: the inputs are the 2D guidance masks, a target width from a physical prior
    (:func:`target_vessel_width_voxels`) and a target density from intensity MIPs of unlabelled images
    (:func:`foreground_fraction_of_intensity_mips`).

    Steps:

    1. Source width w_src: the median over the skeleton pixels of all ``masks`` of the vessel width
       (2 x EDT, as :func:`median_vessel_width`), in source pixels.
    2. Crop side: a crop of side L resized to P = max(``size``) pixels scales widths by P / L, so the
       source width becomes the target width w_t for L = P * w_src / w_t.
    3. Crop scale: with the source side S = median of min(H_i, W_i) over the masks, the centre c = L / S
       and ``crop_scale = (c * (1 - spread), c * (1 + spread))``, clipped to :data:`CROP_SCALE_BOUNDS`
       (widths vary around w_t by up to the factor (1 +- spread)).
    4. Density: ``max_patches`` = 1, 2, ... until the mean foreground fraction of ``probe_count``
       references reaches ``target_foreground``, at most ``max_patches_limit``. Every candidate draws its
       probes from a generator seeded with the same seed (drawn once from ``rng``), so the candidates start
       from the same random stream and the choice is deterministic for a given ``rng`` seed.

    Returns
    -------
    CropOverlapChoice
        The settings and the measured numbers.
    """
    masks = _check_masks(masks)
    settings = CropOverlapSettings(size=tuple(size))  # validates size
    if not (target_width_px > 0 and math.isfinite(target_width_px)):
        raise ValueError(f"target_width_px must be a positive number of pixels; got {target_width_px!r}")
    if not 0.0 < target_foreground < 1.0:
        raise ValueError(f"target_foreground must lie in (0, 1); got {target_foreground!r}")
    if not 0.0 <= spread < 1.0:
        raise ValueError(f"spread must lie in [0, 1); got {spread!r}")
    if int(max_patches_limit) < 1:
        raise ValueError(f"max_patches_limit must be an integer >= 1; got {max_patches_limit!r}")
    if int(probe_count) < 1:
        raise ValueError(f"probe_count must be an integer >= 1; got {probe_count!r}")

    widths = np.concatenate([_skeleton_widths(mask) for mask in masks])
    if widths.size == 0:
        raise ValueError("the guidance masks have no foreground; their vessel width is undefined")
    source_width = float(np.median(widths))
    crop_side = max(settings.size) * source_width / float(target_width_px)
    source_side = float(np.median([min(mask.shape) for mask in masks]))
    centre = crop_side / source_side
    low, high = CROP_SCALE_BOUNDS
    scale = (
        float(np.clip(centre * (1.0 - spread), low, high)),
        float(np.clip(centre * (1.0 + spread), low, high)),
    )
    clipped = not low <= centre * (1.0 - spread) or not centre * (1.0 + spread) <= high

    probe_seed = int(rng.integers(2**63 - 1))
    foreground, probes = 0.0, None
    for patches in range(1, int(max_patches_limit) + 1):
        settings = CropOverlapSettings(size=settings.size, crop_scale=scale, max_patches=patches)
        probes = reference_batch(masks, settings, int(probe_count), np.random.default_rng(probe_seed))
        foreground = float(probes.mean())
        if foreground >= target_foreground:
            break
    probe_widths = np.concatenate([_skeleton_widths(probe[0]) for probe in probes])
    return CropOverlapChoice(
        settings=settings,
        source_width_px=source_width,
        target_width_px=float(target_width_px),
        crop_side_px=float(crop_side),
        crop_scale_clipped=bool(clipped),
        reference_foreground=foreground,
        target_foreground=float(target_foreground),
        reached_target=foreground >= target_foreground,
        reference_width_px=float(np.median(probe_widths)) if probe_widths.size else 0.0,
    )
