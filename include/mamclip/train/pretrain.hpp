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
//
// precision: fp32; bf16 (the forward passes run in a bfloat16 autocast
// region on the model's device: matmul / linear / conv / attention in bf16,
// losses, softmax and norms in float; weights, gradients and AdamW stay
// float); or fp16, the reference's Lightning "16-mixed": a float16 autocast
// region and a dynamic loss scale (optim::GradScaler, passed to
// pretrain_step): every backward is of loss x scale, a step whose gradients
// overflow is skipped and the scale backs off. Backward runs outside the
// region, as with torch.autocast.

#include <bit>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mamclip/autograd/grad_mode.hpp"
#include "mamclip/core/autocast.hpp"
#include "mamclip/core/error.hpp"
#include "mamclip/core/random.hpp"
#include "mamclip/dist/parallel.hpp"
#include "mamclip/models/clip/vlmodel.hpp"
#include "mamclip/nn/dropout.hpp"
#include "mamclip/ops/fwd.hpp"
#include "mamclip/optim/adamw.hpp"
#include "mamclip/optim/grad_scaler.hpp"

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
  std::string precision = "fp32";   // fp32 | bf16 | fp16 (see the top of this header)
  double loss_scale = 1.0;          // every backward is of loss x loss_scale (pretrain_step sets it for fp16)
  models::clip::VLLossOptions loss;
  // Set on every rank of a data-parallel job (see accumulate_gradients).
  dist::DataParallel* data_parallel = nullptr;
};

// Loss values of one step, averaged as they enter the gradient.
struct PretrainStepResult {
  double loss = 0, contrastive = 0, mlm = 0;
  double logit_scale = 0;  // exp(logit_scale) after the step's forward
  bool skipped = false;    // fp16: a gradient overflowed; the optimizer did not step
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
    if (!p.grad().defined()) continue;
    const Tensor<float> g = p.grad().to(Device::cpu()).contiguous();  // no copy for CPU gradients
    const float* d = g.data_ptr();
    const int64_t n = g.numel();
    // A float is inf or NaN exactly when its exponent bits are all ones; OR-ing that test over the
    // bits vectorises, so a clean gradient (every step but the failing one) costs one read.
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; ++i) bad |= static_cast<uint32_t>((std::bit_cast<uint32_t>(d[i]) & 0x7f800000u) == 0x7f800000u);
    if (!bad) continue;
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(d[i]))
        throw non_finite_error("pretraining step " + std::to_string(step) + ": the gradient of " + name +
                               " holds " + std::to_string(d[i]));
  }
}

namespace detail {
// The autocast region `precision` asks for; value_error unless fp32, bf16 or fp16.
inline AutocastMode precision_mode(const std::string& precision, const char* who) {
  MAMCLIP_CHECK(precision == "fp32" || precision == "bf16" || precision == "fp16", value_error, who,
                ": precision must be 'fp32', 'bf16' or 'fp16', got '", precision, "'");
  return {precision != "fp32", precision == "fp16" ? DType::f16 : DType::bf16};
}

// The contrastive loss of this rank's pairs against the pairs of every rank
// (global negatives), weighted by W * n / N (W ranks, n local pairs, N in
// all): DataParallel averages gradients over ranks, so the gradients become
// those of one process holding all N pairs. `value` is that global loss.
// Without a communicator it is the plain loss of the local pairs.
struct RankLoss {
  Tensor<float> weighted;
  double value = 0;
};
inline RankLoss contrastive_over_ranks(dist::Communicator* comm, const Tensor<float>& images,
                                       const Tensor<float>& texts, const Tensor<float>& logit_scale,
                                       const models::clip::VLLossOptions& lo) {
  ClipLossOptions o;
  o.max_logit_scale = lo.max_logit_scale;
  if (!comm || comm->world_size() == 1) {
    Tensor<float> loss = clip_loss(images, texts, logit_scale, o);
    return {loss, loss.item()};
  }
  const int64_t n = images.size(0);
  std::vector<int64_t> rows;
  const Tensor<float> all_images = dist::gather_with_grad(*comm, images, &rows);
  const Tensor<float> all_texts = dist::gather_with_grad(*comm, texts);
  int64_t total = 0;
  for (int64_t r : rows) total += r;
  o.image_offset = o.label_offset = dist::row_offset(rows, comm->rank());
  o.batch = n;
  const Tensor<float> loss = clip_loss(all_images, all_texts, logit_scale, o);
  const double local = loss.item();
  const double value = dist::all_reduce_scalar(*comm, local * static_cast<double>(n)) / static_cast<double>(total);
  return {mul(loss, static_cast<double>(comm->world_size()) * static_cast<double>(n) / static_cast<double>(total)),
          value};
}

// Tokens the MLM loss counts, summed over ranks.
inline int64_t mlm_tokens(dist::Communicator* comm, const std::vector<const ClipMicroBatch*>& micro, int64_t ignore) {
  int64_t tokens = 0;
  for (const auto* mb : micro)
    for (int64_t id : mb->labels.to_vector()) tokens += id != ignore;
  return comm ? dist::all_reduce_scalar(*comm, tokens) : tokens;
}

}  // namespace detail

