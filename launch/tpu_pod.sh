#!/usr/bin/env bash
# Train on every host of a Cloud TPU pod slice: the same command runs on all workers.
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/proxy_tokens.py:1.5b gs://bucket/runs/pt-1.5b [--config.k=v ...]
#
# WORKDIR may be a bucket (gs://...: the [gcs] extra, installed below) or a folder every host shares.
# Each host installs the checkout it is given, joins jax.distributed (coordinator found from the TPU
# metadata), reads its own slice of the documents (process_index::process_count) and writes its Grain
# iterator state into the shared Orbax checkpoint. Re-running the command resumes.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG[:PRESET] WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
repo=${PROXY_JAX_REPO:-https://github.com/proxy-jax/proxy_jax}
ref=${PROXY_JAX_REF:-main}
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  set -e
  [ -d proxy_jax ] || git clone -q '$repo' proxy_jax
  cd proxy_jax && git fetch -q origin '$ref' && git checkout -q FETCH_HEAD
  python3 -m pip install -q -e '.[gcs]' 'jax[tpu]'
  python3 -m proxy_jax.main --multihost --config='$config' --workdir='$workdir' $*
"
