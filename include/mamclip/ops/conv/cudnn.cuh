#pragma once
// conv2d through cuDNN 9 (its convolution API): forward, input gradient and
// weight gradient of any convolution (strides, padding, dilation, groups), in
// float, double, half and bfloat16. Used by ops/conv/cuda.cuh when the
// backend is built with cuDNN (MAMCLIP_WITH_CUDNN, cmake/cudnn.cmake).
//
//   layout     NCHW: x, y, w as conv.hpp stores them. NHWC: x, y [N, H, W, C]
//              and w [C_out, kH, kW, C_in / groups] (cuDNN's NHWC filter; the
//              caller transposes), the layout of cuDNN's channels-last
//              tensor-core kernels.
//
//   algorithm  cuDNN's heuristics (cudnnGet*Algorithm_v7) choose one per
//              convolution shape, dtype, device and TF32 setting, once: the
//              first that runs, fits the workspace limit and, for the two
//              gradients, is deterministic (no atomics: two runs give the
//              same bits, as everywhere in this backend) when cuDNN ranks
//              one; otherwise the best of the rest. Cached per shape.
//   workspace  from our caching allocator, per call (scratch()).
//   math       half / bfloat16 on tensor cores with float accumulation;
//              float with TF32 only when cuda::allow_tf32() is on (else FMA
//              math, cuDNN's default would use TF32 on sm_80+); double FMA.
// The bias (forward) and its gradient are the caller's kernels.

#include <cudnn.h>

#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/cuda/handle_pool.cuh"
#include "mamclip/core/cuda/settings.hpp"
#include "mamclip/core/cuda/tensor_data.cuh"
#include "mamclip/ops/conv/conv.hpp"

