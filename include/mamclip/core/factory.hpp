#pragma once
// Tensor factories: empty, zeros, ones, full, arange, from data, and random
// tensors from a seeded Generator (Philox, so results do not depend on threads).

#include <initializer_list>
#include <vector>

#include "mamclip/core/random.hpp"
#include "mamclip/core/tensor_data.hpp"

namespace mamclip {

template <class T>
Tensor<T> empty(const Shape& shape, Device device = kCPU) {
  return Tensor<T>::empty(shape, device);
}

template <class T>
Tensor<T> full(const Shape& shape, T value, Device device = kCPU) {
  Tensor<T> t = Tensor<T>::empty(shape, device);
  t.fill_(value);
  return t;
}
template <class T>
Tensor<T> zeros(const Shape& shape, Device device = kCPU) { return full<T>(shape, T(0), device); }
template <class T>
Tensor<T> ones(const Shape& shape, Device device = kCPU) { return full<T>(shape, T(1), device); }
template <class T>
Tensor<T> zeros_like(const Tensor<T>& t) { return zeros<T>(t.shape(), t.device()); }
template <class T>
Tensor<T> ones_like(const Tensor<T>& t) { return ones<T>(t.shape(), t.device()); }

// Values start, start + step, ... below end (above end for a negative step).
template <class T>
Tensor<T> arange(double start, double end, double step = 1.0, Device device = kCPU) {
  MAMCLIP_CHECK(step != 0, value_error, "arange: step must be non-zero");
  MAMCLIP_CHECK((end - start) / step >= 0, value_error, "arange: range [", start, ", ", end, ") with step ", step,
                " is empty in the wrong direction");
  const auto n = static_cast<int64_t>(std::ceil((end - start) / step));
  Tensor<T> t = Tensor<T>::empty({n});
  for (int64_t i = 0; i < n; ++i) t.data_ptr()[i] = static_cast<T>(start + static_cast<double>(i) * step);
  return t.to(device);
}

// A tensor holding `values` with exactly `shape` ({} is a 0-dim tensor of one value).
template <class T>
Tensor<T> from_vector(const std::vector<T>& values, const Shape& shape, Device device = kCPU) {
  MAMCLIP_CHECK(numel_of(shape) == static_cast<int64_t>(values.size()), shape_error, "from_vector: ", values.size(),
                " values do not fill shape ", shape_str(shape), " (", numel_of(shape), " elements)");
  Tensor<T> t = Tensor<T>::empty(shape);
  std::copy(values.begin(), values.end(), t.data_ptr());
  return t.to(device);
}
// A 1-D tensor holding `values`.
template <class T>
Tensor<T> from_vector(const std::vector<T>& values) {
  return from_vector<T>(values, Shape{static_cast<int64_t>(values.size())});
}

// tensor<float>({1, 2, 3}) is 1-D; tensor<float>({1, 2, 3, 4}, {2, 2}) has the given shape.
template <class T>
Tensor<T> tensor(std::initializer_list<T> values) {
  return from_vector<T>(std::vector<T>(values));
}
template <class T>
Tensor<T> tensor(std::initializer_list<T> values, const Shape& shape, Device device = kCPU) {
  return from_vector<T>(std::vector<T>(values), shape, device);
}
// A 0-dim tensor.
template <class T>
Tensor<T> scalar(T value, Device device = kCPU) {
  return full<T>({}, value, device);
}

// In-place random fills (CPU draw, then copied to the tensor's device).
template <class T>
Tensor<T>& uniform_(Tensor<T>& t, double low = 0.0, double high = 1.0, Generator& gen = default_generator()) {
  MAMCLIP_CHECK(low <= high, value_error, "uniform_: low ", low, " is greater than high ", high);
  const uint64_t seed = gen.seed(), offset = gen.next_offset();
  std::vector<T> v(static_cast<size_t>(t.numel()));
  Philox::for_each_uniform(seed, offset, v.size(),
                           [&](uint64_t i, double u) { v[i] = static_cast<T>(low + (high - low) * (1.0 - u)); });
  t.copy_(from_vector<T>(v, t.shape()));
  return t;
}
template <class T>
Tensor<T>& normal_(Tensor<T>& t, double mean = 0.0, double stddev = 1.0, Generator& gen = default_generator()) {
  MAMCLIP_CHECK(stddev >= 0, value_error, "normal_: stddev must be non-negative, got ", stddev);
  const uint64_t seed = gen.seed(), offset = gen.next_offset();
  std::vector<T> v(static_cast<size_t>(t.numel()));
  Philox::for_each_normal(seed, offset, v.size(), [&](uint64_t i, double z) { v[i] = static_cast<T>(mean + stddev * z); });
  t.copy_(from_vector<T>(v, t.shape()));
  return t;
}

// Uniform in [0, 1).
template <class T>
Tensor<T> rand(const Shape& shape, Generator& gen = default_generator(), Device device = kCPU) {
  Tensor<T> t = Tensor<T>::empty(shape, device);
  return uniform_(t, 0.0, 1.0, gen);
}
// Standard normal.
template <class T>
Tensor<T> randn(const Shape& shape, Generator& gen = default_generator(), Device device = kCPU) {
  Tensor<T> t = Tensor<T>::empty(shape, device);
  return normal_(t, 0.0, 1.0, gen);
}
// Integers uniform in [low, high).
template <class T>
Tensor<T> randint(int64_t low, int64_t high, const Shape& shape, Generator& gen = default_generator(), Device device = kCPU) {
  MAMCLIP_CHECK(low < high, value_error, "randint: low ", low, " must be below high ", high);
  const uint64_t seed = gen.seed(), offset = gen.next_offset();
  std::vector<T> v(static_cast<size_t>(numel_of(shape)));
  const auto span = static_cast<double>(high - low);
  Philox::for_each_uniform(seed, offset, v.size(), [&](uint64_t i, double u) {
    const auto k = static_cast<int64_t>((1.0 - u) * span);
    v[i] = static_cast<T>(low + std::min<int64_t>(k, high - low - 1));
  });
  return from_vector<T>(v, shape, device);
}

}  // namespace mamclip
