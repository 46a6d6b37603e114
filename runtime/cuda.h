// The CUDA surface that plain C++ code may use without CUDA headers. Every function is safe to call on a
// machine without a GPU or in a build without CUDA: `available()` says no, the rest throw mfuser::Error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "runtime/tensor.h"

namespace mfuser::cuda {

bool built_with_cuda();
// True when the build has CUDA and at least one device can be used. Never throws; caches the answer.
bool available();
// Why `available()` is false ("built without CUDA", "no CUDA device: <driver message>"), empty otherwise.
std::string unavailable_reason();
int device_count();

struct DeviceInfo {
  std::string name;
  int cc_major = 0, cc_minor = 0;
  int sm_count = 0;
  size_t total_memory = 0;
};
DeviceInfo device_info(int device);

// Device memory through the per-device caching allocator (see cuda_context.h).
void* allocate(size_t bytes, int device);
void release(void* ptr, int device);

// Synchronous copy between any two devices (host<->device, device<->device) on the device's stream.
void copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);

struct MemoryStats {
  size_t in_use = 0;    // bytes handed out and not yet released
  size_t peak = 0;      // high-water mark of in_use since the last reset
  size_t reserved = 0;  // bytes held from the driver (in use + cached)
};
MemoryStats memory_stats(int device);
void reset_peak(int device);

void synchronize(int device);

// A CUDA graph of everything `work` launched on the device's stream, instantiated and ready to replay.
class CapturedGraph {
 public:
  virtual ~CapturedGraph() = default;
  virtual void replay() = 0;  // asynchronous on the device's stream
};
std::unique_ptr<CapturedGraph> capture(int device, const std::function<void()>& work);

// An NVTX range (Nsight Systems / Compute show it by name); free when no profiler is attached, a no-op in
// builds without NVTX.
class NvtxRange {
 public:
  explicit NvtxRange(const char* name);
  ~NvtxRange();
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

}  // namespace mfuser::cuda
