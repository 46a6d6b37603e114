// Per-device CUDA state: one stream, the cuBLAS / cuBLASLt handles bound to it, and a caching allocator.
// Kernel launchers take everything they need from `cuda::context(device)`.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <map>
#include <mutex>

#include "runtime/cuda.h"

namespace mfuser::cuda {

// Caches freed blocks by exact rounded size so a graph that runs the same shapes again never calls
// cudaMalloc twice. On cudaMalloc failure it returns the cache to the driver and retries once, then throws
// an out-of-memory Error naming the request, the current usage and the op.
class CachingAllocator {
 public:
  explicit CachingAllocator(int device) : device_(device) {}
  ~CachingAllocator();
  void* allocate(size_t bytes);
  void release(void* ptr);
  void empty_cache();
  MemoryStats stats() const;
  void reset_peak();

 private:
  static size_t round_up(size_t bytes);
  int device_;
  mutable std::mutex mutex_;
  std::multimap<size_t, void*> free_blocks_;  // size -> block
  std::map<void*, size_t> live_blocks_;       // block -> size
  MemoryStats stats_;
};

class Context {
 public:
  explicit Context(int device);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  cublasLtHandle_t cublas_lt() const { return cublas_lt_; }
  CachingAllocator& allocator() { return allocator_; }
  void synchronize() const;

 private:
  int device_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cublasLtHandle_t cublas_lt_ = nullptr;
  CachingAllocator allocator_;
};

// The context of `device`, created on first use (and the device made current for the calling thread).
Context& context(int device = 0);

}  // namespace mfuser::cuda
