// Counter-based pseudo-random fill that tools/reference/counter_random.py reproduces bit for bit: large
// upstream gradients of the backward tests are recomputed on both sides instead of stored in a golden file.
#pragma once

#include <cstdint>

#include "runtime/tensor.h"

namespace mfuser::test {

// Element i (row-major) of stream `salt`: murmur3's 32-bit finalizer of i + salt * 0x9E3779B9 (mod 2^32),
// top 24 bits as a value in [-1, 1), exact in f32.
inline Tensor counter_uniform(const Shape& shape, uint32_t salt) {
  Tensor t = Tensor::empty(shape, DType::f32);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    uint32_t h = uint32_t(i) + salt * 0x9E3779B9u;
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    p[i] = float(int32_t(h >> 8) - (1 << 23)) / float(1 << 23);
  }
  return t;
}

}  // namespace mfuser::test
