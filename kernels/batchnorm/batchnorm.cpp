// CPU reference of batchnorm (inference and training, with their backwards), and the device dispatch.
#include "kernels/batchnorm/batchnorm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

void check_args(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
                const Tensor& bias, const Tensor& out, float eps) {
  check_float("batchnorm", "x", x);
  check_float_like("batchnorm", "running_mean", running_mean, x);
  check_float_like("batchnorm", "running_var", running_var, x);
  check_float_like("batchnorm", "weight", weight, x);
  check_float_like("batchnorm", "bias", bias, x);
  check_float_like("batchnorm", "out", out, x);
  MFUSER_CHECK(x.ndim() >= 2, "batchnorm: x must be [N, C, *spatial], got ", x.str());
  const int64_t c = x.dim(1);
  check_shape("batchnorm", "running_mean", running_mean, {c});
  check_shape("batchnorm", "running_var", running_var, {c});
  check_shape("batchnorm", "weight", weight, {c});
  check_shape("batchnorm", "bias", bias, {c});
  check_shape("batchnorm", "out", out, x.shape());
  MFUSER_CHECK(eps >= 0, "batchnorm: eps must be >= 0, got ", eps);
  check_same_device("batchnorm", {&x, &running_mean, &running_var, &weight, &bias, &out});
}

// Optional [C] f32 arguments: each either undefined or of shape [C].
void check_optional_channels(const char* op, const char* arg, const Tensor& t, int64_t c) {
  if (!t.defined()) return;
  check_f32(op, arg, t);
  check_shape(op, arg, t, {c});
}

// The shared part of the backward checks: x, weight, grad_out, grad_x, the optional parameter gradients.
void check_backward_common(const char* op, const Tensor& x, const Tensor& weight, const Tensor& grad_out,
                           const Tensor& grad_x, const Tensor& grad_weight, const Tensor& grad_bias, float eps) {
  check_float(op, "x", x);
  check_float_like(op, "weight", weight, x);
  check_float_like(op, "grad_out", grad_out, x);
  check_float_like(op, "grad_x", grad_x, x);
  MFUSER_CHECK(x.ndim() >= 2, op, ": x must be [N, C, *spatial], got ", x.str());
  const int64_t c = x.dim(1);
  check_shape(op, "weight", weight, {c});
  check_shape(op, "grad_out", grad_out, x.shape());
  check_shape(op, "grad_x", grad_x, x.shape());
  for (const Tensor* g : {&grad_weight, &grad_bias}) {  // optional, in x's dtype
    if (!g->defined()) continue;
    check_float_like(op, g == &grad_weight ? "grad_weight" : "grad_bias", *g, x);
    check_shape(op, g == &grad_weight ? "grad_weight" : "grad_bias", *g, {c});
  }
  MFUSER_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps);
  check_same_device(op, {&x, &weight, &grad_out, &grad_x, &grad_weight, &grad_bias});
}

// Both saved statistics or neither.
void check_stat_pair(const char* op, const char* first, const Tensor& a, const char* second, const Tensor& b,
                     const Tensor& x) {
  MFUSER_CHECK(a.defined() == b.defined(), op, ": pass both ", first, " and ", second, " or neither");
  check_optional_channels(op, first, a, x.dim(1));
  check_optional_channels(op, second, b, x.dim(1));
  check_same_device(op, {&x, &a, &b});
}

void check_train_args(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                      const Tensor& running_var, const Tensor& out, const Tensor& save_mean, const Tensor& save_rstd,
                      float momentum, float eps) {
  constexpr const char* op = "batchnorm_train";
  check_float(op, "x", x);
  check_float_like(op, "weight", weight, x);
  check_float_like(op, "bias", bias, x);
  check_float_like(op, "out", out, x);
  check_f32(op, "save_mean", save_mean);
  check_f32(op, "save_rstd", save_rstd);
  MFUSER_CHECK(x.ndim() >= 2, op, ": x must be [N, C, *spatial], got ", x.str());
  const int64_t c = x.dim(1);
  MFUSER_CHECK(x.numel() / std::max<int64_t>(c, 1) >= 2, op, ": needs more than one value per channel, got ",
               x.str());
  check_shape(op, "weight", weight, {c});
  check_shape(op, "bias", bias, {c});
  check_shape(op, "out", out, x.shape());
  check_shape(op, "save_mean", save_mean, {c});
  check_shape(op, "save_rstd", save_rstd, {c});
  check_stat_pair(op, "running_mean", running_mean, "running_var", running_var, x);
  MFUSER_CHECK(momentum >= 0 && momentum <= 1, op, ": momentum must be in [0, 1], got ", momentum);
  MFUSER_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps);
  check_same_device(op, {&x, &weight, &bias, &out, &save_mean, &save_rstd});
}

