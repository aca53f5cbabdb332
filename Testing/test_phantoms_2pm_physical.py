"""Tests for the ``radius_model`` of the phantoms: "voxel" unchanged, "2pm-physical" in micrometres."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import ndimage

from VesselSegLib.phantoms import (
    RADIUS_MODELS,
    TubeSegment,
    VesselTree,
    make_phantom_case,
    make_vessel_tree,
    rasterize_segments,
    render_2pm,
    tree_on_grid,
)
from VesselSegLib.vessel_classes import VESSEL_CLASS_BY_NAME

MICRO = VESSEL_CLASS_BY_NAME["micro"].label_value
UM = 0.001  # mm
#: VesselNN-like stacks: 5 um slices of 1 um pixels, and the project's default 2 x 1 x 1 um.
THICK_SLICES = ((16, 128, 128), (0.005, 0.001, 0.001))
DEFAULT_2PM = ((32, 128, 128), (0.002, 0.001, 0.001))


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _physical(shape, spacing, seed, **kwargs):
    return make_vessel_tree(shape, spacing_zyx=spacing, seed=seed, radius_model="2pm-physical", **kwargs)


def _ridge_radius_mm(tree: VesselTree) -> float:
    """Mean distance (mm) to the background on the vessels' ridge (local maxima of the distance map)."""
    vessel = tree.class_map > 0
    edt = ndimage.distance_transform_edt(vessel, sampling=tree.spacing_zyx)
    ridge = vessel & (edt >= ndimage.maximum_filter(edt, size=3))
    return float(edt[ridge].mean())


# ------------------------------------------------------------------------------------ "voxel" unchanged

# SHA-256 of (class_map, occupancy, occupancy_class), computed with the implementation before radius_model.
VOXEL_TREE_REFERENCE = [
    (
        (24, 40, 40),
        (1.0, 1.0, 1.0),
        2,
        {},
        "53fcf7272271a1211e885bad0603fe791c4d3e15c30c566a7dad37e5c8988696",
        "5ad4caf0df58a60d58579360b08309d1100330c64caa61c43b870dc0f4d51f36",
        "704c74058292975dcb126caa2b64bb941107f14d5a033695e2103e67e1a621cf",
    ),
    (
        (16, 64, 64),
        (0.002, 0.001, 0.001),
        7,
        {},
        "7351cfc796c2dc9aab802c23dc09157223a643572cfabc4acecf5d3157ce1dd6",
        "6b590386668b847f4f95cc933e0005023b7ca355fb9bab4c5f5fc33722469351",
        "c98d3d3d57f0143f5a0d86e9817a0637a2a8a520f33bb9a21e65c53229a9a062",
    ),
    (
        (32, 48, 48),
        (0.8, 0.5, 0.5),
        4,
        {"n_artery_roots": 2, "n_vein_roots": 0, "micro_density": 0.5},
        "ad21cf5331c780c8daf32409445cdcde54a182cd81d8c161c2a714d328fb04aa",
        "f8e73ac5e028341af59c9db4de9ea7b089abab175a4549d247d8cf15ff3ddaec",
        "50fd3b557c4be3f2959b01ff3dcb353a003e228b78205fc3c6a6835f233cdc59",
    ),
]

# SHA-256 of (class_map, image) of make_phantom_case, from the same implementation.
VOXEL_CASE_REFERENCE = [
    (
        "2PM",
        (16, 48, 48),
        3,
        "00d6a34869b5d0eb4a7bb9e5da313601caff030ddf60483a9d7f93f9db44dcef",
        "ebfdc97c87b1322bbcb3789fc833b84ca23d70b032b68789aefdefd8da8dbd74",
    ),
    (
        "TOF-MRA",
        (16, 32, 32),
        2,
        "737b7681aeaadc88279d9c893b3e2eabefd42c2280a70aa5cf78def64342bda4",
        "7835e14ad5d8256ae6885eba117ee6b652e1e4e98309c0b444c4c1feebfa6793",
    ),
    (
        "SWI",
        (16, 32, 32),
        1,
        "6dc2ede7df3bc427c516e4f54dfa941d694406c14e1cddf639935b2a52ba59de",
        "af8d8f0fc15fc6590e9f782b95fa64f8d929cb888be49faa3382202a0146aacd",
    ),
]


@pytest.mark.parametrize(
    ("shape", "spacing", "seed", "kwargs", "sha_map", "sha_occ", "sha_cls"), VOXEL_TREE_REFERENCE
)
@pytest.mark.parametrize("explicit", [False, True])
def test_voxel_tree_bit_for_bit(shape, spacing, seed, kwargs, sha_map, sha_occ, sha_cls, explicit):
    if explicit:
        kwargs = {**kwargs, "radius_model": "voxel"}
    tree = make_vessel_tree(shape, spacing_zyx=spacing, seed=seed, **kwargs)
    assert (_sha(tree.class_map), _sha(tree.occupancy), _sha(tree.occupancy_class)) == (
        sha_map,
        sha_occ,
        sha_cls,
    )
    assert tree.radius_model == "voxel"


