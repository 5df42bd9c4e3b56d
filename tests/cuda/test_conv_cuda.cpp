// conv2d (ops/conv/cuda.cuh) and layer_norm2d (ops/norm/cuda.cuh) on CUDA
// against the CPU reference in double, forward and every gradient, and a
// whole ConvNeXt-T forward + backward on CUDA against the CPU model.
//
// Without a GPU: the kernels are registered for float, double, half and
// bfloat16, the path switch reads back, and the channels-last kernels' vector
// loads and stores (NhwcIo) convert as Eigen does. With a GPU (cases tagged [gpu];
// without one each prints "skipped: no CUDA device"): the depthwise kernels
// at ConvNeXt's four stage shapes (at MAM-CLIP's 1024 x 768 input) and at
// awkward ones (odd H and W, C not a multiple of 8, kernels 3, 5, 7), each
// also through the im2col path and cuDNN (when the backend has it); the
// patchify, downsampling, strided, dilated, grouped and 1 x 1 convolutions
// through every path; float and bfloat16 (and double for the general convs);
// the channels-last depthwise kernels (float, bfloat16, half) on aligned,
// scalar-channel and misaligned storage, and their fallback.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <string>

#ifdef MAMCLIP_WITH_CUDNN
#include <cudnn.h>
#endif

#include "cuda/gpu_support.hpp"
#include "mamclip/core/cuda/settings.hpp"
#include "mamclip/models/convnext.hpp"
#include "mamclip/ops/conv/nhwc_io.cuh"
#include "support/test_support.hpp"

using namespace mamclip;
using namespace mamclip::test;

namespace {

double max_abs(const Tensor<double>& a) { return a.numel() ? amax(abs(a)).item() : 0.0; }

struct ConvCase {
  std::string name;
  Shape x, w;  // [N, C_in, H, W], [C_out, C_in / groups, kH, kW]
  Conv2dOptions o;
};

// A GPU result against the CPU's in double. Tolerance: relative to the
// result's largest entry, scaled by the terms one output sums.
template <class T>
void compare_to_cpu(const Tensor<T>& got, const Tensor<double>& want, int64_t terms, const char* what) {
  const double tol = order_tolerance<T>(terms, 8, 2) * std::max(1.0, max_abs(want));
  require_allclose(got.to(kCPU).template to<double>(), want, tol, 0.0, what);
}

// Every output and gradient of conv2d on the GPU in T against the CPU in double from the same rounded inputs.
template <class T>
void check_conv(const ConvCase& c) {
  const cuda::ConvPath path = cuda::conv_path();
  INFO(c.name << " " << dtype_name(dtype_v<T>) << " path "
              << (path == cuda::ConvPath::im2col ? "im2col" : path == cuda::ConvPath::cudnn ? "cudnn" : "automatic"));
  const Tensor<T> x = rnd<T>(c.x, 1), w = rnd<T>(c.w, 2, -0.5, 0.5), b = rnd<T>({c.w[0]}, 3);
  const auto xr = x.template to<double>().set_requires_grad(), wr = w.template to<double>().set_requires_grad(),
             br = b.template to<double>().set_requires_grad();
  const auto yr = conv2d(xr, wr, br, c.o);
  const Tensor<T> g = rnd<T>(yr.shape(), 4);
  yr.backward(g.template to<double>());
  auto xg = x.to(kGPU).set_requires_grad(), wg = w.to(kGPU).set_requires_grad(), bg = b.to(kGPU).set_requires_grad();
  const auto yg = conv2d(xg, wg, bg, c.o);
  REQUIRE(yg.device() == kGPU);
  yg.backward(g.to(kGPU));
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const int64_t taps = c.w[1] * c.w[2] * c.w[3], outputs_per_weight = yr.numel() / yr.size(1);
  compare_to_cpu<T>(yg.detach(), yr.detach(), taps, "y");
  compare_to_cpu<T>(xg.grad(), xr.grad(), c.w[0] / c.o.groups * c.w[2] * c.w[3], "dx");
  compare_to_cpu<T>(wg.grad(), wr.grad(), outputs_per_weight, "dw");
  compare_to_cpu<T>(bg.grad(), br.grad(), outputs_per_weight, "db");
}

// Every path the backend has: automatic, im2col + cuBLAS, and cuDNN when built with it.
template <class T>
void check_both_paths(const ConvCase& c) {
  cuda::set_conv_path(cuda::ConvPath::automatic);
  check_conv<T>(c);
  cuda::set_conv_path(cuda::ConvPath::im2col);
  check_conv<T>(c);
#ifdef MAMCLIP_WITH_CUDNN
  cuda::set_conv_path(cuda::ConvPath::cudnn);
  check_conv<T>(c);
#endif
  cuda::set_conv_path(cuda::ConvPath::automatic);
}

Conv2dOptions same(int64_t k, int64_t channels) {
  Conv2dOptions o;
  o.padding = {k / 2, k / 2};
  o.groups = channels;
  return o;
}
Conv2dOptions strided(int64_t s, int64_t p = 0, int64_t d = 1, int64_t groups = 1) {
  Conv2dOptions o;
  o.stride = {s, s};
  o.padding = {p, p};
  o.dilation = {d, d};
  o.groups = groups;
  return o;
}

}  // namespace

