#pragma once
// The MAM-CLIP vision-language model (the reference's `VLModel`,
// train/files/model.py) and its pretraining loss (`lightningModel.loss`).
//
// State dict, in the reference's order (docs/reference_vlmodel.md lists every
// shape and init); W = text.hidden_size = embed_dim:
//
//   positional_embedding   [context_length, W]   normal(0, 0.01)      never used by forward
//   text_projection        [W, embed_dim]        normal(0, W^-0.5)    cls_hidden @ text_projection
//   mlm_projection         [W, mlm_vocab_size]   normal(0, W^-0.5)    log_softmax(x @ mlm_projection)
//   logit_scale            []                    log(1 / 0.07)        exp() multiplies the logits, no clamp
//   img_special_token      [1, 1, embed_dim]     zeros
//   vision_encoder.*       timm ConvNeXt, head.fc = Linear(dims.back(), embed_dim) (PyTorch's default init)
//   text_encoder.*         HF BertModel with its pooler (computed, never used: it gets no gradient)
//   ln_final.{weight,bias} [W]                   ones, zeros          never used by forward
//   fusion_module.*        FusionTransformer(W, fusion_heads, fusion_layers)
//
// The reference's causal `attn_mask` buffer is non-persistent and never used,
// so it is not built. A Lightning checkpoint holds the same keys under
// "VLModel." (load_vlmodel_weights strips it).
//
// Forward: image_features = normalize(vision_encoder(images)); hidden =
// text_encoder(input_ids) with no attention mask (padding is attended, as in
// the reference); text_features = normalize(hidden[i, pos_i] @ text_projection)
// with pos_i the one position of row i holding cls_token_id; MLM:
// log_softmax(fuse_text_image(hidden, img_special_token, image_features) @ mlm_projection)
// over all mlm_vocab_size columns.
//
// defines: VLModelConfig, VLModelOutput, VLModelSkipInit, VLModel, VLLossOptions, VLLoss, vlmodel_loss,
//   vlmodel_state_dict_from, load_vlmodel_weights, save_vlmodel_weights, read_vlmodel_config

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "mamclip/core/factory.hpp"
#include "mamclip/io/checkpoint.hpp"
#include "mamclip/io/safetensors.hpp"
#include "mamclip/models/bert/config.hpp"
#include "mamclip/models/bert/modeling.hpp"
#include "mamclip/models/bert/pretrained.hpp"
#include "mamclip/models/clip/fusion.hpp"
#include "mamclip/models/convnext/config.hpp"
#include "mamclip/models/convnext/modeling.hpp"
#include "mamclip/nn/init.hpp"
#include "mamclip/nn/layer_norm.hpp"
#include "mamclip/nn/module.hpp"
#include "mamclip/ops/indexing/indexing.hpp"
#include "mamclip/ops/loss/clip.hpp"
#include "mamclip/ops/loss/loss.hpp"
#include "mamclip/ops/norm/norm.hpp"

namespace mamclip::models::clip {

struct VLModelConfig {
  // head.fc is always Linear(dims.back(), embed_dim): vision.num_classes is not used.
  ConvNeXtConfig vision = ConvNeXtConfig::convnext_small();
  BertConfig text;                 // PubMedBERT: BERT-base, vocab 30522
  int64_t embed_dim = 768;         // must equal text.hidden_size (the reference's text_model.width) and the fusion width
  int64_t context_length = 100;    // rows of positional_embedding; the tokenizer's max_length
  int64_t mlm_vocab_size = 49408;  // columns of mlm_projection (the reference config's vocab_size)
  int64_t fusion_layers = 1;
  int64_t fusion_heads = 8;
  bool mlm = true;  // the fusion module and mlm_projection run; they exist either way so checkpoints load
  int64_t cls_token_id = 2;  // PubMedBERT's [CLS]

