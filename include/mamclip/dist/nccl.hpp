#pragma once
// NcclCommunicator: the Communicator of CUDA device memory over NCCL. Link
// mamclip::nccl (cmake/dist.cmake); plain C++ (no CUDA compiler needed).
//
//   auto boot = communicator_from_environment();  // mpirun (MPI) or torchrun (TCP)
//   NcclCommunicator comm(*boot);                  // rank r on GPU local_rank
//
// The NCCL unique id travels from rank 0 through the bootstrap communicator;
// ranks and local ranks are the bootstrap's. Each communicator has its own
// stream; every collective first waits there for the work already queued on
// the device's current stream (the kernels that wrote its data), and is
// followed by an event that wait()/test() poll with the timeout. NCCL cannot say which rank is missing:
// in a world of two it is the other one, otherwise the message says so. A
// timeout aborts the NCCL communicator (ncclCommAbort), which releases the
// kernels stuck on the GPU; the communicator is then unusable.

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "mamclip/core/cuda/device.cuh"
#include "mamclip/dist/communicator.hpp"

namespace mamclip::dist {

namespace detail {

inline void nccl_check(ncclResult_t r, const char* call, const std::string& where) {
  if (r != ncclSuccess && r != ncclInProgress)
    throw dist_error("nccl " + where + ": " + call + " failed: " + ncclGetErrorString(r));
}
inline void cuda_check_dist(cudaError_t e, const char* call, const std::string& where) {
  if (e != cudaSuccess) throw dist_error("nccl " + where + ": " + call + " failed: " + cudaGetErrorString(e));
}
#define MAMCLIP_NCCL_CHECK(call, where) ::mamclip::dist::detail::nccl_check((call), #call, (where))
#define MAMCLIP_NCCL_CUDA_CHECK(call, where) ::mamclip::dist::detail::cuda_check_dist((call), #call, (where))

inline ncclDataType_t nccl_datatype(DType d) {
  switch (d) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::f16: return ncclFloat16;
    case DType::bf16: return ncclBfloat16;
    case DType::i64: return ncclInt64;
    case DType::i32: return ncclInt32;
    case DType::u8: case DType::boolean: return ncclUint8;
  }
  throw dtype_error("nccl: unknown dtype");
}

inline ncclRedOp_t nccl_op(ReduceOp op, DType d) {
  // A bool stays a bool: sum is logical or (max of 0/1).
  if (d == DType::boolean && op == ReduceOp::sum) return ncclMax;
  switch (op) {
    case ReduceOp::sum: return ncclSum;
    case ReduceOp::max: return ncclMax;
    case ReduceOp::min: return ncclMin;
  }
  return ncclSum;
}

// The NCCL communicator, its device, stream and scratch; shared by the
// communicator and its Works.
struct NcclState {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  int device = 0;
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  int64_t seq = 0;
  int32_t* scratch = nullptr;  // barrier's one element
  cudaEvent_t inputs_ready = nullptr;  // recorded on the current stream before each collective
  std::string poisoned;

  ~NcclState() {
    int current = 0;
    if (cudaGetDevice(&current) == cudaSuccess && current != device) cudaSetDevice(device);
    // An aborted communicator has already been released.
    if (comm && poisoned.empty()) ncclCommDestroy(comm);
    if (scratch) cudaFree(scratch);
    if (inputs_ready) cudaEventDestroy(inputs_ready);
    if (stream) cudaStreamDestroy(stream);
    if (current != device) cudaSetDevice(current);
  }

  std::string where(const char* op, int64_t s, int64_t count, DType dtype) const {
    return std::string(op) + " #" + std::to_string(s) + " (" + std::to_string(count) + " " +
           std::string(dtype_name(dtype)) + " elements) on rank " + std::to_string(rank) + " of " +
           std::to_string(size);
  }

