#pragma once
// Parameter initialisers with torch.nn.init semantics (bounds, fans, gains).
// Each fills a tensor in place, outside the graph, from a Generator, so a
// model built with the same seed has the same weights.

#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include "mamclip/autograd/grad_mode.hpp"
#include "mamclip/core/factory.hpp"

namespace mamclip::nn::init {

enum class FanMode { fan_in, fan_out };
enum class Nonlinearity { linear, sigmoid, tanh, relu, leaky_relu };

// torch.nn.init.calculate_gain; `param` is leaky_relu's negative slope.
inline double calculate_gain(Nonlinearity nl, double param = 0.01) {
  switch (nl) {
    case Nonlinearity::linear:
    case Nonlinearity::sigmoid: return 1.0;
    case Nonlinearity::tanh: return 5.0 / 3.0;
    case Nonlinearity::relu: return std::sqrt(2.0);
    case Nonlinearity::leaky_relu: return std::sqrt(2.0 / (1.0 + param * param));
  }
  throw value_error("calculate_gain: unknown nonlinearity");
}

// (fan_in, fan_out) of a weight [out, in, k...]: in * prod(k), out * prod(k).
inline std::pair<int64_t, int64_t> fans(const Shape& shape, const char* op) {
  MAMCLIP_CHECK(shape.size() >= 2, value_error, op, ": fan in and fan out need a tensor with at least 2 dims, got shape ",
                shape_str(shape));
  int64_t receptive = 1;
  for (size_t d = 2; d < shape.size(); ++d) receptive *= shape[d];
  return {shape[1] * receptive, shape[0] * receptive};
}

template <class T>
Tensor<T>& uniform_(Tensor<T>& t, double a = 0.0, double b = 1.0, Generator& gen = default_generator()) {
  NoGradGuard no_grad;
  return mamclip::uniform_(t, a, b, gen);
}

template <class T>
Tensor<T>& normal_(Tensor<T>& t, double mean = 0.0, double std = 1.0, Generator& gen = default_generator()) {
  NoGradGuard no_grad;
  return mamclip::normal_(t, mean, std, gen);
}

template <class T>
Tensor<T>& constant_(Tensor<T>& t, double value) {
  return t.fill_(static_cast<T>(value));
}
template <class T>
Tensor<T>& zeros_(Tensor<T>& t) { return init::constant_(t, 0.0); }
template <class T>
Tensor<T>& ones_(Tensor<T>& t) { return init::constant_(t, 1.0); }

namespace detail {
inline double normal_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

// The standard normal quantile Phi^-1(p) for p in (0, 1): Acklam's rational
// approximation (relative error 1e-9) refined by one Halley step on erfc,
// which brings it to double precision.
inline double normal_quantile(double p) {
  static constexpr double a[] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                                 1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
  static constexpr double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                                 6.680131188771972e+01,  -1.328068155288572e+01};
  static constexpr double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                                 -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
  static constexpr double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                                 3.754408661907416e+00};
  if (p <= 0) return -std::numeric_limits<double>::infinity();
  if (p >= 1) return std::numeric_limits<double>::infinity();
  double x;
  if (p < 0.02425) {
    const double q = std::sqrt(-2 * std::log(p));
    x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  } else if (p <= 1 - 0.02425) {
    const double q = p - 0.5, r = q * q;
    x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
  } else {
    const double q = std::sqrt(-2 * std::log1p(-p));
    x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  }
  const double e = normal_cdf(x) - p;
  const double u = e * 2.5066282746310002 * std::exp(x * x / 2);
  return x - u / (1 + x * u / 2);
}
}  // namespace detail

