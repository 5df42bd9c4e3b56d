#pragma once
// A procedurally generated, SYNTHETIC mammogram-like data set for demos and
// tests where no real data may be used. Not medical data: shapes only
// resemble mammograms.
//
//   make_synthetic_set(dir, count, height, width, seed)
//     writes dir/synthetic_NNNNN.png (8-bit gray), dir/captions.jsonl (the
//     read_caption_records format, with patient_id and label) and
//     dir/README.txt (says what the files are), and returns the samples.
//
// Each image: a dark background and a breast-shaped bright half-ellipse
// against the chest wall (left or right edge), with smooth fibroglandular
// texture whose amount follows an ACR-like density A-D, plus sensor noise.
// Classes (balanced, a seeded permutation of 0, 1, 2, 0, 1, 2, ...):
//   0 normal     no finding
//   1 benign     one round / slightly oval circumscribed mass with a sharp edge
//   2 malignant  a small irregular core with radiating spicules, and/or a
//                cluster of bright microcalcification dots
// Lesion size, position, brightness and the breast's size, side and density
// vary. The caption names the side, the density and the drawn finding with
// its position, in one of a few phrasings. A small CNN learns the class from
// the pixels (benign: a large bright disc; malignant: thin lines or dots).
//
// Deterministic: image i depends only on (seed, i) and its class; the class
// assignment on (seed, count). Hundreds of 128 x 96 images take well under a
// second.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mamclip/core/error.hpp"
#include "mamclip/core/factory.hpp"
#include "mamclip/core/random.hpp"
#include "mamclip/data/datasets.hpp"
#include "mamclip/io/image.hpp"

namespace mamclip::data {

namespace detail {

inline double smoothstep01(double t) {
  t = std::clamp(t, 0.0, 1.0);
  return t * t * (3 - 2 * t);
}

// Smooth value noise in [0, 1]: a (cells + 1)^2 lattice of uniforms from one
// Philox stream, interpolated with smoothstep. (u, v) in [0, 1].
struct ValueNoise {
  int cells;
  std::vector<double> lattice;
  ValueNoise(uint64_t key, uint64_t stream, int cells_)
      : cells(cells_), lattice(static_cast<size_t>((cells_ + 1) * (cells_ + 1))) {
    Philox::for_each_uniform(key, stream, lattice.size(), [&](uint64_t i, double u) { lattice[i] = u; });
  }
  double operator()(double u, double v) const {
    const double x = std::clamp(u, 0.0, 1.0) * cells, y = std::clamp(v, 0.0, 1.0) * cells;
    const int x0 = std::min(cells - 1, static_cast<int>(x)), y0 = std::min(cells - 1, static_cast<int>(y));
    const double fx = smoothstep01(x - x0), fy = smoothstep01(y - y0);
    auto at = [&](int yy, int xx) { return lattice[static_cast<size_t>(yy * (cells + 1) + xx)]; };
    const double top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx;
    const double bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx;
    return top * (1 - fy) + bottom * fy;
  }
};

// Distance from p to the segment a-b, and the position along it in [0, 1].
inline double segment_distance(double px, double py, double ax, double ay, double bx, double by, double& along) {
  const double dx = bx - ax, dy = by - ay, len2 = dx * dx + dy * dy;
  along = len2 > 0 ? std::clamp(((px - ax) * dx + (py - ay) * dy) / len2, 0.0, 1.0) : 0.0;
  const double qx = ax + along * dx - px, qy = ay + along * dy - py;
  return std::sqrt(qx * qx + qy * qy);
}

struct SyntheticImage {
  Tensor<float> pixels;  // [1, H, W] in [0, 1]
  std::string caption;
};

// Philox streams of image key: 0 scalar parameters, 1-2 texture octaves,
// 3 lesion details, 4 noise.
inline SyntheticImage render_synthetic(int64_t h, int64_t w, int64_t label, uint64_t key) {
  int64_t k = 0;
  auto u = [&] { return Philox::uniform(key, 0, static_cast<uint64_t>(k++)); };
  auto pick = [&](int n) { return std::min(n - 1, static_cast<int>(u() * n)); };
  const bool left = u() < 0.5;  // chest wall on the image's left edge for a left breast
  const double cy = h * (0.5 + 0.08 * (u() - 0.5));
  const double ay = h * (0.40 + 0.08 * u()), ax = w * (0.62 + 0.25 * u());
  const int density = pick(4);  // 0..3 = A..D
  const double tissue = 0.30 + 0.08 * u();
  const double gland = 0.06 + 0.11 * density;
  const double s = static_cast<double>(std::min(h, w));

  // Lesion centre: depth t (fraction of ax from the wall), vertical offset v.
  const double t = 0.25 + 0.45 * u(), v = 0.9 * (u() - 0.5) * std::sqrt(1 - t * t);
  const double lx = left ? t * ax : (w - 1) - t * ax, ly = cy + v * 2 * ay * 0.8;
  const ValueNoise coarse(key, 1, 5), fine(key, 2, 11);

  Tensor<float> img = empty<float>({1, h, w});
  float* p = img.data_ptr();
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      const double depth = left ? static_cast<double>(x) : static_cast<double>(w - 1 - x);
      const double r2 = (depth / ax) * (depth / ax) + ((y - cy) / ay) * ((y - cy) / ay);
      const double inside = smoothstep01((1.0 - r2) / 0.12);  // soft skin line
      const double tex = 0.65 * coarse(static_cast<double>(x) / w, static_cast<double>(y) / h) +
                         0.35 * fine(static_cast<double>(x) / w, static_cast<double>(y) / h);
      // Fibroglandular tissue thins towards the nipple.
      const double g = gland * smoothstep01((tex - 0.25) / 0.6) * (1.0 - 0.5 * depth / ax);
      p[y * w + x] = static_cast<float>(0.03 + inside * (tissue + g));
    }
  }

