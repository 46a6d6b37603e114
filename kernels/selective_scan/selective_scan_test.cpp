// selective_scan: CPU reference vs a float64 PyTorch loop, at tiny shapes and MFuser's two scans; the CUDA kernel
// vs the CPU reference (SelectiveScanCuda).
#include "kernels/selective_scan/selective_scan.h"

#include <cmath>
#include <map>
#include <vector>

#include "runtime/parallel.h"
#include "tests/common/cuda_test.h"
#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

struct Case {
  const char* name;
  bool delta_softplus;
  double max_abs_y, max_abs_state;
};
// Same table as selective_scan_golden.py. Max-abs bounds: 5-30x the largest errors seen over many seeds (outputs
// reach ~300 in tiny.full and one_step, whose softplus outliers make dt ~ 25; O(1..30) in the real cases).
const Case kCases[] = {{"tiny.full", true, 1e-3, 1e-4},     {"tiny.plain", false, 1e-6, 1e-6},
                       {"tiny.one_step", true, 1e-4, 1e-4}, {"real.backbone", true, 1e-4, 1e-5},
                       {"real.context", true, 1e-4, 1e-5}};

class SelectiveScanTest : public ::testing::Test {
 protected:
  // An optional input absent from the golden file is an undefined tensor.
  Tensor optional(const std::string& name) const {
    return golden_.file.contains(name) ? golden_.file.view(name) : Tensor();
  }
  // The case's gradients from the CPU backward, by input name ("u", "delta", ...; D and delta_bias when present),
  // every output poisoned first.
  std::map<std::string, Tensor> backward(const std::string& n, bool delta_softplus) const {
    const auto& g = golden_.file;
    std::map<std::string, Tensor> grads;
    for (const char* input : {"u", "delta", "A", "B", "C", "D", "delta_bias"}) {
      Tensor& grad = grads[input];
      if (!g.contains(n + "." + input)) continue;
      grad = Tensor::empty(g.view(n + "." + input).shape(), DType::f32);
      test::poison(grad);
    }
    kernels::cpu::selective_scan_backward(g.view(n + ".u"), g.view(n + ".delta"), g.view(n + ".A"), g.view(n + ".B"),
                                          g.view(n + ".C"), optional(n + ".D"), optional(n + ".delta_bias"),
                                          g.view(n + ".grad_out"), grads["u"], grads["delta"], grads["A"], grads["B"],
                                          grads["C"], grads["D"], grads["delta_bias"], delta_softplus);
    return grads;
  }
  test::Golden golden_{"selective_scan"};
};

// The scan in double, written again from the header's formulas (test-only): sum(grad_out * y) for the finite
// differences. Inputs are flat copies in double.
struct DoubleScan {
  int64_t batch, channels, len, state;
  bool softplus;
  std::map<std::string, std::vector<double>> in;

  double loss(const std::vector<double>& grad_out) const {
    const auto& u = in.at("u");
    const auto& delta = in.at("delta");
    const auto& A = in.at("A");
    const auto& B = in.at("B");
    const auto& C = in.at("C");
    const std::vector<double>* D = in.contains("D") ? &in.at("D") : nullptr;
    const std::vector<double>* bias = in.contains("delta_bias") ? &in.at("delta_bias") : nullptr;
    double total = 0;
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t d = 0; d < channels; ++d) {
        std::vector<double> h(size_t(state), 0.0);
        for (int64_t t = 0; t < len; ++t) {
          const size_t i = size_t((b * channels + d) * len + t);
          double dt = delta[i] + (bias ? (*bias)[size_t(d)] : 0.0);
          if (softplus && dt <= 20) dt = std::log1p(std::exp(dt));
          double y = D ? (*D)[size_t(d)] * u[i] : 0.0;
          for (int64_t n = 0; n < state; ++n) {
            const size_t bn = size_t((b * state + n) * len + t);
            h[size_t(n)] = std::exp(dt * A[size_t(d * state + n)]) * h[size_t(n)] + dt * B[bn] * u[i];
            y += h[size_t(n)] * C[bn];
          }
          total += grad_out[i] * y;
        }
      }
    return total;
  }
};

