#pragma once
// Elementwise ops with PyTorch broadcasting, and their gradients.
//
// Each op computes on the CPU through cpu.hpp, or on another device through the
// kernel registered under the op's name (UnaryKernel / BinaryKernel below).
// Backward formulas are written with public ops, so a device that has the
// forward kernels also has the backward.

#include <cmath>

#if !defined(__CUDACC__)
#include <unsupported/Eigen/SpecialFunctions>
#endif

#include "mamclip/autograd/node.hpp"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/ops/elementwise/binary_index.hpp"
#include "mamclip/ops/elementwise/cpu.hpp"
#include "mamclip/ops/elementwise/gelu_simd.hpp"
#include "mamclip/ops/fwd.hpp"

namespace mamclip {

// Device kernels. The output is contiguous with n elements; p0 and p1 carry
// the op's scalar arguments (exponent, clamp bounds, scalar operand). The
// input (unary: x, read through index's a side) or operands (binary) are
// contiguous with the output's shape when `index` is null, else read through
// index's strides (broadcast and non-contiguous operands without copies;
// binary_index.hpp).
template <class T>
using UnaryKernel = void(T* out, const T* x, int64_t n, const BinaryIndex* index, double p0, double p1);
template <class T>
using BinaryKernel = void(T* out, const T* a, const T* b, int64_t n, const BinaryIndex* index, double p0, double p1);
// where on a device: out[i] = cond[i] ? a[i] : b[i] over out's n contiguous
// elements. Both indexes null: cond, a and b contiguous too. Else cond_a
// gives cond's offsets (its a side) and a's (b side), b_only b's (a side).
template <class T>
using WhereKernel = void(T* out, const bool* cond, const T* a, const T* b, int64_t n, const BinaryIndex* cond_a,
                         const BinaryIndex* b_only);
// Dropout's mask on a device ("dropout"): cpu::bernoulli_mask's arguments and values.
template <class T>
using BernoulliMaskKernel = void(uint64_t seed, uint64_t offset, int64_t n, double keep, double kept, T* out);

namespace detail {

template <class T, class U>
void check_same_device(const char* op, const Tensor<T>& a, const Tensor<U>& b, const char* na = "a", const char* nb = "b") {
  MAMCLIP_CHECK(a.device() == b.device(), device_error, op, ": expected all tensors on one device, but ", na, " is on ",
                a.device().str(), " and ", nb, " is on ", b.device().str());
}

// out = f(x) elementwise; out is contiguous with x's shape and may be x itself.
template <class T, class F>
void map_unary_into(const char* op, Tensor<T>& out, const Tensor<T>& x, F&& f, double p0 = 0, double p1 = 0) {
  if (x.device().is_cpu()) {
    cpu::unary(out, x, std::forward<F>(f));
  } else {
    auto* k = require_kernel<UnaryKernel<T>>(op, dtype_v<T>, x.device());
    if (x.is_contiguous()) {
      k(out.data_ptr(), x.data_ptr(), x.numel(), nullptr, p0, p1);
    } else if (const auto index = make_binary_index(x.shape(), x.strides(), x.strides())) {
      k(out.data_ptr(), x.data_ptr(), x.numel(), &*index, p0, p1);  // read in place through x's strides
    } else {  // past BinaryIndex's limits: a dense copy
      k(out.data_ptr(), contiguous_copy(x).data_ptr(), x.numel(), nullptr, p0, p1);
    }
  }
}

template <class T, class F>
Tensor<T> map_unary(const char* op, const Tensor<T>& x, F&& f, double p0 = 0, double p1 = 0) {
  Tensor<T> out = Tensor<T>::empty(x.shape(), x.device());
  map_unary_into(op, out, x, std::forward<F>(f), p0, p1);
  return out;
}

template <class T, class F>
Tensor<T> map_binary(const char* op, const Tensor<T>& a, const Tensor<T>& b, F&& f, double p0 = 0, double p1 = 0) {
  check_same_device(op, a, b);
  const Shape s = broadcast_shapes(a.shape(), b.shape(), op);
  Tensor<T> out = Tensor<T>::empty(s, a.device());
  if (a.device().is_cpu()) {
    cpu::binary(out, a, b, std::forward<F>(f));
  } else {
    auto* k = require_kernel<BinaryKernel<T>>(op, dtype_v<T>, a.device());
    const Tensor<T> ea = a.detach().expand(s), eb = b.detach().expand(s);
    if (ea.is_contiguous() && eb.is_contiguous()) {
      k(out.data_ptr(), ea.data_ptr(), eb.data_ptr(), out.numel(), nullptr, p0, p1);
    } else if (const auto index = make_binary_index(s, ea.strides(), eb.strides())) {
      k(out.data_ptr(), ea.data_ptr(), eb.data_ptr(), out.numel(), &*index, p0, p1);
    } else {  // past BinaryIndex's limits: dense copies
      const Tensor<T> da = contiguous_copy(ea), db = contiguous_copy(eb);
      k(out.data_ptr(), da.data_ptr(), db.data_ptr(), out.numel(), nullptr, p0, p1);
    }
  }
  return out;
}

template <class T>
using Grads = std::vector<Tensor<T>>;

}  // namespace detail

// ---- binary

template <class T>
Tensor<T> add(const Tensor<T>& a, const Tensor<T>& b) {
  Tensor<T> y = detail::map_binary("add", a, b, [](auto x, auto z) { return x + z; });
  Shape sa = a.shape(), sb = b.shape();
  return autograd::record<T>("AddBackward", {a, b}, y, [sa, sb](const Tensor<T>& g, const std::vector<bool>& need) {
    return detail::Grads<T>{need[0] ? sum_to(g, sa) : Tensor<T>(), need[1] ? sum_to(g, sb) : Tensor<T>()};
  });
}

template <class T>
Tensor<T> sub(const Tensor<T>& a, const Tensor<T>& b) {
  Tensor<T> y = detail::map_binary("sub", a, b, [](auto x, auto z) { return x - z; });
  Shape sa = a.shape(), sb = b.shape();
  return autograd::record<T>("SubBackward", {a, b}, y, [sa, sb](const Tensor<T>& g, const std::vector<bool>& need) {
    return detail::Grads<T>{need[0] ? sum_to(g, sa) : Tensor<T>(), need[1] ? sum_to(neg(g), sb) : Tensor<T>()};
  });
}

template <class T>
Tensor<T> mul(const Tensor<T>& a, const Tensor<T>& b) {
  Tensor<T> y = detail::map_binary("mul", a, b, [](auto x, auto z) { return x * z; });
  return autograd::record<T>("MulBackward", {a, b}, y,
                             [a = a.detach(), b = b.detach()](const Tensor<T>& g, const std::vector<bool>& need) {
                               return detail::Grads<T>{need[0] ? sum_to(mul(g, b), a.shape()) : Tensor<T>(),
                                                       need[1] ? sum_to(mul(g, a), b.shape()) : Tensor<T>()};
                             });
}

template <class T>
Tensor<T> div(const Tensor<T>& a, const Tensor<T>& b) {
  Tensor<T> y = detail::map_binary("div", a, b, [](auto x, auto z) { return x / z; });
  return autograd::record<T>(
      "DivBackward", {a, b}, y,
      [a = a.detach(), b = b.detach(), y = y.detach()](const Tensor<T>& g, const std::vector<bool>& need) {
        Tensor<T> ga = need[0] || need[1] ? div(g, b) : Tensor<T>();
        return detail::Grads<T>{need[0] ? sum_to(ga, a.shape()) : Tensor<T>(),
                                need[1] ? sum_to(neg(mul(ga, y)), b.shape()) : Tensor<T>()};
      });
}

template <class T>
Tensor<T> pow(const Tensor<T>& x, const Tensor<T>& e) {
  Tensor<T> y = detail::map_binary("pow", x, e, [](auto b, auto p) { return std::pow(b, p); });
  return autograd::record<T>(
      "PowBackward", {x, e}, y,
      [x = x.detach(), e = e.detach(), y = y.detach()](const Tensor<T>& g, const std::vector<bool>& need) {
        Tensor<T> gx, ge;
        if (need[0]) gx = sum_to(mul(g, mul(e, pow(x, add(e, -1.0)))), x.shape());
        // d/de x^e = x^e log x, taken as 0 where x == 0 (PyTorch's convention, avoids 0 * -inf).
        if (need[1])
          ge = sum_to(mul(g, detail::map_binary("pow_exponent_grad", y, x,
                                                [](auto yy, auto xx) { return xx == 0 ? decltype(yy)(0) : yy * std::log(xx); })),
                      e.shape());
        return detail::Grads<T>{gx, ge};
      });
}

// ---- with a scalar

namespace detail {
// x *= s in place, outside the graph: for buffers the library owns (gradients,
// gradient buckets), without a temporary of x's size. A non-contiguous x
// goes through one.
template <class T>
void scale_in_place(Tensor<T>& x, double s) {
  NoGradGuard no_grad;
  Tensor<T> target = x.detach();
  if (!target.is_contiguous()) {
    target.copy_(mul(target, s));
    return;
  }
  const auto c = static_cast<acc_t<T>>(s);
  map_unary_into("mul_scalar", target, target, [c](auto v) { return v * c; }, s);
}
}  // namespace detail

template <class T>
Tensor<T> add(const Tensor<T>& a, double s) {
  const auto c = static_cast<acc_t<T>>(s);
  Tensor<T> y = detail::map_unary("add_scalar", a, [c](auto x) { return x + c; }, s);
  return autograd::record<T>("AddBackward", {a}, y, [](const Tensor<T>& g) { return detail::Grads<T>{g}; });
}

template <class T>
Tensor<T> mul(const Tensor<T>& a, double s) {
  const auto c = static_cast<acc_t<T>>(s);
  Tensor<T> y = detail::map_unary("mul_scalar", a, [c](auto x) { return x * c; }, s);
  return autograd::record<T>("MulBackward", {a}, y, [s](const Tensor<T>& g) { return detail::Grads<T>{mul(g, s)}; });
}

template <class T>
Tensor<T> rsub(const Tensor<T>& a, double s) {
  const auto c = static_cast<acc_t<T>>(s);
  Tensor<T> y = detail::map_unary("rsub_scalar", a, [c](auto x) { return c - x; }, s);
  return autograd::record<T>("RsubBackward", {a}, y, [](const Tensor<T>& g) { return detail::Grads<T>{neg(g)}; });
}

template <class T>
Tensor<T> rdiv(const Tensor<T>& a, double s) {
  const auto c = static_cast<acc_t<T>>(s);
  Tensor<T> y = detail::map_unary("rdiv_scalar", a, [c](auto x) { return c / x; }, s);
  return autograd::record<T>("RdivBackward", {a}, y, [a = a.detach(), y = y.detach()](const Tensor<T>& g) {
    return detail::Grads<T>{neg(div(mul(g, y), a))};
  });
}

template <class T>
Tensor<T> pow(const Tensor<T>& x, double p) {
  const auto c = static_cast<acc_t<T>>(p);
  Tensor<T> y = detail::map_unary("pow_scalar", x, [c](auto v) { return std::pow(v, c); }, p);
  return autograd::record<T>("PowBackward", {x}, y, [x = x.detach(), p](const Tensor<T>& g) {
    if (p == 0) return detail::Grads<T>{mul(g, 0.0)};
    return detail::Grads<T>{mul(mul(g, pow(x, p - 1)), p)};
  });
}

// ---- unary

template <class T>
Tensor<T> neg(const Tensor<T>& x) {
  Tensor<T> y = detail::map_unary("neg", x, [](auto v) { return -v; });
  return autograd::record<T>("NegBackward", {x}, y, [](const Tensor<T>& g) { return detail::Grads<T>{neg(g)}; });
}

template <class T>
Tensor<T> exp(const Tensor<T>& x) {
  Tensor<T> y = detail::map_unary("exp", x, [](auto v) { return std::exp(v); });
  return autograd::record<T>("ExpBackward", {x}, y, [y = y.detach()](const Tensor<T>& g) { return detail::Grads<T>{mul(g, y)}; });
}

template <class T>
Tensor<T> log(const Tensor<T>& x) {
  Tensor<T> y = detail::map_unary("log", x, [](auto v) { return std::log(v); });
  return autograd::record<T>("LogBackward", {x}, y, [x = x.detach()](const Tensor<T>& g) { return detail::Grads<T>{div(g, x)}; });
}

template <class T>
Tensor<T> sqrt(const Tensor<T>& x) {
  Tensor<T> y = detail::map_unary("sqrt", x, [](auto v) { return std::sqrt(v); });
  return autograd::record<T>("SqrtBackward", {x}, y,
                             [y = y.detach()](const Tensor<T>& g) { return detail::Grads<T>{div(mul(g, 0.5), y)}; });
}

template <class T>
Tensor<T> rsqrt(const Tensor<T>& x) {
  Tensor<T> y = detail::map_unary("rsqrt", x, [](auto v) { return decltype(v)(1) / std::sqrt(v); });
  // d/dx x^{-1/2} = -1/2 x^{-3/2} = -1/2 y^3
  return autograd::record<T>("RsqrtBackward", {x}, y, [y = y.detach()](const Tensor<T>& g) {
    return detail::Grads<T>{mul(mul(g, pow(y, 3.0)), -0.5)};
  });
}

template <class T>
Tensor<T> abs(const Tensor<T>& x) {
  Tensor<T> y = detail::map_unary("abs", x, [](auto v) { return std::abs(v); });
  return autograd::record<T>("AbsBackward", {x}, y, [x = x.detach()](const Tensor<T>& g) {
    return detail::Grads<T>{detail::map_binary("abs_backward", g, x, [](auto gg, auto xx) {
      return xx > 0 ? gg : (xx < 0 ? -gg : decltype(gg)(0));
    })};
  });
}

template <class T>
Tensor<T> tanh(const Tensor<T>& x) {
  Tensor<T> y = detail::map_unary("tanh", x, [](auto v) { return std::tanh(v); });
  return autograd::record<T>("TanhBackward", {x}, y, [y = y.detach()](const Tensor<T>& g) {
    return detail::Grads<T>{detail::map_binary("tanh_backward", g, y, [](auto gg, auto yy) { return gg * (1 - yy * yy); })};
  });
}

template <class T>
Tensor<T> sigmoid(const Tensor<T>& x) {
  Tensor<T> y = detail::map_unary("sigmoid", x, [](auto v) {
    // Split by sign so exp never overflows.
    using A = decltype(v);
    if (v >= 0) return A(1) / (A(1) + std::exp(-v));
    const A e = std::exp(v);
    return e / (A(1) + e);
  });
  return autograd::record<T>("SigmoidBackward", {x}, y, [y = y.detach()](const Tensor<T>& g) {
    return detail::Grads<T>{detail::map_binary("sigmoid_backward", g, y, [](auto gg, auto yy) { return gg * yy * (1 - yy); })};
  });
}

template <class T>
Tensor<T> relu(const Tensor<T>& x) {
  Tensor<T> y = detail::map_unary("relu", x, [](auto v) { return v > 0 ? v : decltype(v)(0); });
  return autograd::record<T>("ReluBackward", {x}, y, [y = y.detach()](const Tensor<T>& g) {
    return detail::Grads<T>{detail::map_binary("relu_backward", g, y, [](auto gg, auto yy) { return yy > 0 ? gg : decltype(gg)(0); })};
  });
}

namespace detail {
// GELU and its derivative, exact (erf) and tanh forms, as in torch.nn.functional.gelu.
template <class A>
A gelu_value(A x, bool tanh_form) {
  if (tanh_form) {
    const A k = A(0.7978845608028654), c = A(0.044715);  // sqrt(2/pi)
    return A(0.5) * x * (A(1) + std::tanh(k * (x + c * x * x * x)));
  }
  return A(0.5) * x * (A(1) + std::erf(x * A(0.7071067811865476)));
}
template <class A>
A gelu_derivative(A x, bool tanh_form) {
  if (tanh_form) {
    const A k = A(0.7978845608028654), c = A(0.044715);
    const A inner = k * (x + c * x * x * x);
    const A t = std::tanh(inner);
    return A(0.5) * (A(1) + t) + A(0.5) * x * (A(1) - t * t) * k * (A(1) + A(3) * c * x * x);
  }
  const A cdf = A(0.5) * (A(1) + std::erf(x * A(0.7071067811865476)));
  const A pdf = std::exp(A(-0.5) * x * x) * A(0.3989422804014327);  // 1/sqrt(2 pi)
  return cdf + x * pdf;
}
}  // namespace detail

namespace detail {
// Exact GELU on contiguous float CPU data, vectorised: our AVX2 / AVX-512
// kernels (gelu_simd.hpp) where the CPU has them, else Eigen's vectorised erf
// (a rational approximation accurate to a few ulp, as PyTorch's vectorised CPU
// kernel is). BERT's FFN spends more time in a scalar std::erf loop than in
// its layer norms. Returns an undefined tensor when the fast path does not apply.
template <class T>
Tensor<T> gelu_erf_fast(const Tensor<T>& x, const Tensor<T>& g) {
#if !defined(__CUDACC__)
  if constexpr (std::is_same_v<T, float>) {
    const bool with_g = g.defined();
    if (!x.device().is_cpu() || !x.is_contiguous() || x.numel() == 0 ||
        (with_g && (!g.device().is_cpu() || !g.is_contiguous() || g.shape() != x.shape())))
      return Tensor<T>();
    Tensor<T> out = Tensor<T>::empty(x.shape());
    const float* px = x.data_ptr();
    const float* pg = with_g ? g.data_ptr() : nullptr;
    float* po = out.data_ptr();
    // Fixed blocks (the last one zero-padded): every element takes the same
    // vector code wherever a thread's range starts, so results do not depend
    // on the thread count.
    constexpr int64_t kBlock = cpu::gelu_simd::kBlock;
    using Block = Eigen::Array<float, kBlock, 1>;
    const int64_t n = x.numel();
    const bool simd = cpu::gelu_simd::available();
    detail::parallel_for(
        (n + kBlock - 1) / kBlock,
        [&](int64_t first, int64_t last) {
          Block xb, gb, ob;
          for (int64_t blk = first; blk < last; ++blk) {
            const int64_t i0 = blk * kBlock, len = std::min(kBlock, n - i0);
            if (simd && len == kBlock) {
              cpu::gelu_simd::block(px + i0, pg ? pg + i0 : nullptr, po + i0);
              continue;
            }
            xb.setZero();
            std::copy_n(px + i0, len, xb.data());
            if (simd) {  // the last, partial block: zero-padded copies through the same code
              if (pg) {
                gb.setZero();
                std::copy_n(pg + i0, len, gb.data());
              }
              cpu::gelu_simd::block(xb.data(), pg ? gb.data() : nullptr, ob.data());
              std::copy_n(ob.data(), len, po + i0);
              continue;
            }
            const Block cdf = 0.5f * (1.0f + (xb * 0.70710678118654752f).erf());
            if (!pg) {
              ob = xb * cdf;
            } else {
              gb.setZero();
              std::copy_n(pg + i0, len, gb.data());
              ob = gb * (cdf + xb * (-0.5f * xb.square()).exp() * 0.3989422804014327f);
            }
            std::copy_n(ob.data(), len, po + i0);
          }
        },
        detail::kParallelGrain / kBlock);
    return out;
  }
#endif
  (void)x;
  (void)g;
  return Tensor<T>();
}
}  // namespace detail

template <class T>
Tensor<T> gelu(const Tensor<T>& x, GeluApproximation approximate) {
  const bool tf = approximate == GeluApproximation::tanh;
  Tensor<T> y = tf ? Tensor<T>() : detail::gelu_erf_fast(x.detach(), Tensor<T>());
  if (!y.defined())
    y = detail::map_unary(tf ? "gelu_tanh" : "gelu", x, [tf](auto v) { return detail::gelu_value(v, tf); });
  return autograd::record<T>("GeluBackward", {x}, y, [x = x.detach(), tf](const Tensor<T>& g) {
    Tensor<T> gx = tf ? Tensor<T>() : detail::gelu_erf_fast(x, g);
    if (!gx.defined())
      gx = detail::map_binary(tf ? "gelu_tanh_backward" : "gelu_backward", g, x,
                              [tf](auto gg, auto xx) { return gg * detail::gelu_derivative(xx, tf); });
    return detail::Grads<T>{gx};
  });
}

template <class T>
Tensor<T> clamp(const Tensor<T>& x, std::optional<double> min, std::optional<double> max) {
  MAMCLIP_CHECK(min || max, value_error, "clamp: at least one of min and max must be given");
  MAMCLIP_CHECK(!(min && max) || *min <= *max, value_error, "clamp: min ", *min, " is greater than max ", *max);
  const double lo = min.value_or(-INFINITY), hi = max.value_or(INFINITY);
  using A = acc_t<T>;
  Tensor<T> y = detail::map_unary("clamp", x, [lo, hi](auto v) {
    return v < A(lo) ? A(lo) : (v > A(hi) ? A(hi) : v);
  }, lo, hi);
  // The gradient passes where lo <= x <= hi (PyTorch includes the bounds).
  return autograd::record<T>("ClampBackward", {x}, y, [x = x.detach(), lo, hi](const Tensor<T>& g) {
    return detail::Grads<T>{detail::map_binary("clamp_backward", g, x, [lo, hi](auto gg, auto xx) {
      return (xx >= A(lo) && xx <= A(hi)) ? gg : A(0);
    }, lo, hi)};
  });
}

// ---- selection

template <class T>
Tensor<T> where(const Tensor<bool>& cond, const Tensor<T>& a, const Tensor<T>& b) {
  detail::check_same_device("where", cond, a, "condition", "a");
  detail::check_same_device("where", a, b, "a", "b");
  const Shape s = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(), "where");
  Tensor<T> y = Tensor<T>::empty(s, a.device());
  if (a.device().is_cpu()) {
    cpu::ternary(y, cond, a, b, [](bool c, T va, T vb) { return c ? va : vb; });
  } else {
    auto* k = require_kernel<WhereKernel<T>>("where", dtype_v<T>, a.device());
    const Tensor<bool> ec = cond.expand(s);
    const Tensor<T> ea = a.detach().expand(s), eb = b.detach().expand(s);
    const auto cond_a = make_binary_index(s, ec.strides(), ea.strides());
    const auto b_only = make_binary_index(s, eb.strides(), eb.strides());
    if (ec.is_contiguous() && ea.is_contiguous() && eb.is_contiguous()) {
      k(y.data_ptr(), ec.data_ptr(), ea.data_ptr(), eb.data_ptr(), y.numel(), nullptr, nullptr);
    } else if (cond_a && b_only) {  // broadcast (a scalar fill, a [N, 1, 1, L] mask) and strided operands in place
      k(y.data_ptr(), ec.data_ptr(), ea.data_ptr(), eb.data_ptr(), y.numel(), &*cond_a, &*b_only);
    } else {  // past BinaryIndex's limits: dense copies
      const Tensor<bool> dc = detail::contiguous_copy(ec);
      const Tensor<T> da = detail::contiguous_copy(ea), db = detail::contiguous_copy(eb);
      k(y.data_ptr(), dc.data_ptr(), da.data_ptr(), db.data_ptr(), y.numel(), nullptr, nullptr);
    }
  }
  return autograd::record<T>("WhereBackward", {a, b}, y,
                             [cond, sa = a.shape(), sb = b.shape()](const Tensor<T>& g, const std::vector<bool>& need) {
                               Tensor<T> zero = Tensor<T>::empty({}, g.device());
                               zero.zero_();
                               return detail::Grads<T>{need[0] ? sum_to(where(cond, g, zero), sa) : Tensor<T>(),
                                                       need[1] ? sum_to(where(cond, zero, g), sb) : Tensor<T>()};
                             });
}

