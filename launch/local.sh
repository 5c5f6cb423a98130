#!/usr/bin/env bash
# Train a recipe on this machine (all local devices), then print its results table.
#   launch/local.sh configs/simclr_digits.py /tmp/vision_jax/simclr_digits [--config.field=value ...]
# Rerun the same command to resume from the latest checkpoint.
set -euo pipefail
config=${1:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}
workdir=${2:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}
shift 2
exec python -m vision_jax.train --config="$config" --workdir="$workdir" "$@"
