#pragma once
// The bookkeeping of the CUDA caching allocator, free of CUDA so that it is
// tested on the CPU with a fake raw allocator, and the plain C++ handle on the
// registered allocator (empty_cache, memory_stats).
//
// cudaMalloc and cudaFree are slow (cudaFree synchronises the device), and a
// training step allocates the same sizes every iteration. So freed blocks are
// kept in free lists and handed out again; in steady state no raw allocation
// or free happens at all.
//
// Invariants:
//   - every request is rounded up (round_size) to a multiple of 512 B, or of
//     2 MiB above 1 MiB, so that sizes that differ a little share blocks;
//   - a free block is reused for a request of the same rounded size or one up
//     to half its size (best fit), never more wasteful than that;
//   - free lists are per (device, stream): a block is reused only on the
//     stream it was allocated on, where the kernels that used it are ordered
//     before the next user, so reuse needs no synchronisation;
//   - reserved = allocated + cached, both in rounded bytes;
//   - when the raw allocator runs out of memory, this device's cache is freed
//     and the allocation tried once more before a device_error is thrown.
//
// Capture pools (CUDA graphs, core/cuda/graph.cuh): a graph replays its
// kernels on the addresses they had when it was captured, so those blocks
// must stay the graph's. Between begin_capture_pool and end_capture_pool,
// every allocation for the capturing (device, stream) comes from a private
// pool: its own free list, else the raw allocator, never the general cache.
// A pool block goes back to its pool when freed (also after the capture) and
// is never handed to anyone else; blocks freed and reallocated inside one
// capture follow the captured stream order, as on a stream. release_capture_pool
// (the graph is destroyed) returns the pool's free blocks to the raw
// allocator, and its live ones when they are freed. empty_cache leaves pools alone.
// While any capture runs, raw frees wait until the last one ends (cudaFree
// synchronises the device, which a capture does not allow).
//
// No CUDA header is included here: plain C++ code may include this file.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "mamclip/core/device.hpp"
#include "mamclip/core/error.hpp"
#include "mamclip/core/storage.hpp"

namespace mamclip::cuda {

// Per device, in bytes after rounding.
struct MemoryStats {
  size_t allocated_bytes = 0;       // held by live allocations
  size_t reserved_bytes = 0;        // obtained from the raw allocator and not yet returned
  size_t peak_allocated_bytes = 0;  // the most allocated_bytes has been
  uint64_t cache_hits = 0;          // allocations served from a free list
  uint64_t cache_misses = 0;        // allocations that called the raw allocator
  uint64_t raw_frees = 0;           // blocks returned to the raw allocator
};

inline constexpr size_t kSmallRound = 512;                 // cudaMalloc itself aligns to 256 B
inline constexpr size_t kLargeThreshold = size_t(1) << 20;  // above this, round to kLargeRound
inline constexpr size_t kLargeRound = size_t(2) << 20;

// The size a request of nbytes occupies in the cache.
constexpr size_t round_size(size_t nbytes) {
  if (nbytes <= kLargeThreshold) return std::max<size_t>(1, (nbytes + kSmallRound - 1) / kSmallRound) * kSmallRound;
  return (nbytes + kLargeRound - 1) / kLargeRound * kLargeRound;
}

// Raw must provide
//   void* allocate(size_t nbytes, int device);  // nullptr when out of memory; throws on other errors
//   void free(void* ptr, int device);
// Streams are opaque integers (a cudaStream_t's bits); blocks never move between them.
template <class Raw>
class CachingAllocatorCore {
 public:
  explicit CachingAllocatorCore(Raw raw = Raw()) : raw_(std::move(raw)) {}
  CachingAllocatorCore(const CachingAllocatorCore&) = delete;
  CachingAllocatorCore& operator=(const CachingAllocatorCore&) = delete;

  Raw& raw() { return raw_; }

