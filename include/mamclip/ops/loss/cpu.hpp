#pragma once
// CPU reference class-index losses (nll_loss, cross_entropy).
//
// An input [N, C, d1, ...] (or [C]) is seen as lanes along the class dim
// (ops/reduce/cpu.hpp: Lanes{N, C, d1*...}); lane s is one sample, with target
// t[s]. With label smoothing eps (0 for nll_loss) and log-probabilities lp, a
// kept sample's loss is
//   loss_s = -(1 - eps) lp[t] - (eps / C) sum_c lp[c]  =  -sum_c q[c] lp[c],
//   q = (1 - eps) onehot(t) + eps / C,
// and a sample whose target is ignore_index has loss 0 and no gradient.

#include <cmath>
#include <vector>

#include "mamclip/ops/reduce/cpu.hpp"

namespace mamclip::cpu {

// loss receives one value per lane (sample).
template <class T>
void class_loss(const T* logp, const int64_t* target, const Lanes& l, int64_t ignore_index, double smoothing,
                acc_t<T>* loss) {
  using A = acc_t<T>;
  const A keep = static_cast<A>(1 - smoothing), spread = static_cast<A>(smoothing / static_cast<double>(l.size));
  for_each_lane(l, [&](int64_t s, int64_t off, auto stride) {
    if (target[s] == ignore_index) {
      loss[s] = 0;
      return;
    }
    A v = -keep * static_cast<A>(logp[off + target[s] * stride]);
    if (smoothing != 0) {
      A all = 0;
      for (int64_t c = 0; c < l.size; ++c) all += static_cast<A>(logp[off + c * stride]);
      v -= spread * all;
    }
    loss[s] = v;
  });
}

// The gradient of sum_s scale[s] * loss_s: with respect to the log-probabilities
// (wrt_logits false: -scale * q), or, when logp = log_softmax(logits), with
// respect to the logits (wrt_logits true: scale * (exp(logp) - q), since q sums to 1).
template <class T>
void class_loss_backward(const T* logp, const int64_t* target, const Lanes& l, int64_t ignore_index, double smoothing,
                         const acc_t<T>* scale, bool wrt_logits, T* dx) {
  using A = acc_t<T>;
  const A keep = static_cast<A>(1 - smoothing), spread = static_cast<A>(smoothing / static_cast<double>(l.size));
  for_each_lane(l, [&](int64_t s, int64_t off, auto stride) {
    const bool ignored = target[s] == ignore_index;
    for (int64_t c = 0; c < l.size; ++c) {
      A v = 0;
      if (!ignored) {
        const A q = spread + (c == target[s] ? keep : A(0));
        v = scale[s] * ((wrt_logits ? std::exp(static_cast<A>(logp[off + c * stride])) : A(0)) - q);
      }
      dx[off + c * stride] = static_cast<T>(v);
    }
  });
}

}  // namespace mamclip::cpu
