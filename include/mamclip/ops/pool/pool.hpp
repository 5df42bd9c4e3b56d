#pragma once
// avg_pool2d and adaptive_avg_pool2d (PyTorch semantics) over x [N, C, H, W],
// with their backward. Windows and divisors follow ATen's rules: see
// pool_output_size (ceil_mode), avg_pool_axis (count_include_pad) and
// adaptive_pool_axis (bins [floor(i H / out), ceil((i + 1) H / out))).
// On a device through AvgPoolKernel / AvgPoolBackwardKernel, registered under
// each op's name and "<op>_backward".

#include <memory>
#include <string>
#include <vector>

#include "mamclip/autograd/node.hpp"
#include "mamclip/ops/fwd.hpp"
#include "mamclip/ops/pool/cpu.hpp"
#include "mamclip/ops/reduce/reduce.hpp"

namespace mamclip {

// One axis of cpu::PoolAxis in device memory: the window [start, end) of each
// of `out` outputs, and for each of `size` inputs the range [cover_begin,
// cover_end) of the outputs whose windows hold it (windows move forward, so
// that range is contiguous; the backward gathers through it).
struct DevicePoolAxis {
  const int64_t *start, *end, *cover_begin, *cover_end;
  int64_t out, size;
};

// x [planes, rows.size, cols.size] -> y [planes, rows.out, cols.out], every
// window's sum times inv_area[i * cols.out + j] (device memory, double).
template <class T>
using AvgPoolKernel = void(const T* x, T* y, int64_t planes, DevicePoolAxis rows, DevicePoolAxis cols,
                           const double* inv_area);
// gy [planes, rows.out, cols.out] -> dx [planes, rows.size, cols.size].
template <class T>
using AvgPoolBackwardKernel = void(const T* gy, T* dx, int64_t planes, DevicePoolAxis rows, DevicePoolAxis cols,
                                   const double* inv_area);

namespace detail {

template <class T>
void require_nchw(const char* op, const Tensor<T>& x) {
  MAMCLIP_CHECK(x.dim() == 4, shape_error, op, ": input has shape ", shape_str(x.shape()), "; expected 4 dims [N, C, H, W]");
}

// ATen's pooling_output_shape without dilation: with ceil_mode the last window
// must start inside the image or its left padding.
inline int64_t pool_output_size(int64_t size, int64_t k, int64_t s, int64_t p, bool ceil_mode) {
  const int64_t span = size + 2 * p - k + (ceil_mode ? s - 1 : 0);
  int64_t out = (span >= 0 ? span / s : -((-span + s - 1) / s)) + 1;
  if (ceil_mode && (out - 1) * s >= size + p) --out;
  return out;
}

inline cpu::PoolAxis avg_pool_axis(int64_t size, int64_t out, int64_t k, int64_t s, int64_t p, bool count_include_pad) {
  cpu::PoolAxis a;
  for (int64_t i = 0; i < out; ++i) {
    int64_t start = i * s - p, end = std::min(start + k, size + p);
    const int64_t padded = end - start;  // the window's extent, padding included (not past the right padding)
    start = std::max<int64_t>(start, 0);
    end = std::min(end, size);
    a.start.push_back(start);
    a.end.push_back(std::max(start, end));
    a.divisor.push_back(static_cast<double>(count_include_pad ? padded : std::max<int64_t>(end - start, 0)));
  }
  return a;
}

inline cpu::PoolAxis adaptive_pool_axis(int64_t size, int64_t out) {
  cpu::PoolAxis a;
  for (int64_t i = 0; i < out; ++i) {
    const int64_t start = (i * size) / out, end = ((i + 1) * size + out - 1) / out;
    a.start.push_back(start);
    a.end.push_back(end);
    a.divisor.push_back(static_cast<double>(end - start));
  }
  return a;
}

// The windows of `rows` (over h inputs) and `cols` (over w) on a device: one
// int64 table holding both DevicePoolAxis, and the inverse window areas.
struct DevicePoolWindows {
  Tensor<int64_t> table;
  Tensor<double> inv_area;
  DevicePoolAxis rows{}, cols{};

