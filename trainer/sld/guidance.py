"""The 2D guidance masks of 3D-SLD: a fundus-derived vessel mask, procedural 2D trees and mask folders.

3D-SLD learns what "vessel" looks like from 2D vessel masks of an unrelated structure (the paper uses
X-ray coronary angiography or retinal masks; notes Sec. 1, 2.5). No such mask set can be shipped or
downloaded here (notes Sec. 6.1), so VesselSeg bundles two label-free sources (notes Sec. 6.2):

- **A, the fundus mask** (:func:`retina_vessel_mask`): a frozen, deterministic recipe over the CC0 fundus
  photograph bundled with scikit-image (``skimage.data.retina()``, Häggström 2014). A machine-made mask,
  not an expert annotation.
- **B, procedural 2D trees** (:func:`procedural_vessel_tree`): our own 2D generator (recursive bifurcation
  with Murray's-law radii and optimal branching angles, tortuous segments).

Users may bring their own masks (XCAD, CHASE_DB1, ...) as a folder of PNG/TIFF files
(:func:`read_mask_folder`). ``scripts/make_guidance_masks.py`` writes the bundled set
(:func:`write_guidance_set`) into ``Resources/GuidanceMasks`` (:data:`BUNDLED_MASKS`).

Nothing in this module sees, or may be tuned against, a label of any target data set.
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from VesselSegLib.resources import resources_dir


def _resources_root() -> Path:
    """``Resources/`` as :func:`VesselSegLib.resources.resources_dir` finds it, else the source tree's."""
    try:
        return resources_dir()
    except FileNotFoundError:
        return Path(__file__).resolve().parents[2] / "Resources"


#: The bundled guidance masks (``scripts/make_guidance_masks.py`` writes them).
BUNDLED_MASKS = _resources_root() / "GuidanceMasks"

#: File suffixes :func:`read_mask_folder` reads (case-insensitive).
MASK_SUFFIXES = (".png", ".tif", ".tiff")

# ---------------------------------------------------------------------------------------------------------
# A. The fundus mask. Frozen recipe (notes Sec. 6.2 A); fixed once, never tuned against any target label.
# ---------------------------------------------------------------------------------------------------------
#: A pixel is inside the field of view where the mean of R, G, B (in [0, 1]) exceeds this. The photograph's
#: background is black (mean < 0.05) and the retina is bright (mean > 0.25): any value in between gives the
#: same disc.
RETINA_FOV_BRIGHTNESS = 0.1
#: The field of view is eroded by a disc of this fraction of the image side (14 px of 1411), so that the
#: dark border of the disc does not read as a vessel.
RETINA_FOV_EROSION_FRACTION = 0.01
#: CLAHE clip limit (scikit-image's default).
RETINA_CLAHE_CLIP_LIMIT = 0.01
#: Sato tubeness scales in pixels of the full-resolution photograph (1411 x 1411). Sato rather than Frangi:
#: Frangi's blob suppression (its "beta" term) weakens the response at bifurcations and crossings, which
#: tends to break the tree into pieces there; Sato has no such term.
RETINA_SATO_SIGMAS = (1.0, 2.0, 3.0, 4.0)


