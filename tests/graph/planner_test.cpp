// The memory planner on random graphs: values alive at the same time never overlap, outputs survive to the
// end, views keep their base alive, and reuse actually happens.
#include "graph/planner.h"

#include "tests/common/test_util.h"

namespace mfuser::graph {
namespace {

void noop(std::span<const Tensor>, std::span<Tensor>) {}

// Checks every pair of root intermediates: if their lifetimes intersect, their byte ranges must not.
void expect_no_live_overlap(const Graph& g, const MemoryPlan& plan) {
  const auto& values = g.values();
  for (size_t a = 0; a < values.size(); ++a) {
    if (plan.offset[a] == kNotInArena) continue;
    EXPECT_LE(plan.offset[a] + values[a].nbytes(), plan.arena_bytes) << values[a].name;
    for (size_t b = a + 1; b < values.size(); ++b) {
      if (plan.offset[b] == kNotInArena) continue;
      const bool live_together = plan.first_node[a] <= plan.last_node[b] && plan.first_node[b] <= plan.last_node[a];
      const bool overlap = plan.offset[a] < plan.offset[b] + values[b].nbytes() &&
                           plan.offset[b] < plan.offset[a] + values[a].nbytes();
      ASSERT_FALSE(live_together && overlap) << values[a].name << " and " << values[b].name << " overlap";
    }
  }
}

TEST(Planner, ChainReusesMemory) {
  Graph g;
  ValueId x = g.input("x", {1024});
  for (int i = 0; i < 10; ++i) x = g.add1("op", str_cat("n", i), {x}, {Shape{1024}}, noop);
  g.mark_output(x);
  const MemoryPlan plan = plan_memory(g);
  expect_no_live_overlap(g, plan);
  EXPECT_EQ(plan.naive_bytes, 10u * 4096);
  EXPECT_EQ(plan.arena_bytes, 2u * 4096);  // a chain needs two buffers, ping-pong
  EXPECT_EQ(plan.offset[size_t(g.at("x"))], kNotInArena);
}

TEST(Planner, OutputsAndViewsExtendLifetimes) {
  Graph g;
  const ValueId in = g.input("in", {4, 8});
  const ValueId a = g.add1("op", "a", {in}, {Shape{4, 8}}, noop);
  const ValueId a_rows = g.slice_rows(a, 1, 3);
  const ValueId b = g.add1("op", "b", {in}, {Shape{4, 8}}, noop);
  const ValueId c = g.add1("op", "c", {b}, {Shape{4, 8}}, noop);
  const ValueId d = g.add1("op", "d", {a_rows, c}, {Shape{2, 8}}, noop);
  const ValueId e = g.add1("op", "e", {d}, {Shape{2, 8}}, noop);
  g.mark_output(b);
  g.mark_output(e);
  const MemoryPlan plan = plan_memory(g);
  expect_no_live_overlap(g, plan);
  EXPECT_EQ(plan.last_node[size_t(a)], 3);  // read through its view by node d
  EXPECT_EQ(plan.last_node[size_t(b)], 5);  // a graph output: alive to the end
  EXPECT_EQ(plan.offset[size_t(a_rows)], kNotInArena);  // views have no memory of their own
}

TEST(Planner, RandomGraphsNeverOverlapLiveValues) {
  MFUSER_SEED_TRACE();
  for (int trial = 0; trial < 200; ++trial) {
    Graph g;
    std::vector<ValueId> available = {g.input("in", {16})};
    const int nodes = 5 + int(test::rng()() % 60);
    for (int n = 0; n < nodes; ++n) {
      std::vector<ValueId> ins;
      const int fan_in = 1 + int(test::rng()() % 3);
      for (int k = 0; k < fan_in; ++k) ins.push_back(available[test::rng()() % available.size()]);
      std::vector<OutputSpec> outs;
      const int fan_out = 1 + int(test::rng()() % 2);
      for (int k = 0; k < fan_out; ++k) outs.push_back({Shape{int64_t(1 + test::rng()() % 5000)}});
      for (ValueId v : g.add("op", str_cat("n", n), ins, outs, noop)) {
        available.push_back(v);
        if (test::rng()() % 7 == 0) g.mark_output(v);
        if (test::rng()() % 5 == 0 && g.value(v).shape[0] > 1) available.push_back(g.slice_rows(v, 1, g.value(v).shape[0]));
      }
    }
    const MemoryPlan plan = plan_memory(g);
    SCOPED_TRACE(str_cat("trial ", trial));
    expect_no_live_overlap(g, plan);
    EXPECT_LE(plan.arena_bytes, plan.naive_bytes);
    for (ValueId out : g.outputs()) EXPECT_EQ(plan.last_node[size_t(g.root_of(out))], int(g.nodes().size()));
  }
}

TEST(Graph, RejectsBadConstruction) {
  Graph g;
  const ValueId x = g.input("x", {2, 3});
  EXPECT_THROW(g.input("x", {1}), Error);  // duplicate name
  EXPECT_THROW(g.add1("op", "n", {x + 5}, {Shape{1}}, noop), Error);
  EXPECT_THROW(g.add1("op", "n", {x}, {Shape{1}}, nullptr), Error);
  EXPECT_THROW(g.reshape(x, {7}), Error);
  EXPECT_THROW(g.slice_rows(x, 1, 3), Error);
  EXPECT_THROW(g.at("missing"), Error);
  EXPECT_THROW(g.weight("w", Tensor()), Error);
}

}  // namespace
}  // namespace mfuser::graph
