// data/transforms.hpp against OpenCV / albumentations outputs computed by
// tools/make_image_fixture.py on synthetic inputs, plus exact properties
// (flips, min-max, channel replication), the heavy pipeline's draw
// frequencies, and the real mini-MIAS images when MAMCLIP_SHARED_DATA has them.

#include <chrono>
#include <cmath>
#include <filesystem>

#include "support/test_support.hpp"
#include "mamclip/data/transforms.hpp"

namespace test_transforms {
using namespace mamclip;
using data::Interpolation;

namespace {

const io::SafetensorsFile& fixture() {
  static const io::SafetensorsFile f(test::fixture_path("image/transforms.safetensors"));
  return f;
}

const nlohmann::json& params() {
  static const nlohmann::json j = nlohmann::json::parse(fixture().metadata().at("params"));
  return j;
}

Tensor<float> get(const std::string& name) { return fixture().get<float>(name); }

// The integer pattern of the fixture script: (3x^2 + 5y + 7xy) mod 251.
Tensor<float> pattern(int64_t h, int64_t w) {
  Tensor<float> t = empty<float>({h, w});
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x) t.data_ptr()[y * w + x] = static_cast<float>((3 * x * x + 5 * y + 7 * x * y) % 251);
  return t;
}

using test::max_abs_diff;

// [3, H, W] from [H, W]: the same plane three times.
Tensor<float> stack_for_test(const Tensor<float>& g) { return data::to_three_channels(g); }

// Row sums [H] and column sums [W] of a [H, W] image, in double.
std::pair<std::vector<double>, std::vector<double>> sums(const Tensor<float>& img) {
  const int64_t h = img.size(0), w = img.size(1);
  const Tensor<float> c = img.contiguous();
  std::vector<double> rows(h, 0.0), cols(w, 0.0);
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x) {
      rows[y] += c.data_ptr()[y * w + x];
      cols[x] += c.data_ptr()[y * w + x];
    }
  return {rows, cols};
}

void require_sums_and_samples(const Tensor<float>& ours, const std::string& prefix, const std::string& index_name,
                              double sum_tol, double sample_tol) {
  const auto [rows, cols] = sums(ours);
  const auto ref_rows = get(prefix + "_rows").to_vector(), ref_cols = get(prefix + "_cols").to_vector();
  REQUIRE(rows.size() == ref_rows.size());
  REQUIRE(cols.size() == ref_cols.size());
  double worst_row = 0, worst_col = 0;
  for (size_t i = 0; i < rows.size(); ++i) worst_row = std::max(worst_row, std::abs(rows[i] - ref_rows[i]));
  for (size_t i = 0; i < cols.size(); ++i) worst_col = std::max(worst_col, std::abs(cols[i] - ref_cols[i]));
  INFO(prefix << ": worst row sum error " << worst_row << ", worst column sum error " << worst_col);
  CHECK(worst_row <= sum_tol);
  CHECK(worst_col <= sum_tol);
  const auto idx = get(index_name).to_vector();
  const auto ref = get(prefix + "_samples").to_vector();
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const auto y = static_cast<int64_t>(idx[2 * i]), x = static_cast<int64_t>(idx[2 * i + 1]);
    worst = std::max(worst, std::abs(static_cast<double>(ours.data_ptr()[y * ours.size(1) + x]) - ref[i]));
  }
  INFO(prefix << ": worst sampled pixel error " << worst);
  CHECK(worst <= sample_tol);
}

// uint8 outputs saturate: lanczos overshoot is clipped to 0..255.
Tensor<float> clip255(const Tensor<float>& t) {
  Tensor<float> c = t.contiguous().clone();
  for (int64_t i = 0; i < c.numel(); ++i) c.data_ptr()[i] = std::clamp(c.data_ptr()[i], 0.f, 255.f);
  return c;
}

std::vector<double> json_steps(const nlohmann::json& j) { return j.get<std::vector<double>>(); }

const char* interp_key(Interpolation i) {
  return i == Interpolation::linear ? "linear" : (i == Interpolation::area ? "area" : "lanczos4");
}

}  // namespace

