// layout: permute / concat / split bit-exact against PyTorch (tiny shapes and the model's real ones).
#include "kernels/layout/layout.h"

#include <cstring>
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

// ---- CUDA vs the CPU reference: bit-exact, for every element size ----------------------------------------------

const DType kLayoutDtypes[] = {DType::f32, DType::bf16, DType::u8, DType::i64};

// Random bytes in a host tensor of any dtype (the layout ops never look at the values).
Tensor random_bytes(const Shape& shape, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  auto* p = static_cast<uint8_t*>(t.raw_data());
  for (size_t i = 0; i < t.nbytes(); i += 8) {
    const uint64_t bits = test::rng()();
    std::memcpy(p + i, &bits, std::min<size_t>(8, t.nbytes() - i));
  }
  return t;
}

Tensor poisoned_device(const Shape& shape, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype, Device::cuda());
  test::poison(t);
  return t;
}

void expect_same_bytes(const Tensor& device_out, const Tensor& host_ref, const std::string& what) {
  const Tensor host = device_out.to(Device::cpu());
  ASSERT_EQ(host.nbytes(), host_ref.nbytes()) << what;
  EXPECT_EQ(std::memcmp(host.raw_data(), host_ref.raw_data(), host.nbytes()), 0)
      << what << " (" << dtype_name(host_ref.dtype()) << ", seed " << test::seed() << ")";
}

struct PermuteCudaCase {
  const char* name;
  Shape x;
  std::vector<int> perm;
};
const PermuteCudaCase kPermuteCudaCases[] = {
    {"patch_tokens", {1, 1024, 1024}, {0, 2, 1}},        // conv maps [B, C, HW] -> tokens [B, HW, C]
    {"nchw_to_nhwc", {1, 1024, 37, 37}, {0, 2, 3, 1}},   // positional-embedding maps back to rows
    {"nhwc_to_nchw", {1, 32, 32, 1024}, {0, 3, 1, 2}},   // rows to maps, visual embedding
    {"split_heads", {2, 1025, 16, 64}, {0, 2, 1, 3}},    // [B, L, H, D] -> [B, H, L, D]
    {"merge_heads", {2, 16, 1025, 64}, {0, 2, 1, 3}},
    {"qkv", {1, 1025, 3, 16, 64}, {2, 0, 3, 1, 4}},      // [B, L, 3, H, D] -> [3, B, H, L, D]
    {"mamba_u_t", {1, 2050, 1024}, {0, 2, 1}},
    {"memory_t", {2, 5376, 256}, {0, 2, 1}},
    {"six_dims", {2, 3, 1, 4, 5, 2}, {3, 0, 5, 2, 4, 1}},
    {"identity", {3, 1, 4}, {0, 1, 2}},
    {"unit_dims", {1, 7, 1, 5}, {3, 2, 0, 1}},
    {"odd_3d", {3, 5, 7}, {2, 0, 1}},
    {"odd_transpose", {33, 65}, {1, 0}},
    {"odd_rows_kept", {5, 3, 7}, {1, 0, 2}},
};

TEST(LayoutCuda, PermuteMatchesCpuBitExact) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : kLayoutDtypes) {
    for (const PermuteCudaCase& c : kPermuteCudaCases) {
      const Tensor x = random_bytes(c.x, dtype);
      std::vector<int64_t> out_dims;
      for (int axis : c.perm) out_dims.push_back(c.x[axis]);
      const Shape out_shape{std::span<const int64_t>(out_dims)};
      Tensor ref = Tensor::empty(out_shape, dtype);
      kernels::cpu::permute(x, ref, c.perm);
      Tensor out = poisoned_device(out_shape, dtype);
      kernels::permute(x.to(Device::cuda()), out, c.perm);
      expect_same_bytes(out, ref, std::string("permute ") + c.name);
    }
  }
}

struct PiecesCudaCase {
  const char* name;
  Shape whole;
  int dim;
  std::vector<int64_t> sizes;
};
const PiecesCudaCase kPiecesCudaCases[] = {
    {"class_token", {1, 1025, 1024}, 1, {1, 1024}},          // [cls; tokens]
    {"fusion_halves", {1, 2050, 1024}, 1, {1025, 1025}},
    {"map_channels", {1, 1025, 2048}, 2, {1024, 1024}},      // cat(dino, clip) over channels
    {"x_dbl", {1, 2050, 96}, -1, {64, 16, 16}},
    {"levels", {2, 256, 5376}, 2, {4096, 1024, 256}},        // the pixel decoder's flattened levels
    {"pos_rows", {1025, 1024}, 0, {1, 1024}},
    {"batch", {5, 3, 4}, 0, {2, 3}},
    {"middle_uneven", {2, 9, 4}, 1, {3, 5, 1}},
    {"last_uneven", {3, 2, 7}, -1, {2, 5}},
    {"last_odd_bytes", {4, 13}, 1, {1, 3, 9}},               // byte offsets that are not word multiples
    {"six_dims", {2, 1, 3, 4, 2, 3}, 3, {1, 3}},
};

