"""Synthetic 3D vascular trees: branching artery and vein trees plus a mesh of micro-vessels.

The trees are grown in physical space (mm) and rasterised onto a voxel grid with partial volume, so the
same generator serves isotropic and anisotropic volumes (TOF-MRA, SWI, two-photon microscopy).

Growth model, per tree:

- a root starts near the volume border and points inwards;
- each segment follows a tortuous path: a persistent direction plus smoothed random noise;
- at the end of a segment the vessel bifurcates. Radii obey Murray's law
  ``r_parent**3 = r_child1**3 + r_child2**3`` with a random split ratio, and the branch angles follow
  Murray's minimum-work optimum ``cos(theta_1) = (r0**4 + r1**4 - r2**4) / (2 r0**2 r1**2)``;
- growth stops when the radius falls below about one voxel, or the path leaves the volume.

Micro-vessels (1-2 voxels across) sprout from random points of the larger vessels and branch again.
Arteries and veins are separate trees; at least one vein is bent onto an artery so that they touch.

That is the ``"voxel"`` radius model, where sizes follow the voxel size. The ``"2pm-physical"`` model
draws a two-photon stack of mouse cortex in micrometres instead: penetrating and surface vessels of
6-15 um radius grown by the same Murray rules with side branches, and a capillary mesh (radius 2-4 um)
joined to them, dense enough to reach a vessel volume fraction of 5-30 % (see ``make_vessel_tree``).

Rasterisation is written by hand (no library draws tapered capsules with partial volume on an
anisotropic grid): each run of a few consecutive centreline points is drawn only inside its bounding box,
with the distance of voxel centres to the capsules between consecutive points computed in mm.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.spatial import cKDTree

from VesselSegLib.vessel_classes import BACKGROUND_LABEL, VESSEL_CLASS_BY_NAME

logger = logging.getLogger(__name__)

#: Capsules drawn together in one bounding box; trades numpy call overhead against box size.
_CAPSULES_PER_CHUNK = 6
#: Distance (in voxel units) within which a micro-vessel centreline labels a voxel, so that a vessel thinner
#: than a voxel still gives a connected 1-2 voxel wide label (sqrt(2)/2 reaches one voxel per cross-section).
_MICRO_LABEL_DISTANCE_VOXELS = 0.72

#: How vessel radii are chosen; see ``make_vessel_tree``.
RADIUS_MODELS: tuple[str, ...] = ("voxel", "2pm-physical")

# "2pm-physical" model, all lengths in mm (1 um = 0.001 mm). Mouse cortex: capillaries 2-4 um radius,
# penetrating arterioles / ascending venules up to ~15 um, vessel volume fraction of labelled two-photon
# stacks 3-42 % (VesselNN), capillary-dense cortex 5-15 %.
_UM = 0.001
#: A finest voxel above this is not a microscope stack (TOF-MRA voxels are ~0.5 mm).
_2PM_MAX_FINEST_SPACING_MM = 0.02
_2PM_ARTERY_ROOT_RADIUS_MM = (0.006, 0.012)
_2PM_VEIN_ROOT_RADIUS_MM = (0.007, 0.015)
#: Large vessels stop branching below this radius (precapillary arterioles), and no Murray child is
#: thinner than the floor.
_2PM_MACRO_MIN_RADIUS_MM = 0.0045
_2PM_MACRO_FLOOR_RADIUS_MM = 0.0025
_2PM_CAPILLARY_RADIUS_MM = (0.002, 0.004)
_2PM_CAPILLARY_RADIUS_MEAN_MM = 0.0028
_2PM_CAPILLARY_RADIUS_SD_MM = 0.00045
#: Centreline step of capillaries: short against their bends, so the chain of capsules follows the curve.
_2PM_CAPILLARY_STEP_MM = 0.0008
#: Range of the target vessel volume fraction, drawn log-uniform per phantom.
_2PM_VESSEL_FRACTION = (0.05, 0.30)
#: Field of view per large vessel of each kind (penetrating vessels are ~100 um apart in mouse cortex).
_2PM_AREA_PER_ROOT_MM2 = 0.09**2
_2PM_PENETRATING_PROBABILITY = 0.75
#: Mean distance between capillaries branching off the wall of a large vessel.
_2PM_WALL_ANCHOR_SPACING_MM = 0.04
#: Capillary length per volume of the mesh of ``_greedy_mesh_edges`` is C * (N / V)^(2/3) (measured C).
_MESH_LENGTH_CONSTANT = 1.05
_MAX_MESH_NODES = 200_000
#: Largest share of the target vessel volume given to the large vessels.
_2PM_MACRO_SHARE = 0.6
#: Probes of ``_volume_fraction``.
_PROBES_PER_ESTIMATE = 40_000


@dataclass
class TubeSegment:
    """One unbranched piece of vessel.

    Attributes
    ----------
    points_zyx : np.ndarray
        (N, 3) float, centreline points in voxel coordinates (Z, Y, X), voxel centres at integers.
    radii_mm : np.ndarray
        (N,) float, lumen radius at each point, in mm.
    vessel_class : str
        "artery", "vein" or "micro".
    parent : int or None
        Index of the parent segment in ``VesselTree.segments``; None for roots, and for the capillaries
        inside the mesh of a ``"2pm-physical"`` tree (it has loops, so no parent).
    """

    points_zyx: np.ndarray
    radii_mm: np.ndarray
    vessel_class: str
    parent: int | None


@dataclass
class VesselTree:
    """A rasterised vascular phantom.

    Attributes
    ----------
    class_map : np.ndarray
        (Z, Y, X) uint8; 0 background, 1 artery, 2 vein, 3 micro (values from ``vessel_classes``).
        Where vessels overlap the larger one wins.
    occupancy : np.ndarray
        (Z, Y, X) float32 in [0, 1], fraction of each voxel inside a vessel (partial volume).
    segments : list of TubeSegment
        Centrelines and radii; ``parent`` indexes this list.
    spacing_zyx : tuple of float
        Voxel size in mm, (Z, Y, X).
    occupancy_class : np.ndarray or None
        (Z, Y, X) uint8, the class of the vessel that gives ``occupancy`` in each voxel (0 where the
        occupancy is 0). Renderers use it to colour the partial-volume rim, which ``class_map`` leaves out.
    radius_model : str
        How the radii were chosen, one of ``RADIUS_MODELS`` ("voxel" for trees built by hand).
    """

    class_map: np.ndarray
    occupancy: np.ndarray
    segments: list[TubeSegment]
    spacing_zyx: tuple[float, float, float]
    occupancy_class: np.ndarray | None = None
    radius_model: str = "voxel"


# --------------------------------------------------------------------------------------------- helpers


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def _random_perpendicular(d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors perpendicular to the unit vectors ``d`` (..., 3), in a random direction."""
    r = rng.standard_normal(d.shape)
    r -= np.sum(r * d, axis=-1, keepdims=True) * d
    return _unit(r)


