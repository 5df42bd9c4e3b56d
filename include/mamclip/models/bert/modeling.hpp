#pragma once
// The BERT encoder with HuggingFace transformers' semantics (4.57, absolute
// positions, encoder only) and its module and parameter names, so a state dict
// moves between the two without a mapping:
//
//   embeddings.{word,position,token_type}_embeddings.weight, embeddings.LayerNorm.{weight,bias}
//   encoder.layer.<i>.attention.self.{query,key,value}.{weight,bias}
//   encoder.layer.<i>.attention.output.{dense,LayerNorm}.{weight,bias}
//   encoder.layer.<i>.intermediate.dense.{weight,bias}
//   encoder.layer.<i>.output.{dense,LayerNorm}.{weight,bias}
//   pooler.dense.{weight,bias}
//   BertForMaskedLM: bert.* (no pooler) and cls.predictions.{bias, transform.dense.*, transform.LayerNorm.*};
//   the decoder is tied to bert.embeddings.word_embeddings.weight and is not a parameter of its own.
//
// HF's non-persistent buffers (embeddings.position_ids, embeddings.token_type_ids)
// are not kept: positions are 0..L-1 and absent token types are zeros.
//
// Dropout follows the module's training flag (a model starts in training mode,
// as in PyTorch; the loaders in pretrained.hpp return it in eval mode):
// hidden_dropout_prob after the embeddings and each dense output,
// attention_probs_dropout_prob on the attention probabilities.
//
// defines: make_bert_activation, init_bert_weights, BertEmbeddings, BertSelfAttention,
//   BertSelfOutput, BertAttention, BertIntermediate, BertFeedForwardOutput (HF's
//   BertOutput layer), BertLayer, BertEncoder, BertPooler, BertSkipInit, BertOutput
//   (the model's outputs), BertModel, BertPredictionHeadTransform, BertLMPredictionHead,
//   BertOnlyMLMHead, BertForMaskedLM

#include <memory>
#include <string>

#include "mamclip/core/factory.hpp"
#include "mamclip/models/bert/config.hpp"
#include "mamclip/nn/activation.hpp"
#include "mamclip/nn/containers.hpp"
#include "mamclip/nn/dropout.hpp"
#include "mamclip/nn/embedding.hpp"
#include "mamclip/nn/init.hpp"
#include "mamclip/nn/layer_norm.hpp"
#include "mamclip/nn/linear.hpp"
#include "mamclip/nn/module.hpp"
#include "mamclip/ops/attention/attention.hpp"
#include "mamclip/ops/elementwise/elementwise.hpp"
#include "mamclip/ops/shape/shape.hpp"

namespace mamclip::models {

// HF's ACT2FN for the names BertConfig accepts (validate() refuses the others).
inline std::shared_ptr<nn::UnaryModule> make_bert_activation(const std::string& name) {
  if (name == "gelu") return std::make_shared<nn::GELU>(GeluApproximation::none);
  // gelu_new is HF's own tanh formula; it equals gelu_pytorch_tanh up to rounding.
  if (name == "gelu_new" || name == "gelu_pytorch_tanh") return std::make_shared<nn::GELU>(GeluApproximation::tanh);
  if (name == "relu") return std::make_shared<nn::ReLU>();
  throw value_error(mamclip::detail::str_cat("BERT: hidden_act \"", name,
                                             "\" is not supported; supported: \"gelu\", \"gelu_new\", "
                                             "\"gelu_pytorch_tanh\", \"relu\""));
}

// HF's BertPreTrainedModel._init_weights: Linear and Embedding weights
// ~ N(0, initializer_range), biases zero, the padding row zero, LayerNorm ones
// and zeros. Applied to every submodule of `root`.
inline void init_bert_weights(nn::Module& root, double initializer_range, Generator& gen = default_generator()) {
  NoGradGuard no_grad;
  for (auto& [name, m] : root.named_modules()) {
    if (auto* lin = dynamic_cast<nn::Linear*>(m)) {
      nn::init::normal_(lin->weight, 0.0, initializer_range, gen);
      if (lin->bias.defined()) nn::init::zeros_(lin->bias);
    } else if (auto* emb = dynamic_cast<nn::Embedding*>(m)) {
      nn::init::normal_(emb->weight, 0.0, initializer_range, gen);
      if (emb->padding_idx()) emb->weight.select(0, *emb->padding_idx()).zero_();
    } else if (auto* ln = dynamic_cast<nn::LayerNorm*>(m)) {
      if (ln->weight.defined()) nn::init::ones_(ln->weight);
      if (ln->bias.defined()) nn::init::zeros_(ln->bias);
    }
  }
}

class BertEmbeddings : public nn::Module {
 public:
  explicit BertEmbeddings(const BertConfig& c) {
    word_embeddings = register_module(
        "word_embeddings", std::make_shared<nn::Embedding>(c.vocab_size, c.hidden_size, c.pad_token_id));
    position_embeddings =
        register_module("position_embeddings", std::make_shared<nn::Embedding>(c.max_position_embeddings, c.hidden_size));
    token_type_embeddings =
        register_module("token_type_embeddings", std::make_shared<nn::Embedding>(c.type_vocab_size, c.hidden_size));
    LayerNorm = register_module("LayerNorm", std::make_shared<nn::LayerNorm>(c.hidden_size, c.layer_norm_eps));
    dropout = register_module("dropout", std::make_shared<nn::Dropout>(c.hidden_dropout_prob));
  }
  std::string type_name() const override { return "BertEmbeddings"; }

