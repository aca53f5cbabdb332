#!/usr/bin/env bash
# Do two commits train 3D-SLD identically?  Trains a short three-stage run of trainer/configs/sld_2pm.toml
# (1 + 1 + 1 epochs of 4 iterations, the same seed, one torch thread unless THREADS_A / THREADS_B say
# otherwise) at each commit and compares the per-epoch losses of their training_log.csv, the seconds
# column excepted. Identical losses mean the code between the commits does not change a 3D-SLD training.
# The README's 3D-SLD section compares 5d27501 (the table's 2026-12-02 run) with a486ede (the last commit
# before f0a58ce, which seeds ori-CNN's orientation draws per epoch and so changes every training).
#
#   scripts/compare_sld_commits.sh 5d27501 a486ede      # needs the VesselNN images (VESSELSEG_VESSELNN)
#   THREADS_B=2 scripts/compare_sld_commits.sh a486ede a486ede   # the same code on one and on two threads
#
# Runs in a scratch folder (git worktrees there, removed at the end); the repository is not touched.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
data="${VESSELSEG_VESSELNN:-$repo/../shared/data/vesselnn}"
scratch="$(mktemp -d)"
trap 'git -C "$repo" worktree remove --force "$scratch/a" 2>/dev/null || true;
      git -C "$repo" worktree remove --force "$scratch/b" 2>/dev/null || true; rm -rf "$scratch"' EXIT
for side in a b; do
  commit=$([ "$side" = a ] && echo "$1" || echo "$2")
  threads=$([ "$side" = a ] && echo "${THREADS_A:-1}" || echo "${THREADS_B:-1}")
  git -C "$repo" worktree add --detach --quiet "$scratch/$side" "$commit"
  sed -e 's/^epochs = 15/epochs = 3/' -e 's/^patches_per_epoch = 25 /patches_per_epoch = 4 /' \
      -e 's/^stage_epochs = \[4, 8, 3\]/stage_epochs = [1, 1, 1]/' \
      "$scratch/$side/trainer/configs/sld_2pm.toml" > "$scratch/$side.toml"
  # Each side imports its own VesselSegLib and trainer (PYTHONPATH before the editable install).
  (cd "$scratch/$side" && PYTHONPATH="$scratch/$side" VESSELSEG_VESSELNN="$data" \
     "$python" -m trainer train "$scratch/$side.toml" --threads "$threads" --quiet --run-dir "$scratch/run-$side")
  echo "$commit: $(git -C "$repo" rev-parse --short "$commit"), $threads torch thread(s)"
done
without_seconds() { "$python" -c 'import csv,sys
for row in csv.DictReader(open(sys.argv[1])):
    row.pop("seconds", None); print(row)' "$1"; }
if diff <(without_seconds "$scratch/run-a/training_log.csv") <(without_seconds "$scratch/run-b/training_log.csv"); then
  echo "identical per-epoch losses over the three stages"
else
  echo "the losses differ (above)"; exit 1
fi
