// CUDA gemm and linear through cuBLASLt.
//
// Row-major to column-major: a row-major m x n matrix is the column-major n x m matrix of the same bytes, so
// C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T: cuBLASLt's "A" is our B and its "B" is our A, each
// described as stored (column-major, leading dimension = its row count) with the same transpose flag.
// Strided batches (stride 0 included: one matrix reused) map onto BATCH_COUNT / STRIDED_BATCH_OFFSET.
//
// Precision: f32 storage computes in CUBLAS_COMPUTE_32F (never TF32: its 10-bit mantissa misses the 1e-4
// bound); bf16 storage reads and writes bf16 and accumulates in f32, alpha/beta f32. linear's bias is fused
// into the epilogue (CUBLASLT_EPILOGUE_BIAS; the bias has the output's dtype, cuBLASLt's default).
//
// Algorithms: the heuristic's best algorithm is cached per problem (sizes, strides, dtype, transposes and
// the alignment of every pointer, so views at odd offsets get algorithms that accept them). When cuBLASLt
// offers nothing for a problem, the fallbacks are tried in order, once per problem, with a warning: the
// epilogue-free matmul plus a bias kernel, then classic cuBLAS (cublasGemmStridedBatchedEx) plus the kernel.
// A bias that is not 16-byte aligned always takes the bias kernel.
#include <cublasLt.h>
#include <cublas_v2.h>

#include <algorithm>
#include <climits>
#include <compare>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>

#include "kernels/common/cuda_common.cuh"
#include "kernels/gemm/gemm.h"
#include "runtime/cuda.h"
#include "runtime/log.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

// cuBLASLt's workspace, one per device: allocated on first use (the executor's first run is eager, so before
// any CUDA-graph capture) and kept for the life of the process. One stream per device orders its users.
void* workspace(int device) {
  static std::mutex mutex;
  static std::map<int, void*> workspaces;
  std::lock_guard lock(mutex);
  void*& ws = workspaces[device];
  if (!ws) ws = mfuser::cuda::allocate(kWorkspaceBytes, device);
  return ws;
}

// C = beta * C + bias[column] over `batch` rows x cols matrices `stride_c` apart. beta == 0 writes without
// reading C; bias may be null. Serves k == 0 (no products), and the bias when the epilogue cannot take it.
template <class T>
__global__ void scale_add_bias_kernel(T* c, const T* bias, int64_t rows, int64_t cols, int64_t batch,
                                      int64_t stride_c, float beta) {
  const int64_t per_matrix = rows * cols, total = per_matrix * batch;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t matrix = i / per_matrix, element = i - matrix * per_matrix;
    T* p = c + matrix * stride_c + element;
    float v = beta == 0.f ? 0.f : beta * to_float(*p);
    if (bias) v += to_float(bias[element % cols]);
    *p = from_float<T>(v);
  }
}

void scale_add_bias(DType dtype, void* c, const void* bias, int64_t rows, int64_t cols, int64_t batch,
                    int64_t stride_c, float beta, cudaStream_t stream) {
  with_storage_type("gemm", dtype, [&]<class T>() {
    constexpr int kThreads = 256;
    scale_add_bias_kernel<T><<<grid_for(rows * cols * batch, kThreads), kThreads, 0, stream>>>(
        static_cast<T*>(c), static_cast<const T*>(bias), rows, cols, batch, stride_c, beta);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

// One problem: C = alpha op(A) op(B) + beta C (+ bias[n] on every row), row-major as in gemm.h.
struct Problem {
  DType dtype;
  int device;
  GemmParams p;
  const void* a;
  const void* b;
  void* c;
  const void* bias;  // null: none
};

std::string describe(const Problem& pr) {
  const GemmParams& p = pr.p;
  return str_cat(dtype_name(pr.dtype), " m ", p.m, " n ", p.n, " k ", p.k, " trans_a ", p.trans_a, " trans_b ",
                 p.trans_b, " batch ", p.batch, " strides ", p.stride_a, "/", p.stride_b, "/", p.stride_c,
                 pr.bias ? " with bias" : "", " (A ", pr.a, ", B ", pr.b, ", C ", pr.c, ")");
}

// The largest power of two up to 16 bytes dividing the address of every matrix of the batch: cuBLASLt
// algorithms need at most 16-byte alignment, and views (e.g. q/k/v slices) can start anywhere.
uint32_t alignment(const void* ptr, int64_t stride, const Problem& pr) {
  uintptr_t bits = reinterpret_cast<uintptr_t>(ptr) | 16u;
  if (pr.p.batch > 1) bits |= uintptr_t(stride) * dtype_size(pr.dtype);
  return uint32_t(bits & (~bits + 1));  // the lowest set bit
}

// The column-major view of one operand as stored: cuBLASLt's "A" is our B, its "B" is our A.
struct Operand {
  const void* ptr;
  uint64_t rows, cols;
  int64_t stride;
  cublasOperation_t op;
};
Operand lt_a(const Problem& pr) {
  const GemmParams& p = pr.p;
  return {pr.b, uint64_t(p.trans_b ? p.k : p.n), uint64_t(p.trans_b ? p.n : p.k), p.stride_b,
          p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N};
}
Operand lt_b(const Problem& pr) {
  const GemmParams& p = pr.p;
  return {pr.a, uint64_t(p.trans_a ? p.m : p.k), uint64_t(p.trans_a ? p.k : p.m), p.stride_a,
          p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N};
}

cudaDataType_t cuda_type(DType dtype) { return dtype == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F; }

template <class Handle, auto Destroy>
struct LtDeleter {
  void operator()(Handle h) const { Destroy(h); }
};
template <class Handle, auto Destroy>
using LtPtr = std::unique_ptr<std::remove_pointer_t<Handle>, LtDeleter<Handle, Destroy>>;
using MatmulDesc = LtPtr<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy>;
using Layout = LtPtr<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy>;
using Preference = LtPtr<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy>;

template <class V>
void set(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const V& v) {
  MFUSER_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, attr, &v, sizeof(v)));
}
template <class V>
void set(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t attr, const V& v) {
  MFUSER_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, attr, &v, sizeof(v)));
}
template <class V>
void set(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, const V& v) {
  MFUSER_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &v, sizeof(v)));
}

