#pragma once
// Gradient checkpointing: checkpoint(fn, inputs) runs fn without recording a
// graph and keeps only its inputs; backward runs fn again with the graph on and
// backpropagates through that recomputation. Memory for fn's activations is
// traded for one more forward. Parameters fn uses (captured module weights)
// receive their gradients during the recomputed backward.
//
// fn must be deterministic (dropout inside it must draw from a generator that
// the caller re-seeds, or be off).

#include <functional>

#include "mamclip/autograd/engine.hpp"

namespace mamclip::autograd {

template <class T>
class CheckpointNode final : public Node {
 public:
  using Fn = std::function<Tensor<T>(const std::vector<Tensor<T>>&)>;
  CheckpointNode(Fn fn, std::vector<Tensor<T>> inputs) : fn_(std::move(fn)), inputs_(std::move(inputs)) {}
  std::string name() const override { return "CheckpointBackward"; }
  void release_saved() override {
    fn_ = nullptr;
    inputs_.clear();
  }
  std::vector<AnyTensor> apply(std::vector<AnyTensor>&& grads) override {
    Tensor<T> g = from_any<T>(grads[0]);
    std::vector<AnyTensor> out(inputs_.size());
    if (!g.defined()) return out;
    // Fresh leaves for the inputs that need a gradient; parameters inside fn are
    // reached through their own AccumulateGrad nodes.
    std::vector<Tensor<T>> leaves;
    for (size_t i = 0; i < inputs_.size(); ++i) {
      Tensor<T> leaf = inputs_[i].detach();
      if (needs_input_grad(i)) leaf.set_requires_grad(true);
      leaves.push_back(leaf);
    }
    Tensor<T> y;
    {
      GradModeGuard on(true);
      y = fn_(leaves);
    }
    if (y.requires_grad()) run_backward(std::vector<Edge>{gradient_edge(y)}, std::vector<AnyTensor>{to_any(g)}, false);
    for (size_t i = 0; i < leaves.size(); ++i)
      if (needs_input_grad(i)) out[i] = to_any(leaves[i].grad());
    return out;
  }

 private:
  Fn fn_;
  std::vector<Tensor<T>> inputs_;
};

// Runs fn(inputs) and records one node that recomputes it in backward. The node
// is recorded whenever grad mode is on, even if no input requires grad, because
// fn's parameters may.
template <class T>
Tensor<T> checkpoint(std::function<Tensor<T>(const std::vector<Tensor<T>>&)> fn, const std::vector<Tensor<T>>& inputs) {
  if (!GradMode::enabled()) return fn(inputs);
  std::vector<Tensor<T>> detached;
  std::vector<Edge> edges;
  for (const auto& x : inputs) {
    detached.push_back(x.detach());
    edges.push_back(gradient_edge(x));
  }
  Tensor<T> y;
  {
    NoGradGuard off;
    y = fn(detached);
  }
  Tensor<T> out = y.detach();
  auto node = std::make_shared<CheckpointNode<T>>(std::move(fn), std::move(detached));
  std::vector<Tensor<T>> outs{out};
  attach<T>(node, edges, outs);
  return out;
}

}  // namespace mamclip::autograd

namespace mamclip {
using autograd::checkpoint;
}