TEST_CASE("resize matches cv2.resize (float and uint8) for odd ratios down, up and mixed") {
  for (const std::string name : {"down", "up", "mixed"}) {
    const Tensor<float> in = get("resize_" + name + "_in");
    const auto size = params().at("resize_" + name).get<std::vector<int64_t>>();
    for (Interpolation interp : {Interpolation::linear, Interpolation::area, Interpolation::lanczos4}) {
      const std::string key = "resize_" + name + "_" + interp_key(interp);
      const Tensor<float> ours = data::resize(in, size[0], size[1], interp);
      INFO(key);
      // OpenCV on float32: the same arithmetic up to float rounding (values 0..255).
      CHECK(max_abs_diff(ours, get(key)) <= 2e-3);
      // OpenCV on uint8 (fixed-point weights, rounded output): within one grey level.
      CHECK(max_abs_diff(clip255(ours), get(key + "_u8")) <= 1.0);
    }
  }
}

TEST_CASE("resize of 512 x 512 to 1024 x 768 matches cv2.resize (row/column sums, sampled pixels)") {
  const Tensor<float> big = pattern(512, 512);
  for (Interpolation interp : {Interpolation::linear, Interpolation::area, Interpolation::lanczos4}) {
    const Tensor<float> ours = data::resize(big, 1024, 768, interp);
    REQUIRE(ours.shape() == Shape{1024, 768});
    require_sums_and_samples(ours, std::string("big_") + interp_key(interp), "big_index", 2.0, 4e-3);
  }
}

TEST_CASE("resize keeps rank and channels, handles strided input, identity size copies") {
  const Tensor<float> in = get("resize_down_in");  // [37, 53]
  const Tensor<float> three = stack_for_test(in);   // [3, 37, 53]
  const Tensor<float> out3 = data::resize(three, 20, 31, Interpolation::area);
  REQUIRE(out3.shape() == Shape{3, 20, 31});
  const Tensor<float> out1 = data::resize(in, 20, 31, Interpolation::area);
  for (int64_t k = 0; k < 3; ++k) CHECK(max_abs_diff(out3.select(0, k).contiguous(), out1) == 0.0);
  // A transposed view resizes like its contiguous copy.
  const Tensor<float> t = in.t();
  CHECK(max_abs_diff(data::resize(t, 19, 11), data::resize(t.contiguous(), 19, 11)) == 0.0);
  const Tensor<float> same = data::resize(in, 37, 53);
  CHECK(max_abs_diff(same, in) == 0.0);
  CHECK_FALSE(same.shares_storage_with(in));
}

TEST_CASE("resize_by uses cv2's fx/fy sizes and sampling") {
  const Tensor<float> in = get("downscale_in");  // [41, 33]
  const Tensor<float> small = data::resize_by(in, 0.83, Interpolation::area);
  CHECK(small.shape() == Shape{34, 27});  // round(41 * 0.83) = 34, round(33 * 0.83) = 27
  MAMCLIP_REQUIRE_THROWS_WITH(data::resize_by(in, 0.01), value_error, "into 0 x 0");
  MAMCLIP_REQUIRE_THROWS_WITH(data::resize_by(in, -1.0), value_error, "scale is -1");
}

TEST_CASE("downscale matches albumentations Downscale (cv2.resize with fx, then back)") {
  const Tensor<float> in = get("downscale_in");
  for (double scale : params().at("downscale_scales").get<std::vector<double>>()) {
    const std::pair<const char*, std::pair<Interpolation, Interpolation>> combos[] = {
        {"area_linear", {Interpolation::area, Interpolation::linear}},
        {"area_lanczos4", {Interpolation::area, Interpolation::lanczos4}},
        {"linear_linear", {Interpolation::linear, Interpolation::linear}}};
    for (const auto& [name, du] : combos) {
      std::ostringstream key;
      key << "downscale_" << scale << "_" << name;
      INFO(key.str());
      CHECK(max_abs_diff(data::downscale(in, scale, du.first, du.second), get(key.str())) <= 2e-3);
    }
  }
  MAMCLIP_REQUIRE_THROWS_WITH(data::downscale(in, 1.5), value_error, "expected 0 < scale < 1");
}

