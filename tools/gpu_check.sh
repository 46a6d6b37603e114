#!/usr/bin/env bash
# make gpu-check: on a lent GPU machine, probe the CUDA libraries, build there, run every GPU test,
# compute-sanitizer (memcheck, racecheck) on the tiny-config forward, and `mfuser bench --device cuda` on a
# random real-size checkpoint, and one timed training step (`bench --train`); prints a short table last. Meant to finish inside ~8 minutes on 16 cores.
# Prerequisite where apt is unreachable: tools/gpu_bundle.sh run on the dev machine, .gpu-deps carried.
# Environment: BUILD_DIR (build-gpu), OUT (where logs go; /tmp), GPU_CHECK_SKIP="bench train sanitizer" to skip
# stages, GPU_TESTS (a ctest -R regex, default: every GPU test), SANITIZER_TEST / SANITIZER_TOOLS (below).
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-gpu}
out=${OUT:-/tmp}
log=$out/gpu-check.log
skip=${GPU_CHECK_SKIP:-}
exec > >(tee "$log") 2>&1
t0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t0 )) s"; }

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || echo "nvidia-smi failed"
nvcc --version | tail -1
py=$(command -v python3)
echo "python3: $py ($("$py" -c 'import torch; print("torch", torch.__version__)' 2>&1 | tail -1))"
echo "== where the CUDA libraries are"
site=$("$py" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)
for lib in cublas cublasLt cudnn nccl; do
  toolkit=$(ls /usr/local/cuda/lib64/lib$lib.so* 2>/dev/null | head -1)
  pip=$(for s in $site; do ls $s/nvidia/*/lib/lib$lib.so* 2>/dev/null; done | head -1)
  printf '  %-9s toolkit: %-50s pip: %s\n' "$lib" "${toolkit:-none}" "${pip:-none}"
done

if [ -d .gpu-deps/root ]; then
  deps=$PWD/.gpu-deps/root
  export CMAKE_PREFIX_PATH=$deps/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
  export LD_LIBRARY_PATH=$deps/usr/lib/x86_64-linux-gnu:$deps/usr/lib/x86_64-linux-gnu/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export CPATH=$deps/usr/include:$deps/usr/include/x86_64-linux-gnu${CPATH:+:$CPATH}
fi
# pip wheels ship cuBLAS/cuDNN/NCCL with versioned sonames only: the loader must find them at run time too.
for s in $site; do for d in $s/nvidia/*/lib; do [ -d "$d" ] && LD_LIBRARY_PATH=$d:$LD_LIBRARY_PATH; done; done
export LD_LIBRARY_PATH

echo "== build ($(elapsed))"
start=$(date +%s)
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMFUSER_TORCH_PYTHON="$py" ${CMAKE_ARGS:-} > "$out/cmake.log" 2>&1 &&
  cmake --build "$build" -j "$(nproc)" > "$out/build.log" 2>&1
build_rc=$?
grep -E "error|mfuser:" "$out/cmake.log" "$out/build.log" | head -40
echo "build: rc $build_rc in $(( $(date +%s) - start )) s"
[ "$build_rc" -eq 0 ] || { tail -30 "$out/build.log"; exit 1; }
"$build"/mfuser devices

echo "== GPU tests ($(elapsed))"
# The CPU reference inside each GPU test uses the cores; four tests at a time share them.
OMP_NUM_THREADS=4 ctest --test-dir "$build" -L gpu ${GPU_TESTS:+-R "$GPU_TESTS"} -V -j 4 \
  --timeout 240 -O "$out/ctest-full.log" > "$out/ctest.log" 2>&1
test_rc=$?
echo "whole-model errors (CUDA vs CPU reference):"
grep -E "\[ errors   \] (tiny|ViT-L)|\[ nodes" "$out/ctest-full.log"
grep -E "Test +#|tests passed|\[ errors|\[ nodes|FAILED|Failure|error:" "$out/ctest.log" | grep -v "^\s*$" | tail -150

bench_rc=skipped
if [[ " $skip " != *" bench "* ]]; then
  echo "== bench ($(elapsed))"
  model=/tmp/mfuser-bench-vitl-512
  "$build"/mfuser init --config tools/configs/mfuser_clip_vitl_512.json --out $model --force > /dev/null &&
    timeout ${BENCH_TIMEOUT:-240} "$build"/mfuser bench --weights $model/model.safetensors --device cuda --runs 10 --top 14 \
      > "$out/bench.log" 2>&1
  bench_rc=$?
  cat "$out/bench.log"
fi

train_rc=skipped
if [[ " $skip " != *" train "* ]]; then
  echo "== bench --train ($(elapsed))"
  model=/tmp/mfuser-bench-vitl-512
  [ -f $model/model.safetensors ] ||
    "$build"/mfuser init --config tools/configs/mfuser_clip_vitl_512.json --out $model --force > /dev/null
  timeout ${TRAIN_BENCH_TIMEOUT:-200} "$build"/mfuser bench --weights $model/model.safetensors --device cuda --train \
    --runs 3 --oracle-runs 1 --top 14 > "$out/bench-train.log" 2>&1
  train_rc=$?
  cat "$out/bench-train.log"
fi

sanitizer_rc=skipped
if [[ " $skip " != *" sanitizer "* ]]; then
  # SANITIZER_TEST: test binary:gtest filter (default the tiny forward); SANITIZER_TOOLS: which tools.
  sanitized=${SANITIZER_TEST:-mfuser_cuda_test:MfuserCuda.TinyForwardMatchesCpu}
  echo "== compute-sanitizer on $sanitized ($(elapsed))"
  sanitizer_rc=0
  for tool in ${SANITIZER_TOOLS:-memcheck racecheck}; do
    MFUSER_GOLDEN_DIR=$PWD/$build/tests/golden MFUSER_SOURCE_DIR=$PWD OMP_NUM_THREADS=16 \
      timeout ${SANITIZER_TIMEOUT:-120} compute-sanitizer --tool $tool --error-exitcode 9 \
      "$build/tests/${sanitized%%:*}" --gtest_filter="${sanitized#*:}" > "$out/sanitizer-$tool.log" 2>&1
    rc=$?
    echo "  $tool: rc $rc ($(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$out/sanitizer-$tool.log" | tail -1))"
    [ $rc -eq 0 ] || { sanitizer_rc=$rc; grep -m 20 -E "=========" "$out/sanitizer-$tool.log"; }
  done
fi

echo
echo "== summary ($(date -u +%F), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1), commit $(git rev-parse --short HEAD 2>/dev/null || echo no-git), $(elapsed))"
printf '| %-32s | %-8s | %8s |\n' test result seconds
printf '|%s|%s|%s|\n' ---------------------------------- ---------- ----------
grep -E '^ *[0-9]+/[0-9]+ Test +#' "$out/ctest.log" | sed -E 's/.*Test +#[0-9]+: ([^ ]+) [.* ]*([A-Za-z*]+[A-Za-z ]*[A-Za-z]) +([0-9.]+) sec.*/\1 \2 \3/' |
  while read -r name result secs; do printf '| %-32s | %-8s | %8s |\n' "$name" "$result" "$secs"; done
echo "compute-sanitizer: $sanitizer_rc   bench: $bench_rc   bench --train: $train_rc   ctest: $test_rc"
[ "$test_rc" -eq 0 ] && [ "$sanitizer_rc" = 0 -o "$sanitizer_rc" = skipped ] && [ "$bench_rc" = 0 -o "$bench_rc" = skipped ] &&
  [ "$train_rc" = 0 -o "$train_rc" = skipped ]
