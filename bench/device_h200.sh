#!/usr/bin/env bash
# The one GPU script (issue 16): run on a lent H200 through the device tool, from the repository root, with the
# wheels the GPU image lacks carried in .whl/ (diffusers, torchattacks, importlib_metadata). Each benchmark has its
# own time limit so the whole script ends within ~8 minutes; results go to $OUT (and bench/results/ when copied back).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results/h200}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
LOG="$OUT/log.txt"   # one log: the device tool returns at most 8 files
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOG"
python3 -c "import torch, accelerate, diffusers; print('torch', torch.__version__, 'accelerate', accelerate.__version__, 'diffusers', diffusers.__version__)" | tee -a "$LOG"
run() { local name=$1 limit=$2; shift 2; echo "== $name (limit ${limit}s)" | tee -a "$LOG"; local t0=$(date +%s)
        timeout "$limit" "$@" > /tmp/bench_$name.log 2>&1; local rc=$?; cat /tmp/bench_$name.log >> "$LOG"
        echo "$name: rc $rc in $(( $(date +%s) - t0 )) s" | tee -a "$LOG"; tail -n 20 /tmp/bench_$name.log; }
run fit_resnet50 150 python3 bench/bench_fit.py --device cuda --model resnet50 --batch 64 --steps 20 --repeats 3 --budget-s 120 --out "$OUT/fit_cuda_resnet50.json"
run fit_wrn 60 python3 bench/bench_fit.py --device cuda --model wrn-16-2 --batch 128 --steps 30 --repeats 3 --budget-s 45 --variants fp32,bf16,bf16+channels_last --out "$OUT/fit_cuda_wrn-16-2.json"
run pgd 70 python3 bench/bench_pgd.py --device cuda --models small_cnn --batch 256 --steps 100 --repeats 3 --out "$OUT/pgd_cuda_small_cnn.json"
run scfe 60 python3 bench/bench_scfe.py --device cuda --n 256 --steps 50 --search-steps 2 --n-seq 64 --repeats 3 --tau 0.004 --out "$OUT/scfe_cuda.json"
run diffusion 70 python3 bench/bench_diffusion.py --device cuda --batch 256 --steps 25 --repeats 3 --train-steps 20 --train-batch 128 --out "$OUT/diffusion_cuda.json"
run paper_cost 90 python3 bench/bench_paper_cost.py --device cuda --out "$OUT/paper_cost_h200.json"
ls -la "$OUT"
