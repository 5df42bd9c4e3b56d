// clip_loss: against the same loss composed from public ops (matmul,
// cross_entropy) in every layout (square, gathered texts, gathered images and
// texts, clamped scale), gradcheck on non-contiguous inputs, open_clip's
// formula through PyTorch (fixture), the tiling of the CUDA kernels emulated on
// the host step by step, the 16-bit backward's rounding of dS emulated, the
// device dispatch through a stand-in device, errors.
#include <cstring>

#include "mamclip/ops/loss/clip.hpp"
#include "support/test_support.hpp"

namespace test_clip_loss {
using namespace mamclip;
using namespace mamclip::test;

namespace {

Tensor<double> rnd(const Shape& s, uint64_t seed, double lo = -1, double hi = 1) {
  return uniform_random<double>(s, seed, lo, hi);
}

ClipLossOptions clip_opts(int64_t label_offset = 0, int64_t image_offset = 0, std::optional<int64_t> batch = {},
                          std::optional<double> max_ls = {}) {
  ClipLossOptions o;
  o.label_offset = label_offset;
  o.image_offset = image_offset;
  o.batch = batch;
  o.max_logit_scale = max_ls;
  return o;
}

// The loss composed from public ops: the definition in clip.hpp, written out.
template <class T>
Tensor<T> composed_clip_loss(const Tensor<T>& img, const Tensor<T>& txt, const Tensor<T>& ls, const ClipLossOptions& o) {
  const int64_t io = o.image_offset, to = o.label_offset, b = o.batch.value_or(img.size(0) - io);
  const Tensor<T> s = exp(o.max_logit_scale ? clamp(ls, std::nullopt, *o.max_logit_scale) : ls);
  const Tensor<T> per_image = mul(matmul(img.narrow(0, io, b), txt.t()), s);  // [B, Bt]
  const Tensor<T> per_text = mul(matmul(txt.narrow(0, to, b), img.t()), s);   // [B, Bi]
  const auto labels = [b](int64_t off) { return arange<int64_t>(static_cast<double>(off), static_cast<double>(off + b)); };
  return mul(add(cross_entropy(per_image, labels(to)), cross_entropy(per_text, labels(io))), 0.5);
}

struct Layout {
  const char* name;
  int64_t images, texts, dim;
  ClipLossOptions opts;
};

const std::vector<Layout> kLayouts = {
    {"square", 7, 7, 5, clip_opts()},
    {"one image, gathered texts", 1, 4, 3, clip_opts(2)},
    {"gathered texts, middle rank", 6, 19, 5, clip_opts(7)},
    {"gathered texts, last rank", 6, 19, 5, clip_opts(13)},
    {"gathered images and texts", 18, 18, 5, clip_opts(6, 6, 6)},
    {"gathered, unequal counts and offsets", 13, 17, 9, clip_opts(9, 2, 5)},
    {"clamped scale", 7, 11, 5, clip_opts(2, 0, {}, 0.5)},
    {"scale at the clamp bound", 7, 7, 5, clip_opts(0, 0, {}, 1.25)},
};

}  // namespace

TEST_CASE("clip_loss equals its definition composed from matmul and cross_entropy, loss and gradients") {
  for (const auto& l : kLayouts) {
    INFO(l.name);
    auto img = rnd({l.images, l.dim}, 1).set_requires_grad();
    auto txt = rnd({l.texts, l.dim}, 2).set_requires_grad();
    auto ls = tensor<double>({1.25}).reshape({}).set_requires_grad();
    auto y = clip_loss(img, txt, ls, l.opts);
    CHECK(y.shape() == Shape{});
    auto img2 = img.detach().set_requires_grad(), txt2 = txt.detach().set_requires_grad(),
         ls2 = ls.detach().set_requires_grad();
    auto y2 = composed_clip_loss(img2, txt2, ls2, l.opts);
    require_allclose(y, y2, 1e-13, 1e-13, "loss");
    y.backward(tensor<double>({0.75}).reshape({}));
    y2.backward(tensor<double>({0.75}).reshape({}));
    require_allclose(img.grad(), img2.grad(), 1e-13, 1e-12, "d image");
    require_allclose(txt.grad(), txt2.grad(), 1e-13, 1e-12, "d text");
    require_allclose(ls.grad(), ls2.grad(), 1e-13, 1e-12, "d logit_scale");
    if (l.opts.max_logit_scale && *l.opts.max_logit_scale < 1.25) CHECK(ls.grad().item() == 0.0);
    if (!l.opts.max_logit_scale || *l.opts.max_logit_scale >= 1.25) CHECK(ls.grad().item() != 0.0);
  }
}

TEST_CASE("clip_loss: hand-computed value for two pairs") {
  // I = [[1, 0], [0, 1]], T = [[1, 0], [1, 1]], s = e: S = e·[[1, 1], [0, 1]].
  const double e = std::exp(1.0);
  auto img = tensor<double>({1, 0, 0, 1}, {2, 2}), txt = tensor<double>({1, 0, 1, 1}, {2, 2});
  auto ls = tensor<double>({1.0});
  const double r0 = std::log(2 * std::exp(e)) - e, r1 = std::log(1 + std::exp(e)) - e;  // rows, targets 0, 1
  const double c0 = std::log(std::exp(e) + 1) - e, c1 = std::log(2 * std::exp(e)) - e;  // columns, targets 0, 1
  CHECK(clip_loss(img, txt, ls).item() == Approx(0.25 * (r0 + r1 + c0 + c1)).epsilon(1e-14));
}

TEST_CASE("clip_loss gradcheck in double: non-contiguous inputs, sizes not multiples of 8, every layout") {
  for (const auto& l : kLayouts) {
    INFO(l.name);
    auto img = noncontiguous(rnd({l.images, l.dim}, 11));
    auto txt = noncontiguous(rnd({l.texts, l.dim}, 12));
    REQUIRE_FALSE(txt.is_contiguous());
    auto ls = noncontiguous(tensor<double>({1.1}));
    const auto o = l.opts;
    // Clamped below or far from the bound: finite differences stay on one side of it.
    if (o.max_logit_scale && std::abs(*o.max_logit_scale - 1.1) < 1e-3) continue;
    require_gradcheck(
        [o](const std::vector<Tensor<double>>& x) { return clip_loss(x[0], x[1], x[2], o).reshape({1}); },
        {img, txt, ls});
  }
}

TEST_CASE("clip_loss in float, half and bfloat16 follows the double result") {
  auto img = rnd({9, 6}, 21), txt = rnd({13, 6}, 22);
  auto ls = tensor<double>({2.0});
  const auto o = clip_opts(3);
  const double ref = clip_loss(img, txt, ls, o).item();
  CHECK(static_cast<double>(clip_loss(img.to<float>(), txt.to<float>(), ls.to<float>(), o).item()) ==
        Approx(ref).epsilon(1e-6));
  // 16-bit inputs are rounded first; compare against the double loss of the rounded inputs.
  const auto ih = img.to<half>(), th = txt.to<half>(), lh = ls.to<half>();
  CHECK(static_cast<double>(clip_loss(ih, th, lh, o).item()) ==
        Approx(clip_loss(ih.to<double>(), th.to<double>(), lh.to<double>(), o).item()).epsilon(2e-3));
  const auto ib = img.to<bfloat16>(), tb = txt.to<bfloat16>(), lb = ls.to<bfloat16>();
  auto ibg = ib.detach().set_requires_grad();
  auto yb = clip_loss(ibg, tb, lb, o);
  CHECK(static_cast<double>(yb.item()) ==
        Approx(clip_loss(ib.to<double>(), tb.to<double>(), lb.to<double>(), o).item()).epsilon(1e-2));
  yb.backward();
  CHECK(ibg.grad().shape() == Shape{9, 6});
}

namespace {

// tools/make_clip_loss_fixture.py's hash_unit: a value in [-0.5, 0.5) from 32-bit integer arithmetic.
double hash_unit(int64_t i, int64_t k, int64_t seed) {
  uint32_t h = static_cast<uint32_t>(i * 1000003 + k * 7919 + seed * 104729) * 2654435761u;
  h ^= h >> 15;
  h *= 2246822519u;
  h ^= h >> 13;
  return static_cast<double>(h) / 4294967296.0 - 0.5;
}

// The fixture's features: hashed, rows L2-normalised in double, rounded to float.
Tensor<float> hashed_features(int64_t b, int64_t dim, int64_t seed) {
  std::vector<float> v(static_cast<size_t>(b * dim));
  for (int64_t i = 0; i < b; ++i) {
    double norm = 0;
    for (int64_t k = 0; k < dim; ++k) norm += hash_unit(i, k, seed) * hash_unit(i, k, seed);
    for (int64_t k = 0; k < dim; ++k) v[i * dim + k] = static_cast<float>(hash_unit(i, k, seed) / std::sqrt(norm));
  }
  return from_vector<float>(v, {b, dim});
}

// A fixture gradient: the full tensor, or (large B) some rows and two sums over all entries.
void check_fixture_grad(const Tensor<float>& got, const nlohmann::json& want, const std::string& name) {
  INFO(name);
  const auto g = got.to_vector();
  double scale = 0;
  for (float v : g) scale = std::max(scale, std::abs(static_cast<double>(v)));
  if (want.contains("shape")) {
    // Entries relative to the largest one (single entries may be near zero by cancellation).
    require_allclose(got, tensor_from_json<float>(want), 1e-5 * scale, 1e-5, name);
    return;
  }
  const auto rows = want.at("rows").get<std::vector<int64_t>>();
  require_allclose(index_select(got, 0, from_vector<int64_t>(rows)), tensor_from_json<float>(want.at("values")),
                   1e-5 * scale, 1e-5, name + " rows");
  const int64_t dim = got.size(1);
  double weighted = 0, abs_sum = 0;
  for (size_t e = 0; e < g.size(); ++e) {
    weighted += static_cast<double>(g[e]) * hash_unit(static_cast<int64_t>(e) / dim, static_cast<int64_t>(e) % dim, 99);
    abs_sum += std::abs(static_cast<double>(g[e]));
  }
  const double ref_abs = want.at("abs_sum").get<double>();
  CHECK(abs_sum == Approx(ref_abs).epsilon(1e-5));
  CHECK(weighted == Approx(want.at("weighted_sum").get<double>()).margin(1e-5 * ref_abs));
}

}  // namespace

TEST_CASE("clip_loss matches open_clip's ClipLoss formula through PyTorch (fixture)") {
  const auto j = load_json(fixture_path("clip_loss/clip_loss.json"));
  REQUIRE(j.at("cases").size() >= 5);
  const int64_t dim = j.at("dim").get<int64_t>();
  for (const auto& c : j.at("cases")) {
    const int64_t b = c.at("batch").get<int64_t>();
    INFO("batch " << b);
    auto img = hashed_features(b, dim, 1).set_requires_grad();
    auto txt = hashed_features(b, dim, 2).set_requires_grad();
    auto ls = tensor_from_json<float>(c.at("logit_scale")).set_requires_grad();
    ClipLossOptions o;
    if (!c.at("max_logit_scale").is_null()) o.max_logit_scale = c.at("max_logit_scale").get<double>();
    auto y = clip_loss(img, txt, ls, o);
    require_allclose(y, tensor_from_json<float>(c.at("loss")), 0, 1e-5, "loss");
    y.backward();
    require_allclose(ls.grad(), tensor_from_json<float>(c.at("d_logit_scale")), 1e-7, 1e-5, "d logit_scale");
    check_fixture_grad(img.grad(), c.at("d_image_features"), "d image_features");
    check_fixture_grad(txt.grad(), c.at("d_text_features"), "d text_features");
  }
}

// ---- the tiling of the CUDA kernels (ops/loss/cuda.cuh), emulated on the host

namespace {

using FT = clip_tile::ForwardTiling;
using BT = clip_tile::BackwardTiling;

// dot(a_row, b_row) accumulated along D in order, as each kernel thread does.
template <class A>
A tile_dot(const A* a, const A* b, int64_t dim) {
  A v = 0;
  for (int64_t k = 0; k < dim; ++k) v += a[k] * b[k];
  return v;
}

// The forward kernel's lse of one band (rows a_off .. a_off + batch - 1 of a)
// against all nb rows of bm, with `sms` standing in for the device's SM count.
template <class A>
std::vector<A> emulate_forward_lse(const A* a, int64_t a_off, int64_t batch, const A* bm, int64_t nb, int64_t dim, A s,
                                   int64_t sms) {
  using St = clip_tile::LseState<A>;
  const int64_t row_blocks = (batch + FT::kBM - 1) / FT::kBM, col_tiles = (nb + FT::kBN - 1) / FT::kBN;
  const clip_tile::ForwardSplits f = clip_tile::forward_splits(row_blocks, col_tiles, sms);
  const int64_t splits = f.splits;
  std::vector<St> partial(static_cast<size_t>(splits * batch));
  std::vector<A> tile(FT::kBM * FT::kBN);
  for (int64_t rb = 0; rb < row_blocks; ++rb) {
    for (int64_t sp = 0; sp < splits; ++sp) {
      std::vector<St> lane(FT::kThreads, clip_tile::lse_empty<A>());
      const clip_tile::Range tiles = clip_tile::split_tiles(f, col_tiles, sp);
      REQUIRE((tiles.begin < tiles.end || col_tiles == 0));  // no split without work
      for (int64_t t = tiles.begin; t < tiles.end; ++t) {
        const int64_t c0 = t * FT::kBN, cols = std::min<int64_t>(FT::kBN, nb - c0);
        for (int r = 0; r < FT::kBM; ++r) {
          const int64_t row = rb * FT::kBM + r;
          for (int c = 0; c < cols; ++c)
            tile[r * FT::kBN + c] = row < batch ? s * tile_dot(a + (a_off + row) * dim, bm + (c0 + c) * dim, dim) : A(0);
        }
        for (int th = 0; th < FT::kThreads; ++th) {
          const int r = th / FT::kLanes, q = th % FT::kLanes;
          const int n = cols > q ? static_cast<int>((cols - q + FT::kLanes - 1) / FT::kLanes) : 0;
          clip_tile::lse_update(lane[th], tile.data() + r * FT::kBN + q, n, FT::kLanes);
        }
      }
      for (int r = 0; r < FT::kBM && rb * FT::kBM + r < batch; ++r) {
        const St* l = lane.data() + r * FT::kLanes;
        partial[sp * batch + rb * FT::kBM + r] =
            clip_tile::lse_merge(clip_tile::lse_merge(l[0], l[1]), clip_tile::lse_merge(l[2], l[3]));
      }
    }
  }
  std::vector<A> lse(static_cast<size_t>(batch));
  for (int64_t i = 0; i < batch; ++i) {
    St st = partial[i];
    for (int64_t sp = 1; sp < splits; ++sp) st = clip_tile::lse_merge(st, partial[sp * batch + i]);
    lse[i] = clip_tile::lse_value(st);
  }
  return lse;
}

// The backward kernel's d a (and Σ dS ⊙ S) for one role, block by block and tile by tile.
template <class A>
std::vector<A> emulate_backward_side(const A* a, int64_t na, int64_t a_off, const A* own_lse, const A* bm, int64_t nb,
                                     int64_t b_off, const A* other_lse, int64_t batch, int64_t dim, A s, A coef,
                                     double* dot) {
  std::vector<A> da(static_cast<size_t>(na * dim));
  std::vector<A> acc(BT::kBM * dim), g(BT::kBM * BT::kBN);
  for (int64_t block = 0; block < clip_tile::grad_blocks(na); ++block) {
    const int64_t a0 = block * BT::kBM;
    std::fill(acc.begin(), acc.end(), A(0));
    const clip_tile::Range columns = clip_tile::grad_columns(a0, BT::kBM, a_off, b_off, batch, nb);
    const int64_t c_begin = columns.begin, c_end = columns.end;
    A block_dot = 0;
    for (int64_t c0 = c_begin; c0 < c_end; c0 += BT::kBN) {
      const int64_t cols = std::min<int64_t>(BT::kBN, c_end - c0);
      for (int r = 0; r < BT::kBM; ++r) {
        const int64_t row = a0 + r, ai = row - a_off;
        for (int c = 0; c < cols; ++c) {
          const int64_t bi = c0 + c - b_off;
          A v = 0;
          if (row < na) {
            const A sv = s * tile_dot(a + row * dim, bm + (c0 + c) * dim, dim);
            const bool a_in = ai >= 0 && ai < batch, b_in = bi >= 0 && bi < batch;
            v = coef * clip_tile::clip_dlogit<A>(sv, a_in, a_in ? own_lse[ai] : A(0), b_in, b_in ? other_lse[bi] : A(0),
                                                 a_in && b_in && ai == bi);
            block_dot += v * sv;
          }
          g[r * BT::kBN + c] = v;
        }
      }
      for (int r = 0; r < BT::kBM; ++r)
        for (int64_t k = 0; k < dim; ++k) {
          A v = acc[r * dim + k];
          for (int c = 0; c < cols; ++c) v += g[r * BT::kBN + c] * bm[(c0 + c) * dim + k];
          acc[r * dim + k] = v;
        }
    }
    *dot += static_cast<double>(block_dot);
    for (int r = 0; r < BT::kBM && a0 + r < na; ++r)
      for (int64_t k = 0; k < dim; ++k) da[(a0 + r) * dim + k] = s * acc[r * dim + k];
  }
  return da;
}

template <class A>
void check_tiled_emulation(const Layout& l, int64_t sms) {
  INFO(l.name << ", dim " << l.dim << ", sms " << sms << ", " << dtype_name(dtype_v<A>));
  const Tensor<A> img = rnd({l.images, l.dim}, 31).template to<A>(), txt = rnd({l.texts, l.dim}, 32).template to<A>();
  const A log_s = A(2.3);
  const ClipLossDims n{l.images, l.texts, l.dim, l.opts.batch.value_or(l.images - l.opts.image_offset),
                       l.opts.image_offset, l.opts.label_offset};
  // The reference.
  std::vector<A> row(n.batch), col(n.batch);
  A loss = 0, g = A(0.7), dls = 0;
  cpu::clip_loss_forward<A>({n, INFINITY, img.data_ptr(), n.dim, txt.data_ptr(), n.dim, &log_s, &loss, row.data(), col.data()});
  Tensor<A> di = empty<A>({n.images, n.dim}), dt = empty<A>({n.texts, n.dim});
  cpu::clip_loss_backward<A>({n, INFINITY, img.data_ptr(), n.dim, txt.data_ptr(), n.dim, &log_s, &g, row.data(), col.data(),
                              di.data_ptr(), dt.data_ptr(), &dls});
  // The emulation.
  const A s = clip_tile::clip_scale<A>(log_s, A(INFINITY)).s;
  const A coef = g / A(2 * n.batch);
  const double tol = std::is_same_v<A, float> ? 2e-5 : 1e-12;
  const auto erow = emulate_forward_lse(img.data_ptr(), n.image_offset, n.batch, txt.data_ptr(), n.texts, n.dim, s, sms);
  const auto ecol = emulate_forward_lse(txt.data_ptr(), n.text_offset, n.batch, img.data_ptr(), n.images, n.dim, s, sms);
  require_allclose(from_vector<A>(erow), from_vector<A>(row), tol, tol, "row lse");
  require_allclose(from_vector<A>(ecol), from_vector<A>(col), tol, tol, "column lse");
  double edot = 0, unused = 0;
  const auto edi = emulate_backward_side(img.data_ptr(), n.images, n.image_offset, row.data(), txt.data_ptr(), n.texts,
                                         n.text_offset, col.data(), n.batch, n.dim, s, coef, &edot);
  const auto edt = emulate_backward_side(txt.data_ptr(), n.texts, n.text_offset, col.data(), img.data_ptr(), n.images,
                                         n.image_offset, row.data(), n.batch, n.dim, s, coef, &unused);
  // Gradient entries are differences of probabilities: compare against the largest one.
  // The floor s·g/(2B) is the size of one dS entry times s: where the reference is exactly 0 (B = 1) the
  // emulation's differently ordered dot products leave rounding of that size.
  const double gs = std::max(static_cast<double>(s * coef), static_cast<double>(amax(abs(di)).item()));
  require_allclose(from_vector<A>(edi, di.shape()), di, tol * gs, tol, "d image");
  require_allclose(from_vector<A>(edt, dt.shape()), dt, tol * gs, tol, "d text");
  CHECK(edot == Approx(static_cast<double>(dls)).epsilon(tol * 10).margin(tol * s));
}

}  // namespace

TEST_CASE("the tile math of the CUDA kernels, emulated on the host, matches the reference") {
  // Online updates, merges and the empty state.
  using St = clip_tile::LseState<double>;
  const double xs[] = {0.5, -3.0, 7.25, 7.0, -INFINITY};
  St a = clip_tile::lse_empty<double>(), b = a, all = a;
  clip_tile::lse_update(a, xs, 2, 1);
  clip_tile::lse_update(b, xs + 2, 3, 1);
  clip_tile::lse_update(all, xs, 5, 1);
  const double want = std::log(std::exp(0.5) + std::exp(-3.0) + std::exp(7.25) + std::exp(7.0));
  CHECK(clip_tile::lse_value(all) == Approx(want).epsilon(1e-15));
  CHECK(clip_tile::lse_value(clip_tile::lse_merge(a, b)) == Approx(want).epsilon(1e-15));
  CHECK(clip_tile::lse_value(clip_tile::lse_merge(b, a)) == Approx(want).epsilon(1e-15));
  const St e = clip_tile::lse_merge(clip_tile::lse_empty<double>(), clip_tile::lse_empty<double>());
  CHECK(e.l == 0);
  CHECK(std::isinf(clip_tile::lse_value(e)));
  CHECK(clip_tile::lse_value(clip_tile::lse_merge(e, a)) == Approx(clip_tile::lse_value(a)).epsilon(1e-15));
  St neg = clip_tile::lse_empty<double>();
  clip_tile::lse_update(neg, xs + 4, 1, 1);  // only -inf: stays empty
  CHECK(neg.l == 0);
  CHECK(clip_tile::clip_scale(2.0, 1.0).passes == false);
  CHECK(clip_tile::clip_scale(1.0, 1.0).passes == true);
  CHECK(clip_tile::clip_scale(2.0, 1.0).s == Approx(std::exp(1.0)));
  // Splits: every one has work, together they cover the tiles once, in order.
  const auto check_splits = [](int64_t row_blocks, int64_t col_tiles, int64_t sms, int64_t want_splits) {
    INFO(row_blocks << " row blocks, " << col_tiles << " column tiles, " << sms << " SMs");
    const clip_tile::ForwardSplits f = clip_tile::forward_splits(row_blocks, col_tiles, sms);
    CHECK(f.splits == want_splits);
    int64_t next = 0;
    for (int64_t sp = 0; sp < f.splits; ++sp) {
      const clip_tile::Range t = clip_tile::split_tiles(f, col_tiles, sp);
      CHECK(t.begin == next);
      CHECK(t.end > t.begin);
      next = t.end;
    }
    CHECK(next == col_tiles);
  };
  check_splits(1, 100, 132, 100);
  check_splits(1, 2000, 132, 250);  // 264 wanted; 8 tiles each leave 250 with work
  check_splits(3, 93, 132, 47);     // 130 images against 5950 texts: 88 wanted, of which only 47 had tiles
  check_splits(4096, 4096, 132, 1);
  check_splits(1, 200000, 16, 32);
  check_splits(1, 1, 132, 1);

  // Square batches of awkward sizes around the tile sizes, gathered layouts, several split counts.
  const std::vector<Layout> layouts = {
      {"B = 1", 1, 1, 16, clip_opts()},
      {"B = 7", 7, 7, 5, clip_opts()},
      {"B = 33", 33, 33, 9, clip_opts()},
      {"B = 65", 65, 65, 16, clip_opts()},
      {"B = 130", 130, 130, 7, clip_opts()},
      {"B = 65, gathered texts", 65, 197, 8, clip_opts(100)},
      {"B = 33, gathered images and texts", 131, 140, 6, clip_opts(70, 66, 33)},
  };
  for (const auto& l : layouts) {
    for (int64_t sms : {1, 3, 132}) {
      check_tiled_emulation<float>(l, sms);
      check_tiled_emulation<double>(l, sms);
    }
  }
}

// ---- the 16-bit backward (tensor-core dA): its one extra rounding, emulated on the host

namespace {

// d a of the CUDA backward for 16-bit inputs H: S in float from H features, dS without its factor
// g / 2B rounded once to H, dA accumulated in float, s · g / 2B applied at the end, output rounded
// to H. With round_ds false, the same without the dS rounding (the float-FMA accumulation the
// kernel used before).
template <class H>
std::vector<double> emulate_backward_side16(const std::vector<float>& a, int64_t na, int64_t a_off,
                                            const std::vector<float>& own_lse, const std::vector<float>& bm, int64_t nb,
                                            int64_t b_off, const std::vector<float>& other_lse, int64_t batch,
                                            int64_t dim, float s, float coef, bool round_ds) {
  std::vector<double> da(static_cast<size_t>(na * dim));
  std::vector<float> acc(static_cast<size_t>(dim)), dl(static_cast<size_t>(nb));
  for (int64_t row = 0; row < na; ++row) {
    const int64_t ai = row - a_off;
    const bool a_in = ai >= 0 && ai < batch;
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t c = 0; c < nb; ++c) {
      const int64_t bi = c - b_off;
      const bool b_in = bi >= 0 && bi < batch;
      const float sv = s * tile_dot(a.data() + row * dim, bm.data() + c * dim, dim);
      const float v = clip_tile::clip_dlogit<float>(sv, a_in, a_in ? own_lse[ai] : 0.0f, b_in,
                                                    b_in ? other_lse[bi] : 0.0f, a_in && b_in && ai == bi);
      dl[c] = round_ds ? static_cast<float>(H(v)) : v;
    }
    for (int64_t c = 0; c < nb; ++c)
      for (int64_t k = 0; k < dim; ++k) acc[k] += dl[c] * bm[c * dim + k];
    for (int64_t k = 0; k < dim; ++k) da[row * dim + k] = static_cast<double>(H(s * coef * acc[k]));
  }
  return da;
}

// Largest |x - ref| over the largest |ref|: the GPU test's error measure (its atol is tol · max |ref|).
double relative_to_max(const std::vector<double>& x, const Tensor<double>& ref) {
  const auto r = ref.to_vector();
  double err = 0, big = 0;
  for (size_t i = 0; i < r.size(); ++i) {
    err = std::max(err, std::abs(x[i] - r[i]));
    big = std::max(big, std::abs(r[i]));
  }
  return err / std::max(big, 1e-300);
}

template <class H>
void check_16bit_backward(const Layout& l, double gpu_tol) {
  INFO(l.name << ", dim " << l.dim << ", " << dtype_name(dtype_v<H>));
  // CLIP's features: rows L2-normalised, then rounded to H.
  const auto unit_rows = [](Tensor<double> x) {
    auto v = x.to_vector();
    const int64_t d = x.size(1);
    for (int64_t r = 0; r < x.size(0); ++r) {
      double n = 0;
      for (int64_t k = 0; k < d; ++k) n += v[r * d + k] * v[r * d + k];
      for (int64_t k = 0; k < d; ++k) v[r * d + k] = static_cast<double>(H(v[r * d + k] / std::sqrt(n)));
    }
    return from_vector<double>(v, x.shape());
  };
  const Tensor<double> img = unit_rows(rnd({l.images, l.dim}, 41)), txt = unit_rows(rnd({l.texts, l.dim}, 42));
  const ClipLossDims n{l.images, l.texts, l.dim, l.opts.batch.value_or(l.images - l.opts.image_offset),
                       l.opts.image_offset, l.opts.label_offset};
  const double log_s = 2.6592, g = 1.0;  // CLIP's initial scale, 1 / 0.07
  std::vector<double> row(n.batch), col(n.batch);
  double loss = 0, dls = 0;
  cpu::clip_loss_forward<double>({n, INFINITY, img.data_ptr(), n.dim, txt.data_ptr(), n.dim, &log_s, &loss, row.data(),
                                  col.data()});
  Tensor<double> di = empty<double>({n.images, n.dim}), dt = empty<double>({n.texts, n.dim});
  cpu::clip_loss_backward<double>({n, INFINITY, img.data_ptr(), n.dim, txt.data_ptr(), n.dim, &log_s, &g, row.data(),
                                   col.data(), di.data_ptr(), dt.data_ptr(), &dls});
  const auto f = [](const auto& v) { return std::vector<float>(v.begin(), v.end()); };
  const auto fi = f(img.to_vector()), ft = f(txt.to_vector()), frow = f(row), fcol = f(col);
  const float s = static_cast<float>(std::exp(log_s)), coef = static_cast<float>(g / (2.0 * double(n.batch)));
  for (bool image_side : {true, false}) {
    INFO((image_side ? "d image" : "d text"));
    const auto run = [&](bool round_ds) {
      return image_side ? emulate_backward_side16<H>(fi, n.images, n.image_offset, frow, ft, n.texts, n.text_offset,
                                                     fcol, n.batch, n.dim, s, coef, round_ds)
                        : emulate_backward_side16<H>(ft, n.texts, n.text_offset, fcol, fi, n.images, n.image_offset,
                                                     frow, n.batch, n.dim, s, coef, round_ds);
    };
    const Tensor<double>& ref = image_side ? di : dt;
    const double rounded = relative_to_max(run(true), ref), unrounded = relative_to_max(run(false), ref);
    INFO("error / max |grad|: dS rounded to 16 bits " << rounded << ", dS in float " << unrounded << " (the GPU test allows "
                                                      << gpu_tol << ")");
    // The extra rounding adds an error of the size the output's own rounding already has (measured: 1.1x to
    // 1.8x the error without it), well inside the GPU test's tolerance, which also covers the tensor
    // cores' summation order and the forward's float lse.
    CHECK(rounded <= 2.5 * unrounded);
    CHECK(rounded <= gpu_tol / 3);
  }
}

}  // namespace