  // The paper's model: timm `vision` ("convnext_tiny" or "convnext_small") + PubMedBERT + one fusion block.
  static VLModelConfig mamclip(const std::string& vision = "convnext_small") {
    VLModelConfig c;
    c.vision = ConvNeXtConfig::by_name(vision);
    return c;
  }

  // A small model with the same structure for demos and tests: ConvNeXt depths (1, 1, 1, 1), dims
  // (16, 32, 64, 128); BERT with 2 layers, hidden 64, 4 heads, FFN 256 and the real vocabulary size
  // (30522, so PubMedBERT's tokenizer fits); embed_dim 64; 4 fusion heads; mlm_vocab_size 30522.
  static VLModelConfig small() {
    VLModelConfig c;
    c.vision.depths = {1, 1, 1, 1};
    c.vision.dims = {16, 32, 64, 128};
    c.text.hidden_size = 64;
    c.text.num_hidden_layers = 2;
    c.text.num_attention_heads = 4;
    c.text.intermediate_size = 256;
    c.embed_dim = 64;
    c.fusion_heads = 4;
    c.mlm_vocab_size = 30522;
    return c;
  }

  FusionConfig fusion() const {
    FusionConfig f;
    f.width = embed_dim;
    f.heads = fusion_heads;
    f.layers = fusion_layers;
    return f;
  }

  // value_error naming the field.
  void validate() const {
    vision.validate("VLModelConfig.vision");
    text.validate("VLModelConfig.text");
    MAMCLIP_CHECK(embed_dim > 0, value_error, "VLModelConfig: embed_dim is ", embed_dim, "; expected a positive integer");
    MAMCLIP_CHECK(embed_dim == text.hidden_size, value_error, "VLModelConfig: embed_dim is ", embed_dim,
                  " and text.hidden_size is ", text.hidden_size,
                  "; expected them equal (the fusion module sees text tokens and the image feature side by side)");
    MAMCLIP_CHECK(context_length > 0 && context_length <= text.max_position_embeddings, value_error,
                  "VLModelConfig: context_length is ", context_length, "; expected 1..text.max_position_embeddings (",
                  text.max_position_embeddings, ")");
    MAMCLIP_CHECK(mlm_vocab_size > 0, value_error, "VLModelConfig: mlm_vocab_size is ", mlm_vocab_size,
                  "; expected a positive integer");
    MAMCLIP_CHECK(cls_token_id >= 0 && cls_token_id < text.vocab_size, value_error, "VLModelConfig: cls_token_id is ",
                  cls_token_id, "; expected an id in [0, text.vocab_size = ", text.vocab_size, ")");
    MAMCLIP_CHECK(fusion_layers > 0 && fusion_heads > 0 && embed_dim % fusion_heads == 0, value_error,
                  "VLModelConfig: fusion_layers is ", fusion_layers, " and fusion_heads is ", fusion_heads,
                  "; expected positive numbers with embed_dim (", embed_dim, ") a multiple of fusion_heads");
  }

  nlohmann::json to_json() const {
    nlohmann::json v;
    v["depths"] = vision.depths;
    v["dims"] = vision.dims;
    v["in_chans"] = vision.in_chans;
    v["kernel_size"] = vision.kernel_size;
    v["patch_size"] = vision.patch_size;
    v["mlp_ratio"] = vision.mlp_ratio;
    v["ls_init_value"] = vision.ls_init_value;
    v["head_init_scale"] = vision.head_init_scale;
    v["drop_path_rate"] = vision.drop_path_rate;
    v["drop_rate"] = vision.drop_rate;
    v["layer_norm_eps"] = vision.layer_norm_eps;
    nlohmann::json j;
    j["vision"] = v;
    j["text"] = text.to_json();
    j["embed_dim"] = embed_dim;
    j["context_length"] = context_length;
    j["mlm_vocab_size"] = mlm_vocab_size;
    j["fusion_layers"] = fusion_layers;
    j["fusion_heads"] = fusion_heads;
    j["mlm"] = mlm;
    j["cls_token_id"] = cls_token_id;
    return j;
  }

