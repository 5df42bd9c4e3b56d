#pragma once
// Evaluation of the pretrained towers without fine-tuning: zero-shot
// classification from text prompts, and image <-> text retrieval recall@K.
//
// Zero-shot (CLIP's recipe): each class has several prompts; their text
// features (normalised) are averaged and normalised again into one class
// embedding c_k [E]. An image with normalised feature x is scored
// s_k = scale * <x, c_k> (scale = exp(logit_scale) of the model), the
// prediction is argmax_k s_k and softmax(s) are the class probabilities used
// for ROC-AUC, so the scores are evaluate_logits' (finetune.hpp).
//
// Retrieval: paired features (row i of the images with row i of the texts),
// cosine similarity S = normalize(I) normalize(T)^T. Image i is a hit at K
// when its own caption is among the K texts with the highest similarity:
// rank_i = #{ j : S[i, j] > S[i, i] } < K (text -> image likewise over
// columns). Ties count in favour of the true pair: identical captions (common
// in templated report text) have identical features, and a rule that counted
// them against it would make recall depend on the order of the rows.
//
// Text is encoded as the reference does: the BertTokenizer with [CLS] ...
// [SEP], truncation and padding to the model's context_length, and BERT run
// without an attention mask (VLModel::encode_text).
//
// defines: default_zeroshot_prompts, encode_texts, class_text_features, zeroshot_logits,
//          zeroshot_evaluate, zeroshot_classify, RetrievalResult, retrieval_recall,
//          PairedFeatures, encode_pairs

#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "mamclip/autograd/grad_mode.hpp"
#include "mamclip/core/error.hpp"
#include "mamclip/data/loader.hpp"
#include "mamclip/models/clip/vlmodel.hpp"
#include "mamclip/ops/elementwise/elementwise.hpp"
#include "mamclip/ops/matmul/matmul.hpp"
#include "mamclip/ops/norm/norm.hpp"
#include "mamclip/ops/reduce/reduce.hpp"
#include "mamclip/ops/shape/shape.hpp"
#include "mamclip/text/tokenizer.hpp"
#include "mamclip/train/finetune.hpp"

