// The tile math of the fused attention kernels (ops/attention/tile.hpp),
// on the CPU: the online softmax and the lse-recompute backward, run the way
// the kernels tile them, against the CPU reference (ops/attention/cpu.hpp);
// and the mma.sync fragment layouts the kernels' register reuse and ldmatrix loads rest on.
#include <algorithm>
#include <array>
#include <memory>
#include <set>

#include "mamclip/ops/attention/tile.hpp"
#include "support/test_support.hpp"

namespace test_attention_tile {
using namespace mamclip;
using namespace mamclip::test;
namespace at = mamclip::attention_tile;

namespace {

struct Problem {
  AttentionDims n;
  AttentionConfig c;
  std::vector<double> q, k, v, dout;
  std::unique_ptr<bool[]> mask;  // config.key_padding_mask (bool objects: read through bool*)
};

std::vector<double> random_values(int64_t count, uint64_t seed) {
  std::vector<double> x(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) x[i] = 4 * Philox::uniform(seed, 0, static_cast<uint64_t>(i)) - 2;  // never all 0
  return x;
}

Problem problem(int64_t b, int64_t h, int64_t lq, int64_t lk, int64_t d, bool pad, bool causal, double p) {
  Problem x;
  x.n = {b, h, lq, lk, d, d};
  x.q = random_values(b * h * lq * d, 1);
  x.k = random_values(b * h * lk * d, 2);
  x.v = random_values(b * h * lk * d, 3);
  x.dout = random_values(b * h * lq * d, 4);
  x.c.scale = 1.0 / std::sqrt(static_cast<double>(d));
  x.c.causal = causal;
  x.c.dropout_p = p;
  x.c.seed = 77;
  x.c.offset = 5;
  if (pad) {
    // Batch 0 keeps roughly two thirds of its keys; the last batch sees none (a fully masked row).
    x.mask = std::make_unique<bool[]>(static_cast<size_t>(b * lk));
    for (int64_t i = 0; i < b; ++i)
      for (int64_t j = 0; j < lk; ++j)
        x.mask[i * lk + j] = i == b - 1 && b > 1 ? false : (j == 0 || Philox::uniform(9, 0, static_cast<uint64_t>(i * lk + j)) > 0.35);
    x.c.key_padding_mask = x.mask.get();
  }
  return x;
}

HeadsView<const double> cview(const std::vector<double>& x, const AttentionDims& n, int64_t l) {
  return {x.data(), n.heads * l * n.d, l * n.d, n.d};
}
HeadsView<double> mview(std::vector<double>& x, const AttentionDims& n, int64_t l) {
  return {x.data(), n.heads * l * n.d, l * n.d, n.d};
}

// The forward as the kernels compute it, in A: each query row walks the keys
// in tiles of kBN, one online_rescale per tile.
template <class A>
void tiled_forward(const Problem& x, int64_t kBN, std::vector<double>& out, std::vector<double>& lse) {
  const AttentionDims& n = x.n;
  out.assign(static_cast<size_t>(n.batch * n.heads * n.lq * n.dv), 0.0);
  lse.assign(static_cast<size_t>(n.batch * n.heads * n.lq), 0.0);
  std::vector<A> o(static_cast<size_t>(n.dv)), s(static_cast<size_t>(kBN));
  for (int64_t b = 0; b < n.batch; ++b)
    for (int64_t h = 0; h < n.heads; ++h)
      for (int64_t i = 0; i < n.lq; ++i) {
        const double* qi = x.q.data() + ((b * n.heads + h) * n.lq + i) * n.d;
        at::RowState<A> st;
        std::fill(o.begin(), o.end(), A(0));
        for (int64_t j0 = 0; j0 < n.lk; j0 += kBN) {
          A tile_max = static_cast<A>(-INFINITY);
          for (int64_t jj = 0; jj < kBN; ++jj) {
            const int64_t j = j0 + jj;
            s[jj] = static_cast<A>(-INFINITY);
            if (!at::visible(n, x.c, b, i, j)) continue;
            const double* kj = x.k.data() + ((b * n.heads + h) * n.lk + j) * n.d;
            A dot = 0;
            for (int64_t e = 0; e < n.d; ++e) dot += static_cast<A>(qi[e]) * static_cast<A>(kj[e]);
            s[jj] = dot * static_cast<A>(x.c.scale);
            tile_max = std::max(tile_max, s[jj]);
          }
          const A alpha = at::online_rescale(st, tile_max);
          for (auto& e : o) e *= alpha;
          for (int64_t jj = 0; jj < kBN && j0 + jj < n.lk; ++jj) {
            const A p = at::exp_shifted(s[jj], st.m);
            st.l += p;
            const A pf = p * at::dropout_factor<A>(n, x.c, b, h, i, j0 + jj);
            const double* vj = x.v.data() + ((b * n.heads + h) * n.lk + j0 + jj) * n.dv;
            for (int64_t e = 0; e < n.dv; ++e) o[e] += pf * static_cast<A>(vj[e]);
          }
        }
        const A inv = at::row_inv_sum(st);
        for (int64_t e = 0; e < n.dv; ++e) out[((b * n.heads + h) * n.lq + i) * n.dv + e] = static_cast<double>(o[e] * inv);
        lse[(b * n.heads + h) * n.lq + i] = static_cast<double>(at::row_lse(st));
      }
}

// The backward as the kernels compute it: P recomputed from the lse, dsum from dO · O.
void tiled_backward(const Problem& x, const std::vector<double>& out, const std::vector<double>& lse,
                    std::vector<double>& dq, std::vector<double>& dk, std::vector<double>& dv) {
  const AttentionDims& n = x.n;
  dq.assign(x.q.size(), 0.0);
  dk.assign(x.k.size(), 0.0);
  dv.assign(x.v.size(), 0.0);
  auto dot = [&](const double* a, const double* b, int64_t len) {
    double r = 0;
    for (int64_t e = 0; e < len; ++e) r += a[e] * b[e];
    return r;
  };
  for (int64_t b = 0; b < n.batch; ++b)
    for (int64_t h = 0; h < n.heads; ++h)
      for (int64_t i = 0; i < n.lq; ++i) {
        const int64_t qi = (b * n.heads + h) * n.lq + i;
        const double dsum = dot(x.dout.data() + qi * n.dv, out.data() + qi * n.dv, n.dv);
        for (int64_t j = 0; j < n.lk; ++j) {
          if (!at::visible(n, x.c, b, i, j)) continue;
          const int64_t kj = (b * n.heads + h) * n.lk + j;
          const double s = dot(x.q.data() + qi * n.d, x.k.data() + kj * n.d, n.d) * x.c.scale;
          const double p = at::prob_from_lse(s, lse[qi]);
          const double f = at::dropout_factor<double>(n, x.c, b, h, i, j);
          const double dp = f * dot(x.dout.data() + qi * n.dv, x.v.data() + kj * n.dv, n.dv);
          const double ds = at::dscore(p, dp, dsum, x.c.scale);
          for (int64_t e = 0; e < n.dv; ++e) dv[kj * n.dv + e] += p * f * x.dout[qi * n.dv + e];
          for (int64_t e = 0; e < n.d; ++e) {
            dk[kj * n.d + e] += ds * x.q[qi * n.d + e];
            dq[qi * n.d + e] += ds * x.k[kj * n.d + e];
          }
        }
      }
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isinf(a[i]) || std::isinf(b[i])) {
      CHECK(a[i] == b[i]);
      continue;
    }
    m = std::max(m, std::abs(a[i] - b[i]));
  }
  return m;
}

