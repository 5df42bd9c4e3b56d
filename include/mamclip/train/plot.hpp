#pragma once
// Raster plots for training reports, written as 8-bit RGB PNGs with no
// plotting library: a built-in 5x7 bitmap font draws the text.
//
// defines:
//   Rgb, series_color                 the palette (matplotlib's tab10, then golden-angle hues)
//   Canvas                            an RGB raster with rectangles, lines and text
//   plot_lines -> LinePlotLayout      line plot: axes, ticks, grid, title, legend
//   plot_confusion_matrix -> ConfusionPlotLayout   heatmap of counts, each cell labelled
//   heatmap_overlay, overlay_heatmap  Grad-CAM style jet overlay of a heat map on a gray image
//
// The font has digits, A-Z (lowercase letters are drawn as capitals) and
// . , - + : _ ( ) / % = [ ] # < > ? ! ' * and space; other characters are
// drawn as '?'.
//
// Writing goes through io::write_png (atomic): link mamclip::image (stb).

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "mamclip/core/error.hpp"
#include "mamclip/core/factory.hpp"
#include "mamclip/core/tensor_data.hpp"
#include "mamclip/io/image.hpp"
#include "mamclip/ops/shape/shape.hpp"  // Tensor::to, which from_vector and to_vector use
#include "mamclip/train/metrics.hpp"

namespace mamclip::train {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
  bool operator==(const Rgb&) const = default;
};

// The colour of series i: tab10 for the first ten, then hues spaced by the
// golden angle (never gray, so they stay apart from axes and grid).
inline Rgb series_color(size_t i) {
  static constexpr Rgb kTab10[10] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44},  {214, 39, 40},
                                     {148, 103, 189}, {140, 86, 75},  {227, 119, 194}, {127, 127, 127},
                                     {188, 189, 34},  {23, 190, 207}};
  if (i < 10) return kTab10[i];
  const double h = std::fmod(static_cast<double>(i) * 137.50776405, 360.0) / 60.0;
  const double s = 0.75, v = 0.85, c = v * s, x = c * (1 - std::abs(std::fmod(h, 2.0) - 1)), m = v - c;
  double r = 0, g = 0, b = 0;
  switch (static_cast<int>(h)) {
    case 0: r = c, g = x; break;
    case 1: r = x, g = c; break;
    case 2: g = c, b = x; break;
    case 3: g = x, b = c; break;
    case 4: r = x, b = c; break;
    default: r = c, b = x; break;
  }
  auto u8 = [&](double t) { return static_cast<uint8_t>(std::lround((t + m) * 255)); };
  return {u8(r), u8(g), u8(b)};
}

namespace detail {

// Rows of a 5x7 glyph, top first; bit 4 is the leftmost column.
using Glyph = std::array<uint8_t, 7>;

inline const Glyph& glyph(char ch) {
  static constexpr Glyph kDigits[10] = {
      {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}, {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E},
      {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}, {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E},
      {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}, {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E},
      {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}, {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08},
      {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}, {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}};
  static constexpr Glyph kLetters[26] = {
      {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}, {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E},  // A B
      {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E}, {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C},  // C D
      {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F}, {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10},  // E F
      {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F}, {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11},  // G H
      {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}, {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C},  // I J
      {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11}, {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F},  // K L
      {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11}, {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11},  // M N
      {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}, {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10},  // O P
      {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D}, {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11},  // Q R
      {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E}, {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04},  // S T
      {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}, {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04},  // U V
      {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A}, {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11},  // W X
      {0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04}, {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F}};  // Y Z
  static constexpr std::pair<char, Glyph> kPunct[] = {
      {' ', {0, 0, 0, 0, 0, 0, 0}},
      {'.', {0, 0, 0, 0, 0, 0x0C, 0x0C}},
      {',', {0, 0, 0, 0, 0x0C, 0x04, 0x08}},
      {'-', {0, 0, 0, 0x1F, 0, 0, 0}},
      {'+', {0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0}},
      {':', {0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0}},
      {'_', {0, 0, 0, 0, 0, 0, 0x1F}},
      {'(', {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}},
      {')', {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08}},
      {'/', {0, 0x01, 0x02, 0x04, 0x08, 0x10, 0}},
      {'%', {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03}},
      {'=', {0, 0, 0x1F, 0, 0x1F, 0, 0}},
      {'[', {0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E}},
      {']', {0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E}},
      {'#', {0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A}},
      {'<', {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02}},
      {'>', {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08}},
      {'!', {0x04, 0x04, 0x04, 0x04, 0x04, 0, 0x04}},
      {'\'', {0x0C, 0x04, 0x08, 0, 0, 0, 0}},
      {'*', {0, 0x04, 0x15, 0x0E, 0x15, 0x04, 0}},
      {'?', {0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04}},
  };
  if (ch >= '0' && ch <= '9') return kDigits[ch - '0'];
  if (ch >= 'a' && ch <= 'z') ch = static_cast<char>(ch - 'a' + 'A');
  if (ch >= 'A' && ch <= 'Z') return kLetters[ch - 'A'];
  for (const auto& [c, g] : kPunct)
    if (c == ch) return g;
  return kPunct[std::size(kPunct) - 1].second;  // '?'
}

}  // namespace detail

