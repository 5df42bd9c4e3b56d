// The MAM-CLIP VLModel, its loss and the fine-tuned classifier against a
// PyTorch build of the reference's module tree (tools/make_vlmodel_fixture.py,
// tests/fixtures/vlmodel/): state-dict names and order, strict loading of a
// Lightning .ckpt, the losses and every parameter gradient, 20 AdamW steps,
// the safetensors round trip, the classifier's .pth and init_from_vlmodel.
#include "support/test_support.hpp"
#include "support/files.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "mamclip/io/safetensors.hpp"
#include "mamclip/models/clip.hpp"
#include "mamclip/optim/adamw.hpp"

namespace test_vlmodel {
using namespace mamclip;
using namespace mamclip::test;
using namespace mamclip::models::clip;

namespace {

namespace fs = std::filesystem;

// The fixture's model: tiny BERT and ConvNeXt, as tools/make_vlmodel_fixture.py builds them.
VLModelConfig tiny_config() {
  VLModelConfig c;
  c.vision.depths = {1, 1, 2, 1};
  c.vision.dims = {8, 12, 16, 24};
  c.text.vocab_size = 100;
  c.text.hidden_size = 24;
  c.text.num_hidden_layers = 2;
  c.text.num_attention_heads = 4;
  c.text.intermediate_size = 48;
  c.text.max_position_embeddings = 40;
  c.text.hidden_dropout_prob = 0.0;  // the fixture's dropout is off by configuration
  c.text.attention_probs_dropout_prob = 0.0;
  c.embed_dim = 24;
  c.context_length = 12;
  c.mlm_vocab_size = 120;
  c.fusion_heads = 4;
  return c;
}

std::string vl_path(const std::string& name) { return fixture_path("vlmodel/" + name); }

const io::SafetensorsFile& reference() {
  static const io::SafetensorsFile f(vl_path("reference.safetensors"));
  return f;
}
template <class T = float>
Tensor<T> fixture_tensor(const std::string& name) {
  INFO(name);
  return reference().get<T>(name);
}
std::vector<std::string> json_list(const io::SafetensorsFile& f, const std::string& key) {
  return nlohmann::json::parse(f.metadata().at(key)).get<std::vector<std::string>>();
}

// max|a - b| / max|b|: the error relative to the tensor's scale.
double rel_err(const Tensor<float>& a, const Tensor<float>& b) {
  REQUIRE(a.shape() == b.shape());
  const auto x = a.to_vector(), y = b.to_vector();
  double diff = 0, scale = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(x[i]) - y[i]));
    scale = std::max(scale, std::abs(static_cast<double>(y[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

std::shared_ptr<VLModel> loaded_model() {
  auto model = std::make_shared<VLModel>(tiny_config(), VLModelSkipInit{});
  load_vlmodel_weights(*model, vl_path("vlmodel.ckpt"));
  model->train();
  return model;
}

struct Batch {
  Tensor<float> images;
  Tensor<int64_t> input_ids, labels;
};
Batch batch(int b) {
  const std::string k = std::to_string(b);
  return {fixture_tensor("images." + k), fixture_tensor<int64_t>("input_ids." + k), fixture_tensor<int64_t>("labels." + k)};
}

}  // namespace

TEST_CASE("VLModel: the reference's state-dict keys, order and shapes") {
  Generator gen(3);
  const VLModelConfig c = tiny_config();
  VLModel model(c, gen);
  const nn::StateDict sd = model.state_dict();
  CHECK(sd.keys() == json_list(reference(), "keys"));  // names and order of the PyTorch build
  CHECK(sd.at("positional_embedding").shape() == Shape{12, 24});
  CHECK(sd.at("text_projection").shape() == Shape{24, 24});
  CHECK(sd.at("mlm_projection").shape() == Shape{24, 120});
  CHECK(sd.at("logit_scale").shape() == Shape{});
  CHECK(sd.at("logit_scale").item() == Approx(std::log(1.0 / 0.07)));
  CHECK(sd.at("img_special_token").shape() == Shape{1, 1, 24});
  CHECK(max_abs_diff(sd.at("img_special_token"), zeros<float>({1, 1, 24})) == 0.0);
  CHECK(sd.at("vision_encoder.head.fc.weight").shape() == Shape{24, 24});
  CHECK(max_abs_diff(sd.at("ln_final.weight"), ones<float>({24})) == 0.0);
  CHECK(!sd.contains("attn_mask"));

  // The demo size: 5 own tensors, ConvNeXt 4 + 4 * 9 (blocks) + 3 * 4 (downsampling) + 4 (head),
  // BERT 5 + 2 * 16 + 2 (pooler), ln_final 2, fusion 12.
  const nn::StateDict small = VLModel(VLModelConfig::small(), VLModelSkipInit{}).state_dict();
  CHECK(small.size() == 5 + 56 + 39 + 2 + 12);
  CHECK(small.at("mlm_projection").shape() == Shape{64, 30522});
  CHECK(small.at("positional_embedding").shape() == Shape{100, 64});
  CHECK(small.at("text_encoder.embeddings.word_embeddings.weight").shape() == Shape{30522, 64});
  CHECK(small.at("vision_encoder.head.fc.weight").shape() == Shape{64, 128});
  // The paper's sizes (docs/reference_vlmodel.md).
  const VLModelConfig paper = VLModelConfig::mamclip("convnext_tiny");
  CHECK(paper.vision.depths == std::vector<int64_t>{3, 3, 9, 3});
  CHECK((paper.embed_dim == 768 && paper.text.hidden_size == 768 && paper.text.vocab_size == 30522));
  CHECK((paper.mlm_vocab_size == 49408 && paper.context_length == 100 && paper.fusion_heads == 8));
  CHECK((paper.fusion_layers == 1 && paper.cls_token_id == 2 && paper.mlm));
}

TEST_CASE("VLModel: losses, outputs and every parameter gradient against PyTorch") {
  auto model = loaded_model();
  const Batch b = batch(0);
  const VLModelOutput out = model->forward(b.images, b.input_ids);
  const VLLoss loss = vlmodel_loss(out, b.labels);
  double worst_out = 0;
  for (const auto& [name, t] : {std::pair<std::string, Tensor<float>>{"loss.total", loss.total},
                                {"loss.contrastive", loss.contrastive},
                                {"loss.mlm", loss.mlm},
                                {"image_features", out.image_features},
                                {"text_features", out.text_features},
                                {"mlm_log_probs", out.mlm_log_probs}}) {
    INFO(name);
    const double e = rel_err(t, fixture_tensor(name));
    CHECK(e < 1e-4);
    worst_out = std::max(worst_out, e);
  }
  loss.total.backward();
  const std::vector<std::string> no_grad = json_list(reference(), "no_grad");
  double worst_grad = 0;
  size_t with_grad = 0, zero_grads = 0;
  for (const auto& [name, p] : model->named_parameters()) {
    INFO(name);
    const bool none = std::find(no_grad.begin(), no_grad.end(), name) != no_grad.end();
    if (none) {
      // PyTorch leaves these None (unused by forward, or the pooler whose output is dropped).
      CHECK((!p.grad().defined() || max_abs_diff(p.grad(), zeros<float>(p.shape())) == 0.0));
      continue;
    }
    REQUIRE(p.grad().defined());
    const Tensor<float> expected = fixture_tensor("grad." + name);
    ++with_grad;
    if (max_abs_diff(expected, zeros<float>(p.shape())) < 1e-12) {
      // The attention key biases: softmax over keys is shift-invariant, so their gradient is zero
      // and both sides hold rounding noise (float64's near 1e-17, ours near float's epsilon).
      CHECK(max_abs_diff(p.grad(), zeros<float>(p.shape())) < 1e-6);
      ++zero_grads;
      continue;
    }
    const double e = rel_err(p.grad(), expected);
    CHECK(e < 1e-4);
    worst_grad = std::max(worst_grad, e);
  }
  CHECK(with_grad + no_grad.size() == model->named_parameters().size());
  CHECK(no_grad.size() == 5);
  CHECK(zero_grads == 2);  // one key bias per BERT layer
  WARN("max relative error: outputs and losses " << worst_out << ", gradients " << worst_grad << " ("
                                                 << with_grad << " parameters)");
}

TEST_CASE("VLModel: gradient checkpointing gives the same gradients; without MLM the loss is contrastive") {
  const Batch b = batch(0);
  auto plain = loaded_model(), ckpt = loaded_model();
  ckpt->set_grad_checkpointing(true);
  vlmodel_loss(plain->forward(b.images, b.input_ids), b.labels).total.backward();
  vlmodel_loss(ckpt->forward(b.images, b.input_ids), b.labels).total.backward();
  const auto pa = plain->named_parameters(), pb = ckpt->named_parameters();
  REQUIRE(pa.size() == pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    INFO(pa[i].first);
    REQUIRE(pa[i].second.grad().defined() == pb[i].second.grad().defined());
    if (pa[i].second.grad().defined()) CHECK(max_abs_diff(pa[i].second.grad(), pb[i].second.grad()) == 0.0);
  }

  VLModelConfig c = tiny_config();
  c.mlm = false;
  VLModel no_mlm(c, VLModelSkipInit{});
  load_vlmodel_weights(no_mlm, vl_path("vlmodel.ckpt"));  // the MLM parameters exist either way
  const VLModelOutput out = no_mlm.forward(b.images, b.input_ids);
  CHECK(!out.mlm_log_probs.defined());
  const VLLoss loss = vlmodel_loss(out, b.labels);
  CHECK(!loss.mlm.defined());
  CHECK(std::abs(loss.total.item() - fixture_tensor("loss.contrastive").item()) <
        1e-4 * std::abs(fixture_tensor("loss.contrastive").item()));
  loss.total.backward();
  CHECK(!no_mlm.mlm_projection.grad().defined());
  CHECK(no_mlm.logit_scale.grad().defined());
}

TEST_CASE("VLModel: mlm_nll_sum projects only the labelled positions, with the full branch's loss and gradients") {
  const Batch b = batch(0);
  auto full = loaded_model(), picked = loaded_model();
  LossOptions nll;
  nll.reduction = Reduction::sum;
  nll.ignore_index = 0;  // [PAD]
  const VLModelOutput out = full->forward(b.images, b.input_ids);
  const int64_t rows = b.labels.numel(), vocab = out.mlm_log_probs.size(2);
  const Tensor<float> expected = nll_loss(out.mlm_log_probs.reshape({rows, vocab}), b.labels.reshape({rows}), nll);
  int64_t labelled = 0;
  for (int64_t id : b.labels.to_vector()) labelled += id != 0;
  REQUIRE(labelled > 0);
  REQUIRE(labelled < rows);  // some positions are skipped, so the selection matters

  const Tensor<float> img = picked->encode_image(b.images);
  const auto text = picked->encode_text(b.input_ids);
  const Tensor<float> got = picked->mlm_nll_sum(text.hidden, img, b.labels, 0);
  REQUIRE(got.dim() == 0);
  CHECK(std::abs(got.item() - expected.item()) < 1e-5 * std::abs(expected.item()));

  expected.backward();
  got.backward();
  const auto pa = full->named_parameters(), pb = picked->named_parameters();
  size_t compared = 0;
  for (size_t i = 0; i < pa.size(); ++i) {
    INFO(pa[i].first);
    REQUIRE(pa[i].second.grad().defined() == pb[i].second.grad().defined());
    if (!pa[i].second.grad().defined() || max_abs_diff(pa[i].second.grad(), zeros<float>(pa[i].second.shape())) < 1e-12)
      continue;
    if (pa[i].first.find("attention.self.key.bias") != std::string::npos) {
      // Zero in exact arithmetic (softmax over keys is shift-invariant): both sides are rounding noise.
      CHECK(max_abs_diff(pb[i].second.grad(), zeros<float>(pb[i].second.shape())) < 1e-6);
      continue;
    }
    CHECK(rel_err(pb[i].second.grad(), pa[i].second.grad()) < 1e-5);
    ++compared;
  }
  CHECK(compared > 10);  // the MLM projection, the fusion module and the towers below it

  // No labelled position: zero, without a graph.
  const Tensor<float> none = picked->mlm_nll_sum(text.hidden, img, zeros<int64_t>(b.labels.shape()), 0);
  CHECK(none.item() == 0.0f);
  CHECK(!none.requires_grad());
  MAMCLIP_REQUIRE_THROWS_WITH(picked->mlm_nll_sum(text.hidden, img, b.labels.narrow(1, 0, 3), 0), shape_error,
                              "VLModel.mlm_nll_sum: labels has shape [" + std::to_string(b.labels.size(0)) + ", 3]");
}

TEST_CASE("VLModel: 20 AdamW steps follow PyTorch's loss curve") {
  auto model = loaded_model();
  optim::AdamWOptions o;
  o.lr = 1e-3;
  o.weight_decay = 1e-6;
  o.eps = 1e-8;
  optim::AdamW opt(model->parameters(), o);
  const Tensor<float> expected_total = fixture_tensor("adamw.total"), expected_mlm = fixture_tensor("adamw.mlm"),
                      expected_contrastive = fixture_tensor("adamw.contrastive");
  const std::vector<Batch> batches = {batch(0), batch(1), batch(2)};
  double worst = 0;
  for (int step = 0; step <= 20; ++step) {
    INFO("step " << step);
    const Batch& b = batches[static_cast<size_t>(step % 3)];
    opt.zero_grad();
    const VLLoss loss = vlmodel_loss(model->forward(b.images, b.input_ids), b.labels);
    for (const auto& [got, want] : {std::pair<float, float>{loss.total.item(), expected_total.to_vector()[step]},
                                    {loss.contrastive.item(), expected_contrastive.to_vector()[step]},
                                    {loss.mlm.item(), expected_mlm.to_vector()[step]}}) {
      const double e = std::abs(static_cast<double>(got) - want) / std::abs(static_cast<double>(want));
      CHECK(e < 1e-4);
      worst = std::max(worst, e);
    }
    if (step < 20) {
      loss.total.backward();
      opt.step();
    }
  }
  // The curve moved, so the check could fail.
  CHECK(expected_total.to_vector()[20] < 0.8f * expected_total.to_vector()[0]);
  WARN("AdamW loss curve: max relative error " << worst);
}

TEST_CASE("VLModel: strict loading names the missing, unexpected or mis-shaped key") {
  files::TempDir dir("vlmodel");
  const nn::StateDict good = loaded_model()->state_dict();
  auto write = [&](const std::string& file, const std::function<void(io::NamedTensors&)>& edit) {
    io::NamedTensors t;
    for (const auto& [k, v] : good) t.emplace_back("VLModel." + k, v.contiguous());
    edit(t);
    io::save_safetensors(dir.file(file), t);
    return dir / file;
  };
  VLModel model(tiny_config(), VLModelSkipInit{});
  const auto missing = write("missing.safetensors", [](io::NamedTensors& t) {
    t.erase(std::remove_if(t.begin(), t.end(), [](const auto& e) { return e.first == "VLModel.ln_final.bias"; }),
            t.end());
  });
  MAMCLIP_REQUIRE_THROWS_WITH(load_vlmodel_weights(model, missing), nn::state_dict_error, "'ln_final.bias'");
  MAMCLIP_REQUIRE_THROWS_WITH(load_vlmodel_weights(model, missing), nn::state_dict_error, "missing.safetensors");
  const auto unexpected = write("unexpected.safetensors", [](io::NamedTensors& t) {
    t.emplace_back("VLModel.text_encoder.extra.weight", zeros<float>({2}));
  });
  MAMCLIP_REQUIRE_THROWS_WITH(load_vlmodel_weights(model, unexpected), nn::state_dict_error,
                              "unexpected keys (1): 'text_encoder.extra.weight'");
  const auto misshaped = write("shape.safetensors", [](io::NamedTensors& t) {
    for (auto& e : t)
      if (e.first == "VLModel.mlm_projection") e.second = zeros<float>({24, 119});
  });
  MAMCLIP_REQUIRE_THROWS_WITH(load_vlmodel_weights(model, misshaped), nn::state_dict_error,
                              "'mlm_projection': checkpoint has [24, 119], the module has [24, 120]");
  // A failed load leaves the model as it was; the good file (prefixed safetensors) loads.
  CHECK(max_abs_diff(model.state_dict().at("ln_final.weight"), ones<float>({24})) == 0.0);
  load_vlmodel_weights(model, write("good.safetensors", [](io::NamedTensors&) {}));
  CHECK(max_abs_diff(model.state_dict().at("ln_final.weight"), good.at("ln_final.weight")) == 0.0);
  // The [CLS] position must exist once per row.
  Tensor<int64_t> ids = batch(0).input_ids.clone();
  ids.data_ptr()[12] = 7;  // row 1's [CLS]
  MAMCLIP_REQUIRE_THROWS_WITH(model.encode_text(ids), shape_error, "row 1 of input_ids holds cls_token_id 2 0 times");
}

TEST_CASE("VLModel: save_vlmodel_weights -> load round trip, config in the metadata") {
  files::TempDir dir("vlmodel");
  auto model = loaded_model();
  const fs::path path = dir / "model.safetensors";
  save_vlmodel_weights(*model, path);
  const io::TensorMap saved = io::load_state_dict(path.string());
  std::vector<std::string> saved_keys;
  for (const auto& [k, v] : saved) saved_keys.push_back(k);
  std::vector<std::string> keys = model->state_dict().keys();
  std::sort(keys.begin(), keys.end());
  CHECK(saved_keys == keys);  // the reference's names, no prefix, nothing else
  VLModel back(tiny_config(), VLModelSkipInit{});
  load_vlmodel_weights(back, path);
  const nn::StateDict a = model->state_dict(), b = back.state_dict();
  CHECK(a.keys() == b.keys());
  for (const auto& [k, v] : a) {
    INFO(k);
    CHECK(max_abs_diff(v, b.at(k)) == 0.0);
  }
  const std::optional<VLModelConfig> c = read_vlmodel_config(path);
  REQUIRE(c.has_value());
  CHECK(c->to_json() == tiny_config().to_json());
  CHECK(!read_vlmodel_config(vl_path("reference.safetensors")).has_value());
  // The reference's Lightning .ckpt and .pth files hold no config; asking is not an error (the
  // command line asks before it loads the weights of any format).
  CHECK(!read_vlmodel_config(vl_path("vlmodel.ckpt")).has_value());
  CHECK(!read_vlmodel_config(vl_path("classifier.pth")).has_value());
  CHECK(!read_vlmodel_config(dir.path()).has_value());
  MAMCLIP_REQUIRE_THROWS_WITH(read_vlmodel_config(dir / "absent.safetensors"), io_error, "absent.safetensors");
}

TEST_CASE("VLModelConfig: JSON round trip and errors naming the key") {
  for (const VLModelConfig& c : {tiny_config(), VLModelConfig::small(), VLModelConfig::mamclip("convnext_tiny")})
    CHECK(VLModelConfig::from_json(c.to_json()).to_json() == c.to_json());
  CHECK(VLModelConfig::mamclip().vision.depths == std::vector<int64_t>{3, 3, 27, 3});
  nlohmann::json j = tiny_config().to_json();
  j["vision"]["depths"] = "deep";
  MAMCLIP_REQUIRE_THROWS_WITH(VLModelConfig::from_json(j), value_error, "'vision.depths'");
  j = tiny_config().to_json();
  j["fusion_heads"] = 1.5;
  MAMCLIP_REQUIRE_THROWS_WITH(VLModelConfig::from_json(j), value_error, "'fusion_heads' is 1.5; expected an integer");
  j = tiny_config().to_json();
  j["embed_dim"] = 32;
  MAMCLIP_REQUIRE_THROWS_WITH(VLModelConfig::from_json(j), value_error,
                              "embed_dim is 32 and text.hidden_size is 24; expected them equal");
}

TEST_CASE("MamClipClassifier: the released fine-tuned checkpoint's names, logits, init_from_vlmodel") {
  const io::SafetensorsFile fx(vl_path("classifier.safetensors"));
  const models::ConvNeXtConfig vision = tiny_config().vision;
  Generator gen(5);
  MamClipClassifier clf(vision, 24, MamClipClassifier::mamclip_heads(), gen);
  CHECK(clf.state_dict().keys() == json_list(fx, "keys"));
  load_classifier_weights(clf, vl_path("classifier.pth"));
  clf.eval();
  const std::vector<Tensor<float>> logits = clf.forward(fx.get<float>("image"));
  REQUIRE(logits.size() == 2);
  const double e_birads = rel_err(logits[0], fx.get<float>("birads_logits"));
  const double e_density = rel_err(logits[1], fx.get<float>("density_logits"));
  CHECK(e_birads < 1e-4);
  CHECK(e_density < 1e-4);
  WARN("classifier logits: max relative error " << std::max(e_birads, e_density));

  // A checkpoint without a head the model has: strict load names it.
  MamClipClassifier three(vision, 24, {{"birads_layer", 5}, {"density_layer", 4}, {"view_layer", 2}}, gen);
  MAMCLIP_REQUIRE_THROWS_WITH(load_classifier_weights(three, vl_path("classifier.pth")), nn::state_dict_error,
                              "missing keys (2): 'view_layer.0.weight', 'view_layer.0.bias'");
  MamClipClassifier wrong(vision, 24, {{"birads_layer", 3}, {"density_layer", 4}}, gen);
  MAMCLIP_REQUIRE_THROWS_WITH(load_classifier_weights(wrong, vl_path("classifier.pth")), nn::state_dict_error,
                              "'birads_layer.0.weight': checkpoint has [5, 24], the module has [3, 24]");

  // init_from_vlmodel copies the pretrained vision encoder, head.fc included; the heads stay.
  auto vl = loaded_model();
  vl->eval();
  const Tensor<float> birads_w = clf.state_dict().at("birads_layer.0.weight").clone();
  clf.init_from_vlmodel(*vl);
  const nn::StateDict enc = vl->vision_encoder->state_dict(), got = clf.state_dict();
  for (const auto& [k, v] : enc) {
    INFO(k);
    CHECK(max_abs_diff(got.at(k), v) == 0.0);
  }
  CHECK(max_abs_diff(got.at("birads_layer.0.weight"), birads_w) == 0.0);
  const Tensor<float> image = fx.get<float>("image");
  CHECK(max_abs_diff(clf.encoder->forward(image), vl->vision_encoder->forward(image)) == 0.0);
  models::ConvNeXtConfig wider = vision;
  wider.dims.back() = 32;
  MamClipClassifier other(wider, 24, MamClipClassifier::mamclip_heads(), gen);
  MAMCLIP_REQUIRE_THROWS_WITH(other.init_from_vlmodel(*vl), nn::state_dict_error,
                              "'head.fc.weight': checkpoint has [24, 24], the module has [24, 32]");
}

}  // namespace test_vlmodel