  // The inverse of to_json. Absent keys keep the defaults of VLModelConfig{}; a key of the wrong
  // type is a value_error naming it ("VLModelConfig: 'vision.depths' is ...").
  static VLModelConfig from_json(const nlohmann::json& j) {
    MAMCLIP_CHECK(j.is_object(), value_error, "VLModelConfig: expected a JSON object, got a JSON ", j.type_name());
    VLModelConfig c;
    auto bad = [](const std::string& key, const nlohmann::json& v, const char* expected) {
      return value_error(
          mamclip::detail::str_cat("VLModelConfig: '", key, "' is ", v.dump(), "; expected ", expected));
    };
    auto get_int = [&](const nlohmann::json& obj, const char* key, const std::string& path, int64_t& out) {
      auto it = obj.find(key);
      if (it == obj.end()) return;
      if (!it->is_number_integer()) throw bad(path, *it, "an integer");
      out = it->get<int64_t>();
    };
    auto get_double = [&](const nlohmann::json& obj, const char* key, const std::string& path, double& out) {
      auto it = obj.find(key);
      if (it == obj.end()) return;
      if (!it->is_number()) throw bad(path, *it, "a number");
      out = it->get<double>();
    };
    if (auto it = j.find("vision"); it != j.end()) {
      const nlohmann::json& v = *it;
      if (!v.is_object()) throw bad("vision", v, "an object");
      for (const char* key : {"depths", "dims"}) {
        auto a = v.find(key);
        if (a == v.end()) continue;
        const std::string path = std::string("vision.") + key;
        if (!a->is_array()) throw bad(path, *a, "an array of 4 integers");
        std::vector<int64_t> xs;
        for (const auto& e : *a) {
          if (!e.is_number_integer()) throw bad(path, *a, "an array of 4 integers");
          xs.push_back(e.get<int64_t>());
        }
        (std::string(key) == "depths" ? c.vision.depths : c.vision.dims) = xs;
      }
      get_int(v, "in_chans", "vision.in_chans", c.vision.in_chans);
      get_int(v, "kernel_size", "vision.kernel_size", c.vision.kernel_size);
      get_int(v, "patch_size", "vision.patch_size", c.vision.patch_size);
      get_double(v, "mlp_ratio", "vision.mlp_ratio", c.vision.mlp_ratio);
      get_double(v, "ls_init_value", "vision.ls_init_value", c.vision.ls_init_value);
      get_double(v, "head_init_scale", "vision.head_init_scale", c.vision.head_init_scale);
      get_double(v, "drop_path_rate", "vision.drop_path_rate", c.vision.drop_path_rate);
      get_double(v, "drop_rate", "vision.drop_rate", c.vision.drop_rate);
      get_double(v, "layer_norm_eps", "vision.layer_norm_eps", c.vision.layer_norm_eps);
    }
    if (auto it = j.find("text"); it != j.end()) c.text = BertConfig::from_json(*it, "VLModelConfig: 'text'");
    get_int(j, "embed_dim", "embed_dim", c.embed_dim);
    get_int(j, "context_length", "context_length", c.context_length);
    get_int(j, "mlm_vocab_size", "mlm_vocab_size", c.mlm_vocab_size);
    get_int(j, "fusion_layers", "fusion_layers", c.fusion_layers);
    get_int(j, "fusion_heads", "fusion_heads", c.fusion_heads);
    get_int(j, "cls_token_id", "cls_token_id", c.cls_token_id);
    if (auto it = j.find("mlm"); it != j.end()) {
      if (!it->is_boolean()) throw bad("mlm", *it, "true or false");
      c.mlm = it->get<bool>();
    }
    c.validate();
    return c;
  }
};

struct VLModelOutput {
  Tensor<float> image_features;  // [N, E], L2-normalised
  Tensor<float> text_features;   // [N, E], L2-normalised
  Tensor<float> logit_scale;     // the 0-dim parameter (the log of the scale)
  Tensor<float> mlm_log_probs;   // [N, L, mlm_vocab_size]; undefined when !config.mlm
};

// Tag: build the modules without drawing the initial weights (a loader overwrites them all).
struct VLModelSkipInit {};

class VLModel : public nn::Module {
 public:
  explicit VLModel(const VLModelConfig& config, Generator& gen = default_generator())
      : VLModel(config, VLModelSkipInit{}, &gen) {}
  VLModel(const VLModelConfig& config, VLModelSkipInit) : VLModel(config, VLModelSkipInit{}, nullptr) {}
  std::string type_name() const override { return "VLModel"; }

