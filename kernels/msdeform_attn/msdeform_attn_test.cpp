// msdeform_attn: CPU reference vs F.grid_sample-based sampling in float64 PyTorch (tiny and the pixel decoder);
// the CUDA kernel vs the CPU reference (MsdeformAttnCuda).
#include "kernels/msdeform_attn/msdeform_attn.h"

#include <array>
#include <cmath>
#include <random>
#include <vector>

#include "tests/common/cuda_test.h"
#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

// Same cases as msdeform_attn_golden.py; shapes and level tables come from the file.
const char* const kCases[] = {"tiny.basic", "tiny.single_level", "real.pixel_decoder"};

class MsdeformAttnTest : public ::testing::Test {
 protected:
  test::Golden golden_{"msdeform_attn"};
};

TEST_F(MsdeformAttnTest, CpuMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  const auto& g = golden_.file;
  for (const std::string n : kCases) {
    const Tensor ref = g.view(n + ".out");
    Tensor out = Tensor::empty(ref.shape(), DType::f32);
    test::poison(out);
    kernels::cpu::msdeform_attn(g.view(n + ".value"), g.view(n + ".spatial_shapes"),
                                g.view(n + ".level_start_index"), g.view(n + ".sampling_locations"),
                                g.view(n + ".attention_weights"), out);
    // |out| < 3 (convex combinations of N(0, 1) values): f32 sampling coordinates and a 48-term sum stay
    // within ~1e-6 of the exact value.
    test::expect_close(out, ref, "msdeform_attn " + n, 1e-5);
  }
}

double largest(const Tensor& t) { return test::compare(t, Tensor::zeros(t.shape(), t.dtype())).max_abs; }

// Gradients of one case from the CPU backward, outputs poisoned first: value, sampling_locations, attention_weights.
struct Grads {
  Tensor value, locations, weights;
};
Grads run_backward(const Tensor& value, const Tensor& shapes, const Tensor& starts, const Tensor& locations,
                   const Tensor& weights, const Tensor& grad_out) {
  Grads g{Tensor::empty(value.shape(), DType::f32), Tensor::empty(locations.shape(), DType::f32),
          Tensor::empty(weights.shape(), DType::f32)};
  for (Tensor* t : {&g.value, &g.locations, &g.weights}) test::poison(*t);
  kernels::cpu::msdeform_attn_backward(value, shapes, starts, locations, weights, grad_out, g.value, g.locations,
                                       g.weights);
  return g;
}

TEST_F(MsdeformAttnTest, BackwardMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  const auto& g = golden_.file;
  for (const std::string n : kCases) {
    const Grads grads = run_backward(g.view(n + ".value"), g.view(n + ".spatial_shapes"),
                                     g.view(n + ".level_start_index"), g.view(n + ".sampling_locations"),
                                     g.view(n + ".attention_weights"), g.view(n + ".grad_out"));
    // Largest magnitudes: ~1 for value, ~10 for the weights, ~100 for the locations (x 64 pixels per unit);
    // max abs error <= 1e-5 of the largest (seen: ~1e-7 of it).
    for (auto [name, grad] : {std::pair{"value", &grads.value}, std::pair{"sampling_locations", &grads.locations},
                              std::pair{"attention_weights", &grads.weights}}) {
      const Tensor ref = g.view(n + ".grad_" + name);
      test::expect_close(*grad, ref, "msdeform_attn_backward " + n + " grad_" + name, 1e-5 * largest(ref));
    }
  }
}

// The forward in double, written again from the header's formula (test-only): sum(grad_out * out).
struct DoubleDeformAttn {
  std::vector<std::pair<int64_t, int64_t>> shapes;  // (h, w) per level
  int64_t queries, heads, head_dim, points;
  std::vector<double> value, locations, weights, grad_out;

  double loss() const {
    const int64_t levels = int64_t(shapes.size());
    double total = 0;
    for (int64_t q = 0; q < queries; ++q)
      for (int64_t h = 0; h < heads; ++h) {
        int64_t start = 0;
        for (int64_t l = 0; l < levels; ++l) {
          const auto [map_h, map_w] = shapes[size_t(l)];
          for (int64_t p = 0; p < points; ++p) {
            const size_t s = size_t(((q * heads + h) * levels + l) * points + p);
            const double x = locations[2 * s] * double(map_w) - 0.5, y = locations[2 * s + 1] * double(map_h) - 0.5;
            const double x0 = std::floor(x), y0 = std::floor(y);
            for (int64_t i = int64_t(y0); i <= int64_t(y0) + 1; ++i)
              for (int64_t j = int64_t(x0); j <= int64_t(x0) + 1; ++j) {
                if (i < 0 || i >= map_h || j < 0 || j >= map_w) continue;
                const double w = (1 - std::abs(double(i) - y)) * (1 - std::abs(double(j) - x)) * weights[s];
                for (int64_t c = 0; c < head_dim; ++c)
                  total += w * value[size_t(((start + i * map_w + j) * heads + h) * head_dim + c)] *
                           grad_out[size_t((q * heads + h) * head_dim + c)];
              }
          }
          start += map_h * map_w;
        }
      }
    return total;
  }
};

