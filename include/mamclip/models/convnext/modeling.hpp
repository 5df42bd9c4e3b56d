#pragma once
// ConvNeXt with timm's semantics (timm 1.0, convnext.py: the "patch" stem,
// channels-last blocks, pool -> norm -> fc head) and its module and parameter
// names, so timm state dicts load with no mapping:
//
//   stem.0.{weight,bias}                 Conv2d(in_chans, dims[0], patch_size, stride patch_size)
//   stem.1.{weight,bias}                 LayerNorm2d(dims[0])
//   stages.<i>.downsample.0.{weight,bias}  LayerNorm2d(dims[i-1])          (stages 1..3 only)
//   stages.<i>.downsample.1.{weight,bias}  Conv2d(dims[i-1], dims[i], 2, stride 2)
//   stages.<i>.blocks.<j>.gamma          layer scale [dims[i]]
//   stages.<i>.blocks.<j>.conv_dw.{weight,bias}  depthwise Conv2d(k x k, padding k / 2)
//   stages.<i>.blocks.<j>.norm.{weight,bias}     LayerNorm over channels (channels last)
//   stages.<i>.blocks.<j>.mlp.fc{1,2}.{weight,bias}  Linear(d, 4d), Linear(4d, d)
//   head.norm.{weight,bias}              LayerNorm over the pooled channels
//   head.fc.{weight,bias}                Linear(dims[3], num_classes) (absent when num_classes = 0)
//
// Block: y = x + drop_path(gamma * fc2(gelu(fc1(norm(conv_dw(x)))))) with the
// norm and MLP on the channels-last view [N, H, W, C]; GELU is the exact (erf) one.
// Head: global average pool -> head.norm -> head.drop (dropout drop_rate) -> head.fc.
//
// What the forward functions return (timm's names and meanings):
//   forward_features(x)              [N, dims[3], h, w], the last stage's map (h = H / 32 rounded
//                                    down through the stride-4 stem and three 2x2 stride-2 convs)
//   forward_head(map, pre_logits)    pre_logits: the pooled features after head.norm and head.drop,
//                                    [N, dims[3]]; else head.fc of them, [N, num_classes]
//   forward(x)                       forward_head(forward_features(x)), the classifier / embedding
//   forward_with_features(x)         both, from one pass
// With num_classes = 0 head.fc is the identity (timm's nn.Identity) and forward
// returns the pooled features.
//
// Randomness (stochastic depth in training, head dropout) draws from a
// generator the model shares (set_generator), or else from the default
// generator of the thread that runs forward, as nn::Dropout / DropPath do.
// Gradient checkpointing (set_grad_checkpointing) recomputes each block of a
// stage in backward, as timm's checkpoint_seq does; the recomputation replays
// the block's drop-path mask from a copy of the generator taken before the
// block, so gradients are those of the masks the forward pass used (backward
// must run while the generator lives: the model's own, or that thread's).
//
// defines: ConvNeXtSkipInit, init_convnext_weights, ConvNeXtMlp, ConvNeXtBlock, ConvNeXtStage,
//   ConvNeXtHead, ConvNeXtOutput, ConvNeXt

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mamclip/autograd/checkpoint.hpp"
#include "mamclip/core/factory.hpp"
#include "mamclip/models/convnext/config.hpp"
#include "mamclip/nn/activation.hpp"
#include "mamclip/nn/containers.hpp"
#include "mamclip/nn/conv.hpp"
#include "mamclip/nn/init.hpp"
#include "mamclip/nn/layer_norm.hpp"
#include "mamclip/nn/linear.hpp"
#include "mamclip/nn/module.hpp"
#include "mamclip/ops/elementwise/elementwise.hpp"
#include "mamclip/ops/reduce/reduce.hpp"
#include "mamclip/ops/shape/shape.hpp"

