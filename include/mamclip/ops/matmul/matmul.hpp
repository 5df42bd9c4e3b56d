#pragma once
// matmul (torch.matmul semantics), bmm and linear, and their gradients.
//
// The CPU path is cpu.hpp (Eigen, or BLAS with MAMCLIP_WITH_BLAS); other
// devices call the "gemm" kernel registered for them (GemmKernel below).
// Operands are read in place whenever their matrices are row- or column-major
// (transposed views included); only matrices with no unit stride are copied.

#include <tuple>
#include <type_traits>
#include <utility>

#include "mamclip/autograd/node.hpp"
#include "mamclip/core/autocast.hpp"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/ops/fwd.hpp"
#include "mamclip/ops/matmul/cpu.hpp"
#include "mamclip/ops/shape/shape.hpp"  // Tensor::to<U>() (autocast)

namespace mamclip {

// Batched strided GEMM for a device, registered in KernelRegistry under "gemm".
// Row-major semantics, for each p in [0, batch):
//
//   C[p] = alpha · op(A[p]) · op(B[p]) + beta · C[p]
//
// with X[p] = x + p * stride_x. C[p] is m×n row-major with leading dim ldc.
// op(A) is m×k: when !trans_a, A[p] is stored m×k row-major with leading dim
// lda; when trans_a, A[p] is stored k×m row-major (lda) and op(A) = A[p]ᵀ.
// Likewise op(B) is k×n: stored k×n (ldb), or n×k when trans_b. A stride of 0
// repeats one matrix across the batch. As in BLAS, C is not read when
// beta == 0 (it may hold garbage) and lda/ldb/ldc are >= max(1, row length).
// A column-major library (cuBLAS) computes the same thing as
// Cᵀ = op(B)ᵀ · op(A)ᵀ with the operands swapped.
template <class T>
using GemmKernel = void(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const T* a,
                        int64_t lda, int64_t stride_a, const T* b, int64_t ldb, int64_t stride_b, double beta, T* c,
                        int64_t ldc, int64_t stride_c, int64_t batch);

// linear's fused GEMMs on a device (cuBLASLt epilogues on CUDA:
// ops/matmul/cublaslt.cuh). Each returns false when the device library has
// no algorithm for the layout; linear then takes "gemm" plus separate bias
// passes. Row-major, rows of x and dy with unit stride:
//   "linear_bias"         y [rows, out] (contiguous) = x [rows, in] (row stride ldx) · wᵀ + bias,
//                         w [out, in] and bias [out] contiguous
//   "linear_weight_grad"  dw [out, in] (contiguous) = dyᵀ · x and db [out] = Σ_rows dy,
//                         x [rows, in] (ldx), dy [rows, out] (ldg)
template <class T>
using LinearBiasKernel = bool(int64_t rows, int64_t out_f, int64_t in_f, const T* x, int64_t ldx, const T* w,
                              const T* bias, T* y);
template <class T>
using LinearWeightGradKernel = bool(int64_t rows, int64_t out_f, int64_t in_f, const T* x, int64_t ldx, const T* dy,
                                    int64_t ldg, T* dw, T* db);

namespace detail {

template <class T>
void matmul_check_device(const char* op, const char* na, const Tensor<T>& a, const char* nb, const Tensor<T>& b) {
  MAMCLIP_CHECK(a.device() == b.device(), device_error, op, ": expected all tensors on one device, but ", na, " is on ",
                a.device().str(), " and ", nb, " is on ", b.device().str());
}

// x itself when GEMM can read its matrices in place, else a contiguous copy (outside the graph).
template <class T>
Tensor<T> gemm_readable(const Tensor<T>& x) {
  const int64_t n = x.dim();
  const auto l = cpu::mat_layout(x.shape()[n - 2], x.shape()[n - 1], x.strides()[n - 2], x.strides()[n - 1]);
  return l.kind == cpu::MatLayout::strided ? contiguous_copy(x) : x.detach();
}

// x's batch strides read as the broadcast batch shape `batch` (0 on broadcast dims).
template <class T>
Shape gemm_batch_strides(const Tensor<T>& x, const Shape& batch) {
  const Shape s(x.shape().begin(), x.shape().end() - 2), st(x.strides().begin(), x.strides().end() - 2);
  return broadcast_strides(s, st, batch);
}

// How a device GEMM reads one operand: a pointer, transposition, leading dim
// and batch stride; `keep` owns a copy when the operand had to be made dense.
template <class T>
struct DeviceGemmOperand {
  Tensor<T> keep;
  bool trans = false;
  int64_t ld = 0, stride = 0;
};

template <class T>
DeviceGemmOperand<T> device_gemm_operand(const Tensor<T>& x, const Shape& batch) {
  const int64_t n = x.dim(), r = x.shape()[n - 2], c = x.shape()[n - 1];
  DeviceGemmOperand<T> d;
  d.keep = gemm_readable(x);
  auto l = cpu::mat_layout(r, c, d.keep.strides()[n - 2], d.keep.strides()[n - 1]);
  auto bs = cpu::uniform_stride(batch, gemm_batch_strides(d.keep, batch));
  if (!bs) {
    // Batch dims that do not nest (a permuted batch, partly broadcast): one dense copy of the broadcast operand.
    Shape full = batch;
    full.push_back(r);
    full.push_back(c);
    d.keep = contiguous_copy(d.keep.expand(full));
    l = cpu::mat_layout(r, c, c, 1);
    bs = r * c;
  }
  d.trans = l.kind == cpu::MatLayout::col_major;
  d.ld = l.ld;
  d.stride = *bs;
  return d;
}

// out [batch..., m, n] (contiguous) = or += a [..., m, k] · b [..., k, n], with
// a's and b's batch dims broadcast to `batch`. Not recorded.
template <class T>
void gemm_into(const char* op, Tensor<T>& out, const Tensor<T>& a, const Tensor<T>& b, const Shape& batch,
               bool accumulate) {
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  if (out.numel() == 0) return;
  if (a.device().is_cpu()) {
    if constexpr (!std::is_same_v<T, acc_t<T>>) {
      // half / bfloat16: multiply in float, round once at the end.
      using A = acc_t<T>;
      Tensor<A> of = accumulate ? out.template to<A>() : Tensor<A>::empty(out.shape());
      gemm_into<A>(op, of, a.detach().template to<A>(), b.detach().template to<A>(), batch, accumulate);
      out.copy_(of.template to<T>());
    } else {
      const Tensor<T> ra = gemm_readable(a), rb = gemm_readable(b);
      cpu::batched_gemm<T>(batch, m, n, k, {ra.data_ptr(), gemm_batch_strides(ra, batch), ra.stride(-2), ra.stride(-1)},
                           {rb.data_ptr(), gemm_batch_strides(rb, batch), rb.stride(-2), rb.stride(-1)},
                           out.data_ptr(), accumulate);
    }
    return;
  }
  auto* kernel = find_kernel<GemmKernel<T>>("gemm", dtype_v<T>, a.device());
  MAMCLIP_CHECK(kernel != nullptr, device_error, op, ": no \"gemm\" kernel is registered for ", dtype_name(dtype_v<T>),
                " tensors on ", a.device().str(),
                (a.device().is_cuda() ? " (is the CUDA backend linked: mamclip::cuda or mamclip/cuda.hpp?)" : ""));
  if (k == 0) {
    if (!accumulate) out.zero_();
    return;
  }
  const auto da = device_gemm_operand(a, batch), db = device_gemm_operand(b, batch);
  kernel(da.trans, db.trans, m, n, k, 1.0, da.keep.data_ptr(), da.ld, da.stride, db.keep.data_ptr(), db.ld, db.stride,
         accumulate ? 1.0 : 0.0, out.data_ptr(), n, m * n, numel_of(batch));
}

// The recorded batched product of two tensors of >= 2 dims with matching inner
// sizes; batch dims broadcast. `op` names the public op in messages.
template <class T>
Tensor<T> matmul_nd(const char* op, const char* node_name, const Tensor<T>& a, const Tensor<T>& b) {
  const Shape ab(a.shape().begin(), a.shape().end() - 2), bb(b.shape().begin(), b.shape().end() - 2);
  const size_t nb = std::max(ab.size(), bb.size());
  Shape batch(nb);
  for (size_t i = 0; i < nb; ++i) {
    const int64_t da = i < nb - ab.size() ? 1 : ab[i - (nb - ab.size())];
    const int64_t db = i < nb - bb.size() ? 1 : bb[i - (nb - bb.size())];
    MAMCLIP_CHECK(da == db || da == 1 || db == 1, shape_error, op, ": a has shape ", shape_str(a.shape()),
                  " and b has shape ", shape_str(b.shape()), "; their batch dims ", shape_str(ab), " and ",
                  shape_str(bb), " cannot be broadcast together");
    batch[i] = da == 1 ? db : da;
  }
  Shape out_shape = batch;
  out_shape.push_back(a.size(-2));
  out_shape.push_back(b.size(-1));
  Tensor<T> y = Tensor<T>::empty(out_shape, a.device());
  gemm_into(op, y, a, b, batch, /*accumulate=*/false);
  return autograd::record<T>(
      node_name, {a, b}, y, [a = a.detach(), b = b.detach()](const Tensor<T>& g, const std::vector<bool>& needs) {
        Tensor<T> ga, gb;
        // dA = g · Bᵀ and dB = Aᵀ · g, summed over the batch dims each input was broadcast along.
        if (needs[0]) ga = sum_to(matmul(g, b.transpose(-1, -2)), a.shape());
        if (needs[1]) {
          if (b.dim() == 2 && a.dim() > 2) {
            // B shared by the whole batch: one GEMM over the flattened rows, no [batch, k, n] intermediate.
            const int64_t k = a.size(-1), n = b.size(-1);
            gb = matmul(a.reshape({-1, k}).t(), g.reshape({-1, n}));
          } else {
            gb = sum_to(matmul(a.transpose(-1, -2), g), b.shape());
          }
        }
        return std::vector<Tensor<T>>{ga, gb};
      });
}

// The leading dim of a [rows, cols] matrix whose rows have unit stride, or 0
// when its rows are not laid out that way.
template <class T>
int64_t row_major_ld(const Tensor<T>& m) {
  const auto l = cpu::mat_layout(m.size(0), m.size(1), m.stride(0), m.stride(1));
  return l.kind == cpu::MatLayout::row_major ? l.ld : 0;
}

// y2 = x2 · wᵀ + bias through the device's "linear_bias" kernel; false when
// there is none or it does not take these operands.
template <class T>
bool linear_bias_fused(const Tensor<T>& x2, const Tensor<T>& w, const Tensor<T>& bias, Tensor<T>& y2) {
  if (!bias.defined() || x2.device().is_cpu() || y2.numel() == 0 || x2.size(1) == 0) return false;
  const int64_t ldx = row_major_ld(x2);
  if (ldx == 0 || !w.is_contiguous() || !bias.is_contiguous()) return false;
  auto* kernel = find_kernel<LinearBiasKernel<T>>("linear_bias", dtype_v<T>, x2.device());
  return kernel && kernel(x2.size(0), w.size(0), w.size(1), x2.data_ptr(), ldx, w.data_ptr(), bias.data_ptr(),
                          y2.data_ptr());
}

// {dw, db} of linear from the device's "linear_weight_grad" kernel, or
// undefined tensors when there is none or it does not take these operands.
template <class T>
std::pair<Tensor<T>, Tensor<T>> linear_weight_grad_fused(const Tensor<T>& x2, const Tensor<T>& g2, const Shape& w_shape) {
  if (x2.device().is_cpu() || x2.numel() == 0 || g2.numel() == 0) return {};
  const int64_t ldx = row_major_ld(x2), ldg = row_major_ld(g2);
  if (ldx == 0 || ldg == 0) return {};
  auto* kernel = find_kernel<LinearWeightGradKernel<T>>("linear_weight_grad", dtype_v<T>, x2.device());
  if (!kernel) return {};
  Tensor<T> dw = Tensor<T>::empty(w_shape, x2.device()), db = Tensor<T>::empty({w_shape[0]}, x2.device());
  if (!kernel(x2.size(0), w_shape[0], w_shape[1], x2.data_ptr(), ldx, g2.data_ptr(), ldg, dw.data_ptr(), db.data_ptr()))
    return {};
  return {dw, db};
}

}  // namespace detail

template <class T>
Tensor<T> matmul(const Tensor<T>& a, const Tensor<T>& b) {
  static_assert(is_floating_v<T>, "matmul: T must be float, double, half or bfloat16");
  MAMCLIP_CHECK(a.dim() >= 1 && b.dim() >= 1, shape_error, "matmul: a has shape ", shape_str(a.shape()),
                " and b has shape ", shape_str(b.shape()), "; expected both to have at least 1 dim");
  detail::matmul_check_device("matmul", "a", a, "b", b);
  if (autocast_applies<T>(a.device()))
    return autocast_dispatch(a.device(), [&](auto u) {
      using U = decltype(u);
      return matmul(a.template to<U>(), b.template to<U>()).template to<T>();
    });
  const bool a1 = a.dim() == 1, b1 = b.dim() == 1;
  MAMCLIP_CHECK(a.size(-1) == b.size(b1 ? 0 : -2), shape_error, "matmul: a has shape ", shape_str(a.shape()),
                " and b has shape ", shape_str(b.shape()), "; expected a.size(-1) == ", (b1 ? "b.size(0)" : "b.size(-2)"));
  // 1-D operands are promoted to matrices (a row vector, a column vector) and
  // the added dim is removed from the result, as in torch.matmul.
  Tensor<T> y = detail::matmul_nd("matmul", "MatmulBackward", a1 ? a.unsqueeze(0) : a, b1 ? b.unsqueeze(-1) : b);
  if (b1) y = y.squeeze(-1);
  if (a1) y = y.squeeze(b1 ? -1 : -2);
  return y;
}

template <class T>
Tensor<T> bmm(const Tensor<T>& a, const Tensor<T>& b) {
  static_assert(is_floating_v<T>, "bmm: T must be float, double, half or bfloat16");
  MAMCLIP_CHECK(a.dim() == 3, shape_error, "bmm: a has shape ", shape_str(a.shape()), "; expected a 3-D tensor [B, n, k]");
  MAMCLIP_CHECK(b.dim() == 3, shape_error, "bmm: b has shape ", shape_str(b.shape()), "; expected a 3-D tensor [B, k, m]");
  MAMCLIP_CHECK(a.size(0) == b.size(0), shape_error, "bmm: a has shape ", shape_str(a.shape()), " and b has shape ",
                shape_str(b.shape()), "; expected a.size(0) == b.size(0) (bmm does not broadcast; use matmul)");
  MAMCLIP_CHECK(a.size(2) == b.size(1), shape_error, "bmm: a has shape ", shape_str(a.shape()), " and b has shape ",
                shape_str(b.shape()), "; expected a.size(2) == b.size(1)");
  detail::matmul_check_device("bmm", "a", a, "b", b);
  return detail::matmul_nd("bmm", "BmmBackward", a, b);
}

template <class T>
Tensor<T> linear(const Tensor<T>& x, const Tensor<T>& weight, const Tensor<T>& bias) {
  static_assert(is_floating_v<T>, "linear: T must be float, double, half or bfloat16");
  MAMCLIP_CHECK(weight.dim() == 2, shape_error, "linear: weight has shape ", shape_str(weight.shape()),
                "; expected a 2-D tensor [out_features, in_features]");
  const int64_t out_f = weight.size(0), in_f = weight.size(1);
  MAMCLIP_CHECK(x.dim() >= 1 && x.size(-1) == in_f, shape_error, "linear: x has shape ", shape_str(x.shape()),
                " and weight has shape ", shape_str(weight.shape()), "; expected x.size(-1) == weight.size(1) (",
                in_f, " in_features)");
  detail::matmul_check_device("linear", "x", x, "weight", weight);
  if (bias.defined()) {
    MAMCLIP_CHECK(bias.shape() == Shape{out_f}, shape_error, "linear: bias has shape ", shape_str(bias.shape()),
                  "; expected [", out_f, "] (weight has shape ", shape_str(weight.shape()), ")");
    detail::matmul_check_device("linear", "x", x, "bias", bias);
  }
  if (autocast_applies<T>(x.device()))
    return autocast_dispatch(x.device(), [&](auto u) {
      using U = decltype(u);
      const Tensor<U> b = bias.defined() ? bias.template to<U>() : Tensor<U>();
      return linear(x.template to<U>(), weight.template to<U>(), b).template to<T>();
    });
  // Rows of x as one [N, in] matrix (a view unless x's layout forbids it).
  const Tensor<T> x2 = x.detach().reshape({-1, in_f});
  Tensor<T> y2 = Tensor<T>::empty({x2.size(0), out_f}, x.device());
  if (!detail::linear_bias_fused(x2, weight, bias, y2)) {
    if (bias.defined()) y2.copy_(bias.detach().expand(y2.shape()));
    // weight.t() is a column-major view of weight: GEMM reads it in place.
    detail::gemm_into("linear", y2, x2, weight.detach().t(), {}, /*accumulate=*/bias.defined());
  }
  Shape out_shape = x.shape();
  out_shape.back() = out_f;
  return autograd::record<T>(
      "LinearBackward", {x, weight, bias}, y2.view(out_shape),
      [x2, w = weight.detach(), x_shape = x.shape(), out_f](const Tensor<T>& g, const std::vector<bool>& needs) {
        // Over the flattened rows: dx = g·W, dW = gᵀ·x, db = Σ_rows g. gᵀ and
        // the reshapes are views, so nothing beyond the results is allocated.
        const Tensor<T> g2 = g.reshape({-1, out_f});
        std::vector<Tensor<T>> grads(3);
        if (needs[0]) grads[0] = matmul(g2, w).view(x_shape);
        if (needs[1] && needs[2]) std::tie(grads[1], grads[2]) = detail::linear_weight_grad_fused(x2, g2, w.shape());
        if (needs[1] && !grads[1].defined()) grads[1] = matmul(g2.t(), x2);
        if (needs[2] && !grads[2].defined()) grads[2] = sum(g2, {0});
        return grads;
      });
}

}  // namespace mamclip
