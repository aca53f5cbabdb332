"""Vessel graph extraction from a binary 3D segmentation: skeleton, junctions, segments, radii.

The segmentation is thinned to a one-voxel-wide centreline (``skimage.morphology.skeletonize``, Lee et
al. 1994 in 3D) and the centreline is cut into segments at its junctions with ``skan``. Nodes are the
junctions (degree >= 3) and the free ends (degree 1) of the centreline; edges are the vessel segments
between them, with their physical length, mean radius and tortuosity.

This follows the graph stage of the two-photon microscopy (2PM) pipeline of Tahir et al. [1]_ (Sec. 2.4
and Figure 6), which computes the graph of a segmentation and compares graphs by their numbers of segments,
dangling segments, short segments (< 6 um) and incorrect bifurcations (junctions where a vessel divides into
three or more sub-vessels). The paper extracts graphs with the Laplacian-flow method of Damseh et al. [2]_;
this module uses morphological thinning [3]_ and skan [4]_ instead, so absolute counts differ from the
paper's, but the same counts on a prediction and on its reference compare like with like.

References
----------
.. [1] Tahir W, et al. Anatomical modeling of brain vasculature in two-photon microscopy by generalizable
       deep learning. BME Frontiers, 2021. Sec. 2.4 (graph metrics) and 4.5.
.. [2] Damseh R, et al. Laplacian flow dynamics on geometric graphs for anatomical modeling of
       cerebrovascular networks. IEEE Transactions on Medical Imaging 40(1), 2021.
.. [3] Lee T-C, Kashyap RL, Chu C-N. Building skeleton models via 3-D medial surface/axis thinning
       algorithms. CVGIP: Graphical Models and Image Processing 56(6), 1994.
.. [4] Nunez-Iglesias J, et al. A new Python library to investigate high-throughput screens of neuronal
       morphology (skan). PeerJ 6:e4312, 2018.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree
from skimage.morphology import skeletonize

from VesselSegLib.io.atomic import atomic_write_path

logger = logging.getLogger(__name__)

#: Short-segment threshold of the 2PM paper (section 2.4: "less than 6 um"), in mm.
DEFAULT_SHORT_SEGMENT_MM = 0.006

#: Node kinds, from the node degree d in the final graph (a self-loop counts twice).
NODE_KINDS: tuple[str, ...] = (
    "junction",  # d >= 3: a bifurcation (d == 3) or an incorrect multi-way split (d >= 4)
    "end",  # d == 1: a free vessel end (dangling, or cut by the volume border)
    "cycle",  # d == 2: the anchor point of a closed loop with no junction on it
    "isolated",  # d == 0: a skeleton of a single voxel (a speck too small to have a centreline)
)

#: Edge kinds, from the kinds of the two nodes of a segment.
EDGE_KINDS: tuple[str, ...] = ("junction-to-junction", "junction-to-end", "end-to-end", "cycle")

# Half-width (voxels) of the moving average applied to a centreline before its length is measured. A
# 26-connected voxel path is a staircase: on a straight oblique tube it is 8-12 % longer than the true axis
# (7 % at 30 degrees in a plane). Averaging over 5 voxels brings that error under 1 % while a sinusoid
# with a 40-voxel period keeps its tortuosity (measured on phantoms, see Testing/test_vessel_graph.py).
_SMOOTHING_HALF_WIDTH_VOXELS = 2

# The 26 neighbour offsets of a voxel in 3D.
_NEIGHBOUR_OFFSETS = np.array(
    [(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dz, dy, dx) != (0, 0, 0)]
)


@dataclass
class VesselGraph:
    """The graph of a vessel segmentation and the voxel grid it was measured on.

    Attributes
    ----------
    graph : networkx.MultiGraph
        Nodes are integers ``0 .. n-1`` with attributes

        - ``position_mm`` : tuple of 3 float, (z, y, x) in mm from the centre of voxel (0, 0, 0);
          a junction made of several skeleton voxels sits at their centroid.
        - ``degree`` : int, the number of segment ends at the node (a self-loop counts twice).
        - ``kind`` : str, one of :data:`NODE_KINDS`.

        Edges (one per vessel segment; parallel edges and self-loops are allowed) have attributes

        - ``length_mm`` : float, centreline length in mm (smoothed voxel path, see
          :func:`extract_vessel_graph`).
        - ``chord_length_mm`` : float, straight distance between the two ends of the path, in mm.
        - ``mean_radius_mm`` : float, mean distance transform of the mask on the segment's skeleton voxels.
        - ``tortuosity`` : float, ``length_mm / chord_length_mm`` (>= 1); NaN for a closed loop.
        - ``kind`` : str, one of :data:`EDGE_KINDS`.
        - ``path_voxels_zyx`` : ndarray of int, shape (N, 3), the skeleton voxels of the segment in path
          order, in (Z, Y, X) indices of the input mask.
        - ``start_node`` : int, the node at ``path_voxels_zyx[0]`` (edge tuples of an undirected graph do
          not keep their order).
    spacing_zyx : tuple of 3 float
        Voxel size in mm along (Z, Y, X).
    shape_zyx : tuple of 3 int
        Shape of the segmentation the graph was extracted from.
    """

    graph: nx.MultiGraph = field(default_factory=nx.MultiGraph)
    spacing_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0)
    shape_zyx: tuple[int, int, int] = (0, 0, 0)

    def summary(self, short_segment_mm: float = DEFAULT_SHORT_SEGMENT_MM) -> dict[str, float]:
        """Counts and totals of the graph; see :func:`graph_summary`."""
        return graph_summary(self, short_segment_mm=short_segment_mm)

    def write_graphml(self, path: str | os.PathLike) -> None:
        """Write the graph as GraphML; see :func:`write_graphml`."""
        write_graphml(self, path)

    def write_json(self, path: str | os.PathLike) -> None:
        """Write the graph as JSON; see :func:`write_graph_json`."""
        write_graph_json(self, path)


# ------------------------------------------------------------------------------------------ input checks


def _check_mask(mask: np.ndarray) -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim != 3:
        raise ValueError(
            f"mask must be a 3D (Z, Y, X) segmentation, got an array of shape {array.shape}; "
            "add an axis to a 2D slice (mask[np.newaxis]) or select one channel/time point of a 4D array."
        )
    if array.dtype == bool:
        return array
    if np.issubdtype(array.dtype, np.floating) and np.any((array != 0) & (array != 1)):
        raise ValueError(
            "mask is a floating-point array with values other than 0 and 1; threshold it into a binary "
            "mask first (e.g. probability > 0.5)."
        )
    return array != 0


def _check_spacing(spacing_zyx: Sequence[float]) -> tuple[float, float, float]:
    spacing = tuple(float(s) for s in np.ravel(spacing_zyx))
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(
            f"spacing_zyx must hold 3 positive voxel sizes in mm (Z, Y, X), got {spacing_zyx!r}."
        )
    return spacing  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- geometry


def _smoothed_path_mm(points_mm: np.ndarray, *, closed: bool) -> np.ndarray:
    """Moving average of a voxel path over up to ``2 h + 1`` points, ``h`` = _SMOOTHING_HALF_WIDTH_VOXELS.

    An open path keeps its two end points: the window shrinks symmetrically near them, so a segment still
    starts and ends at its junctions. A closed path (first point == last point) is averaged around the loop.
    """
    n = len(points_mm)
    zero = np.zeros((1, points_mm.shape[1]))
    if closed:
        ring = points_mm[:-1]
        h = min(_SMOOTHING_HALF_WIDTH_VOXELS, (len(ring) - 1) // 2)
        if h == 0:
            return points_mm
        padded = np.concatenate([ring[-h:], ring, ring[:h]])
        cumulative = np.concatenate([zero, np.cumsum(padded, axis=0)])
        width = 2 * h + 1
        smoothed = (cumulative[width:] - cumulative[:-width]) / width
        return np.concatenate([smoothed, smoothed[:1]])
    index = np.arange(n)
    half = np.minimum(np.minimum(index, n - 1 - index), _SMOOTHING_HALF_WIDTH_VOXELS)
    cumulative = np.concatenate([zero, np.cumsum(points_mm, axis=0)])
    return (cumulative[index + half + 1] - cumulative[index - half]) / (2 * half + 1)[:, None]


def _path_length_mm(points_mm: np.ndarray, *, closed: bool) -> float:
    if len(points_mm) < 2:
        return 0.0
    smoothed = _smoothed_path_mm(points_mm, closed=closed)
    return float(np.linalg.norm(np.diff(smoothed, axis=0), axis=1).sum())


def _fill_cavities(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background component that does not touch the array border set to foreground.

    Background components are 6-connected, the complement of the 26-connectivity of the 3D thinning.
    """
    background_labels, n_labels = ndimage.label(~mask)
    if n_labels == 0:
        return mask
    border = np.concatenate(
        [np.ravel(np.take(background_labels, index, axis=axis)) for axis in range(3) for index in (0, -1)]
    )
    is_cavity = np.ones(n_labels + 1, dtype=bool)
    is_cavity[np.unique(border)] = False  # label 0 (foreground) is among them unless the mask is all border
    is_cavity[0] = False
    return mask | is_cavity[background_labels]


