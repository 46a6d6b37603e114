// Element types of runtime tensors and the host-side conversions between the float formats.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace mfuser {

enum class DType : uint8_t { f32, bf16, f16, i32, i64, u8, boolean };

// Storage types for the 16-bit floats: plain bit patterns on the host, so no compiler extension is needed.
struct bf16_t {
  uint16_t bits;
};
struct f16_t {
  uint16_t bits;
};

size_t dtype_size(DType t);
// Safetensors spelling: "F32", "BF16", "F16", "I32", "I64", "U8", "BOOL".
std::string_view dtype_name(DType t);
std::optional<DType> dtype_from_name(std::string_view name);
bool is_floating(DType t);

template <class T>
constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<bf16_t>() { return DType::bf16; }
template <> constexpr DType dtype_of<f16_t>() { return DType::f16; }
template <> constexpr DType dtype_of<int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::i64; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::u8; }
template <> constexpr DType dtype_of<bool>() { return DType::boolean; }

inline float bf16_to_float(bf16_t v) {
  uint32_t bits = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even, NaN stays NaN (quiet), as PyTorch's conversion does.
inline bf16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return bf16_t{uint16_t((bits >> 16) | 0x0040u)};
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return bf16_t{uint16_t(bits >> 16)};
}

float f16_to_float(f16_t v);
f16_t float_to_f16(float f);  // round to nearest even, overflow to inf

}  // namespace mfuser
