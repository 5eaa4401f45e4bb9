#!/bin/bash
# Tokenize a recipe's corpus with a SLURM job array, then merge once every task has succeeded.
#   examples/slurm-prepare.sh RECIPE [TASKS]        (TASKS defaults to 64; one CPU and one tokenizer thread each)
# Each task is `tst prepare RECIPE --worker I --workers TASKS`; a failed or killed task keeps its finished units:
# re-submit the array (or the one task) and the work goes on. The merge job writes manifest.json.
set -euo pipefail
recipe=${1:?usage: slurm-prepare.sh RECIPE [TASKS]}
tasks=${2:-64}
array=$(sbatch --parsable --array="0-$((tasks - 1))" --cpus-per-task=1 --job-name=tst-prepare \
  --wrap="TOKENIZERS_PARALLELISM=false tst prepare '$recipe' --worker \$SLURM_ARRAY_TASK_ID --workers $tasks")
sbatch --parsable --dependency="afterok:${array%%;*}" --job-name=tst-merge \
  --wrap="tst prepare '$recipe' --workers $tasks --merge"
