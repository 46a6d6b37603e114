// sum_of_squares: the CPU reference equals a plain double loop bit for bit (tiny to model-sized tensors, NaN/Inf
// kept to their own tensor's entry, squares past the f32 range); the CUDA kernel agrees with it to rounding over
// a list shaped like the model's ~250 gradients, repeats bit for bit, and beats the host path it replaces.
#include "kernels/sum_of_squares/sum_of_squares.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "tests/common/cuda_test.h"

namespace mfuser {
namespace {

using kernels::sum_of_squares;

// The oracle: each tensor's squares added in index order.
std::vector<double> plain_loop(const std::vector<Tensor>& host) {
  std::vector<double> out;
  for (const Tensor& t : host) {
    double sum = 0;
    for (int64_t i = 0; i < t.numel(); ++i) sum += double(t.data<float>()[i]) * double(t.data<float>()[i]);
    out.push_back(sum);
  }
  return out;
}

std::vector<Tensor> random_tensors(const std::vector<Shape>& shapes) {
  std::vector<Tensor> out;
  for (const Shape& s : shapes) out.push_back(test::random_host(s, DType::f32));
  return out;
}

std::vector<Tensor> to_cuda(const std::vector<Tensor>& host) {
  std::vector<Tensor> out;
  for (const Tensor& t : host) out.push_back(t.to(Device::cuda()));
  return out;
}

// Sizes around the CUDA chunk (8192 elements) and the block (256 threads), zero-size, and model-sized weights
// (an MVFuser in_proj 1024x1024, a ViT-L MLP 4096x1024).
const std::vector<Shape> kShapes = {{0},    {1},       {3, 5},     {255},       {256},        {257},
                                    {8191}, {8192},    {8193},     {2, 0, 3},   {65537},      {1024, 1024},
                                    {4096, 1024}};

// NaN, +Inf and -Inf in some tensors (the last chunk of a multi-chunk one, an Inf beside a NaN), finite ones
// around them, and squares past the f32 range (finite in double).
std::vector<Tensor> nonfinite_tensors() {
  std::vector<Tensor> t = random_tensors({{1000}, {3000}, {9000}, {5}, {20000}, {1}, {2}});
  const float inf = std::numeric_limits<float>::infinity();
  t[1].data<float>()[2500] = std::numeric_limits<float>::quiet_NaN();
  t[2].data<float>()[8500] = inf;
  t[3].data<float>()[0] = -inf;
  t[4].data<float>()[10] = inf;
  t[4].data<float>()[19999] = std::numeric_limits<float>::quiet_NaN();
  t[6].data<float>()[0] = 3e38f;
  t[6].data<float>()[1] = -3e38f;
  return t;
}

// Each entry against the oracle: NaN where it is NaN, the same infinity, else within rel_tol (0: bit for bit).
// Returns the largest relative error of the finite entries.
double expect_sums(const std::vector<double>& got, const std::vector<double>& want, double rel_tol,
                   const std::string& what) {
  EXPECT_EQ(got.size(), want.size()) << what;
  double worst = 0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    if (std::isnan(want[i])) {
      EXPECT_TRUE(std::isnan(got[i])) << what << " entry " << i << ": " << got[i];
    } else if (std::isinf(want[i]) || rel_tol == 0) {
      EXPECT_EQ(got[i], want[i]) << what << " entry " << i;
    } else {
      const double rel = want[i] == 0 ? std::abs(got[i]) : std::abs(got[i] - want[i]) / want[i];
      worst = std::max(worst, rel);
      EXPECT_LE(rel, rel_tol) << what << " entry " << i << ": " << got[i] << " vs " << want[i];
    }
  }
  return worst;
}

TEST(SumOfSquares, CpuEqualsPlainLoop) {
  MFUSER_SEED_TRACE();
  const std::vector<Tensor> t = random_tensors(kShapes);
  expect_sums(sum_of_squares(t), plain_loop(t), 0, "random");
}

TEST(SumOfSquares, NonFiniteStaysInItsEntry) {
  MFUSER_SEED_TRACE();
  const std::vector<Tensor> t = nonfinite_tensors();
  const std::vector<double> got = sum_of_squares(t);
  ASSERT_EQ(got.size(), t.size());
  EXPECT_TRUE(std::isfinite(got[0]));
  EXPECT_TRUE(std::isnan(got[1]));
  EXPECT_EQ(got[2], std::numeric_limits<double>::infinity());
  EXPECT_EQ(got[3], std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isnan(got[4]));
  EXPECT_TRUE(std::isfinite(got[5]));
  EXPECT_EQ(got[6], 2 * double(3e38f) * double(3e38f));
  expect_sums(got, plain_loop(t), 0, "non-finite");
}

TEST(SumOfSquares, EmptyListAndBadArguments) {
  EXPECT_TRUE(sum_of_squares({}).empty());
  const std::vector<Tensor> ints = {Tensor::zeros({4}, DType::f32), Tensor::zeros({4}, DType::i32)};
  EXPECT_THROW(sum_of_squares(ints), Error);
  const std::vector<Tensor> undefined = {Tensor()};
  EXPECT_THROW(sum_of_squares(undefined), Error);
}

// As many tensors as the model has gradients (~250): kShapes but its 4096x1024 cycled, and that one five times
// (44M elements).
std::vector<Shape> model_like_shapes() {
  std::vector<Shape> shapes;
  for (int i = 0; i < 250; ++i) shapes.push_back(i % 50 == 7 ? Shape{4096, 1024} : kShapes[size_t(i) % 12]);
  return shapes;
}

TEST(SumOfSquaresCuda, MatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const std::vector<Tensor> host = random_tensors(model_like_shapes());
  const std::vector<double> got = sum_of_squares(to_cuda(host));
  // Both sides add in double, in different orders: the CPU loop's error is below n * 2^-53 (n <= 4.2M terms,
  // 4.7e-10), the kernel's tree far less.
  const double worst = expect_sums(got, plain_loop(host), 1e-9, "model-like");
  std::printf("[ errors   ] sum_of_squares, %zu tensors: max relative %.3g\n", host.size(), worst);
}

TEST(SumOfSquaresCuda, NonFiniteStaysInItsEntry) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const std::vector<Tensor> host = nonfinite_tensors();
  expect_sums(sum_of_squares(to_cuda(host)), plain_loop(host), 1e-9, "non-finite");
}

