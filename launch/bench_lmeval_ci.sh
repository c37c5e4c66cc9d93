#!/usr/bin/env bash
# What the `lmeval` extra adds to CI (.ci/run): installing lm-eval 0.4.13 into a fresh venv that already
# holds the packages proxy_jax brings anyway (numpy, scipy, tqdm, jinja2, pyyaml: installed first, not
# timed), from PyPI without pip's cache; then the time of tests/test_lm_eval.py, fast default and slow tests.
#   bash launch/bench_lmeval_ci.sh          # from the repository root, the project's venv active
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip
"$tmp/venv/bin/pip" install -q numpy scipy tqdm jinja2 pyyaml typing_extensions
start=$(date +%s)
"$tmp/venv/bin/pip" install -q --no-cache-dir 'lm-eval==0.4.13'
echo "pip install lm-eval==0.4.13 (fresh venv, no cache): $(( $(date +%s) - start )) s"
if "$tmp/venv/bin/python" -c "import torch" 2>/dev/null; then echo "torch was installed"; else echo "no torch"; fi
rm -rf "$tmp"
for marks in "not slow" "slow"; do
  start=$(date +%s)
  python -m pytest -q -p no:xdist tests/test_lm_eval.py -m "$marks" | tail -1
  echo "tests/test_lm_eval.py -m '$marks': $(( $(date +%s) - start )) s"
done