std::vector<double> to_doubles(const Tensor& t) {
  std::vector<double> v(size_t(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[size_t(i)] = test::value_at(t, i);
  return v;
}

// Independent of PyTorch: central differences (step 1e-6) of the double forward on random inputs, batch 1, two
// levels, samples in and around the maps but never within 1e-3 pixel of a pixel line (where the bilinear patch
// has a kink and differences are meaningless). The kernel runs in f32: rel L2 <= 1e-4.
TEST_F(MsdeformAttnTest, BackwardMatchesFiniteDifferences) {
  MFUSER_SEED_TRACE();
  const int64_t q = 6, h = 2, dh = 3, l = 2, p = 3;
  const Tensor shapes = Tensor::from_vector(std::vector<int64_t>{3, 4, 2, 2}, {l, 2});
  const Tensor starts = Tensor::from_vector(std::vector<int64_t>{0, 12}, {l});
  Tensor value = Tensor::empty({1, 16, h, dh}, DType::f32), locations = Tensor::empty({1, q, h, l, p, 2}, DType::f32);
  Tensor weights = Tensor::empty({1, q, h, l, p}, DType::f32), grad_out = Tensor::empty({1, q, h * dh}, DType::f32);
  test::fill_uniform(value);
  test::fill_uniform(locations, -0.4f, 1.4f);
  test::fill_uniform(weights, 0.f, 1.f);
  test::fill_uniform(grad_out);
  float* loc = locations.data<float>();
  for (int64_t i = 0; i < locations.numel(); ++i) {
    const int64_t size = (i / (2 * p)) % l == 0 ? (i % 2 == 0 ? 4 : 3) : 2;  // level's w for x, h for y
    const double pixel = double(loc[i]) * double(size) - 0.5;
    if (std::abs(pixel - std::round(pixel)) < 1e-3) loc[i] += 0.01f / float(size);
  }
  DoubleDeformAttn ref{{{3, 4}, {2, 2}}, q, h, dh, p, to_doubles(value), to_doubles(locations), to_doubles(weights),
                       to_doubles(grad_out)};
  const Grads grads = run_backward(value, shapes, starts, locations, weights, grad_out);
  for (auto [name, x, grad] : {std::tuple{"value", &ref.value, &grads.value},
                               std::tuple{"sampling_locations", &ref.locations, &grads.locations},
                               std::tuple{"attention_weights", &ref.weights, &grads.weights}}) {
    Tensor numeric = Tensor::empty(grad->shape(), DType::f32);
    for (size_t i = 0; i < x->size(); ++i) {
      const double keep = (*x)[i], step = 1e-6;
      (*x)[i] = keep + step;
      const double up = ref.loss();
      (*x)[i] = keep - step;
      const double down = ref.loss();
      (*x)[i] = keep;
      numeric.data<float>()[i] = float((up - down) / (2 * step));
    }
    test::expect_close(*grad, numeric, std::string("msdeform_attn_backward grad_") + name + " vs differences",
                       1e-4 * largest(numeric), 1e-4);
  }
}

TEST_F(MsdeformAttnTest, BackwardRejectsBadArguments) {
  const int64_t b = 1, q = 3, h = 2, dh = 4, l = 2, p = 2;
  const Tensor value = Tensor::zeros({b, 4 * 4 + 2 * 2, h, dh}, DType::f32);
  const Tensor shapes = Tensor::from_vector(std::vector<int64_t>{4, 4, 2, 2}, {l, 2});
  const Tensor starts = Tensor::from_vector(std::vector<int64_t>{0, 16}, {l});
  const Tensor locs = Tensor::zeros({b, q, h, l, p, 2}, DType::f32);
  const Tensor weights = Tensor::zeros({b, q, h, l, p}, DType::f32);
  const Tensor grad_out = Tensor::zeros({b, q, h * dh}, DType::f32);
  Tensor gv = Tensor::empty(value.shape(), DType::f32), gl = Tensor::empty(locs.shape(), DType::f32);
  Tensor gw = Tensor::empty(weights.shape(), DType::f32);
  EXPECT_NO_THROW(kernels::msdeform_attn_backward(value, shapes, starts, locs, weights, grad_out, gv, gl, gw));
  const Tensor bad_starts = Tensor::from_vector(std::vector<int64_t>{0, 15}, {l});
  EXPECT_THROW(kernels::msdeform_attn_backward(value, shapes, bad_starts, locs, weights, grad_out, gv, gl, gw), Error);
  const Tensor wrong_grad_out = Tensor::zeros({b, q, h, dh}, DType::f32);
  EXPECT_THROW(kernels::msdeform_attn_backward(value, shapes, starts, locs, weights, wrong_grad_out, gv, gl, gw),
               Error);
  Tensor wrong_gv = Tensor::empty({b, 20, h, dh + 1}, DType::f32);
  EXPECT_THROW(kernels::msdeform_attn_backward(value, shapes, starts, locs, weights, grad_out, wrong_gv, gl, gw),
               Error);
  Tensor wrong_gl = Tensor::empty({b, q, h, l, p}, DType::f32);
  EXPECT_THROW(kernels::msdeform_attn_backward(value, shapes, starts, locs, weights, grad_out, gv, wrong_gl, gw),
               Error);
  Tensor bf16_gw = Tensor::empty(weights.shape(), DType::bf16);
  EXPECT_THROW(kernels::msdeform_attn_backward(value, shapes, starts, locs, weights, grad_out, gv, gl, bf16_gw), Error);
}

TEST_F(MsdeformAttnTest, RejectsBadArguments) {
  const int64_t b = 1, q = 3, h = 2, dh = 4, l = 2, p = 2;
  const Tensor value = Tensor::zeros({b, 4 * 4 + 2 * 2, h, dh}, DType::f32);
  const Tensor shapes = Tensor::from_vector(std::vector<int64_t>{4, 4, 2, 2}, {l, 2});
  const Tensor starts = Tensor::from_vector(std::vector<int64_t>{0, 16}, {l});
  const Tensor locs = Tensor::zeros({b, q, h, l, p, 2}, DType::f32);
  const Tensor weights = Tensor::zeros({b, q, h, l, p}, DType::f32);
  Tensor out = Tensor::empty({b, q, h * dh}, DType::f32);
  EXPECT_NO_THROW(kernels::msdeform_attn(value, shapes, starts, locs, weights, out));

  const Tensor bad_starts = Tensor::from_vector(std::vector<int64_t>{0, 15}, {l});
  EXPECT_THROW(kernels::msdeform_attn(value, shapes, bad_starts, locs, weights, out), Error);
  const Tensor too_big = Tensor::from_vector(std::vector<int64_t>{4, 4, 2, 3}, {l, 2});  // 22 pixels, value has 20
  EXPECT_THROW(kernels::msdeform_attn(value, too_big, starts, locs, weights, out), Error);
  const Tensor i32_shapes = Tensor::from_vector(std::vector<int32_t>{4, 4, 2, 2}, {l, 2});
  EXPECT_THROW(kernels::msdeform_attn(value, i32_shapes, starts, locs, weights, out), Error);
  const Tensor three_levels = Tensor::zeros({b, q, h, l + 1, p, 2}, DType::f32);
  EXPECT_THROW(kernels::msdeform_attn(value, shapes, starts, three_levels, weights, out), Error);
  const Tensor wrong_weights = Tensor::zeros({b, q, h, l, p + 1}, DType::f32);
  EXPECT_THROW(kernels::msdeform_attn(value, shapes, starts, locs, wrong_weights, out), Error);
  Tensor wrong_out = Tensor::empty({b, q, h, dh}, DType::f32);
  EXPECT_THROW(kernels::msdeform_attn(value, shapes, starts, locs, weights, wrong_out), Error);
}

// ---- CUDA kernel vs the CPU reference ----

struct CudaCase {
  const char* name;
  int64_t batch, queries, heads, head_dim, points;
  std::vector<std::array<int64_t, 2>> levels;  // (h, w), in value's order
};

// Sampling locations: each coordinate either uniform in [-0.3, 1.3) (partly outside the map: zero padding) or, with
// probability 1/2, on the half-pixel lattice k / (2n), k in [-3, 2n + 3]: pixel centres, pixel edges, the map's
// outer edges (0 and 1) and just beyond them, where floor() and the border tests decide which corners count.
Tensor sampling_locations(const CudaCase& c, DType dtype) {
  const auto levels = int64_t(c.levels.size());
  Tensor locs = test::random_host({c.batch, c.queries, c.heads, levels, c.points, 2}, DType::f32, -0.3f, 1.3f);
  float* v = locs.data<float>();
  std::bernoulli_distribution on_lattice(0.5);
  for (int64_t i = 0; i < locs.numel(); ++i) {
    if (!on_lattice(test::rng())) continue;
    const auto [h, w] = c.levels[size_t(i / (2 * c.points) % levels)];
    const int64_t n = i % 2 == 0 ? w : h;  // x scales with the width, y with the height
    std::uniform_int_distribution<int64_t> k(-3, 2 * n + 3);
    v[i] = float(k(test::rng())) / float(2 * n);
  }
  return test::representable(locs, dtype);
}

// Host inputs of one case (value, weights and locations representable in dtype; the level tables i64).
struct DeformInputs {
  Tensor spatial_shapes, level_start, value, locations, weights;
};

DeformInputs deform_inputs(const CudaCase& c, DType dtype) {
  std::vector<int64_t> shapes, starts;
  int64_t pixels = 0;
  for (const auto& [h, w] : c.levels) {
    shapes.insert(shapes.end(), {h, w});
    starts.push_back(pixels);
    pixels += h * w;
  }
  const auto levels = int64_t(c.levels.size());
  return {Tensor::from_vector(shapes, {levels, 2}), Tensor::from_vector(starts, {levels}),
          test::random_host({c.batch, pixels, c.heads, c.head_dim}, dtype), sampling_locations(c, dtype),
          test::random_host({c.batch, c.queries, c.heads, levels, c.points}, dtype, 0.f, 1.f)};
}

void expect_msdeform_matches_cpu(const CudaCase& c, DType dtype) {
  const DeformInputs in = deform_inputs(c, dtype);
  const Shape out_shape{c.batch, c.queries, c.heads * c.head_dim};
  Tensor ref = Tensor::empty(out_shape, DType::f32);
  kernels::cpu::msdeform_attn(in.value, in.spatial_shapes, in.level_start, in.locations, in.weights, ref);

  Tensor out = test::poisoned_cuda(out_shape, dtype);
  kernels::msdeform_attn(test::to_cuda(in.value, dtype), in.spatial_shapes.to(Device::cuda()),
                         in.level_start.to(Device::cuda()), test::to_cuda(in.locations, dtype),
                         test::to_cuda(in.weights, dtype), out);
  test::expect_cuda_close(out, ref, std::string("msdeform_attn ") + c.name);
}

// Backward: CUDA vs the CPU reference. grad_value is summed with f32 atomics on CUDA (order varies run to run);
// the reference sums in f32 in query order, so the two differ by f32 rounding only (far below 1e-4).
void expect_msdeform_backward_matches_cpu(const CudaCase& c, DType dtype) {
  const DeformInputs in = deform_inputs(c, dtype);
  const Tensor grad_out = test::random_host({c.batch, c.queries, c.heads * c.head_dim}, dtype);
  Tensor ref_value = Tensor::empty(in.value.shape(), DType::f32);
  Tensor ref_locations = Tensor::empty(in.locations.shape(), DType::f32);
  Tensor ref_weights = Tensor::empty(in.weights.shape(), DType::f32);
  kernels::cpu::msdeform_attn_backward(in.value, in.spatial_shapes, in.level_start, in.locations, in.weights,
                                       grad_out, ref_value, ref_locations, ref_weights);
  Tensor grad_value = test::poisoned_cuda(in.value.shape(), dtype);
  Tensor grad_locations = test::poisoned_cuda(in.locations.shape(), dtype);
  Tensor grad_weights = test::poisoned_cuda(in.weights.shape(), dtype);
  kernels::msdeform_attn_backward(test::to_cuda(in.value, dtype), in.spatial_shapes.to(Device::cuda()),
                                  in.level_start.to(Device::cuda()), test::to_cuda(in.locations, dtype),
                                  test::to_cuda(in.weights, dtype), test::to_cuda(grad_out, dtype), grad_value,
                                  grad_locations, grad_weights);
  const std::string what = std::string("msdeform_attn_backward ") + c.name;
  test::expect_cuda_close(grad_value, ref_value, what + " grad_value");
  test::expect_cuda_close(grad_locations, ref_locations, what + " grad_sampling_locations");
  test::expect_cuda_close(grad_weights, ref_weights, what + " grad_attention_weights");
}

// The pixel decoder's encoder self-attention: levels 16x16, 32x32, 64x64 (S = Q = 5376), 8 heads x 32, 4 points.
TEST(MsdeformAttnCuda, MatchesCpuAtModelShape) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const CudaCase real{"real.pixel_decoder", 1, 5376, 8, 32, 4, {{16, 16}, {32, 32}, {64, 64}}};
  for (DType dtype : test::kCudaDtypes) expect_msdeform_matches_cpu(real, dtype);
}


// The odd shapes of the forward and backward GPU tests.
std::vector<CudaCase> odd_cases() {
  return {{"tiny.basic", 2, 11, 3, 5, 3, {{3, 5}, {1, 1}, {7, 2}}},
          {"tiny.single_level", 1, 7, 2, 33, 2, {{4, 4}}},
          {"tiny.one_channel", 2, 9, 4, 1, 5, {{2, 3}, {5, 1}}}};
}

// Non-square and 1x1 levels, head_dim not a multiple of 32 (1, 5, 33: warps straddle heads and queries), a batch.
TEST(MsdeformAttnCuda, MatchesCpuAtOddShapes) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (DType dtype : test::kCudaDtypes)
    for (const CudaCase& c : odd_cases()) expect_msdeform_matches_cpu(c, dtype);
}