double largest(const Tensor& t) { return test::compare(t, Tensor::zeros(t.shape(), t.dtype())).max_abs; }

std::vector<double> to_doubles(const Tensor& t) {
  std::vector<double> v(size_t(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[size_t(i)] = test::value_at(t, i);
  return v;
}

TEST_F(SelectiveScanTest, CpuMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  const auto& g = golden_.file;
  for (const Case& c : kCases) {
    const std::string n = c.name;
    const Tensor ref_y = g.view(n + ".y"), ref_state = g.view(n + ".last_state");
    Tensor y = Tensor::empty(ref_y.shape(), DType::f32), state = Tensor::empty(ref_state.shape(), DType::f32);
    test::poison(y);
    test::poison(state);
    kernels::cpu::selective_scan(g.view(n + ".u"), g.view(n + ".delta"), g.view(n + ".A"), g.view(n + ".B"),
                                 g.view(n + ".C"), optional(n + ".D"), optional(n + ".delta_bias"), y, &state,
                                 c.delta_softplus);
    test::expect_close(y, ref_y, "selective_scan " + n + " y", c.max_abs_y);
    test::expect_close(state, ref_state, "selective_scan " + n + " last_state", c.max_abs_state);

    // The final state is optional and does not change y.
    Tensor y_only = Tensor::empty(ref_y.shape(), DType::f32);
    kernels::selective_scan(g.view(n + ".u"), g.view(n + ".delta"), g.view(n + ".A"), g.view(n + ".B"),
                            g.view(n + ".C"), optional(n + ".D"), optional(n + ".delta_bias"), y_only, nullptr,
                            c.delta_softplus);
    EXPECT_EQ(test::compare(y_only, y).max_abs, 0.0) << n;
  }
}

TEST_F(SelectiveScanTest, BackwardMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const Case& c : kCases) {
    const std::string n = c.name;
    for (const auto& [input, grad] : backward(n, c.delta_softplus)) {
      if (!grad.defined()) {
        EXPECT_FALSE(golden_.file.contains(n + ".grad_" + input)) << n << " " << input;
        continue;
      }
      const Tensor ref = golden_.file.view(n + ".grad_" + input);
      // Gradients span O(1) to O(1e3) (A and delta_bias sum over thousands of steps): max abs error <= 1e-5 of the
      // gradient's largest magnitude (seen: <= 1e-6 of it over many seeds).
      test::expect_close(grad, ref, "selective_scan_backward " + n + " grad_" + input, 1e-5 * largest(ref));
    }
  }
}

// grad_B, grad_C and the per-channel sums are reduced in a fixed order: bit-identical for any thread count.
TEST_F(SelectiveScanTest, BackwardDoesNotDependOnThreadCount) {
  const int threads = num_threads();
  set_num_threads(1);
  const auto serial = backward("real.context", true);
  set_num_threads(3);
  const auto parallel = backward("real.context", true);
  set_num_threads(threads);
  for (const auto& [input, grad] : serial) EXPECT_EQ(test::compare(parallel.at(input), grad).max_abs, 0.0) << input;
}

// Independent of PyTorch: the backward against central differences of a double loop, on tiny.full (softplus
// outliers included) and tiny.plain. Tolerance: the kernel runs in f32 (~1e-6 relative), the differences with
// h = 1e-6 * max(1, |x|) are good to ~1e-8 relative; rel L2 <= 1e-4 leaves room for both.
TEST_F(SelectiveScanTest, BackwardMatchesFiniteDifferences) {
  SCOPED_TRACE(golden_.seed_trace);
  const auto& g = golden_.file;
  for (const Case& c : kCases) {
    const std::string n = c.name;
    if (!n.starts_with("tiny.")) continue;
    const Tensor u = g.view(n + ".u");
    DoubleScan scan{u.dim(0), u.dim(1), u.dim(2), g.view(n + ".A").dim(1), c.delta_softplus, {}};
    for (const char* input : {"u", "delta", "A", "B", "C", "D", "delta_bias"})
      if (g.contains(n + "." + input)) scan.in[input] = to_doubles(g.view(n + "." + input));
    const std::vector<double> grad_out = to_doubles(g.view(n + ".grad_out"));
    for (const auto& [input, grad] : backward(n, c.delta_softplus)) {
      if (!grad.defined()) continue;
      Tensor numeric = Tensor::empty(grad.shape(), DType::f32);
      std::vector<double>& x = scan.in[input];
      for (size_t i = 0; i < x.size(); ++i) {
        const double keep = x[i], step = 1e-6 * std::max(1.0, std::abs(keep));
        x[i] = keep + step;
        const double up = scan.loss(grad_out);
        x[i] = keep - step;
        const double down = scan.loss(grad_out);
        x[i] = keep;
        numeric.data<float>()[i] = float((up - down) / (2 * step));
      }
      test::expect_close(grad, numeric, "selective_scan_backward " + n + " grad_" + input + " vs differences",
                         1e-4 * largest(numeric), 1e-4);
    }
  }
}

TEST_F(SelectiveScanTest, BackwardRejectsBadArguments) {
  const int64_t b = 2, d = 4, l = 6, n = 3;
  const Tensor u = Tensor::zeros({b, d, l}, DType::f32), A = Tensor::zeros({d, n}, DType::f32);
  const Tensor bc = Tensor::zeros({b, n, l}, DType::f32), vec = Tensor::zeros({d}, DType::f32);
  Tensor gu = Tensor::empty({b, d, l}, DType::f32), gdelta = Tensor::empty({b, d, l}, DType::f32);
  Tensor ga = Tensor::empty({d, n}, DType::f32), gb = Tensor::empty({b, n, l}, DType::f32);
  Tensor gc = Tensor::empty({b, n, l}, DType::f32), gd = Tensor::empty({d}, DType::f32);
  Tensor gbias = Tensor::empty({d}, DType::f32), none;
  EXPECT_NO_THROW(kernels::selective_scan_backward(u, u, A, bc, bc, vec, vec, u, gu, gdelta, ga, gb, gc, gd, gbias,
                                                   true));
  EXPECT_NO_THROW(kernels::selective_scan_backward(u, u, A, bc, bc, Tensor(), Tensor(), u, gu, gdelta, ga, gb, gc,
                                                   none, none, false));
  // grad_D / grad_delta_bias exactly when D / delta_bias are given
  EXPECT_THROW(kernels::selective_scan_backward(u, u, A, bc, bc, vec, vec, u, gu, gdelta, ga, gb, gc, none, gbias,
                                                true), Error);
  EXPECT_THROW(kernels::selective_scan_backward(u, u, A, bc, bc, Tensor(), vec, u, gu, gdelta, ga, gb, gc, gd, gbias,
                                                true), Error);
  const Tensor short_grad = Tensor::zeros({b, d, l - 1}, DType::f32);
  EXPECT_THROW(kernels::selective_scan_backward(u, u, A, bc, bc, vec, vec, short_grad, gu, gdelta, ga, gb, gc, gd,
                                                gbias, true), Error);
  Tensor wrong_ga = Tensor::empty({d, n + 1}, DType::f32), wrong_gb = Tensor::empty({b, d, l}, DType::f32);
  EXPECT_THROW(kernels::selective_scan_backward(u, u, A, bc, bc, vec, vec, u, gu, gdelta, wrong_ga, gb, gc, gd, gbias,
                                                true), Error);
  EXPECT_THROW(kernels::selective_scan_backward(u, u, A, bc, bc, vec, vec, u, gu, gdelta, ga, wrong_gb, gc, gd, gbias,
                                                true), Error);
  Tensor bf16_gu = Tensor::empty({b, d, l}, DType::bf16);
  EXPECT_THROW(kernels::selective_scan_backward(u, u, A, bc, bc, vec, vec, u, bf16_gu, gdelta, ga, gb, gc, gd, gbias,
                                                true), Error);
}

TEST_F(SelectiveScanTest, RejectsBadArguments) {
  const int64_t b = 1, d = 4, l = 6, n = 3;
  const Tensor u = Tensor::zeros({b, d, l}, DType::f32), A = Tensor::zeros({d, n}, DType::f32);
  const Tensor bc = Tensor::zeros({b, n, l}, DType::f32), vec = Tensor::zeros({d}, DType::f32);
  Tensor y = Tensor::empty({b, d, l}, DType::f32), state = Tensor::empty({b, d, n}, DType::f32);
  EXPECT_NO_THROW(kernels::selective_scan(u, u, A, bc, bc, vec, vec, y, &state, true));
  const Tensor short_u = Tensor::zeros({b, d, l - 1}, DType::f32);
  EXPECT_THROW(kernels::selective_scan(u, short_u, A, bc, bc, vec, vec, y, &state, true), Error);
  const Tensor wrong_a = Tensor::zeros({d + 1, n}, DType::f32);
  EXPECT_THROW(kernels::selective_scan(u, u, wrong_a, bc, bc, vec, vec, y, &state, true), Error);
  const Tensor per_channel_b = Tensor::zeros({b, d, n, l}, DType::f32);  // only B shared over channels
  EXPECT_THROW(kernels::selective_scan(u, u, A, per_channel_b, bc, vec, vec, y, &state, true), Error);
  const Tensor wrong_vec = Tensor::zeros({d + 1}, DType::f32);
  EXPECT_THROW(kernels::selective_scan(u, u, A, bc, bc, wrong_vec, vec, y, &state, true), Error);
  EXPECT_THROW(kernels::selective_scan(u, u, A, bc, bc, vec, wrong_vec, y, &state, true), Error);
  Tensor wrong_state = Tensor::empty({b, d, n + 1}, DType::f32);
  EXPECT_THROW(kernels::selective_scan(u, u, A, bc, bc, vec, vec, y, &wrong_state, true), Error);
  Tensor bf16_y = Tensor::empty({b, d, l}, DType::bf16);
  EXPECT_THROW(kernels::selective_scan(u, u, A, bc, bc, vec, vec, bf16_y, nullptr, true), Error);
}

// ---- CUDA kernel vs the CPU reference ----

struct CudaCase {
  const char* name;
  int64_t batch, channels, len, state;
  bool has_d, has_bias, softplus, last_state;
  float delta_lo, delta_hi;  // raw delta before delta_bias
};

// A < 0 as Mamba's -exp(A_log): every state decays, some slowly (|dt * A| down to ~1e-4, memories of thousands of
// steps). Without softplus, dt = delta + delta_bias is kept positive by the case's delta range.
//
// Tolerance: the project's 1e-4 (f32) holds at the full 2050 steps. The recurrence is contractive (exp(dt * A) <
// 1), so each step's rounding (expf within 2 ulp of std::exp, the lanes' tree sum over n in place of the
// reference's serial sum) is damped rather than amplified; the errors stay O(1e-6) relative.
void expect_scan_matches_cpu(const CudaCase& c, DType dtype) {
  using test::random_host, test::to_cuda;
  const Shape seq{c.batch, c.channels, c.len}, bc{c.batch, c.state, c.len}, state{c.batch, c.channels, c.state};
  const Tensor u = random_host(seq, dtype), delta = random_host(seq, dtype, c.delta_lo, c.delta_hi);
  const Tensor A = random_host({c.channels, c.state}, dtype, -4.f, -0.01f);
  const Tensor B = random_host(bc, dtype), C = random_host(bc, dtype);
  const Tensor D = c.has_d ? random_host({c.channels}, dtype) : Tensor();
  const Tensor bias = c.has_bias ? random_host({c.channels}, dtype, -0.5f, 0.5f) : Tensor();
  Tensor ref_y = Tensor::empty(seq, DType::f32), ref_state = Tensor::empty(state, DType::f32);
  kernels::cpu::selective_scan(u, delta, A, B, C, D, bias, ref_y, c.last_state ? &ref_state : nullptr, c.softplus);

  Tensor y = test::poisoned_cuda(seq, dtype), last = test::poisoned_cuda(state, dtype);
  kernels::selective_scan(to_cuda(u, dtype), to_cuda(delta, dtype), to_cuda(A, dtype), to_cuda(B, dtype),
                          to_cuda(C, dtype), to_cuda(D, dtype), to_cuda(bias, dtype), y,
                          c.last_state ? &last : nullptr, c.softplus);
  test::expect_cuda_close(y, ref_y, std::string("selective_scan ") + c.name + " y");
  if (c.last_state) test::expect_cuda_close(last, ref_state, std::string("selective_scan ") + c.name + " last_state");
}

// MFuser's scans (d_state 16): the backbone adapters (512 channels over 2 x 1025 tokens; batch 1 at inference, 2 in
// training) and the context decoder's (128 channels, 19 + 1025 + 19 tokens). Softplus on, D and delta_bias given.
TEST(SelectiveScanCuda, MatchesCpuAtModelShapes) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const CudaCase cases[] = {{"real.backbone.b1", 1, 512, 2050, 16, true, true, true, false, -3.f, 1.f},
                            {"real.backbone.b2", 2, 512, 2050, 16, true, true, true, true, -3.f, 1.f},
                            {"real.context", 1, 128, 1063, 16, true, true, true, true, -3.f, 1.f}};
  for (DType dtype : test::kCudaDtypes)
    for (const CudaCase& c : cases) expect_scan_matches_cpu(c, dtype);
}