  // A block of at least nbytes on `device`, for use on `stream`; nullptr for 0 bytes.
  void* allocate(size_t nbytes, int device, uintptr_t stream) {
    if (nbytes == 0) return nullptr;
    const size_t size = round_size(nbytes);
    std::lock_guard<std::mutex> lock(mutex_);
    MemoryStats& st = stats_[device];
    void* ptr = nullptr;
    size_t got = 0;
    // A capture routes (device, stream) to its pool's free list; else the general one.
    uint64_t capture_pool = 0;
    std::multimap<size_t, void*>* blocks = nullptr;
    if (auto route = routes_.find(PoolKey{device, stream}); route != routes_.end()) {
      capture_pool = route->second;
      blocks = &capture_pools_.at(capture_pool).free;
    } else if (auto pool = free_.find(PoolKey{device, stream}); pool != free_.end()) {
      blocks = &pool->second;
    }
    if (blocks) {
      auto it = blocks->lower_bound(size);
      if (it != blocks->end() && it->first <= 2 * size) {
        got = it->first;
        ptr = it->second;
        blocks->erase(it);
        ++st.cache_hits;
      }
    }
    if (!ptr) {
      ptr = raw_.allocate(size, device);
      if (!ptr) {
        release_cached(device);
        ptr = raw_.allocate(size, device);
      }
      MAMCLIP_CHECK(ptr != nullptr, device_error, "out of memory on cuda:", device, ": allocating ", nbytes,
                    " bytes (", size, " rounded) with ", st.allocated_bytes, " bytes allocated and ",
                    st.reserved_bytes, " reserved by mamclip; free memory or use smaller batches");
      got = size;
      st.reserved_bytes += size;
      ++st.cache_misses;
    }
    live_.emplace(ptr, Block{got, device, stream, capture_pool});
    if (capture_pool) ++capture_pools_.at(capture_pool).live;
    st.allocated_bytes += got;
    st.peak_allocated_bytes = std::max(st.peak_allocated_bytes, st.allocated_bytes);
    return ptr;
  }

  // Returns ptr to the free list of the device and stream it was allocated for.
  void deallocate(void* ptr) {
    if (!ptr) return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = live_.find(ptr);
    MAMCLIP_CHECK(it != live_.end(), device_error, "CUDA caching allocator: free of pointer ", ptr,
                  " that it did not allocate or that was already freed");
    const Block b = it->second;
    live_.erase(it);
    MemoryStats& st = stats_[b.device];
    st.allocated_bytes -= b.size;
    if (!b.capture_pool) {
      free_[PoolKey{b.device, b.stream}].emplace(b.size, ptr);
      return;
    }
    auto pool = capture_pools_.find(b.capture_pool);
    --pool->second.live;
    if (!pool->second.released) {
      pool->second.free.emplace(b.size, ptr);
      return;
    }
    // Its graph is gone: the block goes back to the raw allocator.
    if (pool->second.live == 0) capture_pools_.erase(pool);
    raw_free(ptr, b.device, b.size);
  }

  // Routes the allocations for (device, stream) to a new capture pool, until
  // end_capture_pool; returns the pool's id (never 0).
  uint64_t begin_capture_pool(int device, uintptr_t stream) {
    std::lock_guard<std::mutex> lock(mutex_);
    const PoolKey key{device, stream};
    MAMCLIP_CHECK(routes_.find(key) == routes_.end(), device_error, "CUDA caching allocator: stream ", stream,
                  " on cuda:", device, " is already being captured");
    const uint64_t id = ++last_capture_pool_;
    capture_pools_[id].device = device;
    routes_[key] = id;
    return id;
  }

  // Ends the routing of (device, stream); its pool keeps its blocks.
  void end_capture_pool(int device, uintptr_t stream) {
    std::lock_guard<std::mutex> lock(mutex_);
    routes_.erase(PoolKey{device, stream});
    if (routes_.empty()) {
      const std::vector<Deferred> waiting = std::move(deferred_);
      deferred_.clear();
      for (const Deferred& d : waiting) raw_free(d.ptr, d.device, d.size);
    }
  }

  // The pool's graph is gone: its free blocks go back to the raw allocator
  // now, its live ones when they are freed.
  void release_capture_pool(uint64_t id) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto pool = capture_pools_.find(id);
    MAMCLIP_CHECK(pool != capture_pools_.end() && !pool->second.released, device_error,
                  "CUDA caching allocator: release of capture pool ", id, ", which does not exist or was released");
    for (auto route = routes_.begin(); route != routes_.end();)
      route = route->second == id ? routes_.erase(route) : std::next(route);
    CapturePool& p = pool->second;
    p.released = true;
    // Out of the pool before the raw frees: if one throws, the rest leak rather than being freed twice later.
    const std::multimap<size_t, void*> blocks = std::move(p.free);
    p.free.clear();
    const int device = p.device;
    if (p.live == 0) capture_pools_.erase(pool);
    for (const auto& [size, ptr] : blocks) raw_free(ptr, device, size);
  }

