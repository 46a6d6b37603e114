// dropout: training-mode nn.Dropout and DropPath (stochastic depth) with a counter-based random stream, so the
// CPU reference and the CUDA kernel draw bitwise the same mask, a CUDA-graph replay draws a fresh one (the seed
// is read from a device tensor), and the backward redraws the forward's mask instead of keeping it.
//
//   out[i] = keep(unit(i)) ? x[i] * (1 / (1 - p)) : 0,   unit(i) = (i / inner) % units
//
// One draw per unit: inner = 1, units = numel is per-element nn.Dropout (F.dropout); inner = numel / B,
// units = B is DropPath on a batch-first [B, ...] tensor (timm's drop_path: one draw per sample, x / keep_prob);
// inner = C, units = L is one draw per token of a batch-first [B, L, C] tensor (CLIP's residual blocks, which
// upstream runs sequence-first [L, B, C] through drop_path: one draw per entry of dim 0, the token).
// keep(u) is u's uniform draw in [0, 1) (24 bits of SplitMix64, runtime/splitmix.h, at position u of the
// stream keyed by seed and salt) being >= p: P(keep) = 1 - p, as PyTorch's bernoulli(1 - p) and timm's
// floor(keep_prob + rand).
// PyTorch's own random stream cannot be reproduced, so masks differ from PyTorch's by design; parity tests
// turn dropout off (TrainingGraphOptions::dropout).
//
// Contract: x and out of one shape and one dtype (f32, or bf16 on CUDA: computed in f32, rounded on store);
// out may be x (in place). seed: i64 [1] on x's device (the step's seed, a graph input). p in [0, 1);
// inner >= 1; units >= 1 (0: numel / inner). The backward is the same call on grad_out: dropout is linear in x
// with the same mask.
#pragma once

#include <cstdint>
#include <string_view>

#include "runtime/splitmix.h"
#include "runtime/tensor.h"

namespace mfuser::kernels {

struct DropoutMask {
  float p = 0.f;          // drop probability
  uint64_t salt = 0;      // the site's stream: dropout_salt(node name)
  int64_t inner = 1;      // consecutive elements sharing one draw
  int64_t units = 0;      // draws; element i uses (i / inner) % units (0: numel / inner)
};

// A site's salt: FNV-1a of its name, so that a site's stream does not depend on the graph's other nodes.
inline uint64_t dropout_salt(std::string_view name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const char c : name) h = (h ^ uint8_t(c)) * 0x100000001b3ull;
  return h;
}

// The stream's key, whether draw `unit` keeps its elements (the same functions on host and device), and the
// number of draws over `numel` elements.
MFUSER_HOST_DEVICE inline uint64_t dropout_key(uint64_t seed, uint64_t salt) {
  return splitmix64(seed ^ splitmix64(salt));
}
MFUSER_HOST_DEVICE inline bool dropout_keeps(uint64_t key, uint64_t unit, float p) {
  return uniform24(splitmix64(key + unit * kSplitMixGamma)) >= p;
}
inline int64_t dropout_units(const DropoutMask& mask, int64_t numel) {
  return mask.units > 0 ? mask.units : (numel + mask.inner - 1) / mask.inner;
}

void dropout(const Tensor& x, const Tensor& seed, Tensor& out, const DropoutMask& mask);  // dispatches on the device

namespace cpu {
void dropout(const Tensor& x, const Tensor& seed, Tensor& out, const DropoutMask& mask);
}
namespace cuda {
void dropout(const Tensor& x, const Tensor& seed, Tensor& out, const DropoutMask& mask);
}

}  // namespace mfuser::kernels
