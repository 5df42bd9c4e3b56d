// The CUDA backend, tested from plain C++ as a user program sees it (through
// mamclip.hpp, the kernel registry and Device::cuda()).
//
// Without a GPU: registration, the caching allocator's bookkeeping on a fake
// raw allocator, the error macros and the "no device" error. With a GPU (cases
// tagged [gpu]; without one each prints "skipped: no CUDA device" and CTest
// reports it skipped): every kernel against the CPU reference on random
// inputs, at sizes that are not multiples of 8 and on misaligned pointers.
#include <cuda_runtime.h>

#include <array>
#include <climits>
#include <cstdint>
#include <limits>
#include <map>
#include <type_traits>

#include "mamclip/core/cuda/caching_allocator.hpp"
#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/cuda/settings.hpp"
#include "cuda/gpu_support.hpp"
#include "support/test_support.hpp"

using namespace mamclip;
using namespace mamclip::test;

namespace {

template <class T>
void require_equal(const Tensor<T>& actual, const Tensor<T>& expected, const std::string& what) {
  INFO(what);
  REQUIRE(actual.shape() == expected.shape());
  const auto a = actual.to_vector(), b = expected.to_vector();
  size_t bad = 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (!(a[i] == b[i])) ++bad;
  CHECK(bad == 0);
}

// A raw allocator that hands out fake addresses and enforces a capacity.
struct FakeRaw {
  size_t capacity = SIZE_MAX, in_use = 0;
  int allocs = 0, frees = 0;
  uintptr_t next = 0x100000;
  std::map<void*, size_t> live;
  void* allocate(size_t n, int) {
    if (n > capacity - in_use) return nullptr;
    void* p = reinterpret_cast<void*>(next);
    next += n + 4096;
    live[p] = n;
    in_use += n;
    ++allocs;
    return p;
  }
  void free(void* p, int) {
    auto it = live.find(p);
    REQUIRE(it != live.end());
    in_use -= it->second;
    live.erase(it);
    ++frees;
  }
};

using Core = cuda::CachingAllocatorCore<FakeRaw>;
constexpr size_t MiB = size_t(1) << 20;

}  // namespace

// ---------------------------------------------------------------- no GPU needed

TEST_CASE("linking mamclip::cuda registers the CUDA device and its kernels") {
  CHECK(device_available(DeviceType::cuda));
  auto& r = KernelRegistry::get();
  const auto dev = DeviceType::cuda;
  CHECK(r.find<BinaryKernel<float>>("add", DType::f32, dev) != nullptr);
  CHECK(r.find<BinaryKernel<bfloat16>>("add", DType::bf16, dev) != nullptr);
  CHECK(r.find<BinaryKernel<f16>>("add", DType::f16, dev) != nullptr);
  CHECK(r.find<BinaryKernel<double>>("add", DType::f64, dev) != nullptr);
  CHECK(r.find<AddKernel<float>>("add_contiguous", DType::f32, dev) != nullptr);
  CHECK(r.find<AddKernel<bfloat16>>("add_contiguous", DType::bf16, dev) != nullptr);
  for (DType d : {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i64, DType::i32, DType::u8, DType::boolean}) {
    INFO(dtype_name(d));
    CHECK(r.find<void(void*)>("fill", d, dev) != nullptr);
    CHECK(r.find<void(void*)>("strided_copy", d, dev) != nullptr);
  }
  for (DType d : {DType::f32, DType::f64, DType::f16, DType::bf16}) {
    INFO(dtype_name(d));
    CHECK(r.find<void(void*)>("gemm", d, dev) != nullptr);
  }
  // A name no kernel is registered under stays unregistered, and asking for it throws (see below).
  CHECK(r.find<void(void*)>("no_such_op", DType::f32, dev) == nullptr);
  // The backend's plain C++ handles reach the registered allocator (they throw when it is missing).
  CHECK_NOTHROW(cuda::memory_stats(0));
  CHECK_FALSE(cuda::allow_tf32());
}

TEST_CASE("without a device, CUDA memory requests throw device_error naming the device") {
  const int n = gpu_count();
  const std::string expected = "allocating 16 bytes on cuda:" + std::to_string(n) + ": no such device (" +
                               std::to_string(n) + " CUDA device" + (n == 1 ? "" : "s") + " visible)";
  MAMCLIP_REQUIRE_THROWS_WITH(Tensor<float>::empty({4}, Device::cuda(n)), device_error, expected);
  MAMCLIP_REQUIRE_THROWS_WITH(Tensor<float>::empty({4}, Device::cuda(-1)), device_error,
                              "CUDA allocator: device index -1 is out of range [0, 64)");
}

