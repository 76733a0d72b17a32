#!/bin/bash
# One sweep worker per array task (one GPU each). All workers share the study in PostgreSQL and
# the MLflow tracking server; the grid is split between them by Optuna.
#   1. once:   mlflow run . -e sweep --env-manager local -P mode=setup -P study=grid1 <grid params>
#   2. then:   sbatch docs/deploy/slurm-sweep.sh
#SBATCH --job-name=widedeep-sweep
#SBATCH --array=0-7
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=2-00:00:00
set -euo pipefail
source .venv/bin/activate
export MLFLOW_TRACKING_URI=http://127.0.0.1:5000          # or the address of your tracking server
export WIDEDEEP_OPTUNA_STORAGE=postgresql+psycopg2://widedeep@127.0.0.1:5432/optuna   # password: ~/.pgpass
export WIDEDEEP_CACHE_DIR=/shared/widedeep-cache          # shared, so a retried cell resumes its checkpoint
mlflow run . -e sweep --env-manager local -P study=grid1 \
  -P depths=20,56,110 -P widths=1,2,4,8,10 -P seeds=0,1,2,3,4,5,6,7,8,9 -P data_fractions=1,0.25 -P preset=paper