namespace mamclip::models {

// Tag for the loaders: build the modules without timm's initialisation (the
// layers keep their own default init) because every weight is about to be
// overwritten.
struct ConvNeXtSkipInit {};

// timm's _init_weights: Conv2d and Linear weights ~ trunc_normal(std 0.02,
// bounds +-2), biases zero; Linear layers under "head." scaled by
// head_init_scale. LayerNorms keep ones / zeros and gamma its ls_init_value.
inline void init_convnext_weights(nn::Module& root, double head_init_scale, Generator& gen = default_generator()) {
  NoGradGuard no_grad;
  for (auto& [name, m] : root.named_modules()) {
    if (auto* conv = dynamic_cast<nn::Conv2d*>(m)) {
      nn::init::trunc_normal_(conv->weight, 0.0, 0.02, -2.0, 2.0, gen);
      if (conv->bias.defined()) nn::init::zeros_(conv->bias);
    } else if (auto* lin = dynamic_cast<nn::Linear*>(m)) {
      nn::init::trunc_normal_(lin->weight, 0.0, 0.02, -2.0, 2.0, gen);
      if (lin->bias.defined()) nn::init::zeros_(lin->bias);
      if (name.rfind("head.", 0) == 0) {
        lin->weight.copy_(lin->weight.detach() * head_init_scale);
        if (lin->bias.defined()) lin->bias.copy_(lin->bias.detach() * head_init_scale);
      }
    }
  }
}

// timm's Mlp without its (identity) dropouts and norm: fc1 -> GELU -> fc2.
class ConvNeXtMlp : public nn::UnaryModule {
 public:
  ConvNeXtMlp(int64_t dim, int64_t hidden) {
    fc1 = register_module("fc1", std::make_shared<nn::Linear>(dim, hidden));
    act = register_module("act", std::make_shared<nn::GELU>(GeluApproximation::none));
    fc2 = register_module("fc2", std::make_shared<nn::Linear>(hidden, dim));
  }
  std::string type_name() const override { return "Mlp"; }

  std::shared_ptr<nn::Linear> fc1;
  std::shared_ptr<nn::GELU> act;
  std::shared_ptr<nn::Linear> fc2;

 protected:
  Tensor<float> forward_impl(const Tensor<float>& x) override { return fc2->forward(act->forward(fc1->forward(x))); }
};

class ConvNeXtBlock : public nn::Module {
 public:
  ConvNeXtBlock(int64_t dim, int64_t hidden, int64_t kernel_size, double ls_init_value, double drop_path, double eps)
      : dim_(dim), drop_path_(drop_path) {
    gamma = register_parameter("gamma", full<float>({dim}, static_cast<float>(ls_init_value)));
    Conv2dOptions dw;
    dw.padding = {kernel_size / 2, kernel_size / 2};
    dw.groups = dim;
    conv_dw = register_module(
        "conv_dw", std::make_shared<nn::Conv2d>(dim, dim, std::array<int64_t, 2>{kernel_size, kernel_size}, dw));
    norm = register_module("norm", std::make_shared<nn::LayerNorm>(dim, eps));
    mlp = register_module("mlp", std::make_shared<ConvNeXtMlp>(dim, hidden));
  }
  // A block of `config`'s stage width dims[stage] with stochastic depth `drop_path`.
  ConvNeXtBlock(const ConvNeXtConfig& c, size_t stage, double drop_path)
      : ConvNeXtBlock(c.dims[stage], c.hidden_dim(stage), c.kernel_size, c.ls_init_value, drop_path, c.layer_norm_eps) {
  }

  std::string type_name() const override { return "ConvNeXtBlock"; }
  std::string extra_repr() const override {
    std::ostringstream os;
    os << "dim=" << dim_ << ", drop_path=" << drop_path_;
    return os.str();
  }
  double drop_path_prob() const { return drop_path_; }

