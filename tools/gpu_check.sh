#!/usr/bin/env bash
# make gpu-check: on a lent GPU machine, probe the CUDA libraries, build there, run every GPU test, print a
# short table last. Meant to finish well inside 8 minutes on 16 cores.
# Prerequisite where apt is unreachable: tools/gpu_bundle.sh run on the dev machine, .gpu-deps carried.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-gpu}
log=${OUT:-/tmp}/gpu-check.log
exec > >(tee "$log") 2>&1

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || echo "nvidia-smi failed"
nvcc --version | tail -1
echo "== where the CUDA libraries are"
py=$(command -v python3)
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

echo "== build"
start=$(date +%s)
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-} >/dev/null && cmake --build "$build" -j "$(nproc)" 2>&1 | tail -5
build_rc=${PIPESTATUS[0]}
echo "build: rc $build_rc in $(( $(date +%s) - start )) s"
[ "$build_rc" -eq 0 ] || exit 1
"$build"/mfuser devices

echo "== GPU tests"
ctest --test-dir "$build" -L gpu --output-on-failure -j 4 --timeout 300 | tee "$log.ctest"
test_rc=${PIPESTATUS[0]}

echo
echo "== summary ($(date -u +%F), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1), $(git rev-parse --short HEAD 2>/dev/null || echo no-git))"
printf '| %-28s | %-8s | %8s |\n' test result seconds
printf '|%s|%s|%s|\n' ------------------------------ ---------- ----------
grep -E '^ *[0-9]+/[0-9]+ Test +#' "$log.ctest" | sed -E 's/.*Test +#[0-9]+: ([^ ]+) [.* ]*([A-Za-z]+) +([0-9.]+) sec.*/\1 \2 \3/' |
  while read -r name result secs; do printf '| %-28s | %-8s | %8s |\n' "$name" "$result" "$secs"; done
exit "$test_rc"
