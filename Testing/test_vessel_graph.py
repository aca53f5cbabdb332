"""Vessel graph extraction (VesselSegLib.graph) and the 2PM paper's MHD and LC metrics on synthetic tubes."""

from __future__ import annotations

import json
import math

import networkx as nx
import numpy as np
import pytest
from scipy import ndimage

from VesselSegLib.graph import (
    VesselGraph,
    extract_vessel_graph,
    graph_summary,
    write_graph_json,
    write_graphml,
)
from VesselSegLib.metrics import (
    length_correlation,
    modified_hausdorff_per_slice_mm,
    modified_hausdorff_slicewise_mm,
)


def capsule(shape: tuple[int, int, int], start_zyx, end_zyx, radius_voxels: float) -> np.ndarray:
    """Bool (Z, Y, X) mask of the voxels within ``radius_voxels`` of the segment start-end (a rounded tube)."""
    grid = np.indices(shape).reshape(3, -1).T.astype(float)
    start, end = np.asarray(start_zyx, float), np.asarray(end_zyx, float)
    axis = end - start
    t = np.clip((grid - start) @ axis / (axis @ axis), 0.0, 1.0)
    distance = np.linalg.norm(grid - (start + t[:, None] * axis), axis=1)
    return (distance <= radius_voxels).reshape(shape)


def tube_along(points_zyx: np.ndarray, shape: tuple[int, int, int], radius_voxels: float) -> np.ndarray:
    """Tube of ``radius_voxels`` around a densely sampled curve ``points_zyx`` (N, 3)."""
    centreline = np.zeros(shape, dtype=bool)
    centreline[tuple(np.round(points_zyx).astype(int).T)] = True
    return ndimage.distance_transform_edt(~centreline) <= radius_voxels


Y_CENTRE = np.array([20.0, 40.0, 40.0])
# Three branches leaving the centre in different 3D directions (none along a diagonal of the grid).
Y_ENDS = [Y_CENTRE + (0, -30, 0), Y_CENTRE + (8, 20, 18), Y_CENTRE + (-6, 20, -21)]
Y_RADIUS = 2.5


@pytest.fixture(scope="module")
def y_mask() -> np.ndarray:
    mask = np.zeros((40, 80, 80), dtype=bool)
    for end in Y_ENDS:
        mask |= capsule(mask.shape, Y_CENTRE, end, Y_RADIUS)
    return mask


@pytest.fixture(scope="module")
def y_graph(y_mask) -> VesselGraph:
    return extract_vessel_graph(y_mask, (1.0, 1.0, 1.0))


# ------------------------------------------------------------------------------------------ graph topology


def test_y_shape_has_one_bifurcation_three_segments_three_ends(y_graph):
    summary = graph_summary(y_graph)
    assert summary["bifurcations"] == 1
    assert summary["segments"] == 3
    assert summary["end_points"] == 3
    assert summary["dangling_segments"] == 3
    assert summary["wrong_bifurcations"] == 0
    assert summary["short_segments"] == 0
    kinds = {data["kind"] for _, _, data in y_graph.graph.edges(data=True)}
    assert kinds == {"junction-to-end"}
    (junction,) = [n for n, data in y_graph.graph.nodes(data=True) if data["kind"] == "junction"]
    assert y_graph.graph.nodes[junction]["degree"] == 3
    np.testing.assert_allclose(y_graph.graph.nodes[junction]["position_mm"], Y_CENTRE, atol=1.5)


def test_y_shape_lengths_and_radii_match_the_drawn_tubes(y_graph):
    true_lengths = sorted(float(np.linalg.norm(end - Y_CENTRE)) for end in Y_ENDS)
    # Match each segment to its branch by the free end it reaches.
    measured = {
        _nearest_branch(data["path_voxels_zyx"]): data for _, _, data in y_graph.graph.edges(data=True)
    }
    assert sorted(measured) == [0, 1, 2]
    for branch, data in measured.items():
        true_length = float(np.linalg.norm(Y_ENDS[branch] - Y_CENTRE))
        assert abs(data["length_mm"] - true_length) <= 1.0, (branch, data["length_mm"], true_length)
        assert abs(data["mean_radius_mm"] - Y_RADIUS) <= 1.0
        assert data["tortuosity"] == pytest.approx(1.0, abs=0.03)
    assert graph_summary(y_graph)["total_length_mm"] == pytest.approx(sum(true_lengths), abs=3.0)


