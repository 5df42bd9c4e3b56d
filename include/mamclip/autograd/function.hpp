#pragma once
// A base for user-defined differentiable functions, shaped like
// torch.autograd.Function:
//
//   struct Cube : autograd::Function<Cube, double> {
//     static Tensor<double> forward(Context& ctx, const std::vector<Tensor<double>>& in) {
//       ctx.save_for_backward({in[0]});
//       return in[0] * in[0] * in[0];          // runs without recording a graph
//     }
//     static std::vector<Tensor<double>> backward(Context& ctx, const Tensor<double>& grad) {
//       auto x = ctx.saved()[0];
//       return {grad * x * x * 3.0};           // one gradient per input (undefined: none)
//     }
//   };
//   auto y = Cube::apply({x});
//
// forward runs under NoGradGuard, so only the custom backward is recorded.

#include <any>
#include <map>
#include <string>

#include "mamclip/autograd/node.hpp"

namespace mamclip::autograd {

template <class T>
class FunctionContext {
 public:
  void save_for_backward(std::vector<Tensor<T>> tensors) {
    saved_.clear();
    for (auto& t : tensors) saved_.push_back(t.defined() ? t.detach() : t);
  }
  const std::vector<Tensor<T>>& saved() const { return saved_; }
  // Non-tensor values for backward (sizes, flags, options).
  std::map<std::string, std::any> values;
  // needs_input_grad[i]: whether input i wants a gradient (set before backward).
  std::vector<bool> needs_input_grad;

 private:
  std::vector<Tensor<T>> saved_;
};

template <class Derived, class T>
struct Function {
  using Context = FunctionContext<T>;

  static Tensor<T> apply(const std::vector<Tensor<T>>& inputs) {
    auto ctx = std::make_shared<Context>();
    std::vector<Tensor<T>> detached;
    for (const auto& x : inputs) detached.push_back(x.defined() ? x.detach() : x);
    Tensor<T> out;
    {
      NoGradGuard no_grad;
      out = Derived::forward(*ctx, detached);
    }
    // The output must be a tensor of its own so that attaching a grad_fn does not
    // touch an input (forward may return an input unchanged).
    out = out.detach();
    return record<T>(name(), inputs, out, [ctx](const Tensor<T>& g, const std::vector<bool>& needs) {
      ctx->needs_input_grad = needs;
      std::vector<Tensor<T>> grads = Derived::backward(*ctx, g);
      MAMCLIP_CHECK(grads.size() == needs.size(), autograd_error, name(), ": backward returned ", grads.size(),
                    " gradients for ", needs.size(), " inputs");
      return grads;
    });
  }

  static std::string name() {
    if constexpr (requires { Derived::kName; })
      return std::string(Derived::kName);
    else
      return "CustomFunctionBackward";
  }
};

}  // namespace mamclip::autograd
