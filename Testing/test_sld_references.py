"""3D-SLD guidance masks and Crop-and-Overlap references (trainer.sld.guidance, trainer.sld.references)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from trainer.sld import guidance
from trainer.sld.guidance import (
    BUNDLED_MASKS,
    procedural_vessel_branches,
    procedural_vessel_tree,
    read_mask_folder,
    retina_vessel_mask,
    write_guidance_set,
)
from trainer.sld.references import (
    VESSEL_WIDTH_PRIORS,
    CropOverlapSettings,
    choose_crop_settings,
    crop_and_overlap,
    foreground_fraction_of_intensity_mips,
    median_vessel_width,
    reference_batch,
    target_vessel_width_voxels,
)


@pytest.fixture(scope="module")
def trees() -> list[np.ndarray]:
    return [procedural_vessel_tree(seed) for seed in range(6)]


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    return retina_vessel_mask()


def _png(path: Path, image: np.ndarray) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, image, plugin="pillow", extension=".png")


# ----------------------------------------------------------------------------------------------- widths
@pytest.mark.parametrize("width", [1, 3, 5, 7])
def test_median_vessel_width_of_horizontal_bands(width):
    mask = np.zeros((64, 128), dtype=bool)
    mask[30 : 30 + width, 10:118] = True
    assert abs(median_vessel_width(mask) - width) <= 1.0


@pytest.mark.parametrize("width", [3.0, 7.0])
def test_median_vessel_width_of_diagonal_lines(width):
    yy, xx = np.mgrid[:128, :128]
    distance = np.abs(yy - 0.5 * xx - 20) / np.hypot(1.0, 0.5)  # a line of slope 1/2
    mask = (distance <= width / 2) & (xx > 10) & (xx < 118)
    assert abs(median_vessel_width(mask) - width) <= 1.0


def test_median_vessel_width_rejects_an_empty_mask():
    with pytest.raises(ValueError, match="no foreground"):
        median_vessel_width(np.zeros((8, 8), dtype=bool))


# -------------------------------------------------------------------------------------- Crop-and-Overlap
@pytest.mark.parametrize("size", [(96, 96), (32, 64), (64, 48)])
def test_crop_and_overlap_is_binary_of_the_mip_size(trees, size):
    rng = np.random.default_rng(0)
    settings = CropOverlapSettings(size=size)
    for _ in range(10):
        reference = crop_and_overlap(trees, settings, rng)
        assert reference.shape == size
        assert reference.dtype == np.float32
        assert set(np.unique(reference)) <= {0.0, 1.0}
    batch = reference_batch(trees, settings, 5, rng)
    assert batch.shape == (5, 1, *size)
    assert batch.dtype == np.float32
    assert set(np.unique(batch)) <= {0.0, 1.0}


def test_crop_and_overlap_is_deterministic_for_a_seed(trees):
    settings = CropOverlapSettings(size=(64, 64))
    first = reference_batch(trees, settings, 8, np.random.default_rng(5))
    again = reference_batch(trees, settings, 8, np.random.default_rng(5))
    other = reference_batch(trees, settings, 8, np.random.default_rng(6))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_more_patches_make_denser_references(trees):
    densities = []
    for patches in (1, 4, 12):
        settings = CropOverlapSettings(size=(64, 64), crop_scale=(0.2, 0.4), max_patches=patches)
        densities.append(float(reference_batch(trees, settings, 50, np.random.default_rng(1)).mean()))
    assert densities[0] < densities[1] < densities[2]
    assert densities[2] > 1.5 * densities[0]


def test_smaller_crops_make_thicker_vessels(trees):
    widths = []
    for scale in ((0.06, 0.1), (0.2, 0.3), (0.6, 0.9)):
        settings = CropOverlapSettings(size=(96, 96), crop_scale=scale, max_patches=1)
        batch = reference_batch(trees, settings, 50, np.random.default_rng(2))
        widths.append(float(np.median([median_vessel_width(r[0]) for r in batch if r.any()])))
    assert widths[0] > widths[1] > widths[2]
    # A crop of 0.08 * 512 = 41 px enlarged to 96 px makes the trees' vessels ~2.3x wider.
    assert widths[0] > 2 * widths[2]


def test_min_foreground_resamples_empty_crops():
    mask = np.zeros((128, 128), dtype=bool)
    mask[56:72, 56:72] = True  # one blob: most crops of a quarter of the side miss it
    strict = CropOverlapSettings(size=(32, 32), crop_scale=(0.25, 0.25), max_patches=1, min_foreground=0.01)
    lax = CropOverlapSettings(size=(32, 32), crop_scale=(0.25, 0.25), max_patches=1, min_foreground=0.0)
    hits_strict = reference_batch([mask], strict, 40, np.random.default_rng(3)).any(axis=(1, 2, 3)).sum()
    hits_lax = reference_batch([mask], lax, 40, np.random.default_rng(3)).any(axis=(1, 2, 3)).sum()
    assert hits_strict >= 38
    assert hits_lax <= 25


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"size": (96,)}, "size must be two integers"),
        ({"size": (96, 1)}, "size must be two integers"),
        ({"size": (96, 96), "crop_scale": (0.5, 0.1)}, "crop_scale"),
        ({"size": (96, 96), "crop_scale": (0.0, 0.1)}, "crop_scale"),
        ({"size": (96, 96), "crop_scale": (0.5, 1.5)}, "crop_scale"),
        ({"size": (96, 96), "max_patches": 0}, "max_patches"),
        ({"size": (96, 96), "min_foreground": 1.0}, "min_foreground"),
    ],
)
def test_crop_overlap_settings_reject_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        CropOverlapSettings(**arguments)


def test_crop_and_overlap_rejects_no_masks():
    with pytest.raises(ValueError, match="masks is empty"):
        crop_and_overlap([], CropOverlapSettings(size=(8, 8)), np.random.default_rng(0))


# --------------------------------------------------------------------------------- label-free choices
def test_target_vessel_width_voxels():
    assert target_vessel_width_voxels("2PM", (0.0025, 0.0025)) == pytest.approx(2.4)
    assert target_vessel_width_voxels("TOF-MRA", (0.4, 0.4)) == pytest.approx(3.75)
    assert target_vessel_width_voxels("tof-mra", (0.4, 0.6)) == pytest.approx(3.0)
    assert target_vessel_width_voxels("SWI", (0.5, 0.5)) == pytest.approx(2.0)
    assert VESSEL_WIDTH_PRIORS["2PM"] == pytest.approx(0.006)
    with pytest.raises(ValueError, match="known: 2PM, TOF-MRA, SWI"):
        target_vessel_width_voxels("CT", (0.5, 0.5))
    with pytest.raises(ValueError, match="spacing_yx"):
        target_vessel_width_voxels("SWI", (0.5, 0.0))


def test_choose_crop_settings_follows_width_and_density(trees):
    thin = choose_crop_settings(trees, (64, 64), 2.0, 0.15, np.random.default_rng(0), probe_count=32)
    thick = choose_crop_settings(trees, (64, 64), 6.0, 0.15, np.random.default_rng(0), probe_count=32)
    # L = P * w_src / w_t: a larger target width needs a smaller crop.
    assert thick.settings.crop_scale[0] < thin.settings.crop_scale[0]
    assert thick.settings.crop_scale[1] < thin.settings.crop_scale[1]
    assert thin.crop_side_px == pytest.approx(64 * thin.source_width_px / 2.0)
    assert thin.settings.crop_scale == pytest.approx(
        (0.5 * thin.crop_side_px / 512, 1.5 * thin.crop_side_px / 512)
    )
    assert thick.reference_width_px > thin.reference_width_px
    sparse = choose_crop_settings(trees, (64, 64), 3.0, 0.10, np.random.default_rng(0), probe_count=32)
    dense = choose_crop_settings(trees, (64, 64), 3.0, 0.45, np.random.default_rng(0), probe_count=32)
    assert dense.settings.max_patches > sparse.settings.max_patches
    for choice in (sparse, dense):
        assert choice.reached_target
        assert choice.reference_foreground >= choice.target_foreground
    again = choose_crop_settings(trees, (64, 64), 3.0, 0.45, np.random.default_rng(0), probe_count=32)
    assert again == dense
    record = dense.to_dict()
    assert record["settings"]["size"] == [64, 64]
    assert record["target_foreground"] == 0.45


def test_choose_crop_settings_caps_patches_and_clips_scale(trees):
    choice = choose_crop_settings(
        trees, (32, 32), 0.05, 0.99, np.random.default_rng(0), max_patches_limit=3, probe_count=8
    )
    assert choice.settings.max_patches == 3
    assert not choice.reached_target
    assert choice.crop_scale_clipped
    assert choice.settings.crop_scale == (1.0, 1.0)


def _volume_with_lines(lines: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    volume = rng.uniform(0.0, 0.2, size=(32, 64, 64)).astype(np.float32)
    for _ in range(lines):
        axis = int(rng.integers(3))
        a, b = (int(v) for v in rng.integers(2, 30, size=2))
        if axis == 0:
            volume[:, 2 * a : 2 * a + 2, 2 * b : 2 * b + 2] = 1.0
        elif axis == 1:
            volume[a : a + 2, :, 2 * b : 2 * b + 2] = 1.0
        else:
            volume[a : a + 2, 2 * b : 2 * b + 2, :] = 1.0
    return volume


def test_foreground_fraction_of_intensity_mips_grows_with_lines():
    fractions = [
        foreground_fraction_of_intensity_mips(
            [_volume_with_lines(lines, seed) for seed in range(3)], (16, 32, 32), 20, np.random.default_rng(0)
        )
        for lines in (3, 30)
    ]
    assert 0.0 < fractions[0] < fractions[1] < 1.0
    constant = foreground_fraction_of_intensity_mips(
        [np.zeros((8, 8, 8))], (4, 4, 4), 3, np.random.default_rng(0)
    )
    assert constant == 0.0
    with pytest.raises(ValueError, match=r"\(Z, Y, X\)"):
        foreground_fraction_of_intensity_mips([np.zeros((8, 8))], (4, 4, 4), 3, np.random.default_rng(0))


# ------------------------------------------------------------------------------------------ guidance
def test_retina_mask_is_vessel_like_and_matches_the_bundled_file(retina):
    assert retina.shape == (512, 512)
    assert retina.dtype == bool
    assert 0.05 <= retina.mean() <= 0.2
    assert 1.0 <= median_vessel_width(retina) <= 4.0
    # Recomputed in this process, equal to the file written by scripts/make_guidance_masks.py: deterministic.
    np.testing.assert_array_equal(retina, read_mask_folder(BUNDLED_MASKS)[0])
    # The cache hands out copies.
    retina_vessel_mask()[:] = False
    assert retina_vessel_mask().any()


def test_procedural_trees_are_deterministic_and_plausible(trees):
    np.testing.assert_array_equal(procedural_vessel_tree(3), trees[3])
    for a in range(len(trees)):
        assert 0.02 <= trees[a].mean() <= 0.3
        for b in range(a):
            assert (trees[a] != trees[b]).mean() > 0.05
    assert 2.0 <= np.median([median_vessel_width(t) for t in trees]) <= 10.0


def test_procedural_tree_branches_obey_murrays_law():
    for seed in range(4):
        branches = procedural_vessel_branches(seed)
        assert sum(b.parent < 0 for b in branches) in range(2, 5)
        children: dict[int, list[float]] = {}
        for branch in branches:
            assert guidance.TREE_MIN_RADIUS_PX - 1e-9 <= branch.radius_px <= 8.0
            if branch.parent >= 0:
                children.setdefault(branch.parent, []).append(branch.radius_px)
                assert branch.depth == branches[branch.parent].depth + 1
        assert children
        for parent, radii in children.items():
            assert len(radii) == 2
            assert sum(r**3 for r in radii) == pytest.approx(branches[parent].radius_px ** 3, rel=1e-9)


def test_murray_angles():
    r1, r2 = guidance.murray_children_radii(4.0, 1.0)
    assert r1 == pytest.approx(r2)
    theta_1, theta_2 = guidance.murray_branching_angles(4.0, r1, r2)
    assert np.degrees(theta_1) == pytest.approx(37.47, abs=0.05)
    assert theta_2 == pytest.approx(theta_1)
    thick, thin = guidance.murray_children_radii(4.0, 0.4)
    theta_thick, theta_thin = guidance.murray_branching_angles(4.0, thick, thin)
    assert theta_thin > theta_thick


# ------------------------------------------------------------------------------------------ folders
def test_read_bundled_set():
    masks = read_mask_folder(BUNDLED_MASKS)
    assert len(masks) == 25
    assert all(m.shape == (512, 512) and m.dtype == bool for m in masks)
    np.testing.assert_array_equal(masks[1], procedural_vessel_tree(0))  # tree-000.png
    np.testing.assert_array_equal(masks[24], procedural_vessel_tree(23))
    assert (BUNDLED_MASKS / "README.md").is_file()


def test_read_user_folder_with_png_and_tiff(tmp_path):
    import tifffile

    grey = np.zeros((20, 30), dtype=np.uint8)
    grey[5:8, :] = 255
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[:, 4:6, 2] = 200  # foreground in the blue channel only
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 3] = 255  # opaque everywhere: alpha is not foreground
    rgba[2:4, 2:4, 0] = 1
    stack = np.zeros((1, 12, 12), dtype=np.float32)
    stack[0, 3:5, 3:9] = 0.7
    _png(tmp_path / "a-grey.png", grey)
    _png(tmp_path / "b-rgb.PNG", rgb)
    _png(tmp_path / "c-rgba.png", rgba)
    tifffile.imwrite(tmp_path / "d-stack.tif", stack)
    tifffile.imwrite(tmp_path / "e-uint16.tiff", (grey.astype(np.uint16) * 100))
    (tmp_path / "notes.txt").write_text("not a mask")
    masks = read_mask_folder(tmp_path)
    assert len(masks) == 5
    np.testing.assert_array_equal(masks[0], grey > 0)
    np.testing.assert_array_equal(masks[1], rgb[..., 2] > 0)
    assert masks[2].sum() == 4
    np.testing.assert_array_equal(masks[3], stack[0] > 0)
    np.testing.assert_array_equal(masks[4], grey > 0)


def test_read_mask_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_mask_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds no mask file"):
        read_mask_folder(tmp_path)
    good = np.zeros((8, 8), dtype=np.uint8)
    good[2, :] = 255
    _png(tmp_path / "good.png", good)
    (tmp_path / "damaged.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 10)
    with pytest.raises(ValueError, match=r"damaged\.png cannot be read"):
        read_mask_folder(tmp_path)
    (tmp_path / "damaged.png").unlink()
    _png(tmp_path / "zero.png", np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"zero\.png is empty \(all zero\)"):
        read_mask_folder(tmp_path)
    (tmp_path / "zero.png").unlink()
    _png(tmp_path / "full.png", np.full((8, 8), 255, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"full\.png is foreground everywhere"):
        read_mask_folder(tmp_path)
    (tmp_path / "full.png").unlink()
    import tifffile

    tifffile.imwrite(tmp_path / "volume.tif", np.ones((3, 8, 8), dtype=np.uint8), photometric="minisblack")
    with pytest.raises(ValueError, match=r"volume\.tif is not a 2D image"):
        read_mask_folder(tmp_path)
    with pytest.raises(ValueError) as error:
        read_mask_folder(tmp_path / "missing")
    assert "\n" not in str(error.value)


def test_write_guidance_set_refuses_to_overwrite_a_differing_file(tmp_path, retina):
    paths = write_guidance_set(tmp_path, tree_seeds=[0, 7])
    assert [p.name for p in paths] == ["retina-sato.png", "tree-000.png", "tree-007.png"]
    assert all(p.stat().st_size < 20_000 for p in paths)
    masks = read_mask_folder(tmp_path)
    np.testing.assert_array_equal(masks[0], retina)
    np.testing.assert_array_equal(masks[2], procedural_vessel_tree(7))
    assert write_guidance_set(tmp_path, tree_seeds=[0, 7]) == paths  # same bytes: fine
    other = np.zeros((512, 512), dtype=np.uint8)
    other[100:110] = 255
    _png(paths[2], other)
    before = paths[2].read_bytes()
    with pytest.raises(ValueError, match=r"tree-007\.png exists and differs.*overwrite=True"):
        write_guidance_set(tmp_path, tree_seeds=[0, 7])
    assert paths[2].read_bytes() == before
    write_guidance_set(tmp_path, tree_seeds=[0, 7], overwrite=True)
    np.testing.assert_array_equal(read_mask_folder(tmp_path)[2], procedural_vessel_tree(7))
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in paths]  # no temporary left


def test_make_guidance_masks_script_writes_the_readme(tmp_path, retina):
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_guidance_masks.py"
    spec = importlib.util.spec_from_file_location("make_guidance_masks", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(tmp_path), "--trees", "2"])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["README.md", "retina-sato.png", "tree-000.png", "tree-001.png"]
    readme = (tmp_path / "README.md").read_text()
    for phrase in (
        "CC0",
        "not expert annotations",
        "No label",
        "--trees 2",
        "| retina-sato | 1 |",
        "| tree | 2 |",
    ):
        assert phrase in readme
    # The bundled README is what the script writes for the bundled set (it is regenerated, not hand-edited).
    bundled = (BUNDLED_MASKS / "README.md").read_text()
    assert readme.splitlines()[:8] == bundled.splitlines()[:8]
    assert "| tree | 24 |" in bundled
