#pragma once
// MAM-CLIP pretraining: contrastive image–caption learning plus masked
// language modelling through the fusion block, with gradient accumulation.
//
// One optimizer step consumes k = effective_batch / batch micro-batches. Two
// choices of negatives:
//   paper  each micro-batch computes its own loss (its B pairs are the only
//          negatives) and backpropagates loss / k: what the reference does
//          (Lightning's accumulate_grad_batches).
//   full   GradCache: the features of all k micro-batches are computed without
//          a graph, the contrastive loss runs over all k·B pairs, and each
//          micro-batch is then recomputed with its graph and backpropagated
//          with its slice of the feature gradients. The gradients equal those
//          of one un-accumulated batch of k·B (the MLM term is weighted by
//          token counts so that it, too, is the mean over the whole batch),
//          in the memory of one micro-batch. Dropout masks are replayed: the
//          model's random modules share one generator and ops without a
//          module (BERT's attention dropout) draw from the thread's default
//          generator; both states are restored before each recomputation.

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mamclip/autograd/grad_mode.hpp"
#include "mamclip/core/error.hpp"
#include "mamclip/core/random.hpp"
#include "mamclip/models/clip/vlmodel.hpp"
#include "mamclip/nn/dropout.hpp"
#include "mamclip/ops/fwd.hpp"
#include "mamclip/optim/adamw.hpp"