TEST(SumOfSquaresCuda, RepeatsBitForBit) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const std::vector<Tensor> device = to_cuda(random_tensors(model_like_shapes()));
  const std::vector<double> first = sum_of_squares(device), second = sum_of_squares(device);
  ASSERT_EQ(first.size(), second.size());
  for (size_t i = 0; i < first.size(); ++i)
    EXPECT_EQ(std::bit_cast<uint64_t>(first[i]), std::bit_cast<uint64_t>(second[i])) << "entry " << i;
}

TEST(SumOfSquaresCuda, RejectsMixedArguments) {
  MFUSER_REQUIRE_CUDA();
  const std::vector<Tensor> mixed = {Tensor::zeros({4}, DType::f32, Device::cuda()), Tensor::zeros({4}, DType::f32)};
  EXPECT_THROW(sum_of_squares(mixed), Error);
  const std::vector<Tensor> bf16 = {Tensor::zeros({4}, DType::bf16, Device::cuda())};
  EXPECT_THROW(sum_of_squares(bf16), Error);
}

// The trainer's case at the real size: ~630 MB of gradients in 250 views of one device buffer (as the executor's
// arena holds them). Every element is 0.5, so each sum is exactly numel / 4 on both paths. Prints the time of
// the reduction and of the host path it replaced (a device-to-host copy per tensor, then the CPU reference).
TEST(SumOfSquaresCuda, ModelSizedAgainstTheHostPath) {
  MFUSER_REQUIRE_CUDA();
  const int64_t sizes[] = {2 << 20, 1 << 20, 1024, 1024, 4096};
  std::vector<int64_t> offsets = {0};
  for (int i = 0; i < 250; ++i) offsets.push_back(offsets.back() + sizes[i % 5]);
  Tensor host = Tensor::empty({offsets.back()}, DType::f32);
  std::fill_n(host.data<float>(), host.numel(), 0.5f);
  const Tensor buffer = host.to(Device::cuda());
  std::vector<Tensor> grads;
  for (size_t i = 0; i + 1 < offsets.size(); ++i) grads.push_back(buffer.slice_rows(offsets[i], offsets[i + 1]));

  using clock = std::chrono::steady_clock;
  const auto ms = [](clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };
  sum_of_squares(grads);  // warm-up: the allocator's first blocks, the module load
  constexpr int kRepeats = 10;
  std::vector<double> device_sums;
  const auto start = clock::now();
  for (int r = 0; r < kRepeats; ++r) device_sums = sum_of_squares(grads);
  const double device_ms = ms(clock::now() - start) / kRepeats;
  const auto host_start = clock::now();
  std::vector<Tensor> copies;
  for (const Tensor& g : grads) copies.push_back(g.to(Device::cpu()));
  const std::vector<double> host_sums = kernels::cpu::sum_of_squares(copies);
  const double host_ms = ms(clock::now() - host_start);

  std::vector<double> want;
  for (const Tensor& g : grads) want.push_back(double(g.numel()) / 4);
  expect_sums(device_sums, want, 0, "device");
  expect_sums(host_sums, want, 0, "host");
  std::printf("[ timing   ] %zu tensors, %.0f MB: device reduction %.3f ms, host copies + loop %.1f ms\n",
              grads.size(), double(buffer.nbytes()) / 1e6, device_ms, host_ms);
}

}  // namespace
}  // namespace mfuser