Layout layout(const Problem& pr, uint64_t rows, uint64_t cols, int64_t stride) {
  cublasLtMatrixLayout_t raw = nullptr;
  MFUSER_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&raw, cuda_type(pr.dtype), rows, cols, int64_t(rows)));
  Layout l(raw);
  set(raw, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, int32_t(pr.p.batch));
  set(raw, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, stride);
  return l;
}

// The descriptors of one cuBLASLt call; cheap to build (host only), so they are made per call.
struct LtCall {
  MatmulDesc desc;
  Layout a, b, c;  // c describes both C and D (in place)
};

LtCall describe_lt(const Problem& pr, bool fused_bias) {
  const Operand a = lt_a(pr), b = lt_b(pr);
  cublasLtMatmulDesc_t raw = nullptr;
  MFUSER_CUBLAS_CHECK(cublasLtMatmulDescCreate(&raw, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  LtCall call{MatmulDesc(raw), layout(pr, a.rows, a.cols, a.stride), layout(pr, b.rows, b.cols, b.stride),
              layout(pr, uint64_t(pr.p.n), uint64_t(pr.p.m), pr.p.stride_c)};
  set(raw, CUBLASLT_MATMUL_DESC_TRANSA, int32_t(a.op));
  set(raw, CUBLASLT_MATMUL_DESC_TRANSB, int32_t(b.op));
  if (fused_bias) {  // the column-major D is n x m: its n rows are our columns, as the bias wants
    set(raw, CUBLASLT_MATMUL_DESC_EPILOGUE, uint32_t(CUBLASLT_EPILOGUE_BIAS));
    set(raw, CUBLASLT_MATMUL_DESC_BIAS_POINTER, pr.bias);
  }
  return call;
}

enum class Path { lt_fused_bias, lt, cublas };

struct Plan {
  Path path = Path::cublas;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
};

struct PlanKey {
  int device;
  DType dtype;
  int64_t m, n, k;
  bool trans_a, trans_b;
  int64_t batch, stride_a, stride_b, stride_c;
  uint32_t align_a, align_b, align_c, align_bias;  // align_bias 0: no bias
  auto operator<=>(const PlanKey&) const = default;
};

PlanKey key_of(const Problem& pr) {
  const GemmParams& p = pr.p;
  return {pr.device, pr.dtype, p.m, p.n, p.k, p.trans_a, p.trans_b, p.batch, p.stride_a, p.stride_b, p.stride_c,
          alignment(pr.a, p.stride_a, pr), alignment(pr.b, p.stride_b, pr), alignment(pr.c, p.stride_c, pr),
          pr.bias ? alignment(pr.bias, 0, pr) : 0u};
}

// The heuristic's best algorithm for `call` that fits the workspace and the pointers' alignment, if any.
bool find_algo(const Problem& pr, const PlanKey& key, const LtCall& call, Plan& plan) {
  cublasLtMatmulPreference_t raw = nullptr;
  MFUSER_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&raw));
  const Preference pref(raw);
  set(raw, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t(kWorkspaceBytes));
  set(raw, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_b);  // cuBLASLt's A is our B
  set(raw, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_a);
  set(raw, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_c);
  set(raw, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_c);
  constexpr int kWanted = 4;
  cublasLtMatmulHeuristicResult_t results[kWanted] = {};
  int found = 0;
  const cublasStatus_t status =
      cublasLtMatmulAlgoGetHeuristic(mfuser::cuda::context(pr.device).cublas_lt(), call.desc.get(), call.a.get(),
                                     call.b.get(), call.c.get(), call.c.get(), raw, kWanted, results, &found);
  if (status != CUBLAS_STATUS_SUCCESS) {
    log::warn("gemm: cuBLASLt heuristic for ", describe(pr), " failed: ", mfuser::cuda::cublas_status_name(status));
    return false;
  }
  for (int i = 0; i < found; ++i) {
    if (results[i].state != CUBLAS_STATUS_SUCCESS || results[i].workspaceSize > kWorkspaceBytes) continue;
    plan.algo = results[i].algo;
    plan.workspace = results[i].workspaceSize;
    return true;
  }
  return false;
}

