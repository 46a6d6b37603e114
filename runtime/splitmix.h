// SplitMix64: the counter-based generator behind every random draw of training that must be reproducible from
// (seed, position) alone: the mask-loss point draws, the data order, dropout masks (kernels/dropout). The same
// inline code compiles for the host and, in .cu files, for the device, so both draw bitwise the same numbers.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MFUSER_HOST_DEVICE __host__ __device__
#else
#define MFUSER_HOST_DEVICE
#endif

namespace mfuser {

// The state increment (the golden ratio in 64 bits).
inline constexpr uint64_t kSplitMixGamma = 0x9E3779B97F4A7C15ull;

// The generator's value after state x: x + gamma, then the output mix. Consecutive states x, x + gamma, ...
// give the stream; splitmix64(key + n * gamma) is its n-th value.
MFUSER_HOST_DEVICE inline uint64_t splitmix64(uint64_t x) {
  x += kSplitMixGamma;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// A uniform float in [0, 1) from the top 24 bits of a draw (exact in f32).
MFUSER_HOST_DEVICE inline float uniform24(uint64_t draw) { return float(draw >> 40) * (1.f / 16777216.f); }

}  // namespace mfuser