def _nearest_branch(path_voxels: np.ndarray) -> int:
    """Index of the Y branch whose far end is nearest to one of the two ends of the path."""
    ends = np.array([path_voxels[0], path_voxels[-1]], dtype=float)
    distances = [np.linalg.norm(ends - end, axis=1).min() for end in Y_ENDS]
    return int(np.argmin(distances))


def test_path_voxels_lie_on_the_mask_and_start_at_start_node(y_mask, y_graph):
    for u, v, data in y_graph.graph.edges(data=True):
        path = data["path_voxels_zyx"]
        assert path.dtype == np.int64 and path.shape[1] == 3
        assert y_mask[tuple(path.T)].all()
        assert data["start_node"] in (u, v)
        start_position = np.asarray(y_graph.graph.nodes[data["start_node"]]["position_mm"])
        assert np.linalg.norm(path[0] - start_position) <= 2.0  # unit spacing: mm == voxels


def test_anisotropic_spacing_scales_lengths():
    along_x = capsule((30, 30, 60), (15, 15, 10), (15, 15, 50), 3)
    along_z = capsule((60, 30, 30), (10, 15, 15), (50, 15, 15), 3)
    spacing = (2.0, 1.0, 0.5)
    for mask, scale in ((along_x, spacing[2]), (along_z, spacing[0])):
        isotropic = graph_summary(extract_vessel_graph(mask, (1.0, 1.0, 1.0)))["total_length_mm"]
        anisotropic = graph_summary(extract_vessel_graph(mask, spacing))["total_length_mm"]
        assert anisotropic == pytest.approx(scale * isotropic, rel=1e-9)
        # The thinned centreline stops about a voxel short of each rounded end.
        assert abs(anisotropic - 40 * scale) <= 2 * scale
    start, end = np.array([8.0, 10.0, 10.0]), np.array([40.0, 30.0, 60.0])
    oblique = capsule((50, 40, 70), start, end, 2.5)
    for spacing in ((1.0, 1.0, 1.0), (2.0, 1.0, 0.5), (0.5, 0.7, 1.3)):
        graph = extract_vessel_graph(oblique, spacing)
        (data,) = [d for _, _, d in graph.graph.edges(data=True)]
        true_length = float(np.linalg.norm((end - start) * spacing))
        assert data["length_mm"] == pytest.approx(true_length, abs=max(spacing))


def test_anisotropic_spacing_scales_radius():
    mask = capsule((30, 30, 60), (15, 15, 10), (15, 15, 50), 3)
    graph = extract_vessel_graph(mask, (0.5, 0.5, 0.5))
    (data,) = [d for _, _, d in graph.graph.edges(data=True)]
    assert abs(data["mean_radius_mm"] - 3 * 0.5) <= 0.5


def test_straight_tube_has_tortuosity_one_and_a_sinusoid_more():
    straight = capsule((20, 20, 80), (10, 10, 5), (10, 10, 75), 2.5)
    (data,) = [d for _, _, d in extract_vessel_graph(straight, (1, 1, 1)).graph.edges(data=True)]
    assert data["tortuosity"] == pytest.approx(1.0, abs=0.01)
    assert data["kind"] == "end-to-end"

    x = np.linspace(5, 95, 4000)
    curve = np.stack([np.full_like(x, 10), 30 + 8 * np.sin(2 * np.pi * x / 40), x], axis=1)
    sinusoid = tube_along(curve, (20, 60, 100), 2.5)
    (data,) = [d for _, _, d in extract_vessel_graph(sinusoid, (1, 1, 1)).graph.edges(data=True)]
    true_tortuosity = np.linalg.norm(np.diff(curve, axis=0), axis=1).sum() / 90.0  # about 1.30
    assert data["tortuosity"] > 1.1
    assert data["tortuosity"] == pytest.approx(true_tortuosity, abs=0.05)


