#pragma once
// Graph nodes. Each op that records itself creates one Node whose backward maps
// the gradients of the op's outputs to gradients of its inputs. Edges point from
// a node to the nodes that produced its inputs (or to a leaf's AccumulateGrad).
//
// Gradients cross node boundaries type-erased as AnyTensor so that a graph may
// mix float, double, half and bfloat16 (to<U>() is differentiable).

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "mamclip/autograd/grad_mode.hpp"
#include "mamclip/core/tensor_data.hpp"

namespace mamclip::autograd {

using AnyTensor = std::variant<std::monostate, Tensor<float>, Tensor<double>, Tensor<half>, Tensor<bfloat16>>;

template <class T>
AnyTensor to_any(const Tensor<T>& t) {
  if (!t.defined()) return std::monostate{};
  return t;
}
template <class T>
Tensor<T> from_any(const AnyTensor& a) {
  if (std::holds_alternative<std::monostate>(a)) return Tensor<T>();
  const Tensor<T>* t = std::get_if<Tensor<T>>(&a);
  MAMCLIP_CHECK(t != nullptr, autograd_error, "backward: a gradient of the wrong dtype reached a ", dtype_name(dtype_v<T>),
                " tensor (a cast node returned a gradient of the wrong type)");
  return *t;
}
inline bool is_defined(const AnyTensor& a) { return !std::holds_alternative<std::monostate>(a); }

class Node;

struct Edge {
  std::shared_ptr<Node> fn;  // null: no gradient flows there
  uint32_t input_nr = 0;     // which output of `fn` (which of its grad inputs) this edge feeds
};

using AnyHook = std::function<AnyTensor(const AnyTensor&)>;

inline uint64_t next_sequence_nr() {
  static std::atomic<uint64_t> n{0};
  return n++;
}

class Node {
 public:
  virtual ~Node() = default;
  virtual std::string name() const = 0;
  // grad_outputs: one per forward output (monostate where no gradient arrived).
  // Returns one gradient per forward input (next_edges), monostate where none.
  virtual std::vector<AnyTensor> apply(std::vector<AnyTensor>&& grad_outputs) = 0;
  // Frees saved tensors after a backward without retain_graph.
  virtual void release_saved() {}
  // Whether a second backward through this node is possible.
  virtual bool retains_nothing() const { return false; }

  bool needs_input_grad(size_t i) const { return i < next_edges.size() && next_edges[i].fn != nullptr; }

  uint32_t num_outputs = 1;
  std::vector<Edge> next_edges;
  // Run on the gradient of forward output `first` before apply (tensor hooks, retain_grad).
  std::vector<std::pair<uint32_t, AnyHook>> pre_hooks;
  bool released = false;
  // Later nodes run first: backward follows reverse creation order among ready nodes.
  const uint64_t sequence_nr = next_sequence_nr();
};

// Receives the gradient of a leaf and adds it to the leaf's .grad.
template <class T>
class AccumulateGrad final : public Node {
 public:
  explicit AccumulateGrad(std::weak_ptr<TensorImpl<T>> leaf) : leaf_(std::move(leaf)) {}
  std::string name() const override { return "AccumulateGrad"; }
  bool retains_nothing() const override { return true; }
  std::vector<AnyTensor> apply(std::vector<AnyTensor>&& grads) override {
    auto leaf = leaf_.lock();
    Tensor<T> g = from_any<T>(grads[0]);
    if (!leaf || !g.defined()) return {};
    for (const auto& hook : leaf->leaf_hooks) {
      Tensor<T> replaced = hook(g);
      if (replaced.defined()) g = replaced;
    }
    if (!leaf->grad) {
      // The incoming gradient may be shared with other nodes: store a private copy.
      leaf->grad = detail::contiguous_copy(g).impl();
    } else {
      Tensor<T> old(leaf->grad);
      Tensor<T> sum = detail::add_same_shape(old, g);
      old.copy_(sum);  // in place: .grad handles held by optimizers stay valid
    }
    for (const auto& [handle, hook] : leaf->post_accumulate_hooks) hook();
    return {};
  }

