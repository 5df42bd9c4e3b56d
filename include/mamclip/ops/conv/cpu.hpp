#pragma once
// CPU reference 2-D convolution (torch.nn.functional.conv2d), forward and
// backward, on contiguous NCHW data in S = float or double (the op converts
// half and bfloat16 to float first).
//
//   x [N, C_in, H, W], w [C_out, C_in / G, kH, kW], b [C_out] -> y [N, C_out, OH, OW]
//   y[n, o, i, j] = b[o] + Σ_{c, ki, kj} w[o, c, ki, kj] · x[n, g·C_in/G + c, i·sh − ph + ki·dh, j·sw − pw + kj·dw]
//
// with g = o / (C_out / G) and x read as 0 outside the image. Two algorithms:
//
// im2col (any groups): per (sample, group) the receptive fields are unrolled
// into col [K = C_in/G · kH · kW, OH · OW], then one GEMM (ops/matmul/cpu.hpp,
// so Eigen or BLAS):
//   y_g = w_g [C_out/G, K] · col,   dw_g += dy_g · colᵀ,   dcol = w_gᵀ · dy_g, dx += col2im(dcol).
// A 1×1 kernel with stride 1 and no padding reads x as col directly.
//
// depthwise (G == C_in == C_out, any kernel): one channel at a time, on a
// zero-padded copy of its plane P [PH, PW] (PH = H + 2 ph + a margin), so no
// loop tests bounds. With stride 1, output (i, j) reads P[(i + ki·dh)·PW + j + kj·dw]:
// over the flat index q = i·PW + j the convolution is one-dimensional, so the
// kernel walks q in blocks of kBlock accumulators held in registers across all
// kH·kW taps (columns j >= OW of q are computed and dropped). The input
// gradient is the same loop on the zero-padded dy with the kernel reversed;
// the weight gradient is kH·kW dot products of dy with shifted P. Other
// strides use plain row loops over the padded buffers.
//
// Threads: under OpenMP (the switch that also threads Eigen's GEMM), depthwise
// runs channels in parallel and im2col runs groups in parallel when G > 1 (else
// the GEMM threads itself). Each output element is summed by one thread in a
// fixed order, so results do not depend on the thread count.

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "mamclip/core/config.hpp"
#include "mamclip/ops/matmul/cpu.hpp"

namespace mamclip {

// Sizes of one conv2d call; also the contract of a device kernel (conv.hpp).
struct Conv2dGeometry {
  int64_t batch = 0, c_in = 0, h = 0, w = 0;  // x [batch, c_in, h, w]
  int64_t c_out = 0, kh = 0, kw = 0;          // weight [c_out, c_in / groups, kh, kw]
  int64_t oh = 0, ow = 0;                     // y [batch, c_out, oh, ow]
  int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1, groups = 1;