double max_abs(const std::vector<double>& a) {
  double m = 0;
  for (double x : a) m = std::max(m, std::abs(x));
  return m;
}

}  // namespace

TEST_CASE("the tiled online softmax and the lse-recompute backward match the CPU attention reference") {
  struct Case {
    int64_t b, h, lq, lk, d;
    bool pad, causal;
    double p;
  };
  const std::vector<Case> cases = {
      {1, 1, 1, 1, 32, false, false, 0},   {2, 2, 17, 17, 32, true, false, 0}, {1, 2, 100, 100, 64, true, true, 0},
      {2, 1, 102, 102, 96, false, false, 0.1}, {1, 1, 128, 128, 64, false, true, 0.2}, {2, 1, 33, 257, 32, true, false, 0.3},
      {1, 1, 257, 17, 32, false, true, 0},
  };
  for (const Case& cs : cases) {
    for (int64_t kBN : {16, 64}) {
      INFO("B " << cs.b << " H " << cs.h << " Lq " << cs.lq << " Lk " << cs.lk << " D " << cs.d << " pad " << cs.pad
                << " causal " << cs.causal << " dropout " << cs.p << " tile " << kBN);
      Problem x = problem(cs.b, cs.h, cs.lq, cs.lk, cs.d, cs.pad, cs.causal, cs.p);
      const AttentionDims& n = x.n;
      std::vector<double> ref_out(x.dout.size()), ref_lse_f(static_cast<size_t>(n.batch * n.heads * n.lq));
      std::vector<float> ref_lse(ref_lse_f.size());
      cpu::attention_forward<double>(n, x.c, cview(x.q, n, n.lq), cview(x.k, n, n.lk), cview(x.v, n, n.lk),
                                     mview(ref_out, n, n.lq), nullptr, nullptr, ref_lse.data());
      std::vector<double> out, lse;
      tiled_forward<double>(x, kBN, out, lse);
      CHECK(max_abs_diff(out, ref_out) < 1e-12);
      for (size_t e = 0; e < lse.size(); ++e) ref_lse_f[e] = ref_lse[e];
      CHECK(max_abs_diff(lse, ref_lse_f) < 1e-5);  // the reference stores lse as float
      // In float, as the kernels accumulate: within float rounding of the double result.
      std::vector<double> out_f, lse_f;
      tiled_forward<float>(x, kBN, out_f, lse_f);
      CHECK(max_abs_diff(out_f, ref_out) < 2e-5);
      CHECK(max_abs_diff(lse_f, lse) < 2e-5);
      // Backward from the saved lse against the reference (which recomputes P its own way).
      std::vector<double> dq, dk, dv, rq(x.q.size()), rk(x.k.size()), rv(x.v.size());
      tiled_backward(x, out, ref_lse_f, dq, dk, dv);
      cpu::attention_backward<double>(n, x.c, cview(x.q, n, n.lq), cview(x.k, n, n.lk), cview(x.v, n, n.lk),
                                      cview(x.dout, n, n.lq), nullptr, ref_lse.data(), nullptr, mview(rq, n, n.lq),
                                      mview(rk, n, n.lk), mview(rv, n, n.lk));
      // Both recompute P from the float lse, so rows of P sum to 1 only to float precision; the
      // reference takes dsum_i = Σ_j P_ij dP_ij, the kernels dO_i · O_i (exact O): they differ by
      // about 1e-7 relative.
      CHECK(max_abs_diff(dq, rq) < 1e-6 * (1 + max_abs(rq)));
      CHECK(max_abs_diff(dk, rk) < 1e-6 * (1 + max_abs(rk)));
      CHECK(max_abs_diff(dv, rv) < 1e-6 * (1 + max_abs(rv)));
    }
  }
}

