// Turns every CUDA runtime / cuBLAS / NCCL status into an mfuser::Error naming the call, where it was made,
// and the graph op running at the time. Only for translation units compiled against the CUDA toolkit.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "runtime/error.h"
#include "runtime/op_context.h"

namespace mfuser::cuda {

[[noreturn]] void throw_error(const char* what, const char* call, const char* file, int line);
const char* cublas_status_name(cublasStatus_t status);

}  // namespace mfuser::cuda

#define MFUSER_CUDA_CHECK(call)                                                                  \
  do {                                                                                           \
    const cudaError_t mfuser_err_ = (call);                                                      \
    if (mfuser_err_ != cudaSuccess)                                                              \
      ::mfuser::cuda::throw_error(cudaGetErrorString(mfuser_err_), #call, __FILE__, __LINE__);    \
  } while (0)

#define MFUSER_CUBLAS_CHECK(call)                                                                  \
  do {                                                                                             \
    const cublasStatus_t mfuser_st_ = (call);                                                      \
    if (mfuser_st_ != CUBLAS_STATUS_SUCCESS)                                                       \
      ::mfuser::cuda::throw_error(::mfuser::cuda::cublas_status_name(mfuser_st_), #call, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: reports launch-configuration errors at the launch site.
#define MFUSER_CUDA_CHECK_LAUNCH() MFUSER_CUDA_CHECK(cudaGetLastError())

#ifdef MFUSER_HAVE_NCCL
#include <nccl.h>
#define MFUSER_NCCL_CHECK(call)                                                                   \
  do {                                                                                            \
    const ncclResult_t mfuser_nr_ = (call);                                                       \
    if (mfuser_nr_ != ncclSuccess)                                                                \
      ::mfuser::cuda::throw_error(ncclGetErrorString(mfuser_nr_), #call, __FILE__, __LINE__);     \
  } while (0)
#endif
