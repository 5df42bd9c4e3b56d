#pragma once
// Image transforms and MAM-CLIP's preprocessing, matching the reference's
// OpenCV / albumentations (1.3.1) semantics on float images.
//
// Images are Tensor<float> [C, H, W] or [H, W] on the CPU (any strides); every
// transform returns a new contiguous tensor of the same rank and never records
// gradients. Values are never quantised between steps (the reference rounds to
// its uint8/uint16 dtype after each cv2 call: our results differ from it by
// less than one grey level per step).
//
//   resize(image, h, w, interp)         cv2.resize to (w, h): INTER_LINEAR, INTER_AREA, INTER_LANCZOS4
//   resize_by(image, scale, interp)     cv2.resize(img, None, fx=scale, fy=scale): the size is
//                                       round(scale * size) and the sampling uses 1/scale exactly
//   hflip, vflip                        exact
//   downscale(image, scale, down, up)   albumentations Downscale: resize_by(scale, down), then back
//   grid_distortion(image, xs, ys, v)   albumentations GridDistortion (normalized steps given):
//                                       cv2.remap, INTER_LINEAR, BORDER_CONSTANT with value v,
//                                       map coordinates rounded to 1/32 pixel as OpenCV 4 does
//                                       (RemapCoordinates::exact: as OpenCV 5)
//   min_max_scale(image, policy, name)  (x - min) / max(x - min), in float like numpy
//   to_three_channels(image)            gray [H, W] / [1, H, W] -> [3, H, W]; 3 channels unchanged
//   Downscale, GridDistortion           the random transforms: parameters drawn from a Generator
//   sample_heavy_augmentation,          MAM-CLIP's "heavy" pipeline as data (HeavyAugmentation),
//   apply_heavy_augmentation            then applied; testable draw by draw
//   preprocess_mammogram(image, options, gen)  the whole per-image pipeline -> [3, H, W] in [0, 1]
//
// MAM-CLIP (train/files/dataset.py, loaders.py): the image is resized to
// 1024 x 768 (H x W, INTER_LINEAR); "heavy" then applies, in order,
//   HorizontalFlip p = 0.5, VerticalFlip p = 0.5,
//   OneOf(p = 0.125) of Downscale(scale U(0.75, 0.95)) with (down, up) =
//     (area, linear) weight 0.1, (area, lanczos4) weight 0.1, (linear, linear) weight 0.8,
//   OneOf(p = 0.5) of GridDistortion(5 steps, distort limit 0.3, normalized,
//     INTER_LINEAR, BORDER_CONSTANT 0).
// albumentations' OneOf applies its chosen child with force_apply, so the
// children's own p only weights the choice: Downscale happens with p = 0.125
// and GridDistortion with p = 0.5 (not 0.5 x 0.2). Any other training setting
// ("soft") and validation are the resize alone, so Augmentation::soft and
// ::none are the same pipeline. After augmentation, gray images are
// replicated to 3 channels and min-max scaled.
//
// Constant images: the reference divides 0 by 0 (NaN, with a printed warning).
// Here ConstantImage::error (the default) throws value_error naming the image;
// ConstantImage::zeros returns zeros.
//
// Randomness: each call of sample_heavy_augmentation (and of the random
// transforms) takes one stream of the Generator (gen.next_offset()); element
// k of the stream is the k-th uniform draw, so a draw depends only on (seed,
// position in the draw order).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mamclip/core/error.hpp"
#include "mamclip/core/factory.hpp"
#include "mamclip/core/random.hpp"
#include "mamclip/core/tensor.hpp"
#include "mamclip/io/image.hpp"

