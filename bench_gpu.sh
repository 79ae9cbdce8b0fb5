#!/usr/bin/env bash
# The GPU measurements of the README, in one call (about 7 minutes on one H100/H200): the sampler tests on
# CUDA, a tiny end-to-end run of all six stages on CUDA, then bench.py for SmolLM2-135M's shape at the old
# batches and at GPU batches, the CUDA-graph sampler against the plain one, and SmolLM2-1.7B's
# shape for memory (--compile is left out: on an H200 its warm-up did not end within 150 s). Random weights of the real shapes: speed and memory do not depend on
# the weights, and the GGUF file need not travel. One JSON line per measurement, in bench_gpu.jsonl.
set -u
PY=${PYTHON:-python3}
LOG=${OUT:-.}/bench_gpu.jsonl
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
step() { local t=$1; shift; echo; echo "=== $* ==="; local s=$(date +%s); timeout "$t" "$@"; echo "--- rc $? in $(( $(date +%s) - s ))s"; }
bench() { local t=$1; shift; step "$t" $PY bench.py "$@" 2> >(grep -v Warning >&2) | tee -a "$LOG"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
step 150 $PY -m pytest -q -x -p no:cacheprovider tests/test_models.py -k "static_cache or sampl or mixture or transform"
$PY -c "import sys; sys.path.insert(0, 'tests'); from conftest import build_tiny; build_tiny('/tmp/tiny')"
step 150 env PYTHON=$PY bash run.sh --budget tiny --run gpu_tiny --model /tmp/tiny --device cuda --ipo
: > "$LOG"
S=(--shape smollm2-135m)
bench 90 sft rm dpo ppo "${S[@]}" --batch 8 --eager-sampling                  # the old GPU batches and sampler
bench 120 sft rm dpo "${S[@]}" --batch 64 --prompt-len 64 --response-len 128   # GPU batches
bench 60 sft "${S[@]}" --batch 128 --prompt-len 64 --response-len 128
bench 90 ppo "${S[@]}" --batch 64 --new-tokens 128 --minibatch 16              # target: <= 5 s an iteration
bench 90 ppo "${S[@]}" --batch 64 --new-tokens 128 --minibatch 16 --eager-sampling
bench 150 dpo ppo --shape smollm2-1.7b --batch 8 --prompt-len 64 --response-len 128 --new-tokens 128 --grad-checkpointing
echo; echo "=== summary ==="
$PY - "$LOG" <<'PYEOF'
import json, sys
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    speed = (f"{r['tokens_per_s']:,.0f} tok/s" if "tokens_per_s" in r else
             f"iter {r['iteration_s']:.2f}s gen {r['generation_s']:.2f}s {r['sampling_ms_per_token_step']:.1f}ms/tok {r['sampler']}")
    print(f"{r['bench']:4} {r['model']:13} B={r['batch']:<3} compile={int(r['compile'])} ckpt={int(r['grad_checkpointing'])} "
          f"{speed}  {100 * r['fraction_of_matmul_rate']:.1f}% of {r['matmul_gflops'] / 1e3:.0f} TFLOP/s  peak {r['peak_mem_mb'] / 1024:.1f} GiB")
PYEOF
