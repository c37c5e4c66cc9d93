#!/usr/bin/env bash
# Train on GPUs: one process per node, all local GPUs in the mesh.
#
# One node:    launch/gpu.sh configs/proxy_tokens.py:small /tmp/pt-small
# SLURM:       srun --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 launch/gpu.sh CONFIG WORKDIR
#              (jax.distributed reads the coordinator and process ids from SLURM's environment)
# Other:       JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i launch/gpu.sh ...
#
# cuDNN flash attention: add --config.model.attention=cudnn.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG[:PRESET] WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
multihost=()
if [ -n "${SLURM_NTASKS:-}" ] && [ "${SLURM_NTASKS}" -gt 1 ] || [ -n "${JAX_NUM_PROCESSES:-}" ]; then
  multihost=(--multihost)
fi
# Let XLA overlap collectives with compute and keep the allocator from pre-grabbing all memory twice.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
exec python3 -m proxy_jax.main "${multihost[@]}" --config="$config" --workdir="$workdir" "$@"
