#pragma once
// gradcheck: compares the gradients autograd computes with central finite
// differences, in double precision.
//
// For f: inputs -> output, it draws a fixed random projection r of the output's
// shape and checks d<r, f(x)>/dx_i. Analytical: one backward with gradient r.
// Numerical: (<r, f(x + eps e_k)> - <r, f(x - eps e_k)>) / 2 eps for every element
// k of every input. An element fails when |a - n| > atol + rtol |n|.

#include <cmath>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "mamclip/autograd/engine.hpp"
#include "mamclip/core/factory.hpp"

namespace mamclip::autograd {

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-5;
  double rtol = 1e-3;
  uint64_t seed = 1234;
};

struct GradcheckResult {
  bool ok = true;
  double max_abs_error = 0;
  std::string message;  // the first mismatches, for a test's failure output
};

using GradcheckFn = std::function<Tensor<double>(const std::vector<Tensor<double>>&)>;

inline GradcheckResult gradcheck(const GradcheckFn& fn, const std::vector<Tensor<double>>& inputs,
                                 const GradcheckOptions& opt = {}) {
  // Leaves that keep each input's layout (a non-contiguous input stays non-contiguous).
  std::vector<Tensor<double>> xs;
  for (const auto& x : inputs) {
    Tensor<double> leaf = x.detach();
    leaf.set_requires_grad(true);
    xs.push_back(leaf);
  }
  Tensor<double> out = fn(xs);
  Generator gen(opt.seed);
  Tensor<double> r = randn<double>(out.shape(), gen);
  const std::vector<double> rv = r.to_vector();
  auto project = [&](const Tensor<double>& y) {
    const auto yv = y.to_vector();
    double s = 0;
    for (size_t i = 0; i < yv.size(); ++i) s += yv[i] * rv[i];
    return s;
  };
  out.backward(r);

  GradcheckResult res;
  std::ostringstream msg;
  int reported = 0;
  for (size_t k = 0; k < xs.size(); ++k) {
    Tensor<double> analytic = xs[k].grad();
    const std::vector<double> av = analytic.defined() ? analytic.to_vector() : std::vector<double>(xs[k].numel(), 0.0);
    // Walk elements in row-major order through at(): works for any strides.
    const Shape& s = xs[k].shape();
    std::vector<int64_t> idx(s.size(), 0);
    for (int64_t e = 0; e < xs[k].numel(); ++e) {
      double& v = xs[k].at(idx);
      const double orig = v;
      double plus, minus;
      {
        NoGradGuard ng;
        v = orig + opt.eps;
        plus = project(fn(xs));
        v = orig - opt.eps;
        minus = project(fn(xs));
        v = orig;
      }
      const double numeric = (plus - minus) / (2 * opt.eps);
      const double err = std::abs(av[e] - numeric);
      res.max_abs_error = std::max(res.max_abs_error, err);
      if (!(err <= opt.atol + opt.rtol * std::abs(numeric))) {
        res.ok = false;
        if (reported++ < 5)
          msg << "input " << k << " element " << e << ": analytic " << av[e] << " vs numeric " << numeric << "\n";
      }
      for (size_t d = s.size(); d-- > 0;) {
        if (++idx[d] < s[d]) break;
        idx[d] = 0;
      }
    }
  }
  res.message = msg.str();
  return res;
}

}  // namespace mamclip::autograd

namespace mamclip {
using autograd::gradcheck;
using autograd::GradcheckOptions;
}  // namespace mamclip