TEST_CASE("the 16-bit CUDA backward's rounding of dS, emulated on the host, stays at the output's precision") {
  const std::vector<Layout> layouts = {
      {"B = 64", 64, 64, 100, clip_opts()},
      {"B = 65, gathered texts", 65, 197, 72, clip_opts(100)},
      {"B = 33, gathered images and texts", 131, 140, 40, clip_opts(70, 66, 33)},
      {"D = 768", 300, 300, 768, clip_opts()},
  };
  // The tolerances of tests/cuda/test_clip_loss_cuda.cpp.
  for (const auto& l : layouts) check_16bit_backward<bfloat16>(l, 2e-2);
  for (const auto& l : {layouts[0], layouts[1]}) check_16bit_backward<half>(l, 4e-3);
}

// ---- a device: the kernels registered for it are called, with the lse-recompute contract

namespace {
void host_clip_forward(const ClipLossForwardArgs<float>& a) { cpu::clip_loss_forward<float>(a); }
void host_clip_backward(const ClipLossBackwardArgs<float>& a) { cpu::clip_loss_backward<float>(a); }
void host_fill(float* dst, int64_t n, float value) { std::fill(dst, dst + n, value); }
void host_strided_copy(float* dst, const float* src, const Shape& shape, const Shape& strides) {
  int64_t i = 0;
  detail::for_each_offset<1>(shape, {strides}, [&](const std::array<int64_t, 1>& o) { dst[i++] = src[o[0]]; });
}
}  // namespace

