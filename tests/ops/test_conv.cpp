// conv2d: both CPU algorithms (im2col + GEMM, direct depthwise) against a
// direct loop for every option, against each other on random inputs forward
// and backward, gradcheck in double on non-contiguous inputs at odd sizes,
// PyTorch fixtures, half / bfloat16, device dispatch and argument errors.
#include "support/test_support.hpp"

namespace test_conv {
using namespace mamclip;
using namespace mamclip::test;

namespace {

Tensor<double> rnd(const Shape& s, uint64_t seed, double lo = -1, double hi = 1) { return uniform_random<double>(s, seed, lo, hi); }

struct Case {
  const char* name;
  Shape x, w;
  Conv2dOptions o;
  bool bias = true;
};

Conv2dOptions opts(std::array<int64_t, 2> stride, std::array<int64_t, 2> padding, std::array<int64_t, 2> dilation = {1, 1},
                   int64_t groups = 1) {
  Conv2dOptions o;
  o.stride = stride;
  o.padding = padding;
  o.dilation = dilation;
  o.groups = groups;
  return o;
}

// The definition, one output element at a time, with explicit bounds tests.
Tensor<double> direct_conv2d(const Tensor<double>& x, const Tensor<double>& w, const Tensor<double>& b, const Conv2dOptions& o) {
  const int64_t n = x.size(0), ci = x.size(1), h = x.size(2), wd = x.size(3), co = w.size(0), cg = w.size(1);
  const int64_t kh = w.size(2), kw = w.size(3), og = co / o.groups;
  const int64_t oh = (h + 2 * o.padding[0] - o.dilation[0] * (kh - 1) - 1) / o.stride[0] + 1;
  const int64_t ow = (wd + 2 * o.padding[1] - o.dilation[1] * (kw - 1) - 1) / o.stride[1] + 1;
  (void)ci;
  Tensor<double> y = zeros<double>({n, co, oh, ow});
  for (int64_t s = 0; s < n; ++s)
    for (int64_t oc = 0; oc < co; ++oc)
      for (int64_t i = 0; i < oh; ++i)
        for (int64_t j = 0; j < ow; ++j) {
          double acc = b.defined() ? b(oc) : 0.0;
          for (int64_t c = 0; c < cg; ++c)
            for (int64_t ki = 0; ki < kh; ++ki)
              for (int64_t kj = 0; kj < kw; ++kj) {
                const int64_t r = i * o.stride[0] - o.padding[0] + ki * o.dilation[0];
                const int64_t q = j * o.stride[1] - o.padding[1] + kj * o.dilation[1];
                if (r < 0 || r >= h || q < 0 || q >= wd) continue;
                acc += w(oc, c, ki, kj) * x(s, (oc / og) * cg + c, r, q);
              }
          y(s, oc, i, j) = acc;
        }
  return y;
}

const std::vector<Case>& cases() {
  static const std::vector<Case> c = {
      {"3x3 stride 1 no padding", {2, 3, 7, 9}, {5, 3, 3, 3}, opts({1, 1}, {0, 0})},
      {"3x3 stride 2 padding 1", {2, 3, 9, 7}, {4, 3, 3, 3}, opts({2, 2}, {1, 1})},
      {"3x3 dilation 2 padding 2", {1, 4, 9, 11}, {3, 4, 3, 3}, opts({1, 1}, {2, 2}, {2, 2})},
      {"groups 2, 3x2 kernel, stride (2, 1), padding (1, 0)", {2, 6, 7, 5}, {4, 3, 3, 2}, opts({2, 1}, {1, 0}, {1, 1}, 2)},
      {"1x1 (input read as col), no bias", {2, 5, 3, 7}, {6, 5, 1, 1}, opts({1, 1}, {0, 0}), false},
      {"1x1 stride 2", {1, 5, 7, 6}, {3, 5, 1, 1}, opts({2, 2}, {0, 0})},
      {"stem 4x4 / 4", {1, 3, 13, 9}, {5, 3, 4, 4}, opts({4, 4}, {0, 0})},
      {"downsample 2x2 / 2", {2, 6, 7, 9}, {7, 6, 2, 2}, opts({2, 2}, {0, 0})},
      {"depthwise 7x7 pad 3", {2, 5, 9, 11}, {5, 1, 7, 7}, opts({1, 1}, {3, 3}, {1, 1}, 5)},
      {"depthwise 3x3 stride 2 pad 1", {2, 5, 9, 8}, {5, 1, 3, 3}, opts({2, 2}, {1, 1}, {1, 1}, 5)},
      {"depthwise 3x5 dilation 2 pad (2, 1), no bias", {1, 3, 8, 11}, {3, 1, 3, 5}, opts({1, 1}, {2, 1}, {2, 2}, 3), false},
      {"depthwise stride (1, 2) pad 0", {1, 3, 6, 9}, {3, 1, 2, 3}, opts({1, 2}, {0, 0}, {1, 1}, 3)},
      {"grouped with 2 outputs per group", {1, 4, 5, 6}, {8, 1, 3, 3}, opts({1, 1}, {1, 1}, {1, 1}, 4)},
      {"kernel as large as the padded input", {1, 2, 3, 4}, {3, 2, 5, 6}, opts({1, 1}, {1, 1})},
  };
  return c;
}

Conv2dGeometry geometry_of(const Case& c) {
  const Tensor<double> x = zeros<double>(c.x), w = zeros<double>(c.w);
  return detail::conv2d_geometry(x, w, Tensor<double>(), c.o);
}

template <class S>
Tensor<S> run_forward(const Tensor<S>& x, const Tensor<S>& w, const Tensor<S>& b, const Conv2dGeometry& g, ConvAlgorithm algo) {
  Tensor<S> y = empty<S>({g.batch, g.c_out, g.oh, g.ow});
  const Tensor<S> xc = x.contiguous(), wc = w.contiguous();
  cpu::conv2d_forward(g, xc.data_ptr(), wc.data_ptr(), b.defined() ? b.contiguous().data_ptr() : nullptr, y.data_ptr(), algo);
  return y;
}

}  // namespace

TEST_CASE("conv2d equals the direct loop for every option, on both algorithms and through the op") {
  uint64_t seed = 1;
  for (const Case& c : cases()) {
    INFO(c.name);
    const auto x = rnd(c.x, seed++), w = rnd(c.w, seed++);
    const auto b = c.bias ? rnd({c.w[0]}, seed++) : Tensor<double>();
    const auto ref = direct_conv2d(x, w, b, c.o);
    const Conv2dGeometry g = geometry_of(c);
    CHECK(ref.shape() == Shape{g.batch, g.c_out, g.oh, g.ow});
    require_allclose(run_forward(x, w, b, g, ConvAlgorithm::im2col), ref, 1e-12, 1e-12, "im2col");
    if (g.depthwise()) require_allclose(run_forward(x, w, b, g, ConvAlgorithm::depthwise), ref, 1e-12, 1e-12, "depthwise");
    // The op on non-contiguous input and weight.
    require_allclose(conv2d(noncontiguous(x), noncontiguous(w), b, c.o), ref, 1e-12, 1e-12, "op");
  }
}

TEST_CASE("conv2d gradcheck: x, weight and bias, non-contiguous, odd sizes, every option") {
  uint64_t seed = 100;
  for (const Case& c : cases()) {
    INFO(c.name);
    // Smaller batch for the finite differences: the gradients' sums over samples are still exercised by N = 2 cases.
    std::vector<Tensor<double>> in = {noncontiguous(rnd(c.x, seed++)), noncontiguous(rnd(c.w, seed++))};
    if (c.bias) in.push_back(rnd({c.w[0]}, seed++));
    const Conv2dOptions o = c.o;
    require_gradcheck([o](const std::vector<Tensor<double>>& v) {
      return conv2d(v[0], v[1], v.size() > 2 ? v[2] : Tensor<double>(), o);
    }, in);
  }
}

TEST_CASE("conv2d depthwise and im2col agree in float on larger random inputs, forward and every gradient") {
  struct Big {
    Shape x;
    std::array<int64_t, 2> k, stride, pad, dil;
  };
  const std::vector<Big> bigs = {
      {{2, 11, 23, 19}, {7, 7}, {1, 1}, {3, 3}, {1, 1}},   // ConvNeXt's block conv at an odd size
      {{1, 13, 14, 14}, {7, 7}, {1, 1}, {3, 3}, {1, 1}},   // a ConvNeXt stage-3 plane
      {{2, 9, 17, 21}, {5, 3}, {2, 2}, {2, 1}, {1, 1}},
      {{1, 7, 19, 18}, {3, 3}, {1, 1}, {2, 2}, {2, 2}},
      {{1, 5, 70, 9}, {7, 7}, {1, 1}, {3, 3}, {1, 1}},     // a flat length past several register blocks
  };
  uint64_t seed = 300;
  for (const Big& t : bigs) {
    const int64_t c = t.x[1];
    INFO("x " << shape_str(t.x) << " kernel " << t.k[0] << "x" << t.k[1] << " stride " << t.stride[0]);
    const Tensor<float> x = uniform_random<float>(t.x, seed++, -1, 1);
    const Tensor<float> w = uniform_random<float>({c, 1, t.k[0], t.k[1]}, seed++, -1, 1);
    const Tensor<float> b = uniform_random<float>({c}, seed++, -1, 1);
    const Conv2dGeometry g = detail::conv2d_geometry(x, w, b, opts(t.stride, t.pad, t.dil, c));
    REQUIRE(g.depthwise());
    const Tensor<float> yd = run_forward(x, w, b, g, ConvAlgorithm::depthwise);
    const Tensor<float> yi = run_forward(x, w, b, g, ConvAlgorithm::im2col);
    require_allclose(yd, yi, 1e-5, 1e-5, "forward");
    const Tensor<float> gy = uniform_random<float>(yd.shape(), seed++, -1, 1);
    Tensor<float> dx[2] = {empty<float>(x.shape()), empty<float>(x.shape())};
    Tensor<float> dw[2] = {empty<float>(w.shape()), empty<float>(w.shape())};
    Tensor<float> db[2] = {empty<float>({c}), empty<float>({c})};
    const ConvAlgorithm algos[2] = {ConvAlgorithm::depthwise, ConvAlgorithm::im2col};
    for (int a = 0; a < 2; ++a)
      cpu::conv2d_backward(g, x.data_ptr(), w.data_ptr(), gy.data_ptr(), dx[a].data_ptr(), dw[a].data_ptr(), db[a].data_ptr(),
                           algos[a]);
    require_allclose(dx[0], dx[1], 1e-5, 1e-5, "dx");
    require_allclose(dw[0], dw[1], 1e-4, 1e-5, "dw");
    require_allclose(db[0], db[1], 1e-4, 1e-5, "db");
    // Only the weight gradient, only the input gradient: the same values.
    Tensor<float> dw_only = empty<float>(w.shape()), dx_only = empty<float>(x.shape());
    cpu::conv2d_backward<float>(g, x.data_ptr(), nullptr, gy.data_ptr(), nullptr, dw_only.data_ptr(),
                         nullptr);
    cpu::conv2d_backward<float>(g, nullptr, w.data_ptr(), gy.data_ptr(), dx_only.data_ptr(), nullptr,
                         nullptr);
    CHECK(dw_only.to_vector() == dw[0].to_vector());
    CHECK(dx_only.to_vector() == dx[0].to_vector());
  }
}

TEST_CASE("conv2d backward computes only what is needed and keeps an undefined bias undefined") {
  const auto x = rnd({1, 4, 6, 5}, 7), w = rnd({2, 2, 3, 3}, 8);
  Tensor<double> xl = x.detach().set_requires_grad(), wl = w.detach();
  sum(conv2d(xl, wl, Tensor<double>(), opts({1, 1}, {1, 1}, {1, 1}, 2))).backward();
  REQUIRE(xl.grad().defined());
  CHECK_FALSE(wl.grad().defined());
  CHECK(xl.grad().shape() == x.shape());
  // Nothing requires grad: no graph.
  CHECK_FALSE(conv2d(x, w, Tensor<double>(), opts({1, 1}, {1, 1}, {1, 1}, 2)).requires_grad());
}

TEST_CASE("conv2d in half and bfloat16 computes in float") {
  const Tensor<float> x = uniform_random<float>({1, 6, 9, 10}, 11, -1, 1), w = uniform_random<float>({6, 1, 7, 7}, 12, -1, 1);
  const Tensor<float> b = uniform_random<float>({6}, 13, -1, 1);
  const Conv2dOptions o = opts({1, 1}, {3, 3}, {1, 1}, 6);
  const Tensor<float> ref = conv2d(x.to<half>().to<float>(), w.to<half>().to<float>(), b.to<half>().to<float>(), o);
  require_allclose(conv2d(x.to<half>(), w.to<half>(), b.to<half>(), o).to<float>(), ref, 2e-2, 2e-3, "half");
  const Tensor<float> refb = conv2d(x.to<bfloat16>().to<float>(), w.to<bfloat16>().to<float>(), b.to<bfloat16>().to<float>(), o);
  require_allclose(conv2d(x.to<bfloat16>(), w.to<bfloat16>(), b.to<bfloat16>(), o).to<float>(), refb, 1e-1, 1e-2, "bfloat16");
  // Gradients flow back through the casts to the half leaves.
  Tensor<half> xh = x.to<half>().detach().set_requires_grad();
  sum(conv2d(xh, w.to<half>(), Tensor<half>(), o)).backward();
  REQUIRE(xh.grad().defined());
  CHECK(xh.grad().shape() == x.shape());
}

TEST_CASE("conv2d errors name the argument, the shapes and what was expected") {
  const auto x = rnd({2, 6, 5, 5}, 1), w = rnd({4, 3, 3, 3}, 2);
  MAMCLIP_REQUIRE_THROWS_WITH(conv2d(rnd({6, 5, 5}, 1), w), shape_error,
                              "conv2d: input has shape [6, 5, 5]; expected 4 dims [N, C_in, H, W]");
  MAMCLIP_REQUIRE_THROWS_WITH(conv2d(x, rnd({4, 3, 3}, 2)), shape_error,
                              "conv2d: weight has shape [4, 3, 3]; expected 4 dims [C_out, C_in / groups, kH, kW]");
  MAMCLIP_REQUIRE_THROWS_WITH(conv2d(x, w, Tensor<double>(), opts({1, 1}, {0, 0}, {1, 1}, 4)), shape_error,
                              "conv2d: input has 6 channels (shape [2, 6, 5, 5]) and groups = 4; expected C_in divisible by groups");
  MAMCLIP_REQUIRE_THROWS_WITH(conv2d(x, rnd({5, 3, 3, 3}, 2), Tensor<double>(), opts({1, 1}, {0, 0}, {1, 1}, 2)), shape_error,
                              "conv2d: weight has shape [5, 3, 3, 3] with 5 output channels and groups = 2; expected C_out "
                              "divisible by groups");
  MAMCLIP_REQUIRE_THROWS_WITH(conv2d(x, w), shape_error,
                              "conv2d: weight has shape [4, 3, 3, 3] and input has shape [2, 6, 5, 5] with groups = 1; "
                              "expected weight.size(1) == C_in / groups = 6");
  MAMCLIP_REQUIRE_THROWS_WITH(conv2d(x, w, rnd({3}, 3), opts({1, 1}, {0, 0}, {1, 1}, 2)), shape_error,
                              "conv2d: bias has shape [3]; expected [C_out] = [4]");
  MAMCLIP_REQUIRE_THROWS_WITH(conv2d(x, rnd({4, 3, 7, 3}, 2), Tensor<double>(), opts({1, 1}, {0, 0}, {1, 1}, 2)), shape_error,
                              "conv2d: the kernel (7 x 3, dilated to 7 x 3) is larger than the padded input (5 x 5, input "
                              "shape [2, 6, 5, 5], padding [0, 0])");
  MAMCLIP_REQUIRE_THROWS_WITH(conv2d(x, w, Tensor<double>(), opts({1, 1}, {0, 0}, {3, 1}, 2)), shape_error,
                              "dilated to 7 x 3) is larger than the padded input (5 x 5");
  MAMCLIP_REQUIRE_THROWS_WITH(conv2d(x, w, Tensor<double>(), opts({0, 1}, {0, 0}, {1, 1}, 2)), value_error,
                              "conv2d: stride must be positive, got [0, 1]");
  MAMCLIP_REQUIRE_THROWS_WITH(conv2d(x, w, Tensor<double>(), opts({1, 1}, {-1, 0}, {1, 1}, 2)), value_error,
                              "conv2d: padding must be non-negative, got [-1, 0]");
  MAMCLIP_REQUIRE_THROWS_WITH(conv2d(x, w, Tensor<double>(), opts({1, 1}, {0, 0}, {1, 0}, 2)), value_error,
                              "conv2d: dilation must be positive, got [1, 0]");
  MAMCLIP_REQUIRE_THROWS_WITH(conv2d(x, w, Tensor<double>(), opts({1, 1}, {0, 0}, {1, 1}, 0)), value_error,
                              "conv2d: groups must be positive, got 0");
}

TEST_CASE("conv2d on another device: device_error without a kernel, the registered kernels with one") {
  if (!ensure_stand_in_cuda()) {
    WARN("a real CUDA backend is linked: the stand-in kernels are not installed (tests/cuda covers the device)");
    return;
  }
  const Tensor<float> x = uniform_random<float>({2, 4, 6, 7}, 21, -1, 1), w = uniform_random<float>({4, 1, 3, 3}, 22, -1, 1);
  const Tensor<float> b = uniform_random<float>({4}, 23, -1, 1);
  const Conv2dOptions o = opts({1, 1}, {1, 1}, {1, 1}, 4);
  const Device dev = Device::cuda(0);
  MAMCLIP_REQUIRE_THROWS_WITH(conv2d(x.to(dev), w.to(dev), b.to(dev), o), device_error,
                              "conv2d: no kernel is registered for float32 tensors on cuda:0");
  MAMCLIP_REQUIRE_THROWS_WITH(conv2d(x, w.to(dev), b, o), device_error,
                              "conv2d: expected all tensors on one device, but input is on cpu and weight is on cuda:0");
  // The stand-in device's memory is host memory: the CPU kernels serve as its kernels.
  KernelRegistry::get().add<Conv2dForwardKernel<float>>(
      "conv2d", DType::f32, DeviceType::cuda,
      +[](const Conv2dGeometry& g, const float* px, const float* pw, const float* pb, float* py) {
        cpu::conv2d_forward(g, px, pw, pb, py);
      });
  Tensor<float> xd = x.to(dev).detach().set_requires_grad();
  MAMCLIP_REQUIRE_THROWS_WITH(conv2d(xd, w.to(dev), b.to(dev), o), device_error,
                              "conv2d_backward: no kernel is registered for float32 tensors on cuda:0");
  KernelRegistry::get().add<Conv2dBackwardKernel<float>>(
      "conv2d_backward", DType::f32, DeviceType::cuda,
      +[](const Conv2dGeometry& g, const float* px, const float* pw, const float* gy, float* dx, float* dw, float* db) {
        cpu::conv2d_backward(g, px, pw, gy, dx, dw, db);
      });
  // The engine stores a leaf's gradient as a copy, made on the device.
  if (!KernelRegistry::get().find<StridedCopyKernel<float>>("strided_copy", DType::f32, DeviceType::cuda))
    KernelRegistry::get().add<StridedCopyKernel<float>>(
        "strided_copy", DType::f32, DeviceType::cuda, +[](float* dst, const float* src, const Shape& shape, const Shape& st) {
          detail::for_each_offset<1>(shape, {st}, [&](const std::array<int64_t, 1>& off) { *dst++ = src[off[0]]; });
        });
  Tensor<float> y = conv2d(xd, w.to(dev), b.to(dev), o);
  CHECK(y.device() == dev);
  require_allclose(y.to(kCPU), conv2d(x, w, b, o), 1e-6, 1e-6, "forward on the device");
  const Tensor<float> gy = uniform_random<float>(y.shape(), 24, -1, 1);
  y.backward(gy.to(dev));
  Tensor<float> xc = x.detach().set_requires_grad();
  conv2d(xc, w, b, o).backward(gy);
  require_allclose(xd.grad().to(kCPU), xc.grad(), 1e-6, 1e-6, "input gradient on the device");
}

TEST_CASE("conv2d matches PyTorch: ConvNeXt's stem, downsample and depthwise 7x7, and a grouped dilated case") {
  const auto doc = load_json(fixture_path("conv/conv2d.json"));
  REQUIRE(doc.at("cases").size() == 4);
  for (const auto& c : doc.at("cases")) {
    INFO(c.at("name").get<std::string>());
    const auto i2 = [&](const char* k) {
      const int64_t v = c.at(k).get<int64_t>();
      return std::array<int64_t, 2>{v, v};
    };
    const Conv2dOptions o = opts(i2("stride"), i2("padding"), i2("dilation"), c.at("groups").get<int64_t>());
    Tensor<float> x = tensor_from_json<float>(c.at("x")), w = tensor_from_json<float>(c.at("weight"));
    Tensor<float> b = tensor_from_json<float>(c.at("bias"));
    x.set_requires_grad();
    w.set_requires_grad();
    b.set_requires_grad();
    const Tensor<float> y = conv2d(x, w, b, o);
    require_allclose(y, tensor_from_json<float>(c.at("y")), 1e-6, 1e-5, "y");
    y.backward(tensor_from_json<float>(c.at("gy")));
    require_allclose(x.grad(), tensor_from_json<float>(c.at("grad_x")), 1e-5, 1e-5, "grad_x");
    require_allclose(w.grad(), tensor_from_json<float>(c.at("grad_weight")), 1e-5, 1e-5, "grad_weight");
    require_allclose(b.grad(), tensor_from_json<float>(c.at("grad_bias")), 1e-5, 1e-5, "grad_bias");
  }
}

}  // namespace test_conv
