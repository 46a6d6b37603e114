// Activation checkpointing (graph/model/backward.h): a recomputing backward appends copies of a segment's
// forward nodes and points the segment's rules at them. Checked on a hand-built segment (what is copied, what
// the rules read, what dies after the forward) and on the tiny training graph (bitwise the same gradients,
// a smaller arena), plus the refusals (side effects, nesting).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "graph/executor.h"
#include "graph/model/builder.h"
#include "graph/model/training.h"
#include "tests/graph/grad_check.h"

namespace mfuser {
namespace {

using graph::Graph;
using graph::ValueId;
using model::Builder;
using test::uniform;

bool has_node(const Graph& g, const std::string& name) {
  return std::ranges::any_of(g.nodes(), [&](const graph::Node& n) { return n.name == name; });
}

const graph::Node& node_named(const Graph& g, const std::string& name) {
  const auto it = std::ranges::find_if(g.nodes(), [&](const graph::Node& n) { return n.name == name; });
  if (it == g.nodes().end()) throw Error(str_cat("no node named '", name, "'"));
  return *it;
}

// The names of the values a node reads.
std::vector<std::string> reads(const Graph& g, const std::string& node) {
  std::vector<std::string> names;
  for (const ValueId in : node_named(g, node).inputs) names.push_back(g.value(in).name);
  return names;
}

bool contains(const std::vector<std::string>& names, const std::string& name) {
  return std::ranges::find(names, name) != names.end();
}

// x -> pre = silu(x) -> [segment "block": fc1, gelu, split, mul of the halves, a reshape, fc2, a reshape
// back, + pre] -> out * second half (so that half escapes the segment) -> the loss. Weights x, w1, w2.
struct HandBuilt {
  Graph g;
  model::WeightStore store = model::WeightStore::synthesize(0);
  model::Tape tape;
  Builder b{g, store};
  ValueId loss = graph::kNoValue;

