// Gradient checks of backward rules (graph/model/grad_rules.h): build a small forward with a Builder and a
// Tape, seed its output with a random cotangent R, build the backward, run both on the CPU, and compare each
// input's gradient with central differences of L = sum(out * R) at random coordinates.
//
// This checks the wiring of the rules (which kernel gets which values, shapes, transposes, sums over uses and
// broadcasts); the backward kernels themselves are checked against PyTorch autograd in their own tests. The
// differences run the f32 forward, so the tolerance is loose (1e-2 relative to the gradient's scale).
#pragma once

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "graph/executor.h"
#include "graph/model/backward.h"
#include "graph/model/builder.h"
#include "tests/common/test_util.h"

namespace mfuser::test {

struct GradInput {
  std::string name;
  Tensor value;             // host f32; perturbed in place by the check (restored afterwards)
  bool wants_grad = true;   // false: a frozen input, must get no gradient
};

struct GradCheckOptions {
  double tol = 1e-2;   // |fd - analytic| <= tol * max(|analytic|, rms of the whole gradient)
  int probes = 8;      // coordinates checked per input
  float step = 1e-2f;  // central-difference step
};

// A graph with a Builder recording onto a Tape: the setup of every backward-rule test
// (`auto& [g, store, tape, b] = taped;`).
struct TapedGraph {
  graph::Graph g;
  model::WeightStore store = model::WeightStore::synthesize(0);
  model::Tape tape;
  model::Builder b{g, store};
  TapedGraph() { b.set_tape(&tape); }
};

using GradForward = std::function<graph::ValueId(model::Builder&, const std::vector<graph::ValueId>&)>;

inline void check_gradients(const std::string& what, std::vector<GradInput> inputs, const GradForward& forward,
                            GradCheckOptions opt = {}) {
  SCOPED_TRACE(what);
  MFUSER_SEED_TRACE();
  TapedGraph taped;
  auto& [g, store, tape, b] = taped;
  std::vector<graph::ValueId> ids, wrt;
  for (const GradInput& in : inputs) {
    ids.push_back(g.weight(in.name, in.value));  // shares in.value's storage: perturbations reach the graph
    if (in.wants_grad) wrt.push_back(ids.back());
  }
  const graph::ValueId out = forward(b, ids);
  g.mark_output(out);
  Tensor cotangent = Tensor::empty(g.value(out).shape, DType::f32);
  fill_uniform(cotangent);
  const graph::ValueId seed = g.constant(what + ".cotangent", cotangent);
  model::build_backward(b, tape, {{out, seed}}, wrt);

  graph::Executor ex(g, Device::cpu());
  const auto loss = [&] {
    ex.run();
    const Tensor y = ex.get(g.value(out).name);
    double l = 0;
    for (int64_t i = 0; i < y.numel(); ++i) l += double(y.data<float>()[i]) * double(cotangent.data<float>()[i]);
    return l;
  };
  loss();
  // Every analytic gradient, copied out of the arena before any perturbed run overwrites it.
  std::vector<Tensor> analytic_grads(inputs.size());
  for (size_t j = 0; j < inputs.size(); ++j) {
    const graph::ValueId id = g.find("grad." + inputs[j].name);
    if (id == graph::kNoValue) continue;
    analytic_grads[j] = Tensor::empty(g.value(id).shape, DType::f32);
    analytic_grads[j].copy_from(ex.get(g.value(id).name));
  }
  for (size_t j = 0; j < inputs.size(); ++j) {
    const std::string grad_name = "grad." + inputs[j].name;
    if (!inputs[j].wants_grad) {
      EXPECT_EQ(g.find(grad_name), graph::kNoValue) << inputs[j].name << " is frozen but got a gradient";
      continue;
    }
    ASSERT_NE(g.find(grad_name), graph::kNoValue) << inputs[j].name << " got no gradient";
    const Tensor& analytic = analytic_grads[j];
    double sum2 = 0;
    for (int64_t i = 0; i < analytic.numel(); ++i) {
      const double a = analytic.data<float>()[i];
      ASSERT_TRUE(std::isfinite(a)) << inputs[j].name << "[" << i << "] is not finite";
      sum2 += a * a;
    }
    const double rms = std::sqrt(sum2 / double(std::max<int64_t>(analytic.numel(), 1)));
    float* data = inputs[j].value.data<float>();
    for (int p = 0; p < opt.probes; ++p) {
      const int64_t i = int64_t(rng()() % uint64_t(analytic.numel()));
      const float saved = data[i];
      data[i] = saved + opt.step;
      const double up = loss();
      data[i] = saved - opt.step;
      const double down = loss();
      data[i] = saved;
      const double fd = (up - down) / (2.0 * double(opt.step));
      const double a = analytic.data<float>()[i];
      EXPECT_LE(std::fabs(fd - a), opt.tol * std::max({std::fabs(a), rms, 1e-6}))
          << inputs[j].name << "[" << i << "]: analytic " << a << ", central difference " << fd << " (rms " << rms
          << ")";
    }
  }
}

// A host f32 tensor of uniform values in [lo, hi).
inline Tensor uniform(const Shape& shape, float lo = -1.f, float hi = 1.f) {
  Tensor t = Tensor::empty(shape, DType::f32);
  fill_uniform(t, lo, hi);
  return t;
}

}  // namespace mfuser::test