TEST_CASE("the CUDA backend registers conv2d and layer_norm2d for the float dtypes; the conv path switch") {
  auto& r = KernelRegistry::get();
  for (DType d : {DType::f32, DType::f64, DType::f16, DType::bf16}) {
    INFO(dtype_name(d));
    for (const char* op : {"conv2d", "conv2d_backward", "layer_norm2d", "layer_norm2d_backward"})
      CHECK(r.find<void(void*)>(op, d, DeviceType::cuda) != nullptr);
    // Channels last: the 16- and 32-bit types (double keeps the NCHW kernels).
    for (const char* op : {"conv2d_nhwc", "conv2d_nhwc_backward"})
      CHECK((r.find<void(void*)>(op, d, DeviceType::cuda) != nullptr) == (d != DType::f64));
  }
  CHECK(cuda::conv_path() == cuda::ConvPath::automatic);
  cuda::set_conv_path(cuda::ConvPath::im2col);
  CHECK(cuda::conv_path() == cuda::ConvPath::im2col);
  cuda::set_conv_path(cuda::ConvPath::cudnn);
  CHECK(cuda::conv_path() == cuda::ConvPath::cudnn);
  cuda::set_conv_path(cuda::ConvPath::automatic);
#ifdef MAMCLIP_WITH_CUDNN
  std::printf("conv2d's general path on CUDA: cuDNN %zu\n", cudnnGetVersion());
#else
  std::printf("conv2d's general path on CUDA: im2col + cuBLAS (built without cuDNN)\n");
#endif
}

namespace {

// NhwcIo's load<V> and store<V> of V elements of H (as its device type D) at an offset of V
// elements from a 16-byte boundary, as the launchers align them: every value as Eigen converts
// it, the neighbours untouched.
template <class H, int V>
void check_nhwc_io(uint64_t seed) {
  namespace ck = cuda::conv_kernels;
  using D = cuda::device_t<H>;
  constexpr int kCount = 3 * V;
  alignas(16) H host[kCount];
  for (int i = 0; i < kCount; ++i)  // non-zero, with low mantissa bits set
    host[i] = static_cast<H>(static_cast<float>(6 * Philox::uniform(seed, 0, static_cast<uint64_t>(i)) - 3 + 1e-3));
  alignas(16) D dev[kCount];
  std::memcpy(dev, host, sizeof dev);
  float loaded[V];
  ck::NhwcIo::load<V>(dev + V, loaded);
  for (int v = 0; v < V; ++v) {
    INFO("load<" << V << "> element " << v);
    CHECK(loaded[v] == static_cast<float>(host[V + v]));
  }
  float values[V];
  for (int v = 0; v < V; ++v)  // not representable in 16 bits: the store rounds (to nearest even, as Eigen)
    values[v] = static_cast<float>(0.7 * Philox::uniform(seed, 1, static_cast<uint64_t>(v)) + 0.1 + 1e-5 * v);
  ck::NhwcIo::store<V>(dev + V, values);
  H stored[kCount];
  std::memcpy(stored, dev, sizeof stored);
  for (int i = 0; i < kCount; ++i) {
    INFO("store<" << V << "> element " << i);
    const H want = i >= V && i < 2 * V ? static_cast<H>(values[i - V]) : host[i];
    CHECK(std::memcmp(&stored[i], &want, sizeof(H)) == 0);
  }
}

}  // namespace

