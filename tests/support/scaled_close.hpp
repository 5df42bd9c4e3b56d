#pragma once
// Comparison against fixtures relative to each tensor's scale:
// |a - b| <= rel * (max|b| + |b|), so entries near zero are not held to a
// relative bound that their rounding cannot meet.

#include <algorithm>
#include <cmath>
#include <string>

#include "test_support.hpp"

namespace mamclip::test {

inline double max_abs(const Tensor<float>& t) {
  double m = 0;
  for (float v : t.to_vector()) m = std::max(m, std::abs(static_cast<double>(v)));
  return m;
}

inline void require_close_rel(const Tensor<float>& actual, const Tensor<float>& expected, double rel,
                              const std::string& what) {
  require_allclose(actual, expected, rel * max_abs(expected), rel, what);
}

}  // namespace mamclip::test