void check_train_backward_args(const Tensor& x, const Tensor& weight, const Tensor& save_mean,
                               const Tensor& save_rstd, const Tensor& grad_out, const Tensor& grad_x,
                               const Tensor& grad_weight, const Tensor& grad_bias, float eps) {
  constexpr const char* op = "batchnorm_train_backward";
  check_backward_common(op, x, weight, grad_out, grad_x, grad_weight, grad_bias, eps);
  check_stat_pair(op, "save_mean", save_mean, "save_rstd", save_rstd, x);
}

// Element (n, c, i) of an [N, C, spatial] tensor lives at plane(n, c) + i.
struct Planes {
  int64_t images, channels, spatial;
  explicit Planes(const Tensor& x)
      : images(x.dim(0)), channels(x.dim(1)), spatial(x.numel() == 0 ? 0 : x.numel() / (x.dim(0) * x.dim(1))) {}
  int64_t plane(int64_t n, int64_t c) const { return (n * channels + c) * spatial; }
  int64_t count() const { return images * spatial; }  // values per channel
};

// Batch mean and biased variance of channel c, two passes in double (as kernels/common/moments.h).
void channel_stats(const float* x, const Planes& p, int64_t c, double& mean, double& var) {
  double sum = 0;
  for (int64_t n = 0; n < p.images; ++n)
    for (int64_t i = 0; i < p.spatial; ++i) sum += x[p.plane(n, c) + i];
  mean = sum / double(p.count());
  double sq = 0;
  for (int64_t n = 0; n < p.images; ++n)
    for (int64_t i = 0; i < p.spatial; ++i) sq += (x[p.plane(n, c) + i] - mean) * (x[p.plane(n, c) + i] - mean);
  var = sq / double(p.count());
}

// Channel c's sums of grad_out and of grad_out * xhat, xhat = (x - m) * r, in double.
void channel_grad_sums(const float* xs, const float* dy, const Planes& p, int64_t c, double m, double r,
                       double& sum_dy, double& sum_dy_xhat) {
  sum_dy = sum_dy_xhat = 0;
  for (int64_t n = 0; n < p.images; ++n)
    for (int64_t i = p.plane(n, c); i < p.plane(n, c) + p.spatial; ++i) {
      sum_dy += dy[i];
      sum_dy_xhat += dy[i] * ((xs[i] - m) * r);
    }
}

// grad_x of channel c = grad_out * a + xhat * b + shift.
void write_channel_grad(const float* xs, const float* dy, float* dx, const Planes& p, int64_t c, double m, double r,
                        double a, double b, double shift) {
  for (int64_t n = 0; n < p.images; ++n)
    for (int64_t i = p.plane(n, c); i < p.plane(n, c) + p.spatial; ++i)
      dx[i] = float(dy[i] * a + (xs[i] - m) * r * b + shift);
}

// The backwards share this: for channel c, writes grad_x with the (a, b, shift) that `coefs(sum_dy,
// sum_dy_xhat)` gives, and stores the two sums into the optional parameter gradients.
template <class Coefs>
void channel_backward(const Tensor& x, const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight,
                      Tensor& grad_bias, const Coefs& coefs, const std::vector<double>& mean,
                      const std::vector<double>& rstd) {
  const Planes p(x);
  const float* xs = x.data<float>();
  const float* dy = grad_out.data<float>();
  float* dx = grad_x.data<float>();
  float* gw = grad_weight.defined() ? grad_weight.data<float>() : nullptr;
  float* gb = grad_bias.defined() ? grad_bias.data<float>() : nullptr;
  parallel_for(p.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const double m = mean[size_t(c)], r = rstd[size_t(c)];
      double sum_dy, sum_dy_xhat;
      channel_grad_sums(xs, dy, p, c, m, r, sum_dy, sum_dy_xhat);
      double a, b, shift;
      coefs(c, sum_dy, sum_dy_xhat, a, b, shift);
      write_channel_grad(xs, dy, dx, p, c, m, r, a, b, shift);
      if (gw) gw[c] = float(sum_dy_xhat);
      if (gb) gb[c] = float(sum_dy);
    }
  });
}

