#!/usr/bin/env bash
# One device call on the lent H200: the steps named on the command line, each under its own
# timeout, logs under $OUT/work (tarred into $OUT/logs.tgz at the end: the device returns at most
# 8 files), JSON results copied to $OUT, a short summary printed last.
#
#   tools/h200_session.sh [dgbuild] [smoke] [tests] [sanitize[:NAMES]] [explore] [bench-wgrad] [bench-gemm]
#                         [bench-grouped] [fuzz] [quant]
#
# dgbuild builds DeepGEMM from .deepgemm (git-ignored; carried) in the background; the bench
# steps that use it wait for the build. FP8GEMM_COMMIT names the commit in the JSON records.
set -u
OUT=${OUT:-/tmp/out}
W=$OUT/work
mkdir -p "$W"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
LOG=$W/summary.txt
say() { echo "$*" | tee -a "$LOG"; }
state() { nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.draw,temperature.gpu --format=csv,noheader; }
say "start $(date -u +%T) commit ${FP8GEMM_COMMIT:-?} gpu: $(state)"
DG=$PWD/.deepgemm
dg_wait() {
  [ -n "${DG_PID:-}" ] && wait "$DG_PID"
  ls "$DG"/deep_gemm/_C*.so >/dev/null 2>&1
}
for step in "$@"; do
  t0=$(date +%s)
  case $step in
    dgbuild)
      (cd "$DG" && timeout 300 python3 setup.py build_ext --inplace -j 16 > "$W/dgbuild.log" 2>&1) &
      DG_PID=$!
      continue ;;
    smoke)
      FP8GEMM_DEBUG=1 timeout 150 python3 tools/bringup_smoke.py > "$W/smoke.log" 2>&1
      rc=$?; say "smoke rc=$rc"; grep -E "^[a-z0-9_]+ +(rel|FAILED)" "$W/smoke.log" | tee -a "$LOG"
      [ $rc = 0 ] || { say "smoke failed: skipping the remaining steps"; tail -30 "$W/smoke.log" | tee -a "$LOG"; break; } ;;
    tests)
      timeout 420 python3 -m pytest -q -m gpu tests -n 8 -p no:cacheprovider -rfEs > "$W/tests.log" 2>&1
      say "tests rc=$? $(tail -1 "$W/tests.log")"
      grep -E "^(FAILED|ERROR)" "$W/tests.log" | head -20 | tee -a "$LOG" ;;
    sanitize*)
      only=${step#sanitize}; only=${only#:}
      timeout 400 python3 -m fp8gemm.sanitize --tools memcheck,racecheck,synccheck ${only:+--only "$only"} \
        --json "$OUT/sanitize.json" --timeout 360 > "$W/sanitize.log" 2>&1
      say "sanitize rc=$?"; tail -30 "$W/sanitize.log" | tee -a "$LOG" ;;
    explore)
      E="timeout 90 python3 tools/explore_configs.py --rounds 3"
      $E --shapes 1x2112x7168,8x2112x7168,16x4096x7168,8x7168x16384,32x4096x7168,16x7168x2048 \
        --tiles 16x16x16,16x32x16,16x64x16,16x128x12,32x32x16,32x64x16,64x32,64x64 --json "$W/explore-small.json" \
        > "$W/explore.log" 2>&1
      say "explore rc=$?"; grep -v "^skip" "$W/explore.log" | tee -a "$LOG" ;;
    bench-wgrad)
      dg_wait && D="--deepgemm $DG" || { D=""; say "DeepGEMM not built: $(tail -3 "$W/dgbuild.log")"; }
      timeout 420 python3 -m fp8gemm.bench wgrad $D --json "$OUT/bench-wgrad.json" > "$W/bench-wgrad.log" 2>&1
      say "bench-wgrad rc=$?"; grep -E "geomean|worst|^ *[0-9G]" "$W/bench-wgrad.log" | tail -24 | tee -a "$LOG" ;;
    bench-gemm)
      dg_wait && D="--deepgemm $DG" || D=""
      timeout 540 python3 -m fp8gemm.bench gemm --decode $D --json "$OUT/bench-gemm.json" > "$W/bench-gemm.log" 2>&1
      say "bench-gemm rc=$?"; grep -E "geomean|agree" "$W/bench-gemm.log" | tee -a "$LOG" ;;
    bench-grouped)
      dg_wait && D="--deepgemm $DG" || D=""
      timeout 540 python3 -m fp8gemm.bench grouped --set legacy $D --json "$OUT/bench-grouped.json" \
        > "$W/bench-grouped.log" 2>&1
      say "bench-grouped rc=$?"; grep -E "geomean|agree" "$W/bench-grouped.log" | tee -a "$LOG" ;;
    fuzz)
      timeout 150 python3 -m fp8gemm.fuzz --seed 4 --budget-s 120 --json "$OUT/fuzz.json" > "$W/fuzz.log" 2>&1
      say "fuzz rc=$? $(tail -1 "$W/fuzz.log")" ;;
    quant)
      timeout 200 python3 -m fp8gemm.bench quant --json "$OUT/bench-quant.json" > "$W/quant.log" 2>&1
      say "quant rc=$?"; tail -12 "$W/quant.log" | tee -a "$LOG" ;;
    *) say "unknown step $step" ;;
  esac
  say "[$step: $(( $(date +%s) - t0 )) s] gpu: $(state)"
done
tar czf "$OUT/logs.tgz" -C "$OUT" work
say "end $(date -u +%T)"