def retina_vessel_mask(
    size: int = 512, vessel_fraction: float = 0.12, min_component_px: int = 100
) -> np.ndarray:
    """A label-free vessel mask of scikit-image's fundus photograph, ``(size, size)`` bool.

    The recipe (frozen before any target label was seen; it must never be tuned against one):

    1. ``skimage.data.retina()``: "Fundus photograph of normal left eye", Mikael Häggström, 2014, Wikimedia
       Commons, CC0 (public domain); bundled in the scikit-image wheel, (1411, 1411, 3) uint8.
    2. Green channel in [0, 1] (the channel with the best vessel contrast in fundus photographs).
    3. CLAHE: ``exposure.equalize_adapthist(green, clip_limit=0.01)``.
    4. Field of view: mean of R, G, B > :data:`RETINA_FOV_BRIGHTNESS`, holes filled, eroded by a disc of
       radius ``round(0.01 * 1411) = 14`` px.
    5. ``filters.sato(clahe, sigmas=(1, 2, 3, 4), black_ridges=True)`` (vessels are dark), at the full
       resolution of the photograph (about 3 s on one core, so no reduced working resolution is needed).
    6. Keep the top ``vessel_fraction`` of the field-of-view pixels by tubeness (about 12% is the typical
       vessel fraction of a fundus field of view; the image-wide fraction is lower, since the field of view
       covers about 70% of the image).
    7. Drop 8-connected components smaller than ``min_component_px`` pixels (at full resolution).
    8. Resize to ``size x size``: bilinear with anti-aliasing (``transform.resize(order=1,
       anti_aliasing=True)``) of the 0/1 mask, then ``>= 0.5``, which keeps the vessel widths in proportion
       (nearest-neighbour down-sampling would break thin vessels into dashes).

    Deterministic (no random numbers; the result is cached per argument set and returned as a copy). It is
    a machine-made mask, not an expert annotation.

    Parameters
    ----------
    size : int
        Side of the output mask in pixels.
    vessel_fraction : float
        Fraction of the field of view kept as vessel, in (0, 1).
    min_component_px : int
        Smallest connected component kept, in pixels of the full-resolution photograph.
    """
    if int(size) < 8:
        raise ValueError(f"size must be an integer >= 8 pixels; got {size!r}")
    if not 0.0 < vessel_fraction < 1.0:
        raise ValueError(f"vessel_fraction must lie in (0, 1); got {vessel_fraction!r}")
    if min_component_px < 0:
        raise ValueError(f"min_component_px must be >= 0; got {min_component_px!r}")
    return _retina_vessel_mask(int(size), float(vessel_fraction), int(min_component_px)).copy()


@functools.lru_cache(maxsize=4)
def _retina_vessel_mask(size: int, vessel_fraction: float, min_component_px: int) -> np.ndarray:
    """The recipe of :func:`retina_vessel_mask`, computed once per argument set (a few seconds); callers
    get a copy, so the cached array is never changed."""
    from scipy import ndimage as ndi
    from skimage import data, exposure, filters, morphology, transform

    rgb = data.retina().astype(np.float64) / 255.0
    green = rgb[..., 1]
    clahe = exposure.equalize_adapthist(green, clip_limit=RETINA_CLAHE_CLIP_LIMIT)
    fov = ndi.binary_fill_holes(rgb.mean(axis=-1) > RETINA_FOV_BRIGHTNESS)
    erosion_px = max(1, round(RETINA_FOV_EROSION_FRACTION * green.shape[0]))
    fov = ndi.binary_erosion(fov, structure=morphology.disk(erosion_px))
    tubeness = filters.sato(clahe, sigmas=RETINA_SATO_SIGMAS, black_ridges=True)
    threshold = np.quantile(tubeness[fov], 1.0 - vessel_fraction)
    vessels = fov & (tubeness > threshold)
    vessels = _drop_small_components(vessels, min_component_px)
    resized = transform.resize(vessels.astype(np.float64), (size, size), order=1, anti_aliasing=True)
    return resized >= 0.5


def _drop_small_components(mask: np.ndarray, min_component_px: int) -> np.ndarray:
    """``mask`` without its 8-connected components of fewer than ``min_component_px`` pixels."""
    from scipy import ndimage as ndi

    labels, count = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_component_px
    keep[0] = False
    return keep[labels]