namespace mamclip::train {

// A loss or gradient that is NaN or infinite; the message names the step and
// the tensor.
struct non_finite_error : error {
  using error::error;
};

// One micro-batch as the model takes it.
struct ClipMicroBatch {
  Tensor<float> images;       // [B, 3, H, W]
  Tensor<int64_t> input_ids;  // [B, L], masked captions
  Tensor<int64_t> labels;     // [B, L], [PAD] (ignore_index) where nothing is predicted
};

struct PretrainStepOptions {
  std::string negatives = "paper";  // paper | full (see the top of this header)
  models::clip::VLLossOptions loss;
};

// Loss values of one step, averaged as they enter the gradient.
struct PretrainStepResult {
  double loss = 0, contrastive = 0, mlm = 0;
  double logit_scale = 0;  // exp(logit_scale) after the step's forward
};

// Gives every random module (dropout, drop path) of `model` one generator, so
// that a step's random draws can be replayed from its state.
inline std::shared_ptr<Generator> share_generator(nn::Module& model, uint64_t seed) {
  auto gen = std::make_shared<Generator>(seed);
  for (auto& [name, m] : model.named_modules())
    if (auto* r = dynamic_cast<nn::RandomModule*>(m)) r->set_generator(gen);
  return gen;
}

inline void check_finite(double value, const char* what, int64_t step) {
  if (!std::isfinite(value))
    throw non_finite_error("pretraining step " + std::to_string(step) + ": the " + what + " loss is " +
                           std::to_string(value));
}

// Throws naming the first parameter whose gradient holds a NaN or infinity.
inline void check_finite_gradients(const nn::Module& model, int64_t step) {
  for (auto& [name, p] : model.named_parameters()) {
    const Tensor<float> g = p.grad();
    if (!g.defined()) continue;
    for (float v : g.to_vector())
      if (!std::isfinite(v))
        throw non_finite_error("pretraining step " + std::to_string(step) + ": the gradient of " + name +
                               " holds " + std::to_string(v));
  }
}

// Accumulates the gradients of one optimizer step into the parameters' .grad
// (which the caller zeroes). `gen` is the generator shared by the model's
// random modules (share_generator), needed by `full` to replay dropout.
inline PretrainStepResult accumulate_gradients(models::clip::VLModel& model, const std::vector<ClipMicroBatch>& micro,
                                               const PretrainStepOptions& options, Generator& gen, int64_t step = 0) {
  MAMCLIP_CHECK(!micro.empty(), value_error, "accumulate_gradients: no micro-batches");
  const double k = static_cast<double>(micro.size());
  const auto& lo = options.loss;
  const bool mlm = model.config().mlm;
  PretrainStepResult r;

  if (options.negatives == "paper") {
    for (const auto& mb : micro) {
      const auto out = model.forward(mb.images, mb.input_ids);
      const auto loss = models::clip::vlmodel_loss(out, mb.labels, lo);
      const double total = loss.total.item();
      check_finite(loss.contrastive.item(), "contrastive", step);
      if (loss.mlm.defined()) check_finite(loss.mlm.item(), "MLM", step);
      check_finite(total, "total", step);
      mul(loss.total, 1.0 / k).backward();
      r.loss += total / k;
      r.contrastive += loss.contrastive.item() / k;
      if (loss.mlm.defined()) r.mlm += loss.mlm.item() / k;
      r.logit_scale = std::exp(out.logit_scale.item());
    }
    return r;
  }
  MAMCLIP_CHECK(options.negatives == "full", value_error, "accumulate_gradients: negatives must be 'paper' or 'full', got '",
                options.negatives, "'");

  // 1. Features of every micro-batch, without a graph; remember where each
  //    micro-batch's random draws start.
  Generator& fallback = default_generator();
  std::vector<std::pair<Generator, Generator>> starts;
  std::vector<Tensor<float>> image_parts, text_parts;
  {
    autograd::NoGradGuard no_grad;
    for (const auto& mb : micro) {
      starts.emplace_back(gen, fallback);
      image_parts.push_back(model.encode_image(mb.images));
      text_parts.push_back(model.encode_text(mb.input_ids).features);
    }
  }
  const Generator after(gen), fallback_after(fallback);

  // 2. The contrastive loss over the whole effective batch; its gradient
  //    reaches logit_scale directly and the features as leaves.
  Tensor<float> images = cat(image_parts, 0).detach();
  Tensor<float> texts = cat(text_parts, 0).detach();
  images.set_requires_grad();
  texts.set_requires_grad();
  const Tensor<float> logit_scale = model.logit_scale;
  ClipLossOptions clip_options;
  clip_options.max_logit_scale = lo.max_logit_scale;
  const Tensor<float> contrastive = clip_loss(images, texts, logit_scale, clip_options);
  r.contrastive = contrastive.item();
  check_finite(r.contrastive, "contrastive", step);
  contrastive.backward();
  const Tensor<float> image_grad = images.grad(), text_grad = texts.grad();
  r.logit_scale = std::exp(logit_scale.item());

  // The MLM loss is the mean over the non-ignored tokens of the whole batch.
  int64_t tokens = 0;
  if (mlm)
    for (const auto& mb : micro)
      for (int64_t id : mb.labels.to_vector()) tokens += id != lo.ignore_index;

  // 3. Each micro-batch again, with its graph, backpropagating its slice.
  int64_t row = 0;
  for (size_t i = 0; i < micro.size(); ++i) {
    const auto& mb = micro[i];
    gen = starts[i].first;
    fallback = starts[i].second;
    const int64_t b = mb.images.size(0);
    const Tensor<float> img = model.encode_image(mb.images);
    const auto text = model.encode_text(mb.input_ids);
    Tensor<float> surrogate = add(sum(mul(img, image_grad.narrow(0, row, b))),
                                  sum(mul(text.features, text_grad.narrow(0, row, b))));
    if (mlm && tokens > 0) {
      const Tensor<float> log_probs = model.mlm_log_probs(text.hidden, img);
      const int64_t V = log_probs.size(-1);
      LossOptions nll;
      nll.reduction = Reduction::sum;
      nll.ignore_index = lo.ignore_index;
      const Tensor<float> mlm_sum = nll_loss(log_probs.reshape({-1, V}), mb.labels.reshape({-1}), nll);
      const double part = mlm_sum.item() / static_cast<double>(tokens);
      check_finite(part, "MLM", step);
      r.mlm += part;
      surrogate = add(surrogate, mul(mlm_sum, lo.mlm_coeff / static_cast<double>(tokens)));
    }
    surrogate.backward();
    row += b;
  }
  gen = after;
  fallback = fallback_after;
  r.loss = r.contrastive + (mlm ? lo.mlm_coeff * r.mlm : 0.0);
  check_finite(r.loss, "total", step);
  return r;
}

// One optimizer step: zero, accumulate, check, update.
inline PretrainStepResult pretrain_step(models::clip::VLModel& model, optim::AdamW& optimizer,
                                        const std::vector<ClipMicroBatch>& micro, const PretrainStepOptions& options,
                                        Generator& gen, int64_t step = 0) {
  optimizer.zero_grad();
  const PretrainStepResult r = accumulate_gradients(model, micro, options, gen, step);
  check_finite_gradients(model, step);
  optimizer.step();
  return r;
}

// Mean loss over micro-batches without gradients (the validation loss).
inline PretrainStepResult evaluate_loss(models::clip::VLModel& model, const std::vector<ClipMicroBatch>& micro,
                                        const models::clip::VLLossOptions& options) {
  autograd::NoGradGuard no_grad;
  PretrainStepResult r;
  for (const auto& mb : micro) {
    const auto out = model.forward(mb.images, mb.input_ids);
    const auto loss = models::clip::vlmodel_loss(out, mb.labels, options);
    r.loss += loss.total.item();
    r.contrastive += loss.contrastive.item();
    if (loss.mlm.defined()) r.mlm += loss.mlm.item();
    r.logit_scale = std::exp(out.logit_scale.item());
  }
  const double n = static_cast<double>(std::max<size_t>(micro.size(), 1));
  r.loss /= n;
  r.contrastive /= n;
  r.mlm /= n;
  return r;
}

}  // namespace mamclip::train
