#!/usr/bin/env bash
# One device call on the lent H200: the steps named on the command line, each under its own
# timeout, logs under $OUT/work (tarred into $OUT/logs.tgz at the end: the device returns at most
# 8 files), JSON results copied to $OUT, a short summary printed last.
#
#   tools/h200_session.sh [dgbuild] [smoke] [tests] [sanitize[:NAMES]] [explore] [bench-wgrad] [bench-gemm]
#                         [bench-grouped] [fuzz] [quant] [explore-wgrad] [explore-wgrad-mc] [c-example]   (bg:STEP ... wait: STEP runs beside the next steps)
#
# dgbuild builds DeepGEMM from .deepgemm (git-ignored; carried) in the background; the bench
# steps that use it wait for the build. FP8GEMM_COMMIT names the commit in the JSON records.
set -u
OUT=${OUT:-/tmp/out}
W=$OUT/work
mkdir -p "$W"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
LOG=$W/summary.txt
say() { echo "$*" | tee -a "$LOG" >> "$OUT/summary.txt"; echo "$*"; }
state() { nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.draw,temperature.gpu --format=csv,noheader; }
say "start $(date -u +%T) commit ${FP8GEMM_COMMIT:-?} gpu: $(state)"
DG=$PWD/.deepgemm
# DeepGEMM's _C extension segfaults at import beside this torch unless the system libstdc++ is
# loaded first (seen on the H200, 2026-12-03): the steps that load it get it preloaded.
STDCXX=/lib/x86_64-linux-gnu/libstdc++.so.6
dg_env() { [ -f "$STDCXX" ] && echo "LD_PRELOAD=$STDCXX"; }
dg_wait() {
  [ -n "${DG_PID:-}" ] && { wait "$DG_PID"; DG_PID=; cp "$DG"/deep_gemm/_C*.so "$OUT"/ 2>/dev/null; }
  ls "$DG"/deep_gemm/_C*.so >/dev/null 2>&1
}
# A built extension (and DeepGEMM's JIT cache) come back in $OUT so that a later call can
# carry them and skip the build: copy them into .deepgemm here before that call.
dg_keep() {
  [ -d "$DG/.jit-cache" ] && tar czf "$OUT/dg-jit-cache.tgz" -C "$DG" .jit-cache 2>/dev/null
}
BG_PIDS=()
run_step() {
  local step=$1 t0
  t0=$(date +%s)
  case $step in
    dgbuild)
      if ls "$DG"/deep_gemm/_C*.so >/dev/null 2>&1; then say "dgbuild: carried extension"; return; fi
      (cd "$DG" && timeout 300 python3 setup.py build_ext --inplace -j 16 > "$W/dgbuild.log" 2>&1) &
      DG_PID=$!
      return ;;
    smoke)
      FP8GEMM_DEBUG=1 timeout 150 python3 tools/bringup_smoke.py > "$W/smoke.log" 2>&1
      rc=$?; say "smoke rc=$rc"; grep -E "^[a-z0-9_]+ +(rel|FAILED)" "$W/smoke.log" | tee -a "$LOG"
      [ $rc = 0 ] || { say "smoke failed: skipping the remaining steps"; tail -30 "$W/smoke.log" | tee -a "$LOG"; return 1; } ;;
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
      # forced tiles around the heuristic's picks, interleaved per shape (issue 10, levers 1 and 6)
      E="timeout 150 python3 tools/explore_configs.py --rounds 3"
      NK="2112x7168 24576x1536 32768x512 7168x16384 4096x7168 7168x2048 7168x576"
      shapes() { local m=$1 s=""; for nk in $NK; do s="$s${s:+,}${m}x$nk"; done; echo "$s"; }
      $E --shapes "$(shapes 8)" --tiles 16x16,16x32,16x56,16x64,16x96,16x128,16x192 \
        --json "$W/explore-m8.json" > "$W/explore.log" 2>&1; say "explore m8 rc=$?"
      $E --shapes "$(shapes 64),$(shapes 128)" \
        --tiles 64x32,64x56,64x64,64x112,64x128,64x192,128x56,128x64,128x96,128x128 \
        --json "$W/explore-m64-128.json" >> "$W/explore.log" 2>&1; say "explore m64/128 rc=$?"
      $E --shapes 4096x2112x7168 --tiles 128x176,128x192,256x64,256x88,256x96 --multicast off,a \
        --json "$W/explore-4096x2112.json" >> "$W/explore.log" 2>&1; say "explore 4096x2112 rc=$?"
      python3 - "$W" > "$OUT/explore.json" <<'PY'
import json, pathlib, sys
print(json.dumps({p.stem: json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob("explore-*.json"))}))
PY
      python3 - "$OUT/explore.json" <<'PY' | tee -a "$LOG"
import json, sys
for part, rows in json.load(open(sys.argv[1])).items():
    shapes = {}
    for r in rows:
        shapes.setdefault((r["m"], r["n"], r["k"]), []).append(r)
    for (m, n, k), rs in shapes.items():
        best = max(rs, key=lambda r: r["tflops"])
        heur = next(r for r in rs if r["config"].startswith("heuristic:"))
        print(f"{m}x{n}x{k}: best {best['config'].split(':')[-1]} {best['tflops']:.1f}  "
              f"heuristic {heur['config'].split(':')[-1]} {heur['tflops']:.1f} ({heur['tflops'] / best['tflops']:.3f})")