// Odd lengths (1, one partial chunk, several chunks with a remainder), channel counts that leave a block partly
// empty, every geometry of the kernel (N = 1, 2, 3, 8, 16, 17, 40, 70, 256), each optional input absent and
// present, softplus off, and raw deltas up to 30 (softplus's identity branch above 20).
TEST(SelectiveScanCuda, MatchesCpuAtOddShapes) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const CudaCase cases[] = {{"one_step", 2, 5, 1, 16, true, true, true, true, -3.f, 1.f},
                            {"plain", 1, 13, 7, 3, false, false, false, true, 0.5f, 1.5f},
                            {"plain_bias", 2, 3, 130, 2, true, true, false, true, 0.5f, 1.5f},
                            {"softplus_identity", 2, 9, 130, 17, true, true, true, true, -5.f, 30.f},
                            {"one_state", 1, 37, 130, 1, false, true, true, true, -3.f, 1.f},
                            {"partial_block", 2, 13, 129, 16, true, false, true, true, -3.f, 25.f},
                            {"n8", 1, 21, 64, 8, true, true, true, false, -3.f, 1.f},
                            {"n40", 1, 6, 65, 40, true, true, true, true, -3.f, 1.f},
                            {"n70", 2, 5, 33, 70, false, false, true, true, -3.f, 1.f},
                            {"n256", 1, 3, 19, 256, true, true, true, true, -3.f, 1.f}};
  for (DType dtype : test::kCudaDtypes)
    for (const CudaCase& c : cases) expect_scan_matches_cpu(c, dtype);
}

