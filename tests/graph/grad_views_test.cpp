// The backward builder itself (graph/model/backward.h) and the rules of views, linear and add: gradients of
// small graphs against central differences, frozen inputs, sums over several uses, missing rules.
#include <gtest/gtest.h>

#include "graph/model/grad_rules.h"
#include "tests/graph/grad_check.h"

namespace mfuser {
namespace {

using graph::ValueId;
using model::Builder;
using test::GradInput;
using test::uniform;

TEST(Backward, LinearWithFrozenWeight) {
  test::check_gradients("linear", {{"x", uniform({2, 3, 5})}, {"w", uniform({4, 5}), false}, {"b", uniform({4})}},
                        [](Builder& b, const std::vector<ValueId>& in) { return b.linear(in[0], in[1], in[2], "y"); });
}

TEST(Backward, ValueUsedTwiceSumsItsGradients) {
  // y = (x W^T + c) + x: x reaches the output twice, c is broadcast over rows.
  test::check_gradients("sum over uses",
                        {{"x", uniform({6, 4})}, {"w", uniform({4, 4})}, {"c", uniform({4})}},
                        [](Builder& b, const std::vector<ValueId>& in) {
                          const ValueId h = b.linear(in[0], in[1], graph::kNoValue, "h");
                          return b.add(b.add(h, in[2], "h_plus_c"), in[0], "y");
                        });
}

TEST(Backward, ReshapeAndRowSlices) {
  // Rows 1..3 and 0..1 of a reshaped x, each through its own linear: the row gradients land in place and
  // the rows nobody read get zero.
  test::check_gradients("views", {{"x", uniform({2, 3, 4})}, {"w", uniform({3, 4})}},
                        [](Builder& b, const std::vector<ValueId>& in) {
                          const ValueId rows = b.reshape(in[0], {6, 4}, "rows");
                          const ValueId mid = b.linear(b.slice_rows(rows, 1, 4, "mid"), in[1], graph::kNoValue, "m");
                          const ValueId top = b.linear(b.slice_rows(rows, 0, 1, "top"), in[1], graph::kNoValue, "t");
                          return b.add(mid, top, "y");  // top [1, 3] broadcasts onto mid [3, 3]
                        });
}

TEST(Backward, NodeWithoutRuleIsNamed) {
  test::TapedGraph taped;
  auto& [g, store, tape, b] = taped;
  const ValueId x = g.weight("x", uniform({3}));
  const ValueId y = b.node("mystery", "mystery_node", {x}, {3}, [](std::span<const Tensor>, std::span<Tensor>) {});
  const ValueId seed = g.constant("seed", uniform({3}));
  try {
    model::build_backward(b, tape, {{y, seed}}, {x});
    FAIL() << "a backward through a rule-less node was built";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mystery_node"), std::string::npos) << e.what();
  }
}

TEST(Backward, OnlyWhatTheWantedValuesNeedIsBuilt) {
  test::TapedGraph taped;
  auto& [g, store, tape, b] = taped;
  const ValueId x = g.weight("x", uniform({2, 5}));
  const ValueId frozen = g.weight("frozen", uniform({5, 5}));
  const ValueId head = g.weight("head", uniform({3, 5}));
  const ValueId h = b.linear(x, frozen, graph::kNoValue, "frozen_layer");
  const ValueId y = b.linear(h, head, graph::kNoValue, "head_layer");
  const size_t forward_nodes = g.nodes().size();
  model::build_backward(b, tape, {{y, g.constant("seed", uniform({2, 3}))}}, {head});
  // Only the head's weight gradient: nothing flows into the frozen layer.
  ASSERT_EQ(g.nodes().size(), forward_nodes + 1);
  EXPECT_EQ(g.nodes().back().name, "head_layer.grad");
  EXPECT_NE(g.find("grad.head"), graph::kNoValue);
}

}  // namespace
}  // namespace mfuser
