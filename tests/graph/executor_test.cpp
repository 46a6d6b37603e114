// The executor: runs nodes in order on planned memory, binds inputs/weights/views, names failing nodes;
// on CUDA the same graph runs eagerly, then captured, then replayed, giving the CPU's results.
#include "graph/executor.h"

#include "kernels/cast/cast.h"
#include "tests/common/test_util.h"

namespace mfuser::graph {
namespace {

// y = x * w + b elementwise (host only): a tiny kernel so the test exercises the executor, not an op.
void axpb(std::span<const Tensor> in, std::span<Tensor> out) {
  const float* x = in[0].data<float>();
  const float* w = in[1].data<float>();
  float* y = out[0].data<float>();
  for (int64_t i = 0; i < out[0].numel(); ++i) y[i] = x[i] * w[i % in[1].numel()] + 1.f;
}

Graph build_chain(int64_t n, int length) {
  Graph g;
  ValueId x = g.input("x", {n});
  const ValueId w = g.weight("w", Tensor::from_vector<float>({0.5f, 2.f}, {2}));
  for (int i = 0; i < length; ++i) x = g.add1("axpb", str_cat("layer", i), {x, w}, {Shape{n}}, axpb);
  const ValueId half = g.slice_rows(x, n / 2, n, "second_half");
  g.mark_output(half);
  return g;
}

TEST(Executor, RunsChainOnPlannedMemory) {
  MFUSER_SEED_TRACE();
  const int64_t n = 1000;
  const int length = 6;
  Graph g = build_chain(n, length);
  Executor ex(g, Device::cpu());
  EXPECT_LT(ex.plan().arena_bytes, ex.plan().naive_bytes);
  Tensor x = Tensor::empty({n}, DType::f32);
  test::fill_uniform(x);
  for (int repeat = 0; repeat < 2; ++repeat) {
    ex.set_input("x", x);
    ex.run();
    const Tensor out = ex.get("second_half");
    ASSERT_EQ(out.shape(), Shape{n / 2});
    for (int64_t i = 0; i < n / 2; ++i) {
      float expect = x.data<float>()[n / 2 + i];
      const float w = (n / 2 + i) % 2 ? 2.f : 0.5f;
      for (int l = 0; l < length; ++l) expect = expect * w + 1.f;
      ASSERT_FLOAT_EQ(out.data<float>()[i], expect) << "element " << i;
    }
  }
}

TEST(Executor, ValidatesInputsAndReads) {
  Graph g = build_chain(8, 3);
  Executor ex(g, Device::cpu());
  EXPECT_THROW(ex.set_input("x", Tensor::zeros({7}, DType::f32)), Error);
  EXPECT_THROW(ex.set_input("x", Tensor::zeros({8}, DType::i32)), Error);
  EXPECT_THROW(ex.set_input("w", Tensor::zeros({2}, DType::f32)), Error);  // weights are read-only
  EXPECT_THROW((void)ex.get("layer0"), Error);  // memory reused: not readable after the run
  EXPECT_NO_THROW((void)ex.get("w"));
}

TEST(Executor, ErrorsNameTheNode) {
  Graph g;
  const ValueId x = g.input("x", {4});
  const ValueId y = g.add1("broken", "backbone.adapter.7.scan", {x}, {Shape{4}},
                           [](std::span<const Tensor>, std::span<Tensor>) { throw Error("scan exploded"); });
  g.mark_output(y);
  Executor ex(g, Device::cpu());
  try {
    ex.run();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("node 'backbone.adapter.7.scan' (broken): scan exploded"), std::string::npos)
        << e.what();
  }
}

// A device-agnostic graph built from a real kernel: f32 -> bf16 -> f32 -> f16 -> f32.
Graph build_cast_chain(int64_t n) {
  Graph g;
  const ValueId x = g.input("x", {n});
  const auto cast_node = [&](ValueId in, DType to, const std::string& name) {
    return g.add1("cast", name, {in}, {g.value(in).shape, to},
                  [](std::span<const Tensor> i, std::span<Tensor> o) { kernels::cast(i[0], o[0]); });
  };
  const ValueId a = cast_node(x, DType::bf16, "to_bf16");
  const ValueId b = cast_node(a, DType::f32, "back_f32");
  const ValueId c = cast_node(b, DType::f16, "to_f16");
  g.mark_output(cast_node(c, DType::f32, "out"));
  return g;
}

TEST(ExecutorCuda, EagerCapturedAndReplayedRunsMatchCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const int64_t n = 1 << 16;
  Graph g = build_cast_chain(n);
  Executor cpu(g, Device::cpu());
  Executor gpu(g, Device::cuda());
  for (int run = 0; run < 4; ++run) {  // run 0 eager, run 1 captured, runs 2-3 replayed
    Tensor x = Tensor::empty({n}, DType::f32);
    test::fill_uniform(x, -1000.f, 1000.f);
    cpu.set_input("x", x);
    gpu.set_input("x", x);
    cpu.run();
    gpu.run();
    EXPECT_EQ(test::compare(gpu.get("out"), cpu.get("out")).max_abs, 0.0) << "run " << run;
  }
}

}  // namespace
}  // namespace mfuser::graph
