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
//
// Backward: grad_a is a copy (add) or a mul; grad_b, when b was broadcast, is a deterministic two-pass sum
// (reduce_onto below: per-chunk f32 partials in a fixed layout, then the chunks added in order).
#include <algorithm>
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

// ---- Backward: sums of grad_out (times a, for mul) over the dims b was broadcast along ----
// a's merged dims split into kept ones (b present: they index grad_b's element j) and reduced ones (index
// r of the R = n / numel(b) terms of one sum); target offset = kept part (j) + reduced part (r).
struct ReduceIndex {
  int kept_ndim = 0, reduced_ndim = 0;  // innermost first
  int64_t kept_dims[kMaxDims] = {}, kept_strides[kMaxDims] = {};
  int64_t reduced_dims[kMaxDims] = {}, reduced_strides[kMaxDims] = {};

  __device__ static int64_t part(int64_t i, int ndim, const int64_t* dims, const int64_t* strides) {
    int64_t offset = 0;
    for (int d = 0; d < ndim; ++d) {
      const int64_t q = i / dims[d];
      offset += (i - q * dims[d]) * strides[d];
      i = q;
    }
    return offset;
  }
  __device__ int64_t kept_offset(int64_t j) const { return part(j, kept_ndim, kept_dims, kept_strides); }
  __device__ int64_t reduced_offset(int64_t r) const { return part(r, reduced_ndim, reduced_dims, reduced_strides); }
};

ReduceIndex reduce_index(const Broadcast& bc) {
  ReduceIndex index;
  int64_t stride = 1;  // a's element stride of merged dim d
  for (int d = 0; d < bc.ndim; ++d) {
    if (bc.b_strides[d] != 0) {
      index.kept_dims[index.kept_ndim] = bc.dims[d];
      index.kept_strides[index.kept_ndim++] = stride;
    } else {
      index.reduced_dims[index.reduced_ndim] = bc.dims[d];
      index.reduced_strides[index.reduced_ndim++] = stride;
    }
    stride *= bc.dims[d];
  }
  return index;
}

// The term of a's element i: grad_out (add) or grad_out * a (mul).
template <class T>
struct GradTerm {
  const T* g;
  __device__ float operator()(int64_t i) const { return to_float(g[i]); }
};
template <class T>
struct GradTimesA {
  const T* g;
  const T* a;
  __device__ float operator()(int64_t i) const { return to_float(g[i]) * to_float(a[i]); }
};

// Pass 1, b present along a's innermost dim (e.g. a bias [C] over [L, C]): one thread per element j of grad_b
// (adjacent threads read adjacent memory), blockIdx.y a chunk of the R terms, summed in order.
template <class Term>
__global__ void reduce_columns_kernel(Term term, ReduceIndex index, float* partial, int64_t nb, int64_t terms,
                                      int64_t chunk) {
  const int64_t begin = blockIdx.y * chunk, end = min(terms, begin + chunk);
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < nb; j += int64_t(gridDim.x) * blockDim.x) {
    const int64_t base = index.kept_offset(j);
    float sum = 0.f;
    for (int64_t r = begin; r < end; ++r) sum += term(base + index.reduced_offset(r));
    partial[blockIdx.y * nb + j] = sum;
  }
}

// Pass 1, b broadcast along a's innermost dim (e.g. a per-channel [C, 1, 1] over [B, C, H, W]): one warp per
// element j of grad_b, its lanes striding the chunk's terms (adjacent in memory), then a warp_sum (a fixed
// shuffle tree: deterministic).
template <class Term>
__global__ void reduce_rows_kernel(Term term, ReduceIndex index, float* partial, int64_t nb, int64_t terms,
                                   int64_t chunk) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x >> 5);
  const int64_t begin = blockIdx.y * chunk, end = min(terms, begin + chunk);
  for (int64_t j = blockIdx.x * int64_t(blockDim.x >> 5) + (threadIdx.x >> 5); j < nb; j += warps) {
    const int64_t base = index.kept_offset(j);
    float sum = 0.f;
    for (int64_t r = begin + lane; r < end; r += 32) sum += term(base + index.reduced_offset(r));
    sum = warp_sum(sum);
    if (lane == 0) partial[blockIdx.y * nb + j] = sum;
  }
}

