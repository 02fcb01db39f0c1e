#!/usr/bin/env bash
# Workers of one automl study as a Slurm job array: 8 tasks, one GPU each.
# Create the study once first (on a login node or in its own job):
#
#   python -m automl search --space search_spaces/mnist_cnn.yaml --workers 0 \
#       --storage "$AUTOML_STORAGE" --tracking-uri "$AUTOML_TRACKING_URI" --data-dir "$DATA_DIR"
#
# then: sbatch deploy/slurm-workers.sh   (with AUTOML_STORAGE etc. exported)
#SBATCH --job-name=automl-workers
#SBATCH --array=0-7
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=08:00:00
#SBATCH --output=automl-worker-%A_%a.log
set -euo pipefail

: "${AUTOML_STORAGE:?export AUTOML_STORAGE=postgresql://user:password@host:5432/optuna}"
: "${AUTOML_TRACKING_URI:?export AUTOML_TRACKING_URI=http://mlflow-host:5000}"
STUDY=${STUDY:-mnist_cnn}
DATA_DIR=${DATA_DIR:-$HOME/data}

# Slurm sets CUDA_VISIBLE_DEVICES to the task's GPU
exec python -m automl worker --study "$STUDY" --storage "$AUTOML_STORAGE" \
    --tracking-uri "$AUTOML_TRACKING_URI" --data-dir "$DATA_DIR" --device cuda \
    --threads "${SLURM_CPUS_PER_TASK:-8}" --worker-index "${SLURM_ARRAY_TASK_ID:-0}" --retry-failed 1