# ---------------------------------------------------------------------------------------------------------
# B. Procedural 2D trees. Parameters fixed before any target label was seen. The design is our own 2D one
# and differs from the 3D phantoms of VesselSegLib.phantoms (not imported): roots enter from the image
# border, radii follow Murray's law with asymmetric splits, branching angles follow Murray's minimum-work
# optimum, and the paths arc gently and wiggle (a random-walk heading).
# ---------------------------------------------------------------------------------------------------------
#: Roots (trees) per image, inclusive range.
TREE_ROOT_COUNT = (2, 4)
#: Radius of a root, pixels, uniform.
TREE_ROOT_RADIUS_PX = (5.0, 8.0)
#: Smallest radius drawn, pixels: a vessel splits only if both children can be at least this thick.
TREE_MIN_RADIUS_PX = 1.5
#: Segment length between bifurcations as a multiple of its radius, uniform; roots run twice as long.
TREE_LENGTH_PER_RADIUS = (8.0, 18.0)
#: Shortest segment, pixels.
TREE_MIN_SEGMENT_PX = 12.0
#: Step along a path, pixels.
TREE_STEP_PX = 1.0
#: Tortuosity: the heading is the segment's start heading plus a gentle arc (a total turn of
#: ``U(-TREE_ARC_RAD, TREE_ARC_RAD)`` over the segment) plus a wiggle phi, an Ornstein-Uhlenbeck process
#: phi <- (1 - 1/c) phi + N(0, s) with correlation length c = TREE_WIGGLE_LENGTH_PER_RADIUS * radius steps
#: and stationary std TREE_WIGGLE_STD_RAD (so thick vessels wiggle slowly, thin ones quickly, and no path
#: loops back on itself).
TREE_ARC_RAD = 0.6
TREE_WIGGLE_STD_RAD = 0.3
TREE_WIGGLE_LENGTH_PER_RADIUS = 4.0
#: Radius ratio of the thinner to the thicker child, uniform.
TREE_ASYMMETRY = (0.4, 1.0)
#: Jitter (std, radians) added to Murray's optimal branching angles.
TREE_ANGLE_JITTER_RAD = 0.12
#: A root enters the image within this angle (radians) of the inward normal, from the central 80% of a side.
TREE_ROOT_ENTRY_SPREAD_RAD = math.pi / 5
#: Limits per root: segments and bifurcation generations.
TREE_MAX_SEGMENTS_PER_ROOT = 64
TREE_MAX_DEPTH = 10


@dataclass(frozen=True)
class TreeBranch:
    """One segment of a procedural tree, between its start and its bifurcation (or end).

    Attributes
    ----------
    parent : int
        Index of the parent segment in the branch list; -1 for a root.
    radius_px : float
        Radius in pixels (constant along the segment).
    points_yx : np.ndarray
        (N, 2) float centreline points (row, column); they may leave the image, where nothing is drawn.
    depth : int
        Bifurcation generation (0 for a root).
    """

    parent: int
    radius_px: float
    points_yx: np.ndarray
    depth: int


def murray_children_radii(parent_radius: float, asymmetry: float) -> tuple[float, float]:
    """Radii (thick, thin) of the two children of a vessel of radius ``parent_radius``, with
    ``thin / thick = asymmetry`` and Murray's law r_p^3 = r_1^3 + r_2^3 (Murray 1926, eq. for minimum work)."""
    thick = parent_radius / (1.0 + asymmetry**3) ** (1.0 / 3.0)
    return thick, asymmetry * thick


def murray_branching_angles(parent_radius: float, radius_1: float, radius_2: float) -> tuple[float, float]:
    """Minimum-work branching angles (radians from the parent's direction) of two children
    (Murray 1926; Zamir 1978): cos(theta_1) = (r_p^4 + r_1^4 - r_2^4) / (2 r_p^2 r_1^2), and symmetrically.
    A symmetric split gives 37.5 degrees each; a thin side branch leaves at up to ~90 degrees."""
    p2, a2, b2 = parent_radius**2, radius_1**2, radius_2**2
    cos_1 = (p2 * p2 + a2 * a2 - b2 * b2) / (2.0 * p2 * a2)
    cos_2 = (p2 * p2 + b2 * b2 - a2 * a2) / (2.0 * p2 * b2)
    return math.acos(min(1.0, max(-1.0, cos_1))), math.acos(min(1.0, max(-1.0, cos_2)))