def _distance_to_background_mm(mask: np.ndarray, voxels: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Euclidean distance (mm) from each of ``voxels`` (N, 3) to the nearest background voxel centre.

    The values of ``distance_transform_edt(mask, sampling=spacing)[voxels]``, without the transform of the
    whole volume (2 s for 256 x 256 x 128): the nearest background voxel always has a face neighbour in
    the foreground (a step towards the query point would otherwise reach a nearer background voxel), so a
    k-d tree of that one-voxel shell around the mask finds it.
    """
    shell = ndimage.binary_dilation(mask) & ~mask
    if not shell.any():  # the mask fills the whole array: no wall to measure to
        return ndimage.distance_transform_edt(mask, sampling=spacing)[tuple(voxels.T)]
    distances, _ = cKDTree(np.argwhere(shell) * spacing).query(voxels * spacing, k=1)
    return distances


def skeletonize_keeping_components(mask: np.ndarray) -> np.ndarray:
    """Thinning of a binary mask that leaves at least one skeleton voxel in every connected component.

    Parameters
    ----------
    mask : ndarray of bool, shape (Z, Y, X) or (Y, X)
        Binary mask.

    Returns
    -------
    ndarray of bool, same shape
        ``skimage.morphology.skeletonize(mask)`` (Lee et al. 1994 thinning in 3D), plus, for each
        component (26-connected in 3D, 8-connected in 2D) the thinning deleted entirely, its voxel nearest
        to the component's centroid. skimage's thinning leaves nothing of, e.g., a 2 x 2 x 2 or 4 x 4 x 4
        cube, which would drop noise specks from a graph instead of counting them.
    """
    mask = np.asarray(mask, dtype=bool)
    skeleton = skeletonize(mask).astype(bool)
    labels, n_components = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    has_skeleton = np.zeros(n_components + 1, dtype=bool)
    has_skeleton[labels[skeleton]] = True
    has_skeleton[0] = True  # background
    missing = np.flatnonzero(~has_skeleton)
    if missing.size:
        boxes = ndimage.find_objects(labels)
        for label in missing:
            box = boxes[label - 1]
            local = np.argwhere(labels[box] == label)
            nearest = local[np.argmin(np.sum((local - local.mean(axis=0)) ** 2, axis=1))]
            skeleton[tuple(nearest + [s.start for s in box])] = True
    return skeleton


def _isolated_voxels(skeleton: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Bool (N,): which skeleton voxels ``coords`` (N, 3) have none of their 26 neighbours in the skeleton."""
    padded = np.pad(skeleton, 1)
    neighbours = coords[:, None, :] + 1 + _NEIGHBOUR_OFFSETS[None, :, :]  # +1: the padding
    counts = padded[neighbours[..., 0], neighbours[..., 1], neighbours[..., 2]].sum(axis=1)
    return counts == 0


# ---------------------------------------------------------------------------------------------- extraction


def _build_topology(
    paths: list[np.ndarray],
    degrees: np.ndarray,
    lengths_mm: np.ndarray,
    radius_at_pixel_mm: np.ndarray,
    merge_radius_factor: float,
    n_pixels: int,
) -> tuple[nx.MultiGraph, dict[int, np.ndarray]]:
    """Junction merging and segment graph over skan pixel ids.

    Returns the graph (node = cluster label, edge attribute ``pixels`` = path pixel ids and ``start_node``)
    and, for each node, the pixel ids of the skeleton voxels it stands for.
    """
    # Pairs of junction pixels that belong to one junction region: joined by a path with no voxel in
    # between (thinning leaves small clusters of junction voxels), or by a path shorter than the vessel
    # radius there, which is a single crossing split into two degree-3 junctions by the thinning.
    merged = np.zeros(len(paths), dtype=bool)
    for i, pixels in enumerate(paths):
        src, dst = pixels[0], pixels[-1]
        if src == dst or degrees[src] < 3 or degrees[dst] < 3:
            continue
        adjacent = len(pixels) == 2
        radius = max(radius_at_pixel_mm[src], radius_at_pixel_mm[dst])
        merged[i] = adjacent or lengths_mm[i] <= merge_radius_factor * radius
    endpoints = np.unique(np.concatenate([[p[0], p[-1]] for p in paths]))
    pairs = np.array([(p[0], p[-1]) for p, m in zip(paths, merged, strict=True) if m], dtype=np.int64)
    pairs = pairs.reshape(-1, 2)
    adjacency = sparse.coo_matrix(
        (np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n_pixels, n_pixels)
    ).tocsr()
    _, cluster_of_pixel = csgraph.connected_components(adjacency, directed=False)

    graph = nx.MultiGraph()
    endpoint_labels = cluster_of_pixel[endpoints]
    order = np.argsort(endpoint_labels, kind="stable")
    labels, starts = np.unique(endpoint_labels[order], return_index=True)
    members = {
        int(label): pixels
        for label, pixels in zip(labels, np.split(endpoints[order], starts[1:]), strict=True)
    }
    graph.add_nodes_from(members)
    for pixels, is_merged in zip(paths, merged, strict=True):
        if is_merged:
            continue  # inside a junction region: the region is one node
        u, v = int(cluster_of_pixel[pixels[0]]), int(cluster_of_pixel[pixels[-1]])
        graph.add_edge(u, v, pixels=pixels, start_node=u)
    _join_pass_through_nodes(graph, members)
    return graph, members


def _join_pass_through_nodes(graph: nx.MultiGraph, members: dict[int, np.ndarray]) -> None:
    """Replace every node with two distinct segments and no self-loop by one segment through it.

    Such nodes arise only from merging: two junctions joined by two short parallel paths (a small hole in
    the mask) merge into one node that is left with one segment on each side.
    """
    for node in list(graph.nodes):
        if graph.degree(node) != 2 or graph.has_edge(node, node):
            continue
        # networkx lists the edges of ``node`` as (node, neighbour, key, data).
        (_, before, _, data_in), (_, after, _, data_out) = graph.edges(node, keys=True, data=True)
        # Orient the first path to end at ``node`` and the second to start there, then chain them.
        first = data_in["pixels"] if data_in["start_node"] == before else data_in["pixels"][::-1]
        second = data_out["pixels"] if data_out["start_node"] == node else data_out["pixels"][::-1]
        graph.remove_node(node)
        members.pop(node)
        graph.add_edge(before, after, pixels=np.concatenate([first, second]), start_node=before)


def extract_vessel_graph(
    mask: np.ndarray,
    spacing_zyx: Sequence[float],
    *,
    junction_merge_radius_factor: float = 1.0,
    fill_cavities: bool = True,
) -> VesselGraph:
    """Graph of the vessel centrelines of a binary 3D segmentation.

    Parameters
    ----------
    mask : ndarray, shape (Z, Y, X), bool or 0/1
        Binary vessel segmentation.
    spacing_zyx : sequence of 3 float
        Voxel size in mm along (Z, Y, X). Anisotropic spacing is taken into account in every length,
        radius and position.
    junction_merge_radius_factor : float
        Two junctions joined by a segment no longer than this factor times the larger vessel radius at
        the two junctions (distance transform, mm) are merged into one node: thinning often splits a
        four-way crossing into two degree-3 junctions a voxel or two apart, which would hide an incorrect
        bifurcation. Adjacent junction voxels are always merged. 0 merges adjacent voxels only.
    fill_cavities : bool
        Fill enclosed background pockets of the mask before thinning. A closed cavity inside a vessel
        (a gap in a manual label, a shadow inside the lumen) cannot thin to a curve: the skeleton keeps a
        closed surface around it, which breaks into dozens of spurious short segments.

    Returns
    -------
    VesselGraph
        Nodes: junctions (degree >= 3), free ends (degree 1), the anchor of each closed loop without a
        junction (degree 2) and single-voxel skeletons (degree 0). Edges: vessel segments. See
        :class:`VesselGraph` for the attributes. An empty mask gives a graph without nodes.

    Raises
    ------
    ValueError
        If ``mask`` is not 3D, is a non-binary float array, or ``spacing_zyx`` is not 3 positive sizes.

    Notes
    -----
    - Length: the centreline voxel path, scaled to mm, smoothed by a 5-voxel moving average (the two path
      ends fixed) and summed. Without smoothing a 26-connected path overestimates an oblique vessel by up
      to 12 %; the thinned centreline stops about one voxel short of a rounded vessel end.
    - Radius: the Euclidean distance transform of the mask in mm (the values of
      ``scipy.ndimage.distance_transform_edt(mask, sampling=spacing_zyx)``, read from a k-d tree of the
      background next to the mask, which is faster) averaged over the segment's skeleton voxels, leaving
      out its two end voxels when it has others (a junction voxel sees the wider junction region). The
      distance is to the nearest background voxel centre, so it exceeds the radius of the vessel wall
      (half-way between voxel centres) by about half a voxel.
    - Tortuosity: length / chord, where the chord is the straight distance between the two path ends;
      >= 1 by construction. A closed loop (``kind == "cycle"``) has no chord and gets NaN rather than
      ``inf``, so that it drops out of ``np.nanmean`` instead of dominating an average.
    - The first call compiles skan's Numba functions, which takes several seconds once per process.
    """
    binary = _check_mask(mask)
    spacing = _check_spacing(spacing_zyx)
    factor = float(junction_merge_radius_factor)
    if not (math.isfinite(factor) and factor >= 0):
        raise ValueError(
            f"junction_merge_radius_factor must be a finite number >= 0, got {junction_merge_radius_factor!r}."
        )
    result = VesselGraph(graph=nx.MultiGraph(), spacing_zyx=spacing, shape_zyx=tuple(binary.shape))
    result.graph.graph.update(spacing_zyx_mm=spacing, shape_zyx=tuple(int(s) for s in binary.shape))
    if not binary.any():
        return result

    started = time.perf_counter()
    # Work on the bounding box, padded by one background voxel so that thinning and the distance
    # transform see the vessel walls as they would in the full volume.
    bounds = ndimage.find_objects(binary.astype(np.uint8))[0]
    box = tuple(
        slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(bounds, binary.shape, strict=True)
    )
    offset = np.array([s.start for s in box])
    crop = binary[box]
    if fill_cavities:
        crop = _fill_cavities(crop)
    skeleton = skeletonize_keeping_components(crop)
    spacing_array = np.asarray(spacing)

    voxels = np.argwhere(skeleton)
    isolated = _isolated_voxels(skeleton, voxels)
    graph = result.graph
    next_node = 0
    if not isolated.all():
        from skan import Skeleton  # ~1 s import (Numba, pandas): only when there is a centreline

        connected = skeleton.copy()
        connected[tuple(voxels[isolated].T)] = False
        skan_skeleton = Skeleton(connected, spacing=1, keep_images=False)
        coords = np.asarray(skan_skeleton.coordinates, dtype=np.int64)
        indptr, indices = skan_skeleton.paths.indptr, skan_skeleton.paths.indices
        paths = [np.asarray(indices[indptr[i] : indptr[i + 1]]) for i in range(skan_skeleton.n_paths)]
        lengths_mm = np.array(
            [_path_length_mm(coords[p] * spacing_array, closed=p[0] == p[-1]) for p in paths]
        )
        radius_at_pixel_mm = _distance_to_background_mm(crop, coords, spacing_array)
        topology, members = _build_topology(
            paths, skan_skeleton.degrees, lengths_mm, radius_at_pixel_mm, factor, len(coords)
        )
        node_id = {label: next_node + i for i, label in enumerate(sorted(members))}
        next_node += len(node_id)
        for label, pixels in sorted(members.items()):
            degree = topology.degree(label)
            centroid = (coords[pixels].mean(axis=0) + offset) * spacing_array
            graph.add_node(
                node_id[label],
                position_mm=tuple(float(c) for c in centroid),
                degree=int(degree),
                kind=_node_kind(degree),
            )
        for u, v, data in topology.edges(data=True):
            pixels = data["pixels"]
            graph.add_edge(
                node_id[u],
                node_id[v],
                **_segment_attributes(pixels, coords, radius_at_pixel_mm, spacing_array, offset),
                start_node=node_id[data["start_node"]],
            )
        for u, v, data in graph.edges(data=True):
            data["kind"] = _edge_kind(graph, u, v)

    for voxel in voxels[isolated]:
        position = (voxel + offset) * spacing_array
        graph.add_node(next_node, position_mm=tuple(float(c) for c in position), degree=0, kind="isolated")
        next_node += 1
    logger.debug(
        "Vessel graph: %d nodes, %d segments from %d skeleton voxels in %.2f s",
        graph.number_of_nodes(),
        graph.number_of_edges(),
        len(voxels),
        time.perf_counter() - started,
    )
    return result


def _node_kind(degree: int) -> str:
    if degree >= 3:
        return "junction"
    return {0: "isolated", 1: "end", 2: "cycle"}[degree]


def _edge_kind(graph: nx.MultiGraph, u: int, v: int) -> str:
    if u == v:
        return "cycle"
    n_ends = sum(graph.nodes[n]["kind"] == "end" for n in (u, v))
    return ("junction-to-junction", "junction-to-end", "end-to-end")[n_ends]


def _segment_attributes(
    pixels: np.ndarray,
    coords: np.ndarray,
    radius_at_pixel_mm: np.ndarray,
    spacing: np.ndarray,
    offset: np.ndarray,
) -> dict[str, Any]:
    """Length, chord, mean radius and tortuosity of the segment through skeleton pixels ``pixels``.

    ``coords`` (N, 3) are the crop voxel indices of the skeleton pixels, ``radius_at_pixel_mm`` (N,) their
    distance to the background, ``offset`` (3,) the crop's origin in the full volume.
    """
    path_voxels = coords[pixels]
    closed = bool(pixels[0] == pixels[-1])
    points_mm = path_voxels * spacing
    length_mm = _path_length_mm(points_mm, closed=closed)
    chord_mm = float(np.linalg.norm(points_mm[-1] - points_mm[0]))
    # Interior voxels only when there are some: end voxels at junctions measure the junction region.
    sampled = pixels[1:-1] if len(pixels) > 2 else pixels
    mean_radius_mm = float(radius_at_pixel_mm[sampled].mean())
    tortuosity = max(length_mm / chord_mm, 1.0) if chord_mm > 0 and not closed else math.nan
    return {
        "length_mm": length_mm,
        "chord_length_mm": chord_mm,
        "mean_radius_mm": mean_radius_mm,
        "tortuosity": tortuosity,
        "path_voxels_zyx": (path_voxels + offset).astype(np.int64),
    }


# ------------------------------------------------------------------------------------------------- summary


def _as_networkx(graph: VesselGraph | nx.MultiGraph) -> nx.MultiGraph:
    if isinstance(graph, VesselGraph):
        return graph.graph
    if isinstance(graph, nx.Graph):
        return graph
    raise ValueError(f"graph must be a VesselGraph or a networkx graph, got {type(graph).__name__}.")


def graph_summary(
    graph: VesselGraph | nx.MultiGraph, short_segment_mm: float = DEFAULT_SHORT_SEGMENT_MM
) -> dict[str, float]:
    """Counts of the 2PM paper's graph comparison (section 2.4, Figure 6(b)) and totals.

    Parameters
    ----------
    graph : VesselGraph or networkx.MultiGraph
        From :func:`extract_vessel_graph`.
    short_segment_mm : float
        Segments shorter than this (mm) count as short. Default 0.006 mm, the paper's 6 um.

    Returns
    -------
    dict
        - ``segments``: number of vessel segments (edges).
        - ``bifurcations``: junction nodes (degree >= 3), incorrect ones included.
        - ``end_points``: degree-1 nodes.
        - ``dangling_segments``: segments "disconnected at one end or both ends" (kinds junction-to-end
          and end-to-end).
        - ``short_segments``: segments with ``length_mm < short_segment_mm``.
        - ``wrong_bifurcations``: junctions where a vessel divides into three or more sub-vessels,
          i.e. degree >= 4.
        - ``cycles``: closed-loop segments (a segment from a node back to itself).
        - ``isolated_points``: single-voxel skeletons (degree 0).
        - ``total_length_mm``: sum of the segment lengths.
        - ``mean_radius_mm``: length-weighted mean of the segment radii (about the mean radius per unit
          of vessel length); NaN without segments.

        An empty graph gives zero counts, ``total_length_mm`` 0.0 and ``mean_radius_mm`` NaN.
    """
    threshold = float(short_segment_mm)
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"short_segment_mm must be a finite length >= 0 in mm, got {short_segment_mm!r}.")
    g = _as_networkx(graph)
    degrees = np.array([d for _, d in g.degree()], dtype=np.int64)
    edges = [data for _, _, data in g.edges(data=True)]
    lengths = np.array([e["length_mm"] for e in edges], dtype=np.float64)
    radii = np.array([e["mean_radius_mm"] for e in edges], dtype=np.float64)
    kinds = [e["kind"] for e in edges]
    total_length = float(lengths.sum())
    if total_length > 0:
        mean_radius = float(np.sum(lengths * radii) / total_length)
    elif len(edges):
        mean_radius = float(radii.mean())
    else:
        mean_radius = math.nan
    return {
        "segments": len(edges),
        "bifurcations": int(np.count_nonzero(degrees >= 3)),
        "end_points": int(np.count_nonzero(degrees == 1)),
        "dangling_segments": sum(k in ("junction-to-end", "end-to-end") for k in kinds),
        "short_segments": int(np.count_nonzero(lengths < threshold)),
        "wrong_bifurcations": int(np.count_nonzero(degrees >= 4)),
        "cycles": kinds.count("cycle"),
        "isolated_points": int(np.count_nonzero(degrees == 0)),
        "total_length_mm": total_length,
        "mean_radius_mm": mean_radius,
    }