  MAMCLIP_HOST_DEVICE int64_t cin_per_group() const { return c_in / groups; }
  MAMCLIP_HOST_DEVICE int64_t cout_per_group() const { return c_out / groups; }
  MAMCLIP_HOST_DEVICE bool depthwise() const { return groups == c_in && groups == c_out; }
};

enum class ConvAlgorithm { automatic, im2col, depthwise };

namespace cpu {

namespace conv_impl {

// Runs f(i) for i in [0, count), in parallel under OpenMP when count > 1. A
// single item runs outside any parallel region: inside one, even an inactive
// one, the GEMM it calls would get no threads of its own.
template <class F>
void parallel_for(int64_t count, F&& f) {
  if (count == 1) return f(0);
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
  for (int64_t i = 0; i < count; ++i) f(i);
}

inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Output positions o in [lo, hi) whose input index o·stride − pad + offset lies in [0, size).
struct Range {
  int64_t lo, hi;
};
inline Range valid_outputs(int64_t size, int64_t out, int64_t stride, int64_t pad, int64_t offset) {
  const int64_t lo = std::max<int64_t>(0, -floor_div(offset - pad, stride));  // ceil((pad − offset) / stride)
  const int64_t hi = std::min<int64_t>(out, floor_div(size - 1 + pad - offset, stride) + 1);
  return {lo, std::max(lo, hi)};
}

// f(col_row, image_row, lo, hi) for every (ki, kj) row of channel c's rows of
// col [K, OH·OW] and every output row i whose input row is inside the image:
// col_row points at col[(c·kH + ki)·kW + kj, i·OW], image_row is the offset in
// the group's [C_in/G, H, W] image such that output column j reads image_row +
// j·sw, which is inside the image for j in [lo, hi).
template <class F>
void for_each_patch_row(const Conv2dGeometry& g, int64_t c, F&& f) {
  const int64_t ohw = g.oh * g.ow;
  for (int64_t ki = 0; ki < g.kh; ++ki) {
    const Range rows = valid_outputs(g.h, g.oh, g.stride_h, g.pad_h, ki * g.dil_h);
    for (int64_t kj = 0; kj < g.kw; ++kj) {
      const Range cols = valid_outputs(g.w, g.ow, g.stride_w, g.pad_w, kj * g.dil_w);
      const int64_t row = ((c * g.kh + ki) * g.kw + kj) * ohw;
      for (int64_t i = rows.lo; i < rows.hi; ++i)
        f(row + i * g.ow, (c * g.h + i * g.stride_h - g.pad_h + ki * g.dil_h) * g.w - g.pad_w + kj * g.dil_w, cols.lo,
          cols.hi);
    }
  }
}

// f(c) for every input channel of a group, split over threads: each c writes
// only its own rows of col (im2col) or its own image channel (col2im_add).
template <class F>
void for_each_input_channel(const Conv2dGeometry& g, F&& f) {
  const int64_t per_channel = g.kh * g.kw * g.oh * g.ow;
  detail::parallel_for(
      g.cin_per_group(),
      [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; ++c) f(c);
      },
      std::max<int64_t>(2, detail::kParallelGrain / std::max<int64_t>(1, per_channel)));
}

// col [K, OH·OW] of one group of one sample; xg [C_in/G, H, W]. Reads outside the image are 0.
template <class S>
void im2col(const Conv2dGeometry& g, const S* xg, S* col) {
  const int64_t per_channel = g.kh * g.kw * g.oh * g.ow;
  for_each_input_channel(g, [&](int64_t c) {
    std::fill(col + c * per_channel, col + (c + 1) * per_channel, S(0));
    for_each_patch_row(g, c, [&](int64_t row, int64_t src, int64_t lo, int64_t hi) {
      for (int64_t j = lo; j < hi; ++j) col[row + j] = xg[src + j * g.stride_w];
    });
  });
}

// dxg [C_in/G, H, W] += col2im(col): the adjoint of im2col.
template <class S>
void col2im_add(const Conv2dGeometry& g, const S* col, S* dxg) {
  for_each_input_channel(g, [&](int64_t c) {
    for_each_patch_row(g, c, [&](int64_t row, int64_t dst, int64_t lo, int64_t hi) {
      for (int64_t j = lo; j < hi; ++j) dxg[dst + j * g.stride_w] += col[row + j];
    });
  });
}

inline bool col_is_input(const Conv2dGeometry& g) {
  return g.kh == 1 && g.kw == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_h == 0 && g.pad_w == 0;
}

template <class S>
void add_bias(const Conv2dGeometry& g, const S* b, S* y) {
  const int64_t ohw = g.oh * g.ow;
  detail::parallel_for(
      g.batch * g.c_out,
      [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          S* p = y + row * ohw;
          const S v = b[row % g.c_out];
          for (int64_t q = 0; q < ohw; ++q) p[q] += v;
        }
      },
      std::max<int64_t>(2, detail::kParallelGrain / std::max<int64_t>(1, ohw)));
}

template <class S>
void bias_grad(const Conv2dGeometry& g, const S* gy, S* db) {
  const int64_t ohw = g.oh * g.ow;
  detail::parallel_for(
      g.c_out,
      [&](int64_t begin, int64_t end) {
        for (int64_t o = begin; o < end; ++o) {
          S s = 0;
          for (int64_t n = 0; n < g.batch; ++n)
            s += Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>(gy + (n * g.c_out + o) * ohw, ohw).sum();
          db[o] = s;
        }
      },
      std::max<int64_t>(2, detail::kParallelGrain / std::max<int64_t>(1, g.batch * ohw)));
}

template <class S>
void im2col_forward(const Conv2dGeometry& g, const S* x, const S* w, S* y) {
  const int64_t cg = g.cin_per_group(), og = g.cout_per_group(), k = cg * g.kh * g.kw, ohw = g.oh * g.ow;
  const int64_t hw = g.h * g.w;
  const MatLayout lw{MatLayout::row_major, k}, lcol{MatLayout::row_major, ohw};
  // Groups in parallel (each with its own col); one group: the GEMM threads itself.
  parallel_for(g.groups, [&](int64_t gi) {
    std::vector<S> col(col_is_input(g) ? 0 : static_cast<size_t>(k * ohw));
    for (int64_t n = 0; n < g.batch; ++n) {
      const S* xg = x + (n * g.c_in + gi * cg) * hw;
      if (!col_is_input(g)) im2col(g, xg, col.data());
      gemm(og, ohw, k, w + gi * og * k, lw, col_is_input(g) ? xg : col.data(), lcol, y + (n * g.c_out + gi * og) * ohw,
           false);
    }
  });
}

template <class S>
void im2col_backward(const Conv2dGeometry& g, const S* x, const S* w, const S* gy, S* dx, S* dw) {
  const int64_t cg = g.cin_per_group(), og = g.cout_per_group(), k = cg * g.kh * g.kw, ohw = g.oh * g.ow;
  const int64_t hw = g.h * g.w;
  const MatLayout l_wt{MatLayout::col_major, k};  // w_gᵀ [k, og] of w_g [og, k]
  const MatLayout l_gy{MatLayout::row_major, ohw}, l_colt{MatLayout::col_major, ohw};  // dy_g [og, ohw], colᵀ [ohw, k]
  if (dx) std::fill(dx, dx + g.batch * g.c_in * hw, S(0));
  parallel_for(g.groups, [&](int64_t gi) {
    const bool direct = col_is_input(g);
    std::vector<S> col(direct ? 0 : static_cast<size_t>(k * ohw)), dcol(direct || !dx ? 0 : static_cast<size_t>(k * ohw));
    for (int64_t n = 0; n < g.batch; ++n) {
      const S* xg = x ? x + (n * g.c_in + gi * cg) * hw : nullptr;
      const S* gyg = gy + (n * g.c_out + gi * og) * ohw;
      if (dw) {
        if (!direct) im2col(g, xg, col.data());
        gemm(og, k, ohw, gyg, l_gy, direct ? xg : col.data(), l_colt, dw + gi * og * k, n > 0);
      }
      if (dx) {
        S* dxg = dx + (n * g.c_in + gi * cg) * hw;
        if (direct) {
          gemm(k, ohw, og, w + gi * og * k, l_wt, gyg, l_gy, dxg, false);
        } else {
          gemm(k, ohw, og, w + gi * og * k, l_wt, gyg, l_gy, dcol.data(), false);
          col2im_add(g, dcol.data(), dxg);
        }
      }
    }
    if (dw && g.batch == 0) std::fill(dw + gi * og * k, dw + (gi + 1) * og * k, S(0));
  });
}

// ---- depthwise

// Accumulators per block: 256 bytes (4 AVX-512, 8 AVX2 or 16 SSE registers),
// enough independent chains to hide the FMA latency.
template <class S>
inline constexpr int64_t kBlock = 256 / static_cast<int64_t>(sizeof(S));

// out[i] = init + Σ_t wt[t] · src[i + off[t]] for i in [0, count), count <= kBlock,
// with all kBlock lanes computed (src must be readable kBlock past each tap).
template <class S>
inline void taps_block(const S* src, const S* wt, const int64_t* off, int64_t taps, S init, S* out, int64_t count) {
  // Eigen's fixed-size packets keep the lanes along i: left to itself, GCC
  // unrolls the lane loop and vectorises over taps with gathers (10x slower).
  using Block = Eigen::Array<S, kBlock<S>, 1>;
  Block acc = Block::Constant(init);
  for (int64_t t = 0; t < taps; ++t) acc += wt[t] * Eigen::Map<const Block>(src + off[t]);
  std::copy(acc.data(), acc.data() + count, out);
}

// out[q] = init + Σ_t wt[t] · src[q + off[t]] for q in [0, len).
template <class S>
void taps_1d(const S* src, const S* wt, const std::vector<int64_t>& off, S init, S* out, int64_t len) {
  const auto taps = static_cast<int64_t>(off.size());
  for (int64_t q = 0; q < len; q += kBlock<S>)
    taps_block(src + q, wt, off.data(), taps, init, out + q, std::min(kBlock<S>, len - q));
}

// Per-thread buffers of one channel: the padded plane and a flat result.
template <class S>
struct DepthwisePlanes {
  int64_t ph, pw;  // padded plane [ph, pw]
  std::vector<S> pad, res;
  explicit DepthwisePlanes(const Conv2dGeometry& g)
      : ph(g.h + 2 * g.pad_h), pw(g.w + 2 * g.pad_w),
        pad(static_cast<size_t>(ph * pw + 2 * kBlock<S> * std::max(g.stride_w, int64_t{1}) + g.kw * g.dil_w), S(0)) {}
  // Offset of tap (ki, kj) in the padded plane, at ki·kW + kj.
  std::vector<int64_t> tap_offsets(const Conv2dGeometry& g) const {
    std::vector<int64_t> off(static_cast<size_t>(g.kh * g.kw));
    for (int64_t ki = 0; ki < g.kh; ++ki)
      for (int64_t kj = 0; kj < g.kw; ++kj) off[static_cast<size_t>(ki * g.kw + kj)] = ki * g.dil_h * pw + kj * g.dil_w;
    return off;
  }
  // Copies an [h, w] plane into the interior; the border stays zero.
  void load(const Conv2dGeometry& g, const S* plane) {
    for (int64_t i = 0; i < g.h; ++i) std::copy(plane + i * g.w, plane + (i + 1) * g.w, pad.data() + (i + g.pad_h) * pw + g.pad_w);
  }
};

template <class S>
void depthwise_forward(const Conv2dGeometry& g, const S* x, const S* w, const S* b, S* y) {
  const int64_t taps = g.kh * g.kw, hw = g.h * g.w, ohw = g.oh * g.ow;
  const bool unit = g.stride_h == 1 && g.stride_w == 1;
  // Channels split over threads; a thread's buffers serve all its channels.
  detail::parallel_for(
      g.c_in,
      [&](int64_t c_begin, int64_t c_end) {
        DepthwisePlanes<S> p(g);
        const std::vector<int64_t> off = p.tap_offsets(g);
        if (unit) p.res.resize(static_cast<size_t>(g.oh * p.pw));
        for (int64_t c = c_begin; c < c_end; ++c) {
          const S* wc = w + c * taps;
          const S init = b ? b[c] : S(0);
          for (int64_t n = 0; n < g.batch; ++n) {
            p.load(g, x + (n * g.c_in + c) * hw);
            S* yc = y + (n * g.c_in + c) * ohw;
            if (unit) {
              // Rows of res have the padded stride pw; columns [ow, pw) are dropped.
              taps_1d(p.pad.data(), wc, off, init, p.res.data(), g.oh * p.pw);
              for (int64_t i = 0; i < g.oh; ++i) std::copy(p.res.data() + i * p.pw, p.res.data() + i * p.pw + g.ow, yc + i * g.ow);
              continue;
            }
            for (int64_t i = 0; i < g.oh; ++i) {
              S* yr = yc + i * g.ow;
              std::fill(yr, yr + g.ow, init);
              const S* base = p.pad.data() + i * g.stride_h * p.pw;
              for (int64_t t = 0; t < taps; ++t) {
                const S wv = wc[t];
                const S* s = base + off[static_cast<size_t>(t)];
                for (int64_t j = 0; j < g.ow; ++j) yr[j] += wv * s[j * g.stride_w];
              }
            }
          }
        }
      },
      2);
}

template <class S>
void depthwise_backward(const Conv2dGeometry& g, const S* x, const S* w, const S* gy, S* dx, S* dw) {
  const int64_t taps = g.kh * g.kw, hw = g.h * g.w, ohw = g.oh * g.ow;
  const bool unit = g.stride_h == 1 && g.stride_w == 1;
  using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;
  // Channels split over threads; a thread's buffers serve all its channels.
  detail::parallel_for(
      g.c_in,
      [&](int64_t c_begin, int64_t c_end) {
        DepthwisePlanes<S> p(g);
        const std::vector<int64_t> off = p.tap_offsets(g);
        // For dx with stride 1: dy with a zero margin of (k − 1)·dil on every side, row stride gw.
        // For dw with stride 1: dy with row stride pw and zeros in columns >= ow, so that
        // dw[t] = Σ_{i<oh, j<ow} dy[i, j] · P[(i + ki·dh)·pw + j + kj·dw] is one flat dot per tap.
        const int64_t mh = (g.kh - 1) * g.dil_h, mw = (g.kw - 1) * g.dil_w;
        const int64_t gw = g.ow + 2 * mw;
        std::vector<S> gpad, gflat, flipped, dxp;
        std::vector<int64_t> flip_off;
        if (unit && dx) {
          gpad.assign(static_cast<size_t>((g.oh + 2 * mh) * gw + 2 * kBlock<S> + mw), S(0));
          p.res.resize(static_cast<size_t>(g.h * gw));
          flipped.resize(static_cast<size_t>(taps));
          flip_off.resize(static_cast<size_t>(taps));
          for (int64_t t = 0; t < taps; ++t) {
            const int64_t ki = t / g.kw, kj = t % g.kw;
            flip_off[static_cast<size_t>(t)] = ki * g.dil_h * gw + kj * g.dil_w;
          }
        }
        if (unit && dw) gflat.assign(static_cast<size_t>(g.oh * p.pw), S(0));
        if (!unit && dx) dxp.resize(p.pad.size());
        std::vector<S> dwc(static_cast<size_t>(taps));
        for (int64_t c = c_begin; c < c_end; ++c) {
          if (unit && dx)
            for (int64_t t = 0; t < taps; ++t)
              flipped[static_cast<size_t>(t)] = w[c * taps + (g.kh - 1 - t / g.kw) * g.kw + (g.kw - 1 - t % g.kw)];
          std::fill(dwc.begin(), dwc.end(), S(0));
          for (int64_t n = 0; n < g.batch; ++n) {
            const S* gc = gy + (n * g.c_in + c) * ohw;
            S* dxc = dx ? dx + (n * g.c_in + c) * hw : nullptr;
            if (unit) {
              if (dxc) {
                for (int64_t i = 0; i < g.oh; ++i) std::copy(gc + i * g.ow, gc + (i + 1) * g.ow, gpad.data() + (i + mh) * gw + mw);
                // res[i·gw + s] = dxp[ph + i, s] (padded coords) = Σ_t w[k − 1 − t] · gpad[ph + i + ki·dh, s + kj·dw];
                // columns [pw, pw + w) of those rows are the image.
                taps_1d(gpad.data() + g.pad_h * gw, flipped.data(), flip_off, S(0), p.res.data(), g.h * gw);
                for (int64_t i = 0; i < g.h; ++i)
                  std::copy(p.res.data() + i * gw + g.pad_w, p.res.data() + i * gw + g.pad_w + g.w, dxc + i * g.w);
              }
              if (dw) {
                for (int64_t i = 0; i < g.oh; ++i) std::copy(gc + i * g.ow, gc + (i + 1) * g.ow, gflat.data() + i * p.pw);
                p.load(g, x + (n * g.c_in + c) * hw);
                const Eigen::Map<const Vec> gv(gflat.data(), g.oh * p.pw);
                for (int64_t t = 0; t < taps; ++t)
                  dwc[static_cast<size_t>(t)] += gv.dot(Eigen::Map<const Vec>(p.pad.data() + off[static_cast<size_t>(t)], g.oh * p.pw));
              }
              continue;
            }
            if (dxc) {
              std::fill(dxp.begin(), dxp.end(), S(0));
              for (int64_t i = 0; i < g.oh; ++i) {
                const S* gr = gc + i * g.ow;
                S* base = dxp.data() + i * g.stride_h * p.pw;
                for (int64_t t = 0; t < taps; ++t) {
                  const S wv = w[c * taps + t];
                  S* d = base + off[static_cast<size_t>(t)];
                  for (int64_t j = 0; j < g.ow; ++j) d[j * g.stride_w] += wv * gr[j];
                }
              }
              for (int64_t i = 0; i < g.h; ++i)
                std::copy(dxp.data() + (i + g.pad_h) * p.pw + g.pad_w, dxp.data() + (i + g.pad_h) * p.pw + g.pad_w + g.w, dxc + i * g.w);
            }
            if (dw) {
              p.load(g, x + (n * g.c_in + c) * hw);
              for (int64_t i = 0; i < g.oh; ++i) {
                const S* gr = gc + i * g.ow;
                const S* base = p.pad.data() + i * g.stride_h * p.pw;
                for (int64_t t = 0; t < taps; ++t) {
                  const S* s = base + off[static_cast<size_t>(t)];
                  S acc = 0;
                  for (int64_t j = 0; j < g.ow; ++j) acc += gr[j] * s[j * g.stride_w];
                  dwc[static_cast<size_t>(t)] += acc;
                }
              }
            }
          }
          if (dw) std::copy(dwc.begin(), dwc.end(), dw + c * taps);
        }
      },
      2);
}

}  // namespace conv_impl

