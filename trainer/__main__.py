"""Command line: ``python -m trainer train CONFIG ...``, ``python -m trainer export RUN_DIR ...`` and
``python -m trainer pick-sld RUN_DIR...`` (rank 3D-SLD runs without labels).

Errors are reported on one line and exit with status 2; Ctrl+C during training saves and exits with 130.
Under ``torchrun --nproc_per_node=N -m trainer train CONFIG`` the processes train data-parallel.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer", description="Train and export VesselSeg vessel segmentation networks."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="train a network from a TOML configuration",
        description="Train a network. Launch with `torchrun --nproc_per_node=N -m trainer train ...` for "
        "data-parallel training (gloo on CPU, NCCL on GPU).",
    )
    train.add_argument("config", help="TOML configuration, e.g. trainer/configs/unet3d_default.toml")
    train.add_argument("--run-dir", help="output folder (default: the configuration's output.run_dir)")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the run folder after its last completed epoch",
    )
    train.add_argument(
        "--data-root",
        help="folder replacing the root of every file data source (else the "
        "configuration's root, which may read an environment variable such as VESSELSEG_VESSELNN)",
    )
    train.add_argument("--epochs", type=int, help="override training.epochs")
    train.add_argument(
        "--seed", type=int, help="override training.seed (restarts of an unstable training, e.g. 3D-SLD's)"
    )
    train.add_argument(
        "--threads",
        type=int,
        help="override training.num_threads (a machine setting: 1 when another job shares 2 cores)",
    )
    train.add_argument("--quiet", action="store_true", help="log warnings only")
    export = commands.add_parser(
        "export",
        help="export a run's best checkpoint as a registry model",
        description="Write NAME.safetensors + NAME.card.json and print the models.json entry.",
    )
    export.add_argument("run_dir", help="training run folder")
    export.add_argument("--name", required=True, help="model name and file stem, e.g. unet3d-baseline")
    export.add_argument("--out", required=True, help="output folder, normally Resources/Models")
    export.add_argument("--display-name", help="name shown to users")
    export.add_argument("--modalities", nargs="+", help="presets the model accepts (default: trained ones)")
    export.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap (default 0.25)")
    export.add_argument("--threshold", type=float, help="probability threshold for every class")
    export.add_argument(
        "--mixed-spacing",
        action="store_true",
        help="trained at several voxel sizes: give no training spacing (inputs are not resampled)",
    )
    export.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="best",
        help="the run's selected checkpoint (default) or its last epoch",
    )
    export.add_argument(
        "--registry",
        action="store_true",
        help="also write OUT/models.json holding this entry alone (not for Resources/Models)",
    )
    pick = commands.add_parser(
        "pick-sld",
        help="rank 3D-SLD runs of one recipe without labels",
        description="Rank finished 3D-SLD runs (e.g. the same recipe with other training.seed values) by the "
        "label-free bright-voxel AP of their last weights on their validation volumes, highest first, and "
        "name the one to export (trainer.sld.label_free).",
    )
    pick.add_argument("run_dirs", nargs="+", help="finished 3D-SLD run folders")
    return parser


def _print_ranking(run_dirs: Sequence[str]) -> None:
    """``pick-sld``: a table of the runs' label-free checks, best first, and the export command for the best."""
    from trainer.sld.label_free import rank_runs

    rows = rank_runs(run_dirs)
    print(
        "| run | bright-voxel AP | chance | reference-density threshold | called vessel there | at 0.5 | checks |"
    )
    print("|---|---|---|---|---|---|---|")
    for run, assessment, recorded in rows:
        print(
            f"| {run} | {assessment.bright_voxel_ap:.3f} | {1 - assessment.bright_quantile:.3f} "
            f"| {assessment.reference_density_threshold:.3f} | {assessment.foreground_at_threshold:.4f} "
            f"| {assessment.foreground_at_half:.4f} | {'recorded by the trainer' if recorded else 'measured now'} |"
        )
    best = rows[0][0]
    print(f"\nPick: {best} (the highest bright-voxel AP; no label read). Export it with")
    print(f"  python -m trainer export {best} --name NAME --out FOLDER")


def _command_line(argv: Sequence[str]) -> list[str]:
    """The command as a user would retype it (torchrun prefix when distributed)."""
    world = os.environ.get("WORLD_SIZE")
    if world and int(world) > 1:
        per_node = os.environ.get("LOCAL_WORLD_SIZE", world)
        return ["torchrun", f"--nproc_per_node={per_node}", "-m", "trainer", *argv]
    return ["python", "-m", "trainer", *argv]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    arguments = _parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    quiet = getattr(arguments, "quiet", False) or rank != 0
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
    )
    try:
        if arguments.command == "train":
            from trainer.config import load_config
            from trainer.loop import run_training

            config = load_config(arguments.config, data_root=arguments.data_root)
            config = config.with_overrides(
                run_dir=arguments.run_dir, epochs=arguments.epochs, seed=arguments.seed
            )
            if arguments.threads is not None:
                if arguments.threads < 1:
                    raise ValueError(f"--threads must be >= 1, got {arguments.threads}.")
                config = dataclasses.replace(
                    config, training=dataclasses.replace(config.training, num_threads=arguments.threads)
                )
            summary = run_training(config, resume=arguments.resume, command=_command_line(argv))
            if summary.interrupted:
                return EXIT_INTERRUPTED
            return 0
        if arguments.command == "pick-sld":
            _print_ranking(arguments.run_dirs)
            return 0
        from trainer.export import export_run

        entry = export_run(
            arguments.run_dir,
            name=arguments.name,
            out_dir=arguments.out,
            display_name=arguments.display_name,
            modalities=arguments.modalities,
            overlap=arguments.overlap,
            threshold=arguments.threshold,
            mixed_spacing=arguments.mixed_spacing,
            checkpoint=arguments.checkpoint,
        )
        if (
            arguments.registry
        ):  # a models.json holding this entry alone, e.g. for benchmarks/crossval.py --registry
            registry = Path(arguments.out) / "models.json"
            registry.write_text(json.dumps({"schema_version": 1, "models": [entry]}, indent=2) + "\n")
        print(json.dumps(entry, indent=2))  # the registry entry is this command's output
        return 0
    except (ValueError, OSError) as error:
        message = " ".join(str(error).split())
        print(f"error: {message}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