  void check_usable(const char* op) const {
    MAMCLIP_CHECK(poisoned.empty(), dist_error, "nccl ", op, " on rank ", rank,
                  ": this communicator is unusable after an earlier failure (", poisoned,
                  "); the job must be restarted");
  }
};

class NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<NcclState> state, std::string what, std::chrono::milliseconds timeout)
      : state_(std::move(state)), what_(std::move(what)), timeout_(timeout) {
    MAMCLIP_NCCL_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming), what_);
    const cudaError_t e = cudaEventRecord(event_, state_->stream);
    if (e != cudaSuccess) {
      cudaEventDestroy(event_);
      MAMCLIP_NCCL_CUDA_CHECK(e, what_);
    }
  }
  NcclWork(const NcclWork&) = delete;
  NcclWork& operator=(const NcclWork&) = delete;
  ~NcclWork() override {
    if (!done_ && state_->poisoned.empty()) {
      try {
        wait();
      } catch (const error&) {
      }
    }
    cudaEventDestroy(event_);
  }

  bool test() override {
    if (done_) return true;
    state_->check_usable("test");
    const cudaError_t e = cudaEventQuery(event_);
    if (e == cudaErrorNotReady) {
      check_async_error();
      return false;
    }
    MAMCLIP_NCCL_CUDA_CHECK(e, what_);
    done_ = true;
    return true;
  }

  void wait() override {
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    for (int polls = 0; !test(); ++polls) {
      if (clock::now() - start >= timeout_) timed_out(std::chrono::duration<double>(clock::now() - start).count());
      if (polls < 200) std::this_thread::yield();
      else std::this_thread::sleep_for(std::chrono::microseconds(polls < 2000 ? 50 : 200));
    }
  }

 private:
  void check_async_error() {
    ncclResult_t async = ncclSuccess;
    MAMCLIP_NCCL_CHECK(ncclCommGetAsyncError(state_->comm, &async), what_);
    if (async != ncclSuccess && async != ncclInProgress) {
      ncclCommAbort(state_->comm);
      state_->poisoned = what_ + ": " + ncclGetErrorString(async);
      throw dist_error("nccl " + what_ + ": " + ncclGetErrorString(async));
    }
  }

  [[noreturn]] void timed_out(double waited_s) {
    // Abort frees the GPU from kernels that wait for a peer that never comes.
    ncclCommAbort(state_->comm);
    state_->poisoned = what_ + " timed out";
    const std::string who =
        state_->size == 2 ? "rank " + std::to_string(1 - state_->rank) + " did not arrive"
                          : "NCCL does not report which rank(s) did not arrive";
    throw dist_timeout_error("nccl " + what_ + " timed out after " + std::to_string(waited_s) + " s (timeout " +
                             std::to_string(timeout_.count() / 1000.0) + " s): " + who);
  }

  std::shared_ptr<NcclState> state_;
  std::string what_;
  std::chrono::milliseconds timeout_;
  cudaEvent_t event_ = nullptr;
  bool done_ = false;
};

}  // namespace detail

