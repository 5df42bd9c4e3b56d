#pragma once
// CUDA kernels of the elementwise family: every unary and binary op of
// elementwise.hpp (UnaryKernel / BinaryKernel, registered under the op's
// name), "add_contiguous" (AddKernel, gradient accumulation), "where"
// (WhereKernel, and so masked_fill) and "dropout" (BernoulliMaskKernel: the
// CPU's Philox mask, bit for bit).
//
//   ops      one functor per op (AddOp, ExpOp, GeluBackwardOp, ...): the CPU
//            lambda's formula in the accumulation type, p0 / p1 its scalars
//   kernel   map_kernel<kBlock, kVec, D, Op, Inputs>: raw pointers, n elements;
//            strided_unary_kernel / strided_map_kernel: operands through a BinaryIndex
//   launcher launch_map<Op>(..., stream): picks 16-byte packs or scalars;
//            launch_unary / launch_binary: contiguous operands to launch_map, others strided
//   entries  kernels::unary<T, Op> / binary<T, Op>: the registered functions
//            (current device and stream)
//
// The output is contiguous with n elements. Broadcast and non-contiguous
// operands (unary, binary and where's) are read in place through their strides
// (binary_index.hpp), without an expanded copy. Arithmetic is in device_acc_t (float for
// half and bfloat16) and rounds once, like the CPU reference; transcendental
// functions are CUDA's (within 2 ulp of the host's in float).

#include <cstring>

#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/cuda/math.cuh"
#include "mamclip/core/cuda/types.cuh"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/core/random.hpp"
#include "mamclip/core/tensor_data.hpp"
#include "mamclip/ops/elementwise/elementwise.hpp"