namespace mamclip::train {

// Prompts for each class name, in the words of mammography reports. Known names (case as given):
// normal, benign, malignant, suspicious (and "suspicious/malignant"); any other name gets generic
// prompts built around it.
inline std::vector<std::vector<std::string>> default_zeroshot_prompts(const std::vector<std::string>& class_names) {
  static const std::map<std::string, std::vector<std::string>> known{
      {"normal",
       {"mammogram with no mass and no calcification", "normal mammogram", "no suspicious finding in the breast",
        "negative mammogram, bi-rads 1"}},
      {"benign",
       {"mammogram with a round circumscribed benign mass", "benign finding in the breast",
        "well defined benign mass, bi-rads 2", "circumscribed mass with smooth margins"}},
      {"malignant",
       {"mammogram with a spiculated malignant mass", "malignant finding in the breast",
        "suspicious spiculated mass, bi-rads 5", "cluster of malignant microcalcifications"}},
  };
  std::vector<std::vector<std::string>> out;
  for (const std::string& name : class_names) {
    std::string key = name;
    if (key == "suspicious" || key == "suspicious/malignant") key = "malignant";
    if (auto it = known.find(key); it != known.end()) {
      out.push_back(it->second);
    } else {
      out.push_back({"mammogram showing " + name, name + " finding in the breast", "a mammogram of class " + name});
    }
  }
  return out;
}

// Normalised text features [N, E] of `texts` (no gradients, eval mode; the training flag is restored).
inline Tensor<float> encode_texts(models::clip::VLModel& model, const text::BertTokenizer& tokenizer,
                                  const std::vector<std::string>& texts) {
  MAMCLIP_CHECK(!texts.empty(), value_error, "encode_texts: no texts");
  detail::EvalModeScope eval_mode(model);
  NoGradGuard no_grad;
  text::EncodeOptions opt;
  opt.max_length = model.config().context_length;
  return model.encode_text(tokenizer.encode_batch(texts, opt).input_ids).features;
}

// One normalised embedding per class: the mean of its prompts' normalised text features, normalised
// -> [C, E] (eval mode, as encode_texts).
inline Tensor<float> class_text_features(models::clip::VLModel& model, const text::BertTokenizer& tokenizer,
                                         const std::vector<std::vector<std::string>>& prompts) {
  MAMCLIP_CHECK(!prompts.empty(), value_error, "class_text_features: no classes");
  NoGradGuard no_grad;
  std::vector<Tensor<float>> rows;
  for (size_t c = 0; c < prompts.size(); ++c) {
    MAMCLIP_CHECK(!prompts[c].empty(), value_error, "class_text_features: class ", c, " has no prompts");
    rows.push_back(mean(encode_texts(model, tokenizer, prompts[c]), {0}, /*keepdim=*/true));  // [1, E]
  }
  return normalize(cat(rows, 0));
}

// scale * normalize(image_features) normalize(class_features)^T: [N, E], [C, E] -> [N, C].
inline Tensor<float> zeroshot_logits(const Tensor<float>& image_features, const Tensor<float>& class_features,
                                     double scale) {
  MAMCLIP_CHECK(image_features.defined() && class_features.defined() && image_features.dim() == 2 &&
                    class_features.dim() == 2 && image_features.size(1) == class_features.size(1),
                shape_error, "zeroshot_logits: image_features has shape ",
                image_features.defined() ? shape_str(image_features.shape()) : std::string("(undefined)"),
                " and class_features ",
                class_features.defined() ? shape_str(class_features.shape()) : std::string("(undefined)"),
                "; expected [N, E] and [C, E]");
  MAMCLIP_CHECK(std::isfinite(scale) && scale > 0, value_error, "zeroshot_logits: scale is ", scale,
                "; expected a finite positive number");
  return matmul(normalize(image_features), normalize(class_features).t()) * scale;
}

// Zero-shot scores of features already computed: image_features [N, E], labels [N], class_features [C, E].
inline EvalResult zeroshot_evaluate(const Tensor<float>& image_features, const Tensor<int64_t>& labels,
                                    const Tensor<float>& class_features, double scale = 100.0) {
  NoGradGuard no_grad;
  const Tensor<float> logits = zeroshot_logits(image_features, class_features, scale);
  return evaluate_logits(logits, labels, logits.size(1));
}

struct PairedFeatures {
  Tensor<float> image;     // [N, E], normalised
  Tensor<float> text;      // [N, E], normalised (row i: the caption of image i)
  Tensor<int64_t> labels;  // [N], -1 where unlabelled
};

// Encodes every batch of one pass of `loader` (its images and captions), without gradients and
// in eval mode (the training flag is restored). value_error when the loader yields nothing.
inline PairedFeatures encode_pairs(models::clip::VLModel& model, const text::BertTokenizer& tokenizer,
                                   data::Loader& loader, bool with_text = true) {
  detail::EvalModeScope eval_mode(model);
  NoGradGuard no_grad;
  std::vector<Tensor<float>> images, texts;
  std::vector<Tensor<int64_t>> labels;
  loader.start_epoch(0);
  while (std::optional<data::Batch> batch = loader.next()) {
    images.push_back(model.encode_image(batch->images));
    if (with_text) texts.push_back(encode_texts(model, tokenizer, batch->captions));
    labels.push_back(batch->labels);
  }
  MAMCLIP_CHECK(!images.empty(), value_error, "encode_pairs: the loader yielded no batches");
  PairedFeatures out;
  out.image = cat(images, 0);
  if (with_text) out.text = cat(texts, 0);
  out.labels = cat(labels, 0);
  return out;
}

// Zero-shot classification of a labelled loader: class embeddings from `prompts` (one list per
// class, default_zeroshot_prompts for the usual names), the model's exp(logit_scale) as the scale.
inline EvalResult zeroshot_classify(models::clip::VLModel& model, const text::BertTokenizer& tokenizer,
                                    data::Loader& loader, const std::vector<std::vector<std::string>>& prompts) {
  MAMCLIP_CHECK(prompts.size() >= 2, value_error, "zeroshot_classify: ", prompts.size(),
                " classes; expected at least 2");
  const Tensor<float> classes = class_text_features(model, tokenizer, prompts);
  const PairedFeatures f = encode_pairs(model, tokenizer, loader, /*with_text=*/false);
  const double scale = std::exp(static_cast<double>(model.logit_scale.detach().item()));
  return zeroshot_evaluate(f.image, f.labels, classes, scale);
}

// ---- retrieval

struct RetrievalResult {
  std::map<int, double> image_to_text;  // K -> recall@K (fraction of images whose caption ranks < K)
  std::map<int, double> text_to_image;  // K -> recall@K (fraction of captions whose image ranks < K)
};

// Recall@K of paired features image_features [N, E] and text_features [N, E] (row i with row i); see
// the header comment for the rank and ties. Any positive K (K >= N gives 1).
inline RetrievalResult retrieval_recall(const Tensor<float>& image_features, const Tensor<float>& text_features,
                                        const std::vector<int>& ks = {1, 5, 10}) {
  MAMCLIP_CHECK(image_features.defined() && text_features.defined() && image_features.dim() == 2 &&
                    text_features.dim() == 2 && image_features.shape() == text_features.shape() &&
                    image_features.size(0) > 0,
                shape_error, "retrieval_recall: image_features has shape ",
                image_features.defined() ? shape_str(image_features.shape()) : std::string("(undefined)"),
                " and text_features ",
                text_features.defined() ? shape_str(text_features.shape()) : std::string("(undefined)"),
                "; expected the same shape [N, E] with N >= 1 (row i of each is a pair)");
  for (int k : ks) MAMCLIP_CHECK(k > 0, value_error, "retrieval_recall: K = ", k, "; expected K >= 1");
  NoGradGuard no_grad;
  const int64_t n = image_features.size(0);
  const std::vector<float> s =
      matmul(normalize(image_features.detach()), normalize(text_features.detach()).t()).contiguous().to_vector();
  auto at = [&](int64_t i, int64_t j) { return s[static_cast<size_t>(i * n + j)]; };
  std::vector<int64_t> rank_i2t(static_cast<size_t>(n), 0), rank_t2i(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      if (at(i, j) > at(i, i)) ++rank_i2t[static_cast<size_t>(i)];  // texts above image i's caption
      if (at(j, i) > at(i, i)) ++rank_t2i[static_cast<size_t>(i)];  // images above caption i's image
    }
  RetrievalResult r;
  for (int k : ks) {
    int64_t hit_i = 0, hit_t = 0;
    for (int64_t i = 0; i < n; ++i) {
      hit_i += rank_i2t[static_cast<size_t>(i)] < k;
      hit_t += rank_t2i[static_cast<size_t>(i)] < k;
    }
    r.image_to_text[k] = static_cast<double>(hit_i) / static_cast<double>(n);
    r.text_to_image[k] = static_cast<double>(hit_t) / static_cast<double>(n);
  }
  return r;
}

}  // namespace mamclip::train
