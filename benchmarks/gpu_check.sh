#!/usr/bin/env bash
# Issue 14's GPU checks in one run, for a machine with a CUDA GPU and a short lease (its rehearsal
# on the CPU, GPU_CHECK_DEVICE=cpu, takes 2 minutes on 2 cores). With the device tool, from the
# repository root:
#
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
#
# .whl/ (ignored by git) holds the wheels the GPU image lacks, for its Python 3.12: `make gpu-wheels`
# downloads them. Steps, each under its own time limit, each log's tail printed and the whole
# log written under $OUT (the device tool brings back what is there):
#   1. tests/test_cuda.py: merges and every tier's candidates on the GPU equal the CPU's;
#      the merge engine's and the disk tier's own tests with CUDA present;
#   2. benchmarks/candidate_materialize.py --device cuda: one candidate written on the GPU;
#   3. benchmarks/lora_merge.py --device cuda --quick: LoRA merges with ΔW on the GPU;
#   4. benchmarks/search_scale.py --small --device cuda: per-tier trial times (device, host with
#      pinned overlapped copies, disk) and peak RSS.
# GPU_CHECK_DEVICE=cpu runs the same steps on the CPU (to check this script where there is no GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
device=${GPU_CHECK_DEVICE:-cuda}
out=${OUT:-benchmarks/_work/gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_RECYCLE_TEST_GPU="$device"
python=${PYTHON:-python3}
if [ -d .whl ] && ! "$python" -c "import optuna, datasets, evaluate" 2>/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/hf-recycle-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/hf-recycle-site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

failed=0
step() {
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*"
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - start)) s"
  tail -n 30 "$out/$name.log"
  [ "$rc" = 0 ] || failed=1
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
} | tee "$out/machine.txt"

step tests 240 "$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py \
  tests/merge/test_merge_engine.py tests/merge/test_read_ahead.py tests/search/test_streamed.py \
  tests/search/test_host_tier.py
step candidate_materialize 120 "$python" benchmarks/candidate_materialize.py --device "$device"
step lora_merge 120 "$python" benchmarks/lora_merge.py --device "$device" --quick
step search_scale 300 "$python" benchmarks/search_scale.py --small --device "$device" --trials 3
for name in candidate_materialize lora_merge search_scale; do
  [ -f "benchmarks/$name.json" ] && cp "benchmarks/$name.json" "$out/"
done
echo "== gpu_check: $([ "$failed" = 0 ] && echo all steps passed || echo SOME STEPS FAILED); logs in $out"
exit "$failed"
