// The channels-last depthwise kernels' per-thread work (ops/conv/depthwise_nhwc.hpp)
// run on the CPU over every thread of a launch, as the CUDA kernels run it (the
// launchers' plans, the kernels' thread-to-work maps; each output written once),
// against the NCHW CPU reference (cpu::conv2d in double): forward, input
// gradient (flipped taps on dy), weight and bias gradients (per-chunk partial
// sums, then the ordered finish), at odd sizes, for every vector width, in
// float and bfloat16 storage.
#include <algorithm>
#include <cmath>

#include "mamclip/ops/conv/cpu.hpp"
#include "mamclip/ops/conv/depthwise_nhwc.hpp"
#include "support/test_support.hpp"

namespace test_depthwise_nhwc {
using namespace mamclip;
using namespace mamclip::test;
namespace dn = mamclip::depthwise_nhwc;

namespace {

// What the device's vector loads do, element by element.
struct HostIo {
  template <int V, class T>
  static void load(const T* p, float* out) {
    for (int v = 0; v < V; ++v) out[v] = static_cast<float>(p[v]);
  }
  template <int V, class T>
  static void store(T* p, const float* in) {
    for (int v = 0; v < V; ++v) p[v] = static_cast<T>(in[v]);
  }
};

double value(uint64_t seed, int64_t i) { return 2 * Philox::uniform(seed, 0, static_cast<uint64_t>(i)) - 1 + 1e-3; }

template <class T>
struct Case {
  dn::Shape s;
  int k = 0;
  Conv2dGeometry g;
  // Values as T holds them, in double for the reference.
  std::vector<double> x, w, b, dy;  // NCHW, [C, 1, K, K], [C], NCHW
  std::vector<T> x_nhwc, dy_nhwc, b_t;
};

template <class T>
Case<T> make_case(int64_t n, int64_t h, int64_t w, int64_t c, int k, uint64_t seed) {
  Case<T> p;
  p.s = {n, h, w, c};
  p.k = k;
  p.g.batch = n;
  p.g.c_in = p.g.c_out = p.g.groups = c;
  p.g.h = p.g.oh = h;
  p.g.w = p.g.ow = w;
  p.g.kh = p.g.kw = k;
  p.g.pad_h = p.g.pad_w = k / 2;
  const int64_t plane = h * w, count = n * c * plane;
  auto rounded = [](double v) { return static_cast<double>(static_cast<float>(static_cast<T>(static_cast<float>(v)))); };
  p.x.resize(static_cast<size_t>(count));
  p.dy.resize(static_cast<size_t>(count));
  p.x_nhwc.resize(static_cast<size_t>(count));
  p.dy_nhwc.resize(static_cast<size_t>(count));
  for (int64_t in = 0; in < n; ++in)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t q = 0; q < plane; ++q) {
        const int64_t nchw = (in * c + ch) * plane + q, nhwc = (in * plane + q) * c + ch;
        p.x[nchw] = rounded(value(seed, nchw));
        p.dy[nchw] = rounded(value(seed + 1, nchw));
        p.x_nhwc[nhwc] = static_cast<T>(static_cast<float>(p.x[nchw]));
        p.dy_nhwc[nhwc] = static_cast<T>(static_cast<float>(p.dy[nchw]));
      }
  p.w.resize(static_cast<size_t>(c * k * k));
  for (int64_t ch = 0; ch < c; ++ch)
    for (int t = 0; t < k * k; ++t)
      p.w[ch * k * k + t] = static_cast<float>(value(seed + 2, ch * k * k + t));  // float weights, as wt holds them
  p.b.resize(static_cast<size_t>(c));
  p.b_t.resize(p.b.size());
  for (int64_t ch = 0; ch < c; ++ch) {
    p.b[ch] = rounded(value(seed + 3, ch));
    p.b_t[ch] = static_cast<T>(static_cast<float>(p.b[ch]));
  }
  return p;
}

// |got − want| within the storage type's rounding of the result plus float
// accumulation over the taps.
template <class T>
void require_close(const std::vector<double>& want, const std::vector<double>& got, double sum_scale, const char* what) {
  REQUIRE(want.size() == got.size());
  require_allclose(from_vector(got), from_vector(want), 1e-6 * sum_scale, dtype_eps<T>(), what);
}

// NHWC storage of y back to NCHW doubles.
template <class T>
std::vector<double> to_nchw(const std::vector<T>& nhwc, const dn::Shape& s) {
  std::vector<double> out(nhwc.size());
  const int64_t plane = s.h * s.w;
  for (int64_t in = 0; in < s.n; ++in)
    for (int64_t q = 0; q < plane; ++q)
      for (int64_t ch = 0; ch < s.c; ++ch)
        out[(in * s.c + ch) * plane + q] = static_cast<double>(static_cast<float>(nhwc[(in * plane + q) * s.c + ch]));
  return out;
}

// What the device's stores would count: how often each element is written.
struct CountIo {
  template <int V, class T>
  static void load(const T*, float* out) {
    for (int v = 0; v < V; ++v) out[v] = 0.0f;
  }
  template <int V, class T>
  static void store(T* p, const float*) {
    for (int v = 0; v < V; ++v) p[v] += 1;
  }
};

// The thread counts that make the plans give runs (chunks) of about `rows` image rows
// per thread; 0: the kernels' own target (kLaunchThreads).
template <int V, int R>
int64_t forward_threads(const dn::Shape& s, int64_t rows) {
  return rows == 0 ? dn::kLaunchThreads : std::max<int64_t>(1, s.n * s.h * (s.c / V) * dn::strips<R>(s.w) / rows);
}
template <int V>
int64_t weight_grad_threads(const dn::Shape& s, int k, int64_t rows) {
  return rows == 0 ? dn::kLaunchThreads : (s.n * s.h + rows - 1) / rows * (s.c / V) * k;
}

// Every thread of the forward (or, kFlip, input-gradient) launch the kernels' plan makes
// when it aims for `threads` threads (fewer: longer runs of rows per thread).
template <int K, int V, int R, bool kFlip, class T>
std::vector<T> run_forward(const Case<T>& p, const std::vector<T>& in, bool bias, int64_t threads) {
  const int64_t c = p.s.c;
  std::vector<float> wt(p.w.size());  // [K·K, C]
  for (int64_t ch = 0; ch < c; ++ch)
    for (int t = 0; t < K * K; ++t) wt[t * c + ch] = static_cast<float>(p.w[ch * K * K + t]);
  const dn::ForwardPlan plan = dn::forward_plan<V, R>(p.s, threads);
  std::vector<T> out(in.size(), static_cast<T>(-777.0f));
  std::vector<float> writes(in.size(), 0.0f);
  for (int64_t t = 0; t < plan.total; ++t) {
    const dn::ColumnWork w = dn::forward_work<V, R>(plan, p.s, t);
    dn::forward_column<K, V, R, kFlip, HostIo>(in.data(), wt.data(), bias ? p.b_t.data() : nullptr, out.data(), p.s,
                                               w.image, w.i_begin, w.i_end, w.j0, w.c0);
    dn::forward_column<K, V, R, kFlip, CountIo>(writes.data(), wt.data(), bias ? writes.data() : nullptr,
                                                writes.data(), p.s, w.image, w.i_begin, w.i_end, w.j0, w.c0);
  }
  INFO("forward plan: " << plan.runs << " runs of " << plan.rows_per_thread << " rows, " << plan.total << " threads");
  REQUIRE(std::count(writes.begin(), writes.end(), 1.0f) == static_cast<std::ptrdiff_t>(writes.size()));
  return out;
}

// Σ |w| of one channel, on average: the scale of an output's float sum.
template <class T>
double weight_scale(const Case<T>& p) {
  double wsum = 0;
  for (double v : p.w) wsum += std::abs(v) / static_cast<double>(p.s.c);
  return wsum;
}

// The forward and input-gradient walks of every thread of the kernels' plan (runs of about
// `rows` rows; 0: the kernels' own plan) against the double reference.
template <int K, int V, int R, class T>
void check_forward(const Case<T>& p, int64_t rows) {
  const int64_t threads = forward_threads<V, R>(p.s, rows);
  std::vector<double> y(p.x.size()), dx(p.x.size()), dw(p.w.size()), db(p.b.size());
  cpu::conv2d_forward(p.g, p.x.data(), p.w.data(), p.b.data(), y.data());
  cpu::conv2d_backward(p.g, p.x.data(), p.w.data(), p.dy.data(), dx.data(), dw.data(), db.data());
  const double wsum = weight_scale(p);
  const std::vector<T> y_nhwc = run_forward<K, V, R, false>(p, p.x_nhwc, true, threads);
  require_close<T>(y, to_nchw(y_nhwc, p.s), wsum + 1, "forward");
  const std::vector<T> dx_nhwc = run_forward<K, V, R, true>(p, p.dy_nhwc, false, threads);
  require_close<T>(dx, to_nchw(dx_nhwc, p.s), wsum, "input gradient");
}

// The weight- and bias-gradient strips of every thread of the kernels' plan (chunks of about
// `rows` rows; 0: the kernels' own plan), and their finish, against the double reference.
template <int K, int V, int R, class T>
void check_case(const Case<T>& p, int64_t rows) {
  const int64_t threads = weight_grad_threads<V>(p.s, K, rows);
  const int64_t count = static_cast<int64_t>(p.x.size()), c = p.s.c;
  std::vector<double> dx(p.x.size()), dw(p.w.size()), db(p.b.size());
  cpu::conv2d_backward(p.g, p.x.data(), p.w.data(), p.dy.data(), dx.data(), dw.data(), db.data());

  // Weight and bias gradients: partial sums per (channel group, kernel row, chunk), then the finish.
  const dn::WeightGradPlan plan = dn::weight_grad_plan<V>(p.s, K, true, threads);
  INFO("weight-gradient plan: " << plan.chunks << " chunks of " << plan.rows_per_chunk << " rows, " << plan.total
                                << " threads");
  REQUIRE(plan.kernel_rows == K);
  const int64_t chunks = plan.chunks;
  std::vector<float> partial(static_cast<size_t>(chunks * K * K * c), -777.0f), bias_partial(static_cast<size_t>(chunks * c), -777.0f);
  for (int64_t t = 0; t < plan.total; ++t) {
    const dn::StripWork w = dn::weight_grad_work<K, V, true>(plan, p.s, t);
    dn::weight_grad_strip<K, V, R, true, HostIo>(p.x_nhwc.data(), p.dy_nhwc.data(), partial.data(), bias_partial.data(),
                                                 p.s, w.a, w.row_begin, w.row_end, w.chunk, w.c0);
  }
  std::vector<T> dw_t(p.w.size()), db_t(p.b.size());
  for (int64_t ch = 0; ch < c; ++ch) {
    for (int t = 0; t < K * K; ++t) dn::finish_sum<HostIo>(partial.data(), dw_t.data(), chunks, K * K, c, ch, t);
    dn::finish_sum<HostIo>(bias_partial.data(), db_t.data(), chunks, 1, c, ch, 0);
  }
  std::vector<double> dw_got(dw_t.begin(), dw_t.end()), db_got(db_t.begin(), db_t.end());
  for (size_t i = 0; i < dw_t.size(); ++i) dw_got[i] = static_cast<float>(dw_t[i]);
  for (size_t i = 0; i < db_t.size(); ++i) db_got[i] = static_cast<float>(db_t[i]);
  const double terms = static_cast<double>(count / c);  // products summed per weight
  require_close<T>(dw, dw_got, terms, "weight gradient");
  require_close<T>(db, db_got, terms, "bias gradient");

  // Bias only (frozen weights): the centre row's threads alone, in the same chunks when the
  // plan's partial-sum cap does not bind (it counts K·K taps either way).
  const dn::WeightGradPlan bias_plan = dn::weight_grad_plan<V>(p.s, K, false, threads / K);
  REQUIRE(bias_plan.kernel_rows == 1);
  REQUIRE(bias_plan.chunks == chunks);
  std::vector<float> bias_only(static_cast<size_t>(chunks * c), -777.0f);
  for (int64_t t = 0; t < bias_plan.total; ++t) {
    const dn::StripWork w = dn::weight_grad_work<K, V, false>(bias_plan, p.s, t);
    REQUIRE(w.a == K / 2);
    dn::weight_grad_strip<K, V, R, false, HostIo>(static_cast<const T*>(nullptr), p.dy_nhwc.data(), nullptr,
                                                  bias_only.data(), p.s, w.a, w.row_begin, w.row_end, w.chunk, w.c0);
  }
  REQUIRE(bias_only == bias_partial);
}

}  // namespace

