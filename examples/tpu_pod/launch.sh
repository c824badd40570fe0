#!/usr/bin/env bash
# Run an optax_lambc example on every worker of a Cloud TPU VM pod slice.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b ./examples/tpu_pod/launch.sh \
#       cifar10 --workdir gs://my-bucket/runs/c10 --set data_dir=gs://my-bucket/tfds
#
# Every worker runs the same command; jax.distributed.initialize() finds the
# coordinator and the process ids from the TPU metadata by itself.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO=${REPO:-https://github.com/your-org/optax_lambc.git}
BRANCH=${BRANCH:-main}
ARGS=$(printf ' %q' "$@")

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
  --command "set -e
    if [ ! -d optax_lambc ]; then git clone -b $BRANCH $REPO optax_lambc; fi
    cd optax_lambc && git pull -q
    python3 -m pip install -q -U 'jax[tpu]' -e '.[examples]'
    python3 -m examples.main$ARGS"