def test_plus_crossing_is_one_wrong_bifurcation():
    centre = np.array([15.0, 35.0, 35.0])
    plus = capsule((30, 70, 70), centre + (0, -30, 0), centre + (0, 30, 0), 3) | capsule(
        (30, 70, 70), centre + (0, 0, -30), centre + (0, 0, 30), 3
    )
    graph = extract_vessel_graph(plus, (1, 1, 1))
    summary = graph_summary(graph)
    assert summary["wrong_bifurcations"] == 1
    assert summary["bifurcations"] == 1
    assert summary["segments"] == 4
    assert summary["end_points"] == 4
    assert sorted(d for _, d in graph.graph.degree()) == [1, 1, 1, 1, 4]


@pytest.mark.parametrize(
    ("merge_factor", "expected_junctions", "expected_wrong"),
    [(1.0, 1, 1), (0.0, 2, 0)],
)
def test_crossing_split_by_thinning_is_merged(merge_factor, expected_junctions, expected_wrong):
    # Two tubes crossing 4 voxels apart in Z: thinning joins them by a 2-voxel bridge between two
    # degree-3 junctions, shorter than the vessel radius there, so by default they merge into one
    # degree-4 node.
    centre = np.array([12.0, 35.0, 35.0])
    crossing = capsule((30, 70, 70), centre + (0, -30, 0), centre + (0, 30, 0), 3) | capsule(
        (30, 70, 70), centre + (4, 0, -30), centre + (4, 0, 30), 3
    )
    summary = graph_summary(
        extract_vessel_graph(crossing, (1, 1, 1), junction_merge_radius_factor=merge_factor)
    )
    assert summary["bifurcations"] == expected_junctions
    assert summary["wrong_bifurcations"] == expected_wrong


def test_empty_mask_gives_empty_graph_and_zero_counts():
    graph = extract_vessel_graph(np.zeros((8, 9, 10), dtype=np.uint8), (1.0, 0.5, 0.5))
    assert graph.graph.number_of_nodes() == 0
    assert graph.shape_zyx == (8, 9, 10)
    summary = graph.summary()
    for key in (
        "segments",
        "bifurcations",
        "end_points",
        "dangling_segments",
        "short_segments",
        "wrong_bifurcations",
        "cycles",
        "isolated_points",
    ):
        assert summary[key] == 0, key
    assert summary["total_length_mm"] == 0.0
    assert math.isnan(summary["mean_radius_mm"])


def test_closed_loop_is_a_cycle_with_undefined_tortuosity():
    z, y, x = np.indices((20, 60, 60))
    torus = np.hypot(np.hypot(y - 30, x - 30) - 20, z - 10) <= 3
    graph = extract_vessel_graph(torus, (1, 1, 1))
    ((u, v, data),) = list(graph.graph.edges(data=True))
    assert u == v
    assert data["kind"] == "cycle"
    assert math.isnan(data["tortuosity"])
    assert data["length_mm"] == pytest.approx(2 * np.pi * 20, rel=0.02)
    assert graph.graph.nodes[u]["kind"] == "cycle"
    assert graph_summary(graph)["cycles"] == 1


def test_single_voxels_are_isolated_nodes():
    mask = np.zeros((6, 6, 6), dtype=bool)
    mask[1, 1, 1] = mask[4, 4, 4] = True
    graph = extract_vessel_graph(mask, (2.0, 1.0, 1.0))
    assert graph.graph.number_of_edges() == 0
    assert {data["kind"] for _, data in graph.graph.nodes(data=True)} == {"isolated"}
    positions = sorted(data["position_mm"] for _, data in graph.graph.nodes(data=True))
    assert positions == [(2.0, 1.0, 1.0), (8.0, 4.0, 4.0)]
    assert graph.summary()["isolated_points"] == 2


