#pragma once
// Collective communication between the processes of a data-parallel job.
//
// A Communicator is one group of ranks (0 .. world_size-1). Backends:
//   LocalCommunicator  world size 1, no library needed (the default)
//   MpiCommunicator    dist/mpi.hpp: Open MPI, CPU tensors (link mamclip::mpi)
//   NcclCommunicator   dist/nccl.hpp: NCCL, CUDA tensors (link mamclip::nccl)
// The tensor collectives below take tensors on any device: a tensor that is
// not where its communicator works (memory()) goes through a staging copy, so
// CUDA tensors travel over MPI through host memory.
// Collectives are called by every rank in the same order (as in MPI). Each
// waits at most timeout(); past it, dist_timeout_error names the collective
// and the ranks that did not arrive, so a dead or hung peer stops the job
// instead of hanging it.

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "mamclip/core/dtype.hpp"
#include "mamclip/core/error.hpp"
#include "mamclip/core/tensor.hpp"

namespace mamclip::dist {

// A collective failed (a peer left, configurations differ across ranks).
struct dist_error : error {
  using error::error;
};
// A collective did not complete within the communicator's timeout.
struct dist_timeout_error : dist_error {
  using dist_error::dist_error;
};

enum class ReduceOp { sum, max, min };

// An operation in flight (all_reduce_async).
class Work {
 public:
  virtual ~Work() = default;
  // True when complete; drives progress. Never blocks.
  virtual bool test() = 0;
  // Blocks until complete or the communicator's timeout (dist_timeout_error).
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // This process's index among the ranks on its machine (its GPU, for NCCL).
  virtual int local_rank() const = 0;
  virtual std::string backend() const = 0;  // "local", "mpi", "nccl"
  // Where the raw collectives' buffers live: host memory (local, mpi) or the
  // communicator's GPU (nccl).
  virtual Device memory() const { return kCPU; }

  // Raw collectives over `count` elements of `dtype` (host memory for local
  // and mpi, device memory for nccl).
  virtual void all_reduce(void* data, int64_t count, DType dtype, ReduceOp op) = 0;
  virtual std::unique_ptr<Work> all_reduce_async(void* data, int64_t count, DType dtype, ReduceOp op) = 0;
  virtual void broadcast(void* data, int64_t count, DType dtype, int root) = 0;
  // Rank r contributes counts[r] elements (its `send`); `recv` receives all of
  // them in rank order (sum(counts) elements).
  virtual void all_gather(const void* send, void* recv, const std::vector<int64_t>& counts, DType dtype) = 0;
  virtual void barrier() = 0;

  // A new communicator over the same ranks whose collectives never interleave
  // with this one's (gradient buckets run beside the loss's gathers).
  virtual std::unique_ptr<Communicator> duplicate() const = 0;

  std::chrono::milliseconds timeout() const { return timeout_; }
  void set_timeout(std::chrono::milliseconds t) { timeout_ = t; }

 protected:
  std::chrono::milliseconds timeout_{std::chrono::minutes(10)};
};

// World size 1: every collective is a copy or nothing.
class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  int local_rank() const override { return 0; }
  std::string backend() const override { return "local"; }
  void all_reduce(void*, int64_t, DType, ReduceOp) override {}
  std::unique_ptr<Work> all_reduce_async(void*, int64_t, DType, ReduceOp) override {
    struct Done final : Work {
      bool test() override { return true; }
      void wait() override {}
    };
    return std::make_unique<Done>();
  }
  void broadcast(void*, int64_t, DType, int root) override {
    MAMCLIP_CHECK(root == 0, value_error, "broadcast: root is ", root, "; the world has only rank 0");
  }
  void all_gather(const void* send, void* recv, const std::vector<int64_t>& counts, DType dtype) override {
    MAMCLIP_CHECK(counts.size() == 1, value_error, "all_gather: ", counts.size(), " counts for a world of 1");
    if (counts[0] > 0 && send != recv) std::memcpy(recv, send, static_cast<size_t>(counts[0]) * dtype_size(dtype));
  }
  void barrier() override {}
  std::unique_ptr<Communicator> duplicate() const override { return std::make_unique<LocalCommunicator>(); }
};

namespace detail {
// The timeout of a new communicator: MAMCLIP_DIST_TIMEOUT (seconds) when set.
inline std::chrono::milliseconds timeout_from_environment(std::chrono::milliseconds fallback) {
  const char* env = std::getenv("MAMCLIP_DIST_TIMEOUT");
  if (!env || !*env) return fallback;
  char* end = nullptr;
  const double s = std::strtod(env, &end);
  MAMCLIP_CHECK(end != env && *end == '\0' && s > 0, value_error, "MAMCLIP_DIST_TIMEOUT is '", env,
                "'; expected a positive number of seconds");
  return std::chrono::milliseconds(static_cast<int64_t>(s * 1000.0 + 0.5));
}
}  // namespace detail

// ---- Tensor collectives ----------------------------------------------------

namespace detail {
template <class T>
void check_dense(const Tensor<T>& t, const char* op) {
  MAMCLIP_CHECK(t.defined(), value_error, op, ": the tensor is undefined");
  MAMCLIP_CHECK(t.is_contiguous(), value_error, op, ": the tensor of shape ", shape_str(t.shape()),
                " is not contiguous; call .contiguous() first");
}

// `t` itself when it lives on `memory`, else a copy there.
template <class T>
Tensor<T> on_memory(const Tensor<T>& t, Device memory) {
  if (t.device() == memory) return t;
  Tensor<T> c = Tensor<T>::empty(t.shape(), memory);
  c.copy_(t);
  return c;
}

// Runs `collective` on t's data where comm can reach it, and writes a staged
// result back into t.
template <class T, class F>
void in_place_on(Communicator& comm, Tensor<T>& t, F&& collective) {
  Tensor<T> buf = on_memory(t, comm.memory());
  collective(buf.data_ptr());
  if (buf.device() != t.device()) t.copy_(buf);
}
}  // namespace detail

