// The MAM-CLIP fusion transformer against a PyTorch build of the reference's
// module tree (tests/fixtures/clip/fusion.safetensors,
// tools/make_fusion_fixture.py): strict loading of the reference's state-dict
// names, the transformer output, the MLM log-probabilities and every
// gradient; the full-size layout; masks; errors.
#include "support/test_support.hpp"
#include "support/scaled_close.hpp"

#include <cmath>
#include <string>
#include <vector>

#include "mamclip/io/safetensors.hpp"
#include "mamclip/models/clip/fusion.hpp"

namespace test_fusion {
using namespace mamclip;
using namespace mamclip::test;
using namespace mamclip::models::clip;

namespace {

const io::TensorMap& fixture() {
  static const io::TensorMap t = io::load_safetensors(fixture_path("clip/fusion.safetensors"));
  return t;
}
Tensor<float> get(const std::string& name) {
  INFO(name);
  REQUIRE(fixture().count(name) == 1);
  return io::get_as<float>(fixture().at(name), name);
}

FusionConfig small_config() {
  FusionConfig c;
  c.width = 20;
  c.heads = 4;
  c.layers = 2;
  return c;
}

// The fixture's fusion parameters without the "fusion_module." prefix.
nn::StateDict fixture_state() {
  nn::StateDict sd;
  const std::string prefix = "fusion_module.";
  for (const auto& [k, v] : fixture())
    if (k.rfind(prefix, 0) == 0) sd.insert(k.substr(prefix.size()), io::get_as<float>(v, k));
  return sd;
}

}  // namespace

TEST_CASE("FusionTransformer: the reference's state-dict names, order and shapes at MAM-CLIP's size") {
  Generator gen(1);
  FusionTransformer f({}, gen);  // width 768, 8 heads, 1 layer, MLP ratio 4
  const nn::StateDict sd = f.state_dict();
  const std::vector<std::pair<std::string, Shape>> expected = {
      {"resblocks.0.attn.in_proj_weight", {2304, 768}}, {"resblocks.0.attn.in_proj_bias", {2304}},
      {"resblocks.0.attn.out_proj.weight", {768, 768}}, {"resblocks.0.attn.out_proj.bias", {768}},
      {"resblocks.0.ln_1.weight", {768}},               {"resblocks.0.ln_1.bias", {768}},
      {"resblocks.0.mlp.c_fc.weight", {3072, 768}},     {"resblocks.0.mlp.c_fc.bias", {3072}},
      {"resblocks.0.mlp.c_proj.weight", {768, 3072}},   {"resblocks.0.mlp.c_proj.bias", {768}},
      {"resblocks.0.ln_2.weight", {768}},               {"resblocks.0.ln_2.bias", {768}},
  };
  REQUIRE(sd.size() == expected.size());
  size_t i = 0;
  for (const auto& [name, t] : sd) {
    CHECK(name == expected[i].first);
    CHECK(t.shape() == expected[i].second);
    ++i;
  }
  CHECK(f.num_parameters() == 7087872);  // 12 W^2 + 13 W for W = 768
  CHECK(f.named_buffers().empty());
  CHECK(f.repr().find("Transformer(width=768, heads=8, layers=1, mlp_ratio=4") == 0);
}

TEST_CASE("FusionTransformer and the MLM branch match PyTorch: outputs and every gradient") {
  Generator gen(2);
  FusionTransformer f(small_config(), gen);
  f.load_state_dict(fixture_state());  // strict
  f.eval();
  const Tensor<float> text = get("text_hidden").detach().set_requires_grad();
  const Tensor<float> image = get("image_features").detach().set_requires_grad();
  const Tensor<float> special = get("img_special_token").detach().set_requires_grad();
  const Tensor<float> proj = get("mlm_projection").detach().set_requires_grad();

  // The transformer alone, on the reference's input order [text ; special ; image].
  {
    NoGradGuard ng;
    const Tensor<float> x = fusion_input(text, special, image);
    CHECK(x.shape() == Shape{7, 2, 20});
    require_close_rel(f(x), get("fusion_out"), 1e-5, "fusion output");
  }
  const Tensor<float> fused = fuse_text_image(f, text, special, image);
  CHECK(fused.shape() == Shape{2, 5, 20});
  const Tensor<float> logp = mlm_log_probs(fused, proj);
  require_close_rel(logp, get("log_probs"), 1e-5, "MLM log-probabilities");
  sum(mul(logp, get("grad_log_probs"))).backward();
  require_close_rel(text.grad(), get("grad.text_hidden"), 1e-4, "grad text_hidden");
  require_close_rel(image.grad(), get("grad.image_features"), 1e-4, "grad image_features");
  require_close_rel(special.grad(), get("grad.img_special_token"), 1e-4, "grad img_special_token");
  require_close_rel(proj.grad(), get("grad.mlm_projection"), 1e-4, "grad mlm_projection");
  int checked = 0;
  for (const auto& [name, p] : f.named_parameters()) {
    require_close_rel(p.grad(), get("grad.fusion_module." + name), 1e-4, "grad " + name);
    ++checked;
  }
  CHECK(checked == 24);
}

TEST_CASE("FusionTransformer: a key_padding_mask keeps padded positions from reaching the others") {
  Generator gen(3);
  FusionTransformer f(small_config(), gen);
  const Tensor<float> text = uniform_random<float>({2, 5, 20}, 1, -1, 1);
  const Tensor<float> image = uniform_random<float>({2, 20}, 2, -1, 1), special = uniform_random<float>({1, 1, 20}, 3, -1, 1);
  Tensor<float> changed = text.clone();
  changed.narrow(1, 3, 2).copy_(uniform_random<float>({2, 2, 20}, 4, -5, 5));  // text positions 3 and 4
  FusionMasks masks;
  std::vector<bool> pad(14, false);
  pad[3] = pad[4] = pad[7 + 3] = pad[7 + 4] = true;
  masks.key_padding_mask = from_vector<bool>(pad, {2, 7});
  const Tensor<float> a = fuse_text_image(f, text, special, image, masks), b = fuse_text_image(f, changed, special, image, masks);
  require_allclose(a.narrow(1, 0, 3), b.narrow(1, 0, 3), 1e-6, 1e-6, "unpadded positions");
  // Without the mask (the reference), padding is attended to.
  const Tensor<float> c = fuse_text_image(f, text, special, image), d = fuse_text_image(f, changed, special, image);
  CHECK(max_abs(sub(c.narrow(1, 0, 3), d.narrow(1, 0, 3))) > 1e-3);
}

TEST_CASE("FusionTransformer: configuration and shape errors") {
  FusionConfig bad;
  bad.width = 30;
  bad.heads = 8;
  MAMCLIP_REQUIRE_THROWS_WITH(FusionTransformer{bad}, value_error, "FusionConfig: width 30 must be divisible by heads 8");
  FusionConfig zero;
  zero.layers = 0;
  MAMCLIP_REQUIRE_THROWS_WITH(FusionTransformer{zero}, value_error, "width, heads and layers must be positive");
  FusionTransformer f(small_config());
  MAMCLIP_REQUIRE_THROWS_WITH(f(zeros<float>({7, 2, 16})), shape_error,
                              "ResidualAttentionBlock(width=20): input has shape [7, 2, 16]; expected [L, N, 20] "
                              "(sequence-first)");
  const Tensor<float> text = zeros<float>({2, 5, 20});
  MAMCLIP_REQUIRE_THROWS_WITH(fusion_input(text, zeros<float>({1, 20}), zeros<float>({2, 20})), shape_error,
                              "fusion_input: img_special_token has shape [1, 20]; expected [1, 1, 20]");
  MAMCLIP_REQUIRE_THROWS_WITH(fusion_input(text, zeros<float>({1, 1, 20}), zeros<float>({3, 20})), shape_error,
                              "fusion_input: image_features has shape [3, 20]; expected [N, W] = [2, 20]");
  MAMCLIP_REQUIRE_THROWS_WITH(mlm_log_probs(text, zeros<float>({16, 11})), shape_error,
                              "mlm_log_probs: x has shape [2, 5, 20] and mlm_projection has shape [16, 11]");
}

}  // namespace test_fusion