// Normalizes channel c with the batch statistics (mean, var over `count` values, possibly several ranks'),
// saves them and updates the running statistics as PyTorch does (unbiased variance).
struct TrainChannel {
  const float *xs, *w, *b;
  float *y, *rm, *rv, *sm, *sr;
  float momentum, eps;

  void operator()(const Planes& p, int64_t c, double mean, double var, int64_t count) const {
    const double rstd = 1.0 / std::sqrt(var + eps);
    for (int64_t n = 0; n < p.images; ++n)
      for (int64_t i = p.plane(n, c); i < p.plane(n, c) + p.spatial; ++i)
        y[i] = float((xs[i] - mean) * rstd) * w[c] + b[c];
    sm[c] = float(mean);
    sr[c] = float(rstd);
    if (rm) {
      rm[c] = float((1.0 - momentum) * rm[c] + momentum * mean);
      rv[c] = float((1.0 - momentum) * rv[c] + momentum * var * double(count) / double(count - 1));
    }
  }
};

TrainChannel train_channel(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& running_mean,
                           Tensor& running_var, Tensor& out, Tensor& save_mean, Tensor& save_rstd, float momentum,
                           float eps) {
  return {x.data<float>(),
          weight.data<float>(),
          bias.data<float>(),
          out.data<float>(),
          running_mean.defined() ? running_mean.data<float>() : nullptr,
          running_var.defined() ? running_var.data<float>() : nullptr,
          save_mean.data<float>(),
          save_rstd.data<float>(),
          momentum,
          eps};
}

void check_moments_args(const char* op, const char* arg, const Tensor& moments, const Tensor& x, int64_t ranks) {
  check_f32(op, arg, moments);
  MFUSER_CHECK(x.ndim() >= 2, op, ": x must be [N, C, *spatial], got ", x.str());
  const int64_t c = x.dim(1);
  if (ranks == 0) {
    MFUSER_CHECK(moments.ndim() == 3 && moments.dim(0) >= 1 && moments.dim(1) == 2 && moments.dim(2) == c, op, ": ",
                 arg, " must be [W, 2, ", c, "], got ", moments.str());
  } else {
    check_shape(op, arg, moments, {2, c});
  }
  check_same_device(op, {&x, &moments});
}

void check_grad_sums_args(const Tensor& x, const Tensor& save_mean, const Tensor& save_rstd, const Tensor& grad_out,
                          const Tensor& sums) {
  constexpr const char* op = "batchnorm_grad_sums";
  check_float(op, "x", x);
  check_float_like(op, "grad_out", grad_out, x);
  check_moments_args(op, "sums", sums, x, 1);
  check_shape(op, "grad_out", grad_out, x.shape());
  MFUSER_CHECK(save_mean.defined() && save_rstd.defined(), op, ": needs the forward's save_mean and save_rstd");
  check_stat_pair(op, "save_mean", save_mean, "save_rstd", save_rstd, x);
}

void check_synced_backward_args(const Tensor& x, const Tensor& weight, const Tensor& save_mean,
                                const Tensor& save_rstd, const Tensor& grad_out, const Tensor& sums, int64_t count,
                                const Tensor& grad_x) {
  constexpr const char* op = "batchnorm_train_backward_synced";
  Tensor none;
  check_backward_common(op, x, weight, grad_out, grad_x, none, none, 0.f);
  MFUSER_CHECK(save_mean.defined() && save_rstd.defined(), op, ": needs the forward's save_mean and save_rstd");
  check_stat_pair(op, "save_mean", save_mean, "save_rstd", save_rstd, x);
  check_moments_args(op, "sums", sums, x, 1);
  const Planes p(x);
  MFUSER_CHECK(count >= p.count() && count % std::max<int64_t>(p.count(), 1) == 0, op, ": count ", count,
               " is not a multiple of this rank's ", p.count(), " values per channel");
  MFUSER_CHECK(grad_x.raw_data() != grad_out.raw_data(), op, ": grad_x may not alias grad_out");
}

}  // namespace

