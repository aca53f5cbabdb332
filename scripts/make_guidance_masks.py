"""Write the bundled 2D guidance masks of 3D-SLD and their provenance README (deterministic).

    python scripts/make_guidance_masks.py [--out Resources/GuidanceMasks] [--trees 24] [--overwrite]

The set is ``retina-sato.png`` (a label-free vessel mask of scikit-image's CC0 fundus photograph) and
``tree-000.png`` ... (procedural 2D vessel trees, seeds 0 .. trees-1), 512 x 512 uint8 0/255 PNGs
(``trainer.sld.guidance``). A file that exists and differs is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

from trainer.sld import guidance  # noqa: E402
from trainer.sld.references import median_vessel_width  # noqa: E402

README_NAME = "README.md"


def _stats(masks: list[np.ndarray]) -> tuple[float, float, float, float]:
    """(mean, min, max foreground fraction, median of the per-mask median vessel widths in px)."""
    fractions = [float(m.mean()) for m in masks]
    widths = [median_vessel_width(m) for m in masks]
    return float(np.mean(fractions)), min(fractions), max(fractions), float(np.median(widths))


def readme_text(paths: list[Path], tree_count: int) -> str:
    """The provenance README of a written set (statistics read back from the files)."""
    masks = {path.name: guidance.read_mask(path) for path in paths}
    retina = [masks["retina-sato.png"]]
    trees = [mask for name, mask in masks.items() if name.startswith("tree-")]
    size = retina[0].shape[0]
    sizes_kb = sum(p.stat().st_size for p in paths) / 1024
    r_mean, _, _, r_width = _stats(retina)
    lines = [
        "# 3D-SLD guidance masks",
        "",
        "Two-dimensional vessel masks that guide 3D-SLD (`trainer.sld`): its discriminator learns what a vessel",
        "looks like from Crop-and-Overlap references cut from these masks (method notes Sec. 2.5, 6.2).",
        "",
        "**These are machine-made masks, not expert annotations. No label of any target data set (VesselNN,",
        "the project's phantoms, or any other) was used to make them or to choose their parameters.**",
        "",
        f"Files: `retina-sato.png` and `tree-000.png` ... `tree-{tree_count - 1:03d}.png`, {size} x {size} pixels,",
        f"1-channel uint8 PNG (0 background, 255 vessel); {len(paths)} files, {sizes_kb:.0f} KB in all.",
        "",
        "Regenerate (deterministic, byte-identical):",
        "",
        "```",
        f"python scripts/make_guidance_masks.py --out Resources/GuidanceMasks --trees {tree_count} --overwrite",
        "```",
        "",
        "## `retina-sato.png`: fundus-derived mask (source A)",
        "",
        'Source photograph: `skimage.data.retina()`, "Fundus photograph of normal left eye", Mikael Häggström,',
        "2014, Wikimedia Commons, released under **CC0** (public domain); bundled in the scikit-image wheel",
        "(`skimage/data/retina.jpg`, 1411 x 1411 RGB). Frozen recipe (`trainer.sld.guidance.retina_vessel_mask`):",
        "",
        "1. green channel, scaled to [0, 1];",
        f"2. CLAHE: `skimage.exposure.equalize_adapthist(green, clip_limit={guidance.RETINA_CLAHE_CLIP_LIMIT})`;",
        f"3. field of view: mean of R, G, B > {guidance.RETINA_FOV_BRIGHTNESS}, holes filled, eroded by a disc of radius",
        f"   {max(1, round(guidance.RETINA_FOV_EROSION_FRACTION * 1411))} px;",
        f"4. `skimage.filters.sato(clahe, sigmas={guidance.RETINA_SATO_SIGMAS}, black_ridges=True)` at full resolution",
        "   (Sato rather than Frangi, whose blob-suppression term weakens the response at bifurcations and crossings);",
        "5. keep the top 12% of field-of-view pixels by tubeness;",
        "6. drop 8-connected components smaller than 100 px (full resolution);",
        f"7. resize to {size} x {size}: bilinear with anti-aliasing, then >= 0.5.",
        "",
        "No random numbers; no parameter was tuned against any label.",
        "",
        "## `tree-NNN.png`: procedural 2D trees (source B)",
        "",
        "Our own 2D generator (`trainer.sld.guidance.procedural_vessel_tree(seed)`, seed = NNN,",
        "`numpy.random.default_rng(seed)`), with parameters fixed before any target label was seen, and a design",
        "that differs from the 3D phantoms of `VesselSegLib.phantoms`:",
        "",
        f"- {guidance.TREE_ROOT_COUNT[0]}-{guidance.TREE_ROOT_COUNT[1]} roots per image, entering from a random side within",
        f"  {np.degrees(guidance.TREE_ROOT_ENTRY_SPREAD_RAD):.0f} degrees of the inward normal, radius"
        f" U{guidance.TREE_ROOT_RADIUS_PX} px;",
        f"- segment length U{guidance.TREE_LENGTH_PER_RADIUS} x radius (roots x 2, at least"
        f" {guidance.TREE_MIN_SEGMENT_PX:.0f} px);",
        f"- tortuous paths: a gentle arc (total turn up to +-{guidance.TREE_ARC_RAD} rad) plus an Ornstein-Uhlenbeck",
        f"  heading wiggle (std {guidance.TREE_WIGGLE_STD_RAD} rad, correlation length"
        f" {guidance.TREE_WIGGLE_LENGTH_PER_RADIUS:.0f} x radius);",
        "- bifurcations with Murray's law r_p^3 = r_1^3 + r_2^3 (thin/thick ratio"
        f" U{guidance.TREE_ASYMMETRY}) at Murray's minimum-work",
        f"  angles plus N(0, {guidance.TREE_ANGLE_JITTER_RAD}) rad jitter; the thinnest drawn radius is"
        f" {guidance.TREE_MIN_RADIUS_PX} px;",
        f"- at most {guidance.TREE_MAX_SEGMENTS_PER_ROOT} segments per root (breadth first) and"
        f" {guidance.TREE_MAX_DEPTH} generations;",
        "- drawn as discs of the segment's radius along the centreline.",
        "",
        "## Statistics (read back from the files)",
        "",
        "Median vessel width: `trainer.sld.references.median_vessel_width` (median over skeleton pixels of",
        "2 x the distance transform), per mask; the median over the masks of a kind.",
        "",
        "| kind | masks | mean foreground fraction | median vessel width (px) |",
        "| --- | --- | --- | --- |",
        f"| retina-sato | 1 | {r_mean:.4f} | {r_width:.2f} |",
    ]
    if trees:
        t_mean, t_min, t_max, t_width = _stats(trees)
        lines.append(
            f"| tree | {len(trees)} | {t_mean:.4f} (range {t_min:.4f}-{t_max:.4f}) | {t_width:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "Resources" / "GuidanceMasks")
    parser.add_argument("--trees", type=int, default=24, help="number of procedural trees (seeds 0 .. N-1)")
    parser.add_argument("--overwrite", action="store_true", help="replace files that differ")
    args = parser.parse_args(argv)
    if args.trees < 0:
        parser.error(f"--trees must be >= 0; got {args.trees}")
    readme = args.out / README_NAME
    paths = guidance.write_guidance_set(args.out, range(args.trees), overwrite=args.overwrite)
    text = readme_text(paths, args.trees).encode("utf-8")
    if readme.exists() and readme.read_bytes() != text and not args.overwrite:
        raise SystemExit(f"{readme} exists and differs; pass --overwrite to replace it")
    if not readme.exists() or readme.read_bytes() != text:
        temporary = readme.with_name(f".{README_NAME}.{os.getpid()}.tmp")
        temporary.write_bytes(text)
        os.replace(temporary, readme)
    print(f"Wrote {len(paths)} guidance masks and {README_NAME} to {args.out}")


if __name__ == "__main__":
    main()