def procedural_vessel_branches(seed: int, size: int = 512) -> list[TreeBranch]:
    """The segments of one procedural 2D vessel image (several trees), deterministic per ``seed``.

    Each root enters from a random side of the ``size x size`` image towards its inside. A segment of radius
    r runs ``U(8, 18) * r`` pixels (twice that for a root) along a gently arced path that wiggles (an
    Ornstein-Uhlenbeck heading, correlated over ~4 r), then splits into two children with Murray's-law
    radii (thin/thick ratio ``U(0.4, 1)``, the thin one at least :data:`TREE_MIN_RADIUS_PX`) at Murray's
    minimum-work angles plus jitter, one to each side. A vessel stops splitting when it is too thin for two
    children of :data:`TREE_MIN_RADIUS_PX`, at :data:`TREE_MAX_DEPTH` generations, when a split would exceed
    :data:`TREE_MAX_SEGMENTS_PER_ROOT` segments (grown breadth first), or when it leaves the image.
    The parameters (module constants ``TREE_*``) were fixed before seeing any target label.

    All random numbers are drawn here (``numpy.random.default_rng(seed)``); :func:`draw_branches`
    rasterises the result deterministically.
    """
    rng = np.random.default_rng(seed)
    size = int(size)
    branches: list[TreeBranch] = []
    for _ in range(int(rng.integers(TREE_ROOT_COUNT[0], TREE_ROOT_COUNT[1] + 1))):
        start, heading = _root_entry(rng, size)
        radius = float(rng.uniform(*TREE_ROOT_RADIUS_PX))
        # (parent index, start point, heading, radius, depth)
        queue = deque([(-1, start, heading, radius, 0)])
        grown = 0
        while queue:
            parent, start, heading, radius, depth = queue.popleft()
            length = max(TREE_MIN_SEGMENT_PX, float(rng.uniform(*TREE_LENGTH_PER_RADIUS)) * radius)
            if parent < 0:
                length *= 2.0
            points, end_heading = _tortuous_path(rng, start, heading, length, radius)
            branches.append(TreeBranch(parent=parent, radius_px=radius, points_yx=points, depth=depth))
            index = len(branches) - 1
            grown += 1
            end = points[-1]
            inside = 0.0 <= end[0] < size and 0.0 <= end[1] < size
            # A split adds two segments or none (so every bifurcation in the record has both children).
            full = grown + len(queue) + 2 > TREE_MAX_SEGMENTS_PER_ROOT
            if not inside or depth + 1 > TREE_MAX_DEPTH or full:
                continue
            children = _split(rng, radius)
            if children is None:
                continue
            (thick, theta_thick), (thin, theta_thin) = children
            side = 1.0 if rng.random() < 0.5 else -1.0
            queue.append((index, end, end_heading + side * theta_thick, thick, depth + 1))
            queue.append((index, end, end_heading - side * theta_thin, thin, depth + 1))
    return branches