TEST(LayoutCuda, ConcatAndSplitMatchCpuBitExact) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : kLayoutDtypes) {
    for (const PiecesCudaCase& c : kPiecesCudaCases) {
      const int dim = c.dim < 0 ? c.dim + c.whole.ndim() : c.dim;
      std::vector<Tensor> host_pieces, device_pieces, split_out;
      for (int64_t size : c.sizes) {
        Shape s = c.whole;
        s[dim] = size;
        host_pieces.push_back(random_bytes(s, dtype));
        device_pieces.push_back(host_pieces.back().to(Device::cuda()));
        split_out.push_back(poisoned_device(s, dtype));
      }
      Tensor ref = Tensor::empty(c.whole, dtype);
      kernels::cpu::concat(host_pieces, ref, c.dim);
      Tensor whole = poisoned_device(c.whole, dtype);
      kernels::concat(device_pieces, whole, c.dim);
      expect_same_bytes(whole, ref, std::string("concat ") + c.name);
      kernels::split(ref.to(Device::cuda()), split_out, c.dim);
      for (size_t i = 0; i < split_out.size(); ++i)
        expect_same_bytes(split_out[i], host_pieces[i], std::string("split ") + c.name + " piece " + std::to_string(i));
    }
  }
}

// Views that start at an odd byte offset of their buffer (6-byte bf16 rows) copy exactly, in narrower words.
TEST(LayoutCuda, UnalignedViews) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const Tensor host = random_bytes({9, 3}, DType::bf16);
  const Tensor buffer = host.to(Device::cuda());
  const std::vector<Tensor> pieces = {buffer.slice_rows(1, 4), buffer.slice_rows(4, 9)};
  Tensor whole = poisoned_device({8, 3}, DType::bf16), ref = Tensor::empty({8, 3}, DType::bf16);
  kernels::concat(pieces, whole, 0);
  kernels::cpu::concat(std::vector<Tensor>{host.slice_rows(1, 4), host.slice_rows(4, 9)}, ref, 0);
  expect_same_bytes(whole, ref, "concat of row views");
  Tensor transposed = poisoned_device({3, 5}, DType::bf16), transposed_ref = Tensor::empty({3, 5}, DType::bf16);
  const int perm[] = {1, 0};
  kernels::permute(pieces[1], transposed, perm);
  kernels::cpu::permute(host.slice_rows(4, 9), transposed_ref, perm);
  expect_same_bytes(transposed, transposed_ref, "permute of a row view");
  Tensor column = poisoned_device({5, 1}, DType::bf16), column_ref = Tensor::empty({5, 1}, DType::bf16);
  Tensor rest = poisoned_device({5, 2}, DType::bf16), rest_ref = Tensor::empty({5, 2}, DType::bf16);
  std::vector<Tensor> outs = {column, rest}, refs = {column_ref, rest_ref};
  kernels::split(pieces[1], outs, 1);
  kernels::cpu::split(host.slice_rows(4, 9), refs, 1);
  expect_same_bytes(column, column_ref, "split of a row view, piece 0");
  expect_same_bytes(rest, rest_ref, "split of a row view, piece 1");
}

TEST(LayoutCuda, RejectsMixedArguments) {
  MFUSER_REQUIRE_CUDA();
  const Tensor x = Tensor::zeros({2, 3, 4}, DType::bf16, Device::cuda());
  Tensor y = Tensor::empty({4, 2, 3}, DType::bf16, Device::cuda());
  Tensor y32 = Tensor::empty({4, 2, 3}, DType::f32, Device::cuda()), host_y = Tensor::empty({4, 2, 3}, DType::bf16);
  const int perm[] = {2, 0, 1};
  EXPECT_NO_THROW(kernels::permute(x, y, perm));
  EXPECT_THROW(kernels::permute(x, y32, perm), Error);
  EXPECT_THROW(kernels::permute(x, host_y, perm), Error);
  std::vector<Tensor> pieces = {Tensor::zeros({2, 1, 4}, DType::bf16, Device::cuda()),
                                Tensor::zeros({2, 2, 4}, DType::f32, Device::cuda())};
  Tensor whole = Tensor::empty({2, 3, 4}, DType::bf16, Device::cuda());
  EXPECT_THROW(kernels::concat(pieces, whole, 1), Error);
  EXPECT_THROW(kernels::split(whole, pieces, 1), Error);
}

}  // namespace
}  // namespace mfuser