def test_small_blobs_that_thinning_deletes_stay_as_isolated_nodes():
    # skimage's thinning leaves nothing of a 2 x 2 x 2 cube; the speck must still count.
    mask = np.zeros((8, 8, 8), dtype=bool)
    mask[2:4, 2:4, 2:4] = True
    graph = extract_vessel_graph(mask, (1.0, 1.0, 1.0))
    assert graph.summary()["isolated_points"] == 1
    ((_, data),) = list(graph.graph.nodes(data=True))
    assert mask[tuple(np.round(data["position_mm"]).astype(int))]


def test_enclosed_cavity_does_not_break_the_centreline():
    tube = capsule((20, 20, 60), (10, 10, 5), (10, 10, 55), 4)
    tube[8:13, 8:13, 28:31] = False  # a closed pocket inside the lumen
    assert graph_summary(extract_vessel_graph(tube, (1, 1, 1)))["segments"] == 1
    assert graph_summary(extract_vessel_graph(tube, (1, 1, 1), fill_cavities=False))["segments"] > 1


def test_short_segment_threshold_counts_segments_below_it(y_graph):
    lengths = sorted(data["length_mm"] for _, _, data in y_graph.graph.edges(data=True))
    threshold = (lengths[0] + lengths[1]) / 2
    assert graph_summary(y_graph, short_segment_mm=threshold)["short_segments"] == 1
    assert graph_summary(y_graph.graph)["short_segments"] == 0  # default 6 um on a mm-sized graph


# ---------------------------------------------------------------------------------------------- writers


def test_graphml_round_trip(tmp_path, y_graph):
    path = tmp_path / "vessels.graphml"
    write_graphml(y_graph, path)
    loaded = nx.read_graphml(path, force_multigraph=True)
    assert loaded.number_of_nodes() == y_graph.graph.number_of_nodes()
    assert loaded.number_of_edges() == y_graph.graph.number_of_edges()
    total = sum(data["length_mm"] for _, _, data in loaded.edges(data=True))
    assert total == pytest.approx(graph_summary(y_graph)["total_length_mm"])
    _, _, data = next(iter(loaded.edges(data=True)))
    assert np.asarray(json.loads(data["path_voxels_zyx"])).shape[1] == 3
    assert loaded.graph["spacing_z_mm"] == 1.0
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_json_round_trip_writes_strict_json(tmp_path):
    z, y, x = np.indices((20, 60, 60))
    torus = np.hypot(np.hypot(y - 30, x - 30) - 20, z - 10) <= 3  # NaN tortuosity must become null
    graph = extract_vessel_graph(torus, (1.0, 1.0, 1.0))
    path = tmp_path / "vessels.json"
    graph.write_json(path)
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text
    document = json.loads(text)
    assert len(document["nodes"]) == graph.graph.number_of_nodes()
    assert len(document["edges"]) == graph.graph.number_of_edges()
    assert document["edges"][0]["tortuosity"] is None
    assert document["summary"]["cycles"] == 1
    assert document["spacing_zyx_mm"] == [1.0, 1.0, 1.0]


def test_json_source_is_the_first_path_voxel(tmp_path, y_graph):
    path = tmp_path / "y.json"
    write_graph_json(y_graph, path)
    document = json.loads(path.read_text(encoding="utf-8"))
    positions = {node["id"]: np.asarray(node["position_mm"]) for node in document["nodes"]}
    for edge in document["edges"]:
        first = np.asarray(edge["path_voxels_zyx"][0])
        assert np.linalg.norm(first - positions[edge["source"]]) <= 2.0


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("mask", "spacing", "match"),
    [
        (np.ones((5, 5), dtype=bool), (1.0, 1.0), "3D"),
        (np.ones((2, 5, 5, 5), dtype=bool), (1.0, 1.0, 1.0), "3D"),
        (np.ones((5, 5, 5), dtype=bool), (1.0, 1.0), "spacing_zyx"),
        (np.ones((5, 5, 5), dtype=bool), (1.0, -1.0, 1.0), "spacing_zyx"),
        (np.full((5, 5, 5), 0.7), (1.0, 1.0, 1.0), "threshold"),
    ],
)
def test_extraction_rejects_bad_input(mask, spacing, match):
    with pytest.raises(ValueError, match=match):
        extract_vessel_graph(mask, spacing)