class NcclCommunicator final : public Communicator {
 public:
  // Collective over bootstrap's ranks: rank 0 makes the NCCL id and
  // broadcasts it. `device` defaults to the local rank's GPU.
  explicit NcclCommunicator(Communicator& bootstrap, int device = -1) : state_(std::make_shared<detail::NcclState>()) {
    state_->rank = bootstrap.rank();
    state_->size = bootstrap.world_size();
    state_->local_rank = bootstrap.local_rank();
    state_->device = device >= 0 ? device : state_->local_rank;
    timeout_ = bootstrap.timeout();
    const std::string where = "NcclCommunicator on rank " + std::to_string(state_->rank);
    int devices = 0;
    MAMCLIP_NCCL_CUDA_CHECK(cudaGetDeviceCount(&devices), where);
    MAMCLIP_CHECK(state_->device < devices, device_error, "NcclCommunicator: rank ", state_->rank, " wants GPU ",
                  state_->device, " but this machine has ", devices, " (one GPU per local rank)");
    ncclUniqueId id{};
    if (state_->rank == 0) MAMCLIP_NCCL_CHECK(ncclGetUniqueId(&id), where);
    bootstrap.broadcast(&id, static_cast<int64_t>(sizeof(id)), DType::u8, 0);
    MAMCLIP_NCCL_CUDA_CHECK(cudaSetDevice(state_->device), where);
    MAMCLIP_NCCL_CUDA_CHECK(cudaStreamCreateWithFlags(&state_->stream, cudaStreamNonBlocking), where);
    MAMCLIP_NCCL_CUDA_CHECK(cudaEventCreateWithFlags(&state_->inputs_ready, cudaEventDisableTiming), where);
    MAMCLIP_NCCL_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&state_->scratch), sizeof(int32_t)), where);
    MAMCLIP_NCCL_CHECK(ncclCommInitRank(&state_->comm, state_->size, id, state_->rank), where);
  }

  int rank() const override { return state_->rank; }
  int world_size() const override { return state_->size; }
  int local_rank() const override { return state_->local_rank; }
  std::string backend() const override { return "nccl"; }
  Device memory() const override { return Device::cuda(state_->device); }
  int device() const { return state_->device; }
  cudaStream_t stream() const { return state_->stream; }

  void all_reduce(void* data, int64_t count, DType dtype, ReduceOp op) override {
    all_reduce_async(data, count, dtype, op)->wait();
  }

  std::unique_ptr<Work> all_reduce_async(void* data, int64_t count, DType dtype, ReduceOp op) override {
    const std::string what = begin("all_reduce", count, dtype);
    MAMCLIP_NCCL_CHECK(ncclAllReduce(data, data, static_cast<size_t>(count), detail::nccl_datatype(dtype),
                                     detail::nccl_op(op, dtype), state_->comm, state_->stream),
                       what);
    return std::make_unique<detail::NcclWork>(state_, what, timeout_);
  }

  void broadcast(void* data, int64_t count, DType dtype, int root) override {
    MAMCLIP_CHECK(root >= 0 && root < state_->size, value_error, "broadcast: root is ", root, "; the world has ranks 0..",
                  state_->size - 1);
    const std::string what = begin("broadcast", count, dtype);
    MAMCLIP_NCCL_CHECK(ncclBroadcast(data, data, static_cast<size_t>(count), detail::nccl_datatype(dtype), root,
                                     state_->comm, state_->stream),
                       what);
    detail::NcclWork(state_, what, timeout_).wait();
  }

  // Equal counts: ncclAllGather. Unequal: one broadcast per rank from its own
  // slot, grouped into a single launch (NCCL has no all-gather-v).
  void all_gather(const void* send, void* recv, const std::vector<int64_t>& counts, DType dtype) override {
    MAMCLIP_CHECK(counts.size() == static_cast<size_t>(state_->size), value_error, "all_gather: ", counts.size(),
                  " counts for a world of ", state_->size);
    int64_t total = 0;
    bool equal = true;
    for (int64_t c : counts) {
      MAMCLIP_CHECK(c >= 0, value_error, "all_gather: negative count ", c);
      total += c;
      equal = equal && c == counts[0];
    }
    const std::string what = begin("all_gather", total, dtype);
    const ncclDataType_t type = detail::nccl_datatype(dtype);
    if (equal) {
      MAMCLIP_NCCL_CHECK(ncclAllGather(send, recv, static_cast<size_t>(counts[0]), type, state_->comm, state_->stream),
                         what);
    } else {
      const size_t bytes = dtype_size(dtype);
      MAMCLIP_NCCL_CHECK(ncclGroupStart(), what);
      int64_t offset = 0;
      for (int r = 0; r < state_->size; ++r) {
        const int64_t c = counts[static_cast<size_t>(r)];
        if (c > 0) {
          void* slot = static_cast<char*>(recv) + static_cast<size_t>(offset) * bytes;
          const ncclResult_t res = ncclBroadcast(r == state_->rank ? send : slot, slot, static_cast<size_t>(c), type, r,
                                                 state_->comm, state_->stream);
          if (res != ncclSuccess) {
            ncclGroupEnd();
            MAMCLIP_NCCL_CHECK(res, what);
          }
        }
        offset += c;
      }
      MAMCLIP_NCCL_CHECK(ncclGroupEnd(), what);
    }
    detail::NcclWork(state_, what, timeout_).wait();
  }

  void barrier() override {
    const std::string what = begin("barrier", 1, DType::i32);
    MAMCLIP_NCCL_CHECK(ncclAllReduce(state_->scratch, state_->scratch, 1, ncclInt32, ncclSum, state_->comm,
                                     state_->stream),
                       what);
    detail::NcclWork(state_, what, timeout_).wait();
  }

  // ncclCommSplit with one colour: the same ranks, a communicator of its own.
  std::unique_ptr<Communicator> duplicate() const override {
    state_->check_usable("duplicate");
    auto dup = std::unique_ptr<NcclCommunicator>(new NcclCommunicator());
    auto& s = *dup->state_;
    s.rank = state_->rank;
    s.size = state_->size;
    s.local_rank = state_->local_rank;
    s.device = state_->device;
    const std::string where = "duplicate on rank " + std::to_string(s.rank);
    MAMCLIP_NCCL_CUDA_CHECK(cudaSetDevice(s.device), where);
    MAMCLIP_NCCL_CUDA_CHECK(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking), where);
    MAMCLIP_NCCL_CUDA_CHECK(cudaEventCreateWithFlags(&s.inputs_ready, cudaEventDisableTiming), where);
    MAMCLIP_NCCL_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&s.scratch), sizeof(int32_t)), where);
    MAMCLIP_NCCL_CHECK(ncclCommSplit(state_->comm, 0, s.rank, &s.comm, nullptr), where);
    dup->set_timeout(timeout_);
    return dup;
  }

 private:
  NcclCommunicator() : state_(std::make_shared<detail::NcclState>()) {}

  std::string begin(const char* op, int64_t count, DType dtype) {
    state_->check_usable(op);
    MAMCLIP_CHECK(count >= 0, value_error, op, ": negative count ", count);
    MAMCLIP_NCCL_CUDA_CHECK(cudaSetDevice(state_->device), op);
    std::string what = state_->where(op, ++state_->seq, count, dtype);
    // Our kernels write on the current stream; NCCL's stream does not
    // synchronise with it (non-blocking), so order it explicitly.
    MAMCLIP_NCCL_CUDA_CHECK(cudaEventRecord(state_->inputs_ready, cuda::current_stream(state_->device)), what);
    MAMCLIP_NCCL_CUDA_CHECK(cudaStreamWaitEvent(state_->stream, state_->inputs_ready, 0), what);
    return what;
  }

  std::shared_ptr<detail::NcclState> state_;
};

}  // namespace mamclip::dist
