#!/usr/bin/env bash
# Train on N GPU hosts without a scheduler: run this on every host, with the same coordinator
# (host 0's address and a free port) and each host's own index.
#   host 0:  launch/gpu_multihost.sh 10.0.0.1:1234 2 0 configs/simclr_cifar10.py /shared/vj/simclr [--config.field=value ...]
#   host 1:  launch/gpu_multihost.sh 10.0.0.1:1234 2 1 configs/simclr_cifar10.py /shared/vj/simclr [--config.field=value ...]
#   launch/gpu_multihost.sh --dry_run ...   # print the command only
# Each process drives all GPUs of its host. SIGTERM, SIGINT or SIGUSR1 to any process makes all of
# them save the same step and exit with code 75; rerun the same commands to resume. The workdir
# must be on a filesystem every host sees. Python: $PYTHON, or `python` on the PATH.
set -euo pipefail
dry_run=false
if [[ ${1:-} == --dry_run ]]; then dry_run=true; shift; fi
usage="usage: launch/gpu_multihost.sh [--dry_run] COORDINATOR_HOST:PORT NUM_HOSTS HOST_INDEX CONFIG WORKDIR [--config.field=value ...]"
coordinator=${1:?$usage}
num_hosts=${2:?$usage}
host_index=${3:?$usage}
config=${4:?$usage}
workdir=${5:?$usage}
shift 5
command=("${PYTHON:-python}" -m vision_jax.train --config="$config" --workdir="$workdir"
  --coordinator_address="$coordinator" --num_processes="$num_hosts" --process_id="$host_index" "$@")
if $dry_run; then
  source "$(dirname "$0")/common.sh"
  quote "${command[@]}"
else
  exec "${command[@]}"
fi
