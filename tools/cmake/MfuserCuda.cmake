# Finds the CUDA toolchain and libraries and defines the interface target `mfuser_cuda_deps`.
#
# cuBLAS/cuBLASLt, cuDNN and NCCL are looked up in the CUDA toolkit first, then inside PyTorch's pip wheels
# (site-packages/nvidia/<lib>/{lib,include}), because the lent GPU machines may only have them there. Pip
# wheels ship versioned sonames only (libcublas.so.13), so versioned names are searched too.
#
# Sets MFUSER_HAVE_CUDA, MFUSER_HAVE_CUDNN, MFUSER_HAVE_NCCL.

set(MFUSER_HAVE_CUDA OFF)
set(MFUSER_HAVE_CUDNN OFF)
set(MFUSER_HAVE_NCCL OFF)
if(NOT MFUSER_CUDA)
  return()
endif()

include(CheckLanguage)
if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
  set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
endif()
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  message(STATUS "mfuser: nvcc not found, building the CPU backend only")
  return()
endif()

# One architecture keeps nvcc time in check on 2-core CI; override with -DCMAKE_CUDA_ARCHITECTURES=...
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES 90)
endif()
enable_language(CUDA)
# CMake 3.25 predates nvcc's C++20 support: teach it the flag.
set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
set(CMAKE_CUDA_STANDARD 20)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
find_package(CUDAToolkit REQUIRED)

# site-packages/nvidia/*/{lib,include} of every Python on the machine.
set(_mfuser_pip_lib_dirs "")
set(_mfuser_pip_inc_dirs "")
foreach(_py /usr/bin/python3 python3)
  find_program(_mfuser_python NAMES ${_py} NO_CACHE)
  if(_mfuser_python)
    execute_process(
      COMMAND ${_mfuser_python} -c "import site,sys; print(';'.join(site.getsitepackages()+[site.getusersitepackages()]))"
      OUTPUT_VARIABLE _sp OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    foreach(_dir ${_sp})
      file(GLOB _libs LIST_DIRECTORIES true "${_dir}/nvidia/*/lib")
      file(GLOB _incs LIST_DIRECTORIES true "${_dir}/nvidia/*/include")
      list(APPEND _mfuser_pip_lib_dirs ${_libs})
      list(APPEND _mfuser_pip_inc_dirs ${_incs})
    endforeach()
  endif()
  unset(_mfuser_python)
endforeach()

# mfuser_find_cuda_lib(<VAR> <header> <names...>): library + include dir, toolkit first, then pip wheels.
function(mfuser_find_cuda_lib var header)
  find_library(${var}_LIBRARY NAMES ${ARGN}
               HINTS ${CUDAToolkit_LIBRARY_DIR} ${_mfuser_pip_lib_dirs} ENV LD_LIBRARY_PATH)
  find_path(${var}_INCLUDE_DIR ${header} HINTS ${CUDAToolkit_INCLUDE_DIRS} ${_mfuser_pip_inc_dirs})
  if(${var}_LIBRARY AND ${var}_INCLUDE_DIR)
    set(${var}_FOUND ON PARENT_SCOPE)
    message(STATUS "mfuser: ${var} ${${var}_LIBRARY}")
  else()
    set(${var}_FOUND OFF PARENT_SCOPE)
  endif()
endfunction()

add_library(mfuser_cuda_deps INTERFACE)
target_include_directories(mfuser_cuda_deps SYSTEM INTERFACE ${CUDAToolkit_INCLUDE_DIRS})
target_link_libraries(mfuser_cuda_deps INTERFACE CUDA::cudart)

# cuBLAS / cuBLASLt: required with CUDA.
if(TARGET CUDA::cublas AND TARGET CUDA::cublasLt)
  target_link_libraries(mfuser_cuda_deps INTERFACE CUDA::cublas CUDA::cublasLt)
else()
  mfuser_find_cuda_lib(CUBLAS cublas_v2.h cublas libcublas.so.13 libcublas.so.12)
  mfuser_find_cuda_lib(CUBLASLT cublasLt.h cublasLt libcublasLt.so.13 libcublasLt.so.12)
  if(NOT CUBLAS_FOUND OR NOT CUBLASLT_FOUND)
    message(FATAL_ERROR "mfuser: nvcc found but not cuBLAS/cuBLASLt (toolkit or pip nvidia-cublas)")
  endif()
  target_link_libraries(mfuser_cuda_deps INTERFACE ${CUBLAS_LIBRARY} ${CUBLASLT_LIBRARY})
  target_include_directories(mfuser_cuda_deps SYSTEM INTERFACE ${CUBLAS_INCLUDE_DIR})
endif()

# NVTX 3 is header-only and ships with the toolkit.
find_path(NVTX3_INCLUDE_DIR nvtx3/nvToolsExt.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ${_mfuser_pip_inc_dirs})
if(NVTX3_INCLUDE_DIR)
  target_compile_definitions(mfuser_cuda_deps INTERFACE MFUSER_HAVE_NVTX=1)
  target_include_directories(mfuser_cuda_deps SYSTEM INTERFACE ${NVTX3_INCLUDE_DIR})
endif()

mfuser_find_cuda_lib(CUDNN cudnn.h cudnn libcudnn.so.9)
if(CUDNN_FOUND)
  set(MFUSER_HAVE_CUDNN ON)
  target_compile_definitions(mfuser_cuda_deps INTERFACE MFUSER_HAVE_CUDNN=1)
  target_link_libraries(mfuser_cuda_deps INTERFACE ${CUDNN_LIBRARY})
  target_include_directories(mfuser_cuda_deps SYSTEM INTERFACE ${CUDNN_INCLUDE_DIR})
endif()

mfuser_find_cuda_lib(NCCL nccl.h nccl libnccl.so.2)
if(NCCL_FOUND)
  set(MFUSER_HAVE_NCCL ON)
  target_compile_definitions(mfuser_cuda_deps INTERFACE MFUSER_HAVE_NCCL=1)
  target_link_libraries(mfuser_cuda_deps INTERFACE ${NCCL_LIBRARY})
  target_include_directories(mfuser_cuda_deps SYSTEM INTERFACE ${NCCL_INCLUDE_DIR})
endif()

set(MFUSER_HAVE_CUDA ON)