def _walk(
    starts_mm: np.ndarray,
    dirs: np.ndarray,
    n_steps: int,
    step_mm: np.ndarray,
    tortuosity: np.ndarray,
    rng: np.random.Generator,
    smooth_steps: float,
) -> np.ndarray:
    """Tortuous paths: a persistent direction plus Gaussian-smoothed noise.

    Parameters
    ----------
    starts_mm, dirs : (M, 3) start points (mm) and unit start directions.
    n_steps : number of steps (the paths have n_steps + 1 points).
    step_mm, tortuosity : (M,) step length and noise amplitude relative to the persistent direction.

    Returns
    -------
    (M, n_steps + 1, 3) points in mm.
    """
    m = starts_mm.shape[0]
    noise = rng.standard_normal((m, n_steps + 4 * int(smooth_steps) + 4, 3))
    noise = gaussian_filter1d(noise, smooth_steps, axis=1, mode="wrap")[:, :n_steps]
    # Smoothing shrinks the noise variance; restore unit std so `tortuosity` means what it says.
    noise /= max(float(noise.std()), 1e-6)
    # Subtract the step-0 noise so each path leaves along its start direction (no kink at branch points).
    noise -= noise[:, :1]
    steps = _unit(dirs[:, None, :] + tortuosity[:, None, None] * noise) * step_mm[:, None, None]
    pts = np.concatenate([starts_mm[:, None, :], starts_mm[:, None, :] + np.cumsum(steps, axis=1)], axis=1)
    return pts


def _inside_count(pts_mm: np.ndarray, extent_mm: np.ndarray, margin_mm: float) -> int:
    """Number of leading points inside the volume, plus one so the vessel reaches the border."""
    inside = np.all((pts_mm >= -margin_mm) & (pts_mm <= extent_mm + margin_mm), axis=-1)
    if inside.all():
        return len(pts_mm)
    return int(np.argmin(inside)) + 1


# ------------------------------------------------------------------------------------------- growth


@dataclass
class _GrowthParams:
    """Settings of ``_grow_tree``; the defaults are the ``"voxel"`` radius model's.

    ``h_mm`` is the length unit of the growth (step floor, segment length offset, border margin): the finest
    voxel size for ``"voxel"``, a fixed 1 um for ``"2pm-physical"`` so that the tree does not depend on
    the grid. ``r_floor_mm`` > 0 clips the Murray split so that no child is thinner than it.
    """

    extent_mm: np.ndarray
    h_mm: float
    r_min_mm: float
    max_segments: int
    mean_extent_mm: float
    length_per_radius: tuple[float, float] = (6.0, 12.0)
    length_per_extent: tuple[float, float] = (0.02, 0.06)
    tortuosity: tuple[float, float] = (0.25, 0.6)
    split_fraction: tuple[float, float] = (0.25, 0.75)
    r_floor_mm: float = 0.0


def _grow_tree(
    root_mm: np.ndarray,
    direction: np.ndarray,
    r_root_mm: float,
    vessel_class: str,
    params: _GrowthParams,
    rng: np.random.Generator,
    segments_mm: list[tuple[np.ndarray, np.ndarray, str, int | None]],
) -> None:
    """Grow one macro tree breadth-first and append (points_mm, radii_mm, class, parent) tuples."""
    centre = params.extent_mm / 2.0
    queue: list[tuple[np.ndarray, np.ndarray, float, int | None]] = [(root_mm, direction, r_root_mm, None)]
    n_made = 0
    while queue and n_made < params.max_segments:
        start, d0, r0, parent = queue.pop(0)
        # Lengths grow with the radius (larger vessels branch less often) and with the field of view, so that
        # a large volume is covered by a few trees instead of compact bushes.
        length = (
            rng.uniform(*params.length_per_radius) * r0
            + 4.0 * params.h_mm
            + rng.uniform(*params.length_per_extent) * params.mean_extent_mm
        )
        step = max(0.5 * r0, 0.7 * params.h_mm)
        n_steps = max(2, int(np.ceil(length / step)))
        pts = _walk(
            start[None],
            d0[None],
            n_steps,
            np.array([step]),
            np.array([rng.uniform(*params.tortuosity)]),
            rng,
            smooth_steps=max(2.0, 3.0 * params.h_mm / step),
        )[0]
        n_keep = _inside_count(pts, params.extent_mm, 0.5 * params.h_mm)
        truncated = n_keep < len(pts)
        pts = pts[:n_keep]
        if len(pts) < 2:
            continue
        # Gentle taper along the segment; the bifurcation uses the end radius (Murray's law at the node).
        r_end = r0 * rng.uniform(0.88, 1.0)
        radii = np.linspace(r0, r_end, len(pts))
        idx = len(segments_mm)
        segments_mm.append((pts, radii, vessel_class, parent))
        n_made += 1
        if truncated or r_end < params.r_min_mm:
            continue
        # Murray's law with a random split ratio f = r1^3 / r0^3.
        f = rng.uniform(*params.split_fraction)
        if params.r_floor_mm > 0.0:
            # Both children at least r_floor: f in [q, 1 - q] with q = (r_floor / r_end)^3 (<= 0.5 here,
            # since r_end >= r_min > 2^(1/3) r_floor).
            q = min((params.r_floor_mm / r_end) ** 3, 0.5)
            f = float(np.clip(f, q, 1.0 - q))
        r1 = r_end * f ** (1.0 / 3.0)
        r2 = r_end * (1.0 - f) ** (1.0 / 3.0)
        d_end = _unit(pts[-1] - pts[-2])
        # Murray's optimal branch angles (minimum work), one child on each side of the parent axis.
        cos1 = np.clip((r_end**4 + r1**4 - r2**4) / (2 * r_end**2 * r1**2), -1.0, 1.0)
        cos2 = np.clip((r_end**4 + r2**4 - r1**4) / (2 * r_end**2 * r2**2), -1.0, 1.0)
        u = _random_perpendicular(d_end, rng)
        # A pull towards the volume centre keeps the trees inside the field of view.
        to_centre = _unit(centre - pts[-1]) * 0.25
        for cos_t, sign, r_child in ((cos1, 1.0, r1), (cos2, -1.0, r2)):
            sin_t = np.sqrt(1.0 - cos_t**2)
            d_child = _unit(cos_t * d_end + sign * sin_t * u + to_centre + 0.15 * rng.standard_normal(3))
            queue.append((pts[-1].copy(), d_child, float(r_child), idx))