template <class T>
Tensor<T> masked_fill(const Tensor<T>& x, const Tensor<bool>& mask, double value) {
  detail::check_same_device("masked_fill", x, mask, "input", "mask");
  const Shape s = broadcast_shapes(x.shape(), mask.shape(), "masked_fill");
  MAMCLIP_CHECK(s == x.shape(), shape_error, "masked_fill: mask of shape ", shape_str(mask.shape()),
                " must broadcast to the input's shape ", shape_str(x.shape()), " (it would give ", shape_str(s), ")");
  Tensor<T> fill = Tensor<T>::empty({}, x.device());
  fill.fill_(static_cast<T>(value));
  Tensor<T> y = where(mask, fill, x.detach());
  return autograd::record<T>("MaskedFillBackward", {x}, y, [mask](const Tensor<T>& g) {
    Tensor<T> zero = Tensor<T>::empty({}, g.device());
    zero.zero_();
    return detail::Grads<T>{where(mask, zero, g)};
  });
}

template <class T>
Tensor<T> dropout(const Tensor<T>& x, double p, bool training, Generator& gen) {
  MAMCLIP_CHECK(p >= 0 && p <= 1, value_error, "dropout: probability p must be in [0, 1], got ", p);
  if (!training || p == 0) return x;
  BernoulliMaskKernel<T>* mask = &cpu::bernoulli_mask<T>;
  if (!x.device().is_cpu()) mask = require_kernel<BernoulliMaskKernel<T>>("dropout", dtype_v<T>, x.device());
  // The mask is a function of (seed, offset, element index): Philox, so a device
  // kernel reproduces it exactly.
  const uint64_t seed = gen.seed(), offset = gen.next_offset();
  const double keep = 1.0 - p;
  Tensor<T> scale = Tensor<T>::empty(x.shape(), x.device());  // 0 or 1/keep per element
  mask(seed, offset, scale.numel(), keep, p == 1 ? 0.0 : 1.0 / keep, scale.data_ptr());
  Tensor<T> y = detail::map_binary("mul", x, scale, [](auto a, auto b) { return a * b; });
  return autograd::record<T>("DropoutBackward", {x}, y, [scale](const Tensor<T>& g) { return detail::Grads<T>{mul(g, scale)}; });
}