namespace {
cudaError_t failing_cuda_call() { return cudaErrorInvalidValue; }
cublasStatus_t failing_cublas_call() { return CUBLAS_STATUS_INVALID_VALUE; }
}  // namespace

TEST_CASE("CUDA error macros throw device_error with file:line, the call and the error text") {
  int line = 0;
  std::string msg;
  try {
    line = __LINE__ + 1;
    MAMCLIP_CUDA_CHECK(failing_cuda_call());
  } catch (const device_error& e) {
    msg = e.what();
  }
  CHECK(msg == std::string(__FILE__) + ":" + std::to_string(line) +
                   ": failing_cuda_call() failed: cudaErrorInvalidValue (invalid argument)");
  msg.clear();
  try {
    line = __LINE__ + 1;
    MAMCLIP_CUBLAS_CHECK(failing_cublas_call());
  } catch (const device_error& e) {
    msg = e.what();
  }
  CHECK(msg == std::string(__FILE__) + ":" + std::to_string(line) + ": failing_cublas_call() failed: " +
                   "CUBLAS_STATUS_INVALID_VALUE (" + cublasGetStatusString(CUBLAS_STATUS_INVALID_VALUE) + ")");
  CHECK(msg.find("CUBLAS_STATUS_INVALID_VALUE (") != std::string::npos);
  CHECK_NOTHROW([] { MAMCLIP_CUDA_CHECK(cudaSuccess); }());
}

TEST_CASE("caching allocator rounds sizes to 512 B, and to 2 MiB above 1 MiB") {
  using cuda::round_size;
  CHECK(round_size(1) == 512);
  CHECK(round_size(512) == 512);
  CHECK(round_size(513) == 1024);
  CHECK(round_size(4099 * 4) == 16896);
  CHECK(round_size(MiB) == MiB);
  CHECK(round_size(MiB + 1) == 2 * MiB);
  CHECK(round_size(3 * MiB) == 4 * MiB);
  CHECK(round_size(4 * MiB) == 4 * MiB);
}

TEST_CASE("caching allocator: steady state reuses blocks without raw allocations or frees") {
  Core c;
  const std::vector<size_t> sizes{100, 4099 * 4, 3 * MiB, 513};
  for (int iter = 0; iter < 10; ++iter) {
    std::vector<void*> ptrs;
    for (size_t s : sizes) ptrs.push_back(c.allocate(s, 0, 0));
    if (iter == 0) CHECK(c.stats(0).allocated_bytes == 512 + 16896 + 4 * MiB + 1024);
    for (void* p : ptrs) c.deallocate(p);
  }
  const auto st = c.stats(0);
  CHECK(c.raw().allocs == 4);
  CHECK(c.raw().frees == 0);
  CHECK(st.cache_misses == 4);
  CHECK(st.cache_hits == 36);
  CHECK(st.allocated_bytes == 0);
  CHECK(st.reserved_bytes == 512 + 16896 + 4 * MiB + 1024);
  CHECK(st.peak_allocated_bytes == 512 + 16896 + 4 * MiB + 1024);

  c.empty_cache();
  CHECK(c.raw().frees == 4);
  CHECK(c.raw().live.empty());
  CHECK(c.stats(0).reserved_bytes == 0);
  CHECK(c.stats(0).raw_frees == 4);

  CHECK(c.allocate(0, 0, 0) == nullptr);  // no block for an empty tensor
  c.deallocate(nullptr);
  CHECK(c.raw().allocs == 4);
}

TEST_CASE("caching allocator: best fit up to twice the request; streams and devices never share blocks") {
  Core c;
  void* big = c.allocate(8 * MiB, 0, 0);
  c.deallocate(big);
  // 3 MiB rounds to 4 MiB; the cached 8 MiB block is at most twice that, so it is reused whole.
  void* p = c.allocate(3 * MiB, 0, 0);
  CHECK(p == big);
  CHECK(c.stats(0).allocated_bytes == 8 * MiB);
  c.deallocate(p);
  // 1.5 MiB rounds to 2 MiB: the 8 MiB block would waste too much.
  void* q = c.allocate(3 * MiB / 2, 0, 0);
  CHECK(q != big);
  CHECK(c.raw().allocs == 2);
  c.deallocate(q);

  void* s1 = c.allocate(1000, 0, /*stream=*/1);
  c.deallocate(s1);
  void* s2 = c.allocate(1000, 0, /*stream=*/2);
  CHECK(s2 != s1);
  void* d1 = c.allocate(1000, 1, /*stream=*/1);
  CHECK(d1 != s1);
  CHECK(c.allocate(1000, 0, 1) == s1);
  CHECK(c.raw().allocs == 5);
  CHECK(c.stats(1).allocated_bytes == 1024);
  CHECK(c.stats(1).cache_misses == 1);
}