  const VLModelConfig& config() const { return config_; }

  // images [N, 3, H, W] -> normalize(vision_encoder(images)) [N, E].
  Tensor<float> encode_image(const Tensor<float>& images) { return normalize(vision_encoder->forward(images)); }

  struct TextOutput {
    Tensor<float> hidden;    // [N, L, W]: BERT's last_hidden_state
    Tensor<float> features;  // [N, E]: normalize(hidden at the [CLS] position @ text_projection)
  };
  // input_ids int64 [N, L]; each row holds cls_token_id exactly once (the reference's torch.nonzero
  // pairs rows with [CLS] positions in order, so any other count mixes rows up): shape_error otherwise.
  TextOutput encode_text(const Tensor<int64_t>& input_ids) {
    MAMCLIP_CHECK(input_ids.defined() && input_ids.dim() == 2 && input_ids.size(0) > 0 && input_ids.size(1) > 0,
                  shape_error, "VLModel.encode_text: input_ids has shape ",
                  input_ids.defined() ? shape_str(input_ids.shape()) : std::string("(undefined)"),
                  "; expected [N, L] with N, L >= 1");
    const int64_t n = input_ids.size(0), len = input_ids.size(1), w = config_.text.hidden_size;
    const std::vector<int64_t> ids = input_ids.to(Device::cpu()).to_vector();
    std::vector<int64_t> pos(static_cast<size_t>(n), -1);
    for (int64_t i = 0; i < n; ++i) {
      int64_t count = 0;
      for (int64_t t = 0; t < len; ++t)
        if (ids[static_cast<size_t>(i * len + t)] == config_.cls_token_id) {
          if (count++ == 0) pos[static_cast<size_t>(i)] = t;
        }
      MAMCLIP_CHECK(count == 1, shape_error, "VLModel.encode_text: row ", i, " of input_ids holds cls_token_id ",
                    config_.cls_token_id, " ", count, " times; expected exactly once (the text feature is that row)");
    }
    TextOutput out;
    out.hidden = text_encoder->forward(input_ids).last_hidden_state;  // no attention mask: the reference's call
    // index [N, 1, W] of each row's [CLS] position -> the rows hidden[i, pos_i, :].
    const Tensor<int64_t> index =
        from_vector<int64_t>(pos, {n, 1, 1}, out.hidden.device()).expand({n, 1, w}).contiguous();
    const Tensor<float> cls = gather(out.hidden, 1, index).reshape({n, w});
    out.features = normalize(matmul(cls, text_projection));
    return out;
  }

  // The MLM branch: text_hidden [N, L, W], image_features [N, E] -> log-probabilities [N, L, mlm_vocab_size].
  Tensor<float> mlm_log_probs(const Tensor<float>& text_hidden, const Tensor<float>& image_features) {
    return clip::mlm_log_probs(fuse_text_image(*fusion_module, text_hidden, img_special_token, image_features),
                               mlm_projection);
  }