// An RGB raster; drawing clips to the canvas (or to a clip rectangle for lines).
class Canvas {
 public:
  static constexpr int kGlyphW = 5, kGlyphH = 7, kAdvance = 6;

  Canvas(int width, int height, Rgb background = {255, 255, 255}) : w_(width), h_(height) {
    MAMCLIP_CHECK(width > 0 && height > 0 && width <= 16384 && height <= 16384, value_error, "Canvas: size ", width,
                  " x ", height, " is out of range; expected 1..16384 each");
    px_.assign(static_cast<size_t>(w_) * h_, background);
  }
  int width() const { return w_; }
  int height() const { return h_; }
  Rgb at(int x, int y) const { return px_[static_cast<size_t>(y) * w_ + x]; }

  void set(int x, int y, Rgb c) {
    if (x >= 0 && y >= 0 && x < w_ && y < h_) px_[static_cast<size_t>(y) * w_ + x] = c;
  }
  // Inclusive corners.
  void fill_rect(int x0, int y0, int x1, int y1, Rgb c) {
    for (int y = std::max(y0, 0); y <= std::min(y1, h_ - 1); ++y)
      for (int x = std::max(x0, 0); x <= std::min(x1, w_ - 1); ++x) px_[static_cast<size_t>(y) * w_ + x] = c;
  }
  void rect(int x0, int y0, int x1, int y1, Rgb c) {
    fill_rect(x0, y0, x1, y0, c);
    fill_rect(x0, y1, x1, y1, c);
    fill_rect(x0, y0, x0, y1, c);
    fill_rect(x1, y0, x1, y1, c);
  }
  // A line `thickness` pixels wide (a square brush on Bresenham's path),
  // drawn only inside the clip rectangle [cx0, cx1] x [cy0, cy1].
  void line(int x0, int y0, int x1, int y1, Rgb c, int thickness, int cx0, int cy0, int cx1, int cy1) {
    const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0);
    const int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int err = dx + dy;
    const int lo = -(thickness - 1) / 2, hi = thickness / 2;
    for (;;) {
      for (int oy = lo; oy <= hi; ++oy)
        for (int ox = lo; ox <= hi; ++ox) {
          const int x = x0 + ox, y = y0 + oy;
          if (x >= cx0 && x <= cx1 && y >= cy0 && y <= cy1) set(x, y, c);
        }
      if (x0 == x1 && y0 == y1) break;
      const int e2 = 2 * err;
      if (e2 >= dy) err += dy, x0 += sx;
      if (e2 <= dx) err += dx, y0 += sy;
    }
  }

  static int text_width(const std::string& s, int scale = 1) {
    return s.empty() ? 0 : static_cast<int>(s.size()) * kAdvance * scale - scale;
  }
  // Text with its top-left corner at (x, y).
  void text(int x, int y, const std::string& s, Rgb c, int scale = 1) {
    for (size_t i = 0; i < s.size(); ++i) {
      const auto& g = detail::glyph(s[i]);
      const int gx = x + static_cast<int>(i) * kAdvance * scale;
      for (int r = 0; r < kGlyphH; ++r)
        for (int col = 0; col < kGlyphW; ++col)
          if (g[r] & (0x10 >> col)) fill_rect(gx + col * scale, y + r * scale, gx + col * scale + scale - 1,
                                              y + r * scale + scale - 1, c);
    }
  }

  // [3, H, W] in [0, 1]; 8-bit values survive write_png exactly.
  Tensor<float> to_tensor() const {
    std::vector<float> v(static_cast<size_t>(3) * w_ * h_);
    const size_t plane = static_cast<size_t>(w_) * h_;
    for (size_t i = 0; i < plane; ++i) {
      v[i] = px_[i].r / 255.0f;
      v[plane + i] = px_[i].g / 255.0f;
      v[2 * plane + i] = px_[i].b / 255.0f;
    }
    return from_vector<float>(v, {3, h_, w_});
  }

 private:
  int w_, h_;
  std::vector<Rgb> px_;
};