TEST_CASE("the channels-last depthwise kernels' vector loads and stores convert as Eigen does (on the CPU)") {
  check_nhwc_io<float, 1>(31);
  check_nhwc_io<float, 4>(32);
  check_nhwc_io<f16, 1>(33);
  check_nhwc_io<f16, 2>(34);
  check_nhwc_io<f16, 8>(35);
  check_nhwc_io<bfloat16, 1>(36);
  check_nhwc_io<bfloat16, 2>(37);  // shift and mask of one 32-bit word
  check_nhwc_io<bfloat16, 8>(38);  // of a 16-byte vector
  // The pair's low half is the element at the lower address (little endian).
  float pair[2];
  cuda::conv_kernels::bf16_pair_to_float(0x40490000u | 0x3f80u, pair);  // bf16 1.0 at the lower address, 3.140625 above
  CHECK(pair[0] == 1.0f);
  CHECK(pair[1] == 3.140625f);
}

TEMPLATE_TEST_CASE("depthwise conv on CUDA at ConvNeXt's stage shapes and awkward ones, forward and gradients", "[gpu]",
                   float, bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  const RestoreCudaSettings restore_settings;  // the conv path, also after a failed REQUIRE
  using T = TestType;
  // MAM-CLIP's 1024 x 768 input: the four stages of ConvNeXt (batch 2 here; the benchmark runs 8).
  check_both_paths<T>({"stage 1", {2, 96, 256, 192}, {96, 1, 7, 7}, same(7, 96)});
  check_both_paths<T>({"stage 2", {2, 192, 128, 96}, {192, 1, 7, 7}, same(7, 192)});
  check_both_paths<T>({"stage 3", {2, 384, 64, 48}, {384, 1, 7, 7}, same(7, 384)});
  check_both_paths<T>({"stage 4", {2, 768, 32, 24}, {768, 1, 7, 7}, same(7, 768)});
  for (int64_t k : {3, 5, 7}) {
    check_both_paths<T>({"odd sizes k " + std::to_string(k), {3, 13, 37, 29}, {13, 1, k, k}, same(k, 13)});
    check_both_paths<T>({"smaller than the kernel k " + std::to_string(k), {1, 5, 2, 3}, {5, 1, k, k}, same(k, 5)});
    check_both_paths<T>({"wider than a tile k " + std::to_string(k), {1, 3, 65, 70}, {3, 1, k, k}, same(k, 3)});
  }
}

TEMPLATE_TEST_CASE("general conv on CUDA (cuDNN, im2col + cuBLAS): patchify, downsampling, strides, dilation, groups",
                   "[gpu]", float, double, bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  const RestoreCudaSettings restore_settings;  // the conv path, also after a failed REQUIRE
  using T = TestType;
  check_both_paths<T>({"stem 4x4 / 4", {2, 3, 64, 48}, {96, 3, 4, 4}, strided(4)});
  check_both_paths<T>({"downsample 2x2 / 2", {2, 96, 32, 24}, {192, 96, 2, 2}, strided(2)});
  check_both_paths<T>({"3x3 stride 2 pad 1, odd sizes", {3, 5, 17, 11}, {7, 5, 3, 3}, strided(2, 1)});
  check_both_paths<T>({"dilated 3x3", {2, 4, 19, 13}, {6, 4, 3, 3}, strided(1, 2, 2)});
  check_both_paths<T>({"groups 2", {2, 6, 15, 9}, {8, 3, 3, 3}, strided(1, 1, 1, 2)});
  check_both_paths<T>({"1x1", {2, 24, 7, 5}, {40, 24, 1, 1}, strided(1)});
  check_both_paths<T>({"depthwise stride 2 (not the fast path)", {2, 8, 15, 14}, {8, 1, 7, 7}, strided(2, 3, 1, 8)});
}

