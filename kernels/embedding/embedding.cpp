// CPU reference of embedding (a row gather), and the device dispatch (CUDA: embedding.cu).
#include "kernels/embedding/embedding.h"

#include <algorithm>
#include <vector>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

void check_args(const Tensor& ids, const Tensor& table, const Tensor& out) {
  MFUSER_CHECK(ids.dtype() == DType::i64, "embedding: ids ", ids.str(), ": must be i64");
  check_float("embedding", "table", table);
  MFUSER_CHECK(table.ndim() == 2, "embedding: table ", table.str(), ": must be [V, D]");
  MFUSER_CHECK(ids.ndim() < kMaxDims, "embedding: ids ", ids.str(), ": at most ", kMaxDims - 1, " dims");
  std::vector<int64_t> expected(ids.shape().dims().begin(), ids.shape().dims().end());
  expected.push_back(table.dim(1));
  MFUSER_CHECK(out.dtype() == table.dtype() && out.shape() == Shape(expected), "embedding: ids ", ids.str(),
               " into table ", table.str(), ": out must be ", dtype_name(table.dtype()), " ", Shape(expected).str(),
               ", got ", out.str());
  MFUSER_CHECK(ids.device() == table.device() && table.device() == out.device(), "embedding: ids ", ids.str(),
               ", table ", table.str(), ", out ", out.str(), ": devices differ");
}

}  // namespace

void cpu::embedding(const Tensor& ids, const Tensor& table, Tensor& out) {
  check_args(ids, table, out);
  MFUSER_CHECK(ids.device().is_cpu(), "embedding: the CPU reference got device tensors ", ids.str());
  const int64_t* id = ids.data<int64_t>();
  const int64_t vocab = table.dim(0), width = table.dim(1);
  // Validate every id before writing anything, so a bad id leaves out untouched.
  for (int64_t i = 0; i < ids.numel(); ++i)
    MFUSER_CHECK(id[i] >= 0 && id[i] < vocab, "embedding: id ", id[i], " at flat position ", i,
                 " of ids ", ids.str(), " is outside the table's ", vocab, " rows");
  const float* rows = table.data<float>();
  float* po = out.data<float>();
  parallel_for(ids.numel(), std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(width, 1)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t i = begin; i < end; ++i)
                   std::copy_n(rows + id[i] * width, width, po + i * width);
               });
}

void embedding(const Tensor& ids, const Tensor& table, Tensor& out) {
  check_args(ids, table, out);
  if (ids.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::embedding(ids, table, out));
  cpu::embedding(ids, table, out);
}

}  // namespace mfuser::kernels