@pytest.mark.parametrize(("modality", "shape", "seed", "sha_map", "sha_image"), VOXEL_CASE_REFERENCE)
def test_voxel_case_bit_for_bit(modality, shape, seed, sha_map, sha_image):
    case = make_phantom_case(modality, shape, seed=seed)
    assert (_sha(case.class_map), _sha(case.image)) == (sha_map, sha_image)
    assert case.radius_model == "voxel" and case.tree.radius_model == "voxel"


# ------------------------------------------------------------------------------------- "2pm-physical"


@pytest.fixture(scope="module")
def thick_tree():
    return _physical(*THICK_SLICES, seed=0)


def test_physical_radii_in_micrometres(thick_tree):
    segments = thick_tree.segments
    radii = np.concatenate([s.radii_mm for s in segments])
    assert radii.min() >= 2 * UM - 1e-12 and radii.max() <= 15 * UM + 1e-12
    capillaries = [s for s in segments if s.vessel_class == "micro"]
    large = [s for s in segments if s.vessel_class != "micro"]
    assert len(capillaries) > len(large) > 0
    cap_radii = np.concatenate([s.radii_mm for s in capillaries])
    assert cap_radii.min() >= 2 * UM - 1e-12 and cap_radii.max() <= 4 * UM + 1e-12
    # Roots of the large vessels are 6-15 um and taper: no large vessel gets thicker than its root.
    roots = [s for s in large if s.parent is None]
    assert {s.vessel_class for s in roots} == {"artery", "vein"}
    assert all(6 * UM <= s.radii_mm[0] <= 15 * UM for s in roots)
    for s in large:
        assert np.all(np.diff(s.radii_mm) <= 1e-15)
        if s.parent is not None:
            assert s.radii_mm[0] <= segments[s.parent].radii_mm[-1] + 1e-15
    # Capillaries join the large vessels: some branch off one, and their first point lies on or in its wall.
    joined = [s for s in capillaries if s.parent is not None]
    assert joined
    for s in joined[:20]:
        host = segments[s.parent]
        gap = np.linalg.norm(
            host.points_zyx * thick_tree.spacing_zyx - s.points_zyx[0] * thick_tree.spacing_zyx, axis=1
        )
        assert np.min(gap - host.radii_mm) <= 1e-9
    assert thick_tree.radius_model == "2pm-physical"


def test_physical_radii_independent_of_voxel_size():
    """The same seed and box (75 x 125 x 125 um) give the same vessels in mm at 1 um and 2.5 um pixels."""
    fine = _physical((16, 126, 126), (0.005, 0.001, 0.001), seed=3)
    coarse = _physical((16, 51, 51), (0.005, 0.0025, 0.0025), seed=3)
    assert len(fine.segments) == len(coarse.segments)
    for a, b in zip(fine.segments, coarse.segments, strict=True):
        np.testing.assert_allclose(
            a.points_zyx * fine.spacing_zyx, b.points_zyx * coarse.spacing_zyx, atol=1e-12
        )
        np.testing.assert_array_equal(a.radii_mm, b.radii_mm)
    # And they are drawn as equally thick vessels: on the coarse grid a capillary is ~2 pixels across.
    r_fine, r_coarse = _ridge_radius_mm(fine), _ridge_radius_mm(coarse)
    assert abs(r_coarse - r_fine) <= 0.3 * r_fine, (r_fine, r_coarse)
    assert 2 * UM <= r_fine <= 6 * UM
    f_fine, f_coarse = (np.mean(t.class_map > 0) for t in (fine, coarse))
    assert abs(f_coarse - f_fine) <= 0.15 * f_fine, (f_fine, f_coarse)


def test_physical_thickness_with_slice_thickness():
    """5 um and 2.5 um slices of the same box: vessels of the same physical thickness (within 30 %)."""
    thick = _physical((16, 126, 126), (0.005, 0.001, 0.001), seed=1)
    thin = _physical((31, 126, 126), (0.0025, 0.001, 0.001), seed=1)
    r_thick, r_thin = _ridge_radius_mm(thick), _ridge_radius_mm(thin)
    assert abs(r_thick - r_thin) <= 0.3 * r_thin, (r_thick, r_thin)


@pytest.mark.parametrize(("shape", "spacing"), [THICK_SLICES, DEFAULT_2PM])
def test_physical_vessel_fraction_realistic(shape, spacing):
    fractions = [float(np.mean(_physical(shape, spacing, seed).class_map > 0)) for seed in range(4)]
    # Target drawn per phantom in 5-30 %, reached within ~10 %.
    assert all(0.045 <= f <= 0.33 for f in fractions), fractions
    assert max(fractions) > 1.5 * min(fractions), fractions


