// Module: PyTorch names and order, state dicts (round trip, strict errors,
// in-place loading), train/eval, zero_grad, to(Device), containers.
#include "support/test_support.hpp"

namespace test_module {
using namespace mamclip;
using namespace mamclip::test;
using namespace mamclip::nn;

namespace {

// Parameter-only block with a buffer, so every registry kind appears.
struct Mlp : Module {
  std::shared_ptr<Linear> fc1, fc2;
  std::shared_ptr<LayerNorm> norm;
  explicit Mlp(Generator& gen) {
    fc1 = register_module("fc1", std::make_shared<Linear>(4, 6, true, gen));
    norm = register_module("norm", std::make_shared<LayerNorm>(6));
    fc2 = register_module("fc2", std::make_shared<Linear>(6, 3, false, gen));
    register_buffer("running", zeros<float>({3}));
  }
  std::string type_name() const override { return "Mlp"; }
};

struct Net : Module {
  std::shared_ptr<Embedding> embed;
  std::shared_ptr<Mlp> mlp;
  std::shared_ptr<Dropout> drop;
  Tensor<float> logit_scale;
  explicit Net(uint64_t seed = 1) {
    Generator gen(seed);
    embed = register_module("embed", std::make_shared<Embedding>(5, 4, 0, gen));
    // A parameter registered after a child is still listed before the children's (PyTorch order).
    logit_scale = register_parameter("logit_scale", full<float>({}, 2.5f));
    mlp = register_module("mlp", std::make_shared<Mlp>(gen));
    drop = register_module("drop", std::make_shared<Dropout>(0.5));
    register_buffer("position_ids", arange<float>(0, 7));
    register_buffer("cache", zeros<float>({2}), /*persistent=*/false);
  }
  std::string type_name() const override { return "Net"; }
};

template <class Pairs>
std::vector<std::string> names_of(const Pairs& pairs) {
  std::vector<std::string> out;
  for (const auto& p : pairs) out.push_back(p.first);
  return out;
}

}  // namespace

TEST_CASE("named_parameters, named_buffers and named_modules use PyTorch's dotted names and order") {
  Net net;
  CHECK(names_of(net.named_parameters()) == std::vector<std::string>{"logit_scale", "embed.weight", "mlp.fc1.weight",
                                                                      "mlp.fc1.bias", "mlp.norm.weight",
                                                                      "mlp.norm.bias", "mlp.fc2.weight"});
  CHECK(names_of(net.named_buffers()) == std::vector<std::string>{"position_ids", "cache", "mlp.running"});
  CHECK(names_of(net.named_modules()) ==
        std::vector<std::string>{"", "embed", "mlp", "mlp.fc1", "mlp.norm", "mlp.fc2", "drop"});
  CHECK(names_of(net.named_children()) == std::vector<std::string>{"embed", "mlp", "drop"});
  CHECK(names_of(net.named_parameters(/*recurse=*/false)) == std::vector<std::string>{"logit_scale"});
  CHECK(net.num_parameters() == 1 + 5 * 4 + (6 * 4 + 6) + (6 + 6) + 3 * 6);
  // Parameters require grad; the handles returned by registration are the registered tensors.
  for (const auto& [name, p] : net.named_parameters()) {
    INFO(name);
    CHECK(p.requires_grad());
    CHECK(p.is_leaf());
  }
  CHECK(net.named_parameters()[0].second.is_same(net.logit_scale));
  CHECK(net.mlp->fc1->weight.is_same(net.named_parameters()[2].second));
}

TEST_CASE("state_dict holds parameters and persistent buffers, sharing storage") {
  Net net;
  StateDict sd = net.state_dict();
  // Per module: its parameters, its persistent buffers, then its children (PyTorch's order).
  CHECK(sd.keys() == std::vector<std::string>{"logit_scale", "position_ids", "embed.weight", "mlp.running",
                                              "mlp.fc1.weight", "mlp.fc1.bias", "mlp.norm.weight", "mlp.norm.bias",
                                              "mlp.fc2.weight"});
  CHECK(!sd.contains("cache"));
  CHECK(sd.at("mlp.fc1.weight").shares_storage_with(net.mlp->fc1->weight));
  CHECK_FALSE(sd.at("mlp.fc1.weight").requires_grad());
  CHECK(sd.find("nope") == nullptr);
  MAMCLIP_REQUIRE_THROWS_WITH(sd.at("nope"), value_error, "StateDict: no key 'nope'");
  MAMCLIP_REQUIRE_THROWS_WITH(sd.insert("logit_scale", zeros<float>({})), value_error,
                              "key 'logit_scale' is already present");
  CHECK(sd.erase("position_ids"));
  CHECK_FALSE(sd.erase("position_ids"));
  CHECK(sd.keys()[1] == "embed.weight");
  CHECK(sd.at("mlp.running").shape() == Shape{3});
}

TEST_CASE("load_state_dict round trip copies values in place") {
  Net a(1), b(2);
  require_allclose(a.mlp->fc1->weight, a.mlp->fc1->weight, 0, 0);
  CHECK(a.mlp->fc1->weight.to_vector() != b.mlp->fc1->weight.to_vector());
  // Handles taken before loading (what an optimizer holds) must see the new values.
  Tensor<float> held = b.mlp->fc1->weight;
  auto* storage_before = b.mlp->fc1->weight.storage().get();
  a.register_buffer("extra_nonpersistent", zeros<float>({1}), false);  // not in the state dict: no effect
  LoadResult r = b.load_state_dict(a.state_dict());
  CHECK(r.missing_keys.empty());
  CHECK(r.unexpected_keys.empty());
  CHECK(held.is_same(b.mlp->fc1->weight));
  CHECK(b.mlp->fc1->weight.storage().get() == storage_before);
  for (const auto& [name, t] : a.state_dict()) {
    INFO(name);
    CHECK(b.state_dict().at(name).to_vector() == t.to_vector());
  }
  CHECK(held.to_vector() == a.mlp->fc1->weight.to_vector());
  // The copy is a copy: changing the source afterwards does not change b.
  a.logit_scale.fill_(7.0f);
  CHECK(b.logit_scale.item() == 2.5f);
  // Loading keeps parameters trainable leaves.
  CHECK(b.mlp->fc1->weight.requires_grad());
  CHECK(b.mlp->fc1->weight.is_leaf());
}

TEST_CASE("strict load_state_dict reports every missing key, unexpected key and shape mismatch at once") {
  Net net(3);
  const auto before = net.mlp->fc1->weight.to_vector();
  StateDict sd = net.state_dict();
  sd.erase("mlp.fc1.bias");
  sd.erase("position_ids");
  sd.insert("mlp.fc3.weight", zeros<float>({2, 2}));
  sd.insert_or_assign("mlp.fc1.weight", zeros<float>({6, 5}));
  sd.insert_or_assign("logit_scale", zeros<float>({1}));

  bool thrown = false;
  try {
    net.load_state_dict(sd);
  } catch (const state_dict_error& e) {
    thrown = true;
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("load_state_dict: error(s) loading the state dict into Net") != std::string::npos);
    CHECK(msg.find("missing keys (2): 'position_ids', 'mlp.fc1.bias'") != std::string::npos);
    CHECK(msg.find("unexpected keys (1): 'mlp.fc3.weight'") != std::string::npos);
    CHECK(msg.find("shape mismatches (2):") != std::string::npos);
    CHECK(msg.find("'logit_scale': checkpoint has [1], the module has []") != std::string::npos);
    CHECK(msg.find("'mlp.fc1.weight': checkpoint has [6, 5], the module has [6, 4]") != std::string::npos);
    CHECK(e.missing_keys == std::vector<std::string>{"position_ids", "mlp.fc1.bias"});
    CHECK(e.unexpected_keys == std::vector<std::string>{"mlp.fc3.weight"});
    CHECK(e.shape_mismatches == std::vector<std::string>{"logit_scale", "mlp.fc1.weight"});
  }
  CHECK(thrown);
  // A failed load changes nothing, not even the keys that did fit.
  CHECK(net.mlp->fc1->weight.to_vector() == before);
  // state_dict_error is a value_error, so generic handlers catch it.
  MAMCLIP_REQUIRE_THROWS_WITH(net.load_state_dict(sd), value_error, "unexpected keys (1)");
}