namespace {

// How the channels-last case builds its GPU input and gradient.
enum class InputStorage { aligned, offset_by_one };

// x stored [N, H, W, C] on the GPU (a leaf), seen as [N, C, H, W]; with
// offset_by_one its storage starts one element into a buffer, so no 16-byte
// loads are possible.
template <class T>
Tensor<T> gpu_channels_last_leaf(const Tensor<T>& x_nchw, InputStorage storage) {
  const Tensor<T> nhwc = x_nchw.permute({0, 2, 3, 1}).contiguous();
  if (storage == InputStorage::aligned) return nhwc.to(kGPU);
  Tensor<T> buffer = Tensor<T>::empty({nhwc.numel() + 1}, kGPU);
  Tensor<T> inner = buffer.narrow(0, 1, nhwc.numel()).view(nhwc.shape());
  inner.copy_(nhwc.to(kGPU));
  return inner;
}

// conv2d on a channels-last GPU input (the "conv2d_nhwc" kernels) against
// the CPU in double: the output keeps the layout, every gradient matches.
// gy_channels_last: the incoming gradient already channels-last (else NCHW,
// which the backward re-lays). switch_path_before_backward: the backward
// runs with ConvPath::im2col, so the NHWC backward declines and the NCHW
// kernels run on copies.
template <class T>
void check_channels_last(const ConvCase& c, InputStorage storage, bool gy_channels_last,
                         bool switch_path_before_backward = false) {
  INFO(c.name << " " << dtype_name(dtype_v<T>) << (storage == InputStorage::aligned ? " aligned" : " offset by one")
              << (gy_channels_last ? ", channels-last dy" : ", NCHW dy")
              << (switch_path_before_backward ? ", im2col backward" : ""));
  const Tensor<T> x = rnd<T>(c.x, 11), w = rnd<T>(c.w, 12, -0.5, 0.5), b = rnd<T>({c.w[0]}, 13);
  const auto xr = x.template to<double>().set_requires_grad(), wr = w.template to<double>().set_requires_grad(),
             br = b.template to<double>().set_requires_grad();
  const auto yr = conv2d(xr, wr, br, c.o);
  const Tensor<T> g = rnd<T>(yr.shape(), 14);
  yr.backward(g.template to<double>());

  Tensor<T> leaf = gpu_channels_last_leaf(x, storage).set_requires_grad();  // [N, H, W, C]
  auto wg = w.to(kGPU).set_requires_grad(), bg = b.to(kGPU).set_requires_grad();
  const Tensor<T> xg = leaf.permute({0, 3, 1, 2});
  const auto yg = conv2d(xg, wg, bg, c.o);
  REQUIRE(yg.device() == kGPU);
  REQUIRE(yg.shape() == yr.shape());
  CHECK(yg.stride(1) == 1);  // the output stays channels-last
  CHECK(yg.stride(3) == c.w[0]);
  if (switch_path_before_backward) cuda::set_conv_path(cuda::ConvPath::im2col);
  const Tensor<T> gg = gy_channels_last ? g.permute({0, 2, 3, 1}).contiguous().to(kGPU).permute({0, 3, 1, 2})
                                        : g.to(kGPU);
  yg.backward(gg);
  cuda::set_conv_path(cuda::ConvPath::automatic);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const int64_t outputs_per_weight = yr.numel() / yr.size(1);
  compare_to_cpu<T>(yg.detach(), yr.detach(), c.w[1] * c.w[2] * c.w[3], "y");
  compare_to_cpu<T>(leaf.grad().permute({0, 3, 1, 2}), xr.grad(), c.w[0] / c.o.groups * c.w[2] * c.w[3], "dx");
  compare_to_cpu<T>(wg.grad(), wr.grad(), outputs_per_weight, "dw");
  compare_to_cpu<T>(bg.grad(), br.grad(), outputs_per_weight, "db");
}

}  // namespace