namespace mamclip::cuda {

namespace detail {
[[noreturn]] inline void throw_cudnn_error(cudnnStatus_t status, const char* call, const char* file, int line) {
  throw device_error(::mamclip::detail::str_cat(file, ":", line, ": ", call, " failed: ", cudnnGetErrorString(status)));
}
}  // namespace detail

#define MAMCLIP_CUDNN_CHECK(call)                                                                 \
  do {                                                                                           \
    const cudnnStatus_t mamclip_cudnn_status_ = (call);                                          \
    if (mamclip_cudnn_status_ != CUDNN_STATUS_SUCCESS)                                            \
      ::mamclip::cuda::detail::throw_cudnn_error(mamclip_cudnn_status_, #call, __FILE__, __LINE__); \
  } while (0)

// The calling thread's cuDNN handle for the current device, bound to `stream`.
inline cudnnHandle_t cudnn_handle(cudaStream_t stream) {
  cudnnHandle_t h = detail::thread_handle<cudnnHandle_t>("cudnn_handle", [] {
    cudnnHandle_t created = nullptr;
    MAMCLIP_CUDNN_CHECK(cudnnCreate(&created));
    return created;
  });
  MAMCLIP_CUDNN_CHECK(cudnnSetStream(h, stream));
  return h;
}

namespace cudnn_conv {

// The largest workspace an algorithm may ask for.
inline constexpr size_t kMaxWorkspace = size_t(1) << 30;

template <class T>
struct Types;
template <>
struct Types<float> {
  static constexpr cudnnDataType_t data = CUDNN_DATA_FLOAT, compute = CUDNN_DATA_FLOAT;
  using Scale = float;
};
template <>
struct Types<double> {
  static constexpr cudnnDataType_t data = CUDNN_DATA_DOUBLE, compute = CUDNN_DATA_DOUBLE;
  using Scale = double;
};
template <>
struct Types<half> {
  static constexpr cudnnDataType_t data = CUDNN_DATA_HALF, compute = CUDNN_DATA_FLOAT;
  using Scale = float;
};
template <>
struct Types<bfloat16> {
  static constexpr cudnnDataType_t data = CUDNN_DATA_BFLOAT16, compute = CUDNN_DATA_FLOAT;
  using Scale = float;
};

template <class T>
cudnnMathType_t math_type() {
  if constexpr (sizeof(T) == 2) return CUDNN_TENSOR_OP_MATH;
  else if constexpr (sizeof(T) == 4) return allow_tf32() ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
  else return CUDNN_DEFAULT_MATH;
}

inline int as_int(int64_t v, const char* what) {
  MAMCLIP_CHECK(v >= 0 && v <= INT32_MAX, value_error, "conv2d on cuDNN: ", what, " = ", v,
                " does not fit cuDNN's 32-bit descriptors");
  return static_cast<int>(v);
}

// The four descriptors of one convolution; destroyed with it.
enum class Layout { nchw, nhwc };

template <class T>
class Descriptors {
 public:
  Descriptors(const Conv2dGeometry& g, Layout layout) {
    try {
      set(g, layout);
    } catch (...) {  // a refused geometry (an NHWC call declines on it): no descriptor leaks
      release();
      throw;
    }
  }
  ~Descriptors() { release(); }
  Descriptors(const Descriptors&) = delete;
  Descriptors& operator=(const Descriptors&) = delete;

  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;

 private:
  void set(const Conv2dGeometry& g, Layout layout) {
    constexpr cudnnDataType_t dt = Types<T>::data;
    const cudnnTensorFormat_t format = layout == Layout::nhwc ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
    MAMCLIP_CUDNN_CHECK(cudnnCreateTensorDescriptor(&x));
    MAMCLIP_CUDNN_CHECK(cudnnCreateTensorDescriptor(&y));
    MAMCLIP_CUDNN_CHECK(cudnnCreateFilterDescriptor(&w));
    MAMCLIP_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv));
    MAMCLIP_CUDNN_CHECK(cudnnSetTensor4dDescriptor(x, format, dt, as_int(g.batch, "batch"),
                                                   as_int(g.c_in, "C_in"), as_int(g.h, "H"), as_int(g.w, "W")));
    MAMCLIP_CUDNN_CHECK(cudnnSetTensor4dDescriptor(y, format, dt, as_int(g.batch, "batch"),
                                                   as_int(g.c_out, "C_out"), as_int(g.oh, "OH"), as_int(g.ow, "OW")));
    MAMCLIP_CUDNN_CHECK(cudnnSetFilter4dDescriptor(w, dt, format, as_int(g.c_out, "C_out"),
                                                   as_int(g.cin_per_group(), "C_in / groups"), as_int(g.kh, "KH"),
                                                   as_int(g.kw, "KW")));
    MAMCLIP_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(
        conv, as_int(g.pad_h, "padding"), as_int(g.pad_w, "padding"), as_int(g.stride_h, "stride"),
        as_int(g.stride_w, "stride"), as_int(g.dil_h, "dilation"), as_int(g.dil_w, "dilation"),
        CUDNN_CROSS_CORRELATION, Types<T>::compute));
    MAMCLIP_CUDNN_CHECK(cudnnSetConvolutionGroupCount(conv, as_int(g.groups, "groups")));
    MAMCLIP_CUDNN_CHECK(cudnnSetConvolutionMathType(conv, math_type<T>()));
  }
  void release() {
    if (conv) cudnnDestroyConvolutionDescriptor(conv);
    if (w) cudnnDestroyFilterDescriptor(w);
    if (y) cudnnDestroyTensorDescriptor(y);
    if (x) cudnnDestroyTensorDescriptor(x);
    conv = nullptr, w = nullptr, y = nullptr, x = nullptr;
  }
};

// One algorithm per direction, with its math type and workspace bytes; a
// direction cuDNN has no suitable algorithm for is not `found`.
struct Plan {
  cudnnConvolutionFwdAlgo_t forward{};
  cudnnConvolutionBwdDataAlgo_t input_grad{};
  cudnnConvolutionBwdFilterAlgo_t weight_grad{};
  cudnnMathType_t forward_math{}, input_grad_math{}, weight_grad_math{};
  size_t forward_bytes = 0, input_grad_bytes = 0, weight_grad_bytes = 0;
  bool forward_found = false, input_grad_found = false, weight_grad_found = false;
};

// The first of cuDNN's ranked candidates that runs within the limit (and is
// deterministic when asked), keeping TF32 out when the descriptor asked for
// FMA math; null when none does.
template <class Perf>
const Perf* choose(const Perf* perf, int count, cudnnMathType_t requested, bool deterministic) {
  for (int i = 0; i < count; ++i) {
    const Perf& p = perf[i];
    if (p.status != CUDNN_STATUS_SUCCESS || p.memory > kMaxWorkspace) continue;
    if (deterministic && p.determinism != CUDNN_DETERMINISTIC) continue;
    if (requested == CUDNN_FMA_MATH && p.mathType != CUDNN_FMA_MATH) continue;
    return &p;
  }
  return nullptr;
}