// The cached plan of `pr`, found on first sight (the heuristic is slow; a model runs few distinct shapes).
Plan plan_for(const Problem& pr) {
  static std::mutex mutex;
  static std::map<PlanKey, Plan> plans;
  const PlanKey key = key_of(pr);
  std::lock_guard lock(mutex);
  if (auto it = plans.find(key); it != plans.end()) return it->second;
  Plan plan;
  // Only a 16-byte aligned bias goes to the epilogue: cuBLASLt has been reported to fault on less.
  if (pr.bias && key.align_bias == 16 && find_algo(pr, key, describe_lt(pr, true), plan)) {
    plan.path = Path::lt_fused_bias;
  } else if (find_algo(pr, key, describe_lt(pr, false), plan)) {
    plan.path = Path::lt;
    if (pr.bias && key.align_bias == 16)
      log::warn("gemm: no cuBLASLt bias epilogue for ", describe(pr), "; adding the bias separately");
  } else {
    plan.path = Path::cublas;
    log::warn("gemm: cuBLASLt has no algorithm for ", describe(pr), "; using cublasGemmStridedBatchedEx");
  }
  plans.emplace(key, plan);
  return plan;
}

void run_cublas(const Problem& pr) {  // the cuBLAS handle is bound to the device's stream
  const GemmParams& p = pr.p;
  const Operand a = lt_a(pr), b = lt_b(pr);
  const cudaDataType_t type = cuda_type(pr.dtype);
  const cublasStatus_t status = cublasGemmStridedBatchedEx(
      mfuser::cuda::context(pr.device).cublas(), a.op, b.op, int(p.n), int(p.m), int(p.k), &p.alpha, a.ptr, type,
      int(a.rows), a.stride, b.ptr, type, int(b.rows), b.stride, &p.beta, pr.c, type, int(p.n), p.stride_c,
      int(p.batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  MFUSER_CHECK(status == CUBLAS_STATUS_SUCCESS, "gemm: cublasGemmStridedBatchedEx failed (",
               mfuser::cuda::cublas_status_name(status), ") for ", describe(pr));
}

void run(const Problem& pr) {
  const GemmParams& p = pr.p;
  cudaStream_t stream = mfuser::cuda::context(pr.device).stream();
  if (p.m == 0 || p.n == 0) return;
  if (p.k == 0) {  // no products (BLAS refuses zero leading dims): C = beta C + bias
    scale_add_bias(pr.dtype, pr.c, pr.bias, p.m, p.n, p.batch, p.stride_c, p.beta, stream);
    return;
  }
  MFUSER_CHECK(p.batch <= INT_MAX, "gemm: batch ", p.batch, " does not fit cuBLAS's 32-bit count");
  const Plan plan = plan_for(pr);
  if (plan.path == Path::cublas) {
    run_cublas(pr);
  } else {
    const LtCall call = describe_lt(pr, plan.path == Path::lt_fused_bias);
    const Operand a = lt_a(pr), b = lt_b(pr);
    const cublasStatus_t status = cublasLtMatmul(
        mfuser::cuda::context(pr.device).cublas_lt(), call.desc.get(), &p.alpha, a.ptr, call.a.get(), b.ptr,
        call.b.get(), &p.beta, pr.c, call.c.get(), pr.c, call.c.get(), &plan.algo,
        plan.workspace ? workspace(pr.device) : nullptr, plan.workspace, stream);
    MFUSER_CHECK(status == CUBLAS_STATUS_SUCCESS, "gemm: cublasLtMatmul failed (",
                 mfuser::cuda::cublas_status_name(status), ") for ", describe(pr));
  }
  if (pr.bias && plan.path != Path::lt_fused_bias)
    scale_add_bias(pr.dtype, pr.c, pr.bias, p.m, p.n, 1, 0, 1.f, stream);
}

// ---- linear_backward's grad_bias: column sums of grad_y [rows, n], deterministic (no float atomics) ----
// Pass 1: block (x = 32 columns, y = 8 row lanes) owns 32 columns of one chunk of rows (blockIdx.y); each row
// lane sums every 8th row of the chunk, the 8 lanes meet in shared memory in a fixed order, and the chunk's
// sum lands in partial[chunk][column]. Pass 2 adds the chunks of every column in chunk order. The chunk count
// depends on the shape only, so the result is bit-identical run to run.
constexpr int kSumColumns = 32, kSumLanes = 8;
constexpr int64_t kRowsPerChunk = 256, kMaxChunks = 256;

template <class T>
__global__ void column_partial_sums_kernel(const T* g, float* partial, int64_t rows, int64_t n, int64_t chunk_rows) {
  __shared__ float lane_sums[kSumLanes][kSumColumns];
  const int64_t column = blockIdx.x * int64_t(kSumColumns) + threadIdx.x;
  const int64_t begin = blockIdx.y * chunk_rows, end = min(rows, begin + chunk_rows);
  float sum = 0.f;
  if (column < n)
    for (int64_t r = begin + threadIdx.y; r < end; r += kSumLanes) sum += to_float(g[r * n + column]);
  lane_sums[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && column < n) {
    float total = 0.f;
    for (int lane = 0; lane < kSumLanes; ++lane) total += lane_sums[lane][threadIdx.x];
    partial[blockIdx.y * n + column] = total;
  }
}

void column_sums(const Tensor& grad_y, Tensor& grad_bias) {
  const int64_t n = grad_bias.numel(), rows = n == 0 ? 0 : grad_y.numel() / n;
  if (n == 0) return;
  cudaStream_t stream = stream_of(grad_y);
  // rows == 0: one chunk of no rows writes zeros, the gradient of an empty sum.
  const int64_t chunks = std::clamp<int64_t>(ceil_div<int64_t>(rows, kRowsPerChunk), 1, kMaxChunks);
  const int64_t chunk_rows = std::max<int64_t>(1, ceil_div<int64_t>(rows, chunks));
  MFUSER_CHECK(ceil_div<int64_t>(n, kSumColumns) <= INT_MAX, "linear_backward: ", n, " columns are too many");
  Tensor partial = Tensor::empty({chunks, n}, DType::f32, grad_y.device());
  with_storage_type("linear_backward", grad_y.dtype(), [&]<class T>() {
    const dim3 grid(unsigned(ceil_div<int64_t>(n, kSumColumns)), unsigned(chunks));
    column_partial_sums_kernel<T><<<grid, dim3(kSumColumns, kSumLanes), 0, stream>>>(
        static_cast<const T*>(grad_y.raw_data()), partial.data<float>(), rows, n, chunk_rows);
    MFUSER_CUDA_CHECK_LAUNCH();
    sum_partials(partial.data<float>(), static_cast<T*>(grad_bias.raw_data()), chunks, n, stream);
  });
}

}  // namespace

void cuda::gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmParams& params) {
  check_cuda_storage("gemm", c.dtype(), {&a, &b, &c});
  run({c.dtype(), c.device().index, params, a.raw_data(), b.raw_data(), c.raw_data(), nullptr});
}