TEST_CASE("grid_distortion matches albumentations' grid and cv2.remap (OpenCV 4 fixed point and exact)") {
  for (const std::string name : {"grid_a", "grid_b", "grid_c"}) {
    INFO(name);
    const auto& p = params().at(name);
    const auto shape = p.at("shape").get<std::vector<int64_t>>();
    std::vector<double> sx = json_steps(p.at("raw_x")), sy = json_steps(p.at("raw_y"));
    data::detail::normalize_grid_steps(sx, shape[1]);
    data::detail::normalize_grid_steps(sy, shape[0]);
    const auto ref_x = json_steps(p.at("steps_x")), ref_y = json_steps(p.at("steps_y"));
    for (size_t i = 0; i < sx.size(); ++i) {
      CHECK(sx[i] == Approx(ref_x[i]).epsilon(1e-14));
      CHECK(sy[i] == Approx(ref_y[i]).epsilon(1e-14));
    }
    if (name == "grid_c") {
      const Tensor<float> ours = data::grid_distortion(pattern(shape[0], shape[1]), ref_x, ref_y);
      require_sums_and_samples(ours, name, name + "_index", 2.0, 4e-3);
    } else {
      const Tensor<float> in = get(name + "_in");
      const Tensor<float> ours = data::grid_distortion(in, ref_x, ref_y);
      CHECK(max_abs_diff(ours, get(name + "_out")) <= 2e-3);
      CHECK(max_abs_diff(ours, get(name + "_out_u8")) <= 1.0);
      const Tensor<float> exact = data::grid_distortion(in, ref_x, ref_y, 0.f, data::RemapCoordinates::exact);
      CHECK(max_abs_diff(exact, get(name + "_out_exact")) <= 2e-3);
      CHECK(max_abs_diff(exact, ours) > 0.1);  // the two conventions really differ
    }
  }
  const Tensor<float> in = get("grid_a_in");
  const std::vector<double> one = {1.0};
  MAMCLIP_REQUIRE_THROWS_WITH(data::grid_distortion(in, one, one), value_error, "expected num_steps + 1 >= 2");
}

TEST_CASE("flips are exact and keep rank") {
  const Tensor<float> in = stack_for_test(get("grid_b_in"));  // [3, 37, 53]
  const Tensor<float> h = data::hflip(in), v = data::vflip(in);
  bool ok = true;
  for (int64_t k = 0; k < 3; ++k)
    for (int64_t y = 0; y < 37; ++y)
      for (int64_t x = 0; x < 53; ++x) {
        ok = ok && h(k, y, x) == in(k, y, 52 - x);
        ok = ok && v(k, y, x) == in(k, 36 - y, x);
      }
  CHECK(ok);
  CHECK(max_abs_diff(data::hflip(data::hflip(in)), in) == 0.0);
  const Tensor<float> two = get("grid_b_in");
  CHECK(data::vflip(two).shape() == two.shape());
  CHECK(max_abs_diff(data::vflip(two.t()), data::vflip(two.t().contiguous())) == 0.0);
}

TEST_CASE("min_max_scale is (x - min) / max(x - min) in float; constant images are an error or zeros") {
  const Tensor<float> in = get("grid_b_in");
  const Tensor<float> out = data::min_max_scale(in);
  const auto v = in.to_vector(), o = out.to_vector();
  const float lo = *std::min_element(v.begin(), v.end()), hi = *std::max_element(v.begin(), v.end());
  bool exact = true;
  for (size_t i = 0; i < v.size(); ++i) exact = exact && o[i] == (v[i] - lo) / (hi - lo);
  CHECK(exact);
  CHECK(*std::min_element(o.begin(), o.end()) == 0.f);
  CHECK(*std::max_element(o.begin(), o.end()) == 1.f);
  const Tensor<float> flat = full<float>({2, 5, 4}, 37.f);
  MAMCLIP_REQUIRE_THROWS_WITH(data::min_max_scale(flat, data::ConstantImage::error, "scan.png"), value_error,
                              "'scan.png' is constant (every value is 37)");
  const Tensor<float> z = data::min_max_scale(flat, data::ConstantImage::zeros);
  CHECK(z.shape() == flat.shape());
  for (float x : z.to_vector()) CHECK(x == 0.f);
  Tensor<float> bad = in.clone();
  bad.data_ptr()[5] = NAN;
  MAMCLIP_REQUIRE_THROWS_WITH(data::min_max_scale(bad, data::ConstantImage::error, "b.png"), value_error,
                              "'b.png' has the non-finite value nan at flat index 5");
}