TEMPLATE_TEST_CASE("depthwise conv on channels-last CUDA input: ConvNeXt's stages and awkward sizes, every gradient",
                   "[gpu]", float, bfloat16, f16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  const RestoreCudaSettings restore_settings;  // the conv path, also after a failed REQUIRE
  using T = TestType;
  REQUIRE(KernelRegistry::get().find<void(void*)>("conv2d_nhwc", dtype_v<T>, DeviceType::cuda) != nullptr);
  check_channels_last<T>({"stage 1", {2, 96, 256, 192}, {96, 1, 7, 7}, same(7, 96)}, InputStorage::aligned, true);
  check_channels_last<T>({"stage 4", {2, 768, 32, 24}, {768, 1, 7, 7}, same(7, 768)}, InputStorage::aligned, false);
  for (int64_t k : {3, 5, 7}) {
    const std::string ks = " k " + std::to_string(k);
    // 16 channels: 2-channel forward threads, 16-byte weight-gradient vectors; 13: one channel
    // per thread; offset storage: one channel per forward thread (dx, into a fresh buffer, two),
    // no weight-gradient vectors.
    check_channels_last<T>({"odd sizes, 16 channels" + ks, {3, 16, 37, 29}, {16, 1, k, k}, same(k, 16)},
                           InputStorage::aligned, true);
    check_channels_last<T>({"odd sizes, 13 channels" + ks, {2, 13, 19, 23}, {13, 1, k, k}, same(k, 13)},
                           InputStorage::aligned, false);
    check_channels_last<T>({"misaligned" + ks, {2, 24, 9, 11}, {24, 1, k, k}, same(k, 24)}, InputStorage::offset_by_one,
                           true);
    check_channels_last<T>({"smaller than the kernel" + ks, {1, 8, 2, 3}, {8, 1, k, k}, same(k, 8)},
                           InputStorage::aligned, true);
  }
  check_channels_last<T>({"declined backward", {2, 16, 13, 10}, {16, 1, 7, 7}, same(7, 16)}, InputStorage::aligned, true,
                         true);
}

#ifdef MAMCLIP_WITH_CUDNN
TEMPLATE_TEST_CASE("general conv on channels-last CUDA input (cuDNN's NHWC convolutions): ConvNeXt's stem and "
                   "downsampling, strides, groups, every gradient",
                   "[gpu]", float, bfloat16, f16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  const RestoreCudaSettings restore_settings;  // the conv path, also after a failed REQUIRE
  using T = TestType;
  check_channels_last<T>({"stem 4x4 / 4", {2, 3, 64, 48}, {96, 3, 4, 4}, strided(4)}, InputStorage::aligned, true);
  check_channels_last<T>({"downsample 2x2 / 2", {2, 96, 32, 24}, {192, 96, 2, 2}, strided(2)}, InputStorage::aligned,
                         false);
  check_channels_last<T>({"3x3 stride 2 pad 1, odd sizes", {3, 5, 17, 11}, {7, 5, 3, 3}, strided(2, 1)},
                         InputStorage::aligned, true);
  check_channels_last<T>({"groups 2", {2, 6, 15, 9}, {8, 3, 3, 3}, strided(1, 1, 1, 2)}, InputStorage::aligned, true);
  check_channels_last<T>({"1x1", {2, 24, 7, 5}, {40, 24, 1, 1}, strided(1)}, InputStorage::aligned, false);
  check_channels_last<T>({"declined backward (im2col)", {2, 3, 16, 12}, {16, 3, 4, 4}, strided(4)}, InputStorage::aligned,
                         true, true);
  // ConvPath::cudnn sends the depthwise geometry to cuDNN's NHWC kernels too.
  cuda::set_conv_path(cuda::ConvPath::cudnn);
  check_channels_last<T>({"depthwise on cuDNN", {2, 16, 13, 10}, {16, 1, 7, 7}, same(7, 16)}, InputStorage::aligned, true);
  cuda::set_conv_path(cuda::ConvPath::automatic);
}
#endif