TEST_CASE("non-strict load_state_dict returns missing and unexpected keys, but shape mismatches still throw") {
  Net src(4), dst(5);
  StateDict sd = src.state_dict();
  sd.erase("embed.weight");
  sd.insert("head.weight", zeros<float>({3}));
  LoadResult r = dst.load_state_dict(sd, /*strict=*/false);
  CHECK(r.missing_keys == std::vector<std::string>{"embed.weight"});
  CHECK(r.unexpected_keys == std::vector<std::string>{"head.weight"});
  CHECK(dst.mlp->fc2->weight.to_vector() == src.mlp->fc2->weight.to_vector());
  CHECK(dst.embed->weight.to_vector() != src.embed->weight.to_vector());

  sd.insert_or_assign("mlp.fc2.weight", zeros<float>({3, 7}));
  try {
    dst.load_state_dict(sd, false);
    FAIL("expected a state_dict_error");
  } catch (const state_dict_error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("'mlp.fc2.weight': checkpoint has [3, 7], the module has [3, 6]") != std::string::npos);
    CHECK(msg.find("missing keys") == std::string::npos);  // not problems in non-strict mode
    CHECK(e.missing_keys.empty());
    CHECK(e.shape_mismatches == std::vector<std::string>{"mlp.fc2.weight"});
  }
}

