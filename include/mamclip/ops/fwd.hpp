#pragma once
// Declarations of every public op, with their default arguments.
//
// Op families call each other (expand's backward reduces; sum's backward
// expands), so each family header includes this file instead of the others, and
// mamclip.hpp includes all families. Definitions never repeat default arguments.

#include <array>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "mamclip/core/random.hpp"
#include "mamclip/core/tensor.hpp"

namespace mamclip {

// ---- elementwise (ops/elementwise)
enum class GeluApproximation { none, tanh };
template <class T> Tensor<T> add(const Tensor<T>& a, const Tensor<T>& b);
template <class T> Tensor<T> sub(const Tensor<T>& a, const Tensor<T>& b);
template <class T> Tensor<T> mul(const Tensor<T>& a, const Tensor<T>& b);
template <class T> Tensor<T> div(const Tensor<T>& a, const Tensor<T>& b);
template <class T> Tensor<T> add(const Tensor<T>& a, double b);
template <class T> Tensor<T> mul(const Tensor<T>& a, double b);
template <class T> Tensor<T> rsub(const Tensor<T>& a, double b);  // b - a
template <class T> Tensor<T> rdiv(const Tensor<T>& a, double b);  // b / a
template <class T> Tensor<T> neg(const Tensor<T>& x);
template <class T> Tensor<T> pow(const Tensor<T>& x, double exponent);
template <class T> Tensor<T> pow(const Tensor<T>& x, const Tensor<T>& exponent);
template <class T> Tensor<T> exp(const Tensor<T>& x);
template <class T> Tensor<T> log(const Tensor<T>& x);
template <class T> Tensor<T> sqrt(const Tensor<T>& x);
template <class T> Tensor<T> rsqrt(const Tensor<T>& x);
template <class T> Tensor<T> abs(const Tensor<T>& x);
template <class T> Tensor<T> tanh(const Tensor<T>& x);
template <class T> Tensor<T> sigmoid(const Tensor<T>& x);
template <class T> Tensor<T> relu(const Tensor<T>& x);
template <class T> Tensor<T> gelu(const Tensor<T>& x, GeluApproximation approximate = GeluApproximation::none);
template <class T> Tensor<T> clamp(const Tensor<T>& x, std::optional<double> min, std::optional<double> max);
template <class T> Tensor<T> where(const Tensor<bool>& condition, const Tensor<T>& a, const Tensor<T>& b);
template <class T> Tensor<T> masked_fill(const Tensor<T>& x, const Tensor<bool>& mask, double value);
// Inverted dropout: zeroes elements with probability p and scales the rest by 1/(1-p); identity when !training.
template <class T> Tensor<T> dropout(const Tensor<T>& x, double p, bool training, Generator& gen = default_generator());
// Stochastic depth (timm's drop_path): zeroes whole samples (slices along dim 0) with probability p and, when
// scale_by_keep, scales the kept ones by 1/(1-p); identity when !training or p == 0.
template <class T> Tensor<T> drop_path(const Tensor<T>& x, double p, bool training, Generator& gen = default_generator(),
                                       bool scale_by_keep = true);

// ---- reduce (ops/reduce): dims may be negative; an empty dims list reduces all dims
template <class T> Tensor<T> sum(const Tensor<T>& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
template <class T> Tensor<T> mean(const Tensor<T>& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
template <class T> Tensor<T> amax(const Tensor<T>& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
template <class T> Tensor<T> amin(const Tensor<T>& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
// Values and int64 indices of the max / min along one dim (first index on ties).
template <class T> std::pair<Tensor<T>, Tensor<int64_t>> max(const Tensor<T>& x, int64_t dim, bool keepdim = false);
template <class T> std::pair<Tensor<T>, Tensor<int64_t>> min(const Tensor<T>& x, int64_t dim, bool keepdim = false);
// Variance with Bessel's `correction` (1 = unbiased, PyTorch's default).
template <class T> Tensor<T> var(const Tensor<T>& x, const std::vector<int64_t>& dims = {}, int64_t correction = 1, bool keepdim = false);
template <class T> Tensor<T> logsumexp(const Tensor<T>& x, const std::vector<int64_t>& dims, bool keepdim = false);
// Sums a broadcast result back to `shape` (the inverse of expand).
template <class T> Tensor<T> sum_to(const Tensor<T>& x, const Shape& shape);

// ---- matmul (ops/matmul)
template <class T> Tensor<T> matmul(const Tensor<T>& a, const Tensor<T>& b);  // torch.matmul semantics
template <class T> Tensor<T> bmm(const Tensor<T>& a, const Tensor<T>& b);     // [B,n,k] @ [B,k,m]
// x @ weight^T + bias; weight is [out, in] as in torch.nn.Linear; bias may be undefined.
template <class T> Tensor<T> linear(const Tensor<T>& x, const Tensor<T>& weight, const Tensor<T>& bias = Tensor<T>());

// ---- shape (ops/shape): the view methods of Tensor, and
template <class T> Tensor<T> cat(const std::vector<Tensor<T>>& tensors, int64_t dim = 0);
template <class T> Tensor<T> stack(const std::vector<Tensor<T>>& tensors, int64_t dim = 0);
template <class T> std::vector<Tensor<T>> split(const Tensor<T>& x, int64_t split_size, int64_t dim = 0);
template <class T> std::vector<Tensor<T>> split(const Tensor<T>& x, const std::vector<int64_t>& sizes, int64_t dim = 0);

// ---- indexing (ops/indexing)
template <class T> Tensor<T> index_select(const Tensor<T>& x, int64_t dim, const Tensor<int64_t>& index);
template <class T> Tensor<T> gather(const Tensor<T>& x, int64_t dim, const Tensor<int64_t>& index);
// Rows of `weight` [num, dim] picked by `ids` (any shape); rows equal to padding_idx get no gradient.
template <class T> Tensor<T> embedding(const Tensor<T>& weight, const Tensor<int64_t>& ids, std::optional<int64_t> padding_idx = std::nullopt);

// ---- softmax (ops/softmax)
template <class T> Tensor<T> softmax(const Tensor<T>& x, int64_t dim);
template <class T> Tensor<T> log_softmax(const Tensor<T>& x, int64_t dim);

// ---- attention (ops/attention)
// softmax(q k^T * scale + masks) v over q [B, H, Lq, D], k and v [B, H, Lk, D] -> [B, H, Lq, D].
// key_padding_mask: bool [B, Lk], true = attend (HF's attention_mask == 1); undefined = none.
// causal: query i sees keys j <= i. scale defaults to 1/sqrt(D). dropout_p drops attention
// probabilities (inverted dropout) with a Philox stream from `gen`; 0 in eval.
struct AttentionOptions {
  Tensor<bool> key_padding_mask;
  bool causal = false;
  double dropout_p = 0.0;
  std::optional<double> scale;
};
template <class T> Tensor<T> scaled_dot_product_attention(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                                          const AttentionOptions& options = {}, Generator& gen = default_generator());

// ---- conv (ops/conv)
// torch.nn.functional.conv2d: x [N, C_in, H, W], weight [C_out, C_in / groups, kH, kW], bias [C_out] or undefined
// -> [N, C_out, H_out, W_out] with H_out = (H + 2 padding - dilation (kH - 1) - 1) / stride + 1 (likewise W).
struct Conv2dOptions {
  std::array<int64_t, 2> stride{1, 1};
  std::array<int64_t, 2> padding{0, 0};
  std::array<int64_t, 2> dilation{1, 1};
  int64_t groups = 1;
};
template <class T> Tensor<T> conv2d(const Tensor<T>& x, const Tensor<T>& weight, const Tensor<T>& bias = Tensor<T>(),
                                    const Conv2dOptions& options = {});

// ---- pool (ops/pool): x [N, C, H, W]
// torch.nn.functional.avg_pool2d; a zero stride means stride = kernel_size.
struct AvgPool2dOptions {
  std::array<int64_t, 2> stride{0, 0};
  std::array<int64_t, 2> padding{0, 0};
  bool ceil_mode = false;
  bool count_include_pad = true;
};
template <class T> Tensor<T> avg_pool2d(const Tensor<T>& x, std::array<int64_t, 2> kernel_size, const AvgPool2dOptions& options = {});
// torch.nn.functional.adaptive_avg_pool2d (bins [floor(i H / out), ceil((i + 1) H / out)) ).
template <class T> Tensor<T> adaptive_avg_pool2d(const Tensor<T>& x, std::array<int64_t, 2> output_size);

// ---- norm (ops/norm)
// Normalises over the trailing dims `normalized_shape`; weight and bias (that shape) may be undefined.
template <class T> Tensor<T> layer_norm(const Tensor<T>& x, const Shape& normalized_shape, const Tensor<T>& weight = Tensor<T>(),
                                        const Tensor<T>& bias = Tensor<T>(), double eps = 1e-5);
// LayerNorm over the channel dim of x [N, C, H, W] (timm's LayerNorm2d); weight and bias [C] may be undefined.
template <class T> Tensor<T> layer_norm2d(const Tensor<T>& x, const Tensor<T>& weight = Tensor<T>(), const Tensor<T>& bias = Tensor<T>(),
                                          double eps = 1e-6);
// x / max(||x||_p, eps) along dim (torch.nn.functional.normalize).
template <class T> Tensor<T> normalize(const Tensor<T>& x, double p = 2.0, int64_t dim = -1, double eps = 1e-12);

// ---- loss (ops/loss)
enum class Reduction { none, mean, sum };
struct LossOptions {
  Reduction reduction = Reduction::mean;
  int64_t ignore_index = -100;
  double label_smoothing = 0.0;  // cross_entropy only
};
// logits [N, C] (or [N, C, d1, ...]); target int64 [N] (or [N, d1, ...]); PyTorch semantics.
template <class T> Tensor<T> cross_entropy(const Tensor<T>& logits, const Tensor<int64_t>& target, const LossOptions& options = {});
template <class T> Tensor<T> nll_loss(const Tensor<T>& log_probs, const Tensor<int64_t>& target, const LossOptions& options = {});
template <class T> Tensor<T> mse_loss(const Tensor<T>& input, const Tensor<T>& target, Reduction reduction = Reduction::mean);
// Symmetric CLIP / InfoNCE loss (open_clip's ClipLoss, fused; ops/loss/clip.hpp): S = exp(logit_scale) · I Tᵀ over
// image_features I [Bi, D] and text_features T [Bt, D]; logit_scale ([] or [1]) holds the log of the scale. Pair i < B
// is (image row image_offset + i, text row label_offset + i); loss = (mean_i CE(S[io + i, :], to + i) +
// mean_i CE(S[:, to + i], io + i)) / 2. batch defaults to Bi - image_offset.
struct ClipLossOptions {
  std::optional<double> max_logit_scale;  // clamp of logit_scale before exp (e.g. log(100)); no gradient when clamped
  int64_t label_offset = 0;               // text row of pair 0 (gathered texts: rank * B)
  int64_t image_offset = 0;               // image row of pair 0 (gathered images: rank * B, with batch = B)
  std::optional<int64_t> batch;           // number of local pairs B
};
template <class T> Tensor<T> clip_loss(const Tensor<T>& image_features, const Tensor<T>& text_features,
                                       const Tensor<T>& logit_scale, const ClipLossOptions& options = {});

}  // namespace mamclip
