// CPU parallelism for the reference kernels: OpenMP underneath, one place to set the thread count.
// OpenBLAS keeps its own pool; `set_num_threads` sets both so a benchmark compares like with like.
#pragma once

#include <omp.h>

#include <cstdint>

namespace mfuser {

int num_threads();
void set_num_threads(int n);

// Makes OpenBLAS single-threaded for its lifetime. For kernels that run many small GEMMs from inside
// parallel_for: one BLAS pool inside another oversubscribes the cores and is several times slower.
// The setting is process-wide: two host threads running graphs at once (data-parallel ranks as threads, in
// tests) must run with set_num_threads(1), or one thread's scope resizes OpenBLAS's pool under the other's
// GEMM.
class SerialBlasScope {
 public:
  SerialBlasScope();
  ~SerialBlasScope();
  SerialBlasScope(const SerialBlasScope&) = delete;
  SerialBlasScope& operator=(const SerialBlasScope&) = delete;

 private:
  int previous_;
};

// Runs body(begin, end) over [0, n) split into contiguous chunks, one per thread; serial when n < grain.
template <class Body>
void parallel_for(int64_t n, int64_t grain, const Body& body) {
  if (n <= 0) return;
  if (n < grain || num_threads() == 1) {
    body(int64_t(0), n);
    return;
  }
#pragma omp parallel
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t begin = n * t / nt, end = n * (t + 1) / nt;
    if (begin < end) body(begin, end);
  }
}

}  // namespace mfuser