namespace detail {

inline std::string truncate_text(const std::string& s, size_t max_chars) {
  if (s.size() <= max_chars) return s;
  if (max_chars <= 2) return s.substr(0, max_chars);
  return s.substr(0, max_chars - 2) + "..";
}

// Tick values: multiples of a 1-2-5 step inside [lo, hi], about `target` of them.
inline std::vector<double> nice_ticks(double lo, double hi, int target, double& step) {
  const double raw = (hi - lo) / std::max(target, 1);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double r = raw / mag;
  step = (r < 1.5 ? 1 : r < 3.5 ? 2 : r < 7.5 ? 5 : 10) * mag;
  std::vector<double> out;
  for (double k = std::ceil(lo / step - 1e-9); k * step <= hi + step * 1e-9; k += 1) {
    const double v = k * step;
    out.push_back(std::abs(v) < step * 1e-9 ? 0.0 : v);
    if (out.size() > 50) break;
  }
  return out;
}

inline std::string tick_label(double v, double step) {
  char buf[48];
  const double a = std::max(std::abs(v), step);
  if (a >= 1e6 || step < 1e-4) {
    std::snprintf(buf, sizeof(buf), "%.3g", v);
  } else {
    const int decimals = std::clamp(static_cast<int>(-std::floor(std::log10(step) + 1e-9)), 0, 6);
    std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  }
  return buf;
}

// Widens a degenerate range (constant data, one point) so it can be drawn.
inline void widen_range(double& lo, double& hi) {
  if (hi - lo > std::max(std::abs(lo), std::abs(hi)) * 1e-12) return;
  const double d = std::max(std::abs(lo) * 0.1, 0.5);
  lo -= d;
  hi += d;
}

}  // namespace detail

using Series = std::pair<std::string, std::vector<std::pair<double, double>>>;  // name, (x, y) points

struct LinePlotOptions {
  int width = 640, height = 400;
  std::string x_label = "step", y_label;  // y_label: drawn above the y axis when non-empty
};

// Where plot_lines drew things: the plot area's pixel box (inclusive) and the
// data range it spans, so callers can locate points.
struct LinePlotLayout {
  int width = 0, height = 0;
  int left = 0, top = 0, right = 0, bottom = 0;
  double x_min = 0, x_max = 1, y_min = 0, y_max = 1;
  std::vector<Rgb> colors;  // per series

  int px(double x) const { return left + static_cast<int>(std::lround((x - x_min) / (x_max - x_min) * (right - left))); }
  int py(double y) const {
    return bottom - static_cast<int>(std::lround((y - y_min) / (y_max - y_min) * (bottom - top)));
  }
};