  // The MLM branch's summed NLL over the positions whose label is not ignore_index, the way the
  // training loops need it: nll_loss(mlm_log_probs(text_hidden, image_features), labels, sum), with
  // the same value and gradients, but only the labelled positions are projected onto the vocabulary.
  // The others add nothing to the loss or its gradient, and the projection (W x mlm_vocab_size per
  // position) is the largest matmul of the text side, while MAM-CLIP labels about 15 % of the tokens.
  // labels int64 [N, L]; 0-dim; zero (no graph) when no position is labelled.
  Tensor<float> mlm_nll_sum(const Tensor<float>& text_hidden, const Tensor<float>& image_features,
                            const Tensor<int64_t>& labels, int64_t ignore_index) {
    MAMCLIP_CHECK(text_hidden.defined() && text_hidden.dim() == 3 && labels.defined() &&
                      labels.shape() == (Shape{text_hidden.size(0), text_hidden.size(1)}),
                  shape_error, "VLModel.mlm_nll_sum: labels has shape ",
                  labels.defined() ? shape_str(labels.shape()) : std::string("(undefined)"), " and text_hidden has shape ",
                  text_hidden.defined() ? shape_str(text_hidden.shape()) : std::string("(undefined)"),
                  "; expected labels [N, L] and text_hidden [N, L, W]");
    const std::vector<int64_t> all = labels.to(Device::cpu()).to_vector();
    std::vector<int64_t> rows, targets;
    for (size_t i = 0; i < all.size(); ++i)
      if (all[i] != ignore_index) {
        rows.push_back(static_cast<int64_t>(i));
        targets.push_back(all[i]);
      }
    if (rows.empty()) return zeros<float>({}, text_hidden.device());
    const Tensor<float> fused = fuse_text_image(*fusion_module, text_hidden, img_special_token, image_features);
    const int64_t m = static_cast<int64_t>(rows.size()), w = fused.size(2);
    const Tensor<float> picked = index_select(fused.reshape({-1, w}), 0, from_vector<int64_t>(rows, {m}, fused.device()));
    LossOptions nll;
    nll.reduction = Reduction::sum;
    nll.ignore_index = ignore_index;
    return nll_loss(clip::mlm_log_probs(picked, mlm_projection), from_vector<int64_t>(targets, {m}, fused.device()), nll);
  }

  VLModelOutput forward(const Tensor<float>& images, const Tensor<int64_t>& input_ids) {
    MAMCLIP_CHECK(images.defined() && input_ids.defined() && images.dim() >= 1 && input_ids.dim() >= 1 &&
                      images.size(0) == input_ids.size(0),
                  shape_error, "VLModel.forward: images has shape ",
                  images.defined() ? shape_str(images.shape()) : std::string("(undefined)"), " and input_ids has shape ",
                  input_ids.defined() ? shape_str(input_ids.shape()) : std::string("(undefined)"),
                  "; expected [N, 3, H, W] and [N, L] with the same N");
    VLModelOutput out;
    out.image_features = encode_image(images);
    TextOutput text = encode_text(input_ids);
    out.text_features = text.features;
    out.logit_scale = logit_scale;
    if (config_.mlm) out.mlm_log_probs = mlm_log_probs(text.hidden, out.image_features);
    return out;
  }
  VLModelOutput operator()(const Tensor<float>& images, const Tensor<int64_t>& input_ids) {
    return forward(images, input_ids);
  }

  // Recomputes the vision tower's blocks in backward instead of storing their activations (the
  // BERT encoder keeps its activations).
  void set_grad_checkpointing(bool enable = true) { vision_encoder->set_grad_checkpointing(enable); }

  Tensor<float> positional_embedding;  // [context_length, W], unused
  Tensor<float> text_projection;       // [W, E]
  Tensor<float> mlm_projection;        // [W, mlm_vocab_size]
  Tensor<float> logit_scale;           // []
  Tensor<float> img_special_token;     // [1, 1, E]
  std::shared_ptr<ConvNeXt> vision_encoder;
  std::shared_ptr<BertModel> text_encoder;
  std::shared_ptr<nn::LayerNorm> ln_final;  // unused
  std::shared_ptr<FusionTransformer> fusion_module;

