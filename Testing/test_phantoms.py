"""Tests for the synthetic vascular phantoms (trees, renderers, cases)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from VesselSegLib.phantoms import (
    MODALITY_DEFAULT_SPACING_ZYX,
    TubeSegment,
    make_phantom_case,
    make_vessel_tree,
    rasterize_segments,
    render_2pm,
    render_swi,
    render_tof_mra,
)
from VesselSegLib.vessel_classes import VESSEL_CLASS_BY_NAME

ARTERY = VESSEL_CLASS_BY_NAME["artery"].label_value
VEIN = VESSEL_CLASS_BY_NAME["vein"].label_value
MICRO = VESSEL_CLASS_BY_NAME["micro"].label_value
SHAPE = (64, 128, 128)


@pytest.fixture(scope="module")
def tof_case():
    return make_phantom_case("TOF-MRA", SHAPE, seed=0)


def test_same_seed_identical_different_seed_differs():
    a = make_phantom_case("TOF-MRA", (32, 48, 48), seed=5)
    b = make_phantom_case("TOF-MRA", (32, 48, 48), seed=5)
    c = make_phantom_case("TOF-MRA", (32, 48, 48), seed=6)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.class_map, b.class_map)
    assert not np.array_equal(a.class_map, c.class_map)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("render", [render_tof_mra, render_2pm, lambda t, seed: render_swi(t, seed=seed)[0]])
def test_renderers_deterministic_and_float32(render):
    tree = make_vessel_tree((24, 40, 40), seed=2)
    a, b, c = render(tree, seed=1), render(tree, seed=1), render(tree, seed=2)
    assert a.dtype == np.float32 and a.shape == (24, 40, 40)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.all(np.isfinite(a)) and a.min() >= 0


def test_case_fields(tof_case):
    assert tof_case.image.shape == SHAPE and tof_case.image.dtype == np.float32
    assert tof_case.class_map.dtype == np.uint8 and tof_case.class_map.max() <= 3
    assert tof_case.brain_mask.dtype == bool
    assert tof_case.spacing_zyx == MODALITY_DEFAULT_SPACING_ZYX["TOF-MRA"]
    occ = tof_case.tree.occupancy
    assert occ.dtype == np.float32 and occ.min() >= 0 and occ.max() <= 1
    # Partial volume: a soft rim of fractional occupancy exists.
    assert np.count_nonzero((occ > 0.05) & (occ < 0.95)) > 100


def test_all_classes_present(tof_case):
    counts = np.bincount(tof_case.class_map.ravel(), minlength=4)
    assert all(counts[label] > 50 for label in (ARTERY, VEIN, MICRO)), counts


def test_murray_law_at_bifurcations(tof_case):
    segs = tof_case.tree.segments
    children: dict[int, list[int]] = {}
    for i, s in enumerate(segs):
        if s.parent is not None and s.vessel_class != "micro":
            children.setdefault(s.parent, []).append(i)
    n_checked = 0
    for parent, kids in children.items():
        assert len(kids) == 2, "macro bifurcations have exactly two children"
        assert all(segs[k].vessel_class == segs[parent].vessel_class for k in kids)
        r0 = segs[parent].radii_mm[-1]
        r1, r2 = (segs[k].radii_mm[0] for k in kids)
        assert r0**3 == pytest.approx(r1**3 + r2**3, rel=1e-3)
        # Children start where the parent ends.
        for k in kids:
            np.testing.assert_allclose(segs[k].points_zyx[0], segs[parent].points_zyx[-1], atol=1e-6)
        n_checked += 1
    assert n_checked >= 5


def test_micro_vessels_at_most_two_voxels_across(tof_case):
    micro = tof_case.class_map == MICRO
    assert micro.any()
    # The distance from a micro voxel to the nearest non-micro voxel is 1 voxel for a 1-2 voxel wide vessel.
    edt = ndimage.distance_transform_edt(micro)
    assert edt.max() <= np.sqrt(2.0) + 1e-6
    assert np.mean(edt[micro] <= 1.0) > 0.98
    radii_vox = [
        s.radii_mm[0] / min(tof_case.spacing_zyx) for s in tof_case.tree.segments if s.vessel_class == "micro"
    ]
    assert min(radii_vox) >= 0.25 and max(radii_vox) <= 0.6


def test_arteries_and_veins_touch(tof_case):
    cm = tof_case.class_map
    contact = False
    for axis in range(3):
        a = np.moveaxis(cm, axis, 0)
        contact |= bool(np.any((a[:-1] == ARTERY) & (a[1:] == VEIN)))
        contact |= bool(np.any((a[:-1] == VEIN) & (a[1:] == ARTERY)))
    assert contact


def test_tof_contrast_order(tof_case):
    img, cm, brain = tof_case.image, tof_case.class_map, tof_case.brain_mask
    artery = img[(cm == ARTERY) & brain].mean()
    vein = img[(cm == VEIN) & brain].mean()
    background = img[(cm == 0) & brain].mean()
    assert artery > vein > background
    # Veins are partially saturated: clearly dimmer than arteries, clearly brighter than tissue.
    assert 0.2 < (vein - background) / (artery - background) < 0.8
    assert img[~brain].mean() < background


def test_swi_veins_dark():
    case = make_phantom_case("SWI", SHAPE, seed=1)
    img, cm, brain = case.image, case.class_map, case.brain_mask
    assert brain.any() and not brain.all()
    vein = img[(cm == VEIN) & brain].mean()
    artery = img[(cm == ARTERY) & brain].mean()
    background = img[(cm == 0) & brain].mean()
    assert vein < 0.7 * background
    # Arteries barely visible: much closer to tissue than veins are.
    assert abs(artery - background) < 0.3 * (background - vein)


def test_2pm_background_decreases_with_depth():
    case = make_phantom_case("2PM", SHAPE, seed=2)
    assert case.brain_mask.all()
    background = np.where(case.class_map == 0, case.image, np.nan)
    per_slice = np.nanmean(background, axis=(1, 2))
    quarter = len(per_slice) // 4
    assert per_slice[:quarter].mean() > 1.3 * per_slice[-quarter:].mean()
    vessel = case.image[case.class_map > 0].mean()
    assert vessel > 2 * np.nanmean(background)
    assert case.image.max() <= 65535


def test_2pm_shadow_below_large_vessel():
    """Signal under a horizontal vessel near the surface is reduced along +Z."""
    shape, spacing = (40, 40, 40), (1.0, 1.0, 1.0)
    seg = TubeSegment(np.array([[6.0, 20.0, -2.0], [6.0, 20.0, 42.0]]), np.array([3.0, 3.0]), "artery", None)
    class_map, occ, occ_class = rasterize_segments([seg], shape, spacing)
    from VesselSegLib.phantoms import VesselTree

    tree = VesselTree(class_map, occ, [seg], spacing, occ_class)
    img = np.mean([render_2pm(tree, seed=s) for s in range(3)], axis=0)
    below = img[20:30, 18:23, 5:35].mean()
    beside = img[20:30, 2:8, 5:35].mean()
    assert below < 0.9 * beside


def test_anisotropic_spacing_changes_voxel_radii():
    # A straight tube of radius 3 mm along X: 3 voxels in Y at 1 mm, 1.5 voxels in Z at 2 mm.
    seg = TubeSegment(np.array([[10.0, 20.0, 0.0], [10.0, 20.0, 39.0]]), np.array([3.0, 3.0]), "artery", None)
    iso, _, _ = rasterize_segments([seg], (20, 40, 40), (1.0, 1.0, 1.0))
    seg_aniso = TubeSegment(
        np.array([[10.0, 20.0, 0.0], [10.0, 20.0, 39.0]]), np.array([3.0, 3.0]), "artery", None
    )
    aniso, _, _ = rasterize_segments([seg_aniso], (20, 40, 40), (2.0, 1.0, 1.0))
    col_iso = iso[:, :, 20] > 0
    col_aniso = aniso[:, :, 20] > 0
    assert col_iso.any(axis=1).sum() == 7 and col_iso.any(axis=0).sum() == 7
    assert col_aniso.any(axis=1).sum() == 3 and col_aniso.any(axis=0).sum() == 7
    # A whole tree: the same radii in mm cover fewer voxels along the coarser axis.
    tree = make_vessel_tree((48, 64, 64), spacing_zyx=(2.0, 1.0, 1.0), seed=3)
    root = next(s for s in tree.segments if s.vessel_class == "artery")
    assert 2.0 <= root.radii_mm[0] / 1.0 <= 4.5


def test_tree_scales_with_spacing():
    fine = make_vessel_tree((32, 64, 64), spacing_zyx=(0.8, 0.5, 0.5), seed=4)
    unit = make_vessel_tree((32, 64, 64), spacing_zyx=(1.6, 1.0, 1.0), seed=4)
    # Radii are relative to the spacing: the same seed gives the same tree in voxel units.
    np.testing.assert_allclose(fine.segments[0].radii_mm * 2.0, unit.segments[0].radii_mm)
    np.testing.assert_array_equal(fine.class_map, unit.class_map)


@pytest.mark.parametrize("modality", ["CT", "tof-mra", ""])
def test_bad_modality(modality):
    with pytest.raises(ValueError, match="TOF-MRA"):
        make_phantom_case(modality, (16, 16, 16))


@pytest.mark.parametrize("shape", [(15, 32, 32), (32, 32), (32, 32, 32, 32), (32.5, 32, 32)])
def test_bad_shape(shape):
    with pytest.raises(ValueError, match="shape_zyx"):
        make_phantom_case("TOF-MRA", shape)