TEST_CASE("to_three_channels replicates gray, keeps RGB, refuses other channel counts") {
  const Tensor<float> g = get("resize_up_in");  // [13, 7]
  const Tensor<float> t = data::to_three_channels(g);
  REQUIRE(t.shape() == Shape{3, 13, 7});
  for (int64_t k = 0; k < 3; ++k) CHECK(max_abs_diff(t.select(0, k).contiguous(), g) == 0.0);
  CHECK(data::to_three_channels(g.unsqueeze(0)).shape() == Shape{3, 13, 7});
  CHECK(max_abs_diff(data::to_three_channels(t), t) == 0.0);
  MAMCLIP_REQUIRE_THROWS_WITH(data::to_three_channels(zeros<float>({2, 4, 4})), shape_error,
                              "expected 1 or 3 channels");
  MAMCLIP_REQUIRE_THROWS_WITH(data::to_three_channels(zeros<float>({4})), shape_error,
                              "expected [C, H, W] or [H, W]");
}

TEST_CASE("heavy augmentation draws match the reference's probabilities (binomial, 5 sigma)") {
  constexpr int n = 20000;
  Generator gen(1234);
  int hf = 0, vf = 0, both = 0, ds = 0, grid = 0, ds_area_lin = 0, ds_area_lanczos = 0, ds_lin_lin = 0;
  double scale_lo = 1, scale_hi = 0, scale_sum = 0;
  for (int i = 0; i < n; ++i) {
    const data::HeavyAugmentation a = data::sample_heavy_augmentation(1024, 768, gen);
    hf += a.hflip;
    vf += a.vflip;
    both += a.hflip && a.vflip;
    if (a.downscale) {
      ++ds;
      const auto& d = *a.downscale;
      scale_lo = std::min(scale_lo, d.scale);
      scale_hi = std::max(scale_hi, d.scale);
      scale_sum += d.scale;
      if (d.down == Interpolation::area && d.up == Interpolation::linear) ++ds_area_lin;
      else if (d.down == Interpolation::area && d.up == Interpolation::lanczos4) ++ds_area_lanczos;
      else if (d.down == Interpolation::linear && d.up == Interpolation::linear) ++ds_lin_lin;
    }
    if (a.grid) {
      ++grid;
      REQUIRE(a.grid->steps_x.size() == 6);
      double sx = 0, sy = 0;
      for (double s : a.grid->steps_x) sx += s;
      for (double s : a.grid->steps_y) sy += s;
      // Normalised: 768 / floor(768 / 5) and 1024 / floor(1024 / 5).
      CHECK(sx == Approx(768.0 / 153).epsilon(1e-12));
      CHECK(sy == Approx(1024.0 / 204).epsilon(1e-12));
    }
  }
  auto within = [](int count, int trials, double p) {
    const double sigma = std::sqrt(trials * p * (1 - p));
    INFO(count << " of " << trials << ", expected p = " << p);
    CHECK(std::abs(count - trials * p) <= 5 * sigma);
  };
  within(hf, n, 0.5);
  within(vf, n, 0.5);
  within(both, n, 0.25);
  within(ds, n, 0.125);
  within(grid, n, 0.5);
  within(ds_area_lin, ds, 0.1);
  within(ds_area_lanczos, ds, 0.1);
  within(ds_lin_lin, ds, 0.8);
  CHECK(scale_lo >= 0.75);
  CHECK(scale_hi < 0.95);
  CHECK(scale_sum / ds == Approx(0.85).margin(0.01));
}