  HandBuilt(const Tensor& x, const Tensor& w1, const Tensor& w2, const Tensor& cotangent, bool recompute) {
    b.set_tape(&tape);
    const std::vector<ValueId> wrt = {g.weight("x", x), g.weight("w1", w1), g.weight("w2", w2)};
    const ValueId pre = b.activation(wrt[0], kernels::Activation::silu, "pre");
    b.begin_checkpoint("block");
    const ValueId h = b.linear(pre, wrt[1], graph::kNoValue, "block.fc1");
    const auto halves = b.split(b.activation(h, kernels::Activation::gelu, "block.act"), {6, 6}, -1, "block.split");
    const ValueId m = b.reshape(b.mul(halves[0], halves[1], "block.mul"), {2, 12}, "block.mul_rows");
    const ValueId y = b.reshape(b.linear(m, wrt[2], graph::kNoValue, "block.fc2"), {4, 6}, "block.fc2_rows");
    const ValueId out = b.add(pre, y, "block.out");
    b.end_checkpoint();
    loss = b.mul(out, halves[1], "tail");
    g.mark_output(loss);
    model::BackwardOptions options;
    options.recompute = recompute;
    model::build_backward(b, tape, {{loss, g.constant("tail.cotangent", cotangent)}}, wrt, options);
  }
};

TEST(Recompute, HandBuiltSegment) {
  MFUSER_SEED_TRACE();
  const Tensor x = uniform({4, 6}), w1 = uniform({12, 6}), w2 = uniform({12, 12}), cotangent = uniform({4, 6});
  HandBuilt kept(x, w1, w2, cotangent, false), recomputed(x, w1, w2, cotangent, true);
  const Graph& g = recomputed.g;

  // Every node of the segment is copied but the last add (its output escapes to "tail" and is kept).
  for (const char* node : {"block.fc1", "block.act", "block.split", "block.mul", "block.fc2"}) {
    EXPECT_TRUE(has_node(g, str_cat(node, ".recompute"))) << node;
    EXPECT_FALSE(has_node(kept.g, str_cat(node, ".recompute"))) << node;
  }
  EXPECT_FALSE(has_node(g, "block.out.recompute"));
  EXPECT_FALSE(has_node(g, "pre.recompute"));  // outside the segment
  // The copies read copies inside the segment and the originals of what comes from outside or escapes.
  EXPECT_TRUE(contains(reads(g, "block.fc1.recompute"), "pre"));
  EXPECT_TRUE(contains(reads(g, "block.mul.recompute"), "block.split.recompute.0"));
  EXPECT_TRUE(contains(reads(g, "block.mul.recompute"), "block.split.1"));
  EXPECT_TRUE(contains(reads(g, "block.fc2.recompute"), "block.mul_rows.recompute"));  // a view, copied
  // The segment's rules read the copies; the escaping half is read as it is.
  EXPECT_TRUE(contains(reads(g, "block.act.grad"), "block.fc1.recompute"));
  EXPECT_TRUE(contains(reads(g, "block.fc2.grad"), "block.mul_rows.recompute"));
  EXPECT_TRUE(contains(reads(g, "block.fc1.grad"), "pre"));
  const auto mul_reads = reads(g, "block.mul.grad");
  EXPECT_TRUE(contains(mul_reads, "block.split.recompute.0") && contains(mul_reads, "block.split.1"));
  EXPECT_FALSE(contains(mul_reads, "block.split.0"));
  // Rules outside the segment read the originals.
  EXPECT_TRUE(contains(reads(g, "tail.grad"), "block.out"));

  // The internal activations that rules read die in the forward now (before the first backward node).
  const graph::MemoryPlan kept_plan = graph::plan_memory(kept.g), plan = graph::plan_memory(g);
  const auto first_backward = [](const Graph& graph) {
    return int(std::ranges::find_if(graph.nodes(), [](const graph::Node& n) { return n.name.ends_with(".grad"); }) -
               graph.nodes().begin());
  };
  for (const char* value : {"block.fc1", "block.split.0", "block.mul"}) {
    EXPECT_LT(plan.last_node[size_t(g.at(value))], first_backward(g)) << value;
    EXPECT_GT(kept_plan.last_node[size_t(kept.g.at(value))], first_backward(kept.g)) << value;
  }
  EXPECT_GT(plan.last_node[size_t(g.at("block.split.1"))], first_backward(g));  // escapes: kept

  // Bitwise the same gradients: the same kernels on the same inputs.
  graph::Executor kept_ex(kept.g, Device::cpu()), ex(g, Device::cpu());
  kept_ex.run();
  ex.run();
  for (const char* grad : {"grad.x", "grad.w1", "grad.w2"}) {
    const test::ErrorStats e = test::compare(ex.get(grad), kept_ex.get(grad));
    EXPECT_EQ(e.max_abs, 0.0) << grad << ": " << test::describe(e);
  }
}

TEST(Recompute, RefusesSideEffectsAndNesting) {
  test::TapedGraph taped;
  auto& [g, store, tape, b] = taped;
  b.set_training(true);
  const ValueId x = g.input("x", {2, 3, 2, 2});
  b.begin_checkpoint("fpn");
  b.batchnorm(x, "fpn.bn");
  try {
    b.end_checkpoint();
    FAIL() << "a segment with a training BatchNorm was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("segment 'fpn' holds node 'fpn.bn' (batchnorm_train)"), std::string::npos)
        << e.what();
  }
  b.begin_checkpoint("outer");
  EXPECT_THROW(b.begin_checkpoint("inner"), Error);
  // Without a tape (inference) the calls do nothing.
  Graph eval;
  Builder e(eval, store);
  e.begin_checkpoint("a");
  e.begin_checkpoint("b");
  e.end_checkpoint();
}

// The tiny model's training step with and without recompute: the same losses and gradients, bitwise (CPU
// kernels are deterministic at a fixed thread count; the recomputed dropouts redraw the same masks), in a
// smaller arena.
TEST(Recompute, TinyTrainingStepIsBitwiseTheSameInASmallerArena) {
  MFUSER_SEED_TRACE();
  const model::ModelConfig cfg =
      model::ModelConfig::load(std::string(std::getenv("MFUSER_SOURCE_DIR")) + "/tools/configs/mfuser_clip_tiny.json");
  const int64_t batch = 2, size = cfg.image_size;
  const Tensor image = uniform({batch, 3, size, size}, -2.f, 2.f);
  Tensor labels = Tensor::empty({batch, size, size}, DType::i64);
  for (int64_t i = 0; i < labels.numel(); ++i)  // 8x8 blocks of classes, some ignored
    labels.data<int64_t>()[i] = (i / 8 + i / (8 * size)) % 21 == 20 ? 255 : (i / 8 + i / (8 * size)) % 21 % 19;

  std::map<std::string, Tensor> points;
  const auto step = [&](bool recompute, std::map<std::string, Tensor>& results) {
    model::WeightStore weights = model::WeightStore::synthesize(3);
    model::TrainingGraphOptions options;
    options.recompute = recompute;
    const model::TrainingGraph t = model::build_training_graph(weights, cfg, batch, size, size, options);
    EXPECT_NE(t.dropout_seed, graph::kNoValue) << "the tiny config's training graph has dropout";
    graph::Executor ex(*t.graph, Device::cpu());
    ex.set_input("image", image);
    ex.set_input("gt_semantic_seg", labels);
    model::set_dropout_seed(ex, t, 20261127);  // the recomputed forward must redraw the same masks
    for (const graph::Value& v : t.graph->values())
      if (v.kind == graph::ValueKind::input && v.name.starts_with("points.")) {
        if (!points.contains(v.name)) points[v.name] = uniform(v.shape, 0.f, 1.f);
        ex.set_input(v.name, points[v.name]);
      }
    ex.run();
    for (const ValueId out : t.graph->outputs()) {
      const std::string& name = t.graph->value(out).name;
      results[name] = ex.get(name).to(Device::cpu());
    }
    return ex.plan().arena_bytes;
  };
  std::map<std::string, Tensor> kept, recomputed;
  const size_t kept_arena = step(false, kept), arena = step(true, recomputed);
  std::printf("[ arena    ] tiny config, batch 2: %.2f MiB kept, %.2f MiB with recompute\n",
              double(kept_arena) / (1 << 20), double(arena) / (1 << 20));
  EXPECT_LT(arena, kept_arena);

  ASSERT_EQ(kept.size(), recomputed.size());
  int grads = 0;
  for (const auto& [name, value] : kept) {
    ASSERT_TRUE(recomputed.contains(name)) << name;
    const test::ErrorStats e = test::compare(recomputed.at(name), value);
    EXPECT_EQ(e.max_abs, 0.0) << name << ": " << test::describe(e);
    EXPECT_EQ(e.nonfinite, 0) << name;
    grads += name.starts_with("grad.");
  }
  EXPECT_GT(grads, 200);
}

}  // namespace
}  // namespace mfuser