// Draws the series on one canvas (no PNG): axes with 1-2-5 ticks and grid,
// title, legend (top right), each series a 2-pixel line in series_color(i).
// Points with a non-finite x or y are skipped and break the line; a point
// without finite neighbours is drawn as a 3 x 3 dot. The y range gets 5 %
// padding; a constant series is centred in a widened range.
inline Canvas render_lines(const std::string& title, const std::vector<Series>& series,
                           const LinePlotOptions& options, LinePlotLayout* layout_out = nullptr) {
  MAMCLIP_CHECK(options.width >= 200 && options.height >= 150, value_error, "plot_lines: size ", options.width, " x ",
                options.height, " is too small; expected at least 200 x 150");
  LinePlotLayout L;
  L.width = options.width;
  L.height = options.height;
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  for (const auto& [name, pts] : series)
    for (const auto& [x, y] : pts)
      if (std::isfinite(x) && std::isfinite(y)) {
        x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
      }
  if (!(x0 <= x1)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;  // nothing finite to draw
  detail::widen_range(x0, x1);
  detail::widen_range(y0, y1);
  const double pad = (y1 - y0) * 0.05;
  L.x_min = x0, L.x_max = x1, L.y_min = y0 - pad, L.y_max = y1 + pad;

  double xstep = 0, ystep = 0;
  const auto xt = detail::nice_ticks(L.x_min, L.x_max, 6, xstep);
  const auto yt = detail::nice_ticks(L.y_min, L.y_max, 5, ystep);
  int ylabel_w = 0;
  for (double v : yt) ylabel_w = std::max(ylabel_w, Canvas::text_width(detail::tick_label(v, ystep)));
  L.left = std::max(40, ylabel_w + 12);
  L.right = L.width - 12;
  L.top = 32;
  L.bottom = L.height - 34;

  Canvas cv(L.width, L.height);
  const Rgb black{0, 0, 0}, grid{225, 225, 225}, text_c{40, 40, 40};
  for (double v : xt) {
    const int x = L.px(v);
    cv.fill_rect(x, L.top, x, L.bottom, grid);
    cv.fill_rect(x, L.bottom, x, L.bottom + 4, black);
    const std::string s = detail::tick_label(v, xstep);
    cv.text(x - Canvas::text_width(s) / 2, L.bottom + 7, s, text_c);
  }
  for (double v : yt) {
    const int y = L.py(v);
    cv.fill_rect(L.left, y, L.right, y, grid);
    cv.fill_rect(L.left - 4, y, L.left, y, black);
    const std::string s = detail::tick_label(v, ystep);
    cv.text(L.left - 7 - Canvas::text_width(s), y - 3, s, text_c);
  }
  cv.rect(L.left, L.top, L.right, L.bottom, black);
  const std::string t = detail::truncate_text(title, static_cast<size_t>(L.width / 12 - 2));
  cv.text((L.width - Canvas::text_width(t, 2)) / 2, 8, t, black, 2);
  if (!options.x_label.empty())
    cv.text((L.left + L.right - Canvas::text_width(options.x_label)) / 2, L.height - 12, options.x_label, text_c);
  if (!options.y_label.empty()) cv.text(4, L.top - 10, options.y_label, text_c);

  // Series, clipped to the inside of the frame.
  for (size_t i = 0; i < series.size(); ++i) {
    const Rgb c = series_color(i);
    L.colors.push_back(c);
    const auto& pts = series[i].second;
    auto ok = [&](size_t k) { return k < pts.size() && std::isfinite(pts[k].first) && std::isfinite(pts[k].second); };
    for (size_t k = 0; k < pts.size(); ++k) {
      if (!ok(k)) continue;
      const int xa = L.px(pts[k].first), ya = L.py(pts[k].second);
      if (ok(k + 1)) {
        cv.line(xa, ya, L.px(pts[k + 1].first), L.py(pts[k + 1].second), c, 2, L.left + 1, L.top + 1, L.right - 1,
                L.bottom - 1);
      } else if (k == 0 || !ok(k - 1)) {
        for (int dy = -1; dy <= 1; ++dy)
          for (int dx = -1; dx <= 1; ++dx)
            if (xa + dx > L.left && xa + dx < L.right && ya + dy > L.top && ya + dy < L.bottom)
              cv.set(xa + dx, ya + dy, c);
      }
    }
  }

  // Legend: a framed box in the top-right corner of the plot area.
  if (!series.empty()) {
    const size_t max_chars = 24;
    int w = 0;
    for (const auto& s : series) w = std::max(w, Canvas::text_width(detail::truncate_text(s.first, max_chars)));
    const int row_h = 11;
    const int box_w = w + 28, box_h = static_cast<int>(series.size()) * row_h + 6;
    const int bx1 = L.right - 6, bx0 = bx1 - box_w, by0 = L.top + 6, by1 = by0 + box_h;
    cv.fill_rect(bx0, by0, bx1, by1, {255, 255, 255});
    cv.rect(bx0, by0, bx1, by1, {160, 160, 160});
    for (size_t i = 0; i < series.size(); ++i) {
      const int y = by0 + 4 + static_cast<int>(i) * row_h;
      cv.fill_rect(bx0 + 5, y + 1, bx0 + 18, y + 5, series_color(i));
      cv.text(bx0 + 23, y, detail::truncate_text(series[i].first, max_chars), text_c);
    }
  }
  if (layout_out) *layout_out = L;
  return cv;
}

// render_lines written to `png` (atomically). Returns the layout.
inline LinePlotLayout plot_lines(const std::filesystem::path& png, const std::string& title,
                                 const std::vector<Series>& series, const LinePlotOptions& options = {}) {
  LinePlotLayout L;
  const Canvas cv = render_lines(title, series, options, &L);
  io::write_png(png, cv.to_tensor());
  return L;
}

// Where plot_confusion_matrix drew the grid: cell (t, p) (row: true class,
// column: predicted) spans x in [left + p*cell, left + (p+1)*cell - 1], y likewise from top.
struct ConfusionPlotLayout {
  int width = 0, height = 0;
  int left = 0, top = 0, cell = 0;
};

// The fill of a cell whose row fraction (count / row total) is f: white to
// dark blue (matplotlib's "Blues" end points).
inline Rgb confusion_cell_color(double f) {
  f = std::clamp(f, 0.0, 1.0);
  auto mix = [&](int a, int b) { return static_cast<uint8_t>(std::lround(a + (b - a) * f)); };
  return {mix(247, 8), mix(251, 48), mix(255, 107)};
}

// counts[t][p] = samples of true class t predicted as p (C x C, non-negative).
// Each cell is filled by its row fraction (so a class's recall reads as its
// diagonal's darkness) and labelled with its count.
inline ConfusionPlotLayout plot_confusion_matrix(const std::filesystem::path& png,
                                                 const std::vector<std::vector<int64_t>>& counts,
                                                 const std::vector<std::string>& class_names,
                                                 const std::string& title = "confusion matrix") {
  const size_t C = counts.size();
  MAMCLIP_CHECK(C > 0 && C <= 64, value_error, "plot_confusion_matrix: counts has ", C,
                " rows; expected 1..64 classes");
  MAMCLIP_CHECK(class_names.size() == C, value_error, "plot_confusion_matrix: ", class_names.size(),
                " class names for ", C, " classes; expected one name per class");
  int max_digits = 1;
  for (size_t t = 0; t < C; ++t) {
    MAMCLIP_CHECK(counts[t].size() == C, value_error, "plot_confusion_matrix: row ", t, " of counts has ",
                  counts[t].size(), " entries; expected ", C, " (a square matrix)");
    for (size_t p = 0; p < C; ++p) {
      MAMCLIP_CHECK(counts[t][p] >= 0, value_error, "plot_confusion_matrix: counts[", t, "][", p, "] = ",
                    counts[t][p], "; expected a non-negative count");
      max_digits = std::max(max_digits, static_cast<int>(std::to_string(counts[t][p]).size()));
    }
  }
  ConfusionPlotLayout L;
  L.cell = std::max(44, Canvas::text_width(std::string(static_cast<size_t>(max_digits), '0')) + 12);
  const size_t name_chars = 14;
  int name_w = Canvas::text_width("true");
  for (const auto& n : class_names) name_w = std::max(name_w, Canvas::text_width(detail::truncate_text(n, name_chars)));
  const int grid = static_cast<int>(C) * L.cell;
  L.left = name_w + 14;
  L.top = 50;
  L.width = std::max(L.left + grid + 12, Canvas::text_width(title, 2) + 20);
  L.height = L.top + grid + 28;

  Canvas cv(L.width, L.height);
  const Rgb black{0, 0, 0}, text_c{40, 40, 40};
  cv.text((L.width - Canvas::text_width(title, 2)) / 2, 8, title, black, 2);
  cv.text(6, L.top - 12, "true", text_c);
  const std::string xl = "predicted";
  cv.text(L.left + (grid - Canvas::text_width(xl)) / 2, L.top + grid + 12, xl, text_c);
  const size_t col_chars = static_cast<size_t>(std::max(1, (L.cell + 1) / Canvas::kAdvance));
  for (size_t t = 0; t < C; ++t) {
    int64_t row = 0;
    for (size_t p = 0; p < C; ++p) row += counts[t][p];
    const int y = L.top + static_cast<int>(t) * L.cell;
    cv.text(8, y + (L.cell - Canvas::kGlyphH) / 2, detail::truncate_text(class_names[t], name_chars), text_c);
    for (size_t p = 0; p < C; ++p) {
      const int x = L.left + static_cast<int>(p) * L.cell;
      const double f = row > 0 ? static_cast<double>(counts[t][p]) / static_cast<double>(row) : 0.0;
      cv.fill_rect(x, y, x + L.cell - 1, y + L.cell - 1, confusion_cell_color(f));
      const std::string s = std::to_string(counts[t][p]);
      const Rgb tc = f > 0.5 ? Rgb{255, 255, 255} : Rgb{0, 0, 0};
      cv.text(x + (L.cell - Canvas::text_width(s)) / 2, y + (L.cell - Canvas::kGlyphH) / 2, s, tc);
    }
  }
  for (size_t p = 0; p < C; ++p) {
    const std::string s = detail::truncate_text(class_names[p], col_chars);
    cv.text(L.left + static_cast<int>(p) * L.cell + (L.cell - Canvas::text_width(s)) / 2, L.top - 12, s, text_c);
  }
  cv.rect(L.left - 1, L.top - 1, L.left + grid, L.top + grid, {120, 120, 120});
  io::write_png(png, cv.to_tensor());
  return L;
}

inline ConfusionPlotLayout plot_confusion_matrix(const std::filesystem::path& png, const ConfusionMatrix& cm,
                                                 const std::vector<std::string>& class_names,
                                                 const std::string& title = "confusion matrix") {
  const int64_t C = cm.num_classes();
  std::vector<std::vector<int64_t>> counts(static_cast<size_t>(C), std::vector<int64_t>(static_cast<size_t>(C)));
  for (int64_t t = 0; t < C; ++t)
    for (int64_t p = 0; p < C; ++p) counts[t][p] = cm.count(t, p);
  return plot_confusion_matrix(png, counts, class_names, title);
}

// The jet colour map at v in [0, 1] (blue -> cyan -> yellow -> red), as r, g, b in [0, 1].
inline std::array<float, 3> jet(float v) {
  v = std::clamp(v, 0.0f, 1.0f);
  auto ch = [&](float c) { return std::clamp(1.5f - std::abs(4.0f * v - c), 0.0f, 1.0f); };
  return {ch(3.0f), ch(2.0f), ch(1.0f)};
}

// Grad-CAM style overlay: `heat` [h, w] is resized bilinearly to the image
// (half-pixel centres, edges clamped: cv2.resize INTER_LINEAR / F.interpolate
// with align_corners=False), colour-mapped with jet and blended:
//   out = (1 - alpha) * gray + alpha * jet(heat)       -> [3, H, W] in [0, 1]
// `gray` is [H, W] or [1, H, W]. Values are clamped to [0, 1]; NaN is an error.
inline Tensor<float> heatmap_overlay(const Tensor<float>& gray, const Tensor<float>& heat, double alpha = 0.4) {
  MAMCLIP_CHECK(gray.defined() && (gray.dim() == 2 || (gray.dim() == 3 && gray.size(0) == 1)), shape_error,
                "heatmap_overlay: gray has shape ", gray.defined() ? shape_str(gray.shape()) : std::string("(undefined)"),
                "; expected [H, W] or [1, H, W]");
  MAMCLIP_CHECK(heat.defined() && heat.dim() == 2 && heat.numel() > 0, shape_error, "heatmap_overlay: heat has shape ",
                heat.defined() ? shape_str(heat.shape()) : std::string("(undefined)"),
                "; expected a non-empty [h, w]");
  MAMCLIP_CHECK(alpha >= 0 && alpha <= 1, value_error, "heatmap_overlay: alpha = ", alpha, "; expected 0 <= alpha <= 1");
  const int64_t H = gray.size(-2), W = gray.size(-1), h = heat.size(0), w = heat.size(1);
  MAMCLIP_CHECK(H > 0 && W > 0, shape_error, "heatmap_overlay: gray has shape ", shape_str(gray.shape()),
                "; expected a non-empty image");
  const std::vector<float> g = gray.to_vector(), m = heat.to_vector();
  for (size_t i = 0; i < g.size(); ++i)
    MAMCLIP_CHECK(!std::isnan(g[i]), value_error, "heatmap_overlay: gray holds NaN at element ", i);
  for (size_t i = 0; i < m.size(); ++i)
    MAMCLIP_CHECK(!std::isnan(m[i]), value_error, "heatmap_overlay: heat holds NaN at element ", i);

  // Source coordinate and weights of each output row / column.
  struct Tap {
    int64_t i0, i1;
    float w1;
  };
  auto taps = [](int64_t out, int64_t in) {
    std::vector<Tap> t(static_cast<size_t>(out));
    const double scale = static_cast<double>(in) / static_cast<double>(out);
    for (int64_t o = 0; o < out; ++o) {
      const double s = std::max((o + 0.5) * scale - 0.5, 0.0);
      const int64_t i0 = std::min(static_cast<int64_t>(s), in - 1);
      const int64_t i1 = std::min(i0 + 1, in - 1);
      t[static_cast<size_t>(o)] = {i0, i1, static_cast<float>(s - static_cast<double>(i0))};
    }
    return t;
  };
  const auto ty = taps(H, h), tx = taps(W, w);
  const auto a = static_cast<float>(alpha);
  std::vector<float> out(static_cast<size_t>(3 * H * W));
  const size_t plane = static_cast<size_t>(H * W);
  for (int64_t y = 0; y < H; ++y) {
    const Tap& vy = ty[static_cast<size_t>(y)];
    for (int64_t x = 0; x < W; ++x) {
      const Tap& vx = tx[static_cast<size_t>(x)];
      auto at = [&](int64_t r, int64_t c) { return m[static_cast<size_t>(r * w + c)]; };
      const float top = at(vy.i0, vx.i0) + (at(vy.i0, vx.i1) - at(vy.i0, vx.i0)) * vx.w1;
      const float bot = at(vy.i1, vx.i0) + (at(vy.i1, vx.i1) - at(vy.i1, vx.i0)) * vx.w1;
      const auto rgb = jet(top + (bot - top) * vy.w1);
      const size_t i = static_cast<size_t>(y * W + x);
      const float base = std::clamp(g[i], 0.0f, 1.0f);
      for (int c = 0; c < 3; ++c) out[c * plane + i] = (1 - a) * base + a * rgb[c];
    }
  }
  return from_vector<float>(out, {3, H, W});
}

// heatmap_overlay written to `png` (atomically).
inline void overlay_heatmap(const std::filesystem::path& png, const Tensor<float>& gray, const Tensor<float>& heat,
                            double alpha = 0.4) {
  io::write_png(png, heatmap_overlay(gray, heat, alpha));
}

}  // namespace mamclip::train
