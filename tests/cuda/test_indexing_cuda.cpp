// index_select, embedding, gather and their scatter-add gradients on CUDA
// (ops/indexing/cuda.cuh) against the CPU reference.
//
// Without a GPU: the kernels are registered. With a GPU (cases tagged [gpu];
// without one each prints "skipped: no CUDA device"): random values (never
// zeros) and indices with duplicates, along every dim, in float, double, half
// and bfloat16; integer tensors selected and gathered exactly.
#include <cuda_runtime.h>

#include <string>

#include "cuda/gpu_support.hpp"
#include "support/test_support.hpp"

using namespace mamclip;
using namespace mamclip::test;

namespace {

// A gradient row gathers up to a handful of duplicates: a few roundings apart.
template <class T>
double tolerance() {
  if constexpr (std::is_same_v<T, f16> || std::is_same_v<T, bfloat16>) return 2 * dtype_eps<T>();
  else return 16 * dtype_eps<T>();
}

// f(x) on both devices, its gradient with respect to x too.
template <class T, class F>
void check(const Tensor<T>& x, F f, const std::string& what) {
  INFO(what);
  Tensor<T> xc = x.clone(), xg = x.to(kGPU);
  xc.set_requires_grad();
  xg.set_requires_grad();
  const Tensor<T> yc = f(xc, kCPU), yg = f(xg, kGPU);
  REQUIRE(yg.device() == kGPU);
  require_allclose(yg.to(kCPU), yc, 0, 0, "forward (a copy: exact)");
  const Tensor<T> g = rnd<T>(yc.shape(), 99, -1, 1);
  yc.backward(g);
  yg.backward(g.to(kGPU));
  require_allclose(xg.grad().to(kCPU), xc.grad(), tolerance<T>(), tolerance<T>(), "gradient");
}

}  // namespace

TEST_CASE("the indexing ops have CUDA kernels") {
  auto& r = KernelRegistry::get();
  for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16}) {
    INFO(dtype_name(dt));
    for (const char* op : {"index_select", "embedding"}) CHECK(r.find<IndexSelectKernel<float>>(op, dt, DeviceType::cuda));
    CHECK(r.find<IndexAddKernel<float>>("index_add", dt, DeviceType::cuda) != nullptr);
    CHECK(r.find<GatherKernel<float>>("gather", dt, DeviceType::cuda) != nullptr);
    CHECK(r.find<ScatterAddKernel<float>>("scatter_add", dt, DeviceType::cuda) != nullptr);
  }
  CHECK(r.find<IndexSelectKernel<int64_t>>("index_select", DType::i64, DeviceType::cuda) != nullptr);
  CHECK(r.find<GatherKernel<int64_t>>("gather", DType::i64, DeviceType::cuda) != nullptr);
}

TEMPLATE_TEST_CASE("index_select, embedding and gather on CUDA equal the CPU, with their gradients", "[gpu]", float,
                   double, f16, bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  const Tensor<T> x = rnd<T>({6, 7, 5}, 1);
  const std::vector<int64_t> idx{4, 0, 4, 2, 4, 1, 6};  // duplicates accumulate in the gradient
  for (int64_t dim : {0, 1, 2}) {
    std::vector<int64_t> wrapped;
    for (int64_t i : idx) wrapped.push_back(i % x.size(dim));
    const Tensor<int64_t> in_range = from_vector<int64_t>(wrapped);
    check(x, [&](const Tensor<T>& t, Device d) { return index_select(t, dim, in_range.to(d)); },
          "index_select along dim " + std::to_string(dim));
  }
  const Tensor<T> table = rnd<T>({50, 33}, 2);
  Generator gen(3);
  const Tensor<int64_t> ids = randint<int64_t>(0, 50, {4, 9}, gen);
  check(table, [&](const Tensor<T>& w, Device d) { return embedding(w, ids.to(d), std::nullopt); }, "embedding");
  check(table, [&](const Tensor<T>& w, Device d) { return embedding(w, ids.to(d), int64_t(7)); },
        "embedding with padding_idx 7");
  for (int64_t dim : {0, 1, 2}) {
    Shape s{4, 5, 3};
    const Tensor<int64_t> index = randint<int64_t>(0, x.size(dim), s, gen);
    check(x, [&](const Tensor<T>& t, Device d) { return gather(t, dim, index.to(d)); },
          "gather along dim " + std::to_string(dim));
  }
}

TEST_CASE("integer tensors are selected and gathered on CUDA exactly", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  Generator gen(5);
  const Tensor<int64_t> x = randint<int64_t>(-1000000, 1000000, {9, 11}, gen);
  const Tensor<int64_t> idx = tensor<int64_t>({8, 0, 8, 3});
  CHECK(index_select(x.to(kGPU), 0, idx.to(kGPU)).to(kCPU).to_vector() == index_select(x, 0, idx).to_vector());
  const Tensor<int64_t> index = randint<int64_t>(0, 11, {9, 4}, gen);
  CHECK(gather(x.to(kGPU), 1, index.to(kGPU)).to(kCPU).to_vector() == gather(x, 1, index).to_vector());
}