// Normal(mean, std) truncated to [a, b] (absolute bounds, as in PyTorch and
// timm): inverse-CDF sampling of a uniform draw over [Phi(alpha), Phi(beta)],
// then clamped to [a, b] against rounding. Every value lies in [a, b].
template <class T>
Tensor<T>& trunc_normal_(Tensor<T>& t, double mean = 0.0, double std = 1.0, double a = -2.0, double b = 2.0,
                         Generator& gen = default_generator()) {
  MAMCLIP_CHECK(std > 0, value_error, "trunc_normal_: std must be positive, got ", std);
  MAMCLIP_CHECK(a < b, value_error, "trunc_normal_: the bounds must satisfy a < b, got a = ", a, " and b = ", b);
  const double lo = detail::normal_cdf((a - mean) / std), hi = detail::normal_cdf((b - mean) / std);
  const uint64_t seed = gen.seed(), offset = gen.next_offset();
  std::vector<T> v(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) {
    const double u = lo + (hi - lo) * (1.0 - Philox::uniform(seed, offset, i));  // in [lo, hi)
    double x = mean + std * detail::normal_quantile(u);
    x = std::min(std::max(x, a), b);
    v[i] = static_cast<T>(x);
    // Rounding to T may step past a bound; keep the guarantee in T too.
    if constexpr (std::is_floating_point_v<T>) {
      if (static_cast<double>(v[i]) < a) v[i] = std::nextafter(v[i], static_cast<T>(b));
      if (static_cast<double>(v[i]) > b) v[i] = std::nextafter(v[i], static_cast<T>(a));
    }
  }
  NoGradGuard no_grad;
  t.copy_(from_vector<T>(v, t.shape()));
  return t;
}

// U(-bound, bound) with bound = gain * sqrt(3 / fan): He et al. initialisation.
// Linear's default is kaiming_uniform_(w, sqrt(5)), i.e. bound = 1 / sqrt(fan_in).
template <class T>
Tensor<T>& kaiming_uniform_(Tensor<T>& t, double a = 0.0, FanMode mode = FanMode::fan_in,
                            Nonlinearity nonlinearity = Nonlinearity::leaky_relu, Generator& gen = default_generator()) {
  const auto [fan_in, fan_out] = fans(t.shape(), "kaiming_uniform_");
  const int64_t fan = mode == FanMode::fan_in ? fan_in : fan_out;
  if (t.numel() == 0) return t;
  const double bound = calculate_gain(nonlinearity, a) * std::sqrt(3.0 / static_cast<double>(fan));
  return init::uniform_(t, -bound, bound, gen);
}

template <class T>
Tensor<T>& kaiming_normal_(Tensor<T>& t, double a = 0.0, FanMode mode = FanMode::fan_in,
                           Nonlinearity nonlinearity = Nonlinearity::leaky_relu, Generator& gen = default_generator()) {
  const auto [fan_in, fan_out] = fans(t.shape(), "kaiming_normal_");
  const int64_t fan = mode == FanMode::fan_in ? fan_in : fan_out;
  if (t.numel() == 0) return t;
  return init::normal_(t, 0.0, calculate_gain(nonlinearity, a) / std::sqrt(static_cast<double>(fan)), gen);
}

// U(-bound, bound) with bound = gain * sqrt(6 / (fan_in + fan_out)): Glorot initialisation.
template <class T>
Tensor<T>& xavier_uniform_(Tensor<T>& t, double gain = 1.0, Generator& gen = default_generator()) {
  const auto [fan_in, fan_out] = fans(t.shape(), "xavier_uniform_");
  if (t.numel() == 0) return t;
  const double bound = gain * std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
  return init::uniform_(t, -bound, bound, gen);
}

template <class T>
Tensor<T>& xavier_normal_(Tensor<T>& t, double gain = 1.0, Generator& gen = default_generator()) {
  const auto [fan_in, fan_out] = fans(t.shape(), "xavier_normal_");
  if (t.numel() == 0) return t;
  return init::normal_(t, 0.0, gain * std::sqrt(2.0 / static_cast<double>(fan_in + fan_out)), gen);
}

}  // namespace mamclip::nn::init