  // input_ids, token_type_ids int64 [B, L] (token_type_ids defined; BertModel fills zeros) -> [B, L, H].
  Tensor<float> forward(const Tensor<int64_t>& input_ids, const Tensor<int64_t>& token_type_ids) {
    const int64_t L = input_ids.size(1);
    // HF's order: (word + token type) + position, each add rounded in float.
    Tensor<float> e = word_embeddings->forward(input_ids) + token_type_embeddings->forward(token_type_ids);
    const Tensor<int64_t> positions = arange<int64_t>(0, static_cast<double>(L), 1.0, input_ids.device());  // [L]
    e = e + position_embeddings->forward(positions);  // [L, H] broadcasts over the batch
    return dropout->forward(LayerNorm->forward(e));
  }

  std::shared_ptr<nn::Embedding> word_embeddings, position_embeddings, token_type_embeddings;
  std::shared_ptr<nn::LayerNorm> LayerNorm;  // HF's (TensorFlow-era) name
  std::shared_ptr<nn::Dropout> dropout;
};

class BertSelfAttention : public nn::Module {
 public:
  explicit BertSelfAttention(const BertConfig& c)
      : num_heads_(c.num_attention_heads), head_dim_(c.head_dim()), dropout_p_(c.attention_probs_dropout_prob) {
    query = register_module("query", std::make_shared<nn::Linear>(c.hidden_size, c.hidden_size));
    key = register_module("key", std::make_shared<nn::Linear>(c.hidden_size, c.hidden_size));
    value = register_module("value", std::make_shared<nn::Linear>(c.hidden_size, c.hidden_size));
  }
  std::string type_name() const override { return "BertSelfAttention"; }

  // x [B, L, H]; key_padding_mask bool [B, L] (true = attend) or undefined -> context [B, L, H].
  Tensor<float> forward(const Tensor<float>& x, const Tensor<bool>& key_padding_mask) {
    const int64_t B = x.size(0), L = x.size(1);
    auto heads = [&](const Tensor<float>& t) {  // [B, L, H] -> [B, heads, L, head_dim]
      return t.reshape({B, L, num_heads_, head_dim_}).permute({0, 2, 1, 3});
    };
    AttentionOptions opt;
    opt.key_padding_mask = key_padding_mask;
    opt.dropout_p = is_training() ? dropout_p_ : 0.0;
    // scale = 1/sqrt(head_dim), as HF's division by sqrt(attention_head_size).
    Tensor<float> ctx = scaled_dot_product_attention(heads(query->forward(x)), heads(key->forward(x)),
                                                     heads(value->forward(x)), opt);
    return ctx.permute({0, 2, 1, 3}).reshape({B, L, num_heads_ * head_dim_});
  }

  std::shared_ptr<nn::Linear> query, key, value;