// Accumulates the gradients of one optimizer step into the parameters' .grad
// (which the caller zeroes). `gen` is the generator shared by the model's
// random modules (share_generator), needed by `full` to replay dropout.
//
// With options.data_parallel, every rank calls this with its own
// micro-batches: the contrastive loss uses the pairs of all ranks as
// negatives, the MLM mean counts the tokens of all ranks, and the gradients
// are averaged over ranks (communicated on the last backward only), so each
// step equals one process's step on the ranks' batches put together.
inline PretrainStepResult accumulate_gradients(models::clip::VLModel& model, const std::vector<ClipMicroBatch>& micro,
                                               const PretrainStepOptions& options, Generator& gen, int64_t step = 0) {
  MAMCLIP_CHECK(!micro.empty(), value_error, "accumulate_gradients: no micro-batches");
  MAMCLIP_CHECK(options.negatives == "paper" || options.negatives == "full", value_error,
                "accumulate_gradients: negatives must be 'paper' or 'full', got '", options.negatives, "'");
  const AutocastMode amp_mode = detail::precision_mode(options.precision, "accumulate_gradients");
  const DeviceType device = model.logit_scale.device().type;
  const double ls = options.loss_scale;
  const double k = static_cast<double>(micro.size());
  const auto& lo = options.loss;
  const bool mlm = model.config().mlm;
  dist::DataParallel* dp = options.data_parallel;
  dist::Communicator* comm = dp ? &dp->communicator() : nullptr;
  const double world = comm ? comm->world_size() : 1;
  auto set_sync = [&](bool on) {
    if (dp) dp->set_sync(on);
  };
  PretrainStepResult r;

  if (options.negatives == "paper") {
    for (size_t i = 0; i < micro.size(); ++i) {
      const auto& mb = micro[i];
      set_sync(i + 1 == micro.size());
      Tensor<float> total;
      double mlm_value = 0;
      detail::RankLoss c;
      {
        const AutocastGuard amp(device, amp_mode.dtype, amp_mode.enabled);
        // VLModel::forward's order (image, text, MLM branch), so the random draws are the same.
        const Tensor<float> img = model.encode_image(mb.images);
        const auto text = model.encode_text(mb.input_ids);
        c = detail::contrastive_over_ranks(comm, img, text.features, model.logit_scale, lo);
        check_finite(c.value, "contrastive", step);
        total = c.weighted;
        if (mlm) {
          const int64_t tokens = detail::mlm_tokens(comm, {&mb}, lo.ignore_index);
          if (tokens > 0) {
            const Tensor<float> nll = model.mlm_nll_sum(text.hidden, img, mb.labels, lo.ignore_index);
            const double local = nll.item();
            mlm_value = (comm ? dist::all_reduce_scalar(*comm, local) : local) / static_cast<double>(tokens);
            check_finite(mlm_value, "MLM", step);
            total = add(total, mul(nll, lo.mlm_coeff * world / static_cast<double>(tokens)));
          }
        }
      }
      const double value = c.value + (mlm ? lo.mlm_coeff * mlm_value : 0.0);
      check_finite(value, "total", step);
      mul(total, ls / k).backward();
      r.loss += value / k;
      r.contrastive += c.value / k;
      r.mlm += mlm_value / k;
      r.logit_scale = std::exp(model.logit_scale.item());
    }
    if (dp) dp->finish_gradient_sync();
    return r;
  }

  // 1. Features of every micro-batch, without a graph; remember where each
  //    micro-batch's random draws start.
  Generator& fallback = default_generator();
  std::vector<std::pair<Generator, Generator>> starts;
  std::vector<Tensor<float>> image_parts, text_parts;
  {
    autograd::NoGradGuard no_grad;
    const AutocastGuard amp(device, amp_mode.dtype, amp_mode.enabled);
    for (const auto& mb : micro) {
      starts.emplace_back(gen, fallback);
      image_parts.push_back(model.encode_image(mb.images));
      text_parts.push_back(model.encode_text(mb.input_ids).features);
    }
  }
  const Generator after(gen), fallback_after(fallback);

  // 2. The contrastive loss over the whole effective batch (of all ranks); its
  //    gradient reaches logit_scale directly and the features as leaves.
  set_sync(false);
  Tensor<float> images = cat(image_parts, 0).detach();
  Tensor<float> texts = cat(text_parts, 0).detach();
  images.set_requires_grad();
  texts.set_requires_grad();
  const Tensor<float> logit_scale = model.logit_scale;
  const auto contrastive = detail::contrastive_over_ranks(comm, images, texts, logit_scale, lo);
  r.contrastive = contrastive.value;
  check_finite(r.contrastive, "contrastive", step);
  mul(contrastive.weighted, ls).backward();  // scaled feature gradients carry the scale into step 3
  const Tensor<float> image_grad = images.grad(), text_grad = texts.grad();
  r.logit_scale = std::exp(logit_scale.item());

  // The MLM loss is the mean over the non-ignored tokens of the whole batch.
  std::vector<const ClipMicroBatch*> all;
  for (const auto& mb : micro) all.push_back(&mb);
  const int64_t tokens = mlm ? detail::mlm_tokens(comm, all, lo.ignore_index) : 0;

  // 3. Each micro-batch again, with its graph, backpropagating its slice.
  int64_t row = 0;
  double mlm_sum = 0;
  for (size_t i = 0; i < micro.size(); ++i) {
    const auto& mb = micro[i];
    set_sync(i + 1 == micro.size());
    gen = starts[i].first;
    fallback = starts[i].second;
    const int64_t b = mb.images.size(0);
    Tensor<float> surrogate;
    {
      const AutocastGuard amp(device, amp_mode.dtype, amp_mode.enabled);  // as the cached features were computed
      const Tensor<float> img = model.encode_image(mb.images);
      const auto text = model.encode_text(mb.input_ids);
      surrogate = add(sum(mul(img, image_grad.narrow(0, row, b))), sum(mul(text.features, text_grad.narrow(0, row, b))));
      if (mlm && tokens > 0) {
        const Tensor<float> nll = model.mlm_nll_sum(text.hidden, img, mb.labels, lo.ignore_index);
        const double part = nll.item();
        check_finite(part, "MLM", step);
        mlm_sum += part;
        surrogate = add(surrogate, mul(nll, ls * lo.mlm_coeff * world / static_cast<double>(tokens)));
      }
    }
    surrogate.backward();
    row += b;
  }
  if (dp) dp->finish_gradient_sync();
  gen = after;
  fallback = fallback_after;
  if (mlm && tokens > 0) r.mlm = (comm ? dist::all_reduce_scalar(*comm, mlm_sum) : mlm_sum) / static_cast<double>(tokens);
  r.loss = r.contrastive + (mlm ? lo.mlm_coeff * r.mlm : 0.0);
  check_finite(r.loss, "total", step);
  return r;
}

