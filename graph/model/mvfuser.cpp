// MVFuser: the Mamba-style block that fuses token sequences (backbone adapters, MTEnhancer's cross_attn).
#include <cmath>

#include "graph/model/modules.h"

namespace mfuser::model {

ValueId build_mvfuser(Builder& b, const ModelConfig& cfg, ValueId x, const std::string& prefix) {
  const Shape xs = b.shape(x);
  MFUSER_CHECK(xs.ndim() == 3 && xs[2] % 2 == 0, "MVFuser '", prefix, "': input ", xs.str(),
               " is not [B, L, d] with even d");
  const int64_t d = xs[2], half = d / 2;
  const int64_t n = cfg.adapter.d_state, dt_rank = (d + 15) / 16;  // ceil(d / 16): Mamba's dt_rank "auto"
  const auto act = kernels::Activation::silu;

  // expand = 1: in_proj d -> d, split into the scanned half x and the gate half z.
  const ValueId xz = b.linear(x, prefix + ".in_proj", d, /*has_bias=*/false);
  const auto parts = b.split(xz, {half, half}, -1, prefix + ".xz");
  // Both halves get a non-causal ('same') depthwise conv without bias (upstream: bias=conv_bias//2 == 0).
  const ValueId u = b.activation(b.dwconv1d(parts[0], prefix + ".conv1d_x", cfg.adapter.d_conv, false), act,
                                 prefix + ".conv1d_x.silu");
  const ValueId z = b.activation(b.dwconv1d(parts[1], prefix + ".conv1d_z", cfg.adapter.d_conv, false), act,
                                 prefix + ".conv1d_z.silu");

  const ValueId x_dbl = b.linear(u, prefix + ".x_proj", dt_rank + 2 * n, false);
  const auto dt_bc = b.split(x_dbl, {dt_rank, 2 * n}, -1, prefix + ".x_dbl");
  // dt_proj adds its bias here, and the scan adds the same bias again as delta_bias (upstream's double bias).
  const ValueId delta = b.linear(dt_bc[0], prefix + ".dt_proj", half);
  const ValueId delta_bias = b.param(prefix + ".dt_proj.bias", {half});

  // The scan works channel-major: u, delta [B, d/2, L]; B, C [B, N, L].
  const ValueId u_t = b.permute(u, {0, 2, 1}, prefix + ".u_t");
  const ValueId delta_t = b.permute(delta, {0, 2, 1}, prefix + ".delta_t");
  const auto bc = b.split(b.permute(dt_bc[1], {0, 2, 1}, prefix + ".bc_t"), {n, n}, 1, prefix + ".bc");

  // A = -exp(A_log). At inference it depends on the weights only: computed once here, bound as a constant.
  // In training A_log is a trained parameter, so A is computed in the graph (and differentiated).
  ValueId a_v = kNoValue;
  if (b.training()) {
    const ValueId a_log = b.param(prefix + ".A_log", {half, n});
    a_v = b.scale(b.activation(a_log, kernels::Activation::exp, prefix + ".A_exp"), -1.f, prefix + ".A");
  } else {
    const Tensor a_log = b.weights().get(prefix + ".A_log", {half, n});
    Tensor a = Tensor::empty({half, n}, DType::f32);
    const float* src = a_log.data<float>();
    float* dst = a.data<float>();
    for (int64_t i = 0; i < a.numel(); ++i) dst[i] = -std::exp(src[i]);
    a_v = b.constant(prefix + ".A", std::move(a));
  }
  const ValueId d_skip = b.param(prefix + ".D", {half});

  const ValueId y_t = b.selective_scan(u_t, delta_t, a_v, bc[0], bc[1], d_skip, delta_bias, prefix + ".scan");
  const ValueId y = b.permute(y_t, {0, 2, 1}, prefix + ".y");
  const ValueId normed = b.rmsnorm_gated(y, z, prefix + ".norm", 1e-5f);
  // proj_drop (training only), then the learned 0-d `scale` multiplies the whole output.
  const ValueId out = b.dropout(b.linear(normed, prefix + ".out_proj", d, false), float(cfg.adapter.proj_drop),
                                prefix + ".proj_drop");
  return b.mul(out, b.param(prefix + ".scale", Shape{}), prefix);
}

}  // namespace mfuser::model