 private:
  int64_t num_heads_, head_dim_;
  double dropout_p_;
};

// dense -> dropout -> LayerNorm(. + residual): HF's BertSelfOutput and BertOutput.
class BertSelfOutput : public nn::Module {
 public:
  BertSelfOutput(const BertConfig& c, int64_t in_features) {
    dense = register_module("dense", std::make_shared<nn::Linear>(in_features, c.hidden_size));
    LayerNorm = register_module("LayerNorm", std::make_shared<nn::LayerNorm>(c.hidden_size, c.layer_norm_eps));
    dropout = register_module("dropout", std::make_shared<nn::Dropout>(c.hidden_dropout_prob));
  }
  explicit BertSelfOutput(const BertConfig& c) : BertSelfOutput(c, c.hidden_size) {}
  std::string type_name() const override { return "BertSelfOutput"; }

  Tensor<float> forward(const Tensor<float>& hidden, const Tensor<float>& residual) {
    return LayerNorm->forward(dropout->forward(dense->forward(hidden)) + residual);
  }

  std::shared_ptr<nn::Linear> dense;
  std::shared_ptr<nn::LayerNorm> LayerNorm;
  std::shared_ptr<nn::Dropout> dropout;
};

class BertAttention : public nn::Module {
 public:
  explicit BertAttention(const BertConfig& c) {
    self = register_module("self", std::make_shared<BertSelfAttention>(c));
    output = register_module("output", std::make_shared<BertSelfOutput>(c));
  }
  std::string type_name() const override { return "BertAttention"; }

  Tensor<float> forward(const Tensor<float>& x, const Tensor<bool>& key_padding_mask) {
    return output->forward(self->forward(x, key_padding_mask), x);
  }

  std::shared_ptr<BertSelfAttention> self;
  std::shared_ptr<BertSelfOutput> output;
};

class BertIntermediate : public nn::Module {
 public:
  explicit BertIntermediate(const BertConfig& c) {
    dense = register_module("dense", std::make_shared<nn::Linear>(c.hidden_size, c.intermediate_size));
    intermediate_act_fn = register_module("intermediate_act_fn", make_bert_activation(c.hidden_act));
  }
  std::string type_name() const override { return "BertIntermediate"; }

  Tensor<float> forward(const Tensor<float>& x) { return intermediate_act_fn->forward(dense->forward(x)); }

  std::shared_ptr<nn::Linear> dense;
  std::shared_ptr<nn::UnaryModule> intermediate_act_fn;
};

// HF's BertOutput layer (the name BertOutput is the model's output struct here).
class BertFeedForwardOutput : public BertSelfOutput {
 public:
  explicit BertFeedForwardOutput(const BertConfig& c) : BertSelfOutput(c, c.intermediate_size) {}
  std::string type_name() const override { return "BertOutput"; }
};

class BertLayer : public nn::Module {
 public:
  explicit BertLayer(const BertConfig& c) {
    attention = register_module("attention", std::make_shared<BertAttention>(c));
    intermediate = register_module("intermediate", std::make_shared<BertIntermediate>(c));
    output = register_module("output", std::make_shared<BertFeedForwardOutput>(c));
  }
  std::string type_name() const override { return "BertLayer"; }

  Tensor<float> forward(const Tensor<float>& x, const Tensor<bool>& key_padding_mask) {
    Tensor<float> a = attention->forward(x, key_padding_mask);
    return output->forward(intermediate->forward(a), a);
  }

  std::shared_ptr<BertAttention> attention;
  std::shared_ptr<BertIntermediate> intermediate;
  std::shared_ptr<BertFeedForwardOutput> output;
};

class BertEncoder : public nn::Module {
 public:
  explicit BertEncoder(const BertConfig& c) {
    layer = register_module("layer", std::make_shared<nn::ModuleListOf<BertLayer>>());
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) layer->push_back(std::make_shared<BertLayer>(c));
  }
  std::string type_name() const override { return "BertEncoder"; }

  Tensor<float> forward(const Tensor<float>& x, const Tensor<bool>& key_padding_mask) {
    Tensor<float> h = x;
    for (const auto& l : *layer) h = l->forward(h, key_padding_mask);
    return h;
  }

  std::shared_ptr<nn::ModuleListOf<BertLayer>> layer;
};

class BertPooler : public nn::Module {
 public:
  explicit BertPooler(const BertConfig& c) {
    dense = register_module("dense", std::make_shared<nn::Linear>(c.hidden_size, c.hidden_size));
    activation = register_module("activation", std::make_shared<nn::Tanh>());
  }
  std::string type_name() const override { return "BertPooler"; }