// selective_scan_backward on CUDA vs the CPU backward: every gradient, with D and delta_bias present or absent.
// The sums over time / channels / batch run in f32 on the GPU (double on the CPU): f32 sums of <= 4100 terms
// stay O(1e-6) relative, within the 1e-4 bound.
void expect_scan_backward_matches_cpu(const CudaCase& c, DType dtype) {
  using test::random_host, test::to_cuda;
  const Shape seq{c.batch, c.channels, c.len}, bc{c.batch, c.state, c.len};
  const Tensor u = random_host(seq, dtype), delta = random_host(seq, dtype, c.delta_lo, c.delta_hi);
  const Tensor A = random_host({c.channels, c.state}, dtype, -4.f, -0.01f);
  const Tensor B = random_host(bc, dtype), C = random_host(bc, dtype), grad_y = random_host(seq, dtype);
  const Tensor D = c.has_d ? random_host({c.channels}, dtype) : Tensor();
  const Tensor bias = c.has_bias ? random_host({c.channels}, dtype, -0.5f, 0.5f) : Tensor();
  const auto host = [](const Shape& shape, bool wanted = true) {
    return wanted ? Tensor::empty(shape, DType::f32) : Tensor();
  };
  Tensor r_u = host(seq), r_delta = host(seq), r_a = host(A.shape()), r_b = host(bc), r_c = host(bc),
         r_d = host({c.channels}, c.has_d), r_bias = host({c.channels}, c.has_bias);
  kernels::cpu::selective_scan_backward(u, delta, A, B, C, D, bias, grad_y, r_u, r_delta, r_a, r_b, r_c, r_d, r_bias,
                                        c.softplus);
  const auto dev = [&](const Shape& shape, bool wanted = true) {
    return wanted ? test::poisoned_cuda(shape, dtype) : Tensor();
  };
  Tensor g_u = dev(seq), g_delta = dev(seq), g_a = dev(A.shape()), g_b = dev(bc), g_c = dev(bc),
         g_d = dev({c.channels}, c.has_d), g_bias = dev({c.channels}, c.has_bias);
  kernels::selective_scan_backward(to_cuda(u, dtype), to_cuda(delta, dtype), to_cuda(A, dtype), to_cuda(B, dtype),
                                   to_cuda(C, dtype), to_cuda(D, dtype), to_cuda(bias, dtype), to_cuda(grad_y, dtype),
                                   g_u, g_delta, g_a, g_b, g_c, g_d, g_bias, c.softplus);
  const std::string what = std::string("selective_scan_backward ") + c.name + " ";
  test::expect_cuda_close(g_u, r_u, what + "grad_u");
  test::expect_cuda_close(g_delta, r_delta, what + "grad_delta");
  test::expect_cuda_close(g_a, r_a, what + "grad_A");
  test::expect_cuda_close(g_b, r_b, what + "grad_B");
  test::expect_cuda_close(g_c, r_c, what + "grad_C");
  if (c.has_d) test::expect_cuda_close(g_d, r_d, what + "grad_D");
  if (c.has_bias) test::expect_cuda_close(g_bias, r_bias, what + "grad_delta_bias");
}

