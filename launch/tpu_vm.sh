#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: the same command on every worker (gcloud ssh --worker=all).
#   launch/tpu_vm.sh TPU_NAME ZONE configs/simclr_cifar10.py /mnt/shared/vj/simclr [--config.field=value ...]
#   launch/tpu_vm.sh --dry_run TPU_NAME ZONE CONFIG WORKDIR ...   # print the gcloud command only
# Each worker must hold this repository at $REPO (default: vision_jax in the home folder) with its environment
# installed (its python first on the PATH, or set $PYTHON). jax.distributed.initialize finds the
# workers itself on a TPU VM (--distributed). A maintenance event or preemption sends SIGTERM:
# the workers agree on a step, save it and exit with code 75; rerun this command to resume. The
# workdir must be a folder every worker mounts (NFS/Filestore, or a bucket through gcsfuse).
set -euo pipefail
dry_run=false
if [[ ${1:-} == --dry_run ]]; then dry_run=true; shift; fi
usage="usage: launch/tpu_vm.sh [--dry_run] TPU_NAME ZONE CONFIG WORKDIR [--config.field=value ...]"
tpu=${1:?$usage}
zone=${2:?$usage}
config=${3:?$usage}
workdir=${4:?$usage}
shift 4
source "$(dirname "$0")/common.sh"
remote="cd $(quote "${REPO:-vision_jax}") && $(quote "${PYTHON:-python}" -m vision_jax.train --config="$config" \
  --workdir="$workdir" --distributed "$@")"
command=(gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$remote")
if $dry_run; then
  quote "${command[@]}"
else
  exec "${command[@]}"
fi
