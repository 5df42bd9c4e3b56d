// ConvNeXt against timm 1.0.31 (tests/fixtures/convnext, made by
// tools/make_convnext_fixture.py): a reduced-width timm ConvNeXt (outputs and
// every gradient), one block at ConvNeXt-T/S width, the full-size state-dict
// layouts and drop-path rates, the checkpoint layouts (timm, FAIR, MAM-CLIP
// Lightning and fine-tuned), strict-loading errors, gradient checkpointing
// with stochastic depth, classifier replacement and timm's init.
#include <cmath>
#include <cstdio>
#include <set>

#include "mamclip/models/convnext.hpp"
#include "support/files.hpp"
#include "support/scaled_close.hpp"
#include "support/test_support.hpp"

namespace test_convnext {
using namespace mamclip;
using namespace mamclip::test;
using namespace mamclip::models;

namespace {

const std::string kSmall = fixture_path("convnext/small.safetensors");

struct Expected {
  io::TensorMap t;
  explicit Expected(const std::string& file) : t(io::load_safetensors(fixture_path(file))) {}
  Tensor<float> f(const std::string& name) const {
    INFO("fixture tensor " << name);
    REQUIRE(t.count(name) == 1);
    return io::get_as<float>(t.at(name), name);
  }
};

const Expected& expected() {
  static const Expected e("convnext/expected.safetensors");
  return e;
}

const nlohmann::json& layouts() {
  static const nlohmann::json j = load_json(fixture_path("convnext/layouts.json"));
  return j;
}

// The reduced-width model of the fixture.
ConvNeXtConfig small_config(int64_t num_classes = 10) {
  ConvNeXtConfig c;
  c.depths = {1, 1, 2, 1};
  c.dims = {8, 12, 16, 20};
  c.num_classes = num_classes;
  return c;
}

// max |a - b| / max |b|: the error relative to the reference's scale (infinite for a NaN).
double rel_err(const Tensor<float>& a, const Tensor<float>& b) {
  REQUIRE(a.shape() == b.shape());
  const Tensor<float> d = a - b;
  if (std::isnan(sum(d).item())) return INFINITY;
  const double scale = max_abs(b);
  return scale > 0 ? max_abs(d) / scale : max_abs(d);
}

void require_rel(const Tensor<float>& a, const Tensor<float>& b, double tol, const std::string& what) {
  const double e = rel_err(a, b);
  INFO(what << ": max relative error " << e << " (limit " << tol << ")");
  CHECK(e <= tol);
}

void check_logits(ConvNeXt& model, const std::string& what) {
  const Expected& e = expected();
  NoGradGuard no_grad;
  require_rel(model.forward(e.f("x")), e.f("logits"), 1e-5, what + " logits");
}

std::string what_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& ex) {
    return ex.what();
  }
  return "";
}

}  // namespace