  // Raw frees waiting for the running captures to end.
  size_t deferred_frees() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return deferred_.size();
  }

  // Bytes in a capture pool's free list (0 for one that is gone).
  size_t capture_pool_free_bytes(uint64_t id) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto pool = capture_pools_.find(id);
    size_t n = 0;
    if (pool != capture_pools_.end())
      for (const auto& [size, ptr] : pool->second.free) n += size;
    return n;
  }

  // Returns every cached (free) block of every device to the raw allocator.
  void empty_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [device, st] : stats_) release_cached(device);
  }

  MemoryStats stats(int device) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = stats_.find(device);
    return it == stats_.end() ? MemoryStats{} : it->second;
  }

 private:
  struct Block {
    size_t size;
    int device;
    uintptr_t stream;
    uint64_t capture_pool;  // 0: the general cache
  };
  struct Deferred {
    void* ptr;
    int device;
    size_t size;
  };
  struct CapturePool {
    int device = 0;
    std::multimap<size_t, void*> free;  // size -> block, for best fit
    int64_t live = 0;                   // blocks handed out and not yet freed
    bool released = false;              // its graph is gone
  };
  struct PoolKey {
    int device;
    uintptr_t stream;
    friend bool operator<(const PoolKey& a, const PoolKey& b) {
      return a.device != b.device ? a.device < b.device : a.stream < b.stream;
    }
  };

  // Returns a block to the raw allocator, or queues it while a capture runs.
  // Caller holds mutex_.
  void raw_free(void* ptr, int device, size_t size) {
    if (!routes_.empty()) {
      deferred_.push_back(Deferred{ptr, device, size});
      return;
    }
    MemoryStats& st = stats_[device];
    st.reserved_bytes -= size;
    ++st.raw_frees;
    raw_.free(ptr, device);
  }

  // Caller holds mutex_.
  void release_cached(int device) {
    for (auto pool = free_.begin(); pool != free_.end();) {
      if (pool->first.device != device) {
        ++pool;
        continue;
      }
      // Out of the map before the raw frees: if one throws, the rest leak rather than being freed twice later.
      const std::multimap<size_t, void*> blocks = std::move(pool->second);
      pool = free_.erase(pool);
      for (const auto& [size, ptr] : blocks) raw_free(ptr, device, size);
    }
  }

  Raw raw_;
  mutable std::mutex mutex_;
  std::map<PoolKey, std::multimap<size_t, void*>> free_;  // size -> block, for best fit
  std::unordered_map<void*, Block> live_;
  std::map<int, MemoryStats> stats_;
  std::map<PoolKey, uint64_t> routes_;  // (device, stream) being captured -> its pool
  std::unordered_map<uint64_t, CapturePool> capture_pools_;
  uint64_t last_capture_pool_ = 0;
  std::vector<Deferred> deferred_;
};

// What plain C++ code can ask of the registered CUDA allocator (see cuda.hpp).
struct CachingAllocatorInterface : Allocator {
  virtual void empty_cache() = 0;
  virtual MemoryStats stats(int device) const = 0;
  // CachingAllocatorCore's capture pools; streams as a cudaStream_t's bits.
  virtual uint64_t begin_capture_pool(int device, uintptr_t stream) = 0;
  virtual void end_capture_pool(int device, uintptr_t stream) = 0;
  virtual void release_capture_pool(uint64_t pool) = 0;
};

// The registered CUDA allocator, or a device_error when the backend is not linked.
inline CachingAllocatorInterface& caching_allocator() {
  Allocator* a = ::mamclip::detail::DeviceRegistry::get().allocators[static_cast<int>(DeviceType::cuda)];
  auto* c = dynamic_cast<CachingAllocatorInterface*>(a);
  MAMCLIP_CHECK(c != nullptr, device_error,
                "cuda::caching_allocator: the CUDA backend is not linked (link mamclip::cuda, or include "
                "mamclip/cuda.hpp with MAMCLIP_CUDA_IMPLEMENTATION in one .cu file)");
  return *c;
}

// Frees the cached blocks of every device (tensors still alive keep theirs).
inline void empty_cache() { caching_allocator().empty_cache(); }
inline MemoryStats memory_stats(int device = 0) { return caching_allocator().stats(device); }

}  // namespace mamclip::cuda
