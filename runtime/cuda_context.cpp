// CUDA build of runtime/cuda.h and runtime/cuda_context.h.
#include "runtime/cuda_context.h"

#include <memory>
#include <utility>
#include <vector>

#include "runtime/cuda_check.h"
#ifdef MFUSER_HAVE_NVTX
#include <nvtx3/nvToolsExt.h>
#endif
#include "runtime/log.h"

namespace mfuser::cuda {

void throw_error(const char* what, const char* call, const char* file, int line) {
  throw Error(str_cat("CUDA error: ", what, " in ", call, " at ", file, ":", line, op_suffix()));
}

const char* cublas_status_name(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "unknown cuBLAS status";
}

bool built_with_cuda() { return true; }

namespace {

struct Probe {
  int count = 0;
  std::string reason;
};

const Probe& probe() {
  static const Probe result = [] {
    Probe p;
    const cudaError_t err = cudaGetDeviceCount(&p.count);
    if (err != cudaSuccess) {
      p.count = 0;
      p.reason = str_cat("no CUDA device: ", cudaGetErrorString(err));
      cudaGetLastError();  // clear the sticky status so later calls are not poisoned
    } else if (p.count == 0) {
      p.reason = "no CUDA device: the driver reports 0 devices";
    }
    return p;
  }();
  return result;
}

void require_device(int device) {
  MFUSER_CHECK(available(), "CUDA requested but ", unavailable_reason(), op_suffix());
  MFUSER_CHECK(device >= 0 && device < device_count(), "CUDA device ", device, " does not exist (", device_count(),
               " present)");
}

}  // namespace

bool available() { return probe().count > 0; }
std::string unavailable_reason() { return probe().reason; }
int device_count() { return probe().count; }

DeviceInfo device_info(int device) {
  require_device(device);
  cudaDeviceProp prop{};
  MFUSER_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return {prop.name, prop.major, prop.minor, prop.multiProcessorCount, prop.totalGlobalMem};
}

// ---- allocator ------------------------------------------------------------------------------------------

size_t CachingAllocator::round_up(size_t bytes) {
  // 512-byte granularity keeps every block aligned for vector loads; big blocks round to 2 MiB so that
  // slightly different sizes share cache entries.
  const size_t granule = bytes >= (size_t(1) << 24) ? (size_t(1) << 21) : 512;
  return (bytes + granule - 1) / granule * granule;
}

CachingAllocator::~CachingAllocator() {
  empty_cache();
}

void* CachingAllocator::take(Blocks& pool, size_t size) {
  const auto it = pool.find(size);
  if (it == pool.end()) return nullptr;
  void* ptr = it->second;
  pool.erase(it);
  return ptr;
}

void* CachingAllocator::allocate(size_t bytes) {
  const size_t size = round_up(bytes ? bytes : 1);
  std::lock_guard lock(mutex_);
  void* ptr = capturing_ ? take(capture_blocks_, size) : nullptr;
  if (!ptr) ptr = take(free_blocks_, size);
  if (!ptr) {
    cudaError_t err = cudaMalloc(&ptr, size);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      for (auto& [s, p] : free_blocks_) {
        cudaFree(p);
        stats_.reserved -= s;
      }
      free_blocks_.clear();
      err = cudaMalloc(&ptr, size);
    }
    if (err != cudaSuccess) {
      cudaGetLastError();
      throw Error(str_cat("CUDA out of memory on device ", device_, ": requested ", size, " bytes with ",
                          stats_.in_use, " in use (peak ", stats_.peak, ", reserved ", stats_.reserved, "): ",
                          cudaGetErrorString(err), op_suffix()));
    }
    stats_.reserved += size;
  }
  live_blocks_.emplace(ptr, size);
  stats_.in_use += size;
  stats_.peak = std::max(stats_.peak, stats_.in_use);
  return ptr;
}

void CachingAllocator::release(void* ptr) {
  if (!ptr) return;
  std::lock_guard lock(mutex_);
  auto it = live_blocks_.find(ptr);
  if (it == live_blocks_.end()) {
    log::error("CachingAllocator: release of unknown pointer ", ptr);
    return;
  }
  stats_.in_use -= it->second;
  (capturing_ ? capture_blocks_ : free_blocks_).emplace(it->second, ptr);
  live_blocks_.erase(it);
}

void CachingAllocator::begin_capture() {
  std::lock_guard lock(mutex_);
  capturing_ = true;
}

CachingAllocator::Blocks CachingAllocator::end_capture() {
  std::lock_guard lock(mutex_);
  capturing_ = false;
  return std::exchange(capture_blocks_, {});
}

void CachingAllocator::adopt(Blocks&& blocks) {
  std::lock_guard lock(mutex_);
  free_blocks_.merge(blocks);
}

void CachingAllocator::empty_cache() {
  std::lock_guard lock(mutex_);
  for (auto& [size, ptr] : free_blocks_) {
    cudaFree(ptr);
    stats_.reserved -= size;
  }
  free_blocks_.clear();
}