TEST_CASE("nhwc depthwise forward and input-gradient walks: K = 3, 5, 7 at odd sizes, 2 and 1 channels per thread",
          "[conv]") {
  // H, W odd and smaller than R or K; runs of 1, 2, 3 and all rows (a ragged last run).
  check_forward<7, 1, 8>(make_case<float>(2, 9, 13, 16, 7, 11), 1);
  check_forward<7, 1, 8>(make_case<float>(2, 9, 13, 16, 7, 11), 4);
  check_forward<5, 1, 8>(make_case<float>(2, 7, 9, 8, 5, 13), 7);
  check_forward<3, 1, 8>(make_case<float>(3, 6, 5, 24, 3, 14), 3);
  check_forward<7, 1, 8>(make_case<float>(2, 3, 10, 13, 7, 15), 2);  // C = 13
  check_forward<3, 1, 8>(make_case<float>(1, 1, 1, 5, 3, 16), 1);    // a single pixel
  check_forward<7, 2, 8>(make_case<bfloat16>(2, 11, 7, 16, 7, 21), 3);
  check_forward<7, 2, 8>(make_case<bfloat16>(1, 12, 9, 6, 7, 24), 12);
  check_forward<5, 2, 8>(make_case<bfloat16>(1, 6, 17, 8, 5, 22), 1);
  check_forward<3, 2, 8>(make_case<bfloat16>(2, 5, 3, 2, 3, 25), 2);
  check_forward<7, 1, 8>(make_case<bfloat16>(1, 5, 9, 7, 7, 23), 2);  // C = 7: one channel per thread
  // Wide enough for interior strips (no column checks) between the edge ones.
  check_forward<7, 2, 8>(make_case<bfloat16>(1, 9, 37, 6, 7, 26), 4);
  check_forward<5, 2, 8>(make_case<bfloat16>(2, 4, 26, 4, 5, 27), 3);
  check_forward<3, 2, 8>(make_case<bfloat16>(1, 3, 20, 2, 3, 28), 1);
  check_forward<7, 1, 8>(make_case<float>(1, 8, 29, 5, 7, 29), 8);
  // The kernels' own plan, large enough for runs of 2 rows (2^18 column walks of one row).
  check_forward<3, 2, 8>(make_case<bfloat16>(1, 64, 64, 1024, 3, 30), 0);
}

