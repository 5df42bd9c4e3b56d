#pragma once
// The MAM-CLIP fusion transformer (the reference's `fusion_module`, after
// PMC-CLIP and OpenCLIP) and the masked-language-model branch that uses it.
//
// Module tree and state-dict names, as in the reference (train/files/nnblocks.py,
// classes Transformer and ResidualAttentionBlock), so a reference state dict
// (keys under "fusion_module.") loads strictly:
//
//   resblocks.{i}.attn.in_proj_weight   [3W, W]   nn.MultiheadAttention, sequence-first
//   resblocks.{i}.attn.in_proj_bias     [3W]
//   resblocks.{i}.attn.out_proj.weight  [W, W]
//   resblocks.{i}.attn.out_proj.bias    [W]
//   resblocks.{i}.ln_1.weight, .bias    [W]       LayerNorm, eps 1e-5
//   resblocks.{i}.mlp.c_fc.weight       [M, W]    M = int(W * mlp_ratio)
//   resblocks.{i}.mlp.c_fc.bias         [M]
//   resblocks.{i}.mlp.c_proj.weight     [W, M]    (mlp.gelu: exact GELU, no parameters)
//   resblocks.{i}.mlp.c_proj.bias       [W]
//   resblocks.{i}.ln_2.weight, .bias    [W]
//
// (attn is registered before ln_1 in the reference, so it comes first.)
// Each block is pre-norm: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)), with
// the attention weights never computed (need_weights = false: the fused op).
//
// MAM-CLIP's configuration: width 768, 8 heads, 1 layer, MLP ratio 4,
// attention dropout 0 (FusionConfig's defaults). Its input is sequence-first
// [T + 2, N, W]: the BERT last_hidden_state (all T = 100 positions, padding
// included), then the learnable img_special_token [1, 1, W], then the
// L2-normalised image feature [N, W] (the reference normalises it before
// encode_text sees it). It is called without any mask, although the reference
// model registers a causal attn_mask buffer ([100, 100], -inf above the
// diagonal, non-persistent, never used). fuse_text_image() and
// mlm_log_probs() below are that branch: the last two positions are dropped
// and log_softmax(x @ mlm_projection) gives the MLM log-probabilities.

#include <cstdint>
#include <memory>
#include <sstream>
#include <string>

#include "mamclip/nn/activation.hpp"
#include "mamclip/nn/attention.hpp"
#include "mamclip/nn/containers.hpp"
#include "mamclip/nn/layer_norm.hpp"
#include "mamclip/nn/linear.hpp"
#include "mamclip/nn/module.hpp"
#include "mamclip/ops/matmul/matmul.hpp"
#include "mamclip/ops/shape/shape.hpp"
#include "mamclip/ops/softmax/softmax.hpp"

namespace mamclip::models::clip {

struct FusionConfig {
  int64_t width = 768;
  int64_t heads = 8;
  int64_t layers = 1;
  double mlp_ratio = 4.0;
  double attn_dropout = 0.0;  // the reference's drop_attention_rate
  double layer_norm_eps = 1e-5;

  // int(width * mlp_ratio), as the reference computes it.
  int64_t mlp_width() const { return static_cast<int64_t>(static_cast<double>(width) * mlp_ratio); }

