#!/usr/bin/env bash
# One device call's worth of CPU benchmarks on a lent GPU machine, whose CPU has AMX: the peer
# harness in three lanes of two cores with the quickstart beside it and gpu_check.sh on the spare
# cores (`lanes`, about 7 minutes), or the allocator comparison (with a profiled step of each
# setting) and the harness's ESPnet and speechforge bf16 rows one job at a time (`alone`, about 6
# minutes). Fetch the wheels here first (bash benchmarks/gpu_wheels.sh --peers) and carry .whl:
#
#   device run, carry [".whl"], timeout 590:  bash benchmarks/amx_lease.sh lanes
#
# Everything it writes comes back as $OUT/lease.tgz (the device returns at most 8 files).
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-lanes}
start=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/speechforge-site .whl/*.whl .whl/peers/wheels/*.whl 2>&1 | grep -v WARNING
export PYTHONPATH=/tmp/speechforge-site:$PWD PYTHONUNBUFFERED=1
out=/tmp/lease-$mode
mkdir -p $out
{ lscpu | grep -i 'model name\|^CPU(s)\|Thread\|L3'; grep -o 'amx_bf16\|avx512_bf16' /proc/cpuinfo | sort -u | xargs;
  python3 -c 'import torch; print("torch", torch.__version__)'; git log --oneline -1; uptime; } 2>&1 | tee $out/machine.txt
case $mode in
  lanes)
    timeout 555 python3 benchmarks/lanes.py --peers $PWD/.whl/peers --out $out --lanes 3 --deadline 300 --quickstart \
      --alongside "OMP_NUM_THREADS=2 bash benchmarks/gpu_check.sh --json $out/gpu_check.json" 2>&1 | tee $out/lanes.txt
    grep -h 'CER\|precision\|wall' $out/quickstart.out 2>/dev/null | tail -n 12
    tail -n 12 $out/alongside.log ;;
  alone)
    CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=2 timeout 300 taskset -c 0,1 python3 benchmarks/allocator_speed.py \
      --spec $PWD/.whl/peers/spec.json --rounds 2 --steps 2 --profile 25 2>&1 | tee $out/allocator.txt
    timeout 250 python3 benchmarks/lanes.py --peers $PWD/.whl/peers --out $out --lanes 1 --rounds 1 --deadline 100 2>&1 \
      | tee $out/lanes.txt ;;
  *) echo "usage: $0 lanes|alone" >&2; exit 2 ;;
esac
tar czf $OUT/lease.tgz --exclude=checkpoints --exclude='*.pt' -C /tmp "lease-$mode"
echo "total $(( $(date +%s) - start )) s"