TEST_CASE("caching allocator: out of memory frees the cache and retries, then reports sizes") {
  Core c;
  c.raw().capacity = 6 * MiB;
  void* a = c.allocate(2 * MiB, 0, 0);
  c.deallocate(a);
  CHECK(c.stats(0).reserved_bytes == 2 * MiB);
  // 6 MiB does not fit beside the cached 2 MiB block: the cache is released and the allocation retried.
  void* b = c.allocate(6 * MiB, 0, 0);
  CHECK(b != nullptr);
  CHECK(c.raw().frees == 1);
  CHECK(c.stats(0).raw_frees == 1);
  CHECK(c.stats(0).reserved_bytes == 6 * MiB);
  MAMCLIP_REQUIRE_THROWS_WITH(c.allocate(2 * MiB, 0, 0), device_error,
                              "out of memory on cuda:0: allocating 2097152 bytes (2097152 rounded) with 6291456 bytes "
                              "allocated and 6291456 reserved by mamclip; free memory or use smaller batches");
  c.deallocate(b);
  CHECK(c.stats(0).allocated_bytes == 0);
}

TEST_CASE("caching allocator: a capture pool keeps its blocks to itself until it is released") {
  Core c;
  constexpr uintptr_t kMain = 0, kCapture = 7;
  void* cached = c.allocate(4096, 0, kCapture);  // a general block of the capture stream, cached
  c.deallocate(cached);

  const uint64_t pool = c.begin_capture_pool(0, kCapture);
  CHECK(pool != 0);
  MAMCLIP_REQUIRE_THROWS_WITH(c.begin_capture_pool(0, kCapture), device_error, "is already being captured");
  // Inside the capture: the general cache is not used; blocks freed in the capture are reused in it.
  void* a = c.allocate(4096, 0, kCapture);
  CHECK(a != cached);
  c.deallocate(a);
  void* b = c.allocate(4000, 0, kCapture);
  CHECK(b == a);
  void* kept = c.allocate(MiB / 2, 0, kCapture);  // outlives the capture, as gradients do
  void* other_stream = c.allocate(4096, 0, kMain);  // other streams are not captured
  CHECK(other_stream != a);
  c.deallocate(b);
  c.end_capture_pool(0, kCapture);
  CHECK(c.capture_pool_free_bytes(pool) == 4096);

  // After the capture the pool's free block goes to no one else, on any stream.
  void* after = c.allocate(4096, 0, kCapture);
  CHECK(after == cached);
  void* after2 = c.allocate(4096, 0, kCapture);
  CHECK(after2 != a);
  // A live pool block freed after the capture goes back to the pool.
  c.deallocate(kept);
  CHECK(c.capture_pool_free_bytes(pool) == 4096 + MiB / 2);
  const auto before = c.stats(0);
  c.empty_cache();  // the general cache only
  CHECK(c.capture_pool_free_bytes(pool) == 4096 + MiB / 2);
  CHECK(c.stats(0).reserved_bytes == before.reserved_bytes);

  // A second capture of the same stream gets a new, empty pool.
  const uint64_t pool2 = c.begin_capture_pool(0, kCapture);
  CHECK(pool2 != pool);
  void* in2 = c.allocate(4096, 0, kCapture);
  CHECK(in2 != a);
  c.end_capture_pool(0, kCapture);

  // Released: the free blocks return to the raw allocator now, the live ones when freed.
  const int frees = c.raw().frees;
  c.release_capture_pool(pool);
  CHECK(c.raw().frees == frees + 2);
  CHECK(c.capture_pool_free_bytes(pool) == 0);
  MAMCLIP_REQUIRE_THROWS_WITH(c.release_capture_pool(pool), device_error, "does not exist or was released");
  c.release_capture_pool(pool2);
  CHECK(c.raw().frees == frees + 2);  // in2 is still live
  // While a capture runs, raw frees (a released pool's block, empty_cache) wait for its end.
  const uint64_t pool3 = c.begin_capture_pool(0, 9);
  c.deallocate(in2);
  c.deallocate(after);
  c.empty_cache();
  CHECK(c.raw().frees == frees + 2);
  CHECK(c.deferred_frees() == 2);
  c.end_capture_pool(0, 9);
  CHECK(c.deferred_frees() == 0);
  CHECK(c.raw().frees == frees + 4);
  c.release_capture_pool(pool3);
  c.deallocate(after2);
  c.deallocate(other_stream);
  const auto st = c.stats(0);
  CHECK(st.allocated_bytes == 0);
  c.empty_cache();
  CHECK(c.stats(0).reserved_bytes == 0);
  CHECK(c.raw().live.empty());
}

