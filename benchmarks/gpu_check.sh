#!/usr/bin/env bash
# The GPU check of issue #32, one prepared script for a lent machine's 15 minutes: stages in priority order, each
# with a time budget, results written to OUT as they come (a stage cut short still leaves what it did).
#   1. every verb once on the device (benchmarks/gpu_verbs.py): prepare, train through the switch, SIGTERM + resume
#      against an uninterrupted run, eval, export, sample
#   2. the figures only a GPU gives (benchmarks/bench_gpu.py): 270M/600M at V = 128,256, MFU, phase ratios,
#      chunked vs full logits, float8, checkpoint blocking
#   3. tst eval vs lm-eval's HFLM on the same export and device (benchmarks/bench_eval.py)
#
#   bash benchmarks/gpu_check.sh OUT          # one H100/H200, under GPU_CHECK_BUDGET_S (default 540) seconds
#   bash benchmarks/gpu_check.sh OUT --cpu    # every stage on the CPU, tiny and short: the script's own test
# Benchmark files: ../shared/data (the layout of `tst eval --data-dir`). OUT gets at most seven files.
# A lent machine lacks lm-eval, torchao and the benchmark files: benchmarks/gpu_carry.sh prepares them, and says how
# to run this script there.
set -u
OUT=${1:?usage: gpu_check.sh OUT [--cpu]}
MODE=${2:-gpu}
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TOTAL=${GPU_CHECK_BUDGET_S:-540}
WORK=${GPU_CHECK_WORK:-$(mktemp -d -t tst-gpu-check-XXXXXX)}
mkdir -p "$OUT"
if [ "$MODE" = --cpu ]; then
  VERBS=(--device cpu --dtype fp32 --compile off --steps 40 --limit 5); VERBS_S=300
  BENCH=(--device cpu --quick --compile off --configs 270m:bf16); EVAL=(--device cpu --dtype fp32 --limit 5)
else
  VERBS=(--device cuda --dtype bf16 --compile on --steps 200 --limit 100); VERBS_S=250
  BENCH=(); EVAL=(--device cuda --dtype bf16 --limit 500)
fi
left() { echo $((TOTAL - SECONDS)); }

{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi 2>&1 | head -15
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '')"; } > "$OUT/machine.txt" 2>&1

echo "== 1. every verb once ($VERBS_S s at most)"
timeout -k 10 "$VERBS_S" "$PY" benchmarks/gpu_verbs.py --out "$OUT" --work "$WORK" "${VERBS[@]}" 2>&1 \
  | tee "$OUT/verbs.log"
verbs_rc=${PIPESTATUS[0]}

EVAL_S=90  # kept for stage 3
BENCH_S=$(( $(left) - EVAL_S - 70 ))  # bench_gpu may overrun its --budget-s by a minute (one child's timeout)
echo "== 2. bench_gpu (starts no configuration after $BENCH_S s)"
if [ "$BENCH_S" -gt 0 ]; then
  timeout -k 10 $((BENCH_S + 70)) "$PY" benchmarks/bench_gpu.py "${BENCH[@]}" --budget-s "$BENCH_S" \
    --out "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.log"
  bench_rc=${PIPESTATUS[0]}
else
  echo "skipped: no time left" | tee "$OUT/bench_gpu.log"; bench_rc=1
fi

echo "== 3. tst eval vs lm-eval HFLM ($(left) s left)"
if [ -d "$WORK/export" ] && [ "$(left)" -gt 20 ]; then
  timeout -k 10 "$(left)" "$PY" benchmarks/bench_eval.py --run "$WORK/runs/full" --export "$WORK/export" \
    --tasks hellaswag,arc_easy "${EVAL[@]}" 2>&1 | tee "$OUT/bench_eval.log"
  eval_rc=${PIPESTATUS[0]}
else
  echo "skipped: no export from stage 1, or no time left" | tee "$OUT/bench_eval.log"; eval_rc=1
fi
echo "stages: verbs rc $verbs_rc, bench_gpu rc $bench_rc, bench_eval rc $eval_rc; $SECONDS s in all" \
  | tee -a "$OUT/machine.txt"
[ -z "${GPU_CHECK_WORK:-}" ] && rm -rf "$WORK"
[ "$verbs_rc" = 0 ] && [ "$bench_rc" = 0 ] && [ "$eval_rc" = 0 ]