# ----------------------------------------------------------------------------------------------- writers


def _graph_metadata(graph: VesselGraph | nx.MultiGraph) -> tuple[nx.MultiGraph, list[float], list[int]]:
    g = _as_networkx(graph)
    if isinstance(graph, VesselGraph):
        spacing, shape = list(graph.spacing_zyx), list(graph.shape_zyx)
    else:
        spacing = list(g.graph.get("spacing_zyx_mm", (math.nan,) * 3))
        shape = list(g.graph.get("shape_zyx", (0, 0, 0)))
    return g, [float(s) for s in spacing], [int(s) for s in shape]


def write_graphml(graph: VesselGraph | nx.MultiGraph, path: str | os.PathLike) -> None:
    """Write a vessel graph as GraphML (readable by ``networkx.read_graphml``, Gephi, Cytoscape).

    GraphML holds scalar attributes only, so ``position_mm`` becomes ``position_z_mm``,
    ``position_y_mm`` and ``position_x_mm``, and ``path_voxels_zyx`` a JSON string ``"[[z, y, x], ...]"``.
    The voxel size and volume shape are graph attributes ``spacing_{z,y,x}_mm`` and ``shape_{z,y,x}``.
    NaN tortuosities are written as ``NaN``. The file is written whole or not at all.

    Parameters
    ----------
    graph : VesselGraph or networkx.MultiGraph
        From :func:`extract_vessel_graph`.
    path : str or os.PathLike
        Output file, usually ``*.graphml``; its folder must exist.
    """
    g, spacing, shape = _graph_metadata(graph)
    flat = nx.MultiGraph()
    for axis, size, count in zip("zyx", spacing, shape, strict=True):
        flat.graph[f"spacing_{axis}_mm"] = size
        flat.graph[f"shape_{axis}"] = count
    for node, data in g.nodes(data=True):
        z, y, x = data["position_mm"]
        flat.add_node(
            node,
            position_z_mm=float(z),
            position_y_mm=float(y),
            position_x_mm=float(x),
            degree=int(data["degree"]),
            kind=str(data["kind"]),
        )
    for u, v, key, data in g.edges(keys=True, data=True):
        flat.add_edge(
            u,
            v,
            key=key,
            length_mm=float(data["length_mm"]),
            chord_length_mm=float(data["chord_length_mm"]),
            mean_radius_mm=float(data["mean_radius_mm"]),
            tortuosity=float(data["tortuosity"]),
            kind=str(data["kind"]),
            start_node=int(data["start_node"]),
            path_voxels_zyx=json.dumps(np.asarray(data["path_voxels_zyx"]).tolist(), separators=(",", ":")),
        )
    with atomic_write_path(path) as temporary:
        nx.write_graphml(flat, temporary)