  void validate() const {
    MAMCLIP_CHECK(width > 0 && heads > 0 && layers > 0, value_error,
                  "FusionConfig: width, heads and layers must be positive, got width=", width, ", heads=", heads,
                  ", layers=", layers);
    MAMCLIP_CHECK(width % heads == 0, value_error, "FusionConfig: width ", width, " must be divisible by heads ", heads);
    MAMCLIP_CHECK(mlp_width() > 0, value_error, "FusionConfig: mlp_ratio ", mlp_ratio, " gives an MLP width of ",
                  mlp_width(), " for width ", width, "; expected at least 1");
  }
};

// Optional masks for the blocks' attention; the reference passes none. attn_mask is additive float
// ([L, L] or [N * heads, L, L], -inf blocks, the reference's convention); key_padding_mask is bool
// [N, L], true = ignore the position (PyTorch's convention).
struct FusionMasks {
  Tensor<float> attn_mask;
  Tensor<bool> key_padding_mask;
};

// c_fc -> GELU (exact) -> c_proj: the reference's nn.Sequential(OrderedDict(c_fc, gelu, c_proj)).
class FusionMlp : public nn::UnaryModule {
 public:
  FusionMlp(int64_t width, int64_t hidden, Generator& gen = default_generator()) {
    c_fc = register_module("c_fc", std::make_shared<nn::Linear>(width, hidden, true, gen));
    gelu = register_module("gelu", std::make_shared<nn::GELU>());
    c_proj = register_module("c_proj", std::make_shared<nn::Linear>(hidden, width, true, gen));
  }
  std::string type_name() const override { return "Sequential"; }

  std::shared_ptr<nn::Linear> c_fc;
  std::shared_ptr<nn::GELU> gelu;
  std::shared_ptr<nn::Linear> c_proj;

 protected:
  Tensor<float> forward_impl(const Tensor<float>& x) override { return c_proj->forward(gelu->forward(c_fc->forward(x))); }
};

class ResidualAttentionBlock : public nn::Module {
 public:
  ResidualAttentionBlock(const FusionConfig& config, Generator& gen = default_generator()) : width_(config.width) {
    config.validate();
    nn::MultiheadAttentionOptions o;
    o.dropout = config.attn_dropout;  // sequence-first, as the reference
    attn = register_module("attn", std::make_shared<nn::MultiheadAttention>(config.width, config.heads, o, gen));
    ln_1 = register_module("ln_1", std::make_shared<nn::LayerNorm>(config.width, config.layer_norm_eps));
    mlp = register_module("mlp", std::make_shared<FusionMlp>(config.width, config.mlp_width(), gen));
    ln_2 = register_module("ln_2", std::make_shared<nn::LayerNorm>(config.width, config.layer_norm_eps));
  }
  std::string type_name() const override { return "ResidualAttentionBlock"; }

  // x [L, N, W] -> [L, N, W].
  Tensor<float> forward(const Tensor<float>& x, const FusionMasks& masks = {}) {
    MAMCLIP_CHECK(x.defined() && x.dim() == 3 && x.size(2) == width_, shape_error, "ResidualAttentionBlock(width=",
                  width_, "): input has shape ", x.defined() ? shape_str(x.shape()) : std::string("(undefined)"),
                  "; expected [L, N, ", width_, "] (sequence-first)");
    nn::MultiheadAttentionArgs<float> args;
    args.need_weights = false;
    args.attn_bias = masks.attn_mask;
    args.key_padding_mask = masks.key_padding_mask;
    const Tensor<float> h = ln_1->forward(x);
    const Tensor<float> y = add(x, attn->forward(h, h, h, args).output);
    return add(y, mlp->forward(ln_2->forward(y)));
  }
  Tensor<float> operator()(const Tensor<float>& x, const FusionMasks& masks = {}) { return forward(x, masks); }

  std::shared_ptr<nn::MultiheadAttention> attn;
  std::shared_ptr<nn::LayerNorm> ln_1;
  std::shared_ptr<FusionMlp> mlp;
  std::shared_ptr<nn::LayerNorm> ln_2;

 private:
  int64_t width_;
};

// The reference's Transformer: `layers` ResidualAttentionBlocks under "resblocks".
class FusionTransformer : public nn::Module {
 public:
  explicit FusionTransformer(const FusionConfig& config = {}, Generator& gen = default_generator()) : config_(config) {
    config.validate();
    resblocks = register_module("resblocks", std::make_shared<nn::ModuleListOf<ResidualAttentionBlock>>());
    for (int64_t i = 0; i < config.layers; ++i) resblocks->push_back(std::make_shared<ResidualAttentionBlock>(config, gen));
  }
  std::string type_name() const override { return "Transformer"; }
  std::string extra_repr() const override {
    std::ostringstream os;
    os << "width=" << config_.width << ", heads=" << config_.heads << ", layers=" << config_.layers
       << ", mlp_ratio=" << config_.mlp_ratio;
    return os.str();
  }
  const FusionConfig& config() const { return config_; }

