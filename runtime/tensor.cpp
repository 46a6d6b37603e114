#include "runtime/tensor.h"

#include <cstdlib>
#include <cstring>
#include <sstream>

#include "runtime/cuda.h"

namespace mfuser {

std::string Device::str() const { return is_cpu() ? "cpu" : str_cat("cuda:", index); }

Shape::Shape(std::initializer_list<int64_t> dims) : Shape(std::span<const int64_t>(dims.begin(), dims.size())) {}

Shape::Shape(std::span<const int64_t> dims) {
  MFUSER_CHECK(dims.size() <= size_t(kMaxDims), "shape has ", dims.size(), " dims; at most ", kMaxDims,
               " are supported");
  ndim_ = int(dims.size());
  for (int i = 0; i < ndim_; ++i) {
    MFUSER_CHECK(dims[i] >= 0, "negative dimension ", dims[i], " in shape");
    dims_[i] = dims[i];
  }
}

int Shape::normalize(int i) const {
  const int j = i < 0 ? i + ndim_ : i;
  MFUSER_CHECK(j >= 0 && j < ndim_, "dim ", i, " out of range for shape ", str());
  return j;
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim_; ++i) n *= dims_[i];
  return n;
}

std::string Shape::str() const {
  std::ostringstream os;
  os << '[';
  for (int i = 0; i < ndim_; ++i) os << (i ? ", " : "") << dims_[i];
  os << ']';
  return os.str();
}

bool Shape::operator==(const Shape& o) const {
  if (ndim_ != o.ndim_) return false;
  for (int i = 0; i < ndim_; ++i)
    if (dims_[i] != o.dims_[i]) return false;
  return true;
}

Storage::Storage(void* data, size_t bytes, Device device, std::function<void(void*)> release)
    : data_(data), bytes_(bytes), device_(device), release_(std::move(release)) {}

Storage::~Storage() {
  if (release_) release_(data_);
}

std::shared_ptr<Storage> Storage::allocate(size_t bytes, Device device) {
  if (device.is_cuda()) {
    void* p = cuda::allocate(bytes, device.index);
    return std::shared_ptr<Storage>(
        new Storage(p, bytes, device, [index = device.index](void* q) { cuda::release(q, index); }));
  }
  // 64-byte alignment keeps every tensor start SIMD- and cache-line-aligned.
  constexpr size_t kAlign = 64;
  const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  void* p = rounded ? std::aligned_alloc(kAlign, rounded) : nullptr;
  MFUSER_CHECK(p || !rounded, "host out of memory allocating ", bytes, " bytes");
  return std::shared_ptr<Storage>(new Storage(p, bytes, device, [](void* q) { std::free(q); }));
}

std::shared_ptr<Storage> Storage::wrap(void* data, size_t bytes, Device device, std::shared_ptr<const void> owner) {
  return std::shared_ptr<Storage>(new Storage(data, bytes, device, [owner = std::move(owner)](void*) {}));
}

Tensor::Tensor(std::shared_ptr<Storage> storage, size_t byte_offset, Shape shape, DType dtype)
    : storage_(std::move(storage)), offset_(byte_offset), shape_(shape), dtype_(dtype) {
  MFUSER_CHECK(storage_, "tensor over a null storage");
  MFUSER_CHECK(offset_ + nbytes() <= storage_->bytes(), "tensor view ", shape_.str(), " at byte ", offset_,
               " exceeds its storage of ", storage_->bytes(), " bytes");
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  return Tensor(Storage::allocate(size_t(shape.numel()) * dtype_size(dtype), device), 0, shape, dtype);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor host = empty(shape, dtype);
  if (host.nbytes()) std::memset(host.raw_data(), 0, host.nbytes());
  return device.is_cpu() ? host : host.to(device);
}

Device Tensor::device() const { return storage_ ? storage_->device() : Device::cpu(); }

void* Tensor::raw_data() const {
  MFUSER_CHECK(defined(), "access to an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_;
}

Tensor Tensor::reshape(const Shape& shape) const {
  MFUSER_CHECK(shape.numel() == numel(), "reshape ", shape_.str(), " (", numel(), " elements) to ", shape.str());
  return Tensor(storage_, offset_, shape, dtype_);
}

Tensor Tensor::reshape(std::initializer_list<int64_t> dims) const {
  std::vector<int64_t> out(dims);
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == -1) {
      MFUSER_CHECK(infer < 0, "reshape of ", shape_.str(), ": more than one -1");
      infer = int(i);
    } else {
      known *= out[i];
    }
  }
  if (infer >= 0) {
    MFUSER_CHECK(known > 0 && numel() % known == 0, "reshape of ", shape_.str(), ": cannot infer the -1");
    out[size_t(infer)] = numel() / known;
  }
  return reshape(Shape(out));
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  MFUSER_CHECK(ndim() >= 1 && 0 <= begin && begin <= end && end <= dim(0), "slice_rows [", begin, ", ", end,
               ") of ", shape_.str());
  const int64_t row = dim(0) ? numel() / dim(0) : 0;
  Shape out = shape_;
  out[0] = end - begin;
  return Tensor(storage_, offset_ + size_t(begin * row) * dtype_size(dtype_), out, dtype_);
}

Tensor Tensor::to(Device device) const {
  Tensor out = empty(shape_, dtype_, device);
  out.copy_from(*this);
  return out;
}

void Tensor::copy_from(const Tensor& src) {
  MFUSER_CHECK(src.dtype() == dtype_ && src.numel() == numel(), "copy_from: ", src.str(), " into ", str());
  if (nbytes() == 0) return;
  if (device().is_cpu() && src.device().is_cpu())
    std::memmove(raw_data(), src.raw_data(), nbytes());
  else
    cuda::copy(raw_data(), device(), src.raw_data(), src.device(), nbytes());
}

std::string Tensor::str() const {
  if (!defined()) return "undefined";
  return str_cat(dtype_name(dtype_), shape_.str(), ' ', device().str());
}

}  // namespace mfuser
