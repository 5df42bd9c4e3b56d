// The CPU allocator's cache of large blocks: reuse by size class, the limit,
// release, alignment and the class rounding.
#include <cstdint>
#include <limits>
#include <new>

#include "support/test_support.hpp"

namespace test_storage {
using namespace mamclip;

TEST_CASE("size classes round up by at most 1/8 and keep 64-byte multiples") {
  CHECK(CpuAllocator::size_class(1) == 64);
  CHECK(CpuAllocator::size_class(65) == 128);
  const size_t mib = size_t{1} << 20;
  CHECK(CpuAllocator::size_class(mib) == mib);
  CHECK(CpuAllocator::size_class(mib + 1) == mib + mib / 8);
  for (size_t n : {mib, 3 * mib + 12345, 40 * mib + 1, 1000 * mib - 7}) {
    const size_t c = CpuAllocator::size_class(n);
    CHECK(c >= n);
    CHECK(c - n <= n / 8);
    CHECK(c % 64 == 0);
  }
}

TEST_CASE("freed large CPU blocks are reused for the same size class, up to the limit") {
  CpuAllocator& cpu = cpu_allocator();
  const size_t saved = cpu.cache_limit();
  cpu.release_cache();
  cpu.set_cache_limit(size_t{64} << 20);
  const void* first = nullptr;
  {
    auto t = empty<float>({1 << 20});  // 4 MiB
    first = t.data_ptr();
    CHECK(reinterpret_cast<uintptr_t>(first) % CpuAllocator::kAlignment == 0);
  }
  CHECK(cpu.cached_bytes() == CpuAllocator::size_class(size_t{4} << 20));
  {
    auto t = empty<float>({(1 << 20) - 1000});  // same class: the same block comes back
    CHECK(t.data_ptr() == first);
    CHECK(cpu.cached_bytes() == 0);
    t.fill_(1.5f);
    CHECK(t.to_vector()[12345] == 1.5f);
  }
  { auto small = empty<float>({1000}); }  // below kCacheMin: not cached
  CHECK(cpu.cached_bytes() == CpuAllocator::size_class(size_t{4} << 20));
  cpu.set_cache_limit(size_t{1} << 20);  // smaller than what is cached: released
  CHECK(cpu.cached_bytes() == 0);
  { auto t = empty<float>({1 << 20}); }  // past the limit: freed, not cached
  CHECK(cpu.cached_bytes() == 0);
  cpu.set_cache_limit(0);
  { auto t = empty<float>({1 << 18}); }
  CHECK(cpu.cached_bytes() == 0);
  cpu.set_cache_limit(saved);
  // A request past half the address space fails cleanly instead of wrapping the size class.
  CHECK_THROWS_AS(cpu.allocate(std::numeric_limits<size_t>::max() - 10, kCPU), std::bad_alloc);
}

}  // namespace test_storage