def test_physical_network_connected(thick_tree):
    vessel = thick_tree.class_map > 0
    labels, _ = ndimage.label(vessel, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    # A mesh joined to the large vessels: almost everything in one piece (cropping cuts off a few loops).
    assert sizes.max() >= 0.85 * vessel.sum()
    large = (thick_tree.class_map > 0) & (thick_tree.class_map != MICRO)
    assert np.isin(labels[thick_tree.class_map == MICRO], np.unique(labels[large])).mean() >= 0.85


def test_physical_deterministic():
    shape, spacing = (16, 64, 64), (0.005, 0.001, 0.001)
    a, b, c = _physical(shape, spacing, 5), _physical(shape, spacing, 5), _physical(shape, spacing, 6)
    np.testing.assert_array_equal(a.class_map, b.class_map)
    np.testing.assert_array_equal(a.occupancy, b.occupancy)
    assert len(a.segments) == len(b.segments)
    assert not np.array_equal(a.class_map, c.class_map)


def test_physical_micro_density_zero_gives_no_capillaries():
    tree = _physical((16, 64, 64), (0.002, 0.001, 0.001), seed=2, micro_density=0.0)
    assert not any(s.vessel_class == "micro" for s in tree.segments)
    assert np.any(tree.class_map > 0) and not np.any(tree.class_map == MICRO)


def test_physical_case_and_resampled_tree_keep_model():
    case = make_phantom_case(
        "2PM", (16, 64, 64), spacing_zyx=(0.005, 0.001, 0.001), seed=1, radius_model="2pm-physical"
    )
    assert case.radius_model == "2pm-physical" == case.tree.radius_model
    assert case.image.dtype == np.float32 and np.all(np.isfinite(case.image))
    assert case.image[case.class_map > 0].mean() > 2 * case.image[case.class_map == 0].mean()
    cap_radii = [s.radii_mm[0] for s in case.tree.segments if s.vessel_class == "micro"]
    assert min(cap_radii) >= 2 * UM and max(cap_radii) <= 4 * UM
    assert tree_on_grid(case.tree, (0.0025, 0.001, 0.001)).radius_model == "2pm-physical"


def test_2pm_render_physical_shadows():
    """Physical trees: shadows per length of blood, spread by the excitation cone.

    A penetrating vessel seen end-on stays brighter than the background at the bottom of the stack (the
    voxel-relative shadow darkens it below the background), and a surface vessel still shadows the tissue
    below it.
    """
    shape, spacing = (32, 96, 64), (0.002, 0.001, 0.001)
    segments = [
        TubeSegment(np.array([[-1.0, 80.0, 48.0], [33.0, 80.0, 48.0]]), np.full(2, 10 * UM), "artery", None),
        TubeSegment(np.array([[5.0, 25.0, -2.0], [5.0, 25.0, 66.0]]), np.full(2, 8 * UM), "vein", None),
    ]
    class_map, occ, occ_class = rasterize_segments(segments, shape, spacing)
    ratios = {}
    for model in RADIUS_MODELS:
        tree = VesselTree(class_map, occ, segments, spacing, occ_class, radius_model=model)
        img = np.mean([render_2pm(tree, seed=s) for s in range(3)], axis=0)
        deep = slice(24, 32)
        lumen = img[deep, 76:85, 44:53][class_map[deep, 76:85, 44:53] > 0].mean()
        background = img[deep, 50:58, 5:35].mean()
        shadow = img[16:28, 23:28, 5:40].mean() / img[16:28, 50:58, 5:40].mean()
        ratios[model] = (lumen / background, shadow)
    assert ratios["2pm-physical"][0] > 1.5 > ratios["voxel"][0], ratios
    assert ratios["2pm-physical"][1] < 0.92, ratios


# ----------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("radius_model", ["physical", "2PM-physical", "", None])
def test_bad_radius_model(radius_model):
    with pytest.raises(ValueError, match="radius_model must be one of 'voxel', '2pm-physical'"):
        make_vessel_tree((16, 16, 16), radius_model=radius_model)
    with pytest.raises(ValueError, match="radius_model must be one of"):
        make_phantom_case("2PM", (16, 16, 16), radius_model=radius_model)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 0.5, 0.5), (0.05, 0.021, 0.03)])
def test_physical_needs_micrometre_spacing(spacing):
    with pytest.raises(ValueError, match="micrometre-scale spacing"):
        make_vessel_tree((16, 16, 16), spacing_zyx=spacing, radius_model="2pm-physical")


def test_physical_case_in_mra_spacing_raises():
    with pytest.raises(ValueError, match="micrometre-scale spacing"):
        make_phantom_case("TOF-MRA", (16, 16, 16), radius_model="2pm-physical")
