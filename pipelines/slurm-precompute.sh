#!/usr/bin/env bash
# Fill one cache with N GPU workers as a Slurm job array, then merge the worker manifests.
#
#   sbatch --array=0-7 pipelines/slurm-precompute.sh pipelines/cluster-precompute.toml
#
# Worker I writes shards I, I+N, I+2N, ... and its own manifest under CACHE/manifests/; a
# killed or preempted task re-runs the same command and resumes after its last complete shard.
# The last worker to finish writes CACHE/manifest.json; the merge step below makes that
# explicit (and is harmless if it already happened).
#SBATCH --job-name=taidcache-precompute
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --requeue
set -euo pipefail

CONFIG=${1:?usage: sbatch --array=0-(N-1) slurm-precompute.sh CONFIG.toml}
TAIDCACHE=${TAIDCACHE:-taidcache}
WORKERS=${SLURM_ARRAY_TASK_COUNT:?run as a job array (sbatch --array=0-N)}
WORKER=${SLURM_ARRAY_TASK_ID:?run as a job array}

"$TAIDCACHE" precompute --config "$CONFIG" --worker "$WORKER" --workers "$WORKERS" --device cuda:0

# The array's last task (by index) waits for the others' manifests, then merges.
if [[ "$WORKER" -eq $((WORKERS - 1)) ]]; then
    CACHE=$(sed -n 's/^out *= *"\(.*\)"/\1/p' "$CONFIG" | head -1)
    until "$TAIDCACHE" merge "$CACHE"; do
        echo "waiting for the other workers of $CACHE ..." >&2
        sleep 60
    done
fi
