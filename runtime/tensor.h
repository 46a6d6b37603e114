// Tensor: a typed, shaped, contiguous row-major window onto a Storage (a byte buffer on one device).
//
// A Tensor never owns memory directly: it shares a Storage and records a byte offset into it, so views
// (reshape, row slices) are free and keep the storage alive. Copies between devices are always explicit
// (`to`, `copy_from`); nothing migrates silently.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "runtime/dtype.h"
#include "runtime/error.h"

namespace mfuser {

enum class DeviceKind : uint8_t { cpu, cuda };

struct Device {
  DeviceKind kind = DeviceKind::cpu;
  int index = 0;

  static Device cpu() { return {}; }
  static Device cuda(int index = 0) { return {DeviceKind::cuda, index}; }
  bool is_cpu() const { return kind == DeviceKind::cpu; }
  bool is_cuda() const { return kind == DeviceKind::cuda; }
  std::string str() const;
  bool operator==(const Device&) const = default;
};

constexpr int kMaxDims = 6;

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);
  explicit Shape(std::span<const int64_t> dims);

  int ndim() const { return ndim_; }
  // Negative indices count from the back, as in PyTorch.
  int64_t operator[](int i) const { return dims_[normalize(i)]; }
  int64_t& operator[](int i) { return dims_[normalize(i)]; }
  int64_t numel() const;
  std::span<const int64_t> dims() const { return {dims_.data(), size_t(ndim_)}; }
  std::string str() const;  // "[2, 3, 4]"
  bool operator==(const Shape& o) const;

 private:
  int normalize(int i) const;
  std::array<int64_t, kMaxDims> dims_{};
  int ndim_ = 0;
};

// A byte buffer on one device. Either allocated by the runtime (host: aligned malloc; CUDA: the device
// context's caching allocator) or wrapping foreign memory (an mmap'ed file) kept alive by `owner`.
class Storage {
 public:
  static std::shared_ptr<Storage> allocate(size_t bytes, Device device);
  static std::shared_ptr<Storage> wrap(void* data, size_t bytes, Device device, std::shared_ptr<const void> owner);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  Storage(void* data, size_t bytes, Device device, std::function<void(void*)> release);
  void* data_;
  size_t bytes_;
  Device device_;
  std::function<void(void*)> release_;
};

class Tensor {
 public:
  Tensor() = default;  // undefined: defined() is false
  Tensor(std::shared_ptr<Storage> storage, size_t byte_offset, Shape shape, DType dtype);

  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::cpu());
  // Host tensor holding a copy of `values`; shape must have values.size() elements.
  template <class T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return shape_.ndim(); }
  int64_t dim(int i) const { return shape_[i]; }
  int64_t numel() const { return shape_.numel(); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const;
  size_t byte_offset() const { return offset_; }
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  void* raw_data() const;
  // Typed pointer; checks the element type (not the device: CUDA pointers are returned for kernels).
  template <class T>
  T* data() const {
    MFUSER_CHECK(dtype_of<T>() == dtype_, "tensor of dtype ", dtype_name(dtype_), " accessed as ",
                 dtype_name(dtype_of<T>()));
    return static_cast<T*>(raw_data());
  }

  // Same memory, new shape with the same number of elements; in the list form one dim may be -1.
  Tensor reshape(const Shape& shape) const;
  Tensor reshape(std::initializer_list<int64_t> dims) const;
  // Rows [begin, end) along dim 0: a contiguous sub-block of the same storage.
  Tensor slice_rows(int64_t begin, int64_t end) const;

  // Explicit copies. `to` returns a new tensor on `device` (a fresh copy even when the device is the same).
  Tensor to(Device device) const;
  // Copies src into this tensor's memory; shapes (numel) and dtypes must match, devices may differ.
  void copy_from(const Tensor& src);

  std::string str() const;  // "f32[2, 3] cpu"

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;
  Shape shape_;
  DType dtype_ = DType::f32;
};

template <class T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape) {
  MFUSER_CHECK(int64_t(values.size()) == shape.numel(), "from_vector: ", values.size(),
               " values for shape ", shape.str());
  Tensor t = empty(shape, dtype_of<T>());
  if (!values.empty()) {
    T* out = t.data<T>();
    for (size_t i = 0; i < values.size(); ++i) out[i] = values[i];
  }
  return t;
}

}  // namespace mfuser