def test_bad_settings_are_rejected(y_graph):
    with pytest.raises(ValueError, match="junction_merge_radius_factor"):
        extract_vessel_graph(np.zeros((4, 4, 4)), (1, 1, 1), junction_merge_radius_factor=-1)
    with pytest.raises(ValueError, match="short_segment_mm"):
        graph_summary(y_graph, short_segment_mm=-0.1)
    with pytest.raises(ValueError, match="VesselGraph"):
        graph_summary("not a graph")


# ------------------------------------------------------------------------------------ slice-wise MHD


def _lines(shape, rows_by_slice: dict[int, int], columns=slice(2, 13)) -> np.ndarray:
    """Mask with, in each slice z of ``rows_by_slice``, a line along X at row ``rows_by_slice[z]``."""
    mask = np.zeros(shape, dtype=bool)
    for z, row in rows_by_slice.items():
        mask[z, row, columns] = True
    return mask


def test_mhd_of_identical_masks_is_zero(y_mask):
    assert modified_hausdorff_slicewise_mm(y_mask, y_mask, (1.0, 1.0, 1.0)) == 0.0
    per_slice = modified_hausdorff_per_slice_mm(y_mask, y_mask, (1.0, 1.0, 1.0))
    assert per_slice.shape == (y_mask.shape[0],)
    present = y_mask.any(axis=(1, 2))
    assert np.all(per_slice[present] == 0.0)
    assert np.all(np.isnan(per_slice[~present]))


def test_mhd_of_parallel_lines_one_voxel_apart_is_the_spacing():
    spacing = (3.0, 0.7, 0.5)
    prediction = _lines((4, 10, 15), {1: 4, 2: 4})
    reference = _lines((4, 10, 15), {1: 5, 2: 5})
    assert modified_hausdorff_slicewise_mm(prediction, reference, spacing) == pytest.approx(0.7)


def test_mhd_averages_point_distances_and_slices():
    # Slice 0: the prediction has the reference line (11 pixels at x = 2..12) plus one stray pixel 9 pixels
    # (4.5 mm) beyond its end: d(P, R) = 4.5 / 12, d(R, P) = 0, so MHD = 0.375 mm where HD would be 4.5 mm.
    # Slice 1: identical lines, MHD 0. Slices 2-3 are empty in both and not scored.
    spacing = (1.0, 1.0, 0.5)
    reference = _lines((4, 10, 30), {0: 5, 1: 5})
    prediction = reference.copy()
    prediction[0, 5, 21] = True
    per_slice = modified_hausdorff_per_slice_mm(prediction, reference, spacing)
    assert per_slice[0] == pytest.approx(4.5 / 12)
    assert per_slice[1] == 0.0
    assert np.isnan(per_slice[2:]).all()
    assert modified_hausdorff_slicewise_mm(prediction, reference, spacing) == pytest.approx(4.5 / 24)


def test_mhd_empty_conventions():
    empty = np.zeros((3, 8, 8), dtype=bool)
    assert modified_hausdorff_slicewise_mm(empty, empty, (1, 1, 1)) == 0.0
    one_slice = _lines((3, 8, 8), {1: 3}, columns=slice(1, 6))
    assert modified_hausdorff_slicewise_mm(one_slice, empty, (1, 1, 1)) == math.inf
    shifted = one_slice.copy()
    shifted[2] = one_slice[1]  # present in slice 2 of the prediction only
    per_slice = modified_hausdorff_per_slice_mm(shifted, one_slice, (1, 1, 1))
    assert per_slice[1] == 0.0 and per_slice[2] == math.inf and np.isnan(per_slice[0])
    # A finite penalty for the one-sided slice: mean of 0 (slice 1) and 10 (slice 2).
    assert modified_hausdorff_slicewise_mm(shifted, one_slice, (1, 1, 1), one_sided_slice_mm=10.0) == 5.0
    with pytest.raises(ValueError, match="one_sided_slice_mm"):
        modified_hausdorff_slicewise_mm(shifted, one_slice, (1, 1, 1), one_sided_slice_mm=-1.0)


