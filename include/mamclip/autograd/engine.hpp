#pragma once
// The backward engine: from the roots, count how many gradients each node will
// receive, then run nodes when all their gradients have arrived (latest-created
// first among the ready ones), summing gradients that meet at a node.

#include <atomic>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "mamclip/autograd/node.hpp"

namespace mamclip::autograd {

namespace detail {
inline void accumulate(AnyTensor& acc, AnyTensor&& g) {
  if (!is_defined(g)) return;
  if (!is_defined(acc)) {
    acc = std::move(g);
    return;
  }
  MAMCLIP_CHECK(acc.index() == g.index(), autograd_error,
                "backward: gradients of different dtypes meet at one tensor");
  std::visit(
      [&](auto& a) {
        using TT = std::decay_t<decltype(a)>;
        if constexpr (!std::is_same_v<TT, std::monostate>) a = mamclip::detail::add_same_shape(a, std::get<TT>(g));
      },
      acc);
}
}  // namespace detail

// Runs backward from `roots` with the given root gradients.
inline void run_backward(const std::vector<Edge>& roots, std::vector<AnyTensor> root_grads, bool retain_graph) {
  // 1. Dependencies: how many edges point at each node from nodes reachable from the roots.
  std::unordered_map<Node*, int> deps;
  std::unordered_map<Node*, std::shared_ptr<Node>> alive;
  std::vector<Node*> stack;
  for (const auto& r : roots)
    if (r.fn && alive.emplace(r.fn.get(), r.fn).second) stack.push_back(r.fn.get());
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (const auto& e : n->next_edges) {
      if (!e.fn) continue;
      ++deps[e.fn.get()];
      if (alive.emplace(e.fn.get(), e.fn).second) stack.push_back(e.fn.get());
    }
  }

  // 2. Seed the input buffers with the root gradients.
  std::unordered_map<Node*, std::vector<AnyTensor>> buffers;
  auto buffer_of = [&](Node* n) -> std::vector<AnyTensor>& {
    auto& b = buffers[n];
    if (b.empty()) b.resize(n->num_outputs);
    return b;
  };
  for (size_t i = 0; i < roots.size(); ++i)
    if (roots[i].fn) detail::accumulate(buffer_of(roots[i].fn.get())[roots[i].input_nr], std::move(root_grads[i]));

  auto later_first = [](Node* a, Node* b) { return a->sequence_nr < b->sequence_nr; };
  std::priority_queue<Node*, std::vector<Node*>, decltype(later_first)> ready(later_first);
  std::unordered_set<Node*> queued;
  for (const auto& r : roots)
    if (r.fn && deps[r.fn.get()] == 0 && queued.insert(r.fn.get()).second) ready.push(r.fn.get());

  // 3. Run.
  GradModeGuard no_grad(false);
  while (!ready.empty()) {
    Node* n = ready.top();
    ready.pop();
    MAMCLIP_CHECK(!n->released, autograd_error, "backward: trying to backward through the graph a second time (node ",
                  n->name(), "); its saved tensors were freed after the first backward. Pass retain_graph=true to ",
                  "the first backward if you need to backward twice");
    std::vector<AnyTensor> grads = std::move(buffer_of(n));
    buffers.erase(n);
    for (auto& [which, hook] : n->pre_hooks) {
      if (!is_defined(grads[which])) continue;
      AnyTensor replaced = hook(grads[which]);
      if (is_defined(replaced)) grads[which] = std::move(replaced);
    }
    std::vector<AnyTensor> input_grads = n->apply(std::move(grads));
    if (!retain_graph && !n->retains_nothing()) {
      n->release_saved();
      n->released = true;
    }
    for (size_t i = 0; i < n->next_edges.size(); ++i) {
      const Edge& e = n->next_edges[i];
      if (!e.fn) continue;
      if (i < input_grads.size()) detail::accumulate(buffer_of(e.fn.get())[e.input_nr], std::move(input_grads[i]));
      if (--deps[e.fn.get()] == 0) ready.push(e.fn.get());
    }
  }
}

}  // namespace mamclip::autograd