// The weight-gradient kernels run (V, R) = (4, 8) for float, (8, 4) for 16-bit types and (1, 8)
// when C or a pointer allows no vectors (kNhwcStrip in ops/conv/cuda.cuh).
TEST_CASE("nhwc depthwise weight-gradient strips: K = 3, 5, 7 at odd sizes, vectors of 4 and 1 channels, float",
          "[conv]") {
  // Chunks of 1 to 4 rows (a ragged last chunk).
  check_case<7, 4, 8>(make_case<float>(2, 9, 13, 16, 7, 11), 1);
  check_case<7, 4, 8>(make_case<float>(1, 5, 11, 12, 7, 12), 3);
  check_case<5, 4, 8>(make_case<float>(2, 7, 9, 8, 5, 13), 2);
  check_case<3, 4, 8>(make_case<float>(3, 6, 5, 24, 3, 14), 4);
  check_case<7, 1, 8>(make_case<float>(2, 3, 10, 13, 7, 15), 2);  // C = 13: one channel per thread
  check_case<3, 1, 8>(make_case<float>(1, 1, 1, 5, 3, 16), 1);    // a single pixel
}

TEST_CASE("nhwc depthwise weight-gradient strips in bfloat16 storage with float accumulation", "[conv]") {
  check_case<7, 8, 4>(make_case<bfloat16>(2, 11, 7, 16, 7, 21), 3);
  check_case<5, 8, 4>(make_case<bfloat16>(1, 6, 17, 8, 5, 22), 1);
  check_case<3, 8, 4>(make_case<bfloat16>(2, 5, 9, 24, 3, 25), 2);
  check_case<7, 1, 8>(make_case<bfloat16>(1, 5, 9, 7, 7, 23), 2);
  // The kernels' own plan: 100 chunks of 6 rows, where the cap on partial sums (2^22 floats) binds.
  check_case<7, 8, 4>(make_case<bfloat16>(2, 300, 5, 768, 7, 31), 0);
}

}  // namespace test_depthwise_nhwc