TEST_CASE("ConvNeXt matches timm on a reduced-width model: features, logits and every gradient") {
  const Expected& e = expected();
  LoadedConvNeXt loaded = load_convnext(kSmall, small_config());
  CHECK(loaded.layout == ConvNeXtLayout::timm);
  CHECK(loaded.extra_heads.empty());
  ConvNeXt& model = *loaded.model;
  CHECK_FALSE(model.is_training());

  std::set<std::string> names, ref;
  for (const auto& [name, p] : model.named_parameters()) names.insert(name);
  for (const auto& [k, v] : e.t)
    if (k.rfind("grad.", 0) == 0 && k != "grad_input") ref.insert(k.substr(5));
  CHECK(names == ref);
  CHECK(names.count("stages.2.blocks.1.mlp.fc2.weight") == 1);
  CHECK(names.count("stages.0.downsample.0.weight") == 0);  // stage 0 keeps the stem's resolution

  Tensor<float> x = e.f("x").clone();
  x.set_requires_grad(true);
  const Tensor<float> map = model.forward_features(x);
  const Tensor<float> pooled = model.forward_head(map, /*pre_logits=*/true);
  const Tensor<float> logits = model.forward_head(map);
  const double err_map = rel_err(map, e.f("feature_map")), err_pooled = rel_err(pooled, e.f("pooled")),
               err_logits = rel_err(logits, e.f("logits"));
  CHECK(err_map <= 1e-5);
  CHECK(err_pooled <= 1e-5);
  CHECK(err_logits <= 1e-5);
  Tensor<float> loss = sum(logits * e.f("w_logits")) + sum(pooled * e.f("w_pooled"));
  // The loss sums terms of both signs: its error is relative to the sum of their magnitudes.
  const double scale = sum(abs(logits * e.f("w_logits"))).item() + sum(abs(pooled * e.f("w_pooled"))).item();
  CHECK(std::abs(loss.item() - e.f("loss").item()) <= 1e-5 * scale);
  loss.backward();
  double worst = rel_err(x.grad(), e.f("grad_input"));
  INFO("grad of the input: " << worst);
  CHECK(worst <= 1e-4);
  std::string worst_name = "input";
  for (const auto& [name, p] : model.named_parameters()) {
    REQUIRE(p.grad().defined());
    const double err = rel_err(p.grad(), e.f("grad." + name));
    INFO("grad of " << name << ": max relative error " << err);
    CHECK(err <= 1e-4);
    if (err > worst) worst = err, worst_name = name;
  }
  std::printf("ConvNeXt vs timm: feature map %.2e, pooled %.2e, logits %.2e, worst gradient %.2e (%s)\n", err_map,
              err_pooled, err_logits, worst, worst_name.c_str());

  // forward and forward_with_features agree with the pieces.
  NoGradGuard no_grad;
  const ConvNeXtOutput both = model.forward_with_features(e.f("x"));
  require_rel(both.pooled, e.f("pooled"), 1e-5, "forward_with_features pooled");
  require_rel(both.output, e.f("logits"), 1e-5, "forward_with_features output");
  require_rel(model.forward(e.f("x")), e.f("logits"), 1e-5, "forward");
}

TEST_CASE("ConvNeXt block at ConvNeXt-T/S width (dim 96) matches timm's ConvNeXtBlock") {
  const Expected b("convnext/block96.safetensors");
  ConvNeXtBlock block(ConvNeXtConfig::convnext_small(), 0, 0.0);
  nn::StateDict sd;
  for (const auto& [k, v] : b.t) {
    const std::string prefix = "stages.0.blocks.0.";
    if (k.rfind(prefix, 0) == 0) sd.insert(k.substr(prefix.size()), io::get_as<bfloat16>(v, k).to<float>());
  }
  block.load_state_dict(sd);  // strict: every name of timm's block, nothing else
  block.eval();
  Tensor<float> x = b.f("x").clone();
  x.set_requires_grad(true);
  Generator gen(1);
  const Tensor<float> y = block.forward(x, gen);
  require_rel(y, b.f("y"), 1e-5, "block output");
  sum(y * b.f("w")).backward();
  require_rel(x.grad(), b.f("grad_x"), 1e-4, "grad of the input");
  for (const auto& [name, p] : block.named_parameters()) {
    if (name == "mlp.fc1.weight" || name == "mlp.fc2.weight") {
      require_rel(sum(p.grad(), {1}), b.f("grad." + name + ".row_sum"), 1e-4, name + " row sums");
      require_rel(sum(p.grad(), {0}), b.f("grad." + name + ".col_sum"), 1e-4, name + " column sums");
    } else {
      require_rel(p.grad(), b.f("grad." + name), 1e-4, "grad of " + name);
    }
  }
}

TEST_CASE("ConvNeXt-T and ConvNeXt-S state dicts have timm's names, order and shapes") {
  for (const auto& [key, config] :
       {std::pair<std::string, ConvNeXtConfig>{"convnext_tiny", ConvNeXtConfig::convnext_tiny()},
        {"convnext_small@768", ConvNeXtConfig::by_name("convnext_small", 768)}}) {
    INFO(key);
    ConvNeXt model(config, ConvNeXtSkipInit{});
    const nn::StateDict sd = model.state_dict();
    const auto& ref = layouts().at(key);
    REQUIRE(sd.size() == ref.size());
    size_t i = 0;
    for (const auto& [name, t] : sd) {
      INFO("entry " << i);
      CHECK(name == ref[i][0].get<std::string>());
      CHECK(t.shape() == ref[i][1].get<Shape>());
      ++i;
    }
  }
  // The inference of the architecture from names and shapes.
  ConvNeXt small(ConvNeXtConfig::convnext_small(768), ConvNeXtSkipInit{});
  const ConvNeXtConfig seen = infer_convnext_config(small.state_dict(), "convnext_small");
  CHECK(seen.depths == std::vector<int64_t>{3, 3, 27, 3});
  CHECK(seen.dims == std::vector<int64_t>{96, 192, 384, 768});
  CHECK(seen.num_classes == 768);
  CHECK(seen.kernel_size == 7);
  CHECK(seen.patch_size == 4);
  CHECK(seen.mlp_ratio == 4.0);
}