TEST_CASE("clip_loss on a device runs the registered kernels") {
  if (!ensure_stand_in_cuda()) {
    WARN("a real CUDA backend is linked: the stand-in kernels are not installed (tests/cuda covers the device)");
    return;
  }
  auto& reg = KernelRegistry::get();
  const Device dev = Device::cuda(0);
  const auto img = rnd({9, 6}, 41).to<float>(), txt = rnd({14, 6}, 42).to<float>();
  const auto ls = tensor<float>({2.5f});
  const auto o = clip_opts(4, 0, {}, 2.0);
  if (!reg.find<ClipLossForwardKernel<float>>("clip_loss", DType::f32, DeviceType::cuda)) {
    MAMCLIP_REQUIRE_THROWS_WITH(clip_loss(img.to(dev), txt.to(dev), ls.to(dev), o), device_error,
                                "clip_loss: no kernel is registered for float32 tensors on cuda:0");
    reg.add<ClipLossForwardKernel<float>>("clip_loss", DType::f32, DeviceType::cuda, &host_clip_forward);
    auto id = img.to(dev).set_requires_grad();
    MAMCLIP_REQUIRE_THROWS_WITH(clip_loss(id, txt.to(dev), ls.to(dev), o), device_error,
                                "clip_loss_backward: no kernel is registered for float32 tensors on cuda:0");
    reg.add<ClipLossBackwardKernel<float>>("clip_loss_backward", DType::f32, DeviceType::cuda, &host_clip_backward);
  }
  if (!reg.find<StridedCopyKernel<float>>("strided_copy", DType::f32, DeviceType::cuda))
    reg.add<StridedCopyKernel<float>>("strided_copy", DType::f32, DeviceType::cuda, &host_strided_copy);
  if (!reg.find<FillKernel<float>>("fill", DType::f32, DeviceType::cuda))
    reg.add<FillKernel<float>>("fill", DType::f32, DeviceType::cuda, &host_fill);
  auto ic = img.detach().set_requires_grad(), tc = txt.detach().set_requires_grad(), lc = ls.detach().set_requires_grad();
  auto yc = clip_loss(ic, tc, lc, o);
  // A transposed text view on the device is made row-contiguous before the kernel reads it.
  auto id = img.to(dev).set_requires_grad(), td = noncontiguous(txt).to(dev).set_requires_grad(),
       ld = ls.to(dev).set_requires_grad();
  auto yd = clip_loss(id, td, ld, o);
  CHECK(yd.device() == dev);
  require_allclose(yd.to(kCPU), yc, 0, 1e-6, "loss");
  yc.backward();
  yd.backward();
  require_allclose(id.grad().to(kCPU), ic.grad(), 1e-7, 1e-5, "d image");
  require_allclose(td.grad().to(kCPU), tc.grad(), 1e-7, 1e-5, "d text");
  require_allclose(ld.grad().to(kCPU), lc.grad(), 0, 0, "d logit_scale (clamped: 0)");
  CHECK(ld.grad().to(kCPU).item() == 0.0f);
}