def _finite_or_none(value: float) -> float | None:
    # Strict JSON has no NaN/Infinity: an undefined value (a loop's tortuosity) is written as null.
    value = float(value)
    return value if math.isfinite(value) else None


def write_graph_json(graph: VesselGraph | nx.MultiGraph, path: str | os.PathLike) -> None:
    """Write a vessel graph as strict JSON with "nodes" and "edges" lists.

    Layout::

        {"spacing_zyx_mm": [z, y, x], "shape_zyx": [Z, Y, X], "summary": {...graph_summary...},
         "nodes": [{"id", "position_mm": [z, y, x], "degree", "kind"}, ...],
         "edges": [{"source", "target", "key", "length_mm", "chord_length_mm", "mean_radius_mm",
                    "tortuosity", "kind", "path_voxels_zyx": [[z, y, x], ...]}, ...]}

    ``source`` is the node at the first voxel of ``path_voxels_zyx``. Non-finite numbers (the NaN
    tortuosity of a loop, the NaN mean radius of an empty graph) are written as ``null``. The file is
    written whole or not at all.

    Parameters
    ----------
    graph : VesselGraph or networkx.MultiGraph
        From :func:`extract_vessel_graph`.
    path : str or os.PathLike
        Output file, usually ``*.json``; its folder must exist.
    """
    g, spacing, shape = _graph_metadata(graph)
    nodes = [
        {
            "id": int(node),
            "position_mm": [float(c) for c in data["position_mm"]],
            "degree": int(data["degree"]),
            "kind": str(data["kind"]),
        }
        for node, data in g.nodes(data=True)
    ]
    edges = []
    for u, v, key, data in g.edges(keys=True, data=True):
        source = int(data["start_node"])
        target = int(v if source == u else u)
        edges.append(
            {
                "source": source,
                "target": target,
                "key": int(key),
                "length_mm": _finite_or_none(data["length_mm"]),
                "chord_length_mm": _finite_or_none(data["chord_length_mm"]),
                "mean_radius_mm": _finite_or_none(data["mean_radius_mm"]),
                "tortuosity": _finite_or_none(data["tortuosity"]),
                "kind": str(data["kind"]),
                "path_voxels_zyx": np.asarray(data["path_voxels_zyx"]).tolist(),
            }
        )
    summary = {
        key: value if isinstance(value, int) else _finite_or_none(value)
        for key, value in graph_summary(g).items()
    }
    document = {
        "spacing_zyx_mm": spacing,
        "shape_zyx": shape,
        "summary": summary,
        "nodes": nodes,
        "edges": edges,
    }
    with atomic_write_path(path) as temporary, open(temporary, "w", encoding="utf-8") as stream:
        json.dump(document, stream, allow_nan=False)
