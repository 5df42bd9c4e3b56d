#pragma once
// Module: the base of layers and models, with PyTorch's naming and state-dict
// semantics.
//
// A module owns named parameters, named buffers and named child modules, each
// in registration order. Traversals give PyTorch's dotted names
// ("mlp.fc1.weight"): a module's own entries first, then each child's, depth
// first, so names and order match torch.nn.Module and checkpoints map one to
// one.
//
// Parameters are Tensor<float>. Float master weights are what PyTorch trains
// with (mixed precision keeps fp32 parameters and casts them per op), so one
// non-template Module keeps the state dict a single type and lets containers,
// optimizers and checkpoint code hold any module. Lower-precision compute casts
// parameters inside forward with the differentiable to<U>(), whose gradient
// flows back to the float parameter. Double-precision gradient checks run on
// the ops a module calls (nn tests compare modules with those ops).
//
// Handles: a parameter is a Tensor handle shared by the module's member, the
// registry, optimizers and state dicts. Everything that changes a parameter
// (load_state_dict, optimizers, to(Device)) changes it in place so every
// handle stays valid; assigning a new tensor to a member does not re-register
// it (copy_ into it instead).

#include <cstdint>
#include <memory>
#include <sstream>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "mamclip/autograd/grad_mode.hpp"
#include "mamclip/core/random.hpp"
#include "mamclip/core/tensor_data.hpp"
#include "mamclip/ops/shape/shape.hpp"

namespace mamclip::nn {

// An ordered name -> tensor map (PyTorch's OrderedDict state dict): iteration
// follows insertion order; lookups by name are O(1).
class StateDict {
 public:
  using value_type = std::pair<std::string, Tensor<float>>;
  using const_iterator = std::vector<value_type>::const_iterator;

  StateDict() = default;
  StateDict(std::initializer_list<value_type> items) {
    for (const auto& [k, v] : items) insert(k, v);
  }

  // Adds `name`; a name already present is a value_error (use insert_or_assign to replace).
  void insert(const std::string& name, Tensor<float> t) {
    MAMCLIP_CHECK(!contains(name), value_error, "StateDict: key '", name, "' is already present");
    index_.emplace(name, items_.size());
    items_.emplace_back(name, std::move(t));
  }
  void insert_or_assign(const std::string& name, Tensor<float> t) {
    auto it = index_.find(name);
    if (it == index_.end())
      insert(name, std::move(t));
    else
      items_[it->second].second = std::move(t);
  }
  // Removes `name` if present; returns whether it was.
  bool erase(const std::string& name) {
    auto it = index_.find(name);
    if (it == index_.end()) return false;
    items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(it->second));
    index_.clear();
    for (size_t i = 0; i < items_.size(); ++i) index_.emplace(items_[i].first, i);
    return true;
  }

  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const Tensor<float>& at(const std::string& name) const {
    auto it = index_.find(name);
    MAMCLIP_CHECK(it != index_.end(), value_error, "StateDict: no key '", name, "' (", items_.size(), " keys)");
    return items_[it->second].second;
  }
  // Null when absent.
  const Tensor<float>* find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &items_[it->second].second;
  }
  std::vector<std::string> keys() const {
    std::vector<std::string> k;
    k.reserve(items_.size());
    for (const auto& item : items_) k.push_back(item.first);
    return k;
  }
  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  const_iterator begin() const { return items_.begin(); }
  const_iterator end() const { return items_.end(); }

 private:
  std::vector<value_type> items_;
  std::unordered_map<std::string, size_t> index_;
};

// load_state_dict found keys or shapes that do not fit the module. The message
// lists every problem; the lists hold them for programs.
struct state_dict_error : value_error {
  state_dict_error(const std::string& message, std::vector<std::string> missing, std::vector<std::string> unexpected,
                   std::vector<std::string> mismatched)
      : value_error(message),
        missing_keys(std::move(missing)),
        unexpected_keys(std::move(unexpected)),
        shape_mismatches(std::move(mismatched)) {}
  std::vector<std::string> missing_keys;
  std::vector<std::string> unexpected_keys;
  std::vector<std::string> shape_mismatches;  // the keys whose shapes differ
};