  // x [L, N, W] (sequence-first) -> [L, N, W].
  Tensor<float> forward(const Tensor<float>& x, const FusionMasks& masks = {}) {
    Tensor<float> y = x;
    for (const auto& block : *resblocks) y = block->forward(y, masks);
    return y;
  }
  Tensor<float> operator()(const Tensor<float>& x, const FusionMasks& masks = {}) { return forward(x, masks); }

  std::shared_ptr<nn::ModuleListOf<ResidualAttentionBlock>> resblocks;

 private:
  FusionConfig config_;
};

// [text_hidden ; img_special_token ; image_feature] along the sequence, sequence-first:
// text_hidden [N, T, W], img_special_token [1, 1, W], image_features [N, W] -> [T + 2, N, W].
inline Tensor<float> fusion_input(const Tensor<float>& text_hidden, const Tensor<float>& img_special_token,
                                  const Tensor<float>& image_features) {
  MAMCLIP_CHECK(text_hidden.defined() && text_hidden.dim() == 3, shape_error, "fusion_input: text_hidden has shape ",
                text_hidden.defined() ? shape_str(text_hidden.shape()) : std::string("(undefined)"),
                "; expected [N, T, W]");
  const int64_t n = text_hidden.size(0), w = text_hidden.size(2);
  MAMCLIP_CHECK(img_special_token.defined() && img_special_token.shape() == (Shape{1, 1, w}), shape_error,
                "fusion_input: img_special_token has shape ",
                img_special_token.defined() ? shape_str(img_special_token.shape()) : std::string("(undefined)"),
                "; expected [1, 1, ", w, "] (text_hidden has shape ", shape_str(text_hidden.shape()), ")");
  MAMCLIP_CHECK(image_features.defined() && image_features.shape() == (Shape{n, w}), shape_error,
                "fusion_input: image_features has shape ",
                image_features.defined() ? shape_str(image_features.shape()) : std::string("(undefined)"),
                "; expected [N, W] = [", n, ", ", w, "] (text_hidden has shape ", shape_str(text_hidden.shape()), ")");
  const Tensor<float> x = cat<float>({text_hidden, img_special_token.expand({n, 1, w}), image_features.unsqueeze(1)}, 1);
  return x.transpose(0, 1);
}

// The reference's fusion branch: fusion_input, the transformer, back to batch-first, and the two
// image positions dropped: -> [N, T, W].
inline Tensor<float> fuse_text_image(FusionTransformer& fusion, const Tensor<float>& text_hidden,
                                     const Tensor<float>& img_special_token, const Tensor<float>& image_features,
                                     const FusionMasks& masks = {}) {
  const Tensor<float> y = fusion.forward(fusion_input(text_hidden, img_special_token, image_features), masks);
  return y.transpose(0, 1).narrow(1, 0, text_hidden.size(1));
}

// log_softmax(x @ mlm_projection) over the vocabulary: x [N, T, W], mlm_projection [W, V] -> [N, T, V].
inline Tensor<float> mlm_log_probs(const Tensor<float>& x, const Tensor<float>& mlm_projection) {
  MAMCLIP_CHECK(x.defined() && mlm_projection.defined() && mlm_projection.dim() == 2 && x.dim() >= 1 &&
                    x.size(-1) == mlm_projection.size(0),
                shape_error, "mlm_log_probs: x has shape ", x.defined() ? shape_str(x.shape()) : std::string("(undefined)"),
                " and mlm_projection has shape ",
                mlm_projection.defined() ? shape_str(mlm_projection.shape()) : std::string("(undefined)"),
                "; expected [..., W] and [W, V]");
  return log_softmax(matmul(x, mlm_projection), -1);
}

}  // namespace mamclip::models::clip
