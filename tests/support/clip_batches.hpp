#pragma once
// A tiny MAM-CLIP model and random micro-batches for the pretraining tests
// (one process and data-parallel), and gradient comparison.
#include "support/test_support.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "mamclip/train/pretrain.hpp"

namespace mamclip::test {

using models::clip::VLModelConfig;

inline VLModelConfig tiny_config(double dropout) {
  VLModelConfig c;
  c.vision.depths = {1, 1, 1, 1};
  c.vision.dims = {8, 8, 8, 16};
  c.text.vocab_size = 40;
  c.text.hidden_size = 16;
  c.text.num_hidden_layers = 1;
  c.text.num_attention_heads = 2;
  c.text.intermediate_size = 32;
  c.text.max_position_embeddings = 16;
  c.text.hidden_dropout_prob = dropout;
  c.text.attention_probs_dropout_prob = dropout;
  c.embed_dim = 16;
  c.context_length = 8;
  c.mlm_vocab_size = 44;
  c.fusion_heads = 2;
  c.cls_token_id = 2;
  c.vision.num_classes = c.embed_dim;
  return c;
}

// n pairs: random images, ids with [CLS] = 2 first, labels with some [PAD] = 0.
inline train::ClipMicroBatch random_batch(int64_t n, Generator& gen) {
  train::ClipMicroBatch b;
  b.images = rand<float>({n, 3, 32, 32}, gen);
  const auto r = rand<double>({n, 8, 2}, gen).to_vector();
  std::vector<int64_t> ids, labels;
  for (int64_t i = 0; i < n * 8; ++i) {
    const bool first = i % 8 == 0;
    ids.push_back(first ? 2 : 5 + static_cast<int64_t>(r[2 * i] * 35));
    labels.push_back(first ? 2 : (r[2 * i + 1] < 0.4 ? 5 + static_cast<int64_t>(r[2 * i] * 35) : 0));
  }
  b.input_ids = from_vector<int64_t>(ids, {n, 8});
  b.labels = from_vector<int64_t>(labels, {n, 8});
  return b;
}

inline train::ClipMicroBatch concat(const std::vector<train::ClipMicroBatch>& parts) {
  std::vector<Tensor<float>> images;
  std::vector<Tensor<int64_t>> ids, labels;
  for (const auto& p : parts) {
    images.push_back(p.images);
    ids.push_back(p.input_ids);
    labels.push_back(p.labels);
  }
  return {cat(images, 0), cat(ids, 0), cat(labels, 0)};
}

inline std::vector<std::pair<std::string, std::vector<float>>> gradients(const nn::Module& m) {
  std::vector<std::pair<std::string, std::vector<float>>> out;
  for (auto& [name, p] : m.named_parameters())
    out.emplace_back(name, p.grad().defined() ? p.grad().to_vector() : std::vector<float>());
  return out;
}

inline void require_same_gradients(const nn::Module& m, const std::vector<std::pair<std::string, std::vector<float>>>& ref,
                            double tol) {
  const auto got = gradients(m);
  REQUIRE(got.size() == ref.size());
  size_t compared = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    INFO(got[i].first);
    REQUIRE(got[i].second.size() == ref[i].second.size());
    double scale = 1e-6, err = 0;
    for (size_t j = 0; j < got[i].second.size(); ++j) {
      scale = std::max(scale, std::abs(static_cast<double>(ref[i].second[j])));
      err = std::max(err, std::abs(static_cast<double>(got[i].second[j]) - ref[i].second[j]));
    }
    CHECK(err <= tol * scale);
    compared += !got[i].second.empty();
  }
  REQUIRE(compared > 20);
}

}  // namespace mamclip::test