void cpu::batchnorm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
                    const Tensor& bias, Tensor& out, float eps) {
  check_args(x, running_mean, running_var, weight, bias, out, eps);
  check_host("batchnorm", x);
  if (x.numel() == 0) return;
  const int64_t c = x.dim(1), spatial = x.numel() / (x.dim(0) * c);
  const float* in = x.data<float>();
  const float* mean = running_mean.data<float>();
  const float* var = running_var.data<float>();
  const float* w = weight.data<float>();
  const float* b = bias.data<float>();
  float* y = out.data<float>();
  // One (image, channel) plane per task.
  parallel_for(x.dim(0) * c, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t ch = plane % c;
      const float scale = float(w[ch] / std::sqrt(double(var[ch]) + eps)), m = mean[ch], shift = b[ch];
      const float* xp = in + plane * spatial;
      float* yp = y + plane * spatial;
      for (int64_t i = 0; i < spatial; ++i) yp[i] = (xp[i] - m) * scale + shift;
    }
  });
}

void cpu::batchnorm_backward(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                             const Tensor& weight, const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight,
                             Tensor& grad_bias, float eps) {
  check_args(x, running_mean, running_var, weight, weight, grad_x, eps);  // weight stands in for bias
  check_backward_common("batchnorm_backward", x, weight, grad_out, grad_x, grad_weight, grad_bias, eps);
  check_host("batchnorm_backward", x);
  const int64_t c = x.dim(1);
  std::vector<double> mean(static_cast<size_t>(c)), rstd(static_cast<size_t>(c));
  for (int64_t ch = 0; ch < c; ++ch) {
    mean[size_t(ch)] = running_mean.data<float>()[ch];
    rstd[size_t(ch)] = 1.0 / std::sqrt(double(running_var.data<float>()[ch]) + eps);
  }
  const float* w = weight.data<float>();
  // Constant statistics: grad_x = grad_out * weight * rstd.
  channel_backward(x, grad_out, grad_x, grad_weight, grad_bias,
                   [&](int64_t ch, double, double, double& a, double& b, double& shift) {
                     a = w[ch] * rstd[size_t(ch)];
                     b = shift = 0;
                   },
                   mean, rstd);
}

void cpu::batchnorm_train(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& running_mean,
                          Tensor& running_var, Tensor& out, Tensor& save_mean, Tensor& save_rstd, float momentum,
                          float eps) {
  check_train_args(x, weight, bias, running_mean, running_var, out, save_mean, save_rstd, momentum, eps);
  check_host("batchnorm_train", x);
  const Planes p(x);
  const TrainChannel train =
      train_channel(x, weight, bias, running_mean, running_var, out, save_mean, save_rstd, momentum, eps);
  parallel_for(p.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double mean, var;
      channel_stats(x.data<float>(), p, c, mean, var);
      train(p, c, mean, var, p.count());
    }
  });
}

void cpu::batchnorm_train_backward(const Tensor& x, const Tensor& weight, const Tensor& save_mean,
                                   const Tensor& save_rstd, const Tensor& grad_out, Tensor& grad_x,
                                   Tensor& grad_weight, Tensor& grad_bias, float eps) {
  check_train_backward_args(x, weight, save_mean, save_rstd, grad_out, grad_x, grad_weight, grad_bias, eps);
  check_host("batchnorm_train_backward", x);
  const Planes p(x);
  std::vector<double> mean(static_cast<size_t>(p.channels)), rstd(static_cast<size_t>(p.channels));
  if (save_mean.defined()) {
    for (int64_t c = 0; c < p.channels; ++c) {
      mean[size_t(c)] = save_mean.data<float>()[c];
      rstd[size_t(c)] = save_rstd.data<float>()[c];
    }
  } else {
    const float* xs = x.data<float>();
    parallel_for(p.channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        double var;
        channel_stats(xs, p, c, mean[size_t(c)], var);
        rstd[size_t(c)] = 1.0 / std::sqrt(var + eps);
      }
    });
  }
  const float* w = weight.data<float>();
  const double count = double(p.count());
  // Batch statistics: grad_x = weight * rstd * (grad_out - mean(grad_out) - xhat * mean(grad_out * xhat)).
  channel_backward(x, grad_out, grad_x, grad_weight, grad_bias,
                   [&](int64_t c, double sum_dy, double sum_dy_xhat, double& a, double& b, double& shift) {
                     a = w[c] * rstd[size_t(c)];
                     b = -a * sum_dy_xhat / count;
                     shift = -a * sum_dy / count;
                   },
                   mean, rstd);
}