TEST_CASE("caching allocator rejects pointers it does not own and double frees") {
  Core c;
  int x = 0;
  MAMCLIP_REQUIRE_THROWS_WITH(c.deallocate(&x), device_error, "that it did not allocate or that was already freed");
  void* p = c.allocate(10, 0, 0);
  c.deallocate(p);
  MAMCLIP_REQUIRE_THROWS_WITH(c.deallocate(p), device_error, "that it did not allocate or that was already freed");
  CHECK(c.stats(0).allocated_bytes == 0);
}

// ---------------------------------------------------------------- GPU

TEMPLATE_TEST_CASE("add on CUDA equals the CPU op, contiguous and broadcast", "[gpu]", float, bfloat16, f16, double) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  const double eps = dtype_eps<T>();
  for (int64_t n : {1, 7, 33, 4099}) {
    auto a = rnd<T>({n}, 10 + n), b = rnd<T>({n}, 20 + n);
    require_allclose(add(a.to(kGPU), b.to(kGPU)).to(kCPU), add(a, b), 0, eps, "n = " + std::to_string(n));
  }
  auto a = rnd<T>({5, 33}, 1), b = rnd<T>({33}, 2);
  require_allclose(add(a.to(kGPU), b.to(kGPU)).to(kCPU), add(a, b), 0, eps, "broadcast [5, 33] + [33]");
  require_allclose(add(noncontiguous(a.to(kGPU)), b.to(kGPU)).to(kCPU), add(a, b), 0, eps, "non-contiguous a");
}

TEMPLATE_TEST_CASE("add kernel: 16-byte path, tails and misaligned pointers", "[gpu]", float, bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  auto* add_k = require_kernel<BinaryKernel<T>>("add", dtype_v<T>, kGPU);
  auto* acc_k = require_kernel<AddKernel<T>>("add_contiguous", dtype_v<T>, kGPU);
  for (int64_t n : {1, 7, 33, 4099}) {
    // Offsets of 0 take 16-byte packs (fresh blocks are 256-byte aligned); 1 element forces the scalar kernel.
    for (int64_t off : {0, 1}) {
      INFO("n = " << n << ", offset = " << off);
      auto a = rnd<T>({n + off}, 30 + n), b = rnd<T>({n + off}, 40 + n);
      auto da = a.to(kGPU), db = b.to(kGPU);
      auto out = Tensor<T>::empty({n + off}, kGPU);
      out.fill_(T(7));
      add_k(out.data_ptr() + off, da.data_ptr() + off, db.data_ptr() + off, n, nullptr, 0, 0);
      auto expected = a.detach().clone();
      expected.narrow(0, off, n).copy_(add(a.narrow(0, off, n), b.narrow(0, off, n)));
      if (off) expected.data_ptr()[0] = T(7);  // untouched
      require_allclose(out.to(kCPU), expected, 0, dtype_eps<T>(), "add");
      acc_k(out.data_ptr() + off, out.data_ptr() + off, db.data_ptr() + off, n);  // in place: out += b
      expected.narrow(0, off, n).copy_(add(expected.narrow(0, off, n), b.narrow(0, off, n)));
      require_allclose(out.to(kCPU), expected, 0, dtype_eps<T>(), "add_contiguous in place");
    }
  }
}

namespace {
// A view built from raw layout (the view ops record autograd, which integer tensors do not take part in).
template <class T>
Tensor<T> layout_view(const Tensor<T>& x, const Shape& shape, const Shape& strides, int64_t offset = 0) {
  return Tensor<T>::from_storage(x.storage(), x.storage_offset() + offset, shape, strides);
}

// The same view of x on the CPU and of its device copy, made dense on each.
template <class T>
void check_strided_copy(const Tensor<T>& x, const Tensor<T>& dx, const Shape& shape, const Shape& strides,
                        int64_t offset, const std::string& what) {
  const auto expected = detail::contiguous_copy(layout_view(x, shape, strides, offset));
  const auto got = detail::contiguous_copy(layout_view(dx, shape, strides, offset));
  CHECK(got.device() == kGPU);
  require_equal(got.to(kCPU), expected, what);
}
}  // namespace