template <class T>
Tensor<T> drop_path(const Tensor<T>& x, double p, bool training, Generator& gen, bool scale_by_keep) {
  MAMCLIP_CHECK(p >= 0 && p <= 1, value_error, "drop_path: probability p must be in [0, 1], got ", p);
  if (!training || p == 0) return x;
  MAMCLIP_CHECK(x.dim() >= 1, shape_error, "drop_path: input must have a batch dim (dim 0), got a 0-dim tensor");
  // One Bernoulli(keep) draw per sample, from element n of a Philox stream
  // (seed, offset): a sample is dropped when u > keep, dropout's convention.
  // timm divides by keep only when keep > 0.
  const uint64_t seed = gen.seed(), offset = gen.next_offset();
  const double keep = 1.0 - p;
  const double kept = scale_by_keep && keep > 0 ? 1.0 / keep : 1.0;
  Shape mask_shape(static_cast<size_t>(x.dim()), 1);
  mask_shape[0] = x.size(0);
  Tensor<T> scale = Tensor<T>::empty(mask_shape);  // [N, 1, ...]: 0 or `kept` per sample
  cpu::bernoulli_mask(seed, offset, x.size(0), keep, kept, scale.data_ptr());
  if (!x.device().is_cpu()) scale = scale.to(x.device());
  Tensor<T> y = detail::map_binary("drop_path", x, scale, [](auto a, auto b) { return a * b; });
  return autograd::record<T>("DropPathBackward", {x}, y, [scale](const Tensor<T>& g) { return detail::Grads<T>{mul(g, scale)}; });
}