void cpu::batchnorm_moments(const Tensor& x, Tensor& moments) {
  check_float("batchnorm_moments", "x", x);
  check_moments_args("batchnorm_moments", "moments", moments, x, 1);
  check_host("batchnorm_moments", x);
  const Planes p(x);
  float* out = moments.data<float>();
  parallel_for(p.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double mean, var;
      channel_stats(x.data<float>(), p, c, mean, var);
      out[c] = float(mean);
      out[p.channels + c] = float(var * double(p.count()));
    }
  });
}

void cpu::batchnorm_train_synced(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& gathered,
                                 Tensor& running_mean, Tensor& running_var, Tensor& out, Tensor& save_mean,
                                 Tensor& save_rstd, float momentum, float eps) {
  check_train_args(x, weight, bias, running_mean, running_var, out, save_mean, save_rstd, momentum, eps);
  check_moments_args("batchnorm_train_synced", "gathered", gathered, x, 0);
  check_host("batchnorm_train_synced", x);
  const Planes p(x);
  const int64_t ranks = gathered.dim(0);
  const float* g = gathered.data<float>();
  const TrainChannel train =
      train_channel(x, weight, bias, running_mean, running_var, out, save_mean, save_rstd, momentum, eps);
  parallel_for(p.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const auto rank_mean = [&](int64_t r) { return double(g[(r * 2) * p.channels + c]); };
      double mean = 0, m2 = 0;
      for (int64_t r = 0; r < ranks; ++r) mean += rank_mean(r);
      mean /= double(ranks);
      for (int64_t r = 0; r < ranks; ++r) {
        const double d = rank_mean(r) - mean;
        m2 += double(g[(r * 2 + 1) * p.channels + c]) + double(p.count()) * d * d;
      }
      train(p, c, mean, m2 / double(ranks * p.count()), ranks * p.count());
    }
  });
}

void cpu::batchnorm_grad_sums(const Tensor& x, const Tensor& save_mean, const Tensor& save_rstd,
                              const Tensor& grad_out, Tensor& sums) {
  check_grad_sums_args(x, save_mean, save_rstd, grad_out, sums);
  check_host("batchnorm_grad_sums", x);
  const Planes p(x);
  float* out = sums.data<float>();
  parallel_for(p.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double sum_dy, sum_dy_xhat;
      channel_grad_sums(x.data<float>(), grad_out.data<float>(), p, c, save_mean.data<float>()[c],
                        save_rstd.data<float>()[c], sum_dy, sum_dy_xhat);
      out[c] = float(sum_dy);
      out[p.channels + c] = float(sum_dy_xhat);
    }
  });
}

void cpu::batchnorm_train_backward_synced(const Tensor& x, const Tensor& weight, const Tensor& save_mean,
                                          const Tensor& save_rstd, const Tensor& grad_out, const Tensor& sums,
                                          int64_t count, Tensor& grad_x) {
  check_synced_backward_args(x, weight, save_mean, save_rstd, grad_out, sums, count, grad_x);
  check_host("batchnorm_train_backward_synced", x);
  const Planes p(x);
  const float* s = sums.data<float>();
  parallel_for(p.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const double r = save_rstd.data<float>()[c], a = weight.data<float>()[c] * r;
      write_channel_grad(x.data<float>(), grad_out.data<float>(), grad_x.data<float>(), p, c,
                         save_mean.data<float>()[c], r, a, -a * s[p.channels + c] / double(count),
                         -a * s[c] / double(count));
    }
  });
}

void batchnorm_backward(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
                        const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight, Tensor& grad_bias, float eps) {
  check_args(x, running_mean, running_var, weight, weight, grad_x, eps);
  check_backward_common("batchnorm_backward", x, weight, grad_out, grad_x, grad_weight, grad_bias, eps);
  if (x.device().is_cuda())
    return MFUSER_CUDA_KERNEL(
        cuda::batchnorm_backward(x, running_mean, running_var, weight, grad_out, grad_x, grad_weight, grad_bias, eps));
  cpu::batchnorm_backward(x, running_mean, running_var, weight, grad_out, grad_x, grad_weight, grad_bias, eps);
}

