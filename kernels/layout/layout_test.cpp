// layout: permute / concat / split bit-exact against PyTorch (tiny shapes and the model's real ones).
#include "kernels/layout/layout.h"

#include <numeric>

#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

const char* const kPermuteCases[] = {"tiny.perm6",     "tiny.nchw_to_nhwc",    "tiny.swap_pairs", "tiny.identity",
                                     "tiny.unit_dims", "real.patch_features", "real.value_heads"};
const char* const kSplitCases[] = {"tiny.middle", "tiny.last", "tiny.first", "tiny.six_dims", "real.tokens",
                                   "real.x_dbl"};

std::vector<int> read_ints(const Tensor& t) {
  const int64_t* p = t.data<int64_t>();
  return std::vector<int>(p, p + t.numel());
}

// Layout ops move bits: the output must equal PyTorch's exactly, with every element written.
void expect_bit_exact(const Tensor& out, const Tensor& ref) {
  const test::ErrorStats e = test::compare(out, ref);
  EXPECT_EQ(e.nonfinite, 0) << test::describe(e);
  EXPECT_EQ(e.max_abs, 0.0) << test::describe(e);
}

class LayoutTest : public ::testing::Test {
 protected:
  std::vector<Tensor> pieces(const std::string& name) const {
    std::vector<Tensor> out;
    while (g_.contains(name + ".piece" + std::to_string(out.size())))
      out.push_back(g_.view(name + ".piece" + std::to_string(out.size())));
    return out;
  }
  test::Golden golden_{"layout"};
  const SafetensorsReader& g_ = golden_.file;
};

TEST_F(LayoutTest, PermuteMatchesPyTorchBitExact) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const std::string name : kPermuteCases) {
    SCOPED_TRACE(name);
    const Tensor ref = g_.view(name + ".out");
    Tensor out = Tensor::empty(ref.shape(), DType::f32);
    test::poison(out);
    kernels::cpu::permute(g_.view(name + ".x"), out, read_ints(g_.view(name + ".perm")));
    expect_bit_exact(out, ref);
  }
}

TEST_F(LayoutTest, SplitMatchesPyTorchBitExact) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const std::string name : kSplitCases) {
    SCOPED_TRACE(name);
    const std::vector<Tensor> refs = pieces(name);
    std::vector<Tensor> outs;
    for (const Tensor& r : refs) {
      outs.push_back(Tensor::empty(r.shape(), DType::f32));
      test::poison(outs.back());
    }
    kernels::cpu::split(g_.view(name + ".whole"), outs, read_ints(g_.view(name + ".dim"))[0]);
    for (size_t i = 0; i < refs.size(); ++i) expect_bit_exact(outs[i], refs[i]);
  }
}

TEST_F(LayoutTest, ConcatMatchesPyTorchBitExact) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const std::string name : kSplitCases) {
    SCOPED_TRACE(name);
    const Tensor ref = g_.view(name + ".whole");
    Tensor out = Tensor::empty(ref.shape(), DType::f32);
    test::poison(out);
    kernels::cpu::concat(pieces(name), out, read_ints(g_.view(name + ".dim"))[0]);
    expect_bit_exact(out, ref);
  }
}

// The ops are dtype-agnostic: 8-byte and 1-byte elements go through the same paths as f32.
TEST_F(LayoutTest, MovesOtherDtypes) {
  std::vector<int64_t> iota(2 * 3 * 4);
  std::iota(iota.begin(), iota.end(), 0);
  const Tensor x = Tensor::from_vector(iota, {2, 3, 4});
  Tensor y = Tensor::empty({4, 2, 3}, DType::i64);
  const int perm[] = {2, 0, 1};
  kernels::permute(x, y, perm);
  for (int64_t k = 0; k < 4; ++k)
    for (int64_t i = 0; i < 2; ++i)
      for (int64_t j = 0; j < 3; ++j) EXPECT_EQ(y.data<int64_t>()[(k * 2 + i) * 3 + j], (i * 3 + j) * 4 + k);

  const Tensor bytes = Tensor::from_vector(std::vector<uint8_t>{1, 2, 3, 4, 5, 6}, {2, 3});
  std::vector<Tensor> cols = {Tensor::empty({2, 1}, DType::u8), Tensor::empty({2, 2}, DType::u8)};
  kernels::split(bytes, cols, 1);
  EXPECT_EQ(cols[0].data<uint8_t>()[1], 4);
  EXPECT_EQ(cols[1].data<uint8_t>()[1], 3);
  Tensor back = Tensor::zeros({2, 3}, DType::u8);
  kernels::concat(cols, back, -1);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(back.data<uint8_t>()[i], i + 1);
}

