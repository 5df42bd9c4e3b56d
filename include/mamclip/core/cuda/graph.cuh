#pragma once
// CUDA graphs: the device work of a region (a forward and backward pass) is
// recorded once and replayed with one launch, without the host's cost per
// kernel. Host-side code only (plain C++ with the CUDA runtime may include it).
//
//   model.forward(x).sum().backward();      // warm-up, eagerly, on this thread
//   model.zero_grad();                      // gradients undefined: the graph makes its own
//   cuda::Graph graph;
//   Tensor<float> loss;
//   graph.capture([&] { loss = loss_fn(model.forward(x)); loss.backward(); });
//   for (...) {
//     x.copy_(next_batch);                  // new data into the captured input
//     graph.replay();                       // loss and every .grad rewritten
//     optimizer.step();                     // outside the graph
//   }
//
// What a captured region must respect (the rules of CUDA graphs):
//   - it ran once eagerly on this thread before: library handles, plans and
//     caches are made on first use with calls a capture does not allow;
//   - tensors made before the capture that it reads (inputs, parameters) stay
//     alive and keep their storage, since every replay reads those addresses:
//     copy new values into them (copy_), do not rebind them;
//   - tensors it makes (outputs, gradients undefined before it) come from
//     the graph's own memory pool (caching_allocator.hpp) and every replay
//     rewrites them; they stay valid while the graph lives;
//   - no host synchronisation inside (.item(), to(kCPU), to_vector, a
//     pageable host-to-device copy): CUDA invalidates the capture and
//     capture() throws device_error; no random draw and no optimizer step
//     (capturing_device_graph(): each throws device_error), since the graph
//     would replay their host values unchanged.
// After a failed capture nothing stays captured, and the thread's stream and
// the allocator are as before.

#include <string>
#include <utility>

#include "mamclip/core/cuda/caching_allocator.hpp"
#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/device.hpp"

namespace mamclip::cuda {

class Graph {
 public:
  Graph() = default;
  ~Graph() {
    try {
      reset();
    } catch (...) {  // a destructor must not throw; the driver reclaims the rest at exit
    }
    if (stream_) (void)cudaStreamDestroy(stream_);
  }
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  // Records the device work of region() on the current device (after the
  // work already queued on its current stream) instead of running it. A
  // previous capture of this graph is dropped first.
  template <class F>
  void capture(F&& region) {
    reset();
    device_ = current_device();
    DeviceGuard device_guard(device_);
    if (!stream_) MAMCLIP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    follow(current_stream(device_), stream_);
    CachingAllocatorInterface& allocator = caching_allocator();
    const auto key = reinterpret_cast<uintptr_t>(stream_);
    pool_ = allocator.begin_capture_pool(device_, key);
    cudaGraph_t recorded = nullptr;
    cudaError_t ended = cudaSuccess;
    {
      StreamGuard stream_guard(stream_, device_);
      CaptureDepth depth;
      const cudaError_t began = cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal);
      if (began != cudaSuccess) {
        allocator.end_capture_pool(device_, key);
        fail(::mamclip::detail::str_cat("cudaStreamBeginCapture failed: ", cudaGetErrorString(began)));
      }
      try {
        std::forward<F>(region)();
      } catch (const device_error& e) {
        abandon(allocator, key);
        fail(e.what());
      } catch (...) {
        abandon(allocator, key);
        reset();
        throw;
      }
      ended = cudaStreamEndCapture(stream_, &recorded);
      allocator.end_capture_pool(device_, key);
    }
    if (ended != cudaSuccess || !recorded) {
      if (recorded) (void)cudaGraphDestroy(recorded);
      (void)cudaGetLastError();
      fail(::mamclip::detail::str_cat(
          "CUDA invalidated the capture (", cudaGetErrorString(ended),
          "): something in the region synchronised with the host or used a stream outside the capture"));
    }
    graph_ = recorded;
    const cudaError_t made = cudaGraphInstantiate(&exec_, graph_, 0);
    if (made != cudaSuccess) {
      (void)cudaGetLastError();
      fail(::mamclip::detail::str_cat("cudaGraphInstantiate failed: ", cudaGetErrorString(made)));
    }
  }

  // Runs the recorded work on the capture device's current stream, ordered
  // after what is queued there.
  void replay() {
    MAMCLIP_CHECK(exec_ != nullptr, device_error, "cuda::Graph::replay: nothing captured (call capture() first)");
    DeviceGuard guard(device_);
    MAMCLIP_CUDA_CHECK(cudaGraphLaunch(exec_, current_stream(device_)));
  }

  bool captured() const { return exec_ != nullptr; }

  // Drops the recorded work and gives the graph's memory pool back (blocks
  // still held by tensors are returned when those are freed).
  void reset() {
    if (exec_ || graph_) MAMCLIP_CUDA_CHECK(cudaDeviceSynchronize());  // no replay may still be running
    if (exec_) (void)cudaGraphExecDestroy(exec_);
    if (graph_) (void)cudaGraphDestroy(graph_);
    exec_ = nullptr;
    graph_ = nullptr;
    if (pool_) {
      const uint64_t pool = std::exchange(pool_, 0);
      caching_allocator().release_capture_pool(pool);
    }
  }

 private:
  // capturing_device_graph() is true on this thread for the scope.
  struct CaptureDepth {
    CaptureDepth() { ++::mamclip::detail::device_graph_captures(); }
    ~CaptureDepth() { --::mamclip::detail::device_graph_captures(); }
    CaptureDepth(const CaptureDepth&) = delete;
    CaptureDepth& operator=(const CaptureDepth&) = delete;
  };

  // `waiting` starts after the work queued on `first` so far.
  static void follow(cudaStream_t first, cudaStream_t waiting) {
    cudaEvent_t ready = nullptr;
    MAMCLIP_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    const cudaError_t recorded = cudaEventRecord(ready, first);
    const cudaError_t waited = recorded == cudaSuccess ? cudaStreamWaitEvent(waiting, ready, 0) : recorded;
    (void)cudaEventDestroy(ready);
    MAMCLIP_CUDA_CHECK(waited);
  }

  // Ends a capture the region left by an exception; what it recorded is dropped.
  void abandon(CachingAllocatorInterface& allocator, uintptr_t key) {
    cudaGraph_t partial = nullptr;
    (void)cudaStreamEndCapture(stream_, &partial);
    if (partial) (void)cudaGraphDestroy(partial);
    (void)cudaGetLastError();
    allocator.end_capture_pool(device_, key);
  }

  // Gives the pool back and throws; the message says what a region may not do.
  [[noreturn]] void fail(const std::string& why) {
    reset();
    throw device_error(::mamclip::detail::str_cat(
        "cuda::Graph::capture on cuda:", device_, ": ", why,
        ". A captured region may not synchronise with the host (.item(), to(kCPU), to_vector, pageable "
        "host-to-device copies), draw random numbers or step an optimizer; run it once eagerly before capturing"));
  }

  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
  uint64_t pool_ = 0;
};

}  // namespace mamclip::cuda