TEST_CASE("attention tile math: the online update, a row with no visible key, the dropout factor") {
  // Three tiles [1, 2], [-inf, -inf], [5, 0]: the running state equals one pass over all.
  at::RowState<double> st;
  const double tiles[3][2] = {{1, 2}, {-INFINITY, -INFINITY}, {5, 0}};
  for (const auto& t : tiles) {
    const double l_before = st.l, m_before = st.m;
    const double alpha = at::online_rescale(st, std::max(t[0], t[1]));
    if (std::isinf(m_before)) CHECK(alpha == 0.0);
    else CHECK(st.l == Approx(l_before * std::exp(m_before - st.m)));
    for (double s : t) st.l += at::exp_shifted(s, st.m);
  }
  const double want = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(5.0) + std::exp(0.0));
  CHECK(at::row_lse(st) == Approx(want).epsilon(1e-14));
  CHECK(at::row_inv_sum(st) == Approx(1 / (std::exp(1 - 5.0) + std::exp(2 - 5.0) + 1 + std::exp(-5.0))));
  // A row that sees nothing: alpha 0, no NaN, lse -inf, output factor 0, zero probabilities.
  at::RowState<float> none;
  CHECK(at::online_rescale(none, -INFINITY) == 0.0f);
  CHECK(at::exp_shifted(-INFINITY, none.m) == 0.0f);
  CHECK(std::isinf(at::row_lse(none)));
  CHECK(at::row_inv_sum(none) == 0.0f);
  CHECK(at::prob_from_lse(1.5f, -INFINITY) == 0.0f);
  CHECK(at::prob_from_lse(-INFINITY, 2.0f) == 0.0f);
  CHECK(at::prob_from_lse(1.5, 2.0) == Approx(std::exp(-0.5)));
  // The dropout factor is the documented Philox element of (b, h, i, j).
  AttentionDims n{2, 3, 5, 7, 8, 8};
  AttentionConfig c;
  c.dropout_p = 0.4;
  c.seed = 3;
  c.offset = 11;
  int kept = 0;
  for (int64_t j = 0; j < n.lk; ++j) {
    const double f = at::dropout_factor<double>(n, c, 1, 2, 4, j);
    const uint64_t e = static_cast<uint64_t>(((1 * 3 + 2) * 5 + 4) * 7 + j);
    CHECK(f == (attention_keeps(3, 11, e, 0.4) ? 1 / 0.6 : 0.0));
    kept += f != 0;
  }
  CHECK(kept > 0);
  c.dropout_p = 1;
  CHECK(at::dropout_factor<double>(n, c, 0, 0, 0, 0) == 0.0);
  c.dropout_p = 0;
  CHECK(at::dropout_factor<double>(n, c, 0, 0, 0, 0) == 1.0);
}

