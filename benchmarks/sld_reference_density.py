"""Diagnostic for 3D-SLD's guidance: is the label-free density target far from the true vessel density?

    python benchmarks/sld_reference_density.py [--crops 64] [--crop 32 32 32] [--no-vesselnn]

3D-SLD's Crop-and-Overlap references are made as dense as Otsu-thresholded intensity MIPs of unlabelled
training crops (``trainer.sld.references.foreground_fraction_of_intensity_mips``). This script compares that
target with the foreground fraction of the MIPs of the *labels* of the same kind of crops, on the TOF-MRA
training phantoms of ``trainer/configs/sld_tof.toml`` (seeds 1000-1003 here) and, when the data is there, the
VesselNN stacks. The labels are read here only to diagnose; no training reads them. If the target were much
denser than the vessels, the references would teach the network to call background vessel. A second table
does the same for the crops the trainer draws with and without ``[training.sld] bright_crop_fraction``, and
the share of vessel voxels in them.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from trainer.sld.references import (
    foreground_fraction_of_intensity_mips,
    foreground_fraction_of_mips,
    uniform_blocks,
)
from trainer.sld.sampling import CropSampler
from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.preprocessing import get_preset, normalize_intensity
from VesselSegLib.resources import vesselnn_dir
from VesselSegLib.unsupervised.adaptation import padded_to


def label_mip_fraction(labels, crop_zyx, count: int, rng: np.random.Generator) -> float:
    """Mean foreground fraction of the three MIPs of ``count`` random crops of binary label volumes, drawn
    as ``foreground_fraction_of_intensity_mips`` draws its crops."""
    return label_mip_density(uniform_blocks(labels, crop_zyx, count, rng))


def label_mip_density(blocks) -> float:
    """Mean foreground fraction of the MIPs along Z, Y and X of binary label crops."""
    return float(np.mean([block.max(axis=axis).mean() for block in blocks for axis in range(3)]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crops", type=int, default=64)
    parser.add_argument("--crop", nargs=3, type=int, default=[32, 32, 32], metavar=("Z", "Y", "X"))
    parser.add_argument("--no-vesselnn", action="store_true", help="the TOF-MRA phantoms only")
    args = parser.parse_args(argv)
    crop = tuple(args.crop)
    sets = {}
    cases = [
        make_phantom_case("TOF-MRA", (64, 128, 128), spacing_zyx=(0.8, 0.5, 0.5), seed=s)
        for s in range(1000, 1004)
    ]
    preset = get_preset("TOF-MRA")
    sets["TOF-MRA phantoms"] = (
        [normalize_intensity(c.image, preset) for c in cases],
        [c.class_map > 0 for c in cases],
    )
    root = vesselnn_dir()
    if not args.no_vesselnn and (root / "images").is_dir():
        from VesselSegLib.io import read_volume

        images, labels = [], []
        for path in sorted((root / "images").glob("*.tif")):
            images.append(
                normalize_intensity(
                    np.asarray(read_volume(path, spacing_xyz=(1, 1, 1)).array), get_preset("2PM")
                )
            )
            labels.append(
                np.asarray(read_volume(root / "labels" / path.name, spacing_xyz=(1, 1, 1)).array) > 0
            )
        sets["VesselNN stacks"] = (images, labels)
    print(
        f"Foreground fraction of the MIPs of {args.crops} random {' x '.join(map(str, crop))} crops (seed 0)"
    )
    print()
    print("| data | Otsu of intensity MIPs (3D-SLD's target, label-free) | MIPs of the labels (diagnostic) |")
    print("|---|---|---|")
    for name, (images, labels) in sets.items():
        target = foreground_fraction_of_intensity_mips(images, crop, args.crops, np.random.default_rng(0))
        truth = label_mip_fraction(labels, crop, args.crops, np.random.default_rng(0))
        print(f"| {name} | {target:.3f} | {truth:.3f} |")
    print()
    print(
        f"Training crops as trainer.sld.sampling.CropSampler draws them ({args.crops} crops, seed 0; "
        "bright: every crop holds a voxel at or above the quantile)"
    )
    print()
    print(
        "| data | crops | Otsu of intensity MIPs (label-free) | MIPs of the labels | vessel share of the crops "
        f"| crops under {SPARSE_CROP_SHARE:.0%} vessel |"
    )
    print("|---|---|---|---|---|---|")
    for name, (images, labels) in sets.items():
        for label, fraction, quantile in SAMPLINGS:
            row = sampled_crop_densities(images, labels, crop, args.crops, fraction, quantile)
            print(f"| {name} | {label} | {row[0]:.3f} | {row[1]:.3f} | {row[2]:.4f} | {row[3]:.2f} |")
    return 0


#: A crop with a smaller vessel share than this counts as (nearly) vessel-free in the second table's last
#: column. Region discrimination (eq. 2-5) asks every cluster to be present in every crop, so a vessel cluster
#: is only rewarded where nearly every crop holds vessels.
SPARSE_CROP_SHARE = 0.01

#: (name, bright_crop_fraction, bright_crop_quantile) of the second table.
SAMPLINGS = (
    ("uniform (the paper)", 0.0, 0.995),
    ("bright, top 1 %", 1.0, 0.99),
    ("bright, top 0.5 %", 1.0, 0.995),
)


def sampled_crop_densities(images, labels, crop_zyx, count: int, fraction: float, quantile: float):
    """(Otsu density of the intensity MIPs, density of the label MIPs, mean vessel share, share of crops
    under ``SPARSE_CROP_SHARE`` vessel) of ``count`` crops drawn by a :class:`CropSampler` with these
    settings; the labels are cut at the same windows."""
    sampler = CropSampler(
        images,
        np.full(len(images), 1 / len(images)),
        crop_zyx,
        bright_fraction=fraction,
        bright_quantile=quantile,
    )
    padded = [padded_to(np.asarray(label, dtype=np.float32), crop_zyx) for label in labels]
    rng = np.random.default_rng(0)
    windows = [sampler.draw_window(rng) for _ in range(count)]
    target = foreground_fraction_of_mips([sampler.cut(sampler.volumes, w) for w in windows])
    label_crops = [sampler.cut(padded, w) for w in windows]
    shares = np.array([crop.mean() for crop in label_crops])
    sparse = float(np.mean(shares < SPARSE_CROP_SHARE))
    return target, label_mip_density(label_crops), float(shares.mean()), sparse


if __name__ == "__main__":
    sys.exit(main())