void batchnorm_train(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& running_mean,
                     Tensor& running_var, Tensor& out, Tensor& save_mean, Tensor& save_rstd, float momentum,
                     float eps) {
  check_train_args(x, weight, bias, running_mean, running_var, out, save_mean, save_rstd, momentum, eps);
  if (x.device().is_cuda())
    return MFUSER_CUDA_KERNEL(cuda::batchnorm_train(x, weight, bias, running_mean, running_var, out, save_mean,
                                                    save_rstd, momentum, eps));
  cpu::batchnorm_train(x, weight, bias, running_mean, running_var, out, save_mean, save_rstd, momentum, eps);
}

void batchnorm_train_backward(const Tensor& x, const Tensor& weight, const Tensor& save_mean, const Tensor& save_rstd,
                              const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight, Tensor& grad_bias,
                              float eps) {
  check_train_backward_args(x, weight, save_mean, save_rstd, grad_out, grad_x, grad_weight, grad_bias, eps);
  if (x.device().is_cuda())
    return MFUSER_CUDA_KERNEL(cuda::batchnorm_train_backward(x, weight, save_mean, save_rstd, grad_out, grad_x,
                                                             grad_weight, grad_bias, eps));
  cpu::batchnorm_train_backward(x, weight, save_mean, save_rstd, grad_out, grad_x, grad_weight, grad_bias, eps);
}

void batchnorm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
               const Tensor& bias, Tensor& out, float eps) {
  check_args(x, running_mean, running_var, weight, bias, out, eps);
  if (x.device().is_cuda())
    return MFUSER_CUDA_KERNEL(cuda::batchnorm(x, running_mean, running_var, weight, bias, out, eps));
  cpu::batchnorm(x, running_mean, running_var, weight, bias, out, eps);
}

void batchnorm_moments(const Tensor& x, Tensor& moments) {
  check_float("batchnorm_moments", "x", x);
  check_moments_args("batchnorm_moments", "moments", moments, x, 1);
  if (x.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::batchnorm_moments(x, moments));
  cpu::batchnorm_moments(x, moments);
}

void batchnorm_train_synced(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& gathered,
                            Tensor& running_mean, Tensor& running_var, Tensor& out, Tensor& save_mean,
                            Tensor& save_rstd, float momentum, float eps) {
  check_train_args(x, weight, bias, running_mean, running_var, out, save_mean, save_rstd, momentum, eps);
  check_moments_args("batchnorm_train_synced", "gathered", gathered, x, 0);
  if (x.device().is_cuda())
    return MFUSER_CUDA_KERNEL(cuda::batchnorm_train_synced(x, weight, bias, gathered, running_mean, running_var, out,
                                                           save_mean, save_rstd, momentum, eps));
  cpu::batchnorm_train_synced(x, weight, bias, gathered, running_mean, running_var, out, save_mean, save_rstd,
                              momentum, eps);
}

void batchnorm_grad_sums(const Tensor& x, const Tensor& save_mean, const Tensor& save_rstd, const Tensor& grad_out,
                         Tensor& sums) {
  check_grad_sums_args(x, save_mean, save_rstd, grad_out, sums);
  if (x.device().is_cuda())
    return MFUSER_CUDA_KERNEL(cuda::batchnorm_grad_sums(x, save_mean, save_rstd, grad_out, sums));
  cpu::batchnorm_grad_sums(x, save_mean, save_rstd, grad_out, sums);
}

void batchnorm_train_backward_synced(const Tensor& x, const Tensor& weight, const Tensor& save_mean,
                                     const Tensor& save_rstd, const Tensor& grad_out, const Tensor& sums,
                                     int64_t count, Tensor& grad_x) {
  check_synced_backward_args(x, weight, save_mean, save_rstd, grad_out, sums, count, grad_x);
  if (x.device().is_cuda())
    return MFUSER_CUDA_KERNEL(
        cuda::batchnorm_train_backward_synced(x, weight, save_mean, save_rstd, grad_out, sums, count, grad_x));
  cpu::batchnorm_train_backward_synced(x, weight, save_mean, save_rstd, grad_out, sums, count, grad_x);
}

}  // namespace mfuser::kernels
