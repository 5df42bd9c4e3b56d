#pragma once
// Embedding: a lookup table [num_embeddings, embedding_dim], torch.nn.Embedding's
// name (weight), init N(0, 1) and padding_idx (that row starts at zero and
// receives no gradient).

#include <optional>
#include <string>

#include "mamclip/nn/init.hpp"
#include "mamclip/nn/module.hpp"
#include "mamclip/ops/indexing/indexing.hpp"

namespace mamclip::nn {

class Embedding : public Module {
 public:
  // A negative padding_idx counts from the end, as in PyTorch.
  Embedding(int64_t num_embeddings, int64_t embedding_dim, std::optional<int64_t> padding_idx = std::nullopt,
            Generator& gen = default_generator())
      : num_embeddings_(num_embeddings), embedding_dim_(embedding_dim) {
    MAMCLIP_CHECK(num_embeddings > 0 && embedding_dim > 0, value_error, "Embedding: num_embeddings and embedding_dim ",
                  "must be positive, got ", num_embeddings, " and ", embedding_dim);
    if (padding_idx) {
      MAMCLIP_CHECK(*padding_idx >= -num_embeddings && *padding_idx < num_embeddings, value_error,
                    "Embedding: padding_idx ", *padding_idx, " must be within num_embeddings (expected a value in [",
                    -num_embeddings, ", ", num_embeddings - 1, "])");
      padding_idx_ = *padding_idx < 0 ? *padding_idx + num_embeddings : *padding_idx;
    }
    Tensor<float> w = empty<float>({num_embeddings, embedding_dim});
    init::normal_(w, 0.0, 1.0, gen);
    if (padding_idx_) w.select(0, *padding_idx_).zero_();
    weight = register_parameter("weight", w);
  }

  Embedding(int64_t num_embeddings, int64_t embedding_dim, Generator& gen)
      : Embedding(num_embeddings, embedding_dim, std::nullopt, gen) {}

  std::string type_name() const override { return "Embedding"; }
  std::string extra_repr() const override {
    return std::to_string(num_embeddings_) + ", " + std::to_string(embedding_dim_) +
           (padding_idx_ ? ", padding_idx=" + std::to_string(*padding_idx_) : "");
  }
  int64_t num_embeddings() const { return num_embeddings_; }
  int64_t embedding_dim() const { return embedding_dim_; }
  std::optional<int64_t> padding_idx() const { return padding_idx_; }

  // ids of any shape -> [*ids.shape, embedding_dim]. Out-of-range ids are an
  // index_error (checked by the embedding op before any lookup).
  Tensor<float> forward(const Tensor<int64_t>& ids) {
    MAMCLIP_CHECK(ids.defined(), value_error, "Embedding.forward: ids is an undefined tensor");
    return forward_impl(ids);
  }
  Tensor<float> operator()(const Tensor<int64_t>& ids) { return forward(ids); }

  Tensor<float> weight;  // [num_embeddings, embedding_dim]

 protected:
  virtual Tensor<float> forward_impl(const Tensor<int64_t>& ids) { return embedding(weight, ids, padding_idx_); }

 private:
  int64_t num_embeddings_, embedding_dim_;
  std::optional<int64_t> padding_idx_;
};

}  // namespace mamclip::nn