def _root_entry(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    """A start point on the border (central 80% of a random side) and a heading into the image."""
    side = int(rng.integers(4))
    along = float(rng.uniform(0.1, 0.9)) * (size - 1)
    edge = 0.0 if side in (0, 2) else float(size - 1)
    # side 0: top row, 1: bottom row, 2: left column, 3: right column; headings as (dy, dx) angles.
    start = np.array([edge, along]) if side in (0, 1) else np.array([along, edge])
    inward = {0: math.pi / 2, 1: -math.pi / 2, 2: 0.0, 3: math.pi}[side]
    # Angle convention: heading h points along (dy, dx) = (sin h, cos h).
    return start, inward + float(rng.uniform(-TREE_ROOT_ENTRY_SPREAD_RAD, TREE_ROOT_ENTRY_SPREAD_RAD))


def _tortuous_path(
    rng: np.random.Generator, start: np.ndarray, heading: float, length: float, radius: float
) -> tuple[np.ndarray, float]:
    """Points every :data:`TREE_STEP_PX` along a gently arced, wiggling path (see ``TREE_ARC_RAD``)."""
    steps = max(1, round(length / TREE_STEP_PX))
    arc = float(rng.uniform(-TREE_ARC_RAD, TREE_ARC_RAD)) / steps
    decay = 1.0 / max(1.0, TREE_WIGGLE_LENGTH_PER_RADIUS * radius / TREE_STEP_PX)
    kick_std = TREE_WIGGLE_STD_RAD * math.sqrt(2.0 * decay - decay**2)
    kicks = rng.normal(0.0, kick_std, size=steps)
    wiggle = float(rng.normal(0.0, TREE_WIGGLE_STD_RAD))
    points = np.empty((steps + 1, 2))
    points[0] = start
    direction = heading
    for step in range(steps):
        wiggle = (1.0 - decay) * wiggle + kicks[step]
        direction = heading + arc * (step + 1) + wiggle
        points[step + 1] = points[step] + TREE_STEP_PX * np.array([math.sin(direction), math.cos(direction)])
    return points, heading + arc * steps


def _split(rng: np.random.Generator, radius: float) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """((thick radius, angle), (thin radius, angle)) of a bifurcation, or None when the vessel is too thin.

    The thin child is raised to :data:`TREE_MIN_RADIUS_PX` if the drawn asymmetry makes it thinner, and the
    thick child takes the rest of r_p^3, so Murray's law always holds exactly."""
    if radius**3 < 2.0 * TREE_MIN_RADIUS_PX**3:
        return None
    thick, thin = murray_children_radii(radius, float(rng.uniform(*TREE_ASYMMETRY)))
    if thin < TREE_MIN_RADIUS_PX:
        thin = TREE_MIN_RADIUS_PX
        thick = (radius**3 - thin**3) ** (1.0 / 3.0)
    theta_thick, theta_thin = murray_branching_angles(radius, thick, thin)
    theta_thick += float(rng.normal(0.0, TREE_ANGLE_JITTER_RAD))
    theta_thin += float(rng.normal(0.0, TREE_ANGLE_JITTER_RAD))
    return (thick, abs(theta_thick)), (thin, abs(theta_thin))


def draw_branches(branches: Iterable[TreeBranch], size: int = 512) -> np.ndarray:
    """Rasterise segments as discs of their radius centred on every (rounded) path point; (size, size) bool.

    A disc holds the pixels within ``radius_px`` of its centre, so a segment is about ``2 * radius_px``
    pixels wide."""
    size = int(size)
    mask = np.zeros((size, size), dtype=bool)
    for branch in branches:
        reach = math.ceil(branch.radius_px)
        dy, dx = np.mgrid[-reach : reach + 1, -reach : reach + 1]
        inside = dy**2 + dx**2 <= branch.radius_px**2
        offsets = np.stack([dy[inside], dx[inside]], axis=1)
        centres = np.unique(np.rint(branch.points_yx).astype(np.int64), axis=0)
        pixels = (centres[:, None, :] + offsets[None, :, :]).reshape(-1, 2)
        keep = (pixels >= 0).all(axis=1) & (pixels < size).all(axis=1)
        mask[pixels[keep, 0], pixels[keep, 1]] = True
    return mask


def procedural_vessel_tree(seed: int, size: int = 512) -> np.ndarray:
    """A procedural 2D vessel mask, ``(size, size)`` bool, deterministic per ``seed``.

    Several trees enter from the image border and bifurcate with Murray's-law radii (r_p^3 = r_1^3 + r_2^3)
    at Murray's minimum-work angles; their segments are tortuous (random-walk heading) and 2 * 1.5 to
    2 * 8 pixels wide. See :func:`procedural_vessel_branches` for the recipe (its parameters were fixed
    before seeing any target label; the design is not that of the 3D phantoms in ``VesselSegLib.phantoms``)
    and :func:`draw_branches` for the drawing.
    """
    if int(size) < 8:
        raise ValueError(f"size must be an integer >= 8 pixels; got {size!r}")
    return draw_branches(procedural_vessel_branches(seed, size), size)


# ---------------------------------------------------------------------------------------------------------
# Mask folders.
# ---------------------------------------------------------------------------------------------------------
def mask_files(folder: str | os.PathLike) -> list[Path]:
    """The mask files of a folder, sorted by name: its ``*.png``, ``*.tif`` and ``*.tiff`` files, hidden files
    and other files left out. Raises ValueError as :func:`read_mask_folder` does for a missing or empty folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(
            f"Guidance mask folder {folder} does not exist (or is not a folder); "
            f"give a folder of 2D vessel masks ({', '.join('*' + s for s in MASK_SUFFIXES)})."
        )
    files = sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in MASK_SUFFIXES and not p.name.startswith(".")
        ),
        key=lambda p: p.name,
    )
    if not files:
        raise ValueError(
            f"Guidance mask folder {folder} holds no mask file ({', '.join('*' + s for s in MASK_SUFFIXES)}); "
            f"add 2D vessel masks or point to another folder."
        )
    return files


def read_mask_folder(folder: str | os.PathLike) -> list[np.ndarray]:
    """The 2D vessel masks of a folder: its ``*.png``, ``*.tif`` and ``*.tiff`` files, sorted by name.

    A mask is foreground where its value is > 0. A colour image (last axis of 3 or 4 channels) is foreground
    where any of its R, G, B channels is > 0 (an alpha channel is ignored, since it is usually opaque
    everywhere); a grey + alpha image (2 channels) uses its first channel; singleton axes are dropped.
    Masks must be binary already: threshold a probability map yourself first. Other files are ignored.

    Returns
    -------
    list of np.ndarray
        One (H, W) bool array per file.

    Raises
    ------
    ValueError
        One line naming the problem and the fix: a missing folder, no mask file in it, an unreadable or
        damaged file, an image that is not 2D, or a mask that is empty (all zero) or foreground everywhere.
    """
    return [read_mask(path) for path in mask_files(folder)]


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """One 2D vessel mask file (PNG or TIFF) as (H, W) bool; the rules and errors of :func:`read_mask_folder`."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".png":
            import imageio.v3 as iio

            image = np.asarray(iio.imread(path, plugin="pillow"))
        else:
            import tifffile

            image = np.asarray(tifffile.imread(path))
    except Exception as error:  # any decoder failure: name the file
        raise ValueError(
            f"Guidance mask {path} cannot be read ({type(error).__name__}: {error}); "
            f"replace or remove the damaged file."
        ) from error
    image = np.squeeze(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        mask = (image[..., :3] > 0).any(axis=-1)
    elif image.ndim == 3 and image.shape[-1] == 2:
        mask = image[..., 0] > 0
    elif image.ndim == 2:
        mask = image > 0
    else:
        raise ValueError(
            f"Guidance mask {path} is not a 2D image (shape {image.shape}); give one 2D mask per file."
        )
    if not mask.any():
        raise ValueError(f"Guidance mask {path} is empty (all zero); remove it or give a mask with vessels.")
    if mask.all():
        raise ValueError(
            f"Guidance mask {path} is foreground everywhere (no zero pixel); give a binary vessel mask "
            f"(background 0)."
        )
    return mask


def _png_bytes(mask: np.ndarray) -> bytes:
    """A 1-channel uint8 PNG of ``mask`` (0 background, 255 vessel), as bytes (deterministic)."""
    import imageio.v3 as iio

    buffer = io.BytesIO()
    iio.imwrite(
        buffer, np.where(mask, 255, 0).astype(np.uint8), extension=".png", plugin="pillow", optimize=True
    )
    return buffer.getvalue()


def guidance_set(tree_seeds: Iterable[int] = range(24), size: int = 512) -> dict[str, np.ndarray]:
    """The bundled set as {file name: mask}: ``retina-sato.png`` and ``tree-{seed:03d}.png`` per seed."""
    masks = {"retina-sato.png": retina_vessel_mask(size)}
    for seed in tree_seeds:
        if int(seed) < 0:
            raise ValueError(f"tree seeds must be integers >= 0; got {seed!r}")
        masks[f"tree-{int(seed):03d}.png"] = procedural_vessel_tree(int(seed), size)
    return masks


def write_guidance_set(
    out_dir: str | os.PathLike,
    tree_seeds: Iterable[int] = range(24),
    *,
    overwrite: bool = False,
    size: int = 512,
) -> list[Path]:
    """Write the guidance set (:func:`guidance_set`) as PNGs into ``out_dir``; return the paths, in order.

    Each file is written atomically (a temporary name in the same folder, then ``os.replace``). A file that
    already holds the same bytes is left alone. A file that differs is replaced only with
    ``overwrite=True``; otherwise a ValueError names it, and nothing is written (all files are checked
    before the first write).
    """
    out_dir = Path(out_dir)
    encoded = {name: _png_bytes(mask) for name, mask in guidance_set(tree_seeds, size).items()}
    paths = [out_dir / name for name in encoded]
    if not overwrite:
        for path in paths:
            if path.exists() and (not path.is_file() or path.read_bytes() != encoded[path.name]):
                raise ValueError(
                    f"{path} exists and differs from the mask to write; pass overwrite=True "
                    f"(--overwrite) to replace it, or write to another folder."
                )
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in paths:
        data = encoded[path.name]
        if path.is_file() and path.read_bytes() == data:
            continue
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_bytes(data)
            os.replace(temporary, path)
        finally:
            if temporary.exists():
                temporary.unlink()
    return paths