TEST_CASE("preprocess_mammogram: [3, H, W] in [0, 1]; none == soft; heavy is apply(sample) of the same draw") {
  const Tensor<float> img = pattern(90, 70) * 200.f;  // 16-bit-like range
  Generator gen(5);
  data::MammogramTransformOptions opt;
  opt.height = 64;
  opt.width = 48;
  const Tensor<float> none = data::preprocess_mammogram(img, opt, gen);
  CHECK(gen.offset() == 0);  // no augmentation: no draws
  REQUIRE(none.shape() == Shape{3, 64, 48});
  const auto v = none.to_vector();
  CHECK(*std::min_element(v.begin(), v.end()) == 0.f);
  CHECK(*std::max_element(v.begin(), v.end()) == 1.f);
  CHECK(max_abs_diff(none, data::min_max_scale(data::to_three_channels(data::resize(img, 64, 48)))) == 0.0);
  opt.augmentation = data::Augmentation::soft;
  CHECK(max_abs_diff(data::preprocess_mammogram(img, opt, gen), none) == 0.0);

  opt.augmentation = data::Augmentation::heavy;
  int changed = 0;
  for (uint64_t seed = 0; seed < 8; ++seed) {
    Generator g1(seed), g2(seed);
    const Tensor<float> heavy = data::preprocess_mammogram(img, opt, g1);
    const data::HeavyAugmentation a = data::sample_heavy_augmentation(64, 48, g2);
    const Tensor<float> expected = data::min_max_scale(
        data::to_three_channels(data::apply_heavy_augmentation(data::resize(img, 64, 48), a)));
    CHECK(max_abs_diff(heavy, expected) == 0.0);
    CHECK(g1.offset() == g2.offset());
    changed += max_abs_diff(heavy, none) > 0;
  }
  CHECK(changed >= 6);  // P(no flip, no downscale, no grid) = 0.25 * 0.875 * 0.5 per seed

  io::Image image{full<float>({1, 20, 10}, 3.f), 8, "flat.png"};
  opt.augmentation = data::Augmentation::none;
  MAMCLIP_REQUIRE_THROWS_WITH(data::preprocess_mammogram(image, opt, gen), value_error, "'flat.png' is constant");
  opt.constant_image = data::ConstantImage::zeros;
  CHECK(data::preprocess_mammogram(image, opt, gen).shape() == Shape{3, 64, 48});
}

TEST_CASE("resize of a 4096 x 3328 mammogram-sized image to 1024 x 768 takes tens of milliseconds") {
  const Tensor<float> big = pattern(4096, 3328);
  for (Interpolation interp : {Interpolation::linear, Interpolation::area}) {
    const auto t0 = std::chrono::steady_clock::now();
    const Tensor<float> out = data::resize(big, 1024, 768, interp);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    WARN("resize 4096x3328 -> 1024x768 (" << interp_key(interp) << "): " << ms << " ms");
    CHECK(out.shape() == Shape{1024, 768});
    CHECK(ms < 2000);  // generous for sanitizer builds; Release takes tens of ms
  }
}

TEST_CASE("real mini-MIAS images: resize matches OpenCV's statistics; flips and min-max exact") {
  const std::filesystem::path dir = std::filesystem::path(MAMCLIP_SHARED_DATA) / "mias" / "images";
  const std::filesystem::path first = dir / "mdb001.png";
  if (!std::filesystem::exists(first)) {
    WARN("SKIPPED: " << first << " is absent (set MAMCLIP_SHARED_DATA to the shared data folder)");
    return;
  }
  const nlohmann::json stats = test::load_json(test::fixture_path("image/mias_stats.json"));
  const io::Image img = io::read_image(first);
  REQUIRE(img.pixels.shape() == Shape{1, 512, 512});
  const Tensor<float> r = data::resize(img.pixels, 1024, 768).squeeze(0);
  const auto [rows, cols] = sums(r);
  const auto ref_rows = stats.at("resize_1024x768_linear_rows").get<std::vector<double>>();
  const auto ref_cols = stats.at("resize_1024x768_linear_cols").get<std::vector<double>>();
  double worst = 0;
  for (size_t i = 0; i < rows.size(); ++i) worst = std::max(worst, std::abs(rows[i] - ref_rows[i]));
  for (size_t i = 0; i < cols.size(); ++i) worst = std::max(worst, std::abs(cols[i] - ref_cols[i]));
  INFO("worst row/column sum error " << worst);
  CHECK(worst <= 2.0);  // sums of 512 to 1024 values up to 255: 2e-5 relative, float rounding

  int checked = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".png" || checked >= 4) continue;
    ++checked;
    const io::Image im = io::read_image(entry.path());
    const Tensor<float> x = im.pixels;
    CHECK(max_abs_diff(data::hflip(data::hflip(x)), x) == 0.0);
    CHECK(max_abs_diff(data::vflip(data::vflip(x)), x) == 0.0);
    Generator gen(checked);
    data::MammogramTransformOptions opt;
    opt.augmentation = data::Augmentation::heavy;
    const Tensor<float> out = data::preprocess_mammogram(im, opt, gen);
    REQUIRE(out.shape() == Shape{3, 1024, 768});
    const auto v = out.to_vector();
    CHECK(*std::min_element(v.begin(), v.end()) == 0.f);
    CHECK(*std::max_element(v.begin(), v.end()) == 1.f);
  }
  CHECK(checked == 4);
}

}  // namespace test_transforms