namespace mamclip::cuda {

// ---- the ops: elementwise.hpp's formulas; p0, p1 as the op passes them

struct OpParams {
  double p0 = 0, p1 = 0;
};

#define MAMCLIP_CUDA_UNARY_OP(Name, expr)                                \
  struct Name : OpParams {                                               \
    template <class A>                                                   \
    __device__ __forceinline__ A operator()(A v) const { return expr; } \
  };
#define MAMCLIP_CUDA_BINARY_OP(Name, expr)                                    \
  struct Name : OpParams {                                                    \
    template <class A>                                                        \
    __device__ __forceinline__ A operator()(A a, A b) const { return expr; } \
  };

MAMCLIP_CUDA_UNARY_OP(AddScalarOp, v + A(p0))
MAMCLIP_CUDA_UNARY_OP(MulScalarOp, v * A(p0))
MAMCLIP_CUDA_UNARY_OP(RsubScalarOp, A(p0) - v)
MAMCLIP_CUDA_UNARY_OP(RdivScalarOp, A(p0) / v)
MAMCLIP_CUDA_UNARY_OP(PowScalarOp, math::pow(v, A(p0)))
MAMCLIP_CUDA_UNARY_OP(NegOp, -v)
MAMCLIP_CUDA_UNARY_OP(ExpOp, math::exp(v))
MAMCLIP_CUDA_UNARY_OP(LogOp, math::log(v))
MAMCLIP_CUDA_UNARY_OP(SqrtOp, math::sqrt(v))
MAMCLIP_CUDA_UNARY_OP(RsqrtOp, A(1) / math::sqrt(v))
MAMCLIP_CUDA_UNARY_OP(AbsOp, math::abs(v))
MAMCLIP_CUDA_UNARY_OP(TanhOp, math::tanh(v))
// Split by sign so exp never overflows.
MAMCLIP_CUDA_UNARY_OP(SigmoidOp, v >= A(0) ? A(1) / (A(1) + math::exp(-v)) : math::exp(v) / (A(1) + math::exp(v)))
MAMCLIP_CUDA_UNARY_OP(ReluOp, v > A(0) ? v : A(0))
MAMCLIP_CUDA_UNARY_OP(ClampOp, v < A(p0) ? A(p0) : (v > A(p1) ? A(p1) : v))

MAMCLIP_CUDA_BINARY_OP(AddOp, a + b)
MAMCLIP_CUDA_BINARY_OP(SubOp, a - b)
MAMCLIP_CUDA_BINARY_OP(MulOp, a * b)
MAMCLIP_CUDA_BINARY_OP(DivOp, a / b)
MAMCLIP_CUDA_BINARY_OP(PowOp, math::pow(a, b))
// d/de x^e = x^e log x (a = y = x^e, b = x), 0 where x == 0.
MAMCLIP_CUDA_BINARY_OP(PowExponentGradOp, b == A(0) ? A(0) : a * math::log(b))
// (a = gradient, b = x or y)
MAMCLIP_CUDA_BINARY_OP(AbsBackwardOp, b > A(0) ? a : (b < A(0) ? -a : A(0)))
MAMCLIP_CUDA_BINARY_OP(TanhBackwardOp, a * (A(1) - b * b))
MAMCLIP_CUDA_BINARY_OP(SigmoidBackwardOp, a * b * (A(1) - b))
MAMCLIP_CUDA_BINARY_OP(ReluBackwardOp, b > A(0) ? a : A(0))
MAMCLIP_CUDA_BINARY_OP(ClampBackwardOp, (b >= A(p0) && b <= A(p1)) ? a : A(0))

#undef MAMCLIP_CUDA_UNARY_OP
#undef MAMCLIP_CUDA_BINARY_OP

// GELU, exact (erf) and tanh forms, and their derivatives (detail::gelu_value / gelu_derivative).
template <bool kTanh>
struct GeluOp : OpParams {
  template <class A>
  __device__ __forceinline__ A operator()(A x) const {
    if constexpr (kTanh) {
      const A k = A(0.7978845608028654), c = A(0.044715);
      return A(0.5) * x * (A(1) + math::tanh(k * (x + c * x * x * x)));
    } else {
      return A(0.5) * x * (A(1) + math::erf(x * A(0.7071067811865476)));
    }
  }
};

template <bool kTanh>
struct GeluBackwardOp : OpParams {
  template <class A>
  __device__ __forceinline__ A operator()(A g, A x) const {
    if constexpr (kTanh) {
      const A k = A(0.7978845608028654), c = A(0.044715);
      const A t = math::tanh(k * (x + c * x * x * x));
      return g * (A(0.5) * (A(1) + t) + A(0.5) * x * (A(1) - t * t) * k * (A(1) + A(3) * c * x * x));
    } else {
      const A cdf = A(0.5) * (A(1) + math::erf(x * A(0.7071067811865476)));
      const A pdf = math::exp(A(-0.5) * x * x) * A(0.3989422804014327);
      return g * (cdf + x * pdf);
    }
  }
};

// ---- kernel and launcher

// out[i] = op(in[0][i], ..., in[kIn - 1][i]) for i in [0, n). Each thread
// handles kVec adjacent elements per step, with one 16-byte load or store per
// operand when kVec * sizeof(D) == 16 (the launcher checks alignment); the
// last n % kVec elements go to the first threads of block 0. out may alias
// an input.
template <int kBlock, int kVec, class D, class Op, int kIn>
__global__ void __launch_bounds__(kBlock) map_kernel(D* out, const D* a, const D* b, int64_t n, Op op) {
  using P = Pack<D, kVec>;
  const int64_t nvec = n / kVec;
  const int64_t step = int64_t(gridDim.x) * kBlock;
  for (int64_t i = int64_t(blockIdx.x) * kBlock + threadIdx.x; i < nvec; i += step) {
    const P pa = reinterpret_cast<const P*>(a)[i];
    P po;
    if constexpr (kIn == 1) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) po.v[j] = from_acc<D>(op(to_acc(pa.v[j])));
    } else {
      const P pb = reinterpret_cast<const P*>(b)[i];
#pragma unroll
      for (int j = 0; j < kVec; ++j) po.v[j] = from_acc<D>(op(to_acc(pa.v[j]), to_acc(pb.v[j])));
    }
    reinterpret_cast<P*>(out)[i] = po;
  }
  if constexpr (kVec > 1) {
    const int64_t tail = n - nvec * kVec;
    if (blockIdx.x == 0 && threadIdx.x < tail) {
      const int64_t i = nvec * kVec + threadIdx.x;
      if constexpr (kIn == 1) out[i] = from_acc<D>(op(to_acc(a[i])));
      else out[i] = from_acc<D>(op(to_acc(a[i]), to_acc(b[i])));
    }
  }
}

