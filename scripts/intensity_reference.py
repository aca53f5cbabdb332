"""Store a model's training-data intensity reference in its card, for ``--intensity-scale auto``.

    python scripts/intensity_reference.py Resources/Models/vnet-2pm.card.json \
        --images "$VESSELSEG_VESSELNN"/images/*.tif --exclude burgess2014_tgMouse

The 2PM paper matches a stack from a new microscope to its training data by multiplying it by a factor it
picks by hand (Sec. 4.2). ``VesselSegLib.preprocessing.estimate_intensity_scale`` estimates that factor from
robust percentiles; this script writes the other side of the comparison: the raw intensities of the
training stacks at those percentiles (the median over the stacks, so that one unusual stack does not set the
scale), under ``intensity_reference`` in the model card. The weights and their SHA256 are not touched.
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

import numpy as np

from VesselSegLib.io import read_volume
from VesselSegLib.preprocessing.microscopy import DEFAULT_SCALE_PERCENTILES


def stack_percentiles(path: Path, percentiles) -> list[float]:
    """The raw intensities of one stack at ``percentiles`` (spacing is irrelevant here, so 1 mm is given
    when the file has no metadata)."""
    metadata = path.parent.parent / "metadata" / f"{path.stem}.xml.txt"  # VesselNN's side-car layout
    if metadata.is_file():
        volume = read_volume(path, metadata_path=metadata)
    else:
        volume = read_volume(path, spacing_xyz=(1.0, 1.0, 1.0))
    return [float(v) for v in np.percentile(volume.array, percentiles)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("card", type=Path, help="The model card JSON to add the reference to.")
    parser.add_argument("--images", type=Path, nargs="+", required=True, help="The training stacks.")
    parser.add_argument("--exclude", nargs="*", default=[], help="Stack names (file stems) to leave out.")
    parser.add_argument(
        "--percentiles",
        type=float,
        nargs="+",
        default=list(DEFAULT_SCALE_PERCENTILES),
        help="Default: 50 99.5.",
    )
    args = parser.parse_args(argv)

    stacks = sorted(path for path in args.images if path.stem not in set(args.exclude))
    if not stacks:
        parser.error("no stacks left after --exclude")
    per_stack = {path.stem: stack_percentiles(path, args.percentiles) for path in stacks}
    values = np.median(np.array(list(per_stack.values())), axis=0)
    card = json.loads(args.card.read_text())
    card["intensity_reference"] = {
        "percentiles": args.percentiles,
        "values": [float(v) for v in values],
        "per_stack": per_stack,
        # The stacks are named in per_stack; the folder is the user's, so the command says where it is read.
        "command": f"python scripts/intensity_reference.py {args.card.name} --images <folder>/*.tif"
        + (f" --exclude {' '.join(args.exclude)}" if args.exclude else ""),
        "date": date.today().isoformat(),
    }
    args.card.write_text(json.dumps(card, indent=2) + "\n")
    print(
        f"{args.card}: reference {dict(zip(args.percentiles, values.round(2).tolist(), strict=True))} from {len(stacks)} stacks"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
