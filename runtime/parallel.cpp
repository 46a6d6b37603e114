#include "runtime/parallel.h"

#include <cblas.h>

namespace mfuser {

int num_threads() { return omp_get_max_threads(); }

SerialBlasScope::SerialBlasScope() : previous_(openblas_get_num_threads()) { openblas_set_num_threads(1); }

SerialBlasScope::~SerialBlasScope() { openblas_set_num_threads(previous_); }

void set_num_threads(int n) {
  if (n < 1) n = 1;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

}  // namespace mfuser