def _root_start(
    extent_mm: np.ndarray, rng: np.random.Generator, faces: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """A point just inside one of ``faces`` (0..5: -Z, +Z, -Y, +Y, -X, +X) and an inward direction."""
    face = faces[int(rng.integers(len(faces)))]
    axis, high = divmod(face, 2)
    p = rng.uniform(0.2, 0.8, size=3) * extent_mm
    p[axis] = extent_mm[axis] * (0.98 if high else 0.02)
    inward = np.zeros(3)
    inward[axis] = -1.0 if high else 1.0
    d = _unit(inward + 0.6 * _unit(extent_mm / 2 - p) + 0.3 * rng.standard_normal(3))
    return p, d


def _force_contacts(
    segments_mm: list[tuple[np.ndarray, np.ndarray, str, int | None]],
    h_mm: float,
    extent_mm: np.ndarray,
    n_contacts: int,
) -> None:
    """Bend veins onto arteries at the closest approaches so the two trees touch (slight overlap)."""
    a_pts, a_rad = [], []
    v_ref = []
    for si, (pts, radii, cls, _) in enumerate(segments_mm):
        if cls == "artery":
            a_pts.append(pts)
            a_rad.append(radii)
        elif cls == "vein" and len(pts) >= 5:
            # Only interior points can move without tearing the segment off its parent or children.
            for pi in range(2, len(pts) - 2):
                v_ref.append((si, pi))
    if not a_pts or not v_ref:
        logger.warning("No artery/vein pair to bring into contact; the phantom has no artery-vein contact.")
        return
    a_pts_all = np.concatenate(a_pts)
    a_rad_all = np.concatenate(a_rad)
    v_pts = np.array([segments_mm[si][0][pi] for si, pi in v_ref])
    v_rad = np.array([segments_mm[si][1][pi] for si, pi in v_ref])
    dist, nearest = cKDTree(a_pts_all).query(v_pts)
    gap = dist - a_rad_all[nearest] - v_rad
    used: set[int] = set()
    for k in np.argsort(gap):
        si, pi = v_ref[k]
        if si in used:
            continue
        used.add(si)
        pts, radii, cls, parent = segments_mm[si]
        pa = a_pts_all[nearest[k]]
        offset = pts[pi] - pa
        norm = np.linalg.norm(offset)
        direction = offset / norm if norm > 1e-6 else np.array([0.0, 0.0, 1.0])
        target = pa + direction * (a_rad_all[nearest[k]] + radii[pi] - 0.4 * h_mm)
        delta = target - pts[pi]
        n = len(pts)
        i = np.arange(n)
        sigma = max(2.0, n / 6.0)
        # Bump that is 1 at the contact point and exactly 0 at both segment ends.
        w = np.exp(-0.5 * ((i - pi) / sigma) ** 2) * np.sin(np.pi * i / (n - 1))
        w /= w[pi]
        new_pts = np.clip(pts + w[:, None] * delta, 0.0, extent_mm)
        segments_mm[si] = (new_pts, radii, cls, parent)
        if len(used) >= n_contacts:
            break


def _grow_micro(
    segments_mm: list[tuple[np.ndarray, np.ndarray, str, int | None]],
    n_micro: int,
    params: _GrowthParams,
    rng: np.random.Generator,
) -> None:
    """Sprout micro-vessels from random points of existing vessels, then a second generation from those."""
    h = params.h_mm
    hosts = list(range(len(segments_mm)))
    for generation in range(2):
        n = n_micro if generation == 0 else n_micro // 2
        if n == 0 or not hosts:
            return
        # Hosts chosen in proportion to their number of points (~ length).
        counts = np.array([len(segments_mm[i][0]) for i in hosts], dtype=float)
        host_pick = rng.choice(len(hosts), size=n, p=counts / counts.sum())
        starts = np.empty((n, 3))
        dirs = np.empty((n, 3))
        for k, hp in enumerate(host_pick):
            pts, radii, _, _ = segments_mm[hosts[hp]]
            j = int(rng.integers(len(pts) - 1))
            t = _unit(pts[j + 1] - pts[j])
            u = _random_perpendicular(t, rng)
            # Start on the host's wall, leave roughly perpendicular to it.
            starts[k] = pts[j] + u * radii[j] * 0.8
            dirs[k] = _unit(u + rng.uniform(-0.5, 0.5) * t)
        # Radii: 1-2 voxels diameter (sub-voxel to one voxel radius in the finest axis).
        radii_micro = rng.uniform(0.3, 0.55, size=n) * h
        step = 0.8 * h
        lengths = rng.uniform(8.0, 28.0, size=n) * h
        n_steps = int(np.ceil(lengths.max() / step))
        paths = _walk(
            starts, dirs, n_steps, np.full(n, step), rng.uniform(0.5, 1.0, size=n), rng, smooth_steps=2.5
        )
        new_hosts = []
        for k in range(n):
            n_pts = min(
                int(np.ceil(lengths[k] / step)) + 1, _inside_count(paths[k], params.extent_mm, 0.5 * h)
            )
            if n_pts < 3:
                continue
            new_hosts.append(len(segments_mm))
            segments_mm.append(
                (paths[k, :n_pts], np.full(n_pts, radii_micro[k]), "micro", int(hosts[host_pick[k]]))
            )
        hosts = new_hosts


# --------------------------------------------------------------------------------------- rasterising


def rasterize_segments(
    segments: list[TubeSegment],
    shape_zyx: tuple[int, int, int],
    spacing_zyx: tuple[float, float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw tube segments into a label map and a partial-volume occupancy map.

    Each segment is drawn as tapered capsules between consecutive centreline points. A voxel is labelled
    when its centre lies inside a capsule (distance in mm, anisotropic spacing respected); micro-vessels
    also label voxels whose centre is within 0.72 voxel of the centreline, so a sub-voxel vessel stays
    connected. The occupancy is ``clip(0.5 - (d - r) / h, 0, 1)``, with ``d`` the distance to the
    centreline, ``r`` the radius and ``h`` the finest voxel size: a linear ramp one voxel wide.

    Parameters
    ----------
    segments : list of TubeSegment
        Centrelines in voxel coordinates and radii in mm.
    shape_zyx : tuple of int
        Output shape (Z, Y, X).
    spacing_zyx : tuple of float
        Voxel size in mm (Z, Y, X).

    Returns
    -------
    class_map : (Z, Y, X) uint8, label values of ``vessel_classes`` (larger vessel wins on overlap).
    occupancy : (Z, Y, X) float32 in [0, 1].
    occupancy_class : (Z, Y, X) uint8, class giving the occupancy (0 where occupancy is 0).
    """
    shape = np.asarray(shape_zyx, dtype=int)
    sp = np.asarray(spacing_zyx, dtype=float)
    h = float(sp.min())
    class_map = np.full(tuple(shape), BACKGROUND_LABEL, dtype=np.uint8)
    occupancy = np.zeros(tuple(shape), dtype=np.float32)
    occ_class = np.zeros(tuple(shape), dtype=np.uint8)
    # Smaller vessels first, so larger ones overwrite them where they overlap ("larger vessel wins").
    order = sorted(range(len(segments)), key=lambda i: float(np.max(segments[i].radii_mm)))
    k_max = _CAPSULES_PER_CHUNK
    for si in order:
        seg = segments[si]
        label = VESSEL_CLASS_BY_NAME[seg.vessel_class].label_value
        is_micro = seg.vessel_class == "micro"
        p_mm = np.asarray(seg.points_zyx, dtype=float) * sp
        r_mm = np.asarray(seg.radii_mm, dtype=float)
        if len(p_mm) == 1:
            p_mm = np.repeat(p_mm, 2, axis=0)
            r_mm = np.repeat(r_mm, 2)
        for c0 in range(0, len(p_mm) - 1, k_max):
            a = p_mm[c0 : c0 + k_max]
            b = p_mm[c0 + 1 : c0 + k_max + 1]
            a = a[: len(b)]
            ra = r_mm[c0 : c0 + len(a)]
            rb = r_mm[c0 + 1 : c0 + len(a) + 1]
            reach = max(float(max(ra.max(), rb.max())) + h, _MICRO_LABEL_DISTANCE_VOXELS * float(sp.max()))
            lo = np.maximum(np.floor((np.minimum(a.min(0), b.min(0)) - reach) / sp).astype(int), 0)
            hi = np.minimum(np.ceil((np.maximum(a.max(0), b.max(0)) + reach) / sp).astype(int) + 1, shape)
            if np.any(hi <= lo):
                continue
            z = (np.arange(lo[0], hi[0]) * sp[0])[None, :, None, None]
            y = (np.arange(lo[1], hi[1]) * sp[1])[None, None, :, None]
            x = (np.arange(lo[2], hi[2]) * sp[2])[None, None, None, :]
            ab = b - a
            ab2 = np.maximum(np.sum(ab * ab, axis=1), 1e-12)
            pz = z - a[:, 0, None, None, None]
            py = y - a[:, 1, None, None, None]
            px = x - a[:, 2, None, None, None]
            cz, cy, cx = (ab[:, i, None, None, None] for i in range(3))
            t = np.clip((pz * cz + py * cy + px * cx) / ab2[:, None, None, None], 0.0, 1.0)
            dz = pz - t * cz
            dy = py - t * cy
            dx = px - t * cx
            d = np.sqrt(dz * dz + dy * dy + dx * dx)
            r = ra[:, None, None, None] + t * (rb - ra)[:, None, None, None]
            sd = np.min(d - r, axis=0)  # signed distance to the tube surface, mm
            occ = np.clip(0.5 - sd / h, 0.0, 1.0).astype(np.float32)
            inside = sd <= 0.0
            if is_micro:
                d_vox2 = np.min((dz / sp[0]) ** 2 + (dy / sp[1]) ** 2 + (dx / sp[2]) ** 2, axis=0)
                inside |= d_vox2 <= _MICRO_LABEL_DISTANCE_VOXELS**2
            box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
            sub_occ = occupancy[box]
            higher = occ > sub_occ
            occ_class[box][higher] = label
            np.maximum(sub_occ, occ, out=sub_occ)
            class_map[box][inside] = label
    return class_map, occupancy, occ_class


# ------------------------------------------------------------------------------ "2pm-physical" model


def _densify(
    pts_mm: np.ndarray, radii_mm: np.ndarray, max_step_per_radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a centreline so that consecutive points are at most ``max_step_per_radius * r`` apart."""
    if len(pts_mm) < 2:
        return pts_mm, radii_mm
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts_mm, axis=0), axis=1))])
    n_new = int(np.ceil(arc[-1] / (max_step_per_radius * float(radii_mm.min())))) + 1
    if n_new <= len(pts_mm):
        return pts_mm, radii_mm
    s = np.linspace(0.0, arc[-1], n_new)
    pts = np.stack([np.interp(s, arc, pts_mm[:, i]) for i in range(3)], axis=1)
    return pts, np.interp(s, arc, radii_mm)


