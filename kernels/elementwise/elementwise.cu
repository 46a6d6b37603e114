// CUDA add / mul with numpy broadcasting of b onto a, and scale; f32 or bf16 storage, f32 arithmetic.
//
// Broadcasting: a's dims are merged on the host into runs over which b is either present (contiguous) or
// broadcast (stride 0); [B, C, H, W] + [C, 1, 1] becomes [B | C | H*W] with b strides [0, 1, 0], [L, C] + [C]
// becomes [L | C] with [0, 1], equal shapes one dim. The kernel finds b's element of a's flat index i by
// peeling those (at most kMaxDims) merged dims. 16-byte vectors when the innermost merged dim holds whole
// vectors and every pointer is 16-byte aligned (then a vector never crosses a run of b), scalars otherwise.
// Indices are 32-bit when a has at most 2^30 elements (64-bit division is several times slower; the margin
// keeps i + the grid stride from overflowing).
// out may be a (each element is read before it is written, by the same thread), or b when b has a's shape.
#include <climits>

#include "kernels/elementwise/elementwise.h"
#include "kernels/elementwise/elementwise_map.cuh"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

// Innermost first, so the kernel's unrolled loop indexes the (parameter-space) arrays with constants.
struct Broadcast {
  int ndim = 0;                      // merged dims of a (0: a single element)
  int64_t dims[kMaxDims] = {};
  int64_t b_strides[kMaxDims] = {};  // 0 where b is broadcast
};

// Size-1 dims of a drop out; neighbours with the same b pattern (present / broadcast) merge.
Broadcast merge_dims(const Shape& a, const Shape& b) {
  Broadcast bc;
  bool present[kMaxDims] = {};
  const int lead = a.ndim() - b.ndim();
  for (int i = a.ndim() - 1; i >= 0; --i) {
    if (a[i] == 1) continue;
    const bool has = i >= lead && b[i - lead] != 1;
    if (bc.ndim > 0 && present[bc.ndim - 1] == has) {
      bc.dims[bc.ndim - 1] *= a[i];
    } else {
      bc.dims[bc.ndim] = a[i];
      present[bc.ndim] = has;
      ++bc.ndim;
    }
  }
  int64_t b_stride = 1;
  for (int d = 0; d < bc.ndim; ++d) {
    bc.b_strides[d] = present[d] ? b_stride : 0;
    if (present[d]) b_stride *= bc.dims[d];
  }
  return bc;
}

template <class Index>
__device__ __forceinline__ Index b_offset(Index i, const Broadcast& bc) {
  Index offset = 0;
#pragma unroll
  for (int d = 0; d < kMaxDims; ++d) {
    if (d < bc.ndim) {
      const Index dim = Index(bc.dims[d]), q = i / dim;
      offset += (i - q * dim) * Index(bc.b_strides[d]);
      i = q;
    }
  }
  return offset;
}

struct AddOp {
  __device__ float operator()(float x, float y) const { return x + y; }
};
struct MulOp {
  __device__ float operator()(float x, float y) const { return x * y; }
};

template <class T, class Index, class Op>
__global__ void binary_kernel(const T* a, const T* b, T* out, Index n, Broadcast bc, Op op) {
  for (Index i = blockIdx.x * Index(blockDim.x) + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x)
    out[i] = from_float<T>(op(to_float(a[i]), to_float(b[b_offset(i, bc)])));
}

template <class T, class Index, class Op>
__global__ void binary_pack_kernel(const Pack<T>* a, const T* b, Pack<T>* out, Index packs, Broadcast bc, Op op) {
  const bool b_runs = bc.b_strides[0] != 0;  // b advances along the innermost dim
  for (Index i = blockIdx.x * Index(blockDim.x) + threadIdx.x; i < packs; i += Index(gridDim.x) * blockDim.x) {
    const Index offset = b_offset(i * kPack<T>, bc);
    Pack<T> p = a[i];
    if (b_runs) {
      const Pack<T> q = *reinterpret_cast<const Pack<T>*>(b + offset);
#pragma unroll
      for (int j = 0; j < kPack<T>; ++j) p.v[j] = from_float<T>(op(to_float(p.v[j]), to_float(q.v[j])));
    } else {
      const float y = to_float(b[offset]);
#pragma unroll
      for (int j = 0; j < kPack<T>; ++j) p.v[j] = from_float<T>(op(to_float(p.v[j]), y));
    }
    out[i] = p;
  }
}

template <class T, class Index, class Op>
void launch_binary(const T* a, const T* b, T* out, int64_t n, const Broadcast& bc, cudaStream_t stream, Op op) {
  constexpr int kThreads = 256;
  const bool packed = bc.ndim > 0 && bc.dims[0] % kPack<T> == 0 && aligned16(a) && aligned16(b) &&
                      aligned16(out);
  if (packed) {
    const int64_t packs = n / kPack<T>;
    binary_pack_kernel<T, Index><<<grid_for(packs, kThreads), kThreads, 0, stream>>>(
        reinterpret_cast<const Pack<T>*>(a), b, reinterpret_cast<Pack<T>*>(out), Index(packs), bc, op);
  } else {
    binary_kernel<T, Index><<<grid_for(n, kThreads), kThreads, 0, stream>>>(a, b, out, Index(n), bc, op);
  }
  MFUSER_CUDA_CHECK_LAUNCH();
}

template <class Op>
void binary(const char* name, const Tensor& a, const Tensor& b, Tensor& out, Op op) {
  check_cuda_storage(name, a.dtype(), {&a, &b, &out});
  const int64_t n = a.numel();
  if (n == 0) return;
  const Broadcast bc = merge_dims(a.shape(), b.shape());
  with_storage_type(name, a.dtype(), [&]<class T>() {
    const T* pa = device_ptr<T>(a);
    const T* pb = device_ptr<T>(b);
    T* po = device_ptr<T>(out);
    if (n <= INT_MAX / 2)
      launch_binary<T, int32_t>(pa, pb, po, n, bc, stream_of(a), op);
    else
      launch_binary<T, int64_t>(pa, pb, po, n, bc, stream_of(a), op);
  });
}

struct Affine {
  float factor, bias;
  __device__ float operator()(float x) const { return x * factor + bias; }
};

}  // namespace

void cuda::add(const Tensor& a, const Tensor& b, Tensor& out) { binary("add", a, b, out, AddOp{}); }

void cuda::mul(const Tensor& a, const Tensor& b, Tensor& out) { binary("mul", a, b, out, MulOp{}); }

void cuda::scale(const Tensor& x, Tensor& out, float factor, float bias) {
  check_cuda_storage("scale", x.dtype(), {&x, &out});
  with_storage_type("scale", x.dtype(), [&]<class T>() {
    launch_map(device_ptr<T>(x), device_ptr<T>(out), x.numel(), stream_of(x), Affine{factor, bias});
  });
}

}  // namespace mfuser::kernels