TEST_CASE("ConvNeXt drop-path rates are timm's, float32 rounding included") {
  const auto& rates = layouts().at("drop_path_rates");
  for (const auto& [key, name, rate] :
       {std::tuple<std::string, std::string, double>{"convnext_tiny@0.1", "convnext_tiny", 0.1},
        {"convnext_small@0.4", "convnext_small", 0.4}}) {
    INFO(key);
    ConvNeXtConfig c = ConvNeXtConfig::by_name(name);
    c.drop_path_rate = rate;
    std::vector<double> flat;
    for (const auto& stage : c.drop_path_rates()) flat.insert(flat.end(), stage.begin(), stage.end());
    const auto ref = rates.at(key).get<std::vector<double>>();
    REQUIRE(flat.size() == ref.size());
    for (size_t i = 0; i < ref.size(); ++i) {
      INFO("block " << i);
      CHECK(flat[i] == ref[i]);  // exactly: the same float32 values
    }
  }
  // The blocks get them in order.
  ConvNeXtConfig c = small_config();
  c.drop_path_rate = 0.3;
  ConvNeXt model(c, ConvNeXtSkipInit{});
  std::vector<double> got;
  for (const auto& s : *model.stages)
    for (const auto& b : *s->blocks) got.push_back(b->drop_path_prob());
  std::vector<double> want;
  for (const auto& stage : c.drop_path_rates()) want.insert(want.end(), stage.begin(), stage.end());
  CHECK(got == want);
  CHECK(got.front() == 0.0);
  CHECK(got.back() == static_cast<double>(0.3f));
}

TEST_CASE("ConvNeXt checkpoints in FAIR, MAM-CLIP Lightning and fine-tuned layouts load by detection") {
  const Expected& e = expected();
  {
    LoadedConvNeXt l = load_convnext(fixture_path("convnext/small_fair.pth"), small_config());
    CHECK(l.layout == ConvNeXtLayout::fair);
    check_logits(*l.model, "FAIR .pth");
  }
  {
    LoadedConvNeXt l = load_convnext(fixture_path("convnext/small_lightning.ckpt"), small_config());
    CHECK(l.layout == ConvNeXtLayout::lightning);
    CHECK(l.extra_heads.empty());
    check_logits(*l.model, "Lightning .ckpt");
  }
  {
    ConvNeXtLoadOptions opt;
    opt.num_classes_from_checkpoint = true;
    LoadedConvNeXt l = load_convnext(fixture_path("convnext/small_ftune.pth"), small_config(3), opt);
    CHECK(l.layout == ConvNeXtLayout::finetune);
    CHECK(l.model->num_classes() == 10);
    CHECK(l.extra_heads.keys() == std::vector<std::string>{"birads_layer.0.bias", "birads_layer.0.weight",
                                                           "density_layer.0.bias", "density_layer.0.weight"});
    check_logits(*l.model, "fine-tuned .pth (bfloat16)");
    NoGradGuard no_grad;
    const Tensor<float> logits = l.model->forward(e.f("x"));
    require_rel(linear_head(l.extra_heads, "birads_layer.0.")->forward(logits), e.f("birads"), 1e-5, "birads head");
    require_rel(linear_head(l.extra_heads, "density_layer.0.")->forward(logits), e.f("density"), 1e-5, "density head");
    MAMCLIP_REQUIRE_THROWS_WITH(linear_head(l.extra_heads, "other_layer.0."), value_error,
                                "linear_head: no 2-D tensor 'other_layer.0.weight' (4 extra tensors)");
  }
  // Forcing a layout skips detection: the FAIR file read as timm names misses every key.
  ConvNeXtLoadOptions forced;
  forced.layout = ConvNeXtLayout::timm;
  const std::string msg =
      what_of([&] { load_convnext(fixture_path("convnext/small_fair.pth"), small_config(), forced); });
  CHECK_THAT(msg, Catch::Matchers::Contains("small_fair.pth (timm layout): load_state_dict"));
  CHECK_THAT(msg, Catch::Matchers::Contains("'stem.0.weight'"));
  CHECK_THAT(msg, Catch::Matchers::Contains("'downsample_layers.0.0.weight'"));
  REQUIRE_THROWS_AS(load_convnext(fixture_path("convnext/small_fair.pth"), small_config(), forced),
                    nn::state_dict_error);
  CHECK(parse_convnext_layout("lightning") == ConvNeXtLayout::lightning);
  MAMCLIP_REQUIRE_THROWS_WITH(parse_convnext_layout("keras"), value_error,
                              "unknown checkpoint layout \"keras\"; known: automatic, timm, fair, lightning, finetune");
}