@pytest.mark.parametrize(
    ("prediction", "reference", "spacing", "match"),
    [
        (np.zeros((8, 8)), np.zeros((8, 8)), (1.0, 1.0), "3D"),
        (np.zeros((2, 8, 8)), np.zeros((2, 8, 9)), (1.0, 1.0, 1.0), "shape"),
        (np.zeros((2, 8, 8)), np.zeros((2, 8, 8)), (1.0, 1.0), "spacing_zyx"),
        (np.full((2, 8, 8), 0.3), np.zeros((2, 8, 8)), (1.0, 1.0, 1.0), "threshold"),
    ],
)
def test_mhd_rejects_bad_input(prediction, reference, spacing, match):
    with pytest.raises(ValueError, match=match):
        modified_hausdorff_slicewise_mm(prediction, reference, spacing)


# -------------------------------------------------------------------------------- length correlation


def test_lc_of_identical_masks_is_one(y_mask):
    assert length_correlation(y_mask, y_mask, (1.0, 1.0, 1.0)) == 1.0


def test_lc_of_parallel_lines_one_voxel_apart():
    # Thin lines are their own skeletons and neither lies in the other mask: LC = 0 / 22. A tolerance of
    # one voxel (0.7 mm along Y) matches every skeleton voxel: LC = 22 / 22.
    spacing = (3.0, 0.7, 0.5)
    prediction = _lines((3, 10, 15), {1: 4})
    reference = _lines((3, 10, 15), {1: 5})
    assert length_correlation(prediction, reference, spacing) == 0.0
    assert length_correlation(prediction, reference, spacing, tolerance_mm=0.7) == 1.0
    assert length_correlation(prediction, reference, spacing, tolerance_mm=0.69) == 0.0


def test_lc_of_half_a_vessel_is_one_half():
    # Reference line of 10 voxels, prediction its first 5: numerator 5 (the shared voxels), denominator 10.
    reference = _lines((3, 10, 15), {1: 5}, columns=slice(2, 12))
    prediction = _lines((3, 10, 15), {1: 5}, columns=slice(2, 7))
    assert length_correlation(prediction, reference, (1.0, 1.0, 1.0)) == pytest.approx(0.5)


def test_lc_ignores_vessel_thickness():
    thick = capsule((20, 20, 50), (10, 10, 5), (10, 10, 45), 4)
    thin = capsule((20, 20, 50), (10, 10, 5), (10, 10, 45), 1)
    assert length_correlation(thick, thin, (1.0, 1.0, 1.0)) == 1.0


def test_lc_of_blobs_that_thinning_deletes():
    # skimage's thinning leaves nothing of a 2 x 2 x 2 cube: LC must still see one centreline voxel.
    cube = np.zeros((6, 6, 6), dtype=bool)
    cube[2:4, 2:4, 2:4] = True
    other = np.roll(cube, 3, axis=2)
    assert length_correlation(cube, cube, (1.0, 1.0, 1.0)) == 1.0
    assert length_correlation(cube, other, (1.0, 1.0, 1.0)) == 0.0


def test_lc_empty_conventions_and_bad_input():
    empty = np.zeros((3, 8, 8), dtype=bool)
    line = _lines((3, 8, 8), {1: 3}, columns=slice(1, 6))
    assert length_correlation(empty, empty, (1, 1, 1)) == 1.0
    assert length_correlation(line, empty, (1, 1, 1)) == 0.0
    assert length_correlation(empty, line, (1, 1, 1)) == 0.0
    with pytest.raises(ValueError, match="tolerance_mm"):
        length_correlation(line, line, (1, 1, 1), tolerance_mm=-1.0)
    with pytest.raises(ValueError, match="spacing_zyx"):
        length_correlation(line, line, (1, 1))
    with pytest.raises(ValueError, match="shape"):
        length_correlation(line, line[:, :, :4], (1, 1, 1))