// One optimizer step: zero, accumulate, check, update. With an enabled
// scaler (fp16) the gradients are of loss x scale, unscaled before the
// update; a step whose gradients hold an inf or NaN is skipped (r.skipped)
// instead of stopping training, and the scaler adjusts its scale.
inline PretrainStepResult pretrain_step(models::clip::VLModel& model, optim::AdamW& optimizer,
                                        const std::vector<ClipMicroBatch>& micro, const PretrainStepOptions& options,
                                        Generator& gen, int64_t step = 0, optim::GradScaler* scaler = nullptr) {
  optimizer.zero_grad();
  const bool scaled = scaler && scaler->enabled();
  PretrainStepOptions o = options;
  if (scaled) o.loss_scale = scaler->get_scale();
  PretrainStepResult r = accumulate_gradients(model, micro, o, gen, step);
  if (scaled) {
    r.skipped = !scaler->step(optimizer);
    scaler->update();
    return r;
  }
  check_finite_gradients(model, step);
  optimizer.step();
  return r;
}

// Mean loss over micro-batches without gradients (the validation loss). With
// a communicator, every rank passes its shard and all get the loss over all
// ranks' pairs (global negatives, MLM over all tokens).
inline PretrainStepResult evaluate_loss(models::clip::VLModel& model, const std::vector<ClipMicroBatch>& micro,
                                        const models::clip::VLLossOptions& options,
                                        dist::Communicator* comm = nullptr, const std::string& precision = "fp32") {
  autograd::NoGradGuard no_grad;
  const AutocastMode mode = detail::precision_mode(precision, "evaluate_loss");
  const AutocastGuard amp(model.logit_scale.device().type, mode.dtype, mode.enabled);
  PretrainStepResult r;
  for (const auto& mb : micro) {
    const Tensor<float> img = model.encode_image(mb.images);
    const auto text = model.encode_text(mb.input_ids);
    const auto c = detail::contrastive_over_ranks(comm, img, text.features, model.logit_scale, options);
    const bool with_mlm = model.config().mlm;
    double mlm = 0;
    if (with_mlm) {
      const int64_t tokens = detail::mlm_tokens(comm, {&mb}, options.ignore_index);
      const double local = model.mlm_nll_sum(text.hidden, img, mb.labels, options.ignore_index).item();
      mlm = (comm ? dist::all_reduce_scalar(*comm, local) : local) / static_cast<double>(std::max<int64_t>(tokens, 1));
    }
    r.contrastive += c.value;
    r.mlm += mlm;
    r.loss += c.value + (with_mlm ? options.mlm_coeff * mlm : 0.0);
    r.logit_scale = std::exp(model.logit_scale.item());
  }
  const double n = static_cast<double>(std::max<size_t>(micro.size(), 1));
  r.loss /= n;
  r.contrastive /= n;
  r.mlm /= n;
  return r;
}

}  // namespace mamclip::train
