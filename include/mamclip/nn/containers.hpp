#pragma once
// Containers: Sequential (chains unary modules) and ModuleList (an indexable
// list). Children are named "0", "1", ... as in PyTorch, so a state dict key
// reads "layers.3.fc1.weight".

#include <memory>
#include <string>
#include <vector>

#include "mamclip/nn/module.hpp"

namespace mamclip::nn {

class Sequential : public UnaryModule {
 public:
  Sequential() = default;
  explicit Sequential(std::vector<std::shared_ptr<UnaryModule>> modules) {
    for (auto& m : modules) push_back(std::move(m));
  }

  std::string type_name() const override { return "Sequential"; }

  // Appends `module` as child "<size()>" and returns it.
  template <class M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> module) {
    static_assert(std::is_base_of_v<UnaryModule, M>, "Sequential::push_back: M must derive from nn::UnaryModule");
    register_module(std::to_string(items_.size()), module);
    items_.push_back(module);
    return module;
  }

  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  const std::shared_ptr<UnaryModule>& operator[](size_t i) const {
    MAMCLIP_CHECK(i < items_.size(), index_error, "Sequential: index ", i, " is out of range for ", items_.size(),
                  " modules");
    return items_[i];
  }
  auto begin() const { return items_.begin(); }
  auto end() const { return items_.end(); }

 protected:
  // Each module checks its own input as the chain reaches it.
  Tensor<float> forward_impl(const Tensor<float>& x) override {
    Tensor<float> y = x;
    for (const auto& m : items_) y = m->forward(y);
    return y;
  }

 private:
  std::vector<std::shared_ptr<UnaryModule>> items_;
};

// A list of modules of (at least) type M, indexable with typed access:
// ModuleListOf<BertLayer> layers; layers[i]->forward(...). ModuleList holds any module.
template <class M = Module>
class ModuleListOf : public Module {
  static_assert(std::is_base_of_v<Module, M>, "ModuleListOf: M must derive from nn::Module");

 public:
  ModuleListOf() = default;
  explicit ModuleListOf(std::vector<std::shared_ptr<M>> modules) {
    for (auto& m : modules) push_back(std::move(m));
  }

  std::string type_name() const override { return "ModuleList"; }

  std::shared_ptr<M> push_back(std::shared_ptr<M> module) {
    register_module(std::to_string(items_.size()), module);
    items_.push_back(module);
    return module;
  }

  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  const std::shared_ptr<M>& operator[](size_t i) const {
    MAMCLIP_CHECK(i < items_.size(), index_error, "ModuleList: index ", i, " is out of range for ", items_.size(),
                  " modules");
    return items_[i];
  }
  // Element i as a derived type D; a value_error when it is not one.
  template <class D>
  std::shared_ptr<D> at(size_t i) const {
    auto d = std::dynamic_pointer_cast<D>((*this)[i]);
    MAMCLIP_CHECK(d != nullptr, value_error, "ModuleList: module ", i, " is a ", (*this)[i]->type_name(),
                  ", not the requested type");
    return d;
  }
  auto begin() const { return items_.begin(); }
  auto end() const { return items_.end(); }

 private:
  std::vector<std::shared_ptr<M>> items_;
};

using ModuleList = ModuleListOf<Module>;

}  // namespace mamclip::nn
