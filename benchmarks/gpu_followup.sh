#!/usr/bin/env bash
# What the first GPU run owes beyond ../shared/gpu-check/run.sh (about 5 minutes on an H200):
#
#   1 graphs    pytest tests/test_cuda_graphs.py: --cuda-graphs captured for real (triton and cuda
#               backends, dense, STU-GAN, bf16) and compared with eager              -> graphs.log
#   2 train     gan.train SNGAN width 0.5, 60 iterations, dense and static G 0.1 / D 0.2 (32x32
#               blocks, all layers), each eager and with --cuda-graphs: steady-state s/iteration
#               (iterations 31-60, from log.csv)                                     -> train.txt
#   3 synccheck compute-sanitizer --tool synccheck on gpu_check/sanitize_small.py --backends cuda
#               (run.sh runs memcheck and racecheck, not synccheck: the new cp.async loop's
#               barriers)                                                            -> synccheck.log
#
# Run from the repository root after run.sh installed the package (or after
# `pip install --no-build-isolation --no-deps -e .`), with gpu_check/ copied in as run.sh says:
#     bash benchmarks/gpu_followup.sh            # results in $OUT (or ./gpu_followup_out)
set -u
ROOT="$PWD"
if [[ ! -f "$ROOT/setup.py" || ! -d "$ROOT/gan" ]]; then
  echo "gpu_followup.sh: run me from the sparsekit repository root" >&2
  exit 2
fi
PY=python3
OUT="${OUT:-$ROOT/gpu_followup_out}"
mkdir -p "$OUT"
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_followup.sh: torch sees no CUDA device; nothing here can run without one" >&2
  exit 2
fi
unset TRITON_INTERPRET SPARSEKIT_BACKEND SPARSEKIT_CUDA_MMA

echo "== 1 --cuda-graphs against eager (pytest)"
timeout 150 $PY -m pytest -q tests/test_cuda_graphs.py -p no:cacheprovider >"$OUT/graphs.log" 2>&1
echo "rc $?: $(grep -E 'passed|failed|error' "$OUT/graphs.log" | tail -1)"

echo "== 2 SNGAN iterations, eager vs --cuda-graphs"
: >"$OUT/train.txt"
common=(--device cuda --model sngan --width 0.5 --steps 60 --log-every 30 --metrics ""
        --sample-every 1000 --ckpt-every 1000 --block 32x32 --sparse-layers all)
for method in "dense" "static --g-density 0.1 --d-density 0.2"; do
  for graphs in "" "--cuda-graphs"; do
    name="${method%% *}${graphs:+-graphs}"
    # shellcheck disable=SC2086  # $method and $graphs are word lists on purpose
    timeout 120 $PY -m gan.train --method $method $graphs "${common[@]}" \
      --out "$OUT/run-$name" >"$OUT/run-$name.log" 2>&1
    rc=$?
    $PY - "$OUT/run-$name/log.csv" "$name" "$rc" >>"$OUT/train.txt" <<'EOF'
import csv, sys
path, name, rc = sys.argv[1:]
try:
    rows = {int(r["iteration"]): float(r["sec_per_iter"]) for r in csv.DictReader(open(path))}
    steady = (rows[60] * 60 - rows[30] * 30) / 30
    print(f"{name:16s} rc {rc}: {steady * 1000:7.1f} ms/iteration (iterations 31-60)")
except (OSError, KeyError, ValueError) as e:
    print(f"{name:16s} rc {rc}: no timing ({type(e).__name__}: {e})")
EOF
  done
done
cat "$OUT/train.txt"

echo "== 3 compute-sanitizer synccheck (cuda backend)"
CS="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
if [[ -x "$CS" && -f gpu_check/sanitize_small.py ]]; then
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 120 "$CS" --tool synccheck --print-limit 30 \
    $PY gpu_check/sanitize_small.py --backends cuda >"$OUT/synccheck.log" 2>&1
  echo "rc $?: $(grep -E 'ERROR SUMMARY' "$OUT/synccheck.log" | tail -1)"
else
  echo "skipped: no compute-sanitizer or no gpu_check/ (copy ../shared/gpu-check in, as run.sh says)"
fi
