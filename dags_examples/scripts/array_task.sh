#!/bin/bash
# One task of the array: read input.txt, square the line of this task, write out_<id>.txt.
set -euo pipefail
i=${SLURM_ARRAY_TASK_ID:-0}
value=$(sed -n "$((i + 1))p" input.txt)
echo "task $i of job {{ ti.task_id }}: $value squared"
echo $((value * value)) > "out_${i}.txt"
