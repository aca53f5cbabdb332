"""Diagnostic for a trained 3D-SLD model: does *any* of its clusters follow the vessels?

    python benchmarks/sld_cluster_ap.py runs/sld-tof-bench/3d-sld/seed-0/train [--seeds 5001 5002]

3D-SLD makes cluster ``t`` the vessel cluster only through the adversarial loss on its MIPs. When a model
scores near chance (the TOF-MRA collapse in the README), two failures are possible: the network learned a
vessel cluster but not at channel ``t``, or no cluster follows the vessels at all. This script tells them
apart on TOF-MRA phantoms: for each cluster ``c`` the average precision of its memberships ``m^c`` against
the phantom's vessels (any class), the share of the volume and of the vessel voxels where ``c`` is the
largest cluster, and, as the yardstick, the AP of the normalised intensity itself. It reads the phantoms'
labels only to diagnose; no training reads them. The phantoms are drawn at the run's training voxel size
(``run.json``), whole volume in one pass (the network's eval mode: no orientation turns). A run trained on
skull-stripped phantoms (``skull_strip = true``) sees them as it was trained, normalised inside the brain mask
with the outside zeroed, and is scored inside the brain.

A second table asks whether stage 3 (Reliability-Refinement, eq. 13-14) could act with weights like these: the
share of voxels whose pseudo labels (``trainer.sld.losses.average_view_maps`` over the 8 flips, from the
last epoch's weights standing in for the stage-2 network ``f'``) lie outside (1 - v_c, v_c), with
``pseudo_labels = "map"`` (eq. 13 as written) and ``"votes"``, and the 1st / 50th / 99th percentiles of the
decision map. Where the map gives no reliable voxel, stage 3 changes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from trainer.config import trains_skull_stripped
from trainer.loop import LAST_WEIGHTS, RUN_RECORD
from trainer.sld.losses import CONFIDENCE_RATE, average_view_maps, flipped_decision_maps, reliable_mask
from VesselSegLib.metrics.ranking import average_precision
from VesselSegLib.models.networks import build_network
from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.preprocessing import normalize_intensity

SHAPE_ZYX = (64, 128, 128)  # the test phantoms of benchmarks/sld_phantoms.py


def rescaled(values: np.ndarray) -> np.ndarray:
    """``values`` mapped onto [0, 1] (AP depends on the order only; ``average_precision`` wants [0, 1])."""
    low, high = float(values.min()), float(values.max())
    return (values - low) / max(high - low, 1e-12)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "run", type=Path, help="a finished 3D-SLD training run (holds run.json, last.safetensors)"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[5001, 5002, 5003, 5004])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    record = json.loads((args.run / RUN_RECORD).read_text())
    network = build_network(record["architecture"], record["arguments"])
    network.load_state_dict(load_file(args.run / LAST_WEIGHTS))
    network.eval()
    spacing = tuple(record["training_spacing_zyx"] or (0.8, 0.5, 0.5))
    stripped = trains_skull_stripped(record["config"])
    where = ", skull-stripped, scored inside the brain" if stripped else ""
    print(f"{args.run}: clusters of the last epoch on TOF-MRA phantoms {SHAPE_ZYX} at {spacing} mm{where}")
    print()
    print(
        "| phantom | vessel share | AP intensity | AP of each cluster m^c | share where c is largest "
        "(volume) | share where c is largest (vessel voxels) |"
    )
    print("|---|---|---|---|---|---|")
    reliability_rows = []
    for seed in args.seeds:
        phantom = make_phantom_case("TOF-MRA", SHAPE_ZYX, spacing_zyx=spacing, seed=seed)
        image = normalize_intensity(phantom.image, "TOF-MRA", phantom.brain_mask if stripped else None)
        scored = phantom.brain_mask.ravel() if stripped else np.ones(image.size, dtype=bool)
        vessels = (phantom.class_map > 0).ravel()[scored]
        with torch.no_grad():
            clusters = network.forward_all(torch.from_numpy(image[None, None].astype(np.float32)))
        memberships = clusters.clusters[0].numpy().reshape(clusters.clusters.shape[1], -1)[:, scored]
        largest = memberships.argmax(axis=0)
        aps = [average_precision(rescaled(m.astype(np.float64)), vessels) for m in memberships]
        count = len(memberships)
        intensity_ap = average_precision(rescaled(image.ravel()[scored]), vessels)
        print(
            f"| {seed} | {vessels.mean():.4f} | {intensity_ap:.3f} "
            f"| {' '.join(f'{a:.3f}' for a in aps)} "
            f"| {' '.join(f'{(largest == c).mean():.2f}' for c in range(count))} "
            f"| {' '.join(f'{(largest[vessels] == c).mean():.2f}' for c in range(count))} |"
        )
        reliability_rows.append(reliability_row(network, image, scored, seed))
    print()
    print(
        f"Reliable voxels of stage 3's pseudo labels (8 flips, v_c = {CONFIDENCE_RATE}; share of the scored "
        "voxels):"
    )
    print()
    print(
        "| phantom | decision map p1 / p50 / p99 | reliable, map (eq. 13) | reliable, votes | called vessel |"
    )
    print("|---|---|---|---|---|")
    print("\n".join(reliability_rows))
    return 0


def reliability_row(network, image: np.ndarray, scored: np.ndarray, seed: int) -> str:
    """One row of the second table for one phantom (``scored``: the flat mask of the voxels counted)."""
    volume = torch.from_numpy(image[None, None].astype(np.float32))
    maps = list(flipped_decision_maps(network, volume, views=8))  # one pass per view serves both averages
    decision = maps[0].numpy().ravel()[scored]  # the identity view: the model's own decision map
    reliable = {}
    for mode in ("map", "votes"):
        pseudo = average_view_maps(maps, mode)
        reliable[mode] = float(reliable_mask(pseudo, CONFIDENCE_RATE).numpy().ravel()[scored].mean())
    quantiles = " / ".join(f"{q:.3f}" for q in np.quantile(decision, [0.01, 0.5, 0.99]))
    return (
        f"| {seed} | {quantiles} | {reliable['map']:.4f} | {reliable['votes']:.4f} "
        f"| {(decision > 0.5).mean():.4f} |"
    )


if __name__ == "__main__":
    sys.exit(main())