TEST_CASE("mma.sync m16n8k16 fragments: each layout covers its tile once; S's accumulators are P's A operand") {
  auto covers = [](int rows, int cols, int elems, auto row, auto col) {
    std::set<std::pair<int, int>> seen;
    for (int lane = 0; lane < 32; ++lane)
      for (int e = 0; e < elems; ++e) {
        const int r = row(lane, e), c = col(lane, e);
        CHECK((r >= 0 && r < rows && c >= 0 && c < cols));
        seen.insert({r, c});
      }
    CHECK(static_cast<int>(seen.size()) == rows * cols);
  };
  covers(16, 16, 8, at::frag::a_row, at::frag::a_col);
  covers(16, 8, 4, at::frag::b_row, at::frag::b_col);
  covers(16, 8, 4, at::frag::c_row, at::frag::c_col);
  // Pairs packed into one 32-bit register are neighbours in a row (A, C) or a column (B):
  // what the kernels' 32-bit shared-memory loads and the bf16x2 packing assume.
  for (int lane = 0; lane < 32; ++lane) {
    for (int e = 0; e < 8; e += 2) {
      CHECK(at::frag::a_row(lane, e) == at::frag::a_row(lane, e + 1));
      CHECK(at::frag::a_col(lane, e) + 1 == at::frag::a_col(lane, e + 1));
      CHECK(at::frag::a_col(lane, e) % 2 == 0);
    }
    for (int e = 0; e < 4; e += 2) {
      CHECK(at::frag::b_row(lane, e) + 1 == at::frag::b_row(lane, e + 1));
      CHECK(at::frag::c_col(lane, e) + 1 == at::frag::c_col(lane, e + 1));
    }
  }
  // A 16 x 16 block of S held as two C fragments (n-tiles 2s, 2s+1): element e of a lane's A
  // fragment, taken from C fragment a_from_c_tile(e) element a_from_c_elem(e), is the entry the
  // A layout names.
  for (int lane = 0; lane < 32; ++lane)
    for (int e = 0; e < 8; ++e) {
      const int tile = at::frag::a_from_c_tile(e), ce = at::frag::a_from_c_elem(e);
      CHECK(at::frag::c_row(lane, ce) == at::frag::a_row(lane, e));
      CHECK(tile * 8 + at::frag::c_col(lane, ce) == at::frag::a_col(lane, e));
    }
}

// ldmatrix.sync.aligned.m8n8.x4 as the PTX ISA defines it, on a row-major buffer m(row, col): lane
// l gives the address (row, col) of row l % 8 of matrix l / 8; register k of lane l receives two
// elements of matrix k: row l / 4, cols 2 (l % 4) and + 1, or with .trans rows 2 (l % 4) and + 1 of
// column l / 4.
using Ldm = std::array<std::array<std::array<int, 2>, 4>, 32>;  // [lane][register][low, high]
template <class M, class Row, class Col>
Ldm emulate_ldmatrix_x4(const M& m, Row row, Col col, bool trans) {
  Ldm out{};
  for (int lane = 0; lane < 32; ++lane)
    for (int k = 0; k < 4; ++k)
      for (int half = 0; half < 2; ++half) {
        const int r = trans ? 2 * (lane % 4) + half : lane / 4;  // within matrix k
        const int c = trans ? lane / 4 : 2 * (lane % 4) + half;
        const int src = 8 * k + r;  // the lane whose address is matrix k's row r
        out[lane][k][half] = m(row(src), col(src) + c);
      }
  return out;
}

