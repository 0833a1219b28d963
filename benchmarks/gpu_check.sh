#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): install, then train and decode the bpe5k_ctc model
# in fp32 and bf16 on one GPU. At most about 8 minutes; `--quick` is the CPU smoke test.
#
#   bash benchmarks/gpu_check.sh [--quick] [--json FILE]
#
# The lent GPU machines have torch, accelerate, numpy and sentencepiece but reach no package
# registry: speechforge installs there without dependencies, and the few packages it
# lacks travel as wheels in .whl/ (fetched here by benchmarks/gpu_wheels.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
# `import speechforge` alone succeeds from the checkout without its dependencies: test one that needs them
if ! "$py" -c "import speechforge.recipe, jiwer" 2>/dev/null; then
  if [ -d .whl ]; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/speechforge-site .whl/*.whl
    export PYTHONPATH=/tmp/speechforge-site${PYTHONPATH:+:$PYTHONPATH}
  fi
  "$py" -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
missing=$("$py" -c "
import importlib.util as u
print(' '.join(m for m in ('torch', 'numpy', 'pydantic', 'catalogue', 'sentencepiece', 'jiwer', 'accelerate') if u.find_spec(m) is None))")
if [ -n "$missing" ]; then
  echo "gpu_check: missing Python packages: $missing (fetch them here with benchmarks/gpu_wheels.sh and carry .whl/)" >&2
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 480 "$py" benchmarks/gpu_check.py "$@"