// grad_b (b's shape, fewer elements than a) = term summed over the dims b was broadcast along. The chunk
// count depends on the shapes only, so the sums are identical run to run.
template <class T, class Term>
void reduce_onto(const Shape& target, Tensor& grad_b, Term term, cudaStream_t stream) {
  constexpr int kThreads = 256;
  constexpr int64_t kTermsPerChunk = 512, kMaxChunks = 256;
  const int64_t nb = grad_b.numel(), terms = target.numel() / nb;
  const Broadcast bc = merge_dims(target, grad_b.shape());
  const ReduceIndex index = reduce_index(bc);
  const int64_t chunks = std::clamp<int64_t>(ceil_div<int64_t>(terms, kTermsPerChunk), 1, kMaxChunks);
  const int64_t chunk = ceil_div<int64_t>(terms, chunks);
  Tensor partial = Tensor::empty({chunks, nb}, DType::f32, grad_b.device());
  float* pp = partial.data<float>();
  if (bc.ndim > 0 && bc.b_strides[0] != 0) {
    const dim3 grid(grid_for(nb, kThreads), unsigned(chunks));
    reduce_columns_kernel<<<grid, kThreads, 0, stream>>>(term, index, pp, nb, terms, chunk);
  } else {
    const dim3 grid(grid_for(nb, kThreads / 32), unsigned(chunks));
    reduce_rows_kernel<<<grid, kThreads, 0, stream>>>(term, index, pp, nb, terms, chunk);
  }
  MFUSER_CUDA_CHECK_LAUNCH();
  sum_partials(pp, device_ptr<T>(grad_b), chunks, nb, stream);
}

void copy_on_device(const Tensor& src, Tensor& dst) {
  if (dst.raw_data() == src.raw_data()) return;
  MFUSER_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), size_t(src.numel()) * dtype_size(src.dtype()),
                                    cudaMemcpyDeviceToDevice, stream_of(src)));
}

// An empty a: every sum is empty, grad_b is zero (all-zero bits are 0 in f32 and bf16).
void zero_on_device(Tensor& t) {
  MFUSER_CUDA_CHECK(cudaMemsetAsync(t.raw_data(), 0, size_t(t.numel()) * dtype_size(t.dtype()), stream_of(t)));
}

}  // namespace

void cuda::add_backward(const Tensor& grad_out, Tensor& grad_a, Tensor& grad_b) {
  check_cuda_storage("add_backward", grad_out.dtype(), {&grad_out, &grad_a, &grad_b});
  if (grad_a.defined()) copy_on_device(grad_out, grad_a);
  if (!grad_b.defined()) return;
  if (grad_b.numel() == grad_out.numel()) return copy_on_device(grad_out, grad_b);  // nothing to sum
  if (grad_out.numel() == 0) return zero_on_device(grad_b);
  with_storage_type("add_backward", grad_out.dtype(), [&]<class T>() {
    reduce_onto<T>(grad_out.shape(), grad_b, GradTerm<T>{device_ptr<T>(grad_out)}, stream_of(grad_out));
  });
}

void cuda::mul_backward(const Tensor& a, const Tensor& b, const Tensor& grad_out, Tensor& grad_a, Tensor& grad_b) {
  check_cuda_storage("mul_backward", grad_out.dtype(), {&a, &b, &grad_out, &grad_a, &grad_b});
  // grad_b first: grad_a may be grad_out itself, which grad_b still reads.
  if (grad_b.defined()) {
    if (grad_b.numel() == grad_out.numel()) {
      Tensor same_shape = grad_b.reshape(grad_out.shape());
      cuda::mul(grad_out, a, same_shape);
    } else if (grad_out.numel() == 0) {
      zero_on_device(grad_b);
    } else {
      with_storage_type("mul_backward", grad_out.dtype(), [&]<class T>() {
        reduce_onto<T>(grad_out.shape(), grad_b, GradTimesA<T>{device_ptr<T>(grad_out), device_ptr<T>(a)},
                       stream_of(grad_out));
      });
    }
  }
  if (grad_a.defined()) cuda::mul(grad_out, b, grad_a);
}

void cuda::scale_backward(const Tensor& grad_out, Tensor& grad_x, float factor) {
  cuda::scale(grad_out, grad_x, factor, 0.f);
}

void cuda::add(const Tensor& a, const Tensor& b, Tensor& out) { binary("add", a, b, out, AddOp{}); }

void cuda::mul(const Tensor& a, const Tensor& b, Tensor& out) { binary("mul", a, b, out, MulOp{}); }

void cuda::scale(const Tensor& x, Tensor& out, float factor, float bias) {
  check_cuda_storage("scale", x.dtype(), {&x, &out});
  with_storage_type("scale", x.dtype(), [&]<class T>() {
    launch_map(device_ptr<T>(x), device_ptr<T>(out), x.numel(), stream_of(x), Affine{factor, bias});
  });
}

}  // namespace mfuser::kernels