MemoryStats CachingAllocator::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void CachingAllocator::reset_peak() {
  std::lock_guard lock(mutex_);
  stats_.peak = stats_.in_use;
}

// ---- context --------------------------------------------------------------------------------------------

Context::Context(int device) : device_(device), allocator_(device) {
  MFUSER_CUDA_CHECK(cudaSetDevice(device));
  MFUSER_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  MFUSER_CUBLAS_CHECK(cublasCreate(&cublas_));
  MFUSER_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
  MFUSER_CUBLAS_CHECK(cublasLtCreate(&cublas_lt_));
}

Context::~Context() {
  if (cublas_lt_) cublasLtDestroy(cublas_lt_);
  if (cublas_) cublasDestroy(cublas_);
  if (stream_) cudaStreamDestroy(stream_);
}

void Context::synchronize() const { MFUSER_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

Context& context(int device) {
  require_device(device);
  // Contexts live until the process exits: tensors released during static destruction still find them.
  static std::mutex mutex;
  static auto* contexts = new std::vector<std::unique_ptr<Context>>(size_t(device_count()));
  std::lock_guard lock(mutex);
  auto& slot = (*contexts)[size_t(device)];
  if (!slot) slot = std::make_unique<Context>(device);
  MFUSER_CUDA_CHECK(cudaSetDevice(device));
  return *slot;
}

// ---- cuda.h entry points --------------------------------------------------------------------------------

void* allocate(size_t bytes, int device) { return context(device).allocator().allocate(bytes); }

void release(void* ptr, int device) { context(device).allocator().release(ptr); }

void copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  const int device = dst_device.is_cuda() ? dst_device.index : src_device.index;
  Context& ctx = context(device);
  const cudaMemcpyKind kind = src_device.is_cpu()   ? cudaMemcpyHostToDevice
                              : dst_device.is_cpu() ? cudaMemcpyDeviceToHost
                                                    : cudaMemcpyDeviceToDevice;
  MFUSER_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, ctx.stream()));
  ctx.synchronize();
}

MemoryStats memory_stats(int device) { return context(device).allocator().stats(); }

void reset_peak(int device) { context(device).allocator().reset_peak(); }

void synchronize(int device) { context(device).synchronize(); }

namespace {

// An instantiated graph and the scratch blocks its kernels write (see CachingAllocator).
class CudaGraph final : public CapturedGraph {
 public:
  CudaGraph(Context& ctx, cudaGraph_t graph, cudaGraphExec_t exec, CachingAllocator::Blocks blocks)
      : ctx_(ctx), graph_(graph), exec_(exec), blocks_(std::move(blocks)) {}
  ~CudaGraph() override {
    cudaStreamSynchronize(ctx_.stream());  // a replay may still be writing the blocks
    cudaGraphExecDestroy(exec_);
    cudaGraphDestroy(graph_);
    ctx_.allocator().adopt(std::move(blocks_));
  }
  void replay() override { MFUSER_CUDA_CHECK(cudaGraphLaunch(exec_, ctx_.stream())); }

 private:
  Context& ctx_;
  cudaGraph_t graph_;
  cudaGraphExec_t exec_;
  CachingAllocator::Blocks blocks_;
};

}  // namespace

std::unique_ptr<CapturedGraph> capture(int device, const std::function<void()>& work) {
  Context& ctx = context(device);
  cudaStream_t stream = ctx.stream();
  MFUSER_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  ctx.allocator().begin_capture();
  try {
    work();
  } catch (...) {
    cudaGraph_t partial = nullptr;
    cudaStreamEndCapture(stream, &partial);  // leave the stream usable
    if (partial) cudaGraphDestroy(partial);
    cudaGetLastError();
    ctx.allocator().adopt(ctx.allocator().end_capture());  // nothing will run on them
    throw;
  }
  CachingAllocator::Blocks blocks = ctx.allocator().end_capture();
  cudaGraph_t graph = nullptr;
  cudaError_t err = cudaStreamEndCapture(stream, &graph);
  cudaGraphExec_t exec = nullptr;
  if (err == cudaSuccess) err = cudaGraphInstantiate(&exec, graph, 0);
  if (err != cudaSuccess) {
    if (graph) cudaGraphDestroy(graph);
    ctx.allocator().adopt(std::move(blocks));
    MFUSER_CUDA_CHECK(err);
  }
  return std::make_unique<CudaGraph>(ctx, graph, exec, std::move(blocks));
}

#ifdef MFUSER_HAVE_NVTX
NvtxRange::NvtxRange(const char* name) { nvtxRangePushA(name); }
NvtxRange::~NvtxRange() { nvtxRangePop(); }
#else
NvtxRange::NvtxRange(const char*) {}
NvtxRange::~NvtxRange() {}
#endif

}  // namespace mfuser::cuda