TEST_CASE("ldmatrix lane addresses give the mma fragments the kernels' old 32- and 16-bit loads gave") {
  // Distinct values: entry (r, c) of a shared buffer with rows of 40 elements.
  const auto m = [](int r, int c) { return r * 40 + c; };
  // A: one k-step of a 16 x 16 tile; register k holds elements 2k, 2k + 1 of the A fragment.
  const Ldm a = emulate_ldmatrix_x4(m, at::frag::ldm_a_row, at::frag::ldm_a_col, false);
  // Bt: B[k][n] = X[n][k] from X's rows, n-tiles 0 and 1; registers (b0, b1) of n-tile 0, then 1.
  const Ldm bt = emulate_ldmatrix_x4(m, at::frag::ldm_bt_row, at::frag::ldm_bt_col, false);
  // B with .trans: B[k][n] = X[k][n] from X's rows (V), d-tiles 0 and 1.
  const Ldm b = emulate_ldmatrix_x4(m, at::frag::ldm_b_row, at::frag::ldm_b_col, true);
  for (int lane = 0; lane < 32; ++lane) {
    INFO("lane " << lane);
    for (int e = 0; e < 8; ++e) CHECK(a[lane][e / 2][e % 2] == m(at::frag::a_row(lane, e), at::frag::a_col(lane, e)));
    for (int tile = 0; tile < 2; ++tile)
      for (int e = 0; e < 4; ++e) {
        const int k = at::frag::b_row(lane, e), n = tile * 8 + at::frag::b_col(lane, e);
        CHECK(bt[lane][2 * tile + e / 2][e % 2] == m(n, k));
        CHECK(b[lane][2 * tile + e / 2][e % 2] == m(k, n));
      }
  }
  // Each lane's address is the start of a 16-byte row segment: 8-element aligned columns.
  for (int lane = 0; lane < 32; ++lane) {
    CHECK(at::frag::ldm_a_col(lane) % 8 == 0);
    CHECK(at::frag::ldm_bt_col(lane) % 8 == 0);
    CHECK(at::frag::ldm_b_col(lane) % 8 == 0);
  }
}

// The launch geometry the kernels share with the launchers (attention_grid, block_head).
TEST_CASE("the (batch, head) grid gives every pair exactly one block; causal tile bounds hold every visible key") {
  // PubMedBERT, the fusion block, the [gpu] cases past 65535 pairs, and gridDim's edges.
  const std::pair<int64_t, int64_t> shapes[] = {{64, 12}, {3, 12}, {2, 8},     {11000, 12}, {1, 70000},
                                                {65535, 1}, {65536, 1}, {1, 65536}, {1, 1},     {7, 13}};
  for (const auto& [batch, heads] : shapes) {
    INFO("B = " << batch << ", H = " << heads);
    const at::HeadGrid g = at::head_grid(batch, heads);
    REQUIRE(g.y >= 1);
    REQUIRE(g.y <= 65535);
    REQUIRE(g.z <= 65535);
    std::vector<uint8_t> seen(static_cast<size_t>(batch * heads), 0);
    int64_t padding = 0, outside = 0;
    for (int64_t z = 0; z < g.z; ++z)
      for (int64_t y = 0; y < g.y; ++y) {
        int b = -1, h = -1;
        if (!at::block_pair(static_cast<uint32_t>(y), static_cast<uint32_t>(z), static_cast<uint32_t>(g.y), batch,
                            heads, b, h)) {
          ++padding;
        } else if (b < 0 || b >= batch || h < 0 || h >= heads) {
          ++outside;
        } else {
          ++seen[static_cast<size_t>(b * heads + h)];
        }
      }
    CHECK(outside == 0);
    CHECK(std::count(seen.begin(), seen.end(), uint8_t(1)) == batch * heads);
    CHECK(padding < g.y);  // only the last z row pads
  }

  // Causal (key j visible to query i when j <= i): a query block [i0, i0 + rows) walks keys below
  // key_end, a key block from j0 the query tiles from query_begin; nothing visible is skipped.
  for (const int64_t lq : {1, 17, 64, 100, 130}) {
    for (const int64_t lk : {1, 17, 64, 100, 130}) {
      INFO("Lq = " << lq << ", Lk = " << lk);
      int64_t skipped = 0;  // visible (i, j) a block would not reach
      for (int64_t i0 = 0; i0 < lq; i0 += 64) {
        const int64_t end = at::key_end(true, lk, i0, 64);
        CHECK(end <= lk);
        for (int64_t i = i0; i < std::min(lq, i0 + 64); ++i)
          for (int64_t j = 0; j < lk; ++j) skipped += j <= i && j >= end;
        CHECK(at::key_end(false, lk, i0, 64) == lk);
      }
      for (int64_t j0 = 0; j0 < lk; j0 += 64) {
        const int64_t begin = at::query_begin(true, j0, 32);
        CHECK(begin % 32 == 0);
        for (int64_t j = j0; j < std::min(lk, j0 + 64); ++j)
          for (int64_t i = 0; i < lq; ++i) skipped += j <= i && i < begin;
        CHECK(at::query_begin(false, j0, 32) == 0);
      }
      CHECK(skipped == 0);
      for (int64_t i = 0; i < lq; ++i) CHECK(at::key_end(true, lk, i, 1) == std::min(lk, i + 1));  // reference kernels
    }
  }
}

}  // namespace test_attention_tile