// ---- operators

template <class T> Tensor<T> operator+(const Tensor<T>& a, const Tensor<T>& b) { return add(a, b); }
template <class T> Tensor<T> operator-(const Tensor<T>& a, const Tensor<T>& b) { return sub(a, b); }
template <class T> Tensor<T> operator*(const Tensor<T>& a, const Tensor<T>& b) { return mul(a, b); }
template <class T> Tensor<T> operator/(const Tensor<T>& a, const Tensor<T>& b) { return div(a, b); }
template <class T> Tensor<T> operator-(const Tensor<T>& a) { return neg(a); }
template <class T> Tensor<T> operator+(const Tensor<T>& a, double s) { return add(a, s); }
template <class T> Tensor<T> operator+(double s, const Tensor<T>& a) { return add(a, s); }
template <class T> Tensor<T> operator-(const Tensor<T>& a, double s) { return add(a, -s); }
template <class T> Tensor<T> operator-(double s, const Tensor<T>& a) { return rsub(a, s); }
template <class T> Tensor<T> operator*(const Tensor<T>& a, double s) { return mul(a, s); }
template <class T> Tensor<T> operator*(double s, const Tensor<T>& a) { return mul(a, s); }
template <class T> Tensor<T> operator/(const Tensor<T>& a, double s) { return mul(a, 1.0 / s); }
template <class T> Tensor<T> operator/(double s, const Tensor<T>& a) { return rdiv(a, s); }

}  // namespace mamclip