def _volume_fraction(
    segments_mm: list[tuple[np.ndarray, np.ndarray, str, int | None]], extent_mm: np.ndarray
) -> float:
    """Fraction of the box ``[0, extent_mm]`` inside any vessel, measured on a probe lattice in mm.

    The lattice depends on the box only (not on the voxel grid), so that the capillary density chosen from
    it, and with it the whole tree, is the same at every spacing. About 40,000 probes: the estimate is good
    to a few tenths of a percent for capillary-sized structures. A probe is inside when it is closer to a
    (densified) centreline point than that point's radius. Only the nearest point is looked at, so points
    are first binned by radius (ratio 1.3 per bin): a thin capillary next to a probe then cannot hide the
    thick vessel that contains it.
    """
    if not segments_mm:
        return 0.0
    volume = float(np.prod(extent_mm))
    g = max(_UM, (volume / _PROBES_PER_ESTIMATE) ** (1.0 / 3.0))
    axes = [np.arange(0.5 * g, e, g) if e > g else np.array([0.5 * e]) for e in extent_mm]
    probes = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    dense = [_densify(pts, radii, 0.35) for pts, radii, _, _ in segments_mm]
    pts = np.concatenate([p for p, _ in dense])
    rad = np.concatenate([r for _, r in dense])
    log_bin = np.floor(np.log(rad / rad.min()) / np.log(1.3)).astype(int)
    inside = np.zeros(len(probes), dtype=bool)
    for b in np.unique(log_bin):
        sel = log_bin == b
        todo = np.flatnonzero(~inside)
        d, i = cKDTree(pts[sel]).query(probes[todo], distance_upper_bound=float(rad[sel].max()))
        found = np.isfinite(d)
        hit = np.zeros(len(todo), dtype=bool)
        hit[found] = d[found] < rad[sel][i[found]]
        inside[todo[hit]] = True
    return float(inside.mean())