// b is null for a unary op.
template <int kIn, class Op, class D>
void launch_map(D* out, const D* a, const D* b, int64_t n, cudaStream_t stream, Op op) {
  constexpr int kBlock = 256;
  constexpr int kVec = kVec16<D>;
  if (n <= 0) return;
  if (aligned16(out) && aligned16(a) && (kIn == 1 || aligned16(b))) {
    map_kernel<kBlock, kVec, D, Op, kIn><<<grid_for(n / kVec, kBlock), kBlock, 0, stream>>>(out, a, b, n, op);
  } else {
    map_kernel<kBlock, 1, D, Op, kIn><<<grid_for(n, kBlock), kBlock, 0, stream>>>(out, a, b, n, op);
  }
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

// out[i] = op(a[oa], b[ob]) with the offsets of a BinaryIndex: broadcast and
// strided operands read in place. n < 2^31 (BinaryIndex::kMaxElements).
template <int kBlock, class D, class Op>
__global__ void __launch_bounds__(kBlock) strided_map_kernel(D* out, const D* a, const D* b, uint32_t n,
                                                               BinaryIndex index, Op op) {
  const uint32_t step = gridDim.x * kBlock;
  for (uint32_t i = blockIdx.x * kBlock + threadIdx.x; i < n; i += step) {
    int64_t oa = 0, ob = 0;
    index.offsets(i, oa, ob);
    out[i] = from_acc<D>(op(to_acc(a[oa]), to_acc(b[ob])));
  }
}

template <class Op, class D>
void launch_binary(D* out, const D* a, const D* b, int64_t n, const BinaryIndex* index, cudaStream_t stream, Op op) {
  // One dim walked with unit strides by both operands is the contiguous case.
  if (!index || (index->ndim == 1 && index->a[0] == 1 && index->b[0] == 1)) {
    launch_map<2>(out, a, b, n, stream, op);
    return;
  }
  if (n <= 0) return;
  MAMCLIP_CHECK(n < BinaryIndex::kMaxElements, value_error, "strided binary kernel: ", n,
                " elements exceed the 32-bit index (the caller copies operands past BinaryIndex::kMaxElements)");
  constexpr int kBlock = 256;
  strided_map_kernel<kBlock><<<grid_for(n, kBlock), kBlock, 0, stream>>>(out, a, b, static_cast<uint32_t>(n), *index,
                                                                          op);
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

// out[i] = op(x[ox]) with x's offsets from a BinaryIndex (its a side; the b
// side mirrors it and is dead code). n < 2^31.
template <int kBlock, class D, class Op>
__global__ void __launch_bounds__(kBlock) strided_unary_kernel(D* out, const D* x, uint32_t n, BinaryIndex index,
                                                                 Op op) {
  const uint32_t step = gridDim.x * kBlock;
  for (uint32_t i = blockIdx.x * kBlock + threadIdx.x; i < n; i += step) {
    int64_t ox = 0, unused = 0;
    index.offsets(i, ox, unused);
    out[i] = from_acc<D>(op(to_acc(x[ox])));
  }
}

template <class Op, class D>
void launch_unary(D* out, const D* x, int64_t n, const BinaryIndex* index, cudaStream_t stream, Op op) {
  if (!index || (index->ndim == 1 && index->a[0] == 1)) {
    launch_map<1>(out, x, static_cast<const D*>(nullptr), n, stream, op);
    return;
  }
  if (n <= 0) return;
  MAMCLIP_CHECK(n < BinaryIndex::kMaxElements, value_error, "strided unary kernel: ", n,
                " elements exceed the 32-bit index (the caller copies the input past BinaryIndex::kMaxElements)");
  constexpr int kBlock = 256;
  strided_unary_kernel<kBlock><<<grid_for(n, kBlock), kBlock, 0, stream>>>(out, x, static_cast<uint32_t>(n), *index,
                                                                            op);
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

namespace kernels {
template <class T, class Op>
void unary(T* out, const T* x, int64_t n, const BinaryIndex* index, double p0, double p1) {
  Op op;
  op.p0 = p0;
  op.p1 = p1;
  launch_unary(device_ptr(out), device_ptr(x), n, index, current_stream(), op);
}

template <class T, class Op>
void binary(T* out, const T* a, const T* b, int64_t n, const BinaryIndex* index, double p0, double p1) {
  Op op;
  op.p0 = p0;
  op.p1 = p1;
  launch_binary(device_ptr(out), device_ptr(a), device_ptr(b), n, index, current_stream(), op);
}

// Gradient accumulation (AddKernel): out = a + b.
template <class T>
void add(T* out, const T* a, const T* b, int64_t n) {
  launch_map<2>(device_ptr(out), device_ptr(a), device_ptr(b), n, current_stream(), AddOp{});
}
}  // namespace kernels

// ---- where: out[i] = cond[i] ? a[i] : b[i] (bits copied, NaN and -0 kept)

template <class D>
__global__ void where_kernel(D* out, const bool* cond, const D* a, const D* b, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = cond[i] ? a[i] : b[i];
}

// The same through two BinaryIndexes: (cond, a) and (b, b). n < 2^31.
template <class D>
__global__ void strided_where_kernel(D* out, const bool* cond, const D* a, const D* b, uint32_t n, BinaryIndex cond_a,
                                     BinaryIndex b_only) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    int64_t oc = 0, oa = 0, ob = 0, unused = 0;
    cond_a.offsets(i, oc, oa);
    b_only.offsets(i, ob, unused);
    out[i] = cond[oc] ? a[oa] : b[ob];
  }
}

namespace kernels {
template <class T>
void where(T* out, const bool* cond, const T* a, const T* b, int64_t n, const BinaryIndex* cond_a,
           const BinaryIndex* b_only) {
  constexpr int kBlock = 256;
  if (n <= 0) return;
  if (cond_a && b_only) {
    MAMCLIP_CHECK(n < BinaryIndex::kMaxElements, value_error, "strided where kernel: ", n,
                  " elements exceed the 32-bit index (the caller copies operands past BinaryIndex::kMaxElements)");
    strided_where_kernel<<<grid_for(n, kBlock), kBlock, 0, current_stream()>>>(
        device_ptr(out), cond, device_ptr(a), device_ptr(b), static_cast<uint32_t>(n), *cond_a, *b_only);
  } else {
    where_kernel<<<grid_for(n, kBlock), kBlock, 0, current_stream()>>>(device_ptr(out), cond, device_ptr(a),
                                                                       device_ptr(b), n);
  }
  MAMCLIP_CUDA_CHECK_LAUNCH();
}
}  // namespace kernels

// ---- dropout's mask: Philox blocks of 4 elements, the CPU's numbers exactly

// out[i] = (uniform(seed, offset, i) > keep) ? 0 : kept, one Philox block (4
// elements) per thread and step.
template <class D>
__global__ void bernoulli_mask_kernel(uint64_t seed, uint64_t offset, int64_t n, double keep, D kept, D zero, D* out) {
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; b < blocks; b += int64_t(gridDim.x) * blockDim.x) {
    uint32_t r[4];
    Philox::block(seed, offset, static_cast<uint64_t>(b), r);
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (b * 4 + j < n) out[b * 4 + j] = Philox::to_unit(r[j]) > keep ? zero : kept;
  }
}