// What a non-strict load_state_dict left out (PyTorch's _IncompatibleKeys).
struct LoadResult {
  std::vector<std::string> missing_keys;
  std::vector<std::string> unexpected_keys;
};

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  // A module owns its registry; copying would alias parameters under two owners.
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // The class name, for messages and repr() ("Linear").
  virtual std::string type_name() const { return "Module"; }
  // The arguments shown by repr() ("in_features=4, out_features=3, bias=true").
  virtual std::string extra_repr() const { return ""; }

  // ---- registration

  // Registers `t` as parameter `name` and returns its handle. A leaf keeps its
  // identity (the caller's handle is the parameter); an op output is detached.
  Tensor<float> register_parameter(const std::string& name, Tensor<float> t, bool requires_grad = true) {
    check_new_name("register_parameter", name);
    MAMCLIP_CHECK(t.defined(), value_error, type_name(), ".register_parameter: parameter '", name, "' is undefined");
    if (!t.is_leaf()) t = t.detach();
    t.set_requires_grad(requires_grad);
    params_.push_back({name, t});
    return t;
  }

  // Registers a buffer: state that is not trained (running statistics, fixed
  // tables). Persistent buffers are part of the state dict.
  Tensor<float> register_buffer(const std::string& name, Tensor<float> t, bool persistent = true) {
    check_new_name("register_buffer", name);
    MAMCLIP_CHECK(t.defined(), value_error, type_name(), ".register_buffer: buffer '", name, "' is undefined");
    buffers_.push_back({name, t, persistent});
    return t;
  }

  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    static_assert(std::is_base_of_v<Module, M>, "register_module: M must derive from nn::Module");
    check_new_name("register_module", name);
    MAMCLIP_CHECK(module != nullptr, value_error, type_name(), ".register_module: module '", name, "' is null");
    MAMCLIP_CHECK(module.get() != this, value_error, type_name(), ".register_module: a module cannot be its own child ('",
                  name, "')");
    children_.push_back({name, module});
    return module;
  }

  // ---- traversal (PyTorch order: own entries, then children depth first)

  // Each module once (shared submodules appear under their first name); "" is this module.
  std::vector<std::pair<std::string, Module*>> named_modules() {
    std::vector<std::pair<std::string, Module*>> out;
    visit_modules(true, [&](const std::string& prefix, const Module& m) {
      out.emplace_back(prefix, const_cast<Module*>(&m));  // `this` is non-const, and so is every child we own
    });
    return out;
  }
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_children() const {
    std::vector<std::pair<std::string, std::shared_ptr<Module>>> out;
    for (const auto& c : children_) out.emplace_back(c.name, c.module);
    return out;
  }

  // Each parameter once (tied parameters appear under their first name).
  std::vector<std::pair<std::string, Tensor<float>>> named_parameters(bool recurse = true) const {
    std::vector<std::pair<std::string, Tensor<float>>> out;
    std::unordered_set<const void*> seen;
    visit_modules(recurse, [&](const std::string& prefix, const Module& m) {
      for (const auto& p : m.params_)
        if (seen.insert(p.tensor.impl().get()).second) out.emplace_back(join(prefix, p.name), p.tensor);
    });
    return out;
  }
  std::vector<Tensor<float>> parameters(bool recurse = true) const {
    std::vector<Tensor<float>> out;
    for (auto& [name, t] : named_parameters(recurse)) out.push_back(t);
    return out;
  }
  std::vector<std::pair<std::string, Tensor<float>>> named_buffers(bool recurse = true) const {
    std::vector<std::pair<std::string, Tensor<float>>> out;
    std::unordered_set<const void*> seen;
    visit_modules(recurse, [&](const std::string& prefix, const Module& m) {
      for (const auto& b : m.buffers_)
        if (seen.insert(b.tensor.impl().get()).second) out.emplace_back(join(prefix, b.name), b.tensor);
    });
    return out;
  }
  std::vector<Tensor<float>> buffers(bool recurse = true) const {
    std::vector<Tensor<float>> out;
    for (auto& [name, t] : named_buffers(recurse)) out.push_back(t);
    return out;
  }

  // Number of parameter elements (tied parameters counted once).
  int64_t num_parameters(bool only_trainable = false) const {
    int64_t n = 0;
    for (const auto& p : parameters())
      if (!only_trainable || p.requires_grad()) n += p.numel();
    return n;
  }

  // ---- state dict

  // Parameters and persistent buffers under their dotted names, detached views
  // of the module's own storage (no copy). Unlike named_parameters, a tied or
  // shared tensor appears under every name, as in PyTorch.
  StateDict state_dict() const {
    StateDict out;
    append_state("", out);
    return out;
  }

  // Copies `dict` into the module's tensors in place (optimizers keep their
  // handles). Shape mismatches are always errors; with `strict`, so are missing
  // and unexpected keys. All problems are reported in one state_dict_error, and
  // on error nothing has been modified.
  LoadResult load_state_dict(const StateDict& dict, bool strict = true) {
    const StateDict own = state_dict();
    LoadResult result;
    std::vector<std::string> mismatched;
    std::ostringstream mismatch_detail;
    for (const auto& [name, target] : own) {
      const Tensor<float>* src = dict.find(name);
      if (!src) {
        result.missing_keys.push_back(name);
      } else if (!src->defined() || src->shape() != target.shape()) {
        mismatched.push_back(name);
        mismatch_detail << "\n  '" << name << "': checkpoint has "
                        << (src->defined() ? shape_str(src->shape()) : std::string("an undefined tensor"))
                        << ", the module has " << shape_str(target.shape());
      }
    }
    for (const auto& [name, t] : dict)
      if (!own.contains(name)) result.unexpected_keys.push_back(name);

    const bool key_problems = strict && (!result.missing_keys.empty() || !result.unexpected_keys.empty());
    if (!mismatched.empty() || key_problems) {
      std::ostringstream msg;
      msg << "load_state_dict: error(s) loading the state dict into " << type_name() << ":";
      if (strict && !result.missing_keys.empty()) msg << "\n missing keys " << key_list(result.missing_keys);
      if (strict && !result.unexpected_keys.empty()) msg << "\n unexpected keys " << key_list(result.unexpected_keys);
      if (!mismatched.empty()) msg << "\n shape mismatches (" << mismatched.size() << "):" << mismatch_detail.str();
      throw state_dict_error(msg.str(), strict ? result.missing_keys : std::vector<std::string>{},
                             strict ? result.unexpected_keys : std::vector<std::string>{}, mismatched);
    }
    NoGradGuard no_grad;
    for (const auto& [name, target] : own)
      if (const Tensor<float>* src = dict.find(name)) {
        Tensor<float> dst = target;  // a detached view of the module's tensor
        dst.copy_(*src);
      }
    return result;
  }

  // ---- modes and placement

  // Sets training mode on this module and every submodule.
  void train(bool mode = true) {
    for (auto& [name, m] : named_modules()) m->training_ = mode;
  }
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // The device of the parameters (kCPU for a module without any); device_error
  // naming two of them when they are not all on one device.
  Device device() const {
    const auto named = named_parameters();
    if (named.empty()) return kCPU;
    const auto& [first_name, first] = named.front();
    for (const auto& [name, p] : named)
      MAMCLIP_CHECK(p.device() == first.device(), device_error, type_name(), ": parameter '", name, "' is on ",
                    p.device().str(), " but '", first_name, "' is on ", first.device().str(),
                    "; expected every parameter on one device (call to(device) on the whole module)");
    return first.device();
  }

  // Moves every parameter, buffer and gradient to `device` in place: each
  // tensor keeps its identity (handles stay valid) and gets new storage.
  // Move a model before building its optimizer, whose state stays where it was.
  void to(Device device) {
    for (auto& p : parameters()) move_in_place(p, device);
    for (auto& b : buffers()) move_in_place(b, device);
  }

  // Clears parameter gradients: drops them (set_to_none, PyTorch's default) or zeroes them.
  void zero_grad(bool set_to_none = true) {
    for (auto& p : parameters()) {
      if (!p.grad().defined()) continue;
      if (set_to_none) {
        p.set_grad(Tensor<float>());
      } else {
        Tensor<float> g = p.grad();
        g.zero_();
      }
    }
  }

  // The module tree, one line per module, as PyTorch prints it.
  std::string repr() const {
    std::ostringstream os;
    write_repr(os, 0);
    return os.str();
  }

 private:
  struct ParamEntry {
    std::string name;
    Tensor<float> tensor;
  };
  struct BufferEntry {
    std::string name;
    Tensor<float> tensor;
    bool persistent;
  };
  struct ChildEntry {
    std::string name;
    std::shared_ptr<Module> module;
  };

  static std::string join(const std::string& prefix, const std::string& name) {
    return prefix.empty() ? name : prefix + "." + name;
  }

  static std::string key_list(const std::vector<std::string>& keys) {
    std::string s = "(" + std::to_string(keys.size()) + "): ";
    for (size_t i = 0; i < keys.size(); ++i) s += (i ? ", '" : "'") + keys[i] + "'";
    return s;
  }

  void check_new_name(const char* what, const std::string& name) const {
    MAMCLIP_CHECK(!name.empty(), value_error, type_name(), ".", what, ": the name must not be empty");
    MAMCLIP_CHECK(name.find('.') == std::string::npos, value_error, type_name(), ".", what, ": name '", name,
                  "' must not contain '.' (dots separate submodule names)");
    bool taken = false;
    for (const auto& p : params_) taken = taken || p.name == name;
    for (const auto& b : buffers_) taken = taken || b.name == name;
    for (const auto& c : children_) taken = taken || c.name == name;
    MAMCLIP_CHECK(!taken, value_error, type_name(), ".", what, ": name '", name,
                  "' is already used by a parameter, buffer or submodule of this module");
  }

  // Pre-order walk, each module once: f(prefix, module).
  template <class F>
  void visit_modules(bool recurse, F&& f) const {
    std::unordered_set<const Module*> seen;
    walk("", recurse, seen, f);
  }
  template <class F>
  void walk(const std::string& prefix, bool recurse, std::unordered_set<const Module*>& seen, F& f) const {
    if (!seen.insert(this).second) return;
    f(prefix, *this);
    if (recurse)
      for (const auto& c : children_) c.module->walk(join(prefix, c.name), recurse, seen, f);
  }

  void append_state(const std::string& prefix, StateDict& out) const {
    for (const auto& p : params_) out.insert(join(prefix, p.name), p.tensor.detach());
    for (const auto& b : buffers_)
      if (b.persistent) out.insert(join(prefix, b.name), b.tensor.detach());
    for (const auto& c : children_) c.module->append_state(join(prefix, c.name), out);
  }

  static void move_in_place(Tensor<float>& t, Device device) {
    if (t.device() == device) return;
    Tensor<float> moved = t.detach().to(device);
    TensorImpl<float>& im = *t.impl();
    im.storage = moved.storage();
    im.offset = moved.storage_offset();
    im.strides = moved.strides();
    if (im.grad) im.grad = Tensor<float>(im.grad).detach().to(device).impl();
  }

  void write_repr(std::ostream& os, int indent) const {
    os << type_name() << "(" << extra_repr();
    if (!children_.empty()) {
      os << "\n";
      for (const auto& c : children_) {
        os << std::string(static_cast<size_t>(indent + 2), ' ') << "(" << c.name << "): ";
        c.module->write_repr(os, indent + 2);
        os << "\n";
      }
      os << std::string(static_cast<size_t>(indent), ' ');
    }
    os << ")";
  }

  std::vector<ParamEntry> params_;
  std::vector<BufferEntry> buffers_;
  std::vector<ChildEntry> children_;
  bool training_ = true;
};

// A module with one float input and one float output: what Sequential chains.
//
// forward is not virtual: it runs the input checks, then forward_impl. A
// subclass overrides check_input and forward_impl; one that overrides only
// forward_impl (a variant of a layer) keeps its base's checks.
class UnaryModule : public Module {
 public:
  Tensor<float> forward(const Tensor<float>& x) {
    MAMCLIP_CHECK(x.defined(), value_error, type_name(), ".forward: the input is an undefined tensor");
    check_input(x);
    return forward_impl(x);
  }
  Tensor<float> operator()(const Tensor<float>& x) { return forward(x); }

 protected:
  // Throws a typed error naming the module, what was expected and the input's shape.
  virtual void check_input(const Tensor<float>& x) const { (void)x; }
  virtual Tensor<float> forward_impl(const Tensor<float>& x) = 0;
};

}  // namespace mamclip::nn