  // f(x, y) for the pixels within (rx, ry) + 2 of (cx, cy), clipped to the image.
  auto for_box = [&](double cx, double cyy, double rx, double ry, auto&& f) {
    const int64_t y0 = std::max<int64_t>(0, static_cast<int64_t>(cyy - ry - 2)),
                  y1 = std::min<int64_t>(h - 1, static_cast<int64_t>(cyy + ry + 2));
    const int64_t x0 = std::max<int64_t>(0, static_cast<int64_t>(cx - rx - 2)),
                  x1 = std::min<int64_t>(w - 1, static_cast<int64_t>(cx + rx + 2));
    for (int64_t y = y0; y <= y1; ++y)
      for (int64_t x = x0; x <= x1; ++x) f(x, y);
  };
  auto add_disc = [&](double cx, double cyy, double rx, double ry, double amount) {
    for_box(cx, cyy, rx, ry, [&](int64_t x, int64_t y) {
      const double d = std::sqrt(((x - cx) / rx) * ((x - cx) / rx) + ((y - cyy) / ry) * ((y - cyy) / ry));
      const double m = std::clamp((1.0 - d) * std::min(rx, ry) / 1.2 + 0.5, 0.0, 1.0);  // ~1 px edge
      p[y * w + x] += static_cast<float>(amount * m);
    });
  };

  int64_t k3 = 0;
  auto u3 = [&] { return Philox::uniform(key, 3, static_cast<uint64_t>(k3++)); };
  std::string finding;
  const int phrasing = pick(3);
  const char* size_word = "";
  if (label == 1) {
    const double r = s * (0.07 + 0.05 * u());
    const double ecc = 0.85 + 0.15 * u();
    add_disc(lx, ly, r, r * ecc, 0.22 + 0.1 * u());
    size_word = r < s * 0.09 ? "small" : (r < s * 0.105 ? "medium-sized" : "large");
    finding = ecc > 0.95 ? "round circumscribed mass" : "oval circumscribed mass";
  } else if (label == 2) {
    const double kind = u();
    const bool spiculated = kind < 0.75, calcs = kind >= 0.5;
    if (spiculated) {
      const double r = s * (0.035 + 0.025 * u());
      add_disc(lx, ly, r, r * (0.8 + 0.2 * u()), 0.2 + 0.08 * u());
      const int n = 8 + pick(7);
      const double reach = r * (2.0 + 1.0 * u());
      std::vector<double> ex(static_cast<size_t>(n)), ey(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) {
        const double angle = 6.283185307179586 * (i + 0.6 * u3()) / n, len = reach * (0.7 + 0.3 * u3());
        ex[static_cast<size_t>(i)] = lx + len * std::cos(angle);
        ey[static_cast<size_t>(i)] = ly + len * std::sin(angle);
      }
      for_box(lx, ly, reach, reach, [&](int64_t x, int64_t y) {
        double best = 0;
        for (int i = 0; i < n; ++i) {
          double along = 0;
          const double d = segment_distance(static_cast<double>(x), static_cast<double>(y), lx, ly,
                                            ex[static_cast<size_t>(i)], ey[static_cast<size_t>(i)], along);
          best = std::max(best, std::max(0.0, 1.0 - d / 0.9) * (1.0 - 0.6 * along));
        }
        p[y * w + x] += static_cast<float>(0.2 * best);
      });
      size_word = r < s * 0.045 ? "small" : "medium-sized";
    }
    if (calcs) {
      // The cluster sits beside a spiculated mass, or at the lesion centre.
      const double cx = spiculated ? lx + (left ? -1 : 1) * s * 0.02 : lx, ccy = spiculated ? ly + s * 0.08 : ly;
      const double spread = s * (0.04 + 0.03 * u());
      const int n = 6 + pick(9);
      for (int i = 0; i < n; ++i) {
        const double a = 6.283185307179586 * u3(), d = spread * std::sqrt(u3());
        const double rad = 0.7 + 0.6 * u3();
        add_disc(cx + d * std::cos(a), ccy + d * std::sin(a), rad, rad, 0.45 + 0.2 * u3());
      }
    }
    finding = spiculated && calcs ? "spiculated mass with associated microcalcifications"
              : spiculated        ? "spiculated mass"
                                  : "cluster of fine pleomorphic microcalcifications";
  }