TEMPLATE_TEST_CASE("strided_copy on CUDA: transposed, permuted, narrowed and expanded views", "[gpu]", float, bfloat16,
                   double, int64_t, uint8_t) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  auto x = rnd<T>({37 * 65}, 5, 0.5, 100);  // storage of a [37, 65] matrix
  auto dx = x.to(kGPU);
  check_strided_copy(x, dx, {65, 37}, {1, 65}, 0, "transpose of [37, 65]");
  check_strided_copy(x, dx, {37, 33}, {65, 1}, 3, "narrow of dim 1: [37, 33] at offset 3");
  check_strided_copy(x, dx, {9, 33}, {0, 1}, 1, "expand of a [1, 33] row");
  check_strided_copy(x, dx, {37 * 65}, {1}, 0, "contiguous (device-to-device copy)");
  auto y = rnd<T>({3 * 5 * 7 * 9}, 6, 0.5, 100);  // storage of [3, 5, 7, 9], viewed permuted by {2, 0, 3, 1}
  check_strided_copy(y, y.to(kGPU), {7, 3, 9, 5}, {9, 315, 1, 63}, 0, "permute");
}

TEMPLATE_TEST_CASE("fill on CUDA, aligned and misaligned", "[gpu]", float, bfloat16, f16, double, int32_t, int64_t,
                   uint8_t) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  for (int64_t n : {1, 7, 33, 4099}) {
    INFO("n = " << n);
    auto t = full<T>({n}, T(3), kGPU);
    CHECK(t.to_vector() == std::vector<T>(static_cast<size_t>(n), T(3)));
    if (n > 1) {
      t.narrow(0, 1, n - 1).fill_(T(5));  // starts one element in: the scalar kernel
      std::vector<T> expected(static_cast<size_t>(n), T(5));
      expected[0] = T(3);
      CHECK(t.to_vector() == expected);
    }
  }
}

TEST_CASE("the CUDA backend registers how ops make a device current") {
  CHECK(mamclip::detail::DeviceRegistry::get().activators[static_cast<int>(DeviceType::cuda)] != nullptr);
  make_current(kCPU);  // the CPU has nothing to activate
}

TEST_CASE("ops run on their tensors' GPU, which becomes the thread's current device", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  const int last = gpu_count() - 1;  // cuda:1 or above when the machine has several GPUs
  const Device dev = Device::cuda(last);
  MAMCLIP_CUDA_CHECK(cudaSetDevice(0));
  const auto a = rnd<float>({33, 7}, 1), b = rnd<float>({7}, 2);
  const auto y = add(a.to(dev), b.to(dev));  // kernels on GPU `last`: on GPU 0 they would fault for last > 0
  CHECK(y.device() == dev);
  CHECK(cuda::current_device() == last);
  require_allclose(y.to(kCPU), add(a, b), 0, 1e-6, "add on the last GPU");
  // matmul finds its kernel without require_kernel (it has a fallback message of its own): same rule.
  MAMCLIP_CUDA_CHECK(cudaSetDevice(0));
  const auto m = rnd<float>({5, 33}, 3);
  const auto p = matmul(m.to(dev), a.to(dev));
  CHECK(cuda::current_device() == last);
  require_allclose(p.to(kCPU), matmul(m, a), 1e-4, 1e-4, "matmul on the last GPU");
  if (last == 0) WARN("one GPU: the switch from cuda:0 to another device is not exercised");
  MAMCLIP_CUDA_CHECK(cudaSetDevice(0));
}

TEST_CASE("host-device round trips keep every bit", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  auto check = [](auto x, const char* what) {
    auto d = x.to(kGPU);
    require_equal(d.to(kCPU), x, what);
    auto d2 = Tensor<typename decltype(x)::value_type>::empty(x.shape(), kGPU);
    d2.copy_(d);  // device to device through the copier
    require_equal(d2.to(kCPU), x, what);
  };
  check(rnd<float>({4099}, 1), "float");
  check(rnd<double>({33, 7}, 2), "double");
  check(rnd<bfloat16>({4099}, 3), "bfloat16");
  check(rnd<f16>({7}, 4), "half");
  check(randint<int64_t>(-1000, 1000, {33}), "int64");
  check(randint<uint8_t>(0, 255, {33}), "uint8");
}

TEST_CASE("asking for a kernel the CUDA backend lacks throws device_error naming the op, dtype and device") {
  MAMCLIP_REQUIRE_THROWS_WITH(require_kernel<void(void*)>("no_such_op", DType::f32, kGPU), device_error,
                              "no_such_op: no kernel is registered for float32 tensors on cuda:0");
  MAMCLIP_REQUIRE_THROWS_WITH(require_kernel<SumRowsKernel<int64_t>>("sum", DType::i64, kGPU), device_error,
                              "sum: no kernel is registered for int64 tensors on cuda:0");
}