 private:
  std::weak_ptr<TensorImpl<T>> leaf_;
};

// The edge that the gradient of `t` flows into: its grad_fn, or its leaf's
// AccumulateGrad, or nothing when `t` does not require grad.
template <class T>
Edge gradient_edge(const Tensor<T>& t) {
  if (!t.defined() || !t.requires_grad()) return {};
  const auto& impl = t.impl();
  if (impl->grad_fn) return {impl->grad_fn, impl->output_nr};
  auto acc = impl->grad_accumulator.lock();
  if (!acc) {
    acc = std::make_shared<AccumulateGrad<T>>(impl);
    impl->grad_accumulator = acc;
  }
  return {acc, 0};
}

// Whether an op on these inputs must be recorded.
template <class... Ts>
bool any_requires_grad(const Tensor<Ts>&... ts) {
  return GradMode::enabled() && (... || (ts.defined() && ts.requires_grad()));
}

// A node whose backward is a function of the output gradients (one dtype T).
//
// backward(grads, needs) gets one gradient per output (undefined where none
// arrived) and `needs[i]` telling whether input i wants a gradient; it returns
// one gradient per input (undefined where not needed). Returned gradients are
// checked against the input shapes, so a wrong backward formula fails loudly.
template <class T>
class FunctionNode final : public Node {
 public:
  using Backward = std::function<std::vector<Tensor<T>>(const std::vector<Tensor<T>>&, const std::vector<bool>&)>;
  FunctionNode(std::string name, Backward backward, std::vector<Shape> input_shapes)
      : name_(std::move(name)), backward_(std::move(backward)), input_shapes_(std::move(input_shapes)) {}
  std::string name() const override { return name_; }
  void release_saved() override { backward_ = nullptr; }

  std::vector<AnyTensor> apply(std::vector<AnyTensor>&& grads) override {
    std::vector<Tensor<T>> g(grads.size());
    for (size_t i = 0; i < grads.size(); ++i) g[i] = from_any<T>(grads[i]);
    std::vector<bool> needs(next_edges.size());
    for (size_t i = 0; i < needs.size(); ++i) needs[i] = needs_input_grad(i);
    std::vector<Tensor<T>> gi = backward_(g, needs);
    MAMCLIP_CHECK(gi.size() == next_edges.size(), autograd_error, name_, " backward returned ", gi.size(),
                  " gradients for ", next_edges.size(), " inputs");
    std::vector<AnyTensor> out(gi.size());
    for (size_t i = 0; i < gi.size(); ++i) {
      if (!needs[i] || !gi[i].defined()) continue;
      MAMCLIP_CHECK(gi[i].shape() == input_shapes_[i], autograd_error, name_, " backward: gradient of input ", i,
                    " has shape ", shape_str(gi[i].shape()), " but the input has shape ", shape_str(input_shapes_[i]));
      out[i] = gi[i];
    }
    return out;
  }

 private:
  std::string name_;
  Backward backward_;
  std::vector<Shape> input_shapes_;
};

// Connects `node` to `inputs` and makes it the grad_fn of `outputs`.
template <class T>
void attach(const std::shared_ptr<Node>& node, const std::vector<Edge>& input_edges, std::vector<Tensor<T>>& outputs) {
  node->next_edges = input_edges;
  node->num_outputs = static_cast<uint32_t>(outputs.size());
  for (size_t i = 0; i < outputs.size(); ++i) {
    outputs[i].impl()->grad_fn = node;
    outputs[i].impl()->output_nr = static_cast<uint32_t>(i);
  }
}

// Records an op with several outputs. Returns `outputs` (now with grad_fn) or
// leaves them untouched when nothing requires grad.
template <class T, class F>
std::vector<Tensor<T>> record_multi(std::string name, const std::vector<Tensor<T>>& inputs,
                                    std::vector<Tensor<T>> outputs, F&& backward) {
  bool any = false;
  if (GradMode::enabled())
    for (const auto& x : inputs) any = any || (x.defined() && x.requires_grad());
  if (!any) return outputs;
  std::vector<Shape> shapes;
  std::vector<Edge> edges;
  for (const auto& x : inputs) {
    shapes.push_back(x.defined() ? x.shape() : Shape{});
    edges.push_back(gradient_edge(x));
  }
  auto node = std::make_shared<FunctionNode<T>>(std::move(name), typename FunctionNode<T>::Backward(std::forward<F>(backward)),
                                                std::move(shapes));
  attach<T>(node, edges, outputs);
  return outputs;
}

// Records a single-output op. `backward` is either
//   (const Tensor<T>& grad_out) -> std::vector<Tensor<T>>, or
//   (const Tensor<T>& grad_out, const std::vector<bool>& needs) -> std::vector<Tensor<T>>.
template <class T, class F>
Tensor<T> record(std::string name, const std::vector<Tensor<T>>& inputs, Tensor<T> output, F&& backward) {
  auto wrapped = [bw = std::forward<F>(backward)](const std::vector<Tensor<T>>& g,
                                                  const std::vector<bool>& needs) -> std::vector<Tensor<T>> {
    if (!g[0].defined()) return std::vector<Tensor<T>>(needs.size());
    if constexpr (std::is_invocable_v<F, const Tensor<T>&, const std::vector<bool>&>)
      return bw(g[0], needs);
    else
      return bw(g[0]);
  };
  return record_multi<T>(std::move(name), inputs, {std::move(output)}, std::move(wrapped))[0];
}

}  // namespace mamclip::autograd