TEST(SelectiveScanCuda, BackwardMatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  // The model's shapes (batch 2 in training), then odd shapes, every geometry, D / delta_bias absent or present.
  const CudaCase cases[] = {{"real.backbone.b2", 2, 512, 2050, 16, true, true, true, false, -3.f, 1.f},
                            {"real.context", 1, 128, 1063, 16, true, true, true, false, -3.f, 1.f},
                            {"one_step", 2, 5, 1, 16, true, true, true, false, -3.f, 1.f},
                            {"plain", 1, 13, 7, 3, false, false, false, false, 0.5f, 1.5f},
                            {"plain_bias", 2, 3, 130, 2, false, true, false, false, 0.5f, 1.5f},
                            {"d_only", 2, 3, 70, 4, true, false, true, false, -3.f, 1.f},
                            {"softplus_identity", 2, 9, 130, 17, true, true, true, false, -5.f, 30.f},
                            {"one_state", 1, 37, 130, 1, false, true, true, false, -3.f, 1.f},
                            {"partial_block", 3, 13, 129, 16, true, false, true, false, -3.f, 25.f},
                            {"n8", 1, 21, 64, 8, true, true, true, false, -3.f, 1.f},
                            {"n40", 1, 6, 65, 40, true, true, true, false, -3.f, 1.f},
                            {"n70", 2, 5, 33, 70, false, false, true, false, -3.f, 1.f},
                            {"n256", 1, 3, 19, 256, true, true, true, false, -3.f, 1.f}};
  for (DType dtype : test::kCudaDtypes)
    for (const CudaCase& c : cases) expect_scan_backward_matches_cpu(c, dtype);
}