void cuda::linear(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& y) {
  check_cuda_storage("linear", y.dtype(), {&x, &weight, &bias, &y});
  const int64_t n = weight.dim(0), k = weight.dim(1), rows = n == 0 ? 0 : y.numel() / n;
  const GemmParams p{.m = rows, .n = n, .k = k, .trans_b = true};
  run({y.dtype(), y.device().index, p, x.raw_data(), weight.raw_data(), y.raw_data(),
       bias.defined() ? bias.raw_data() : nullptr});
}

void cuda::linear_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_y, Tensor& grad_x,
                           Tensor& grad_weight, Tensor& grad_bias) {
  check_cuda_storage("linear_backward", grad_y.dtype(), {&x, &weight, &grad_y, &grad_x, &grad_weight, &grad_bias});
  const int64_t n = weight.dim(0), k = weight.dim(1), rows = n == 0 ? 0 : grad_y.numel() / n;
  // As on the CPU: rows (or n) == 0 makes the gemms' k 0, which writes zeros (the gradient of an empty sum).
  if (grad_x.defined()) cuda::gemm(grad_y, weight, grad_x, {.m = rows, .n = k, .k = n});
  if (grad_weight.defined()) cuda::gemm(grad_y, x, grad_weight, {.m = n, .n = k, .k = rows, .trans_a = true});
  if (grad_bias.defined()) column_sums(grad_y, grad_bias);
}

}  // namespace mfuser::kernels
