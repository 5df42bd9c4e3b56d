// dtype casts on CUDA (ops/shape/cuda.cuh) against the CPU's Tensor::to<U>():
// the same bits, and gradients through a cast.
//
// Without a GPU: every cast among float, double, half and bfloat16 is
// registered. With a GPU (cases tagged [gpu]; without one each prints
// "skipped: no CUDA device"): random values over a wide range, values that
// overflow half, NaN and infinities, compared bit for bit (a NaN as a NaN).
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "cuda/gpu_support.hpp"
#include "support/test_support.hpp"

using namespace mamclip;
using namespace mamclip::test;

namespace {

// Values that exercise rounding in every target: a wide random range, ties, overflow, NaN, infinities.
Tensor<double> awkward_values() {
  Generator g(9);
  Tensor<double> t = empty<double>({4099});
  uniform_(t, -70000, 70000, g);
  double* p = t.data_ptr();
  for (int i = 0; i < 1000; ++i) p[i] *= 1e-4 * (i % 7 + 1);  // small magnitudes
  p[1000] = std::numeric_limits<double>::quiet_NaN();
  p[1001] = std::numeric_limits<double>::infinity();
  p[1002] = -std::numeric_limits<double>::infinity();
  p[1003] = 1.0 + std::ldexp(1.0, -8);   // a bfloat16 tie
  p[1004] = 1.0 + std::ldexp(1.0, -11);  // a half tie
  p[1005] = 1e300;                       // beyond float
  p[1006] = 1e-300;                      // below float
  return t;
}

// The bits of each value; every NaN as one marker, since the payload of a NaN is not the cast's to
// keep (the GPU's conversions give the canonical NaN 0x7fff in half and bfloat16, Eigen's 0x7e00 / 0x7fc0).
template <class T>
std::vector<uint64_t> bits_of(const Tensor<T>& t) {
  std::vector<uint64_t> out;
  for (T v : t.to_vector()) {
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    out.push_back(std::isnan(static_cast<float>(v)) ? ~uint64_t{0} : b);
  }
  return out;
}

template <class From, class To>
void check_cast(const std::string& what) {
  INFO(what);
  const Tensor<From> x = awkward_values().to<From>();
  CHECK(bits_of(x.to(kGPU).template to<To>().to(kCPU)) == bits_of(x.template to<To>()));
}

}  // namespace

TEST_CASE("every cast among the float dtypes has a CUDA kernel") {
  auto& r = KernelRegistry::get();
  const std::vector<DType> types{DType::f32, DType::f64, DType::f16, DType::bf16};
  for (DType from : types)
    for (DType to : types) {
      if (from == to) continue;
      INFO(dtype_name(from) << " -> " << dtype_name(to));
      CHECK(r.find<CastKernel<float, float>>(detail::str_cat("to<", dtype_name(to), ">"), from, DeviceType::cuda) != nullptr);
    }
}

TEST_CASE("casts on CUDA give the CPU's bits", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  check_cast<double, float>("double -> float");
  check_cast<double, f16>("double -> half");
  check_cast<double, bfloat16>("double -> bfloat16");
  check_cast<float, double>("float -> double");
  check_cast<float, f16>("float -> half");
  check_cast<float, bfloat16>("float -> bfloat16");
  check_cast<f16, float>("half -> float");
  check_cast<f16, double>("half -> double");
  check_cast<f16, bfloat16>("half -> bfloat16");
  check_cast<bfloat16, float>("bfloat16 -> float");
  check_cast<bfloat16, double>("bfloat16 -> double");
  check_cast<bfloat16, f16>("bfloat16 -> half");
}

TEST_CASE("gradients flow through a cast on CUDA", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  Generator g(3);
  Tensor<float> x = empty<float>({33});
  uniform_(x, -2, 2, g);
  Tensor<float> xc = x.clone(), xg = x.to(kGPU);
  xc.set_requires_grad();
  xg.set_requires_grad();
  const Tensor<bfloat16> gb = full<bfloat16>({33}, bfloat16(0.75f));
  mul(xc.to<bfloat16>(), xc.to<bfloat16>()).backward(gb);
  mul(xg.to<bfloat16>(), xg.to<bfloat16>()).backward(gb.to(kGPU));
  CHECK(bits_of(xg.grad().to(kCPU)) == bits_of(xc.grad()));
}

// Autocast casts channels-last activations and the backward adds
// channels-last gradients: both keep the layout on the GPU (no re-layout copy).
TEST_CASE("casts and gradient sums on CUDA keep a channels-last layout", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  const Tensor<float> a = rnd<float>({2, 5, 3, 7}, 31), b = rnd<float>({2, 5, 3, 7}, 32);
  auto channels_last = [](const Tensor<float>& t) { return t.permute({0, 2, 3, 1}).contiguous().to(kGPU).permute({0, 3, 1, 2}); };
  const Tensor<float> ag = channels_last(a), bg = channels_last(b);
  REQUIRE(ag.stride(1) == 1);
  const Tensor<bfloat16> h = ag.to<bfloat16>();
  CHECK(h.strides() == ag.strides());
  CHECK(h.to(kCPU).to<float>().to_vector() == a.to<bfloat16>().to<float>().to_vector());
  const Tensor<float> back = h.to<float>();
  CHECK(back.strides() == ag.strides());
  const Tensor<float> sum = mamclip::detail::add_same_shape(ag, bg);
  CHECK(sum.strides() == ag.strides());
  const auto want = (a + b).to_vector(), got = sum.to(kCPU).to_vector();
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) REQUIRE(got[i] == want[i]);
  // Different layouts still add correctly (through contiguous copies).
  const auto mixed = mamclip::detail::add_same_shape(ag, b.to(kGPU)).to(kCPU).to_vector();
  for (size_t i = 0; i < mixed.size(); ++i) REQUIRE(mixed[i] == want[i]);
}