PY
      ;;
    explore-wgrad)
      # forced wgrad tiles, and one tile through the variants that lead to it (what each step costs)
      E="timeout 200 python3 tools/explore_configs.py --rounds 3"
      $E --variant wgrad --shapes 16384x7168x4096,2048x7168x8192,7168x4096x8192,7168x2112x4096 \
        --tiles 64x96,64x128,64x160,128x96,128x104,128x112,128x128,128x144,128x160 \
        --json "$W/explore-wgrad.json" > "$W/explore-wgrad.log" 2>&1; say "explore wgrad rc=$?"
      $E --variant wgrad --reduce-out both --shapes 16384x7168x4096,2048x7168x8192,7168x4096x8192,7168x2112x4096 \
        --tiles 128x112,128x152,128x160 --json "$W/explore-wgrad-reduce.json" >> "$W/explore-wgrad.log" 2>&1
      say "explore wgrad reduce-add rc=$?"
      for v in bf16 fp32 fp32_c wgrad; do
        $E --variant $v --shapes 16384x7168x4096 --tiles 128x128,128x104 --json "$W/explore-variant-$v.json" \
          >> "$W/explore-wgrad.log" 2>&1; say "explore $v rc=$?"
      done
      grep -E "^ +[0-9]" "$W/explore-wgrad.log" | tee -a "$LOG"
      python3 - "$W" > "$OUT/explore-wgrad.json" <<'PY'
import json, pathlib, sys
print(json.dumps({p.stem: json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob("explore-*.json"))}))
PY
      ;;
    explore-wgrad-mc)
      # 2-CTA clusters on the reduce-add wgrad tiles: multicast of A (+ its scales) or B (+ its row scales)
      timeout 200 python3 tools/explore_configs.py --rounds 3 --variant wgrad --reduce-out only \
        --shapes 16384x7168x4096,2048x7168x8192,7168x4096x8192,7168x2112x4096,512x32768x8192,1536x24576x4096 \
        --tiles 128x152,128x136 --multicast off,a,b --json "$OUT/explore-wgrad-mc.json" > "$W/explore-wgrad-mc.log" 2>&1
      say "explore wgrad multicast rc=$?"; grep -E "^ +[0-9]" "$W/explore-wgrad-mc.log" | tee -a "$LOG" ;;
    c-example)
      # the README's embedding path: export a bundle, build the C runtime and example, run it
      (cd examples/c && timeout 120 make run BUNDLE=/tmp/fp8gemm-bundle PYTHON=python3) > "$OUT/c-example.txt" 2>&1
      say "c-example rc=$?"; tail -12 "$OUT/c-example.txt" | tee -a "$LOG" ;;
    bench-wgrad)
      dg_wait && D="--deepgemm $DG" || { D=""; say "DeepGEMM not built: $(tail -3 "$W/dgbuild.log")"; }
      env $(dg_env) timeout 420 python3 -m fp8gemm.bench wgrad $D --json "$OUT/bench-wgrad.json" > "$W/bench-wgrad.log" 2>&1
      say "bench-wgrad rc=$?"; grep -E "geomean|worst|^ *[0-9G]" "$W/bench-wgrad.log" | tail -24 | tee -a "$LOG" ;;
    bench-gemm)
      dg_wait && D="--deepgemm $DG" || D=""
      env $(dg_env) timeout 540 python3 -m fp8gemm.bench gemm --decode $D --json "$OUT/bench-gemm.json" > "$W/bench-gemm.log" 2>&1
      say "bench-gemm rc=$?"; grep -E "geomean|agree" "$W/bench-gemm.log" | tee -a "$LOG" ;;
    bench-grouped)
      dg_wait && D="--deepgemm $DG" || D=""
      env $(dg_env) timeout 540 python3 -m fp8gemm.bench grouped --set legacy $D --json "$OUT/bench-grouped.json" \
        > "$W/bench-grouped.log" 2>&1
      say "bench-grouped rc=$?"; grep -E "geomean|agree" "$W/bench-grouped.log" | tee -a "$LOG" ;;
    fuzz)
      timeout 150 python3 -m fp8gemm.fuzz --seed "${FUZZ_SEED:-5}" --budget-s "${FUZZ_BUDGET_S:-120}" --json "$OUT/fuzz.json" > "$W/fuzz.log" 2>&1
      say "fuzz rc=$? $(tail -1 "$W/fuzz.log")" ;;
    quant)
      timeout 200 python3 -m fp8gemm.bench quant --json "$OUT/bench-quant.json" > "$W/quant.log" 2>&1
      say "quant rc=$?"; tail -12 "$W/quant.log" | tee -a "$LOG" ;;
    wait) wait "${BG_PIDS[@]}"; BG_PIDS=() ;;
    *) say "unknown step $step" ;;
  esac
  say "[$step: $(( $(date +%s) - t0 )) s] gpu: $(state)"
}
# bg:STEP runs STEP beside the next ones (correctness steps only: never beside a timing step)
# until a 'wait' step; a failed smoke step stops the session.
for step in "$@"; do
  if [ "${step#bg:}" != "$step" ]; then
    run_step "${step#bg:}" & BG_PIDS+=($!)
  else
    run_step "$step" || break
  fi
done
wait
dg_keep
tar czf "$OUT/logs.tgz" -C "$OUT" work
say "end $(date -u +%T)"
