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
//
// CUDA-graph capture: a kernel's scratch buffer released during capture keeps its address baked into the
// graph, so it must not go back to the shared cache (the next allocation anywhere could get it and be
// overwritten at every replay). Between begin_capture and end_capture, released blocks go to the capture's
// own pool instead, reusable by later allocations of the same capture (they run in stream order), and
// end_capture hands them to the graph, which gives them back (`adopt`) when it is destroyed. Memory
// allocated during a capture must be released before the capture ends.
class CachingAllocator {
 public:
  using Blocks = std::multimap<size_t, void*>;  // size -> block

  explicit CachingAllocator(int device) : device_(device) {}
  ~CachingAllocator();
  void* allocate(size_t bytes);
  void release(void* ptr);
  void empty_cache();
  MemoryStats stats() const;
  void reset_peak();

  void begin_capture();
  Blocks end_capture();         // the blocks the captured graph now owns
  void adopt(Blocks&& blocks);  // a destroyed graph's blocks, back to the cache

 private:
  static size_t round_up(size_t bytes);
  static void* take(Blocks& pool, size_t size);  // a cached block of exactly `size`, or nullptr
  int device_;
  mutable std::mutex mutex_;
  Blocks free_blocks_;
  Blocks capture_blocks_;  // released during the capture in progress
  bool capturing_ = false;
  std::map<void*, size_t> live_blocks_;  // block -> size
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