  // Sensor noise, then the [0, 1] range of an 8-bit image.
  Philox::for_each_normal(key, 4, static_cast<uint64_t>(h * w), [&](uint64_t i, double z) {
    p[i] = std::clamp(p[i] + static_cast<float>(0.012 * z), 0.f, 1.f);
  });

  static const char* const density_words[4] = {"the breast is almost entirely fatty",
                                               "there are scattered areas of fibroglandular density",
                                               "the breast is heterogeneously dense", "the breast is extremely dense"};
  const std::string letter(1, static_cast<char>('a' + density));
  const std::string side = left ? "left" : "right";
  const double rel = (ly - cy) / ay;
  const std::string vertical = rel < -0.2 ? "upper" : (rel > 0.2 ? "lower" : "central");
  const std::string depth = t < 0.4 ? "posterior" : (t < 0.55 ? "middle" : "anterior");
  const std::string where = vertical + " " + depth + " region";
  std::string c = "synthetic " + side + " mammogram. ";
  c += phrasing == 0 ? std::string(density_words[density]) + " (density " + letter + "). "
                     : "breast density " + letter + ": " + density_words[density] + ". ";
  if (label == 0) {
    static const char* const normal[3] = {"no mass, distortion or suspicious calcification is seen.",
                                          "no suspicious findings.", "negative study, no focal abnormality."};
    c += normal[phrasing];
  } else {
    const std::string sized = std::string(size_word).empty() ? finding : std::string(size_word) + " " + finding;
    const std::string verdict = label == 1 ? "probably benign" : "highly suspicious for malignancy";
    if (phrasing == 2)
      c += where + " of the " + side + " breast: " + sized + ", " + verdict + ".";
    else
      c += "there is a " + sized + " in the " + where + " of the " + side + " breast, " + verdict + ".";
  }
  return {img, c};
}

}  // namespace detail

inline std::vector<Sample> make_synthetic_set(const std::filesystem::path& dir, int64_t count, int64_t height,
                                              int64_t width, uint64_t seed) {
  MAMCLIP_CHECK(count >= 0, value_error, "make_synthetic_set: count is ", count, "; expected >= 0");
  MAMCLIP_CHECK(height >= 32 && width >= 32, value_error, "make_synthetic_set: image size ", height, " x ", width,
                "; expected at least 32 x 32");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  MAMCLIP_CHECK(!ec && std::filesystem::is_directory(dir), io_error, "make_synthetic_set: cannot create '",
                dir.string(), "': ", ec.message());
  const uint64_t base = detail::mix_keys(seed, 0x53594E5448ull);
  const std::vector<int64_t> perm = detail::seeded_permutation(count, base, 0);
  static const char* const class_names[3] = {"normal", "benign", "malignant"};
  std::vector<Sample> out;
  out.reserve(static_cast<size_t>(count));
  std::string jsonl;
  // Plain writes, not io::AtomicFile: an fsync per image would cost more than
  // drawing it, and a half-written set is simply generated again.
  auto write_bytes = [](const std::filesystem::path& path, const std::vector<uint8_t>& bytes) {
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    MAMCLIP_CHECK(f.good(), io_error, "make_synthetic_set: cannot write '", path.string(), "'");
  };
  for (int64_t i = 0; i < count; ++i) {
    const int64_t label = perm[static_cast<size_t>(i)] % 3;
    const detail::SyntheticImage im =
        detail::render_synthetic(height, width, label, detail::mix_keys(base, static_cast<uint64_t>(i) + 1));
    char name[32];
    std::snprintf(name, sizeof name, "synthetic_%05lld.png", static_cast<long long>(i));
    Sample s;
    s.id = name;
    s.image = dir / name;
    s.caption = im.caption;
    s.label = label;
    // Two images per synthetic "patient", as screening pairs come.
    s.patient_id = "synthetic-p" + std::to_string(i / 2);
    write_bytes(s.image, io::encode_png(im.pixels));
    jsonl += nlohmann::json{{"image", s.id},
                            {"caption", s.caption},
                            {"patient_id", s.patient_id},
                            {"label", s.label},
                            {"class", class_names[label]}}
                 .dump() +
             "\n";
    out.push_back(std::move(s));
  }
  auto write_text = [&](const std::string& file, const std::string& text) {
    write_bytes(dir / file, std::vector<uint8_t>(text.begin(), text.end()));
  };
  write_text("captions.jsonl", jsonl);
  write_text("README.txt",
             ::mamclip::detail::str_cat(
                 "SYNTHETIC DATA -- NOT REAL MAMMOGRAMS, NOT MEDICAL DATA\n\n", count, " procedurally drawn ", height,
                 " x ", width, " 8-bit gray images made by mamclip::data::make_synthetic_set (seed ", seed,
                 ") for demos and tests.\n",
                 "Classes (label in captions.jsonl): 0 normal (no finding), 1 benign (round/oval circumscribed "
                 "mass), 2 malignant (spiculated mass and/or microcalcification cluster).\n",
                 "captions.jsonl: one {image, caption, patient_id, label, class} per line "
                 "(read_caption_records format; two images per synthetic patient).\n"));
  return out;
}

}  // namespace mamclip::data