TEST(MsdeformAttnCuda, BackwardMatchesCpuAtModelShape) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const CudaCase real{"real.pixel_decoder", 1, 5376, 8, 32, 4, {{16, 16}, {32, 32}, {64, 64}}};
  for (DType dtype : test::kCudaDtypes) expect_msdeform_backward_matches_cpu(real, dtype);
}

TEST(MsdeformAttnCuda, BackwardMatchesCpuAtOddShapes) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (DType dtype : test::kCudaDtypes)
    for (const CudaCase& c : odd_cases()) expect_msdeform_backward_matches_cpu(c, dtype);
}

TEST(MsdeformAttnCuda, RejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const int64_t b = 1, q = 3, h = 2, dh = 4, l = 2, p = 2;
  const auto zeros = [](const Shape& shape, DType dtype) { return Tensor::zeros(shape, dtype, Device::cuda()); };
  const Tensor shapes = Tensor::from_vector(std::vector<int64_t>{4, 4, 2, 2}, {l, 2}).to(Device::cuda());
  const Tensor starts = Tensor::from_vector(std::vector<int64_t>{0, 16}, {l}).to(Device::cuda());
  for (DType dtype : test::kCudaDtypes) {
    const DType other = dtype == DType::f32 ? DType::bf16 : DType::f32;
    const Tensor value = zeros({b, 20, h, dh}, dtype), locs = zeros({b, q, h, l, p, 2}, dtype);
    const Tensor weights = zeros({b, q, h, l, p}, dtype);
    Tensor out = zeros({b, q, h * dh}, dtype), other_out = zeros({b, q, h * dh}, other);
    EXPECT_NO_THROW(kernels::msdeform_attn(value, shapes, starts, locs, weights, out));
    EXPECT_THROW(kernels::msdeform_attn(value, shapes, starts, zeros({b, q, h, l, p, 2}, other), weights, out), Error);
    EXPECT_THROW(kernels::msdeform_attn(value, shapes, starts, locs, zeros({b, q, h, l, p}, other), out), Error);
    EXPECT_THROW(kernels::msdeform_attn(value, shapes, starts, locs, weights, other_out), Error);
    Tensor grad_value = zeros({b, 20, h, dh}, dtype), grad_locs = zeros({b, q, h, l, p, 2}, dtype);
    Tensor grad_weights = zeros({b, q, h, l, p}, dtype), other_grad_weights = zeros({b, q, h, l, p}, other);
    EXPECT_NO_THROW(kernels::msdeform_attn_backward(value, shapes, starts, locs, weights, out, grad_value, grad_locs,
                                                    grad_weights));
    EXPECT_THROW(kernels::msdeform_attn_backward(value, shapes, starts, locs, weights, out, grad_value, grad_locs,
                                                 other_grad_weights),
                 Error);
    EXPECT_THROW(kernels::msdeform_attn_backward(value, shapes, starts, locs, weights, other_out, grad_value,
                                                 grad_locs, grad_weights),
                 Error);
    // The level tables must live on the value's device.
    const Tensor host_shapes = Tensor::from_vector(std::vector<int64_t>{4, 4, 2, 2}, {l, 2});
    EXPECT_THROW(kernels::msdeform_attn(value, host_shapes, starts, locs, weights, out), Error);
  }
  const Tensor f16_value = zeros({b, 20, h, dh}, DType::f16);
  Tensor f16_out = zeros({b, q, h * dh}, DType::f16);
  EXPECT_THROW(kernels::msdeform_attn(f16_value, shapes, starts, zeros({b, q, h, l, p, 2}, DType::f16),
                                      zeros({b, q, h, l, p}, DType::f16), f16_out), Error);
}

}  // namespace
}  // namespace mfuser