TEST_CASE("tied parameters appear once in named_parameters and under every name in state_dict") {
  struct Tied : Module {
    std::shared_ptr<Linear> enc, dec;
    Tied() {
      Generator gen(9);
      enc = register_module("enc", std::make_shared<Linear>(3, 3, false, gen));
      dec = register_module("dec", enc);  // the same module twice
      register_parameter("alias", enc->weight);
    }
  } m;
  CHECK(names_of(m.named_parameters()) == std::vector<std::string>{"alias"});
  CHECK(names_of(m.named_modules()) == std::vector<std::string>{"", "enc"});
  CHECK(m.state_dict().keys() == std::vector<std::string>{"alias", "enc.weight", "dec.weight"});
  CHECK(m.num_parameters() == 9);
}

TEST_CASE("registration checks names and values") {
  Module m;
  m.register_parameter("w", zeros<float>({2}));
  MAMCLIP_REQUIRE_THROWS_WITH(m.register_parameter("w", zeros<float>({2})), value_error,
                              "Module.register_parameter: name 'w' is already used");
  MAMCLIP_REQUIRE_THROWS_WITH(m.register_buffer("w", zeros<float>({2})), value_error, "name 'w' is already used");
  MAMCLIP_REQUIRE_THROWS_WITH(m.register_module("w", std::make_shared<ReLU>()), value_error,
                              "name 'w' is already used");
  MAMCLIP_REQUIRE_THROWS_WITH(m.register_parameter("a.b", zeros<float>({2})), value_error,
                              "name 'a.b' must not contain '.'");
  MAMCLIP_REQUIRE_THROWS_WITH(m.register_buffer("", zeros<float>({2})), value_error, "the name must not be empty");
  MAMCLIP_REQUIRE_THROWS_WITH(m.register_parameter("u", Tensor<float>()), value_error, "parameter 'u' is undefined");
  MAMCLIP_REQUIRE_THROWS_WITH(m.register_module("n", std::shared_ptr<Linear>()), value_error, "module 'n' is null");
  // A non-leaf becomes a leaf parameter (detached); requires_grad can be turned off.
  auto x = ones<float>({2}).set_requires_grad();
  Tensor<float> p = m.register_parameter("from_op", x * 2.0);
  CHECK(p.is_leaf());
  CHECK(p.requires_grad());
  Tensor<float> frozen = m.register_parameter("frozen", ones<float>({3}), /*requires_grad=*/false);
  CHECK_FALSE(frozen.requires_grad());
  CHECK(m.num_parameters() == 2 + 2 + 3);
  CHECK(m.num_parameters(/*only_trainable=*/true) == 4);
}

TEST_CASE("train and eval propagate to every submodule") {
  Net net;
  for (auto& [name, m] : net.named_modules()) CHECK(m->is_training());
  net.eval();
  for (auto& [name, m] : net.named_modules()) {
    INFO(name);
    CHECK_FALSE(m->is_training());
  }
  // Dropout follows the flag: the identity in eval mode.
  auto x = randn<float>({4, 9});
  CHECK(net.drop->forward(x).to_vector() == x.to_vector());
  net.mlp->train();  // a subtree only
  CHECK(net.mlp->fc1->is_training());
  CHECK_FALSE(net.is_training());
  CHECK_FALSE(net.drop->is_training());
  net.train();
  CHECK(net.drop->is_training());
  CHECK(net.drop->forward(x).to_vector() != x.to_vector());
}

TEST_CASE("zero_grad drops or zeroes every gradient") {
  Generator gen(3);
  Mlp mlp(gen);
  auto x = randn<float>({2, 4}, gen);
  sum(mlp.fc2->forward(mlp.norm->forward(mlp.fc1->forward(x)))).backward();
  for (auto& p : mlp.parameters()) CHECK(p.grad().defined());
  mlp.zero_grad(/*set_to_none=*/false);
  for (auto& p : mlp.parameters()) {
    REQUIRE(p.grad().defined());
    for (float v : p.grad().to_vector()) CHECK(v == 0.0f);
  }
  mlp.zero_grad();
  for (auto& p : mlp.parameters()) CHECK_FALSE(p.grad().defined());
}