  // [B, L, H] -> tanh(dense(hidden[:, 0])) [B, H]
  Tensor<float> forward(const Tensor<float>& hidden) { return activation->forward(dense->forward(hidden.select(1, 0))); }

  std::shared_ptr<nn::Linear> dense;
  std::shared_ptr<nn::Tanh> activation;
};

// Tag for the loaders: build the modules but skip HF's initialisation (the
// layers keep their own default init), because every weight is about to be
// overwritten; drawing ~110M normals for BERT-base takes seconds.
struct BertSkipInit {};

struct BertOutput {
  Tensor<float> last_hidden_state;  // [B, L, H]
  Tensor<float> pooler_output;      // [B, H]; undefined for a model built without the pooling layer
};

class BertModel : public nn::Module {
 public:
  // Weights drawn as HF initialises them (init_bert_weights) from `gen`.
  explicit BertModel(const BertConfig& config, bool add_pooling_layer = true, Generator& gen = default_generator())
      : BertModel(config, add_pooling_layer, BertSkipInit{}) {
    init_bert_weights(*this, config_.initializer_range, gen);
  }
  BertModel(const BertConfig& config, bool add_pooling_layer, BertSkipInit) : config_((config.validate(), config)) {
    embeddings = register_module("embeddings", std::make_shared<BertEmbeddings>(config_));
    encoder = register_module("encoder", std::make_shared<BertEncoder>(config_));
    if (add_pooling_layer) pooler = register_module("pooler", std::make_shared<BertPooler>(config_));
  }
  std::string type_name() const override { return "BertModel"; }

  // input_ids int64 [B, L] with L <= max_position_embeddings; attention_mask
  // int64 [B, L] (nonzero = token, 0 = padding: padded keys get no attention)
  // or undefined = all ones; token_type_ids int64 [B, L] or undefined = zeros.
  // Padded positions still get hidden states (attending to the real tokens), as in HF.
  // A sequence whose mask is all zeros differs from HF: HF's additive mask makes
  // its attention uniform over the padding, scaled_dot_product_attention gives
  // zeros (such a row carries no tokens either way).
  BertOutput forward(const Tensor<int64_t>& input_ids, const Tensor<int64_t>& attention_mask = {},
                     const Tensor<int64_t>& token_type_ids = {}) {
    MAMCLIP_CHECK(input_ids.defined(), value_error, "BertModel.forward: input_ids is an undefined tensor");
    MAMCLIP_CHECK(input_ids.dim() == 2 && input_ids.size(0) > 0 && input_ids.size(1) > 0, shape_error,
                  "BertModel.forward: input_ids has shape ", shape_str(input_ids.shape()),
                  "; expected [batch, length] with batch, length >= 1");
    const int64_t L = input_ids.size(1);
    MAMCLIP_CHECK(L <= config_.max_position_embeddings, shape_error, "BertModel.forward: input_ids has length ", L,
                  "; expected at most max_position_embeddings = ", config_.max_position_embeddings);
    for (const auto& [what, t] : {std::pair<const char*, const Tensor<int64_t>*>{"attention_mask", &attention_mask},
                                  {"token_type_ids", &token_type_ids}})
      MAMCLIP_CHECK(!t->defined() || t->shape() == input_ids.shape(), shape_error, "BertModel.forward: ", what,
                    " has shape ", shape_str(t->shape()), "; expected the shape of input_ids ",
                    shape_str(input_ids.shape()));
    const Tensor<int64_t> types =
        token_type_ids.defined() ? token_type_ids : zeros<int64_t>(input_ids.shape(), input_ids.device());
    const Tensor<bool> key_padding_mask = attention_mask.defined() ? attention_mask.to<bool>() : Tensor<bool>();
    BertOutput out;
    out.last_hidden_state = encoder->forward(embeddings->forward(input_ids, types), key_padding_mask);
    if (pooler) out.pooler_output = pooler->forward(out.last_hidden_state);
    return out;
  }
  BertOutput operator()(const Tensor<int64_t>& input_ids, const Tensor<int64_t>& attention_mask = {},
                        const Tensor<int64_t>& token_type_ids = {}) {
    return forward(input_ids, attention_mask, token_type_ids);
  }

  const BertConfig& config() const { return config_; }
  bool has_pooler() const { return pooler != nullptr; }