TEST_CASE("declined channels-last CUDA calls (the im2col path; cuDNN on a misaligned input) run the NCHW kernels on "
          "copies, with the same values",
          "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  const RestoreCudaSettings restore_settings;  // the conv path, also after a failed REQUIRE
  const Tensor<float> x = rnd<float>({2, 3, 16, 12}, 21), w = rnd<float>({8, 3, 4, 4}, 22), b = rnd<float>({8}, 23);
  const auto want = conv2d(x, w, b, strided(4)).to<double>();
  auto check = [&](const Tensor<float>& xg, const char* what) {
    INFO(what);
    const Tensor<float> got = conv2d(xg.permute({0, 3, 1, 2}), w.to(kGPU), b.to(kGPU), strided(4));
    CHECK(got.is_contiguous());  // NCHW out
    require_allclose(got.to(kCPU).to<double>(), want, 1e-5 * std::max(1.0, max_abs(want)), 0.0, "y");
  };
  cuda::set_conv_path(cuda::ConvPath::im2col);
  check(gpu_channels_last_leaf(x, InputStorage::aligned), "im2col path");
  cuda::set_conv_path(cuda::ConvPath::automatic);
#ifdef MAMCLIP_WITH_CUDNN
  check(gpu_channels_last_leaf(x, InputStorage::offset_by_one), "cuDNN, input one element into its buffer");
#endif
}

#ifndef MAMCLIP_WITH_CUDNN
TEST_CASE("ConvPath::cudnn in a backend without cuDNN is a device_error naming the switch", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  const RestoreCudaSettings restore_settings;  // the conv path, also after a failed REQUIRE
  const auto x = rnd<float>({1, 2, 5, 5}, 1).to(kGPU), w = rnd<float>({3, 2, 3, 3}, 2).to(kGPU);
  cuda::set_conv_path(cuda::ConvPath::cudnn);
  CHECK_THROWS_AS(conv2d(x, w, Tensor<float>(), Conv2dOptions{}), device_error);
  cuda::set_conv_path(cuda::ConvPath::automatic);
}
#endif

TEMPLATE_TEST_CASE("layer_norm2d on CUDA equals the CPU in both layouts, forward and all three gradients", "[gpu]",
                   float, bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  const RestoreCudaSettings restore_settings;  // the conv path, also after a failed REQUIRE
  using T = TestType;
  for (const Shape& s : {Shape{2, 96, 33, 17}, Shape{1, 3, 5, 7}, Shape{2, 768, 4, 3}})
  for (const bool channels_last : {false, true}) {
    INFO(shape_str(s) << (channels_last ? " channels last" : " NCHW"));
    const Tensor<T> x = rnd<T>(s, 1), w = rnd<T>({s[1]}, 2), b = rnd<T>({s[1]}, 3), g = rnd<T>(s, 4);
    auto xr = x.template to<double>().set_requires_grad(), wr = w.template to<double>().set_requires_grad(),
         br = b.template to<double>().set_requires_grad();
    auto yr = layer_norm2d(xr, wr, br, 1e-6);
    yr.backward(g.template to<double>());
    auto xg = x.to(kGPU).set_requires_grad(), wg = w.to(kGPU).set_requires_grad(), bg = b.to(kGPU).set_requires_grad();
    auto yg = layer_norm2d(channels_last ? contiguous_channels_last(xg) : xg, wg, bg, 1e-6);
    CHECK(is_channels_last(yg) == channels_last);
    yg.backward(g.to(kGPU));
    const double tol = order_tolerance<T>(s[1], 16, 2);
    auto back = [](const Tensor<T>& t) { return t.to(kCPU).template to<double>(); };
    require_allclose(back(yg.detach()), yr.detach(), tol * std::max(1.0, max_abs(yr)), 0.0, "y");
    require_allclose(back(xg.grad()), xr.grad(), tol * std::max(1.0, max_abs(xr.grad())), 0.0, "dx");
    const int64_t positions = s[0] * s[2] * s[3];
    const double ptol = order_tolerance<T>(positions, 16, 2);
    require_allclose(back(wg.grad()), wr.grad(), ptol * std::max(1.0, max_abs(wr.grad())), 0.0, "dw");
    require_allclose(back(bg.grad()), br.grad(), ptol * std::max(1.0, max_abs(br.grad())), 0.0, "db");
  }
}

