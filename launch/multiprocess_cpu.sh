#!/usr/bin/env bash
# N processes on this machine, joined by jax.distributed with gloo CPU collectives: the same code
# path as a multi-host GPU/TPU run (each process feeds its slice of every global batch).
#   launch/multiprocess_cpu.sh 2 configs/simclr_digits.py:runlocal /tmp/vision_jax/mp [overrides...]
set -euo pipefail
num=${1:?usage: launch/multiprocess_cpu.sh NUM_PROCESSES CONFIG WORKDIR [overrides...]}
config=${2:?usage}
workdir=${3:?usage}
shift 3
port=${PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((i = 0; i < num; i++)); do
  JAX_PLATFORMS=cpu python -m vision_jax.train --config="$config" --workdir="$workdir" \
    --coordinator_address="localhost:$port" --num_processes="$num" --process_id="$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