 private:
  VLModel(const VLModelConfig& config, VLModelSkipInit, Generator* gen) : config_((config.validate(), config)) {
    const VLModelConfig& c = config_;
    const int64_t w = c.text.hidden_size, e = c.embed_dim;
    // Registration order = the reference's state-dict order (own parameters, then children).
    positional_embedding = register_parameter("positional_embedding", zeros<float>({c.context_length, w}));
    text_projection = register_parameter("text_projection", zeros<float>({w, e}));
    mlm_projection = register_parameter("mlm_projection", zeros<float>({w, c.mlm_vocab_size}));
    logit_scale = register_parameter("logit_scale", full<float>({}, static_cast<float>(std::log(1.0 / 0.07))));
    img_special_token = register_parameter("img_special_token", zeros<float>({1, 1, e}));
    ConvNeXtConfig vc = c.vision;
    vc.num_classes = 0;
    if (gen) {
      // timm's init for the trunk, then the replacement head.fc with nn.Linear's default init.
      vision_encoder = register_module("vision_encoder", ConvNeXt(vc, *gen).with_classifier(e, *gen));
      text_encoder = register_module("text_encoder", std::make_shared<BertModel>(c.text, true, *gen));
    } else {
      vision_encoder = register_module("vision_encoder", ConvNeXt(vc, ConvNeXtSkipInit{}).with_classifier(e));
      text_encoder = register_module("text_encoder", std::make_shared<BertModel>(c.text, true, BertSkipInit{}));
    }
    ln_final = register_module("ln_final", std::make_shared<nn::LayerNorm>(w, 1e-5));
    fusion_module = gen ? register_module("fusion_module", std::make_shared<FusionTransformer>(c.fusion(), *gen))
                        : register_module("fusion_module", std::make_shared<FusionTransformer>(c.fusion()));
    if (gen) {
      nn::init::normal_(positional_embedding, 0.0, 0.01, *gen);
      nn::init::normal_(text_projection, 0.0, std::pow(static_cast<double>(w), -0.5), *gen);
      nn::init::normal_(mlm_projection, 0.0, std::pow(static_cast<double>(w), -0.5), *gen);
    }
  }