namespace kernels {
template <class T>
void bernoulli_mask(uint64_t seed, uint64_t offset, int64_t n, double keep, double kept, T* out) {
  using D = device_t<T>;
  constexpr int kBlock = 256;
  if (n <= 0) return;
  const T kept_t = static_cast<T>(kept), zero_t = static_cast<T>(0.0);
  D kept_d, zero_d;
  std::memcpy(&kept_d, &kept_t, sizeof(D));  // the host's rounding of `kept`, as the CPU mask stores it
  std::memcpy(&zero_d, &zero_t, sizeof(D));
  bernoulli_mask_kernel<<<grid_for((n + 3) / 4, kBlock), kBlock, 0, current_stream()>>>(seed, offset, n, keep, kept_d,
                                                                                         zero_d, device_ptr(out));
  MAMCLIP_CUDA_CHECK_LAUNCH();
}
}  // namespace kernels

// ---- registration

template <class T>
void register_elementwise_kernels_for() {
  auto& r = KernelRegistry::get();
  const DType dt = dtype_v<T>;
  constexpr DeviceType cu = DeviceType::cuda;
  auto unary = [&](const char* name, UnaryKernel<T>* fn) { r.add<UnaryKernel<T>>(name, dt, cu, fn); };
  auto binary = [&](const char* name, BinaryKernel<T>* fn) { r.add<BinaryKernel<T>>(name, dt, cu, fn); };
  unary("add_scalar", &kernels::unary<T, AddScalarOp>);
  unary("mul_scalar", &kernels::unary<T, MulScalarOp>);
  unary("rsub_scalar", &kernels::unary<T, RsubScalarOp>);
  unary("rdiv_scalar", &kernels::unary<T, RdivScalarOp>);
  unary("pow_scalar", &kernels::unary<T, PowScalarOp>);
  unary("neg", &kernels::unary<T, NegOp>);
  unary("exp", &kernels::unary<T, ExpOp>);
  unary("log", &kernels::unary<T, LogOp>);
  unary("sqrt", &kernels::unary<T, SqrtOp>);
  unary("rsqrt", &kernels::unary<T, RsqrtOp>);
  unary("abs", &kernels::unary<T, AbsOp>);
  unary("tanh", &kernels::unary<T, TanhOp>);
  unary("sigmoid", &kernels::unary<T, SigmoidOp>);
  unary("relu", &kernels::unary<T, ReluOp>);
  unary("clamp", &kernels::unary<T, ClampOp>);
  unary("gelu", &kernels::unary<T, GeluOp<false>>);
  unary("gelu_tanh", &kernels::unary<T, GeluOp<true>>);

  binary("add", &kernels::binary<T, AddOp>);
  binary("sub", &kernels::binary<T, SubOp>);
  binary("mul", &kernels::binary<T, MulOp>);
  binary("drop_path", &kernels::binary<T, MulOp>);
  binary("div", &kernels::binary<T, DivOp>);
  binary("pow", &kernels::binary<T, PowOp>);
  binary("pow_exponent_grad", &kernels::binary<T, PowExponentGradOp>);
  binary("abs_backward", &kernels::binary<T, AbsBackwardOp>);
  binary("tanh_backward", &kernels::binary<T, TanhBackwardOp>);
  binary("sigmoid_backward", &kernels::binary<T, SigmoidBackwardOp>);
  binary("relu_backward", &kernels::binary<T, ReluBackwardOp>);
  binary("clamp_backward", &kernels::binary<T, ClampBackwardOp>);
  binary("gelu_backward", &kernels::binary<T, GeluBackwardOp<false>>);
  binary("gelu_tanh_backward", &kernels::binary<T, GeluBackwardOp<true>>);

  r.add<AddKernel<T>>("add_contiguous", dt, cu, &kernels::add<T>);
  r.add<WhereKernel<T>>("where", dt, cu, &kernels::where<T>);
  r.add<BernoulliMaskKernel<T>>("dropout", dt, cu, &kernels::bernoulli_mask<T>);
}

inline void register_elementwise_kernels() {
  register_elementwise_kernels_for<float>();
  register_elementwise_kernels_for<double>();
  register_elementwise_kernels_for<half>();
  register_elementwise_kernels_for<bfloat16>();
}

}  // namespace mamclip::cuda