namespace mamclip::data {

enum class Interpolation { linear, area, lanczos4 };
enum class ConstantImage { error, zeros };
enum class Augmentation { none, soft, heavy };
// How cv2.remap reads float map coordinates: OpenCV 4 (the reference pins
// opencv-python 4.8) rounds them to 1/32 pixel; OpenCV 5 interpolates at the
// exact coordinate. Pixel differences reach ~1/64 of the local gradient.
enum class RemapCoordinates { opencv4, exact };

namespace detail {

// The image as a contiguous [C, H, W] tensor, after the checks every transform
// makes: the input's own storage when it is contiguous, else a copy. Uses
// only core/ (data/ sits beside the ops layer, not above it).
inline Tensor<float> as_chw(const Tensor<float>& image, const char* op) {
  MAMCLIP_CHECK(image.defined(), value_error, op, ": the image tensor is undefined");
  MAMCLIP_CHECK(image.device().is_cpu(), device_error, op, ": the image is on ", image.device(),
                "; image transforms run on the CPU");
  MAMCLIP_CHECK(image.dim() == 2 || image.dim() == 3, shape_error, op, ": image has shape ",
                shape_str(image.shape()), "; expected [C, H, W] or [H, W]");
  MAMCLIP_CHECK(image.numel() > 0, shape_error, op, ": image has shape ", shape_str(image.shape()),
                "; expected a non-empty image");
  const bool rank2 = image.dim() == 2;
  const int64_t c = rank2 ? 1 : image.size(0), h = image.size(rank2 ? 0 : 1), w = image.size(rank2 ? 1 : 2);
  const Shape shape{c, h, w};
  if (image.is_contiguous())
    return Tensor<float>::from_storage(image.storage(), image.storage_offset(), shape, contiguous_strides(shape));
  const int64_t sc = rank2 ? 0 : image.stride(0), sh = image.stride(rank2 ? 0 : 1), sw = image.stride(rank2 ? 1 : 2);
  Tensor<float> out = empty<float>(shape);
  const float* s = image.data_ptr();
  float* d = out.data_ptr();
  for (int64_t k = 0; k < c; ++k)
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x) *d++ = s[k * sc + y * sh + x * sw];
  return out;
}

// A contiguous [C, H, W] result back in the caller's rank ([H, W] stays [H, W]).
inline Tensor<float> like_input(const Tensor<float>& chw, const Tensor<float>& input) {
  if (input.dim() == 3) return chw;
  const Shape shape{chw.size(1), chw.size(2)};
  return Tensor<float>::from_storage(chw.storage(), chw.storage_offset(), shape, contiguous_strides(shape));
}

// A fresh copy of a contiguous tensor.
inline Tensor<float> copy_of(const Tensor<float>& t) {
  Tensor<float> out = empty<float>(t.shape());
  std::copy_n(t.data_ptr(), t.numel(), out.data_ptr());
  return out;
}

// Resampling along one axis with a fixed number of taps per output index:
// output i = sum_k weight[i * taps + k] * source[index[i * taps + k]].
// Indices are already clamped into the source (cv2's replicated border);
// unused taps have weight 0.
struct AxisTaps {
  int64_t taps = 0;
  std::vector<int64_t> index;
  std::vector<float> weight;
  AxisTaps(int64_t n_out, int64_t taps_) : taps(taps_), index(n_out * taps_, 0), weight(n_out * taps_, 0.f) {}
};

inline int64_t clamp_index(int64_t i, int64_t n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

// Taps s and s + 1 with weights 1 - fx and fx; outside the source cv2 moves
// all weight onto the edge pixel.
inline void set_two_taps(AxisTaps& t, int64_t d, int64_t s, float fx, int64_t src) {
  if (s < 0) s = 0, fx = 0.f;
  if (s >= src - 1) s = src - 1, fx = 0.f;
  t.index[2 * d] = s;
  t.index[2 * d + 1] = clamp_index(s + 1, src);
  t.weight[2 * d] = 1.f - fx;
  t.weight[2 * d + 1] = fx;
}

// cv2 INTER_LINEAR: source coordinate (d + 0.5) * scale - 0.5, computed in float.
inline AxisTaps linear_taps(int64_t src, int64_t dst, double scale) {
  AxisTaps t(dst, 2);
  for (int64_t d = 0; d < dst; ++d) {
    const float f = static_cast<float>((d + 0.5) * scale - 0.5);
    const int64_t s = static_cast<int64_t>(std::floor(f));
    set_two_taps(t, d, s, f - static_cast<float>(s), src);
  }
  return t;
}

// cv2 INTER_AREA when some axis is enlarged: two taps per output, with the
// fraction of the output cell that lies past the source pixel boundary.
inline AxisTaps area_up_taps(int64_t src, int64_t dst, double scale, double inv_scale) {
  AxisTaps t(dst, 2);
  for (int64_t d = 0; d < dst; ++d) {
    const int64_t s = static_cast<int64_t>(std::floor(d * scale));
    const float fx = static_cast<float>((d + 1) - (s + 1) * inv_scale);
    set_two_taps(t, d, s, fx <= 0.f ? 0.f : fx - std::floor(fx), src);
  }
  return t;
}

// cv2 INTER_AREA when both axes shrink: each output is the mean over its cell
// [d * scale, (d + 1) * scale) of the source, partial pixels weighted by overlap.
inline AxisTaps area_down_taps(int64_t src, int64_t dst, double scale) {
  struct Tap { int64_t d, s; float w; };
  std::vector<Tap> taps;
  std::vector<int64_t> count(dst, 0);
  for (int64_t d = 0; d < dst; ++d) {
    const double f1 = d * scale, f2 = f1 + scale;
    const double cell = std::min(scale, static_cast<double>(src) - f1);
    int64_t s1 = static_cast<int64_t>(std::ceil(f1)), s2 = static_cast<int64_t>(std::floor(f2));
    s2 = std::min(s2, src - 1);
    s1 = std::min(s1, s2);
    auto add = [&](int64_t s, double w) {
      taps.push_back({d, s, static_cast<float>(w)});
      ++count[d];
    };
    if (s1 - f1 > 1e-3) add(s1 - 1, (s1 - f1) / cell);
    for (int64_t s = s1; s < s2; ++s) add(s, 1.0 / cell);
    if (f2 - s2 > 1e-3) add(s2, std::min(std::min(f2 - s2, 1.0), cell) / cell);
  }
  const int64_t width = std::max<int64_t>(1, *std::max_element(count.begin(), count.end()));
  AxisTaps t(dst, width);
  std::vector<int64_t> used(dst, 0);
  for (const Tap& tap : taps) {
    const int64_t k = tap.d * width + used[tap.d]++;
    t.index[k] = clamp_index(tap.s, src);
    t.weight[k] = tap.w;
  }
  return t;
}

// cv2 INTER_LANCZOS4: 8 taps s - 3 .. s + 4 around s = floor(f), weights
// sin(pi d / 4) sin(pi d) / d^2 for the distance d, normalised to sum 1. The
// common factor sin(pi x) is divided out, leaving (-1)^k sin(-pi d / 4) / d^2,
// which stays accurate for tiny fractions x; d = 0 takes all the weight.
inline AxisTaps lanczos4_taps(int64_t src, int64_t dst, double scale) {
  constexpr double pi = 3.14159265358979323846;
  AxisTaps t(dst, 8);
  for (int64_t d = 0; d < dst; ++d) {
    const float f = static_cast<float>((d + 0.5) * scale - 0.5);
    const int64_t s = static_cast<int64_t>(std::floor(f));
    const float x = f - static_cast<float>(s);
    float c[8];
    float sum = 0.f;
    for (int k = 0; k < 8; ++k) {
      const float dist = x + 3.f - static_cast<float>(k);
      if (std::fabs(dist) >= 1e-6f) {
        const double y = -static_cast<double>(dist) * pi * 0.25;
        c[k] = static_cast<float>((k % 2 ? -1.0 : 1.0) * std::sin(y) / (y * y));
      } else {
        c[k] = 1e30f;
      }
      sum += c[k];
    }
    const float inv = 1.f / sum;
    for (int k = 0; k < 8; ++k) {
      t.index[8 * d + k] = clamp_index(s - 3 + k, src);
      t.weight[8 * d + k] = c[k] * inv;
    }
  }
  return t;
}

// One plane [sh, sw] -> [dh, dw]: rows first (a weighted sum of whole source
// rows, contiguous and vectorisable), then columns. `row` has sw floats.
inline void resample_plane(const float* src, int64_t sw, float* dst, int64_t dh, int64_t dw, const AxisTaps& ty,
                           const AxisTaps& tx, float* row) {
  for (int64_t oy = 0; oy < dh; ++oy) {
    const int64_t* iy = ty.index.data() + oy * ty.taps;
    const float* wy = ty.weight.data() + oy * ty.taps;
    {
      const float* s = src + iy[0] * sw;
      const float w = wy[0];
      for (int64_t x = 0; x < sw; ++x) row[x] = w * s[x];
    }
    for (int64_t k = 1; k < ty.taps; ++k) {
      const float w = wy[k];
      if (w == 0.f) continue;
      const float* s = src + iy[k] * sw;
      for (int64_t x = 0; x < sw; ++x) row[x] += w * s[x];
    }
    float* d = dst + oy * dw;
    const int64_t kx = tx.taps;
    for (int64_t ox = 0; ox < dw; ++ox) {
      const int64_t* ix = tx.index.data() + ox * kx;
      const float* wx = tx.weight.data() + ox * kx;
      float acc = 0.f;
      for (int64_t k = 0; k < kx; ++k) acc += row[ix[k]] * wx[k];
      d[ox] = acc;
    }
  }
}

// cv2.resize with its scale factors: scale = source pixels per output pixel,
// inv_scale = 1 / scale as cv2 holds it (dsize / ssize, or fx).
inline Tensor<float> resize_scaled(const Tensor<float>& chw, int64_t dh, int64_t dw, Interpolation interpolation,
                                   double scale_y, double scale_x, double inv_y, double inv_x) {
  const int64_t c = chw.size(0), sh = chw.size(1), sw = chw.size(2);
  if (dh == sh && dw == sw) return copy_of(chw);
  auto taps = [&](int64_t src, int64_t dst, double scale, double inv) {
    switch (interpolation) {
      case Interpolation::linear: return linear_taps(src, dst, scale);
      case Interpolation::lanczos4: return lanczos4_taps(src, dst, scale);
      case Interpolation::area:
        return scale_x >= 1 && scale_y >= 1 ? area_down_taps(src, dst, scale) : area_up_taps(src, dst, scale, inv);
    }
    throw value_error("resize: unknown interpolation");
  };
  const AxisTaps ty = taps(sh, dh, scale_y, inv_y), tx = taps(sw, dw, scale_x, inv_x);
  Tensor<float> out = empty<float>({c, dh, dw});
  std::vector<float> row(static_cast<size_t>(sw));
  for (int64_t k = 0; k < c; ++k)
    resample_plane(chw.data_ptr() + k * sh * sw, sw, out.data_ptr() + k * dh * dw, dh, dw, ty, tx, row.data());
  return out;
}

// numpy.linspace(a, b, n) in double: i * step + a, the last element exactly b.
inline void linspace_into(double a, double b, int64_t n, float* out) {
  if (n <= 0) return;
  if (n == 1) {
    out[0] = static_cast<float>(a);
    return;
  }
  const double div = static_cast<double>(n - 1), delta = b - a, step = delta / div;
  for (int64_t i = 0; i < n; ++i) {
    const double v = step == 0 ? (static_cast<double>(i) / div) * delta + a : static_cast<double>(i) * step + a;
    out[i] = static_cast<float>(v);
  }
  out[n - 1] = static_cast<float>(b);
}

// albumentations 1.3.1 grid_distortion's source coordinate per output column
// (or row): piecewise linear over cells of size / num_steps pixels, cell i
// spanning step * steps[i] source pixels; a last cell cut by the border ends
// exactly at `size`. float32, as the reference's map.
inline std::vector<float> grid_coordinates(int64_t size, std::span<const double> steps) {
  const int64_t num_steps = static_cast<int64_t>(steps.size()) - 1;
  const int64_t step = size / num_steps;
  std::vector<float> out(static_cast<size_t>(size), 0.f);
  double prev = 0;
  for (int64_t idx = 0; idx <= num_steps; ++idx) {
    const int64_t start = idx * step;
    int64_t end = start + step;
    double cur;
    if (end > size) {
      end = size;
      cur = static_cast<double>(size);
    } else {
      cur = prev + static_cast<double>(step) * steps[static_cast<size_t>(idx)];
    }
    if (end > start) linspace_into(prev, cur, end - start, out.data() + start);
    prev = cur;
  }
  return out;
}

// albumentations GridDistortion(normalized=True): the last (partial) cell's
// step shrinks to its share of a full cell, then all steps are scaled to sum
// to size / floor(size / num_steps), so the distorted grid spans the image.
inline void normalize_grid_steps(std::vector<double>& steps, int64_t size) {
  const int64_t num_steps = static_cast<int64_t>(steps.size()) - 1;
  const int64_t step = size / num_steps;
  const int64_t last = std::min(size, (num_steps + 1) * step) - num_steps * step;
  steps.back() *= static_cast<double>(last) / static_cast<double>(step);
  const double target = static_cast<double>(size) / static_cast<double>(step);
  double sum = 0;
  for (double s : steps) sum += s;
  const double k = target / sum;
  for (double& s : steps) s *= k;
}

// A uniform draw in [0, 1) like Python's random.random(): element i of a stream.
inline double uniform01(uint64_t seed, uint64_t offset, uint64_t i) { return 1.0 - Philox::uniform(seed, offset, i); }

}  // namespace detail

// cv2.resize(image, (width, height), interpolation).
inline Tensor<float> resize(const Tensor<float>& image, int64_t height, int64_t width,
                            Interpolation interpolation = Interpolation::linear) {
  const Tensor<float> chw = detail::as_chw(image, "resize");
  MAMCLIP_CHECK(height > 0 && width > 0, value_error, "resize: output size ", height, " x ", width,
                "; expected positive height and width");
  const double inv_y = static_cast<double>(height) / chw.size(1), inv_x = static_cast<double>(width) / chw.size(2);
  return detail::like_input(
      detail::resize_scaled(chw, height, width, interpolation, 1.0 / inv_y, 1.0 / inv_x, inv_y, inv_x), image);
}

// cv2.resize(image, None, fx=scale, fy=scale, interpolation): the output is
// round(scale * H) x round(scale * W) and sampling uses 1 / scale exactly.
inline Tensor<float> resize_by(const Tensor<float>& image, double scale,
                               Interpolation interpolation = Interpolation::linear) {
  const Tensor<float> chw = detail::as_chw(image, "resize_by");
  MAMCLIP_CHECK(std::isfinite(scale) && scale > 0, value_error, "resize_by: scale is ", scale,
                "; expected a finite value > 0");
  const int64_t h = chw.size(1), w = chw.size(2);
  const int64_t dh = std::llrint(h * scale), dw = std::llrint(w * scale);
  MAMCLIP_CHECK(dh > 0 && dw > 0, value_error, "resize_by: scale ", scale, " turns ", h, " x ", w, " into ", dh,
                " x ", dw, "; expected at least one pixel each way");
  return detail::like_input(detail::resize_scaled(chw, dh, dw, interpolation, 1.0 / scale, 1.0 / scale, scale, scale),
                            image);
}

inline Tensor<float> hflip(const Tensor<float>& image) {
  const Tensor<float> chw = detail::as_chw(image, "hflip");
  const int64_t c = chw.size(0), h = chw.size(1), w = chw.size(2);
  Tensor<float> out = empty<float>({c, h, w});
  const float* s = chw.data_ptr();
  float* d = out.data_ptr();
  for (int64_t r = 0; r < c * h; ++r)
    for (int64_t x = 0; x < w; ++x) d[r * w + x] = s[r * w + (w - 1 - x)];
  return detail::like_input(out, image);
}

inline Tensor<float> vflip(const Tensor<float>& image) {
  const Tensor<float> chw = detail::as_chw(image, "vflip");
  const int64_t c = chw.size(0), h = chw.size(1), w = chw.size(2);
  Tensor<float> out = empty<float>({c, h, w});
  const float* s = chw.data_ptr();
  float* d = out.data_ptr();
  for (int64_t k = 0; k < c; ++k)
    for (int64_t y = 0; y < h; ++y) std::copy_n(s + (k * h + (h - 1 - y)) * w, w, d + (k * h + y) * w);
  return detail::like_input(out, image);
}

// albumentations Downscale: resize_by(scale, down), then resize back to the
// input size with `up`.
inline Tensor<float> downscale(const Tensor<float>& image, double scale, Interpolation down = Interpolation::area,
                               Interpolation up = Interpolation::linear) {
  MAMCLIP_CHECK(std::isfinite(scale) && scale > 0 && scale < 1, value_error, "downscale: scale is ", scale,
                "; expected 0 < scale < 1");
  const Tensor<float> chw = detail::as_chw(image, "downscale");
  const Tensor<float> small = resize_by(chw, scale, down);
  return detail::like_input(resize(small, chw.size(1), chw.size(2), up), image);
}

// albumentations GridDistortion given its (already normalised) steps: num_steps
// + 1 relative cell sizes per axis. cv2.remap with INTER_LINEAR and a constant
// border: samples outside the image read `border_value`; map coordinates are
// rounded to 1/32 pixel (OpenCV 4's INTER_TAB_SIZE) unless `coordinates` is exact.
inline Tensor<float> grid_distortion(const Tensor<float>& image, std::span<const double> steps_x,
                                     std::span<const double> steps_y, float border_value = 0.f,
                                     RemapCoordinates coordinates = RemapCoordinates::opencv4) {
  const Tensor<float> chw = detail::as_chw(image, "grid_distortion");
  const int64_t c = chw.size(0), h = chw.size(1), w = chw.size(2);
  MAMCLIP_CHECK(steps_x.size() >= 2 && steps_y.size() >= 2, value_error, "grid_distortion: ", steps_x.size(),
                " x steps and ", steps_y.size(), " y steps; expected num_steps + 1 >= 2 each");
  const int64_t nx = static_cast<int64_t>(steps_x.size()) - 1, ny = static_cast<int64_t>(steps_y.size()) - 1;
  MAMCLIP_CHECK(w >= nx && h >= ny, value_error, "grid_distortion: image is ", h, " x ", w, " for ", ny, " x ", nx,
                " steps; expected at least one pixel per step");
  for (double s : steps_x)
    MAMCLIP_CHECK(std::isfinite(s), value_error, "grid_distortion: a x step is ", s, "; expected finite steps");
  for (double s : steps_y)
    MAMCLIP_CHECK(std::isfinite(s), value_error, "grid_distortion: a y step is ", s, "; expected finite steps");
  constexpr int kTab = 32;  // cv2 INTER_TAB_SIZE
  // Per column / row: integer source index and the 1/32 fraction, as cv2 rounds them.
  auto fixed = [coordinates](const std::vector<float>& coords, std::vector<int64_t>& i0, std::vector<float>& frac) {
    i0.resize(coords.size());
    frac.resize(coords.size());
    for (size_t j = 0; j < coords.size(); ++j) {
      if (coordinates == RemapCoordinates::exact) {
        const float f = std::floor(coords[j]);
        i0[j] = static_cast<int64_t>(f);
        frac[j] = coords[j] - f;
        continue;
      }
      const int64_t q = static_cast<int64_t>(std::nearbyint(coords[j] * static_cast<float>(kTab)));
      i0[j] = q >= 0 ? q / kTab : -((-q + kTab - 1) / kTab);  // floor division
      frac[j] = static_cast<float>(q - i0[j] * kTab) * (1.f / kTab);
    }
  };
  std::vector<int64_t> x0, y0;
  std::vector<float> fx, fy;
  fixed(detail::grid_coordinates(w, steps_x), x0, fx);
  fixed(detail::grid_coordinates(h, steps_y), y0, fy);
  Tensor<float> out = empty<float>({c, h, w});
  for (int64_t k = 0; k < c; ++k) {
    const float* s = chw.data_ptr() + k * h * w;
    float* d = out.data_ptr() + k * h * w;
    auto at = [&](int64_t y, int64_t x) {
      return (y >= 0 && y < h && x >= 0 && x < w) ? s[y * w + x] : border_value;
    };
    for (int64_t y = 0; y < h; ++y) {
      const int64_t sy = y0[y];
      const float vy1 = fy[y], vy0 = 1.f - vy1;
      for (int64_t x = 0; x < w; ++x) {
        const int64_t sx = x0[x];
        const float vx1 = fx[x], vx0 = 1.f - vx1;
        d[y * w + x] = at(sy, sx) * (vy0 * vx0) + at(sy, sx + 1) * (vy0 * vx1) + at(sy + 1, sx) * (vy1 * vx0) +
                       at(sy + 1, sx + 1) * (vy1 * vx1);
      }
    }
  }
  return detail::like_input(out, image);
}

// (x - min) / max(x - min) over all channels, in float as numpy computes it.
// A constant image has max(x - min) = 0: `on_constant` decides (see top).
inline Tensor<float> min_max_scale(const Tensor<float>& image, ConstantImage on_constant = ConstantImage::error,
                                   std::string_view name = "image") {
  const Tensor<float> chw = detail::as_chw(image, "min_max_scale");
  const float* s = chw.data_ptr();
  const int64_t n = chw.numel();
  float lo = s[0], hi = s[0];
  for (int64_t i = 0; i < n; ++i) {
    MAMCLIP_CHECK(std::isfinite(s[i]), value_error, "min_max_scale: '", name, "' has the non-finite value ", s[i],
                  " at flat index ", i);
    lo = std::min(lo, s[i]);
    hi = std::max(hi, s[i]);
  }
  Tensor<float> out = empty<float>(chw.shape());
  float* d = out.data_ptr();
  const float range = hi - lo;  // == max(x - min) in float: subtraction is monotonic
  if (range == 0.f) {
    MAMCLIP_CHECK(on_constant == ConstantImage::zeros, value_error, "min_max_scale: '", name,
                  "' is constant (every value is ", lo,
                  "), so (x - min) / max(x - min) divides by zero; use ConstantImage::zeros to map it to zeros");
    std::fill_n(d, n, 0.f);
  } else {
    for (int64_t i = 0; i < n; ++i) d[i] = (s[i] - lo) / range;
  }
  return detail::like_input(out, image);
}

// Gray [H, W] or [1, H, W] -> [3, H, W] (copies); a 3-channel image is returned as is.
inline Tensor<float> to_three_channels(const Tensor<float>& image) {
  const Tensor<float> chw = detail::as_chw(image, "to_three_channels");
  const int64_t c = chw.size(0), h = chw.size(1), w = chw.size(2);
  if (c == 3 && image.dim() == 3) return chw;
  MAMCLIP_CHECK(c == 1, shape_error, "to_three_channels: image has shape ", shape_str(image.shape()),
                "; expected 1 or 3 channels");
  Tensor<float> out = empty<float>({3, h, w});
  for (int64_t k = 0; k < 3; ++k) std::copy_n(chw.data_ptr(), h * w, out.data_ptr() + k * h * w);
  return out;
}

// ---- random transforms ----------------------------------------------------

struct DownscaleParams {
  double scale = 1.0;
  Interpolation down = Interpolation::area;
  Interpolation up = Interpolation::linear;
};

struct Downscale {
  double scale_min = 0.75, scale_max = 0.95;
  Interpolation down = Interpolation::area, up = Interpolation::linear;