  // x [N, dim, H, W] -> [N, dim, H, W]; drop-path masks drawn from `gen` while training.
  Tensor<float> forward(const Tensor<float>& x, Generator& gen) {
    MAMCLIP_CHECK(x.defined() && x.dim() == 4 && x.size(1) == dim_, shape_error, "ConvNeXtBlock(dim=", dim_,
                  "): input has shape ", x.defined() ? shape_str(x.shape()) : std::string("undefined"),
                  "; expected [N, ", dim_, ", H, W]");
    Tensor<float> y = conv_dw->forward(x).permute({0, 2, 3, 1});  // [N, H, W, C]
    // gamma multiplies each channel once; on the channels-last view it broadcasts along the last dim.
    y = mlp->forward(norm->forward(y)) * gamma;
    if (x.device().is_cpu()) return drop_path(y.permute({0, 3, 1, 2}), drop_path_, is_training(), gen) + x;
    // On a device the block keeps its activations channels last ([N, H, W, C]
    // storage behind the [N, C, H, W] view, as forward_features hands them
    // over): the sum is stored that way, conv2d's NHWC kernels keep it, and the
    // norm and the MLP then read the conv's output without a copy. The CPU's
    // NCHW convolution would copy instead. Same values either way.
    return (drop_path(y, drop_path_, is_training(), gen) + x.permute({0, 2, 3, 1})).permute({0, 3, 1, 2});
  }

  Tensor<float> gamma;  // [dim]
  std::shared_ptr<nn::Conv2d> conv_dw;
  std::shared_ptr<nn::LayerNorm> norm;
  std::shared_ptr<ConvNeXtMlp> mlp;

 private:
  int64_t dim_;
  double drop_path_;
};

class ConvNeXtStage : public nn::Module {
 public:
  // Stage `i` of `c`: downsampling (LayerNorm2d, 2x2 stride-2 conv) unless i = 0, then depths[i] blocks.
  ConvNeXtStage(const ConvNeXtConfig& c, size_t i, const std::vector<double>& drop_path_rates) {
    if (i > 0) {
      downsample = register_module("downsample", std::make_shared<nn::Sequential>());
      downsample->push_back(std::make_shared<nn::LayerNorm2d>(c.dims[i - 1], c.layer_norm_eps));
      Conv2dOptions s2;
      s2.stride = {2, 2};
      downsample->push_back(std::make_shared<nn::Conv2d>(c.dims[i - 1], c.dims[i], std::array<int64_t, 2>{2, 2}, s2));
    }
    blocks = register_module("blocks", std::make_shared<nn::ModuleListOf<ConvNeXtBlock>>());
    for (int64_t j = 0; j < c.depths[i]; ++j)
      blocks->push_back(std::make_shared<ConvNeXtBlock>(c, i, drop_path_rates[static_cast<size_t>(j)]));
  }
  std::string type_name() const override { return "ConvNeXtStage"; }

  Tensor<float> forward(const Tensor<float>& x, Generator& gen) {
    Tensor<float> h = downsample ? downsample->forward(x) : x;
    for (const auto& b : *blocks)
      h = grad_checkpointing && autograd::GradMode::enabled() ? checkpointed(*b, h, gen) : b->forward(h, gen);
    return h;
  }

  // Recompute each block in backward instead of keeping its activations.
  bool grad_checkpointing = false;
  std::shared_ptr<nn::Sequential> downsample;  // null for stage 0 (timm's nn.Identity)
  std::shared_ptr<nn::ModuleListOf<ConvNeXtBlock>> blocks;

 private:
  // The block under autograd::checkpoint. The first call (the forward pass)
  // draws from `gen` as usual; the recomputation in backward draws from a
  // copy of `gen` as it was before the block, so it sees the same masks, and
  // leaves `gen` where it found it.
  static Tensor<float> checkpointed(ConvNeXtBlock& block, const Tensor<float>& x, Generator& gen) {
    struct Replay {
      Generator start;
      bool ran = false;
    };
    auto replay = std::make_shared<Replay>(Replay{gen});
    ConvNeXtBlock* b = &block;
    Generator* g = &gen;
    return checkpoint<float>(
        [b, g, replay](const std::vector<Tensor<float>>& in) {
          if (!replay->ran) {
            replay->ran = true;
            return b->forward(in[0], *g);
          }
          const Generator resume = *g;
          *g = replay->start;
          Tensor<float> y = b->forward(in[0], *g);
          *g = resume;
          return y;
        },
        {x});
  }
};

// timm's NormMlpClassifierHead as ConvNeXt uses it (no hidden layer): pool -> norm -> drop -> fc.
class ConvNeXtHead : public nn::Module {
 public:
  ConvNeXtHead(std::shared_ptr<nn::LayerNorm> norm_layer, std::shared_ptr<nn::Linear> fc_layer, double drop_rate)
      : drop_rate_(drop_rate) {
    norm = register_module("norm", std::move(norm_layer));
    if (fc_layer) fc = register_module("fc", std::move(fc_layer));
  }
  std::string type_name() const override { return "NormMlpClassifierHead"; }