TEST_CASE("to(Device) keeps handles; an unavailable device is a device_error") {
  Net net;
  Tensor<float> held = net.mlp->fc1->weight;
  net.to(kCPU);
  CHECK(held.is_same(net.mlp->fc1->weight));
  CHECK(net.mlp->fc1->weight.device() == kCPU);
  if (!device_available(DeviceType::cuda)) CHECK_THROWS_AS(net.to(Device::cuda(0)), device_error);
}

TEST_CASE("Sequential names children 0, 1, ... and chains forward") {
  Generator gen(11);
  Sequential seq({std::make_shared<Linear>(5, 7, true, gen), std::make_shared<GELU>(),
                  std::make_shared<Linear>(7, 3, true, gen)});
  CHECK(seq.size() == 3);
  CHECK(names_of(seq.named_parameters()) == std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias"});
  auto x = randn<float>({4, 5}, gen);
  auto l0 = std::dynamic_pointer_cast<Linear>(seq[0]);
  auto l2 = std::dynamic_pointer_cast<Linear>(seq[2]);
  REQUIRE(l0);
  REQUIRE(l2);
  auto expected = linear(gelu(linear(x, l0->weight, l0->bias)), l2->weight, l2->bias);
  require_allclose(seq.forward(x), expected, 0, 0);
  require_allclose(seq(x), expected, 0, 0);
  // The failing module reports the shape it got.
  MAMCLIP_REQUIRE_THROWS_WITH(seq.forward(randn<float>({4, 6}, gen)), shape_error,
                              "Linear(in_features=5, out_features=7): input has shape [4, 6]");
  MAMCLIP_REQUIRE_THROWS_WITH(seq[3], index_error, "Sequential: index 3 is out of range for 3 modules");
  Sequential empty_seq;
  CHECK(empty_seq.forward(x).is_same(x));
  CHECK(seq.repr() ==
        "Sequential(\n  (0): Linear(in_features=5, out_features=7, bias=true)\n  (1): GELU(approximate='none')\n"
        "  (2): Linear(in_features=7, out_features=3, bias=true)\n)");
}

TEST_CASE("a subclass that overrides forward_impl keeps its base's input checks") {
  struct DoubledLinear : Linear {
    using Linear::Linear;
    std::string type_name() const override { return "DoubledLinear"; }

   protected:
    Tensor<float> forward_impl(const Tensor<float>& x) override { return Linear::forward_impl(x) * 2.0; }
  };
  Generator gen(13);
  DoubledLinear m(3, 2, gen);
  auto x = randn<float>({4, 3}, gen);
  require_allclose(m.forward(x), linear(x, m.weight, m.bias) * 2.0, 0, 0);
  MAMCLIP_REQUIRE_THROWS_WITH(m.forward(randn<float>({4, 5}, gen)), shape_error,
                              "Linear(in_features=3, out_features=2): input has shape [4, 5]");
}

TEST_CASE("ModuleList is indexable, typed, and names children by position") {
  Generator gen(12);
  struct Blocks : Module {
    std::shared_ptr<ModuleListOf<Linear>> layers;
    std::shared_ptr<ModuleList> misc;
    explicit Blocks(Generator& gen) {
      layers = register_module("layers", std::make_shared<ModuleListOf<Linear>>());
      for (int i = 0; i < 3; ++i) layers->push_back(std::make_shared<Linear>(2, 2, i != 1, gen));
      misc = register_module("misc", std::make_shared<ModuleList>());
      misc->push_back(std::make_shared<LayerNorm>(2));
      misc->push_back(std::make_shared<ReLU>());
    }
  } b(gen);
  CHECK(names_of(b.named_parameters()) ==
        std::vector<std::string>{"layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.2.weight",
                                 "layers.2.bias", "misc.0.weight", "misc.0.bias"});
  CHECK((*b.layers)[1]->in_features() == 2);
  CHECK_FALSE((*b.layers)[1]->bias.defined());
  CHECK(b.misc->at<LayerNorm>(0)->normalized_shape() == Shape{2});
  MAMCLIP_REQUIRE_THROWS_WITH(b.misc->at<Linear>(1), value_error, "ModuleList: module 1 is a ReLU");
  MAMCLIP_REQUIRE_THROWS_WITH((*b.layers)[5], index_error, "ModuleList: index 5 is out of range for 3 modules");
  int count = 0;
  for (const auto& layer : *b.layers) count += layer->out_features() == 2;
  CHECK(count == 3);
}

}  // namespace test_module