TEST_CASE("clip_loss errors name the argument, what was expected and what was given") {
  const auto img = rnd({4, 3}, 51), txt = rnd({6, 3}, 52);
  const auto ls = tensor<double>({1.0});
  MAMCLIP_REQUIRE_THROWS_WITH(clip_loss(img.reshape({12}), txt, ls), shape_error,
                              "clip_loss: image_features has shape [12]; expected a 2-D tensor [images, D]");
  MAMCLIP_REQUIRE_THROWS_WITH(clip_loss(img, txt.reshape({2, 3, 3}), ls), shape_error,
                              "clip_loss: text_features has shape [2, 3, 3]; expected a 2-D tensor [texts, D]");
  MAMCLIP_REQUIRE_THROWS_WITH(clip_loss(img, rnd({6, 4}, 53), ls), shape_error,
                              "clip_loss: image_features has shape [4, 3] and text_features has shape [6, 4]; expected "
                              "the same feature dim D");
  MAMCLIP_REQUIRE_THROWS_WITH(clip_loss(img, txt, tensor<double>({1.0, 2.0})), shape_error,
                              "clip_loss: logit_scale has shape [2]; expected a scalar ([] or [1])");
  MAMCLIP_REQUIRE_THROWS_WITH(clip_loss(img, txt, ls, clip_opts(3)), value_error,
                              "clip_loss: label_offset = 3 with batch = 4 needs rows [3, 7) of text_features, which "
                              "has 6 rows (expected 0 <= label_offset <= texts - batch)");
  MAMCLIP_REQUIRE_THROWS_WITH(clip_loss(img, txt, ls, clip_opts(0, -1)), value_error,
                              "clip_loss: image_offset = -1 is outside [0, 4)");
  MAMCLIP_REQUIRE_THROWS_WITH(clip_loss(img, txt, ls, clip_opts(0, 2, 3)), value_error,
                              "clip_loss: batch = 3 with image_offset = 2 needs rows [2, 5) of image_features, which "
                              "has 4 rows (expected 1 <= batch <= images - image_offset)");
  MAMCLIP_REQUIRE_THROWS_WITH(clip_loss(img, txt, ls, clip_opts(0, 0, 0)), value_error, "clip_loss: batch = 0");
  MAMCLIP_REQUIRE_THROWS_WITH(clip_loss(img, txt, ls, clip_opts(0, 0, {}, std::nan(""))), value_error,
                              "clip_loss: max_logit_scale is NaN");
  CHECK(clip_loss(img, txt, ls).grad_fn() == nullptr);
  // The engine runs backward with recording off; a caller that differentiates the backward itself is told no.
  auto i2 = img.detach().set_requires_grad();
  auto y = clip_loss(i2, txt, ls);
  REQUIRE(y.grad_fn() != nullptr);
  CHECK(y.grad_fn()->name() == "ClipLossBackward");
  std::vector<autograd::AnyTensor> g{ones<double>(y.shape())};
  MAMCLIP_REQUIRE_THROWS_WITH(y.grad_fn()->apply(std::vector<autograd::AnyTensor>(g)), autograd_error,
                              "clip_loss: double backward is not supported");
  if (ensure_stand_in_cuda())
    MAMCLIP_REQUIRE_THROWS_WITH(clip_loss(img, txt.to(Device::cuda(0)), ls), device_error,
                                "clip_loss: expected all tensors on one device, but image_features is on cpu, "
                                "text_features on cuda:0 and logit_scale on cpu");
}

}  // namespace test_clip_loss