  // map [N, C, h, w] -> pooled [N, C] (pre_logits) or fc(pooled) [N, num_classes].
  Tensor<float> forward(const Tensor<float>& map, Generator& gen, bool pre_logits = false) {
    // timm pools to [N, C, 1, 1] and applies LayerNorm2d there; over the channel
    // dim of [N, C] that is the same normalisation with the same parameters.
    Tensor<float> pooled = dropout(norm->forward(mean(map, {2, 3})), drop_rate_, is_training(), gen);
    return pre_logits || !fc ? pooled : fc->forward(pooled);
  }

  std::shared_ptr<nn::LayerNorm> norm;
  std::shared_ptr<nn::Linear> fc;  // null when num_classes = 0

 private:
  double drop_rate_;
};

struct ConvNeXtOutput {
  Tensor<float> pooled;  // [N, dims[3]]: after head.norm (and head.drop), before head.fc
  Tensor<float> output;  // [N, num_classes]: head.fc(pooled); pooled itself when num_classes = 0
};

class ConvNeXt : public nn::Module {
 public:
  // Weights drawn as timm initialises them (init_convnext_weights) from `gen`.
  explicit ConvNeXt(const ConvNeXtConfig& config, Generator& gen = default_generator())
      : ConvNeXt(config, ConvNeXtSkipInit{}) {
    init_convnext_weights(*this, config_.head_init_scale, gen);
  }
  ConvNeXt(const ConvNeXtConfig& config, ConvNeXtSkipInit) : config_((config.validate(), config)) {
    const ConvNeXtConfig& c = config_;
    stem = register_module("stem", std::make_shared<nn::Sequential>());
    Conv2dOptions patch;
    patch.stride = {c.patch_size, c.patch_size};
    stem->push_back(
        std::make_shared<nn::Conv2d>(c.in_chans, c.dims[0], std::array<int64_t, 2>{c.patch_size, c.patch_size}, patch));
    stem->push_back(std::make_shared<nn::LayerNorm2d>(c.dims[0], c.layer_norm_eps));
    stages = register_module("stages", std::make_shared<nn::ModuleListOf<ConvNeXtStage>>());
    const auto rates = c.drop_path_rates();
    for (size_t i = 0; i < 4; ++i) stages->push_back(std::make_shared<ConvNeXtStage>(c, i, rates[i]));
    auto fc = c.num_classes > 0 ? std::make_shared<nn::Linear>(c.num_features(), c.num_classes) : nullptr;
    head = register_module(
        "head", std::make_shared<ConvNeXtHead>(std::make_shared<nn::LayerNorm>(c.num_features(), c.layer_norm_eps), fc,
                                               c.drop_rate));
  }
  std::string type_name() const override { return "ConvNeXt"; }

  // x [N, in_chans, H, W] with H, W >= 8 * patch_size -> [N, dims[3], h, w].
  Tensor<float> forward_features(const Tensor<float>& x) {
    MAMCLIP_CHECK(x.defined(), value_error, "ConvNeXt.forward_features: the input is an undefined tensor");
    const int64_t min_size = 8 * config_.patch_size;
    MAMCLIP_CHECK(x.dim() == 4 && x.size(0) > 0 && x.size(1) == config_.in_chans && x.size(2) >= min_size &&
                      x.size(3) >= min_size,
                  shape_error, "ConvNeXt.forward_features: input has shape ", shape_str(x.shape()), "; expected [N, ",
                  config_.in_chans, ", H, W] with N >= 1 and H, W >= ", min_size, " (the stride-", config_.patch_size,
                  " stem and three stride-2 stages need it)");
    // On a device the whole tower runs channels last (PyTorch's
    // channels_last): the convolutions (cuDNN's NHWC ones for the stem and the
    // downsampling, ours for the blocks) and LayerNorm2d keep the layout, so
    // no block, norm or Linear copies its input. The CPU stays NCHW.
    Tensor<float> h = stem->forward(x.device().is_cpu() ? x : contiguous_channels_last(x));
    for (const auto& s : *stages) h = s->forward(h, generator());
    return h;
  }