namespace {

// C[p] (m×n, ldc) = alpha·op(A[p])·op(B[p]) + beta·C[p] through the registered
// kernel, against a double-precision loop over the same (rounded) inputs.
struct GemmCase {
  bool ta, tb;
  int64_t m, n, k, batch;
  double alpha, beta;
  bool broadcast_b = false;  // stride_b = 0
};

// eps_acc: the accumulation type's epsilon; eps_in: relative error of each
// product from rounding the inputs (TF32).
template <class T>
void check_gemm(const GemmCase& g, double eps_acc, double eps_in = 0) {
  INFO("trans_a " << g.ta << " trans_b " << g.tb << " m " << g.m << " n " << g.n << " k " << g.k << " batch "
                  << g.batch << " alpha " << g.alpha << " beta " << g.beta << " broadcast_b " << g.broadcast_b);
  // Stored shapes (row-major) with padded leading dims, so that ld != row length is exercised.
  const int64_t ra = g.ta ? g.k : g.m, ca = g.ta ? g.m : g.k, rb = g.tb ? g.n : g.k, cb = g.tb ? g.k : g.n;
  const int64_t lda = ca + 3, ldb = cb + 1, ldc = g.n + 2;
  const int64_t sa = ra * lda, sb = g.broadcast_b ? 0 : rb * ldb, sc = g.m * ldc;
  auto a = rnd<T>({std::max<int64_t>(1, sa * g.batch)}, 100 + g.m, -1, 1);
  auto b = rnd<T>({std::max<int64_t>(1, (g.broadcast_b ? rb * ldb : sb * g.batch))}, 200 + g.n, -1, 1);
  auto c = rnd<T>({std::max<int64_t>(1, sc * g.batch)}, 300 + g.k, -1, 1);
  // With beta == 0, C must not be read: fill the matrices with NaN (the padding keeps its values).
  if (g.beta == 0)
    for (int64_t p = 0; p < g.batch; ++p)
      for (int64_t i = 0; i < g.m; ++i)
        for (int64_t j = 0; j < g.n; ++j) c.data_ptr()[p * sc + i * ldc + j] = T(std::numeric_limits<float>::quiet_NaN());
  auto da = a.to(kGPU), db = b.to(kGPU), dc = c.to(kGPU);
  require_kernel<GemmKernel<T>>("gemm", dtype_v<T>, kGPU)(g.ta, g.tb, g.m, g.n, g.k, g.alpha, da.data_ptr(), lda, sa,
                                                         db.data_ptr(), ldb, sb, g.beta, dc.data_ptr(), ldc, sc, g.batch);
  const auto got = dc.to_vector(), A = a.to_vector(), B = b.to_vector(), C = c.to_vector();
  const double eps_out = dtype_eps<T>();
  int64_t bad = 0;
  std::string first;
  for (int64_t p = 0; p < g.batch; ++p)
    for (int64_t i = 0; i < g.m; ++i)
      for (int64_t j = 0; j < ldc; ++j) {
        const size_t ic = static_cast<size_t>(p * sc + i * ldc + j);
        const double out = static_cast<double>(got[ic]);
        if (j >= g.n) {  // padding between rows: never written
          if (!(got[ic] == C[ic])) ++bad;
          continue;
        }
        double ref = 0, mag = 0;
        for (int64_t l = 0; l < g.k; ++l) {
          const double x = static_cast<double>(A[static_cast<size_t>(p * sa + (g.ta ? l * lda + i : i * lda + l))]);
          const double y = static_cast<double>(B[static_cast<size_t>(p * sb + (g.tb ? j * ldb + l : l * ldb + j))]);
          ref += x * y;
          mag += std::abs(x * y);
        }
        ref *= g.alpha;
        mag *= std::abs(g.alpha);
        if (g.beta != 0) {
          ref += g.beta * static_cast<double>(C[ic]);
          mag += std::abs(g.beta * static_cast<double>(C[ic]));
        }
        // Rounding of the output, accumulation error growing with k, and input rounding.
        const double tol = eps_out * std::abs(ref) + (static_cast<double>(g.k + 2) * eps_acc + eps_in) * mag + 1e-30;
        if (!(std::abs(out - ref) <= tol)) {
          if (bad++ == 0)
            first = "C[" + std::to_string(p) + "][" + std::to_string(i) + "][" + std::to_string(j) +
                    "] = " + std::to_string(out) + ", expected " + std::to_string(ref) + " +- " + std::to_string(tol);
        }
      }
  INFO(first);
  CHECK(bad == 0);
}

}  // namespace