// In place, over ranks: sum, max or min.
template <class T>
void all_reduce(Communicator& comm, Tensor<T>& t, ReduceOp op = ReduceOp::sum) {
  detail::check_dense(t, "all_reduce");
  detail::in_place_on(comm, t, [&](T* data) { comm.all_reduce(data, t.numel(), dtype_v<T>, op); });
}

template <class T>
void all_reduce_mean(Communicator& comm, Tensor<T>& t) {
  if (!t.device().is_cpu()) {  // the division runs on the host
    detail::check_dense(t, "all_reduce_mean");
    Tensor<T> h = detail::on_memory(t, kCPU);
    all_reduce_mean(comm, h);
    t.copy_(h);
    return;
  }
  all_reduce(comm, t, ReduceOp::sum);
  if (comm.world_size() > 1) {
    T* p = t.data_ptr();
    const double inv = 1.0 / comm.world_size();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<T>(static_cast<double>(p[i]) * inv);
  }
}

// Sum (or max/min) of host scalars over ranks.
inline double all_reduce_scalar(Communicator& comm, double v, ReduceOp op = ReduceOp::sum) {
  comm.all_reduce(&v, 1, DType::f64, op);
  return v;
}
inline int64_t all_reduce_scalar(Communicator& comm, int64_t v, ReduceOp op = ReduceOp::sum) {
  comm.all_reduce(&v, 1, DType::i64, op);
  return v;
}

template <class T>
void broadcast(Communicator& comm, Tensor<T>& t, int root = 0) {
  detail::check_dense(t, "broadcast");
  detail::in_place_on(comm, t, [&](T* data) { comm.broadcast(data, t.numel(), dtype_v<T>, root); });
}

// Every rank's value of a host integer, in rank order.
inline std::vector<int64_t> all_gather_scalar(Communicator& comm, int64_t v) {
  std::vector<int64_t> out(static_cast<size_t>(comm.world_size()));
  comm.all_gather(&v, out.data(), std::vector<int64_t>(out.size(), 1), DType::i64);
  return out;
}

// Concatenation along dim 0 of every rank's `t` (first dimensions may differ;
// the others must agree). No gradient: see gather_with_grad in parallel.hpp.
// rows (optional): receives every rank's row count, in rank order.
template <class T>
Tensor<T> all_gather(Communicator& comm, const Tensor<T>& t, std::vector<int64_t>* rows = nullptr) {
  Tensor<T> local = t.contiguous();
  detail::check_dense(local, "all_gather");
  MAMCLIP_CHECK(local.dim() >= 1, shape_error, "all_gather: expected a tensor with a first dimension, got shape ",
                shape_str(local.shape()));
  // From the shape, not numel / rows: a rank with no rows still knows (and
  // must agree on) the row width, or its counts for the others would be 0.
  int64_t row = 1;
  for (int64_t d = 1; d < local.dim(); ++d) row *= local.size(d);
  // (rows, row width) of every rank in one collective. Every rank checks
  // every rank's row width (rows or not), so shapes that differ give an
  // error on all ranks rather than a garbled result.
  const int64_t mine[2] = {local.size(0), row};
  std::vector<int64_t> sizes(2 * static_cast<size_t>(comm.world_size()));
  comm.all_gather(mine, sizes.data(), std::vector<int64_t>(static_cast<size_t>(comm.world_size()), 2), DType::i64);
  Shape shape = local.shape();
  int64_t total = 0;
  std::vector<int64_t> counts;
  if (rows) rows->clear();
  for (size_t r = 0; r < sizes.size() / 2; ++r) {
    const int64_t n = sizes[2 * r], width = sizes[2 * r + 1];
    MAMCLIP_CHECK(width == row, shape_error, "all_gather: rank ", r, " sends rows of ", width, " elements, rank ",
                  comm.rank(), " rows of ", row, " (shape ", shape_str(local.shape()), ")");
    total += n;
    counts.push_back(n * row);
    if (rows) rows->push_back(n);
  }
  shape[0] = total;
  const Tensor<T> send = detail::on_memory(local, comm.memory());
  Tensor<T> out = Tensor<T>::empty(shape, comm.memory());
  comm.all_gather(send.data_ptr(), out.data_ptr(), counts, dtype_v<T>);
  return detail::on_memory(out, local.device());
}

// FNV-1a of a string: what check_same compares.
inline int64_t fingerprint(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return static_cast<int64_t>(h);
}

// Throws dist_error on every rank when `value` differs between ranks, naming
// `what` and the ranks that differ from rank 0 (e.g. the model configuration
// at start, or the step a resumed checkpoint holds).
inline void check_same(Communicator& comm, const std::string& what, const std::string& value) {
  const std::vector<int64_t> all = all_gather_scalar(comm, fingerprint(value));
  std::string differ;
  for (size_t r = 1; r < all.size(); ++r)
    if (all[r] != all[0]) differ += (differ.empty() ? "" : ", ") + std::to_string(r);
  MAMCLIP_CHECK(differ.empty(), dist_error, "the ", what, " differs across ranks: rank(s) ", differ,
                " disagree with rank 0 (this is rank ", comm.rank(), ", whose value is: ",
                value.size() > 200 ? value.substr(0, 200) + "..." : value, ")");
}

}  // namespace mamclip::dist
