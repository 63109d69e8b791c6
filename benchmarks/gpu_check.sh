#!/usr/bin/env bash
# One prepared GPU check (run on a CUDA machine from the repo root; see README "GPU check"):
# the CUDA tests, a short bf16 MiniLM chain on MRPC with the on-device sample buffer, and the
# step-time benchmark in fp32 and bf16. Where the machine has no registry access, carry wheels in
# .whl/ and a MiniLM folder + GLUE copy in .device_carry/ (both git-ignored).
set -uo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
MODEL=${MODEL:-$PWD/.device_carry/minilm}
DATA=${DATA:-$PWD/.device_carry/data}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, peft, lightning; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'lightning', lightning.__version__)"
echo "== CUDA tests"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_samplers.py -k "cuda or gpu or bf16" 2>&1 | tail -4
echo "== MiniLM SGLD chain on MRPC, bf16-mixed, on-device sample buffer"
start=$(date +%s)
python3 -m bayesian_lora.train model=minilm model.name_or_path="$MODEL" data=mrpc sampler=sgld \
  trainer=gpu paths.data_dir="$DATA" sampler.warmup.steps=300 sampler.burn_in=50 sampler.thin=10 \
  sampler.num_samples=10 hydra.run.dir="$OUT/chain" trainer.enable_progress_bar=false > "$OUT/chain.log" 2>&1
echo "exit $? after $(( $(date +%s) - start )) s"; grep -A12 "^test metrics" "$OUT/chain.log"
python3 -c "import json; m=json.load(open('$OUT/chain/manifest.json')); print('kept', m['num_samples'], 'steps', m['steps'], 'dtypes', set(m['dtypes'].values()))"
echo "== step time, fp32 and bf16 (batch 32, length 128)"
for prec in 32 bf16; do
  python3 benchmarks/step_time.py --model minilm --name-or-path "$MODEL" --device cuda \
    --precision $prec --batch-size 32 --length 128 --steps 10 --repeats 5 2>&1 | grep -E "^\||^model"
done
echo "== causal LM (tiny_causal, SmolLM2 if its package is installed): CUDA tests, step time bf16"
python3 -m pytest -q -p no:cacheprovider tests/test_causal.py -k "cuda or bf16 or smollm2" 2>&1 | tail -3
python3 benchmarks/step_time.py --model smollm2 --device cuda --precision bf16 --batch-size 8 \
  --length 256 --steps 10 --repeats 5 2>&1 | grep -E "^\||^model"