  // scale = U(scale_min, scale_max), from one stream of `gen`.
  DownscaleParams sample(Generator& gen) const {
    MAMCLIP_CHECK(scale_min > 0 && scale_min <= scale_max && scale_max < 1, value_error,
                  "Downscale: scale range [", scale_min, ", ", scale_max, "]; expected 0 < min <= max < 1");
    const uint64_t seed = gen.seed(), offset = gen.next_offset();
    return {scale_min + (scale_max - scale_min) * detail::uniform01(seed, offset, 0), down, up};
  }
  Tensor<float> operator()(const Tensor<float>& image, Generator& gen) const {
    const DownscaleParams p = sample(gen);
    return downscale(image, p.scale, p.down, p.up);
  }
};

struct GridDistortionParams {
  std::vector<double> steps_x, steps_y;  // num_steps + 1 each, as grid_distortion takes them
};

struct GridDistortion {
  int64_t num_steps = 5;
  double distort_limit = 0.3;  // steps are 1 + U(-limit, limit)
  bool normalized = true;      // rescale the steps so the grid spans the image exactly
  float border_value = 0.f;

  // albumentations 1.3.1: x steps then y steps, each 1 + U(-limit, limit),
  // then (normalized) detail::normalize_grid_steps for a height x width image.
  GridDistortionParams sample(int64_t height, int64_t width, Generator& gen) const {
    MAMCLIP_CHECK(num_steps >= 1 && height >= num_steps && width >= num_steps, value_error,
                  "GridDistortion: ", num_steps, " steps for a ", height, " x ", width,
                  " image; expected 1 <= num_steps <= min(height, width)");
    MAMCLIP_CHECK(distort_limit >= 0 && distort_limit < 1, value_error, "GridDistortion: distort_limit is ",
                  distort_limit, "; expected 0 <= limit < 1");
    const uint64_t seed = gen.seed(), offset = gen.next_offset();
    const size_t n = static_cast<size_t>(num_steps) + 1;
    GridDistortionParams p{std::vector<double>(n), std::vector<double>(n)};
    for (size_t i = 0; i < n; ++i)
      p.steps_x[i] = 1.0 + (-distort_limit + 2 * distort_limit * detail::uniform01(seed, offset, i));
    for (size_t i = 0; i < n; ++i)
      p.steps_y[i] = 1.0 + (-distort_limit + 2 * distort_limit * detail::uniform01(seed, offset, n + i));
    if (normalized) {
      detail::normalize_grid_steps(p.steps_x, width);
      detail::normalize_grid_steps(p.steps_y, height);
    }
    return p;
  }
  Tensor<float> operator()(const Tensor<float>& image, Generator& gen) const {
    const Tensor<float> chw = detail::as_chw(image, "GridDistortion");
    const GridDistortionParams p = sample(chw.size(1), chw.size(2), gen);
    return grid_distortion(image, p.steps_x, p.steps_y, border_value);
  }

};

// ---- MAM-CLIP ---------------------------------------------------------------

// One draw of the "heavy" pipeline's random choices for an image of
// height x width (after the resize).
struct HeavyAugmentation {
  bool hflip = false, vflip = false;
  std::optional<DownscaleParams> downscale;
  std::optional<GridDistortionParams> grid;
};

// Stream elements: 0 hflip, 1 vflip, 2 Downscale applied?, 3 which Downscale,
// 4 its scale, 5 GridDistortion applied?; the grid steps take a stream of their own.
inline HeavyAugmentation sample_heavy_augmentation(int64_t height, int64_t width, Generator& gen) {
  const uint64_t seed = gen.seed(), offset = gen.next_offset();
  auto u = [&](uint64_t i) { return detail::uniform01(seed, offset, i); };
  HeavyAugmentation a;
  a.hflip = u(0) < 0.5;
  a.vflip = u(1) < 0.5;
  if (u(2) < 0.125) {
    // OneOf weights 0.1, 0.1, 0.8 (normalised by their sum, 1).
    const double pick = u(3);
    DownscaleParams p;
    p.scale = 0.75 + (0.95 - 0.75) * u(4);
    if (pick < 0.1) {
      p.down = Interpolation::area, p.up = Interpolation::linear;
    } else if (pick < 0.2) {
      p.down = Interpolation::area, p.up = Interpolation::lanczos4;
    } else {
      p.down = Interpolation::linear, p.up = Interpolation::linear;
    }
    a.downscale = p;
  }
  if (u(5) < 0.5) a.grid = GridDistortion{}.sample(height, width, gen);
  return a;
}

inline Tensor<float> apply_heavy_augmentation(const Tensor<float>& image, const HeavyAugmentation& a) {
  Tensor<float> x = detail::as_chw(image, "apply_heavy_augmentation");
  if (a.hflip) x = hflip(x);
  if (a.vflip) x = vflip(x);
  if (a.downscale) x = downscale(x, a.downscale->scale, a.downscale->down, a.downscale->up);
  if (a.grid) x = grid_distortion(x, a.grid->steps_x, a.grid->steps_y, 0.f);
  return detail::like_input(x, image);
}

struct MammogramTransformOptions {
  int64_t height = 1024, width = 768;
  Augmentation augmentation = Augmentation::none;
  ConstantImage constant_image = ConstantImage::error;
};

// resize (INTER_LINEAR) -> heavy augmentation (if asked) -> 3 channels ->
// min-max. `image` is [C, H, W] or [H, W] with C in {1, 3}, any value range;
// the result is [3, height, width] in [0, 1]. Draws from `gen` only for
// Augmentation::heavy. `name` appears in errors (constant images).
inline Tensor<float> preprocess_mammogram(const Tensor<float>& image, const MammogramTransformOptions& options,
                                          Generator& gen, std::string_view name = "image") {
  MAMCLIP_CHECK(options.height > 0 && options.width > 0, value_error, "preprocess_mammogram: output size ",
                options.height, " x ", options.width, "; expected positive height and width");
  Tensor<float> x = resize(detail::as_chw(image, "preprocess_mammogram"), options.height, options.width);
  if (options.augmentation == Augmentation::heavy)
    x = apply_heavy_augmentation(x, sample_heavy_augmentation(options.height, options.width, gen));
  return min_max_scale(to_three_channels(x), options.constant_image, name);
}

inline Tensor<float> preprocess_mammogram(const io::Image& image, const MammogramTransformOptions& options,
                                          Generator& gen) {
  return preprocess_mammogram(image.pixels, options, gen, image.name);
}

}  // namespace mamclip::data
