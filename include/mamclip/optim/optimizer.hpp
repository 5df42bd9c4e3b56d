#pragma once
// Optimizer: parameter groups, per-parameter state and the step protocol.
//
// Optimizer is the non-template interface that schedulers, gradient clipping
// and training loops use (groups, learning rates, step, zero_grad).
// OptimizerBase<Options, State> holds the groups (each with its own Options:
// lr, weight_decay and the optimizer's own settings) and one State per
// parameter, created at the parameter's first update.
//
// step() is not virtual: it checks every gradient against its parameter, then
// runs step_impl under NoGradGuard. Updates write into the parameters'
// storage, so every handle to a parameter (module members, state dicts) sees
// them.

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "mamclip/autograd/grad_mode.hpp"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/core/factory.hpp"
#include "mamclip/core/tensor_data.hpp"

namespace mamclip::optim {

template <class Options>
struct ParamGroup {
  std::vector<Tensor<float>> params;
  Options options;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  virtual std::string type_name() const = 0;

  // One update of every parameter that has a gradient (parameters without one are skipped).
  void step() {
    MAMCLIP_CHECK(!capturing_device_graph(), device_error, type_name(),
                  ".step inside a CUDA graph capture: its step count and learning rate are host values the graph "
                  "would replay unchanged; call step() outside, after each replay()");
    for (size_t g = 0; g < num_param_groups(); ++g) {
      const auto& ps = group_params(g);
      for (size_t i = 0; i < ps.size(); ++i) {
        const Tensor<float> grad = ps[i].grad();
        if (!grad.defined()) continue;
        MAMCLIP_CHECK(grad.shape() == ps[i].shape(), shape_error, type_name(), ".step: the gradient of parameter ", i,
                      " in group ", g, " has shape ", shape_str(grad.shape()), " but the parameter has shape ",
                      shape_str(ps[i].shape()));
        MAMCLIP_CHECK(grad.device() == ps[i].device(), device_error, type_name(), ".step: the gradient of parameter ",
                      i, " in group ", g, " is on ", grad.device().str(), " but the parameter is on ",
                      ps[i].device().str());
      }
    }
    NoGradGuard no_grad;
    step_impl();
  }

  // Drops every gradient (set_to_none, PyTorch's default) or zeroes it in place.
  void zero_grad(bool set_to_none = true) {
    for (size_t g = 0; g < num_param_groups(); ++g)
      for (const auto& p : group_params(g)) {
        if (!p.grad().defined()) continue;
        if (set_to_none) {
          p.set_grad(Tensor<float>());
        } else {
          Tensor<float> grad = p.grad();
          grad.zero_();
        }
      }
  }

  virtual size_t num_param_groups() const = 0;
  virtual const std::vector<Tensor<float>>& group_params(size_t group) const = 0;
  virtual double lr(size_t group) const = 0;
  virtual void set_lr(size_t group, double lr) = 0;

  // All parameters, group by group.
  std::vector<Tensor<float>> parameters() const {
    std::vector<Tensor<float>> out;
    for (size_t g = 0; g < num_param_groups(); ++g)
      for (const auto& p : group_params(g)) out.push_back(p);
    return out;
  }

 protected:
  virtual void step_impl() = 0;
};

template <class Options, class State>
class OptimizerBase : public Optimizer {
 public:
  // Adds a group after checking its options and that none of its parameters is
  // already optimized (a parameter in two groups would be updated twice).
  void add_param_group(ParamGroup<Options> group) {
    const size_t index = groups_.size();
    group.options.check(type_name(), index);
    std::unordered_set<const void*> here;
    for (size_t i = 0; i < group.params.size(); ++i) {
      const Tensor<float>& p = group.params[i];
      MAMCLIP_CHECK(p.defined(), value_error, type_name(), ": parameter ", i, " of group ", index, " is undefined");
      MAMCLIP_CHECK(p.is_leaf(), value_error, type_name(), ": parameter ", i, " of group ", index,
                    " is not a leaf tensor (it is the output of an op); optimize the leaf it was computed from");
      const bool fresh = members_.count(p.impl().get()) == 0 && here.insert(p.impl().get()).second;
      MAMCLIP_CHECK(fresh, value_error, type_name(), ": parameter ", i, " of group ", index,
                    " appears more than once among the parameter groups");
    }
    for (const auto& p : group.params) members_.insert(p.impl().get());
    groups_.push_back(std::move(group));
  }

  std::vector<ParamGroup<Options>>& param_groups() { return groups_; }
  const std::vector<ParamGroup<Options>>& param_groups() const { return groups_; }

  size_t num_param_groups() const override { return groups_.size(); }
  const std::vector<Tensor<float>>& group_params(size_t group) const override { return checked_group(group).params; }
  double lr(size_t group) const override { return checked_group(group).options.lr; }
  void set_lr(size_t group, double lr) override {
    MAMCLIP_CHECK(lr >= 0, value_error, type_name(), ".set_lr: learning rate must be non-negative, got ", lr);
    groups_[checked_index(group)].options.lr = lr;
  }

  // The state of parameter p, or null before its first update. Mutable, so a
  // checkpoint can save and restore it.
  State* state(const Tensor<float>& p) {
    auto it = state_.find(p.impl().get());
    return it == state_.end() ? nullptr : &it->second;
  }
  // Replaces the state of parameter p (restoring a checkpoint); nullopt drops
  // it, as before p's first update. p must be one of this optimizer's parameters.
  void set_state(const Tensor<float>& p, std::optional<State> s) {
    MAMCLIP_CHECK(p.defined() && members_.count(p.impl().get()) != 0, value_error, type_name(),
                  ".set_state: the tensor is not one of this optimizer's parameters");
    if (s) state_[p.impl().get()] = std::move(*s);
    else state_.erase(p.impl().get());
  }

 protected:
  State& state_for(const Tensor<float>& p) { return state_[p.impl().get()]; }

 private:
  size_t checked_index(size_t group) const {
    MAMCLIP_CHECK(group < groups_.size(), index_error, type_name(), ": parameter group ", group,
                  " is out of range (the optimizer has ", groups_.size(), " groups)");
    return group;
  }
  const ParamGroup<Options>& checked_group(size_t group) const { return groups_[checked_index(group)]; }

  std::vector<ParamGroup<Options>> groups_;
  // Keyed by TensorImpl: the groups hold the handles, so the keys stay alive.
  std::unordered_map<const void*, State> state_;
  std::unordered_set<const void*> members_;
};

namespace detail {

// Runs f(p_data, g_data, n) on contiguous float data of p and its gradient;
// a non-contiguous parameter is updated through a contiguous copy.
template <class F>
void with_contiguous(Tensor<float> p, const Tensor<float>& grad, F&& f) {
  Tensor<float> g = grad.is_contiguous() ? grad : mamclip::detail::contiguous_copy(grad);
  if (p.is_contiguous()) {
    f(p.data_ptr(), g.data_ptr(), p.numel());
  } else {
    Tensor<float> tmp = mamclip::detail::contiguous_copy(p);
    f(tmp.data_ptr(), g.data_ptr(), p.numel());
    p.copy_(tmp);
  }
}

}  // namespace detail

}  // namespace mamclip::optim