// Backward: a deterministic algorithm when cuDNN ranks one (a resumed run repeats its
// gradients), else the best of the others rather than no cuDNN convolution at all.
template <class Perf>
const Perf* choose_backward(const Perf* perf, int count, cudnnMathType_t requested) {
  if (const Perf* p = choose(perf, count, requested, true)) return p;
  return choose(perf, count, requested, false);
}

// The error of a direction without an algorithm (an NCHW call has no other way to go).
[[noreturn]] inline void throw_no_algorithm(const char* what, const Conv2dGeometry& g) {
  throw device_error(::mamclip::detail::str_cat(
      "conv2d on cuDNN: no ", what, " algorithm within ", kMaxWorkspace >> 20,
      " MiB of workspace for x [", g.batch, ", ", g.c_in, ", ", g.h, ", ", g.w, "], weight [", g.c_out, ", ",
      g.cin_per_group(), ", ", g.kh, ", ", g.kw, "], stride ", g.stride_h, "x", g.stride_w, ", groups ", g.groups,
      " (cuda::set_conv_path(ConvPath::im2col) avoids cuDNN)"));
}

template <class T>
Plan make_plan(cudnnHandle_t handle, const Descriptors<T>& d) {
  constexpr int kMax = 16;
  const cudnnMathType_t math = math_type<T>();
  Plan plan;
  int got = 0;
  {
    cudnnConvolutionFwdAlgoPerf_t perf[kMax];
    MAMCLIP_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(handle, d.x, d.w, d.conv, d.y, kMax, &got, perf));
    if (const auto* p = choose(perf, got, math, false)) {
      plan.forward = p->algo;
      plan.forward_math = p->mathType;
      plan.forward_bytes = p->memory;
      plan.forward_found = true;
    }
  }
  {
    cudnnConvolutionBwdDataAlgoPerf_t perf[kMax];
    MAMCLIP_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(handle, d.w, d.y, d.conv, d.x, kMax, &got, perf));
    if (const auto* p = choose_backward(perf, got, math)) {
      plan.input_grad = p->algo;
      plan.input_grad_math = p->mathType;
      plan.input_grad_bytes = p->memory;
      plan.input_grad_found = true;
    }
  }
  {
    cudnnConvolutionBwdFilterAlgoPerf_t perf[kMax];
    MAMCLIP_CUDNN_CHECK(
        cudnnGetConvolutionBackwardFilterAlgorithm_v7(handle, d.x, d.y, d.conv, d.w, kMax, &got, perf));
    if (const auto* p = choose_backward(perf, got, math)) {
      plan.weight_grad = p->algo;
      plan.weight_grad_math = p->mathType;
      plan.weight_grad_bytes = p->memory;
      plan.weight_grad_found = true;
    }
  }
  return plan;
}

// The plan of a convolution shape and layout, made on first use.
template <class T>
Plan plan_for(cudnnHandle_t handle, const Descriptors<T>& d, const Conv2dGeometry& g, Layout layout) {
  using Key = std::array<int64_t, 20>;
  const Key key{g.batch,    g.c_in,     g.h,     g.w,     g.c_out, g.kh,     g.kw,
                g.oh,       g.ow,       g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dil_h,
                g.dil_w,    g.groups,   static_cast<int64_t>(dtype_v<T>), current_device(),
                static_cast<int64_t>(math_type<T>()), static_cast<int64_t>(layout)};
  static std::mutex mutex;
  static std::map<Key, Plan> plans;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (auto it = plans.find(key); it != plans.end()) return it->second;
  }
  const Plan plan = make_plan<T>(handle, d);
  std::lock_guard<std::mutex> lock(mutex);
  return plans.emplace(key, plan).first->second;
}

// One cuDNN call's handle, descriptors and plan, and its workspace.
template <class T>
struct Call {
  Call(const Conv2dGeometry& g, Layout layout, cudaStream_t stream)
      : handle(cudnn_handle(stream)), d(g, layout), plan(plan_for<T>(handle, d, g, layout)) {}
  // The workspace of a direction, with its math type set on the descriptor.
  Tensor<uint8_t> prepare(size_t bytes, cudnnMathType_t math) {
    MAMCLIP_CUDNN_CHECK(cudnnSetConvolutionMathType(d.conv, math));
    return scratch<uint8_t>(static_cast<int64_t>(bytes));
  }
  cudnnHandle_t handle;
  Descriptors<T> d;
  Plan plan;
  const typename Types<T>::Scale one = 1, zero = 0;
};