def _tube_volume_mm3(
    segments_mm: list[tuple[np.ndarray, np.ndarray, str, int | None]], extent_mm: np.ndarray
) -> float:
    """Summed volume (mm^3) of the tube steps whose midpoint lies in ``[0, extent_mm]`` (overlaps counted)."""
    total = 0.0
    for pts, radii, _, _ in segments_mm:
        mid = 0.5 * (pts[1:] + pts[:-1])
        inside = np.all((mid >= 0.0) & (mid <= extent_mm), axis=1)
        step = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        r_mid = 0.5 * (radii[1:] + radii[:-1])
        total += float(np.sum(np.pi * r_mid[inside] ** 2 * step[inside]))
    return total


def _root_start_2pm(extent_mm: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Start point and direction of a large cortical vessel (Z = depth below the pial surface).

    Most are penetrating arterioles / ascending venules that enter at the top of the stack and dive along
    +Z; the others are surface or oblique vessels that cross the field of view in-plane.
    """
    p = rng.uniform(0.1, 0.9, size=3) * extent_mm
    if rng.uniform() < _2PM_PENETRATING_PROBABILITY:
        p[0] = 0.0
        return p, _unit(np.array([1.0, 0.0, 0.0]) + 0.25 * rng.standard_normal(3))
    axis = int(rng.integers(1, 3))
    high = bool(rng.integers(2))
    p[0] = rng.uniform(0.0, 0.6) * extent_mm[0]
    p[axis] = extent_mm[axis] if high else 0.0
    inward = np.zeros(3)
    inward[axis] = -1.0 if high else 1.0
    d = inward + 0.3 * rng.standard_normal(3)
    d[0] *= 0.3  # mostly in-plane: a surface vessel follows the (flat) pial surface
    return p, _unit(d)


def _greedy_mesh_edges(nodes: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Edges of a capillary mesh on ``nodes`` (N, 3): shortest neighbour pairs first, 3-4 edges per node.

    Capillary networks are loops of short segments meeting mostly at three-way junctions; connecting each
    node to its nearest free neighbours until it has 3 (sometimes 4) edges gives that, with many loops.
    """
    n = len(nodes)
    if n < 2:
        return []
    k = min(8, n)
    dist, nb = cKDTree(nodes).query(nodes, k=k)
    i = np.repeat(np.arange(n), k - 1)
    j = nb[:, 1:].ravel()
    d = dist[:, 1:].ravel()
    keep = i < j
    # The same pair can come from both ends; unique over (i, j) keeps it once.
    pairs, first = np.unique(np.stack([i[keep], j[keep]], axis=1), axis=0, return_index=True)
    order = np.argsort(d[keep][first], kind="stable")
    cap = np.where(rng.uniform(size=n) < 0.2, 4, 3)
    degree = np.zeros(n, dtype=int)
    edges = []
    for a, b in pairs[order].tolist():
        if degree[a] < cap[a] and degree[b] < cap[b]:
            edges.append((a, b))
            degree[a] += 1
            degree[b] += 1
    return edges


def _capillary_segments(
    ends_mm: np.ndarray,
    parents: list[int | None],
    rng: np.random.Generator,
) -> list[tuple[np.ndarray, np.ndarray, str, int | None]]:
    """Tortuous capillaries between point pairs ``ends_mm`` (E, 2, 3), radius 2-4 um, step 0.8 um.

    Each path is the straight line plus two sine modes perpendicular to it, so it leaves and reaches its
    end points exactly (junctions stay connected) with a tortuosity (arc / chord) of about 1.02-1.15.
    """
    lo, hi = _2PM_CAPILLARY_RADIUS_MM
    n_edges = len(ends_mm)
    radii = np.clip(rng.normal(_2PM_CAPILLARY_RADIUS_MEAN_MM, _2PM_CAPILLARY_RADIUS_SD_MM, n_edges), lo, hi)
    chord = ends_mm[:, 1] - ends_mm[:, 0]
    length = np.linalg.norm(chord, axis=1)
    axis = _unit(chord)
    e1 = _random_perpendicular(axis, rng)
    e2 = np.cross(axis, e1)
    # Two sine modes (half and full wave) with random perpendicular directions, amplitude 6-16 % of the chord.
    amplitude = (rng.uniform(0.06, 0.16, size=n_edges) * length)[:, None, None]
    coeffs = rng.standard_normal((n_edges, 2, 2))
    modes = amplitude * (coeffs[:, :, :1] * e1[:, None, :] + coeffs[:, :, 1:] * e2[:, None, :])
    modes[:, 1] *= 0.5
    out = []
    for k, parent in enumerate(parents):
        if length[k] < 1e-9:
            continue
        n_pts = max(3, int(np.ceil(length[k] / _2PM_CAPILLARY_STEP_MM)) + 1)
        t = np.linspace(0.0, 1.0, n_pts)[:, None]
        pts = (
            ends_mm[k, 0]
            + t * chord[k]
            + np.sin(np.pi * t) * modes[k, 0]
            + np.sin(2 * np.pi * t) * modes[k, 1]
        )
        out.append((pts, np.full(n_pts, radii[k]), "micro", parent))
    return out


def _capillary_anchors(
    segments_mm: list[tuple[np.ndarray, np.ndarray, str, int | None]],
    extent_mm: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Where the capillary mesh joins the large vessels.

    Returns
    -------
    points : (A, 3) mm; the free ends of terminal branches (precapillary arterioles / postcapillary venules)
        inside the box, then points on the walls of large vessels (about one per 40 um of length).
    n_links : (A,) int, mesh nodes each anchor connects to (2 for a terminal end, 1 for a wall point).
    parent : the macro segment of each anchor.
    """
    has_child = {parent for _, _, _, parent in segments_mm if parent is not None}
    points, n_links, parent = [], [], []
    for si, (pts, _, _, _) in enumerate(segments_mm):
        end = pts[-1]
        if si not in has_child and np.all((end > _UM) & (end < extent_mm - _UM)):
            points.append(end)
            n_links.append(2)
            parent.append(si)
    for si, (pts, radii, _, _) in enumerate(segments_mm):
        length = float(np.sum(np.linalg.norm(np.diff(pts, axis=0), axis=1)))
        for _ in range(int(rng.poisson(length / _2PM_WALL_ANCHOR_SPACING_MM))):
            j = int(rng.integers(len(pts) - 1))
            u = _random_perpendicular(_unit(pts[j + 1] - pts[j]), rng)
            # Just inside the wall, so that the capillary visibly joins the vessel.
            points.append(pts[j] + u * radii[j] * 0.8)
            n_links.append(1)
            parent.append(si)
    return np.reshape(np.array(points, dtype=float), (-1, 3)), np.array(n_links, dtype=int), parent


def _capillary_mesh(
    n_nodes: int,
    anchors: tuple[np.ndarray, np.ndarray, list[int]],
    extent_mm: np.ndarray,
    rng: np.random.Generator,
) -> list[tuple[np.ndarray, np.ndarray, str, int | None]]:
    """A capillary mesh on ``n_nodes`` random junctions, joined to the large vessels at ``anchors``."""
    # Junctions also just outside the box, so that capillaries cross the border as in a cropped stack.
    margin = 0.5 * (float(np.prod(extent_mm)) / max(n_nodes, 1)) ** (1.0 / 3.0)
    nodes = rng.uniform(-margin, extent_mm + margin, size=(n_nodes, 3))
    inside = np.all((nodes >= 0.0) & (nodes <= extent_mm), axis=1)
    ends, parents = [], []
    for a, b in _greedy_mesh_edges(nodes, rng):
        if inside[a] or inside[b]:
            ends.append((nodes[a], nodes[b]))
            parents.append(None)
    points, n_links, anchor_parent = anchors
    if len(points) and n_nodes >= 2:
        _, near = cKDTree(nodes).query(points, k=2)
        for p, links, parent, nb in zip(points, n_links, anchor_parent, near, strict=True):
            for node in nb[:links]:
                ends.append((p, nodes[node]))
                parents.append(parent)
    if not ends:
        return []
    return _capillary_segments(np.array(ends), parents, rng)


def _segments_2pm_physical(
    extent_mm: np.ndarray,
    rng: np.random.Generator,
    n_artery_roots: int | None,
    n_vein_roots: int | None,
    micro_density: float,
) -> tuple[list[tuple[np.ndarray, np.ndarray, str, int | None]], float]:
    """Large cortical vessels plus a capillary mesh, in physical units (see ``make_vessel_tree``).

    Returns the segments (points in mm) and the drawn target vessel volume fraction.
    """
    # Log-uniform: as many sparse (5-12 %) as dense (12-30 %) stacks.
    target = float(np.exp(rng.uniform(np.log(_2PM_VESSEL_FRACTION[0]), np.log(_2PM_VESSEL_FRACTION[1]))))
    in_plane_mm = extent_mm[1:]
    n_default = int(np.clip(round(float(np.prod(in_plane_mm)) / _2PM_AREA_PER_ROOT_MM2), 1, 6))
    n_art = n_default if n_artery_roots is None else int(n_artery_roots)
    n_vein = n_default if n_vein_roots is None else int(n_vein_roots)
    explicit = n_artery_roots is not None or n_vein_roots is not None
    params = _GrowthParams(
        extent_mm=extent_mm,
        h_mm=_UM,
        r_min_mm=_2PM_MACRO_MIN_RADIUS_MM,
        max_segments=200,
        mean_extent_mm=float(extent_mm.mean()),
        # Cortical trunks are nearly straight and give off side branches every 15-80 um: short segments
        # and strongly asymmetric Murray splits (by Murray's angles the thin child leaves at 45-75 degrees, the trunk goes on).
        length_per_radius=(1.5, 5.0),
        length_per_extent=(0.0, 0.05),
        tortuosity=(0.1, 0.3),
        split_fraction=(0.05, 0.35),
        r_floor_mm=_2PM_MACRO_FLOOR_RADIUS_MM,
    )
    # A vessel thicker than a fifth of the field of view would fill it.
    r_cap = max(0.1 * float(in_plane_mm.min()), 1.3 * _2PM_MACRO_MIN_RADIUS_MM)
    order = [c for i in range(max(n_art, n_vein)) for c, n in (("artery", n_art), ("vein", n_vein)) if i < n]
    volume = float(np.prod(extent_mm))
    segments_mm: list[tuple[np.ndarray, np.ndarray, str, int | None]] = []
    used_mm3 = 0.0
    for k, cls in enumerate(order):
        # Large vessels take at most _2PM_MACRO_SHARE of the target volume, the rest goes to capillaries
        # (capillaries hold a large share of the blood volume of cortex). The first artery and vein always
        # grow, each within half of that share if one of a few tries fits (in a sparse stack they come
        # out thin or short), further ones only while they fit.
        cap_mm3 = _2PM_MACRO_SHARE * target * volume * (0.5 * (k + 1) if k < 2 and not explicit else 1.0)
        r_range = _2PM_ARTERY_ROOT_RADIUS_MM if cls == "artery" else _2PM_VEIN_ROOT_RADIUS_MM
        best: tuple[tuple[bool, bool, float], list] | None = None
        for _attempt in range(8):
            tree_mm: list[tuple[np.ndarray, np.ndarray, str, int | None]] = []
            p, d = _root_start_2pm(extent_mm, rng)
            _grow_tree(p, d, min(rng.uniform(*r_range), r_cap), cls, params, rng, tree_mm)
            v = _tube_volume_mm3(tree_mm, extent_mm)
            # Rank: not a stub (it reaches into the volume), within the budget, then smaller.
            score = (len(tree_mm) < 4, used_mm3 + v > cap_mm3, v)
            if best is None or score < best[0]:
                best = (score, tree_mm)
            if not score[0] and not score[1]:
                break
        if not explicit and k >= 2 and best[0][1]:
            break
        offset = len(segments_mm)
        segments_mm.extend(
            (pts, radii, c, None if parent is None else parent + offset) for pts, radii, c, parent in best[1]
        )
        used_mm3 += best[0][2]
    f_macro = _volume_fraction(segments_mm, extent_mm)
    if micro_density == 0:
        return segments_mm, target

    # Capillary density: random tubes of summed volume fraction s fill 1 - exp(-s) of the free space
    # (overlaps), so s = ln((1 - f_macro) / (1 - target)); at least a quarter of what an empty box would need.
    s_need = micro_density * max(np.log((1.0 - f_macro) / (1.0 - target)), 0.25 * -np.log(1.0 - target))
    area = np.pi * (_2PM_CAPILLARY_RADIUS_MEAN_MM**2 + _2PM_CAPILLARY_RADIUS_SD_MM**2)
    # The mesh's length per volume is _MESH_LENGTH_CONSTANT (N / V)^(2/3): a first N from the length needed,
    # then corrected from the measured fraction (anchors and overlaps make the first guess low).
    n_nodes = volume * (s_need / area / _MESH_LENGTH_CONSTANT) ** 1.5
    f_goal = 1.0 - (1.0 - f_macro) * np.exp(-s_need)  # the target, unless micro_density != 1 or f_macro large
    anchors = _capillary_anchors(segments_mm, extent_mm, rng)
    best_mesh: tuple[float, list] | None = None
    for _round in range(4):
        n = int(np.clip(round(n_nodes), 4, _MAX_MESH_NODES))
        capillaries = _capillary_mesh(n, anchors, extent_mm, rng)
        f = _volume_fraction(segments_mm + capillaries, extent_mm)
        if best_mesh is None or abs(f - f_goal) < abs(best_mesh[0] - f_goal):
            best_mesh = (f, capillaries)
        s_got = np.log(max(1.0 - f_macro, 1e-6) / max(1.0 - f, 1e-6))
        if abs(f - f_goal) <= 0.05 * f_goal or s_got <= 0 or n >= _MAX_MESH_NODES:
            break
        # Length (and so volume) grows as N^(2/3).
        n_nodes = n * (s_need / s_got) ** 1.5
    return segments_mm + best_mesh[1], target


# ----------------------------------------------------------------------------------------- public API


def make_vessel_tree(
    shape_zyx: tuple[int, int, int],
    *,
    spacing_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0),
    seed: int = 0,
    n_artery_roots: int | None = None,
    n_vein_roots: int | None = None,
    micro_density: float = 1.0,
    radius_model: str = "voxel",
) -> VesselTree:
    """Grow and rasterise a synthetic vascular phantom (arteries, veins, micro-vessels).

    Parameters
    ----------
    shape_zyx : tuple of int
        Volume shape (Z, Y, X), each >= 16.
    spacing_zyx : tuple of float
        Voxel size in mm (Z, Y, X).
    seed : int
        Seed of the single ``np.random.default_rng`` all randomness comes from.
    n_artery_roots, n_vein_roots : int or None
        Number of trees of each kind; None picks 1-4 from the volume size (``"voxel"``), or about one of
        each per (90 um)^2 of field of view, fewer in sparse stacks (``"2pm-physical"``).
    micro_density : float
        Multiplier of the number of micro-vessels (``"voxel"``: about one per 17,000 voxels at 1.0) or of the
        capillary length (``"2pm-physical"``); 0 gives none.
    radius_model : {"voxel", "2pm-physical"}
        How vessel sizes are chosen.

        - ``"voxel"``: relative to the finest spacing ``h``, for any modality: root arteries 2-4.5 h
          depending on the volume size, micro-vessels 0.3-0.55 h (1-2 voxels across). The tree scales with
          the spacing.
        - ``"2pm-physical"``: mouse cortex as seen by two-photon microscopy, in physical units and
          independent of the voxel grid (the same seed and box ``(shape - 1) * spacing`` give the same
          vessels in mm at any spacing). Z is depth. Penetrating arterioles and ascending venules (75 %) enter at the top and
          dive along +Z, the others cross in-plane as surface vessels; root radius 6-12 um (arteries) or
          7-15 um (veins), at most a tenth of the in-plane field of view, tapering and giving off side
          branches by Murray's law down to 2.2-4.5 um. A mesh of capillaries (radius 2-4 um, mean 2.8 um,
          mostly three-way junctions, segments ~10-40 um) fills the volume and joins the large vessels at
          their terminal branches and along their walls. Its density is set so that the vessel volume
          fraction reaches a target drawn per phantom, log-uniform in 5-30 % (capillary-dense cortex
          5-15 %, labelled VesselNN stacks 3-42 %). In a field of view of >= 100 um the labelled fraction
          is within about 10 % (relative) of the target (7 % over 20 seeds with 1 or 2.5 um pixels and 2 or
          5 um slices); a much smaller box is filled by its large vessels. Needs a micrometre-scale
          spacing: finest voxel <= 0.02 mm. Build time grows with the physical volume: ~0.3-0.7 s for
          64 x 128 x 128 um on one core.

    Returns
    -------
    VesselTree
        ``radius_model`` is recorded in it. For ``"2pm-physical"`` the capillaries form a mesh, not a tree:
        a capillary's ``parent`` is the large vessel it branches from, None inside the mesh.
    """
    shape = tuple(int(s) for s in shape_zyx)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape_zyx must be 3 sizes of at least 16 voxels, got {shape_zyx!r}.")
    sp = np.asarray(spacing_zyx, dtype=float)
    if sp.shape != (3,) or np.any(sp <= 0):
        raise ValueError(f"spacing_zyx must be 3 positive voxel sizes in mm, got {spacing_zyx!r}.")
    if radius_model not in RADIUS_MODELS:
        valid = ", ".join(repr(m) for m in RADIUS_MODELS)
        raise ValueError(f"radius_model must be one of {valid}, got {radius_model!r}.")
    if radius_model == "2pm-physical" and float(sp.min()) > _2PM_MAX_FINEST_SPACING_MM:
        raise ValueError(
            f"radius_model='2pm-physical' draws micrometre-sized vessels and needs a micrometre-scale spacing "
            f"in mm (finest voxel <= {_2PM_MAX_FINEST_SPACING_MM} mm, e.g. (0.002, 0.001, 0.001)), got "
            f"{spacing_zyx!r}; use radius_model='voxel' for other volumes."
        )
    if micro_density < 0:
        raise ValueError(f"micro_density must be >= 0, got {micro_density!r}.")
    for name, value in (("n_artery_roots", n_artery_roots), ("n_vein_roots", n_vein_roots)):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0 or None, got {value!r}.")
    rng = np.random.default_rng(seed)
    extent_mm = (np.asarray(shape) - 1) * sp
    if radius_model == "voxel":
        segments_mm = _segments_voxel(shape, sp, rng, n_artery_roots, n_vein_roots, micro_density)
    else:
        segments_mm, _ = _segments_2pm_physical(extent_mm, rng, n_artery_roots, n_vein_roots, micro_density)

    segments = [
        TubeSegment(points_zyx=pts / sp, radii_mm=radii, vessel_class=cls, parent=parent)
        for pts, radii, cls, parent in segments_mm
    ]
    class_map, occupancy, occ_class = rasterize_segments(segments, shape, tuple(float(s) for s in sp))
    return VesselTree(
        class_map=class_map,
        occupancy=occupancy,
        segments=segments,
        spacing_zyx=tuple(float(s) for s in sp),
        occupancy_class=occ_class,
        radius_model=radius_model,
    )


def _segments_voxel(
    shape: tuple[int, int, int],
    sp: np.ndarray,
    rng: np.random.Generator,
    n_artery_roots: int | None,
    n_vein_roots: int | None,
    micro_density: float,
) -> list[tuple[np.ndarray, np.ndarray, str, int | None]]:
    """The ``"voxel"`` radius model's segments (points in mm); see ``make_vessel_tree``."""
    extent_mm = (np.asarray(shape) - 1) * sp
    h = float(sp.min())
    size_vox = float(np.prod(shape)) ** (1.0 / 3.0)
    n_default = int(np.clip(round(size_vox / 75.0), 1, 5))
    n_art = n_default if n_artery_roots is None else int(n_artery_roots)
    n_vein = n_default if n_vein_roots is None else int(n_vein_roots)
    r_root = float(np.clip(size_vox / 22.0, 2.0, 4.5)) * h
    params = _GrowthParams(
        extent_mm=extent_mm,
        h_mm=h,
        r_min_mm=0.9 * h,
        max_segments=500,
        mean_extent_mm=float(extent_mm.mean()),
    )

    segments_mm: list[tuple[np.ndarray, np.ndarray, str, int | None]] = []
    # Arteries enter from below and (mostly) the sides, veins drain to the top and (mostly) the sides:
    # separate trees that cross. Side faces are listed twice so trees mostly run in-plane (axial slabs).
    for n_roots, cls, faces, r_range in (
        (n_art, "artery", [0, 2, 3, 4, 5, 2, 3, 4, 5], (0.8, 1.0)),
        (n_vein, "vein", [1, 2, 3, 4, 5, 2, 3, 4, 5], (0.85, 1.1)),
    ):
        for _ in range(n_roots):
            # A root that leaves the volume at once gives a stub; regrow it (a few tries, deterministic).
            for _attempt in range(6):
                tree_mm: list[tuple[np.ndarray, np.ndarray, str, int | None]] = []
                p, d = _root_start(extent_mm, rng, faces=faces)
                _grow_tree(p, d, r_root * rng.uniform(*r_range), cls, params, rng, tree_mm)
                if len(tree_mm) >= 15:
                    break
            offset = len(segments_mm)
            segments_mm.extend(
                (pts, radii, c, None if parent is None else parent + offset)
                for pts, radii, c, parent in tree_mm
            )
    if n_art and n_vein:
        _force_contacts(segments_mm, h, extent_mm, n_contacts=1 + n_default // 2)
    n_micro = int(round(micro_density * np.prod(shape) / 17000.0))
    if micro_density > 0:
        n_micro = max(n_micro, 8)
    _grow_micro(segments_mm, n_micro, params, rng)
    return segments_mm


def tree_on_grid(tree: VesselTree, spacing_zyx: tuple[float, float, float]) -> VesselTree:
    """The same physical vessels rasterised on another grid covering the same box (e.g. 2x finer).

    Centreline points are moved from ``tree``'s voxel coordinates to the new grid's, keeping the box's
    corners in place (voxel ``i`` of spacing ``s`` covers ``[i s - s/2, i s + s/2]`` mm); radii stay in mm.
    For testing resampling: one phantom imaged at two resolutions.

    Parameters
    ----------
    tree : VesselTree
    spacing_zyx : 3 floats, mm
        The new voxel size; the shape is ``round(shape * old / new)``.
    """
    old = np.asarray(tree.spacing_zyx, dtype=float)
    new = np.asarray(spacing_zyx, dtype=float)
    shape = tuple(int(n) for n in np.maximum(np.round(np.asarray(tree.class_map.shape) * old / new), 1))
    segments = [
        TubeSegment(
            points_zyx=(np.asarray(segment.points_zyx, dtype=float) + 0.5) * old / new - 0.5,
            radii_mm=np.asarray(segment.radii_mm, dtype=float),
            vessel_class=segment.vessel_class,
            parent=segment.parent,
        )
        for segment in tree.segments
    ]
    class_map, occupancy, occupancy_class = rasterize_segments(segments, shape, tuple(float(v) for v in new))
    return VesselTree(
        class_map, occupancy, segments, tuple(float(v) for v in new), occupancy_class, tree.radius_model
    )