inline ConvAlgorithm resolve(const Conv2dGeometry& g, ConvAlgorithm algo) {
  if (algo == ConvAlgorithm::automatic) return g.depthwise() ? ConvAlgorithm::depthwise : ConvAlgorithm::im2col;
  return algo;
}

// y [N, C_out, OH, OW] (written); b may be null. `depthwise` needs g.depthwise().
template <class S>
void conv2d_forward(const Conv2dGeometry& g, const S* x, const S* w, const S* b, S* y,
                    ConvAlgorithm algo = ConvAlgorithm::automatic) {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>, "conv2d kernels compute in float or double");
  if (g.batch * g.c_out * g.oh * g.ow == 0) return;
  if (resolve(g, algo) == ConvAlgorithm::depthwise) {
    conv_impl::depthwise_forward(g, x, w, b, y);
    return;
  }
  conv_impl::im2col_forward(g, x, w, y);
  if (b) conv_impl::add_bias(g, b, y);
}

// dx, dw, db are written when non-null; x is read only for dw, w only for dx.
template <class S>
void conv2d_backward(const Conv2dGeometry& g, const S* x, const S* w, const S* gy, S* dx, S* dw, S* db,
                     ConvAlgorithm algo = ConvAlgorithm::automatic) {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>, "conv2d kernels compute in float or double");
  if (db) conv_impl::bias_grad(g, gy, db);
  if (g.batch * g.c_out * g.oh * g.ow == 0) {
    if (dx) std::fill(dx, dx + g.batch * g.c_in * g.h * g.w, S(0));
    if (dw) std::fill(dw, dw + g.c_out * g.cin_per_group() * g.kh * g.kw, S(0));
    return;
  }
  if (!dx && !dw) return;
  if (resolve(g, algo) == ConvAlgorithm::depthwise)
    conv_impl::depthwise_backward(g, x, w, gy, dx, dw);
  else
    conv_impl::im2col_backward(g, x, w, gy, dx, dw);
}

}  // namespace cpu
}  // namespace mamclip