TEST(SelectiveScanCuda, BackwardRejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const int64_t b = 1, d = 4, l = 6, n = 3;
  const auto zeros = [](const Shape& shape, DType dtype) { return Tensor::zeros(shape, dtype, Device::cuda()); };
  const DType t = DType::bf16;
  const Tensor u = zeros({b, d, l}, t), A = zeros({d, n}, t), bc = zeros({b, n, l}, t), vec = zeros({d}, t);
  Tensor gu = zeros({b, d, l}, t), gdt = zeros({b, d, l}, t), ga = zeros({d, n}, t), gb = zeros({b, n, l}, t),
         gc = zeros({b, n, l}, t), gd = zeros({d}, t), gbias = zeros({d}, t);
  EXPECT_NO_THROW(kernels::selective_scan_backward(u, u, A, bc, bc, vec, vec, u, gu, gdt, ga, gb, gc, gd, gbias, true));
  Tensor f32_ga = zeros({d, n}, DType::f32);
  EXPECT_THROW(kernels::selective_scan_backward(u, u, A, bc, bc, vec, vec, u, gu, gdt, f32_ga, gb, gc, gd, gbias, true),
               Error);
  const Tensor f32_gy = zeros({b, d, l}, DType::f32);
  EXPECT_THROW(
      kernels::selective_scan_backward(u, u, A, bc, bc, vec, vec, f32_gy, gu, gdt, ga, gb, gc, gd, gbias, true), Error);
}

