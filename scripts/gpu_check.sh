#!/usr/bin/env bash
# Every GPU measurement of BENCHMARKS.md in one go, for a session that has a CUDA device.
#
#   bash scripts/gpu_check.sh [OUT_DIR]        # default OUT_DIR: ${OUT:-gpu-results}
#
# About 6-8 minutes on one H100. Each step has its own timeout and the whole run a budget
# (GPU_CHECK_BUDGET_S, default 540 s: under the device tool's 10-minute command limit); a step that fails or
# times out is reported and the next one runs; steps are ordered by importance. Writes OUT_DIR/*.json and OUT_DIR/*.log, and prints a summary at the end:
#
#   1. the gpu-marked tests;
#   2. MNIST-FC (84,060 params, 784-100-50-10 ReLU) on a 55k-sample evaluation set, plain Simpson, strict
#      fp32 (TF32 off): floor / lca compute / naive, pairs/s (target >= 300 pairs/s), with one 55k chunk
#      and with the default 1,024-sample chunks, plus the prefetch / background-writer ablations;
#   3. ResNet-20 (273,066 params) on 45k CIFAR-shaped samples, strict fp32: s/pair over a few pairs,
#      extrapolated to 4,500 pairs (target < 30 minutes);
#   4. TF32 on vs off on ResNet-20 (speed, and the residuals it costs);
#   5. two points in one torch.func.vmap pass vs separately (small MLP, MNIST-FC), to decide batching on GPU;
#   6. --compile on MNIST-FC;
#   7. one library gradient vs one floor gradient, alternated (MNIST-FC, 55k samples, 1,024-sample chunks);
#   8. scaling: lca compute with 1 process against torchrun with one process per GPU (2 per GPU on a
#      one-GPU machine: what sharing a GPU gives) and cooperating processes, MNIST-FC on 55k samples;
#   9. the model-size sweep of issue 26 (scripts/bench_sizes.py): ReLU MLPs of GPU_SIZES parameters (default
#      16M,64M; add 256M on a card with room: memory per parameter decides what fits) on a barely-moving run,
#      lca compute (default options) against a minimal Simpson script: time per gradient, peak host RSS and
#      peak allocated device memory, gradients per pair. Runs second, after the tests.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu-results}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python}"
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi

START=$(date +%s)
BUDGET="${GPU_CHECK_BUDGET_S:-540}"

step() {  # step NAME TIMEOUT_S CMD...: run, log, never abort the script
    local name="$1" limit="$2"
    shift 2
    local left=$((BUDGET - ($(date +%s) - START)))
    if [ "$left" -lt 30 ]; then
        echo "== $name skipped: budget spent" | tee -a "$OUT_DIR/summary.log"
        return
    fi
    [ "$limit" -le "$left" ] || limit="$left"
    echo "== $name ($(date +%T), limit ${limit}s)" | tee -a "$OUT_DIR/summary.log"
    timeout "$limit" "$@" >"$OUT_DIR/$name.out" 2>"$OUT_DIR/$name.log"
    local rc=$?
    tail -n 12 "$OUT_DIR/$name.out" | tee -a "$OUT_DIR/summary.log"
    [ "$rc" -eq 0 ] || echo "   -> $name exited $rc (see $OUT_DIR/$name.log)" | tee -a "$OUT_DIR/summary.log"
}

{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
    nproc
} 2>&1 | tee "$OUT_DIR/machine.txt"

B="$PY scripts/bench.py --device cuda --no-peak"

step gpu_tests 90 "$PY" -m pytest -q -m gpu tests
# 9. (second: issue 26) the model-size sweep; fresh children, one at a time; no lock on a machine of its own
step model_sizes 180 "$PY" scripts/bench_sizes.py --device cuda --sizes "${GPU_SIZES:-16M,64M}" --rounds 1 \
    --threads 8 --lock none --json "$OUT_DIR/model_sizes.json"