namespace mamclip {

template <class T>
void Tensor<T>::backward(const Tensor<T>& gradient, bool retain_graph) const {
  if constexpr (!is_floating_v<T>) {
    throw dtype_error("backward: only floating-point tensors have gradients, got " + std::string(dtype_name(dtype())));
  } else {
    MAMCLIP_CHECK(requires_grad(), autograd_error,
                  "backward: the tensor does not require grad and has no grad_fn (no input of the ops that made it "
                  "had requires_grad set, or it was computed under NoGradGuard)");
    Tensor<T> g = gradient;
    if (!g.defined()) {
      MAMCLIP_CHECK(numel() == 1, autograd_error,
                    "backward: a gradient can be created implicitly only for a one-element output, got shape ",
                    shape_str(shape()), "; pass a gradient of that shape");
      g = Tensor<T>::empty(shape(), device());
      g.fill_(T(1));
    }
    MAMCLIP_CHECK(g.shape() == shape(), shape_error, "backward: gradient has shape ", shape_str(g.shape()),
                  " but the tensor has shape ", shape_str(shape()));
    MAMCLIP_CHECK(g.device() == device(), device_error, "backward: gradient is on ", g.device().str(),
                  " but the tensor is on ", device().str());
    // Explicit vector types: nvcc 13 mis-parses nested braced lists here.
    autograd::run_backward(std::vector<autograd::Edge>{autograd::gradient_edge(*this)},
                           std::vector<autograd::AnyTensor>{autograd::to_any(g)}, retain_graph);
  }
}

template <class T>
void Tensor<T>::register_hook(GradHook<T> hook) const {
  MAMCLIP_CHECK(requires_grad(), autograd_error,
                "register_hook: the tensor does not require grad, so no gradient will reach a hook");
  if (is_leaf()) {
    impl()->leaf_hooks.push_back(std::move(hook));
    return;
  }
  impl()->grad_fn->pre_hooks.emplace_back(output_nr(), [h = std::move(hook)](const autograd::AnyTensor& g) {
    return autograd::to_any(h(autograd::from_any<T>(g)));
  });
}

template <class T>
uint64_t Tensor<T>::register_post_accumulate_grad_hook(std::function<void()> hook) const {
  MAMCLIP_CHECK(is_leaf() && requires_grad(), autograd_error,
                "register_post_accumulate_grad_hook: expected a leaf that requires grad");
  static std::atomic<uint64_t> next_handle{1};
  const uint64_t handle = next_handle.fetch_add(1, std::memory_order_relaxed);
  impl()->post_accumulate_hooks.emplace_back(handle, std::move(hook));
  return handle;
}

template <class T>
void Tensor<T>::remove_post_accumulate_grad_hook(uint64_t handle) const {
  auto& hooks = checked().post_accumulate_hooks;
  std::erase_if(hooks, [handle](const auto& h) { return h.first == handle; });
}

template <class T>
void Tensor<T>::retain_grad() const {
  MAMCLIP_CHECK(requires_grad(), autograd_error, "retain_grad: the tensor does not require grad");
  if (is_leaf()) return;  // leaves keep .grad anyway
  std::weak_ptr<TensorImpl<T>> weak = impl();
  impl()->grad_fn->pre_hooks.emplace_back(output_nr(), [weak](const autograd::AnyTensor& g) {
    if (auto im = weak.lock()) {
      Tensor<T> grad = autograd::from_any<T>(g);
      if (!im->grad)
        im->grad = mamclip::detail::contiguous_copy(grad).impl();
      else
        im->grad = mamclip::detail::add_same_shape(Tensor<T>(im->grad), grad).impl();
    }
    return autograd::AnyTensor{};
  });
}

}  // namespace mamclip