// The backward contract of layout.h: each op's gradient is another layout op, bit-exact against autograd.
TEST_F(LayoutTest, BackwardIsTheInverseOpLikeAutograd) {
  SCOPED_TRACE(golden_.seed_trace);
  int checked = 0;
  for (const std::string name : kPermuteCases) {
    if (!g_.contains(name + ".grad_x")) continue;
    SCOPED_TRACE(name + " permute backward");
    const std::vector<int> perm = read_ints(g_.view(name + ".perm"));
    std::vector<int> inverse(perm.size());
    for (size_t i = 0; i < perm.size(); ++i) inverse[size_t(perm[i])] = int(i);
    const Tensor ref = g_.view(name + ".grad_x");
    Tensor grad_x = Tensor::empty(ref.shape(), DType::f32);
    test::poison(grad_x);
    kernels::permute(g_.view(name + ".grad_out"), grad_x, inverse);
    expect_bit_exact(grad_x, ref);
    ++checked;
  }
  for (const std::string name : kSplitCases) {
    if (!g_.contains(name + ".grad_whole")) continue;
    const int dim = read_ints(g_.view(name + ".dim"))[0];
    {
      SCOPED_TRACE(name + " split backward = concat");
      std::vector<Tensor> grads;
      while (g_.contains(name + ".grad_piece" + std::to_string(grads.size())))
        grads.push_back(g_.view(name + ".grad_piece" + std::to_string(grads.size())));
      const Tensor ref = g_.view(name + ".grad_whole");
      Tensor grad_whole = Tensor::empty(ref.shape(), DType::f32);
      test::poison(grad_whole);
      kernels::concat(grads, grad_whole, dim);
      expect_bit_exact(grad_whole, ref);
    }
    {
      SCOPED_TRACE(name + " concat backward = split");
      std::vector<Tensor> grads, refs;
      while (g_.contains(name + ".grad_cat_piece" + std::to_string(refs.size()))) {
        refs.push_back(g_.view(name + ".grad_cat_piece" + std::to_string(refs.size())));
        grads.push_back(Tensor::empty(refs.back().shape(), DType::f32));
        test::poison(grads.back());
      }
      kernels::split(g_.view(name + ".grad_cat"), grads, dim);
      for (size_t i = 0; i < refs.size(); ++i) expect_bit_exact(grads[i], refs[i]);
    }
    ++checked;
  }
  EXPECT_EQ(checked, 11);  // BACKWARD of layout_golden.py: 5 tiny + 1 real permutes, 4 tiny + 1 real splits
}

TEST_F(LayoutTest, RejectsBadArguments) {
  const Tensor x = Tensor::zeros({2, 3, 4}, DType::f32);
  Tensor y = Tensor::empty({4, 2, 3}, DType::f32);
  const int not_a_perm[] = {2, 0, 0}, too_short[] = {1, 0}, good[] = {2, 0, 1}, wrong_shape[] = {0, 2, 1};
  EXPECT_THROW(kernels::permute(x, y, not_a_perm), Error);
  EXPECT_THROW(kernels::permute(x, y, too_short), Error);
  EXPECT_THROW(kernels::permute(x, y, wrong_shape), Error);
  Tensor y_i32 = Tensor::empty({4, 2, 3}, DType::i32);
  EXPECT_THROW(kernels::permute(x, y_i32, good), Error);

  Tensor whole = Tensor::empty({2, 5, 4}, DType::f32);
  std::vector<Tensor> short_pieces = {Tensor::zeros({2, 2, 4}, DType::f32), Tensor::zeros({2, 2, 4}, DType::f32)};
  EXPECT_THROW(kernels::concat(short_pieces, whole, 1), Error);   // 2 + 2 != 5
  EXPECT_THROW(kernels::split(whole, short_pieces, 1), Error);
  std::vector<Tensor> mismatched = {Tensor::zeros({2, 2, 4}, DType::f32), Tensor::zeros({2, 3, 3}, DType::f32)};
  EXPECT_THROW(kernels::concat(mismatched, whole, 1), Error);     // dim 2 differs
  std::vector<Tensor> fits = {Tensor::zeros({2, 2, 4}, DType::f32), Tensor::zeros({2, 3, 4}, DType::f32)};
  EXPECT_THROW(kernels::concat(fits, whole, 3), Error);           // dim out of range
  EXPECT_THROW(kernels::concat(std::vector<Tensor>{}, whole, 1), Error);
  EXPECT_NO_THROW(kernels::concat(fits, whole, -2));
}

}  // namespace
}  // namespace mfuser