TEST_CASE("ConvNeXt FAIR key mapping follows timm's checkpoint_filter_fn") {
  CHECK(fair_to_timm_key("downsample_layers.0.0.weight") == "stem.0.weight");
  CHECK(fair_to_timm_key("downsample_layers.0.1.bias") == "stem.1.bias");
  CHECK(fair_to_timm_key("downsample_layers.3.1.weight") == "stages.3.downsample.1.weight");
  CHECK(fair_to_timm_key("stages.2.26.dwconv.weight") == "stages.2.blocks.26.conv_dw.weight");
  CHECK(fair_to_timm_key("stages.1.0.pwconv2.bias") == "stages.1.blocks.0.mlp.fc2.bias");
  CHECK(fair_to_timm_key("stages.0.2.gamma") == "stages.0.blocks.2.gamma");
  CHECK(fair_to_timm_key("stages.0.2.norm.weight") == "stages.0.blocks.2.norm.weight");
  CHECK(fair_to_timm_key("norm.weight") == "head.norm.weight");
  CHECK(fair_to_timm_key("head.bias") == "head.fc.bias");
  CHECK_FALSE(fair_to_timm_key("stages.x.0.gamma").has_value());
  CHECK_FALSE(fair_to_timm_key("stem.0.weight").has_value());
}

TEST_CASE("ConvNeXt strict loading: errors name the key, file, shapes and the checkpoint's architecture") {
  files::TempDir dir("convnext");
  // Shapes: a 10-class checkpoint into a 7-class model.
  const std::string msg = what_of([] { load_convnext(kSmall, small_config(7)); });
  CHECK_THAT(msg, Catch::Matchers::Contains(kSmall + " (timm layout): "));
  CHECK_THAT(msg, Catch::Matchers::Contains("'head.fc.weight': checkpoint has [10, 20], the module has [7, 20]"));
  CHECK_THAT(msg, Catch::Matchers::Contains(
                      "the checkpoint's shapes say depths (1, 1, 2, 1), dims (8, 12, 16, 20), num_classes 10; the "
                      "model has depths (1, 1, 2, 1), dims (8, 12, 16, 20), num_classes 7"));
  // The wrong architecture: a reduced model into ConvNeXt-T.
  MAMCLIP_REQUIRE_THROWS_WITH(load_convnext(kSmall, ConvNeXtConfig::convnext_tiny(10)), nn::state_dict_error,
                              "the checkpoint's shapes say depths (1, 1, 2, 1), dims (8, 12, 16, 20)");

  // A missing and an unexpected key.
  io::TensorMap t = io::load_safetensors(kSmall);
  t.erase("stages.2.blocks.1.gamma");
  t.emplace("stages.2.blocks.1.gamma_typo", io::AnyStoredTensor(zeros<float>({16})));
  io::save_safetensors(dir.file("broken.safetensors"), t);
  try {
    load_convnext(dir.file("broken.safetensors"), small_config());
    FAIL("expected a state_dict_error");
  } catch (const nn::state_dict_error& err) {
    CHECK(err.missing_keys == std::vector<std::string>{"stages.2.blocks.1.gamma"});
    CHECK(err.unexpected_keys == std::vector<std::string>{"stages.2.blocks.1.gamma_typo"});
    CHECK_THAT(std::string(err.what()), Catch::Matchers::Contains("broken.safetensors"));
  }
  // Non-strict: loads the rest and keeps the missing parameter as built.
  ConvNeXtLoadOptions lax;
  lax.strict = false;
  CHECK_NOTHROW(load_convnext(dir.file("broken.safetensors"), small_config(), lax));

  // Integer tensors are not weights.
  io::TensorMap ints = io::load_safetensors(kSmall);
  ints["stem.0.bias"] = io::AnyStoredTensor(zeros<int64_t>({8}));
  io::save_safetensors(dir.file("ints.safetensors"), ints);
  MAMCLIP_REQUIRE_THROWS_WITH(load_convnext(dir.file("ints.safetensors"), small_config()), dtype_error,
                              "tensor 'stem.0.bias' holds int64 data; expected floating-point weights");

  // Not a ConvNeXt at all.
  io::TensorMap other;
  other.emplace("encoder.layer.0.weight", io::AnyStoredTensor(zeros<float>({2, 2})));
  io::save_safetensors(dir.file("bert.safetensors"), other);
  MAMCLIP_REQUIRE_THROWS_WITH(load_convnext(dir.file("bert.safetensors"), small_config()), value_error,
                              "not a ConvNeXt checkpoint of a known layout (1 tensors, e.g. 'encoder.layer.0.weight')");
}