# 2. MNIST-FC, 55k samples: one chunk (what a GPU wants), then the default chunk size
step mnist55k_one_chunk 150 $B --sizes mnist_fc --samples 55000 --batch-size 55000 --pairs 600 --rounds 3 \
    --kinds floor,compute,naive,compute-noprefetch,compute-syncwrite --json "$OUT_DIR/mnist55k_one_chunk.json"
step mnist55k_chunk1024 90 $B --sizes mnist_fc --samples 55000 --batch-size 1024 --pairs 200 --rounds 2 \
    --kinds floor,compute --json "$OUT_DIR/mnist55k_chunk1024.json"
# 3. ResNet-20, 45k samples, strict fp32; extrapolated below
step resnet45k 150 $B --sizes resnet20 --samples 45000 --batch-size 2500 --pairs 12 --rounds 1 \
    --kinds floor,compute --json "$OUT_DIR/resnet45k.json"
# 4. TF32 allowed (faster, less accurate): compare s/pair and the residuals with step 3
step resnet45k_tf32 100 $B --sizes resnet20 --samples 45000 --batch-size 2500 --pairs 12 --rounds 1 \
    --kinds compute --compute-options '{"allow_tf32": true}' --json "$OUT_DIR/resnet45k_tf32.json"
# 5. batching two points with vmap
step vmap 60 $B --vmap-check --sizes small,mnist_fc --samples 55000 --batch-size 55000
# 6. torch.compile
step mnist55k_compile 120 $B --sizes mnist_fc --samples 55000 --batch-size 55000 --pairs 300 --rounds 1 \
    --kinds compute --compute-options '{"compile": true}' --json "$OUT_DIR/mnist55k_compile.json"
# 7. the library's gradient against the floor's, alternated (float64 accumulation on the device)
step per_gradient 40 $B --per-gradient --sizes mnist_fc --samples 55000 --batch-size 1024 --rounds 20
# 8. scaling over processes (torchrun: cuda:LOCAL_RANK each; NGPU >= 2 gives one GPU per process)
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
NPROC=$(( NGPU >= 2 ? NGPU : 2 ))
step scaling 150 "$PY" scripts/bench.py --scaling --device cuda --processes "$NPROC" --sizes mnist_fc \
    --samples 55000 --batch-size 55000 --pairs 600 --rounds 1 --json "$OUT_DIR/scaling.json"

"$PY" - "$OUT_DIR" <<'PY' | tee -a "$OUT_DIR/summary.log"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])

def summary(name):
    p = out / f"{name}.json"
    return json.loads(p.read_text())["summary"][0] if p.exists() else None

print("\n== summary")
for name in ("mnist55k_one_chunk", "mnist55k_chunk1024", "mnist55k_compile"):
    s = summary(name)
    if s:
        pps = s.get("compute_pairs_per_s", float("nan"))
        ratios = {k: round(v, 3) for k, v in s.items() if k.startswith("compute_over") or k.endswith("_over_compute")}
        print(f"{name}: {pps:.0f} pairs/s (target >= 300: {'PASS' if pps >= 300 else 'FAIL'}), {ratios}")
for name in ("resnet45k", "resnet45k_tf32"):
    s = summary(name)
    if s:
        per_pair = s["compute_s_per_pair"]
        minutes = 4500 * per_pair / 60
        verdict = "PASS" if minutes < 30 else "FAIL"
        print(f"{name}: {per_pair:.3f} s/pair -> 4,500 pairs in {minutes:.1f} min (target < 30: {verdict}), "
              f"max |residual| {s.get('max_abs_residual', float('nan')):.2e}")
scaling = out / "scaling.json"
for row in json.loads(scaling.read_text())["scaling"] if scaling.exists() else []:
    print(f"scaling {row['size']} {row['kind']}: {row['pairs_per_s']:.1f} pairs/s in the loop "
          f"({row['over_1x1']:.2f}x one process), {row['wall_pairs_per_s']:.1f} with start-up")
PY
echo "results in $OUT_DIR"