TEST(SelectiveScanCuda, RejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const int64_t b = 1, d = 4, l = 6, n = 3;
  const auto zeros = [](const Shape& shape, DType dtype) { return Tensor::zeros(shape, dtype, Device::cuda()); };
  for (DType dtype : test::kCudaDtypes) {
    const DType other = dtype == DType::f32 ? DType::bf16 : DType::f32;
    const Tensor u = zeros({b, d, l}, dtype), A = zeros({d, n}, dtype), bc = zeros({b, n, l}, dtype);
    const Tensor vec = zeros({d}, dtype);
    Tensor y = zeros({b, d, l}, dtype), state = zeros({b, d, n}, dtype);
    EXPECT_NO_THROW(kernels::selective_scan(u, u, A, bc, bc, vec, vec, y, &state, true));
    EXPECT_THROW(kernels::selective_scan(u, zeros({b, d, l}, other), A, bc, bc, vec, vec, y, &state, true), Error);
    EXPECT_THROW(kernels::selective_scan(u, u, zeros({d, n}, other), bc, bc, vec, vec, y, &state, true), Error);
    EXPECT_THROW(kernels::selective_scan(u, u, A, bc, bc, zeros({d}, other), vec, y, &state, true), Error);
    Tensor other_y = zeros({b, d, l}, other), other_state = zeros({b, d, n}, other);
    EXPECT_THROW(kernels::selective_scan(u, u, A, bc, bc, vec, vec, other_y, &state, true), Error);
    EXPECT_THROW(kernels::selective_scan(u, u, A, bc, bc, vec, vec, y, &other_state, true), Error);
    const Tensor f16 = zeros({b, d, l}, DType::f16);
    Tensor f16_y = zeros({b, d, l}, DType::f16);
    EXPECT_THROW(kernels::selective_scan(f16, f16, zeros({d, n}, DType::f16), zeros({b, n, l}, DType::f16),
                                         zeros({b, n, l}, DType::f16), Tensor(), Tensor(), f16_y, nullptr, true),
                 Error);
  }
  // More states than the kernel holds.
  const Tensor u = zeros({b, d, l}, DType::f32), wide_bc = zeros({b, 257, l}, DType::f32);
  Tensor y = zeros({b, d, l}, DType::f32);
  EXPECT_THROW(kernels::selective_scan(u, u, zeros({d, 257}, DType::f32), wide_bc, wide_bc, Tensor(), Tensor(), y,
                                       nullptr, true), Error);
}

}  // namespace
}  // namespace mfuser