TEMPLATE_TEST_CASE("gemm on CUDA matches a double-precision reference", "[gpu]", float, bfloat16, f16, double) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  const double eps_acc = std::is_same_v<T, double> ? dtype_eps<double>() : dtype_eps<float>();
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      check_gemm<T>({ta, tb, 65, 33, 129, 1, 1.0, 0.0}, eps_acc);
      check_gemm<T>({ta, tb, 65, 33, 129, 3, 1.5, 0.5}, eps_acc);
      check_gemm<T>({ta, tb, 7, 130, 3, 2, -1.0, 1.0, /*broadcast_b=*/true}, eps_acc);
    }
  check_gemm<T>({false, false, 1, 1, 1, 1, 1.0, 0.0}, eps_acc);
  check_gemm<T>({false, true, 5, 4, 0, 2, 1.0, 0.5}, eps_acc);  // k == 0: C = beta·C
  check_gemm<T>({true, false, 5, 4, 0, 2, 1.0, 0.0}, eps_acc);  // k == 0, beta == 0: zeros over NaN
}

TEST_CASE("gemm on CUDA with TF32 allowed stays within TF32 error", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  const RestoreCudaSettings restore_settings;  // TF32 off again, also after a failed REQUIRE
  cuda::set_allow_tf32(true);
  // Each input is rounded to a 10-bit mantissa (relative error 2^-11), so each product is off by up to 2^-10.
  check_gemm<float>({false, true, 65, 33, 129, 2, 1.0, 0.0}, dtype_eps<float>(), std::ldexp(1.0, -10));
  cuda::set_allow_tf32(false);
  CHECK_FALSE(cuda::allow_tf32());
}

TEST_CASE("gemm rejects leading dims shorter than a row", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  auto* k = require_kernel<GemmKernel<float>>("gemm", DType::f32, kGPU);
  auto buf = zeros<float>({64}, kGPU);
  float* p = buf.data_ptr();
  MAMCLIP_REQUIRE_THROWS_WITH(k(false, false, 2, 3, 4, 1.0, p, 3, 0, p, 3, 0, 0.0, p, 3, 0, 1), value_error,
                              "gemm: lda = 3 is less than A's row length 4 (trans_a = 0, m = 2, k = 4)");
}

TEST_CASE("matmul and its gradients on CUDA equal the CPU", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  auto a = rnd<float>({2, 65, 129}, 1), b = rnd<float>({33, 129}, 2);
  // b.t() is a column-major view: the transposed cuBLAS operand, read in place.
  const auto ref = matmul(a, b.t());
  const auto mag = matmul(abs(a), abs(b.t()));
  const auto got = matmul(a.to(kGPU), b.to(kGPU).t()).to(kCPU);
  const auto r = ref.to_vector(), m = mag.to_vector(), g = got.to_vector();
  size_t bad = 0;
  for (size_t i = 0; i < r.size(); ++i)
    if (!(std::abs(g[i] - r[i]) <= 131 * dtype_eps<float>() * m[i])) ++bad;
  CHECK(bad == 0);

  // Gradients: two uses of each input accumulate on the device ("add_contiguous").
  auto x = rnd<float>({7, 33}, 3), w = rnd<float>({33, 5}, 4);
  auto run = [&](Device dev) {
    Tensor<float> dx = x.to(dev).detach(), dw = w.to(dev).detach();
    dx.set_requires_grad();
    dw.set_requires_grad();
    auto y = add(matmul(dx, dw), matmul(dx, dw));
    y.backward(ones_like(y));
    return std::pair{dx.grad().to(kCPU), dw.grad().to(kCPU)};
  };
  const auto [gx_cpu, gw_cpu] = run(kCPU);
  const auto [gx_gpu, gw_gpu] = run(kGPU);
  require_allclose(gx_gpu, gx_cpu, 1e-5, 1e-5, "grad x");
  require_allclose(gw_gpu, gw_cpu, 1e-5, 1e-5, "grad w");
}