  DevicePoolWindows(const cpu::PoolAxis& r, int64_t h, const cpu::PoolAxis& c, int64_t w, Device device) {
    std::vector<int64_t> t;
    auto append = [&](const cpu::PoolAxis& a, int64_t size) {
      const size_t at = t.size();
      t.insert(t.end(), a.start.begin(), a.start.end());
      t.insert(t.end(), a.end.begin(), a.end.end());
      std::vector<int64_t> begin(static_cast<size_t>(size), 0), end(static_cast<size_t>(size), 0);
      for (int64_t i = a.out(); i-- > 0;)  // backwards, so each input's begin ends at its first window
        for (int64_t k = a.start[i]; k < a.end[i]; ++k) {
          begin[k] = i;
          if (end[k] == 0) end[k] = i + 1;
        }
      t.insert(t.end(), begin.begin(), begin.end());
      t.insert(t.end(), end.begin(), end.end());
      return at;
    };
    const size_t r_at = append(r, h), c_at = append(c, w);
    std::vector<double> inv;
    for (int64_t i = 0; i < r.out(); ++i)
      for (int64_t j = 0; j < c.out(); ++j) inv.push_back(cpu::inverse_or_zero(r.divisor[i] * c.divisor[j]));
    table = from_vector<int64_t>(t, {static_cast<int64_t>(t.size())}).to(device);
    inv_area = from_vector<double>(inv, {static_cast<int64_t>(inv.size())}).to(device);
    auto axis = [&](size_t at, int64_t out, int64_t size) {
      const int64_t* base = table.data_ptr() + at;
      return DevicePoolAxis{base, base + out, base + 2 * out, base + 2 * out + size, out, size};
    };
    rows = axis(r_at, r.out(), h);
    cols = axis(c_at, c.out(), w);
  }
};

template <class T>
Tensor<T> avg_pool_windows(const char* op, const char* node, const Tensor<T>& x, cpu::PoolAxis rows,
                           cpu::PoolAxis cols) {
  const int64_t planes = x.size(0) * x.size(1), h = x.size(2), w = x.size(3);
  const Tensor<T> xc = contiguous_values(x);
  Tensor<T> y = Tensor<T>::empty({x.size(0), x.size(1), rows.out(), cols.out()}, x.device());
  if (!x.device().is_cpu()) {
    auto* kernel = require_kernel<AvgPoolKernel<T>>(op, dtype_v<T>, x.device());
    auto* backward = require_kernel<AvgPoolBackwardKernel<T>>(str_cat(op, "_backward"), dtype_v<T>, x.device());
    auto windows = std::make_shared<const DevicePoolWindows>(rows, h, cols, w, x.device());
    kernel(xc.data_ptr(), y.data_ptr(), planes, windows->rows, windows->cols, windows->inv_area.data_ptr());
    return autograd::record<T>(node, {x}, y, [windows, backward, shape = x.shape(), planes](const Tensor<T>& g) {
      const Tensor<T> gc = contiguous_values(g);
      Tensor<T> dx = Tensor<T>::empty(shape, g.device());
      backward(gc.data_ptr(), dx.data_ptr(), planes, windows->rows, windows->cols, windows->inv_area.data_ptr());
      return std::vector<Tensor<T>>{dx};
    });
  }
  cpu::avg_pool_forward(xc.data_ptr(), y.data_ptr(), planes, h, w, rows, cols);
  return autograd::record<T>(node, {x}, y, [rows = std::move(rows), cols = std::move(cols), shape = x.shape(), planes](const Tensor<T>& g) {
    const Tensor<T> gc = contiguous_values(g);
    Tensor<T> dx = Tensor<T>::empty(shape);
    cpu::avg_pool_backward(gc.data_ptr(), dx.data_ptr(), planes, shape[2], shape[3], rows, cols);
    return std::vector<Tensor<T>>{dx};
  });
}

}  // namespace detail

template <class T>
Tensor<T> avg_pool2d(const Tensor<T>& x, std::array<int64_t, 2> kernel_size, const AvgPool2dOptions& options) {
  static_assert(is_floating_v<T>, "avg_pool2d: T must be float, double, half or bfloat16");
  constexpr const char* op = "avg_pool2d";
  detail::require_nchw(op, x);
  std::array<int64_t, 2> stride = options.stride;
  for (int d = 0; d < 2; ++d) {
    MAMCLIP_CHECK(kernel_size[d] > 0, value_error, op, ": kernel_size must be positive, got [", kernel_size[0], ", ",
                  kernel_size[1], "]");
    MAMCLIP_CHECK(stride[d] >= 0, value_error, op, ": stride must be positive (or 0 for stride = kernel_size), got [",
                  stride[0], ", ", stride[1], "]");
    if (stride[d] == 0) stride[d] = kernel_size[d];
    MAMCLIP_CHECK(options.padding[d] >= 0 && options.padding[d] <= kernel_size[d] / 2, value_error, op,
                  ": padding must be in [0, kernel_size / 2], got padding [", options.padding[0], ", ",
                  options.padding[1], "] for kernel_size [", kernel_size[0], ", ", kernel_size[1], "]");
  }
  const int64_t h = x.size(2), w = x.size(3);
  const int64_t oh = detail::pool_output_size(h, kernel_size[0], stride[0], options.padding[0], options.ceil_mode);
  const int64_t ow = detail::pool_output_size(w, kernel_size[1], stride[1], options.padding[1], options.ceil_mode);
  MAMCLIP_CHECK(oh > 0 && ow > 0, shape_error, op, ": input has shape ", shape_str(x.shape()), " and kernel_size [",
                kernel_size[0], ", ", kernel_size[1], "] with padding [", options.padding[0], ", ", options.padding[1],
                "] gives an output of ", oh, " x ", ow, "; expected a non-empty output");
  return detail::avg_pool_windows(
      op, "AvgPool2dBackward", x,
      detail::avg_pool_axis(h, oh, kernel_size[0], stride[0], options.padding[0], options.count_include_pad),
      detail::avg_pool_axis(w, ow, kernel_size[1], stride[1], options.padding[1], options.count_include_pad));
}

template <class T>
Tensor<T> adaptive_avg_pool2d(const Tensor<T>& x, std::array<int64_t, 2> output_size) {
  static_assert(is_floating_v<T>, "adaptive_avg_pool2d: T must be float, double, half or bfloat16");
  constexpr const char* op = "adaptive_avg_pool2d";
  detail::require_nchw(op, x);
  MAMCLIP_CHECK(output_size[0] > 0 && output_size[1] > 0, value_error, op, ": output_size must be positive, got [",
                output_size[0], ", ", output_size[1], "]");
  MAMCLIP_CHECK(x.size(2) > 0 && x.size(3) > 0, shape_error, op, ": input has shape ", shape_str(x.shape()),
                "; expected non-empty H and W");
  return detail::avg_pool_windows(op, "AdaptiveAvgPool2dBackward", x, detail::adaptive_pool_axis(x.size(2), output_size[0]),
                                  detail::adaptive_pool_axis(x.size(3), output_size[1]));
}

}  // namespace mamclip
