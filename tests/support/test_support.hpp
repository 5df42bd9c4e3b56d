#pragma once
// Test helpers: elementwise comparison with scale-aware tolerances, gradcheck
// wrapped for Catch2, non-contiguous copies, fixture loading, and (files.hpp)
// temporary directories and whole-file reads and writes.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "mamclip/mamclip.hpp"
#include "files.hpp"

namespace mamclip::test {

// Values uniform in [lo, hi) from a generator seeded with `seed`: random test
// inputs that are reproducible and never all zeros.
template <class T = double>
Tensor<T> uniform_random(const Shape& shape, uint64_t seed, double lo, double hi) {
  Generator g(seed);
  Tensor<T> t = empty<T>(shape);
  return uniform_(t, lo, hi, g);
}

// A stand-in "cuda:0" whose memory is host memory, so device dispatch (kernel
// lookup, device_error messages, transfers) runs without a GPU. Installs it
// once and returns true; returns false when a real CUDA backend is linked.
inline bool ensure_stand_in_cuda() {
  static const bool installed = [] {
    if (device_available(DeviceType::cuda)) return false;
    static CpuAllocator alloc;
    register_device(DeviceType::cuda, &alloc,
                    [](void* dst, Device, const void* src, Device, size_t n) { std::memcpy(dst, src, n); });
    return true;
  }();
  return installed;
}

// Every element must satisfy |a - b| <= atol + rtol * |b|; reports the worst one.
template <class T, class U>
void require_allclose(const Tensor<T>& actual, const Tensor<U>& expected, double atol, double rtol,
                      const std::string& what = "") {
  INFO(what);
  REQUIRE(actual.shape() == expected.shape());
  const auto a = actual.to_vector();
  const auto b = expected.to_vector();
  double worst = -1;
  size_t worst_i = 0;
  bool ok = true;
  for (size_t i = 0; i < a.size(); ++i) {
    const double da = static_cast<double>(a[i]), db = static_cast<double>(b[i]);
    const double excess = std::abs(da - db) - (atol + rtol * std::abs(db));
    if (!(excess <= 0) && (worst < 0 || !(excess <= worst))) {
      worst = std::isnan(excess) ? INFINITY : excess;
      worst_i = i;
      ok = false;
    }
  }
  if (!ok) {
    INFO("element " << worst_i << ": actual " << static_cast<double>(a[worst_i]) << " vs expected "
                    << static_cast<double>(b[worst_i]) << " (atol " << atol << ", rtol " << rtol << ")");
    CHECK(ok);
  }
}

// A copy of x with the same values but a non-contiguous layout (its storage
// holds the transpose of the last two dims, or every other element for 1-D).
template <class T>
Tensor<T> noncontiguous(const Tensor<T>& x) {
  if (x.dim() >= 2) {
    Tensor<T> t = x.detach().transpose(-1, -2).contiguous().transpose(-1, -2);
    return t.detach();
  }
  if (x.dim() == 1) {
    Tensor<T> wide = zeros<T>({x.numel(), 2});
    wide.select(1, 0).copy_(x.detach());
    return wide.select(1, 0).detach();
  }
  return x.detach().clone();
}

// Runs gradcheck and fails the test with the first mismatches.
inline void require_gradcheck(const autograd::GradcheckFn& fn, const std::vector<Tensor<double>>& inputs,
                              const GradcheckOptions& opt = {}) {
  auto r = gradcheck(fn, inputs, opt);
  INFO(r.message);
  REQUIRE(r.ok);
}

// expr throws `type` and its what() contains `part` (expr runs twice).
#define MAMCLIP_REQUIRE_THROWS_WITH(expr, type, part)                \
  do {                                                             \
    REQUIRE_THROWS_AS(expr, type);                                 \
    REQUIRE_THROWS_WITH(expr, Catch::Matchers::Contains(part));    \
  } while (0)

// ---- fixtures: {"shape": [...], "data": [...]} objects in JSON files

inline nlohmann::json load_json(const std::string& path) {
  std::ifstream f(path);
  if (!f) FAIL("cannot open fixture " << path);
  return nlohmann::json::parse(f);
}

template <class T>
Tensor<T> tensor_from_json(const nlohmann::json& j) {
  Shape shape = j.at("shape").get<Shape>();
  std::vector<T> v;
  for (const auto& x : j.at("data")) v.push_back(static_cast<T>(x.get<double>()));
  return from_vector<T>(v).reshape(shape);
}

// Largest |a - b| over all elements, in double (shapes must agree).
inline double max_abs_diff(const Tensor<float>& a, const Tensor<float>& b) {
  REQUIRE(a.shape() == b.shape());
  const auto va = a.to_vector(), vb = b.to_vector();
  double worst = 0;
  for (size_t i = 0; i < va.size(); ++i) worst = std::max(worst, std::abs(static_cast<double>(va[i]) - vb[i]));
  return worst;
}

inline std::string fixture_path(const std::string& name) { return std::string(MAMCLIP_TEST_FIXTURES) + "/" + name; }

// Whether element j of parameter `name` (`size` elements) is an attention key bias: BERT's
// *key.bias, the middle third of nn::MultiheadAttention's in_proj_bias [q; k; v]. Softmax
// ignores a shift shared by all keys, so their gradient is zero in exact arithmetic and an
// optimizer dividing by the gradient's RMS (AdamW) moves them by up to lr on rounding noise
// alone: comparisons of trained parameters across devices or ranks leave them out.
inline bool is_key_bias(const std::string& name, size_t j, size_t size) {
  if (name.size() >= 8 && name.compare(name.size() - 8, 8, "key.bias") == 0) return true;
  return name.find("in_proj_bias") != std::string::npos && j >= size / 3 && j < 2 * size / 3;
}

}  // namespace mamclip::test