// linear's forward and gradients on CUDA against the CPU op, on x = the given view.
template <class T>
void check_linear_cuda(const Tensor<T>& x_cpu, int64_t out_f, uint64_t seed, const std::string& what) {
  INFO(what);
  const int64_t in_f = x_cpu.size(-1);
  const bool wide = std::is_same_v<T, float>;
  const double atol = wide ? 1e-4 : 4e-2, rtol = wide ? 1e-4 : 2e-2;
  const auto w = rnd<T>({out_f, in_f}, seed, -0.5, 0.5), b = rnd<T>({out_f}, seed + 1);
  Shape ys = x_cpu.shape();
  ys.back() = out_f;
  const auto gy = rnd<T>(ys, seed + 2);
  auto run = [&](Device dev, const Tensor<T>& xv) {
    Tensor<T> x = xv.detach(), wd = w.to(dev).detach(), bd = b.to(dev).detach();
    x.set_requires_grad();
    wd.set_requires_grad();
    bd.set_requires_grad();
    const auto y = linear(x, wd, bd);
    y.backward(gy.to(dev));
    return std::array<Tensor<T>, 4>{y.to(kCPU), x.grad().to(kCPU), wd.grad().to(kCPU), bd.grad().to(kCPU)};
  };
  const auto ref = run(kCPU, x_cpu), got = run(kGPU, x_cpu.to(kGPU));
  require_allclose(got[0], ref[0], atol, rtol, "y");
  require_allclose(got[1], ref[1], atol, rtol, "dx");
  require_allclose(got[2], ref[2], atol * 4, rtol, "dw");  // sums over every row
  require_allclose(got[3], ref[3], atol * 4, rtol, "db");
}

TEMPLATE_TEST_CASE("linear on CUDA (cuBLASLt bias epilogues) equals the CPU op", "[gpu]", float, bfloat16, f16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  check_linear_cuda<T>(rnd<T>({3, 37, 72}, 11), 40, 12, "aligned rows, 3-D input");
  check_linear_cuda<T>(rnd<T>({29, 13}, 21), 7, 22, "odd sizes: 2- or 4-byte aligned rows");
  check_linear_cuda<T>(rnd<T>({1, 64}, 31), 96, 32, "one row");
  // Which path the checks above ran: the cuBLASLt epilogues are optional (a cuBLASLt without an
  // algorithm for them, e.g. BGRADB in float, declines to cuBLAS + our bias kernels, which the
  // comparisons above cover as well), so a decline is reported, not failed.
  auto* fwd = require_kernel<LinearBiasKernel<T>>("linear_bias", dtype_v<T>, kGPU);
  auto* wgrad = require_kernel<LinearWeightGradKernel<T>>("linear_weight_grad", dtype_v<T>, kGPU);
  auto x = rnd<T>({37, 72}, 41).to(kGPU), w = rnd<T>({40, 72}, 42).to(kGPU), bias = rnd<T>({40}, 43).to(kGPU);
  auto y = empty<T>({37, 40}, kGPU), dw = empty<T>({40, 72}, kGPU), db = empty<T>({40}, kGPU);
  if (!fwd(37, 40, 72, x.data_ptr(), 72, w.data_ptr(), bias.data_ptr(), y.data_ptr()))
    WARN("cuBLASLt declined the bias epilogue for " << dtype_name(dtype_v<T>) << ": linear ran cuBLAS + bias kernel");
  if (!wgrad(37, 40, 72, x.data_ptr(), 72, y.data_ptr(), 40, dw.data_ptr(), db.data_ptr()))
    WARN("cuBLASLt declined the BGRADB epilogue for " << dtype_name(dtype_v<T>)
                                                      << ": the weight gradient ran cuBLAS + bias-gradient kernel");
  CHECK_FALSE(fwd(0, 40, 72, x.data_ptr(), 72, w.data_ptr(), bias.data_ptr(), y.data_ptr()));  // no rows: fallback
}

TEST_CASE("linear on CUDA reads a column-narrowed input in place or falls back, with equal results", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  // x's rows have unit stride but a leading dim of 80 and start one element in: misaligned for 16-byte loads.
  const auto big = rnd<float>({25, 80}, 51);
  const auto ref_x = big.narrow(1, 1, 72);
  const auto gpu_x = big.to(kGPU).narrow(1, 1, 72);
  const auto w = rnd<float>({40, 72}, 52), b = rnd<float>({40}, 53);
  require_allclose(linear(gpu_x, w.to(kGPU), b.to(kGPU)).to(kCPU), linear(ref_x, w, b), 1e-4, 1e-4, "narrowed x");
}

TEST_CASE("the CUDA caching allocator serves a training-like loop from its cache", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  const auto before = cuda::memory_stats(0);
  for (int i = 0; i < 6; ++i) {
    auto t = empty<float>({1000}, kGPU);
    auto u = empty<float>({300000}, kGPU);
  }
  const auto after = cuda::memory_stats(0);
  CHECK(after.cache_misses - before.cache_misses <= 2);
  CHECK(after.cache_hits - before.cache_hits >= 10);
  CHECK(after.allocated_bytes == before.allocated_bytes);
  cuda::empty_cache();
  const auto emptied = cuda::memory_stats(0);
  CHECK(emptied.reserved_bytes == emptied.allocated_bytes);
}