TEST_CASE("ConvNeXt-T forward and backward on CUDA match the CPU model on the same weights and input", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  const RestoreCudaSettings restore_settings;  // the conv path, also after a failed REQUIRE
  using models::ConvNeXt;
  const models::ConvNeXtConfig c = models::ConvNeXtConfig::convnext_tiny(5);
  Generator g1(7), g2(7);
  ConvNeXt cpu_model(c, g1), gpu_model(c, g2);
  gpu_model.to(kGPU);
  cpu_model.eval();
  gpu_model.eval();
  const Tensor<float> x = rnd<float>({2, 3, 96, 64}, 1), r = rnd<float>({2, 5}, 2);
  const Tensor<float> yc = cpu_model(x), yg = gpu_model(x.to(kGPU));
  {  // the GPU tower runs channels last from the stem on (cuDNN's NHWC patchify convs, LayerNorm2d in place)
    NoGradGuard no_grad;
    CHECK(is_channels_last(gpu_model.forward_features(x.to(kGPU))));
#ifdef MAMCLIP_WITH_CUDNN
    CHECK(is_channels_last(gpu_model.stem->forward(contiguous_channels_last(x.to(kGPU)))));
#endif
  }
  sum(yc * r).backward();
  sum(yg * r.to(kGPU)).backward();
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const auto ycd = yc.detach().to<double>();
  require_allclose(yg.detach().to(kCPU).to<double>(), ycd, 1e-4 * std::max(1.0, max_abs(ycd)), 0.0, "logits");
  const auto pc = cpu_model.named_parameters(), pg = gpu_model.named_parameters();
  REQUIRE(pc.size() == pg.size());
  for (size_t i = 0; i < pc.size(); ++i) {
    INFO(pc[i].first);
    REQUIRE(pg[i].second.grad().defined());
    const auto want = pc[i].second.grad().to<double>();
    require_allclose(pg[i].second.grad().to(kCPU).to<double>(), want, 2e-3 * std::max(1e-6, max_abs(want)), 0.0,
                     "grad");
  }
}

TEST_CASE("a ConvNeXt block on CUDA hands the next one channels-last activations, with the CPU block's values", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  const RestoreCudaSettings restore_settings;  // the conv path, also after a failed REQUIRE
  Generator init(3);
  models::ConvNeXtBlock cpu_block(24, 96, 7, 0.5, 0.0, 1e-6), gpu_block(24, 96, 7, 0.5, 0.0, 1e-6);
  for (auto* m : {&cpu_block, &gpu_block})
    for (auto& [name, p] : m->named_parameters()) {
      NoGradGuard no_grad;
      p.copy_(rnd<float>(p.shape(), 40 + name.size(), -0.5, 0.5));
    }
  gpu_block.to(kGPU);
  const Tensor<float> x = rnd<float>({2, 24, 13, 11}, 41);
  Generator g1(5), g2(5);
  const Tensor<float> y1c = cpu_block.forward(x, g1), y2c = cpu_block.forward(y1c, g1);
  const Tensor<float> y1g = gpu_block.forward(x.to(kGPU), g2);  // NCHW in
  REQUIRE(y1g.stride(1) == 1);                                    // channels last out
  const Tensor<float> y2g = gpu_block.forward(y1g, g2);           // channels last through
  REQUIRE(y2g.stride(1) == 1);
  const auto want = y2c.to<double>();
  require_allclose(y2g.to(kCPU).to<double>(), want, 1e-4 * std::max(1.0, max_abs(want)), 0.0, "two blocks");
}