  std::shared_ptr<BertEmbeddings> embeddings;
  std::shared_ptr<BertEncoder> encoder;
  std::shared_ptr<BertPooler> pooler;  // null without the pooling layer

 private:
  BertConfig config_;
};

// dense -> activation -> LayerNorm
class BertPredictionHeadTransform : public nn::UnaryModule {
 public:
  explicit BertPredictionHeadTransform(const BertConfig& c) {
    dense = register_module("dense", std::make_shared<nn::Linear>(c.hidden_size, c.hidden_size));
    transform_act_fn = register_module("transform_act_fn", make_bert_activation(c.hidden_act));
    LayerNorm = register_module("LayerNorm", std::make_shared<nn::LayerNorm>(c.hidden_size, c.layer_norm_eps));
  }
  std::string type_name() const override { return "BertPredictionHeadTransform"; }

  std::shared_ptr<nn::Linear> dense;
  std::shared_ptr<nn::UnaryModule> transform_act_fn;
  std::shared_ptr<nn::LayerNorm> LayerNorm;

 protected:
  Tensor<float> forward_impl(const Tensor<float>& x) override {
    return LayerNorm->forward(transform_act_fn->forward(dense->forward(x)));
  }
};

// transform, then the decoder: logits = h @ word_embeddings^T + bias. The
// decoder weight is the word-embedding matrix (HF ties them), passed in.
class BertLMPredictionHead : public nn::Module {
 public:
  explicit BertLMPredictionHead(const BertConfig& c) {
    transform = register_module("transform", std::make_shared<BertPredictionHeadTransform>(c));
    bias = register_parameter("bias", zeros<float>({c.vocab_size}));
  }
  std::string type_name() const override { return "BertLMPredictionHead"; }

  // hidden [B, L, H], decoder_weight [V, H] -> logits [B, L, V]
  Tensor<float> forward(const Tensor<float>& hidden, const Tensor<float>& decoder_weight) {
    return linear(transform->forward(hidden), decoder_weight, bias);
  }

  std::shared_ptr<BertPredictionHeadTransform> transform;
  Tensor<float> bias;  // [V]
};

class BertOnlyMLMHead : public nn::Module {
 public:
  explicit BertOnlyMLMHead(const BertConfig& c) {
    predictions = register_module("predictions", std::make_shared<BertLMPredictionHead>(c));
  }
  std::string type_name() const override { return "BertOnlyMLMHead"; }

  std::shared_ptr<BertLMPredictionHead> predictions;
};

class BertForMaskedLM : public nn::Module {
 public:
  // As in HF, the encoder has no pooling layer.
  explicit BertForMaskedLM(const BertConfig& config, Generator& gen = default_generator())
      : BertForMaskedLM(config, BertSkipInit{}) {
    init_bert_weights(*this, bert_->config().initializer_range, gen);
  }
  BertForMaskedLM(const BertConfig& config, BertSkipInit) {
    bert_ = register_module("bert", std::make_shared<BertModel>(config, /*add_pooling_layer=*/false, BertSkipInit{}));
    cls = register_module("cls", std::make_shared<BertOnlyMLMHead>(bert_->config()));
  }
  std::string type_name() const override { return "BertForMaskedLM"; }

  // The arguments of BertModel::forward -> logits [B, L, vocab_size].
  Tensor<float> forward(const Tensor<int64_t>& input_ids, const Tensor<int64_t>& attention_mask = {},
                        const Tensor<int64_t>& token_type_ids = {}) {
    const Tensor<float> h = bert_->forward(input_ids, attention_mask, token_type_ids).last_hidden_state;
    return cls->predictions->forward(h, bert_->embeddings->word_embeddings->weight);
  }
  Tensor<float> operator()(const Tensor<int64_t>& input_ids, const Tensor<int64_t>& attention_mask = {},
                           const Tensor<int64_t>& token_type_ids = {}) {
    return forward(input_ids, attention_mask, token_type_ids);
  }

  BertModel& bert() { return *bert_; }
  const BertModel& bert() const { return *bert_; }
  const BertConfig& config() const { return bert_->config(); }

  std::shared_ptr<BertOnlyMLMHead> cls;

 private:
  std::shared_ptr<BertModel> bert_;
};

}  // namespace mamclip::models