TEST_CASE("ConvNeXt gradient checkpointing gives the same outputs, gradients and drop-path masks") {
  ConvNeXtConfig c = small_config();
  c.drop_path_rate = 0.5;  // high, so that with batch 6 some samples are dropped in some blocks
  Generator gx(2);
  const Tensor<float> x = randn<float>({6, 3, 40, 36}, gx);
  auto run = [&](bool checkpointing, std::vector<std::vector<float>>& grads, uint64_t& offset_after) {
    Generator init(7);
    auto gen = std::make_shared<Generator>(11);
    ConvNeXt model(c, init);
    model.set_generator(gen);
    model.train();
    model.set_grad_checkpointing(checkpointing);
    Tensor<float> out = model.forward(x);
    sum(out * out).backward();
    for (const auto& [name, p] : model.named_parameters()) grads.push_back(p.grad().to_vector());
    offset_after = gen->offset();
    return out.to_vector();
  };
  std::vector<std::vector<float>> g_plain, g_ckpt;
  uint64_t off_plain = 0, off_ckpt = 0;
  const auto y_plain = run(false, g_plain, off_plain);
  const auto y_ckpt = run(true, g_ckpt, off_ckpt);
  CHECK(y_plain == y_ckpt);
  REQUIRE(g_plain.size() == g_ckpt.size());
  for (size_t i = 0; i < g_plain.size(); ++i) {
    INFO("parameter " << i);
    CHECK(g_plain[i] == g_ckpt[i]);
  }
  // The recomputation replays masks from a copy: the generator advanced as in the plain run.
  CHECK(off_plain == off_ckpt);
  CHECK(off_plain > 0);

  // Training mode did drop paths: the eval output differs.
  Generator init(7);
  ConvNeXt model(c, init);
  model.eval();
  NoGradGuard no_grad;
  CHECK(model.forward(x).to_vector() != y_plain);
}

TEST_CASE("ConvNeXt with_classifier replaces head.fc and shares the trunk") {
  LoadedConvNeXt loaded = load_convnext(kSmall, small_config());
  Generator gen(3);
  auto emb = loaded.model->with_classifier(5, gen);
  CHECK(emb->num_classes() == 5);
  CHECK_FALSE(emb->is_training());
  const nn::StateDict sd = emb->state_dict();
  CHECK(sd.at("head.fc.weight").shape() == Shape{5, 20});
  // PyTorch's default Linear init: U(-1/sqrt(20), 1/sqrt(20)).
  CHECK(amax(abs(sd.at("head.fc.weight"))).item() <= 1.0 / std::sqrt(20.0));
  NoGradGuard no_grad;
  const Tensor<float> x = expected().f("x");
  const ConvNeXtOutput a = loaded.model->forward_with_features(x), b = emb->forward_with_features(x);
  CHECK(a.pooled.to_vector() == b.pooled.to_vector());
  CHECK(b.output.shape() == Shape{2, 5});

  // The same parameters, not copies.
  Tensor<float> w = loaded.model->state_dict().at("stem.0.bias");
  w.copy_(w + 1.0);
  CHECK(emb->state_dict().at("stem.0.bias").to_vector() == w.to_vector());

  // No classifier: forward gives the pooled features, and head.fc is gone from the state dict.
  auto bare = loaded.model->with_classifier(0);
  CHECK_FALSE(bare->state_dict().contains("head.fc.weight"));
  CHECK(bare->state_dict().size() + 2 == loaded.model->state_dict().size());
  CHECK(bare->forward(x).to_vector() == bare->forward_head(bare->forward_features(x), true).to_vector());
  MAMCLIP_REQUIRE_THROWS_WITH(
      loaded.model->with_classifier(-1), value_error,
      "ConvNeXt.with_classifier: num_classes is -1; expected 0 (no classifier) or a positive integer");
}

