// runtime/cuda.h for builds without the CUDA toolkit: nothing is available, and asking for it says why.
#include "runtime/cuda.h"

namespace mfuser::cuda {

namespace {
[[noreturn]] void unavailable() { throw Error("CUDA requested but this build has no CUDA support (nvcc not found at configure time)"); }
}  // namespace

bool built_with_cuda() { return false; }
bool available() { return false; }
std::string unavailable_reason() { return "built without CUDA"; }
int device_count() { return 0; }
DeviceInfo device_info(int) { unavailable(); }
void* allocate(size_t, int) { unavailable(); }
void release(void*, int) {}
void copy(void*, Device, const void*, Device, size_t) { unavailable(); }
MemoryStats memory_stats(int) { unavailable(); }
void reset_peak(int) { unavailable(); }
void synchronize(int) { unavailable(); }
std::unique_ptr<CapturedGraph> capture(int, const std::function<void()>&) { unavailable(); }
NvtxRange::NvtxRange(const char*) {}
NvtxRange::~NvtxRange() {}

}  // namespace mfuser::cuda
