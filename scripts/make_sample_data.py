"""Write the bundled sample: a TOF-MRA phantom, its reference labels, brain mask and SWI twin (deterministic).

    python scripts/make_sample_data.py [--out Resources/SampleData]

The sample is synthetic (``VesselSegLib.phantoms``), so it can ship with the extension with no licence
question. Its reference labels let users try ``vesselseg segment ... --reference``. The SWI image renders the
same vessel tree on the same grid (a co-registered second contrast, as VC-Net's MICRO-MRI protocol gives):
methods whose vein and micro-vessel models read SWI take it as ``--companion SWI=...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from VesselSegLib.io import Volume, write_volume
from VesselSegLib.phantoms import make_phantom_case

SAMPLE_SHAPE_ZYX = (64, 192, 192)
SAMPLE_SEED = 2026
# A tilted acquisition (10 degrees about the Z axis) and a scanner-like origin: the outputs must land on
# exactly this grid, which the demo makes visible in Slicer.
ANGLE = np.deg2rad(10.0)
DIRECTION = np.array(
    [[np.cos(ANGLE), -np.sin(ANGLE), 0.0], [np.sin(ANGLE), np.cos(ANGLE), 0.0], [0.0, 0.0, 1.0]]
)
ORIGIN_XYZ = (-48.0, -60.0, -20.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "Resources" / "SampleData"
    )
    args = parser.parse_args()
    case = make_phantom_case("TOF-MRA", SAMPLE_SHAPE_ZYX, seed=SAMPLE_SEED)
    spacing_xyz = tuple(reversed(case.spacing_zyx))
    # Scanner-like 12-bit integers, as TOF-MRA DICOMs are.
    image = np.clip(np.round(case.image / np.percentile(case.image, 99.9) * 1500), 0, 4095).astype(np.int16)
    geometry = {"spacing_xyz": spacing_xyz, "origin_xyz": ORIGIN_XYZ, "direction": DIRECTION}
    args.out.mkdir(parents=True, exist_ok=True)
    write_volume(Volume(image, **geometry), args.out / "sample_tof_mra.nrrd")
    write_volume(Volume(case.class_map, **geometry), args.out / "sample_tof_mra_labels.nrrd")
    write_volume(Volume(case.brain_mask.astype(np.uint8), **geometry), args.out / "sample_brain_mask.nrrd")
    # Same seed and spacing: the same tree and brain mask, rendered as SWI.
    swi = make_phantom_case("SWI", SAMPLE_SHAPE_ZYX, spacing_zyx=case.spacing_zyx, seed=SAMPLE_SEED)
    assert np.array_equal(swi.class_map, case.class_map)
    swi_image = np.clip(np.round(swi.image / np.percentile(swi.image, 99.9) * 1500), 0, 4095).astype(np.int16)
    write_volume(Volume(swi_image, **geometry), args.out / "sample_swi.nrrd")
    print(
        f"Wrote sample_tof_mra, sample_tof_mra_labels, sample_brain_mask and sample_swi .nrrd to {args.out}"
    )


if __name__ == "__main__":
    main()