TEST_CASE("ConvNeXt initialisation follows timm's _init_weights") {
  ConvNeXtConfig c = small_config(40);
  c.head_init_scale = 0.5;
  c.ls_init_value = 0.25;
  Generator gen(5);
  ConvNeXt model(c, gen);
  auto std_of = [](const Tensor<float>& t) {
    const auto v = t.to_vector();
    double s = 0;
    for (float a : v) s += static_cast<double>(a) * a;
    return std::sqrt(s / static_cast<double>(v.size()));
  };
  const nn::StateDict sd = model.state_dict();
  CHECK(std_of(sd.at("stages.3.blocks.0.mlp.fc1.weight")) == Approx(0.02).epsilon(0.05));  // 1600 values
  CHECK(std_of(sd.at("stages.2.blocks.1.mlp.fc2.weight")) == Approx(0.02).epsilon(0.05));
  CHECK(std_of(sd.at("stages.3.blocks.0.conv_dw.weight")) == Approx(0.02).epsilon(0.1));  // 980 values
  CHECK(std_of(sd.at("head.fc.weight")) == Approx(0.01).epsilon(0.1));                    // 0.02 * head_init_scale
  for (const auto& [name, t] : sd) {
    INFO(name);
    const auto v = t.to_vector();
    const std::string leaf = name.substr(name.rfind('.') + 1);
    if (leaf == "bias" && name.find("norm") == std::string::npos && name.find("downsample.0") == std::string::npos &&
        name != "stem.1.bias")
      CHECK(*std::max_element(v.begin(), v.end()) == 0.0f);
    if (leaf == "gamma") CHECK(v == std::vector<float>(v.size(), 0.25f));
    if (leaf == "weight" && t.dim() == 1) CHECK(v == std::vector<float>(v.size(), 1.0f));  // LayerNorms
  }
}

TEST_CASE("ConvNeXt input and config errors") {
  ConvNeXt model(small_config(), ConvNeXtSkipInit{});
  MAMCLIP_REQUIRE_THROWS_WITH(model.forward(zeros<float>({1, 1, 64, 64})), shape_error,
                              "ConvNeXt.forward_features: input has shape [1, 1, 64, 64]; expected [N, 3, H, W] with N "
                              ">= 1 and H, W >= 32");
  MAMCLIP_REQUIRE_THROWS_WITH(model.forward(zeros<float>({1, 3, 31, 64})), shape_error, "[1, 3, 31, 64]");
  MAMCLIP_REQUIRE_THROWS_WITH(model.forward_head(zeros<float>({1, 16, 2, 2})), shape_error,
                              "ConvNeXt.forward_head: input has shape [1, 16, 2, 2]; expected [N, 20, h, w]");
  {
    NoGradGuard no_grad;
    CHECK(model.forward(zeros<float>({1, 3, 32, 33})).shape() == Shape{1, 10});  // the smallest input
  }
  ConvNeXtConfig c = small_config();
  c.depths = {1, 1, 2};
  MAMCLIP_REQUIRE_THROWS_WITH(c.validate(), value_error, "ConvNeXtConfig: depths has 3 and dims has 4 entries");
  c = small_config();
  c.drop_path_rate = 1.0;
  MAMCLIP_REQUIRE_THROWS_WITH(ConvNeXt(c, ConvNeXtSkipInit{}), value_error,
                              "ConvNeXtConfig: drop_path_rate is 1; expected a probability in [0, 1)");
  c = small_config();
  c.kernel_size = 4;
  MAMCLIP_REQUIRE_THROWS_WITH(c.validate(), value_error, "kernel_size is 4; expected a positive odd integer");
  MAMCLIP_REQUIRE_THROWS_WITH(ConvNeXtConfig::by_name("convnext_base"), value_error,
                              "unknown architecture \"convnext_base\"; known: \"convnext_tiny\", \"convnext_small\"");
}

}  // namespace test_convnext