// The Call of a convolution. A geometry cuDNN's NHWC descriptors refuse
// (a status error while setting them up or asking for algorithms) is null:
// the NHWC caller then declines to the NCHW path; NCHW errors propagate.
template <class T>
std::unique_ptr<Call<T>> make_call(const Conv2dGeometry& g, Layout layout, cudaStream_t stream) {
  if (layout == Layout::nchw) return std::make_unique<Call<T>>(g, layout, stream);
  try {
    return std::make_unique<Call<T>>(g, layout, stream);
  } catch (const device_error&) {
    return nullptr;
  }
}

// y = conv(x, w); false (nothing run) when cuDNN has no algorithm for it.
template <class T>
bool try_forward(const Conv2dGeometry& g, Layout layout, const T* x, const T* w, T* y, cudaStream_t stream) {
  const std::unique_ptr<Call<T>> call = make_call<T>(g, layout, stream);
  if (!call) return false;
  Call<T>& c = *call;
  const Plan& p = c.plan;
  if (!p.forward_found) return false;
  Tensor<uint8_t> ws = c.prepare(p.forward_bytes, p.forward_math);
  MAMCLIP_CUDNN_CHECK(cudnnConvolutionForward(c.handle, &c.one, c.d.x, x, c.d.w, w, c.d.conv, p.forward, ws.data_ptr(),
                                              p.forward_bytes, &c.zero, c.d.y, y));
  return true;
}

// Both gradients of one convolution from one Call (one descriptor set, one
// plan lookup); dx or dw may be null when not wanted. False (nothing run)
// when cuDNN has no algorithm for a wanted one, named in *missing.
template <class T>
bool try_backward(const Conv2dGeometry& g, Layout layout, const T* x, const T* w, const T* gy, T* dx, T* dw,
                  cudaStream_t stream, const char** missing = nullptr) {
  if (!dx && !dw) return true;
  const std::unique_ptr<Call<T>> call = make_call<T>(g, layout, stream);
  if (!call) {
    if (missing) *missing = "NHWC descriptor";
    return false;
  }
  Call<T>& c = *call;
  const Plan& p = c.plan;
  const char* absent = dx && !p.input_grad_found ? "input-gradient" : dw && !p.weight_grad_found ? "weight-gradient"
                                                                                                  : nullptr;
  if (absent) {
    if (missing) *missing = absent;
    return false;
  }
  if (dx) {
    Tensor<uint8_t> ws = c.prepare(p.input_grad_bytes, p.input_grad_math);
    MAMCLIP_CUDNN_CHECK(cudnnConvolutionBackwardData(c.handle, &c.one, c.d.w, w, c.d.y, gy, c.d.conv, p.input_grad,
                                                     ws.data_ptr(), p.input_grad_bytes, &c.zero, c.d.x, dx));
  }
  if (dw) {
    Tensor<uint8_t> ws = c.prepare(p.weight_grad_bytes, p.weight_grad_math);
    MAMCLIP_CUDNN_CHECK(cudnnConvolutionBackwardFilter(c.handle, &c.one, c.d.x, x, c.d.y, gy, c.d.conv, p.weight_grad,
                                                       ws.data_ptr(), p.weight_grad_bytes, &c.zero, c.d.w, dw));
  }
  return true;
}

// The NCHW calls, which have no other way to go: an error naming the shape
// when cuDNN has no algorithm.
template <class T>
void forward(const Conv2dGeometry& g, const T* x, const T* w, T* y, cudaStream_t stream) {
  if (!try_forward<T>(g, Layout::nchw, x, w, y, stream)) throw_no_algorithm("forward", g);
}
template <class T>
void backward(const Conv2dGeometry& g, const T* x, const T* w, const T* gy, T* dx, T* dw, cudaStream_t stream) {
  const char* missing = nullptr;
  if (!try_backward<T>(g, Layout::nchw, x, w, gy, dx, dw, stream, &missing)) throw_no_algorithm(missing, g);
}

}  // namespace cudnn_conv

}  // namespace mamclip::cuda