  VLModelConfig config_;
};

struct VLLossOptions {
  double mlm_coeff = 0.5;
  std::optional<double> max_logit_scale;  // clamp of logit_scale before exp; the reference has none
  int64_t ignore_index = 0;               // [PAD]
};

struct VLLoss {
  Tensor<float> total;        // contrastive + mlm_coeff * mlm (contrastive alone without MLM)
  Tensor<float> contrastive;  // symmetric InfoNCE
  Tensor<float> mlm;          // NLL over the labels != ignore_index; undefined without MLM log-probabilities
};

// The reference's loss: (CE(s I T^T, arange) + CE(s T I^T, arange)) / 2 with s = exp(logit_scale),
// plus mlm_coeff * nll_loss(mlm_log_probs, labels, ignore_index) averaged over the counted tokens.
// labels int64 [N, L] (the tokenized label string; [CLS] and [SEP] count, [PAD] does not).
inline VLLoss vlmodel_loss(const VLModelOutput& out, const Tensor<int64_t>& labels, const VLLossOptions& options = {}) {
  VLLoss loss;
  ClipLossOptions clip_options;
  clip_options.max_logit_scale = options.max_logit_scale;
  loss.contrastive = clip_loss(out.image_features, out.text_features, out.logit_scale, clip_options);
  if (!out.mlm_log_probs.defined()) {
    loss.total = loss.contrastive;
    return loss;
  }
  const Tensor<float>& lp = out.mlm_log_probs;
  MAMCLIP_CHECK(labels.defined() && lp.dim() == 3 && labels.shape() == (Shape{lp.size(0), lp.size(1)}), shape_error,
                "vlmodel_loss: labels has shape ", labels.defined() ? shape_str(labels.shape()) : std::string("(undefined)"),
                " and mlm_log_probs has shape ", shape_str(lp.shape()), "; expected labels [N, L] = [", lp.size(0), ", ",
                lp.size(1), "]");
  LossOptions nll;
  nll.ignore_index = options.ignore_index;
  const int64_t rows = lp.size(0) * lp.size(1);
  loss.mlm = nll_loss(lp.reshape({rows, lp.size(2)}), labels.contiguous().reshape({rows}), nll);
  loss.total = loss.contrastive + loss.mlm * static_cast<float>(options.mlm_coeff);
  return loss;
}

// A checkpoint's tensors as a VLModel state dict: the "VLModel." prefix (a Lightning .ckpt) is removed
// when the keys carry it, and then only prefixed keys are kept (the Lightning module holds nothing
// else); transformers < 4.31 saved BERT's `embeddings.position_ids` buffer, which is dropped.
// Floating tensors of any dtype become float; others are a dtype_error naming the key and `where`.
inline nn::StateDict vlmodel_state_dict_from(const io::TensorMap& tensors, const std::string& where) {
  io::KeyMapping m;
  m.ignore = {"VLModel.text_encoder.embeddings.position_ids", "text_encoder.embeddings.position_ids"};
  bool prefixed = false;
  for (const auto& [key, t] : tensors) prefixed = prefixed || key.rfind("VLModel.", 0) == 0;
  if (prefixed) {
    m.strip_prefix = {"VLModel."};
    m.only_prefixed = true;
  }
  nn::StateDict sd;
  for (const auto& [name, t] : io::map_keys(tensors, m)) sd.insert(name, models::detail::to_float_weight(t, name, where));
  return sd;
}

// Loads the weights of `path` strictly (a Lightning .ckpt, a .pth/.bin state dict or safetensors,
// with or without the "VLModel." prefix): one state_dict_error, prefixed with the path, lists every
// missing, unexpected and mis-shaped key.
inline void load_vlmodel_weights(VLModel& model, const std::filesystem::path& path) {
  const nn::StateDict sd = vlmodel_state_dict_from(io::load_state_dict(path.string()), path.string());
  try {
    model.load_state_dict(sd, /*strict=*/true);
  } catch (const nn::state_dict_error& e) {
    throw nn::state_dict_error(mamclip::detail::str_cat(path.string(), ": ", e.what()), e.missing_keys,
                               e.unexpected_keys, e.shape_mismatches);
  }
}

// Writes the state dict (reference names, no prefix) as safetensors, atomically; the metadata hold
// "format": "pt", "mamclip_config": the config's JSON (read_vlmodel_config) and `extra` (e.g. the
// vocabulary the pretraining loop stores, train::tokenizer_from_weights).
inline void save_vlmodel_weights(const VLModel& model, const std::filesystem::path& path,
                                 const io::Metadata& extra = {}) {
  io::NamedTensors tensors;
  for (const auto& [name, t] : model.state_dict()) tensors.emplace_back(name, t.contiguous());
  io::sort_like_safetensors(tensors);
  io::Metadata metadata = extra;
  metadata["format"] = "pt";
  metadata["mamclip_config"] = model.config().to_json().dump();
  io::save_safetensors(path.string(), tensors, metadata);
}

// The config save_vlmodel_weights stored in a safetensors file; nullopt when it has none, and for
// the other formats load_vlmodel_weights reads (a torch .ckpt / .pth / .bin, a model directory),
// which never hold one: the reference's checkpoints describe their model in Python.
inline std::optional<VLModelConfig> read_vlmodel_config(const std::filesystem::path& path) {
  const std::optional<io::Metadata> meta = io::safetensors_metadata(path.string());
  if (!meta) return std::nullopt;
  const auto it = meta->find("mamclip_config");
  if (it == meta->end()) return std::nullopt;
  const nlohmann::json j = nlohmann::json::parse(it->second, nullptr, /*allow_exceptions=*/false);
  MAMCLIP_CHECK(!j.is_discarded(), io_error, path.string(), ": metadata 'mamclip_config' is not valid JSON");
  return VLModelConfig::from_json(j);
}

}  // namespace mamclip::models::clip