  // map [N, dims[3], h, w] (forward_features' output) -> see the top of this header.
  Tensor<float> forward_head(const Tensor<float>& map, bool pre_logits = false) {
    MAMCLIP_CHECK(
        map.defined() && map.dim() == 4 && map.size(1) == config_.num_features() && map.size(2) > 0 && map.size(3) > 0,
        shape_error, "ConvNeXt.forward_head: input has shape ",
        map.defined() ? shape_str(map.shape()) : std::string("undefined"), "; expected [N, ", config_.num_features(),
        ", h, w]");
    return head->forward(map, generator(), pre_logits);
  }

  Tensor<float> forward(const Tensor<float>& x) { return forward_head(forward_features(x)); }
  Tensor<float> operator()(const Tensor<float>& x) { return forward(x); }

  ConvNeXtOutput forward_with_features(const Tensor<float>& x) {
    ConvNeXtOutput out;
    out.pooled = forward_head(forward_features(x), /*pre_logits=*/true);
    out.output = head->fc ? head->fc->forward(out.pooled) : out.pooled;
    return out;
  }

  // Gradient checkpointing in every stage (ConvNeXtStage::grad_checkpointing sets one stage).
  void set_grad_checkpointing(bool enable = true) {
    for (const auto& s : *stages) s->grad_checkpointing = enable;
  }
  // The generator of drop-path masks and head dropout (shared; null = the running thread's default generator).
  void set_generator(std::shared_ptr<Generator> gen) { gen_ = std::move(gen); }
  Generator& generator() const { return gen_ ? *gen_ : default_generator(); }

  // timm's reset_classifier (model.head.fc = nn.Linear(dims[3], num_classes)),
  // as a new model: it shares this model's stem, stages and head.norm (the same
  // parameters, not copies), its generator and training mode, and has a new
  // head.fc with PyTorch's default Linear init drawn from `gen`, or none for
  // num_classes = 0. MAM-CLIP builds its vision encoder this way:
  // convnext_tiny(ImageNet) with_classifier(768).
  std::shared_ptr<ConvNeXt> with_classifier(int64_t num_classes, Generator& gen = default_generator()) const {
    ConvNeXtConfig c = config_;
    c.num_classes = num_classes;
    c.validate("ConvNeXt.with_classifier");
    auto fc = num_classes > 0 ? std::make_shared<nn::Linear>(c.num_features(), num_classes, gen) : nullptr;
    auto out = std::shared_ptr<ConvNeXt>(
        new ConvNeXt(c, stem, stages, std::make_shared<ConvNeXtHead>(head->norm, fc, c.drop_rate)));
    out->gen_ = gen_;
    out->train(is_training());
    return out;
  }

  const ConvNeXtConfig& config() const { return config_; }
  int64_t num_features() const { return config_.num_features(); }
  int64_t num_classes() const { return config_.num_classes; }

  std::shared_ptr<nn::Sequential> stem;
  std::shared_ptr<nn::ModuleListOf<ConvNeXtStage>> stages;
  std::shared_ptr<ConvNeXtHead> head;

 private:
  ConvNeXt(const ConvNeXtConfig& c, std::shared_ptr<nn::Sequential> stem_,
           std::shared_ptr<nn::ModuleListOf<ConvNeXtStage>> stages_, std::shared_ptr<ConvNeXtHead> head_)
      : config_(c) {
    stem = register_module("stem", std::move(stem_));
    stages = register_module("stages", std::move(stages_));
    head = register_module("head", std::move(head_));
  }

  ConvNeXtConfig config_;
  std::shared_ptr<Generator> gen_;
};

}  // namespace mamclip::models
