#!/usr/bin/env bash
# Run HERE (a machine with apt), before a device call: the lent GPU machines cannot reach any package
# registry and lack some -dev packages, so their files travel unpacked in .gpu-deps/root (git-ignored; name
# it in the device tool's `carry`). tools/gpu_check.sh picks it up.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(nlohmann-json3-dev libgtest-dev googletest libopenblas-dev libopenblas-pthread-dev libopenblas0-pthread
          libpng-dev libpng16-16 zlib1g-dev libgfortran5 libjpeg62-turbo-dev libjpeg62-turbo)
rm -rf .gpu-deps && mkdir -p .gpu-deps/debs .gpu-deps/root
(cd .gpu-deps/debs && apt-get download "${packages[@]}")
for deb in .gpu-deps/debs/*.deb; do dpkg -x "$deb" .gpu-deps/root; done
# Debian points libopenblas.so through update-alternatives, which dpkg -x does not run.
lib=.gpu-deps/root/usr/lib/x86_64-linux-gnu
ln -sf openblas-pthread/libopenblas.so.0 "$lib/libopenblas.so.0"
ln -sf openblas-pthread/libopenblas.so "$lib/libopenblas.so"
ln -sf openblas-pthread/cblas.h .gpu-deps/root/usr/include/x86_64-linux-gnu/cblas.h 2>/dev/null || true
# OpenBLAS static archive, LAPACK and sources are not needed to link the shared build: the carry limit is 64 MiB.
rm -rf .gpu-deps/debs .gpu-deps/root/usr/share/doc .gpu-deps/root/usr/share/man .gpu-deps/root/usr/src
rm -f "$lib"/openblas-pthread/*.a
rm -f "$lib"/openblas-pthread/liblapack*
du -sh .gpu-deps
