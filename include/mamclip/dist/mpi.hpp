#pragma once
// MpiCommunicator: the Communicator of CPU tensors over MPI (Open MPI 4.1).
// Link mamclip::mpi (cmake/dist.cmake), start the job with
//   mpirun -np 4 ./train ...
// and build the communicator with communicator_from_environment().
//
// Every collective is non-blocking MPI (MPI_Iallreduce, MPI_Ibcast,
// MPI_Iallgatherv, MPI_Ibarrier) polled with MPI_Test until it completes or
// timeout() passes, so a hung or dead peer turns into dist_timeout_error
// instead of a job that hangs forever.
//
// Naming the ranks that did not arrive: each communicator has a second,
// private MPI communicator (a dup of the first) over which every rank, on
// entering its k-th collective, sends k to each peer (one 8-byte eager
// MPI_Isend per peer). The sends are drained with MPI_Iprobe at the next
// collective and at a timeout; a peer whose last notice is below k has not
// reached collective k. That costs n-1 tiny messages per collective, nothing
// next to a gradient all-reduce, and needs no extra thread: a hung peer is
// precisely one that sends nothing.
//
// After a timeout the communicator is poisoned: the collective still sits in
// MPI (collectives cannot be cancelled) and may yet write into its buffer, so
// every later call throws dist_error, and the destructor calls MPI_Abort when
// such a collective is still in flight (MPI_Finalize would wait for it
// forever); mpirun then tears the whole job down.
//
// MPI is initialised by the first MpiCommunicator (when the program did not do
// it) and finalised when the last one, duplicates included, is destroyed. MPI
// cannot be initialised twice in a process: keep one communicator alive for
// the program's whole run.

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "mamclip/dist/communicator.hpp"
#include "mamclip/dist/tcp.hpp"

namespace mamclip::dist {

namespace detail {

inline std::string mpi_error_string(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return "MPI error code " + std::to_string(code);
  return std::string(buf, static_cast<size_t>(len));
}

// The process's MPI library. One instance is shared by every MpiCommunicator;
// the last owner finalises MPI when this process initialised it.
class MpiRuntime {
 public:
  static std::shared_ptr<MpiRuntime> acquire() {
    static std::mutex mutex;
    static std::weak_ptr<MpiRuntime> current;
    std::lock_guard<std::mutex> lock(mutex);
    if (auto p = current.lock()) return p;
    int finalized = 0;
    MPI_Finalized(&finalized);
    MAMCLIP_CHECK(!finalized, dist_error,
                  "MpiCommunicator: MPI was already finalised (the last MpiCommunicator was destroyed) and cannot be "
                  "initialised twice in a process; keep one communicator alive for the whole program");
    auto rt = std::shared_ptr<MpiRuntime>(new MpiRuntime());
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      // SERIALIZED: collectives may be issued by any thread, one at a time.
      const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &rt->provided_);
      MAMCLIP_CHECK(rc == MPI_SUCCESS, dist_error, "MpiCommunicator: MPI_Init_thread failed: ", mpi_error_string(rc));
      rt->we_initialized_ = true;
      // Errors of non-blocking collectives can be raised on MPI_COMM_WORLD
      // (Open MPI's MPI_Test), whose default handler aborts the job; MPI is
      // ours, so errors come back as codes there too.
      MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    } else {
      MPI_Query_thread(&rt->provided_);
    }
    current = rt;
    return rt;
  }

  ~MpiRuntime() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (we_initialized_ && !finalized) MPI_Finalize();
  }

  int thread_level() const { return provided_; }

 private:
  MpiRuntime() = default;
  bool we_initialized_ = false;
  int provided_ = MPI_THREAD_SINGLE;
};

// What a collective is, for messages: "all_reduce #12 (1000 float32 elements)".
struct MpiOp {
  const char* name;
  int64_t seq;
  int64_t count;
  DType dtype;
  std::string describe() const {
    if (std::string_view(name) == "barrier") return "barrier #" + std::to_string(seq);
    return std::string(name) + " #" + std::to_string(seq) + " (" + std::to_string(count) + " " +
           std::string(dtype_name(dtype)) + " elements)";
  }
};

// A communicator's MPI state, shared by the communicator and its Works (a Work
// may outlive the call that made it, never the state it polls).
struct MpiState {
  std::shared_ptr<MpiRuntime> runtime;
  MPI_Comm comm = MPI_COMM_NULL;
  MPI_Comm arrivals = MPI_COMM_NULL;  // collective sequence notices (see the file comment)
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  int64_t seq = 0;  // collectives started on this communicator
  std::vector<int64_t> peer_seq;  // the last sequence number each peer announced
  struct Notice {
    int64_t seq;
    std::vector<MPI_Request> requests;
  };
  std::deque<Notice> notices;  // sends in flight; deque keeps each seq's address stable
  std::string poisoned;  // why this communicator can no longer be used; empty while healthy
  std::vector<MPI_Request> abandoned;  // collectives that timed out, still in MPI

  ~MpiState() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    // A late peer may yet complete what timed out here; give it a second.
    int in_flight = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    for (MPI_Request& r : abandoned) {
      int done = 0;
      while (r != MPI_REQUEST_NULL && MPI_Test(&r, &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && !done &&
             std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      if (r != MPI_REQUEST_NULL && !done) ++in_flight;
    }
    if (in_flight > 0) {
      std::fprintf(stderr,
                   "mamclip: rank %d destroys an MpiCommunicator with %d collective(s) still in flight after a "
                   "timeout (%s); aborting the job with MPI_Abort\n",
                   rank, in_flight, poisoned.c_str());
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    drain_notices();
    // Small eager sends are complete locally; one that is not (its peer died)
    // is released without waiting for it.
    for (Notice& n : notices)
      for (MPI_Request& r : n.requests)
        if (r != MPI_REQUEST_NULL) MPI_Request_free(&r);
    if (arrivals != MPI_COMM_NULL) MPI_Comm_free(&arrivals);
    if (comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
  }

  [[noreturn]] void fail(const MpiOp& op, int code) const {
    throw dist_error(std::string("mpi ") + op.describe() + " on rank " + std::to_string(rank) + " of " +
                     std::to_string(size) + ": " + mpi_error_string(code));
  }
  void check(int code, const MpiOp& op) const {
    if (code != MPI_SUCCESS) fail(op, code);
  }

  void check_usable(const char* name) const {
    MAMCLIP_CHECK(poisoned.empty(), dist_error, "mpi ", name, " on rank ", rank,
                  ": this communicator is unusable after an earlier failure (", poisoned,
                  "); the job must be restarted");
  }

  // Receives every sequence notice that has arrived. Never blocks.
  void drain_notices() {
    if (arrivals == MPI_COMM_NULL) return;
    for (;;) {
      int flag = 0;
      MPI_Status status;
      if (MPI_Iprobe(MPI_ANY_SOURCE, 0, arrivals, &flag, &status) != MPI_SUCCESS || !flag) return;
      int64_t v = 0;
      if (MPI_Recv(&v, 1, MPI_INT64_T, status.MPI_SOURCE, 0, arrivals, MPI_STATUS_IGNORE) != MPI_SUCCESS) return;
      int64_t& last = peer_seq[static_cast<size_t>(status.MPI_SOURCE)];
      last = std::max(last, v);
    }
  }

  // Starts collective number seq+1: announces it to the peers and returns its op.
  MpiOp begin(const char* name, int64_t count, DType dtype) {
    check_usable(name);
    MpiOp op{name, ++seq, count, dtype};
    if (size > 1) {
      while (!notices.empty()) {
        int done = 0;
        auto& reqs = notices.front().requests;
        check(MPI_Testall(static_cast<int>(reqs.size()), reqs.data(), &done, MPI_STATUSES_IGNORE), op);
        if (!done) break;
        notices.pop_front();
      }
      drain_notices();
      Notice& n = notices.emplace_back(Notice{op.seq, {}});
      n.requests.reserve(static_cast<size_t>(size - 1));
      for (int p = 0; p < size; ++p) {
        if (p == rank) continue;
        n.requests.push_back(MPI_REQUEST_NULL);
        check(MPI_Isend(&n.seq, 1, MPI_INT64_T, p, 0, arrivals, &n.requests.back()), op);
      }
    }
    return op;
  }

  // The ranks that had not announced `op` when it timed out.
  std::string missing_ranks(const MpiOp& op) {
    drain_notices();
    std::string missing;
    for (int p = 0; p < size; ++p) {
      if (p == rank || peer_seq[static_cast<size_t>(p)] >= op.seq) continue;
      missing += (missing.empty() ? "" : ", ") + std::to_string(p) + " (last seen in #" +
                 std::to_string(peer_seq[static_cast<size_t>(p)]) + ")";
    }
    return missing;
  }

  // Polls `request` until it completes or `timeout` passes. On timeout the
  // request is kept in `abandoned` and the communicator is poisoned.
  void wait(MPI_Request& request, const MpiOp& op, std::chrono::milliseconds timeout) {
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    // Spin briefly for the small collectives that finish in microseconds, then
    // sleep between polls so that a rank waiting for a slow peer leaves its
    // core to the peer (ranks often share cores) or to data loading.
    for (int polls = 0;; ++polls) {
      int done = 0;
      check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), op);
      if (done) return;
      const auto waited = clock::now() - start;
      if (waited >= timeout) break;
      if (polls < 200) std::this_thread::yield();
      else std::this_thread::sleep_for(std::chrono::microseconds(polls < 2000 ? 50 : 200));
    }
    const double waited_s = std::chrono::duration<double>(clock::now() - start).count();
    std::string missing = missing_ranks(op);
    std::string who = missing.empty() ? "every rank entered it, so it stalled inside MPI (do the ranks call "
                                        "collectives in the same order with the same counts?)"
                                      : "rank(s) " + missing + " did not arrive";
    std::string msg = "mpi " + op.describe() + " timed out on rank " + std::to_string(rank) + " of " +
                      std::to_string(size) + " after " + std::to_string(waited_s) + " s (timeout " +
                      std::to_string(timeout.count() / 1000.0) + " s): " + who;
    poisoned = op.describe() + " timed out";
    abandoned.push_back(request);
    request = MPI_REQUEST_NULL;
    throw dist_timeout_error(msg);
  }
};

inline MPI_Datatype mpi_datatype(DType d, const char* op, bool reduction) {
  switch (d) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i64: return MPI_INT64_T;
    case DType::i32: return MPI_INT32_T;
    case DType::u8: case DType::boolean: return MPI_UINT8_T;
    case DType::f16: case DType::bf16:
      // MPI has no 16-bit float: moved as raw 16-bit words, never reduced.
      MAMCLIP_CHECK(!reduction, dtype_error, op, ": MPI cannot reduce ", dtype_name(d),
                    "; reduce a float32 copy, or use NCCL (dist/nccl.hpp)");
      return MPI_UINT16_T;
  }
  throw dtype_error(std::string(op) + ": unknown dtype");
}

inline MPI_Op mpi_op(ReduceOp op, DType d) {
  // A bool stays a bool: sum is logical or.
  if (d == DType::boolean && op == ReduceOp::sum) return MPI_LOR;
  switch (op) {
    case ReduceOp::sum: return MPI_SUM;
    case ReduceOp::max: return MPI_MAX;
    case ReduceOp::min: return MPI_MIN;
  }
  return MPI_SUM;
}

inline int mpi_count(int64_t count, const char* op, const char* what) {
  MAMCLIP_CHECK(count >= 0 && count <= INT_MAX, value_error, op, ": ", what, " is ", count,
                "; MPI takes at most ", INT_MAX, " elements per call (split the buffer)");
  return static_cast<int>(count);
}

class MpiWork final : public Work {
 public:
  MpiWork(std::shared_ptr<MpiState> state, MPI_Request request, MpiOp op, std::chrono::milliseconds timeout)
      : state_(std::move(state)), request_(request), op_(op), timeout_(timeout) {}
  MpiWork(const MpiWork&) = delete;
  MpiWork& operator=(const MpiWork&) = delete;

  bool test() override {
    if (done_) return true;
    state_->check_usable(op_.name);
    int flag = 0;
    state_->check(MPI_Test(&request_, &flag, MPI_STATUS_IGNORE), op_);
    done_ = flag != 0;
    return done_;
  }

  void wait() override {
    if (done_) return;
    state_->check_usable(op_.name);
    state_->wait(request_, op_, timeout_);
    done_ = true;
  }

  // MPI may still write into the buffer: a Work dropped unfinished is waited
  // for, and one that cannot finish is handed to the state (which aborts).
  ~MpiWork() override {
    if (done_ || request_ == MPI_REQUEST_NULL) return;
    try {
      if (state_->poisoned.empty()) state_->wait(request_, op_, timeout_);
    } catch (const error&) {
    }
    if (request_ != MPI_REQUEST_NULL) state_->abandoned.push_back(request_);
  }

 private:
  std::shared_ptr<MpiState> state_;
  MPI_Request request_;
  MpiOp op_;
  std::chrono::milliseconds timeout_;
  bool done_ = false;
};

}  // namespace detail

class MpiCommunicator final : public Communicator {
 public:
  // Over every process of the job (a dup of MPI_COMM_WORLD); initialises MPI
  // if needed.
  MpiCommunicator() : MpiCommunicator(detail::MpiRuntime::acquire(), MPI_COMM_WORLD) {}
  // Over the ranks of `comm` (MPI must be initialised); `comm` is duplicated,
  // so the caller keeps and frees its own.
  explicit MpiCommunicator(MPI_Comm comm) : MpiCommunicator(detail::MpiRuntime::acquire(), comm) {}

  int rank() const override { return state_->rank; }
  int world_size() const override { return state_->size; }
  int local_rank() const override { return state_->local_rank; }
  std::string backend() const override { return "mpi"; }
  // MPI_Query_thread's level (MPI_THREAD_SERIALIZED or better when we initialised MPI).
  int thread_level() const { return state_->runtime->thread_level(); }
  MPI_Comm comm() const { return state_->comm; }

  void all_reduce(void* data, int64_t count, DType dtype, ReduceOp op) override {
    all_reduce_async(data, count, dtype, op)->wait();
  }

  std::unique_ptr<Work> all_reduce_async(void* data, int64_t count, DType dtype, ReduceOp op) override {
    const MPI_Datatype type = detail::mpi_datatype(dtype, "all_reduce", true);
    const int n = detail::mpi_count(count, "all_reduce", "count");
    const detail::MpiOp mop = state_->begin("all_reduce", count, dtype);
    MPI_Request req = MPI_REQUEST_NULL;
    state_->check(MPI_Iallreduce(MPI_IN_PLACE, data, n, type, detail::mpi_op(op, dtype), state_->comm, &req), mop);
    return std::make_unique<detail::MpiWork>(state_, req, mop, timeout_);
  }

  void broadcast(void* data, int64_t count, DType dtype, int root) override {
    MAMCLIP_CHECK(root >= 0 && root < state_->size, value_error, "broadcast: root is ", root, "; the world has ranks 0..",
                  state_->size - 1);
    const MPI_Datatype type = detail::mpi_datatype(dtype, "broadcast", false);
    const int n = detail::mpi_count(count, "broadcast", "count");
    const detail::MpiOp mop = state_->begin("broadcast", count, dtype);
    MPI_Request req = MPI_REQUEST_NULL;
    state_->check(MPI_Ibcast(data, n, type, root, state_->comm, &req), mop);
    detail::MpiWork(state_, req, mop, timeout_).wait();
  }

  void all_gather(const void* send, void* recv, const std::vector<int64_t>& counts, DType dtype) override {
    MAMCLIP_CHECK(counts.size() == static_cast<size_t>(state_->size), value_error, "all_gather: ", counts.size(),
                  " counts for a world of ", state_->size);
    const MPI_Datatype type = detail::mpi_datatype(dtype, "all_gather", false);
    std::vector<int> n(counts.size()), displs(counts.size());
    int64_t total = 0;
    for (size_t r = 0; r < counts.size(); ++r) {
      n[r] = detail::mpi_count(counts[r], "all_gather", ("counts[" + std::to_string(r) + "]").c_str());
      displs[r] = detail::mpi_count(total, "all_gather", "the offset of a rank's elements");
      total += counts[r];
    }
    detail::mpi_count(total, "all_gather", "the total count");
    const detail::MpiOp mop = state_->begin("all_gather", total, dtype);
    MPI_Request req = MPI_REQUEST_NULL;
    state_->check(MPI_Iallgatherv(send, n[static_cast<size_t>(state_->rank)], type, recv, n.data(), displs.data(),
                                  type, state_->comm, &req),
                  mop);
    detail::MpiWork(state_, req, mop, timeout_).wait();
  }

  void barrier() override {
    const detail::MpiOp mop = state_->begin("barrier", 0, DType::u8);
    MPI_Request req = MPI_REQUEST_NULL;
    state_->check(MPI_Ibarrier(state_->comm, &req), mop);
    detail::MpiWork(state_, req, mop, timeout_).wait();
  }

  std::unique_ptr<Communicator> duplicate() const override {
    state_->check_usable("duplicate");
    auto dup = std::unique_ptr<MpiCommunicator>(new MpiCommunicator(state_->runtime, state_->comm));
    dup->set_timeout(timeout_);
    return dup;
  }

  // Ends every process of the job (MPI_Abort on this communicator).
  [[noreturn]] void abort(int code) {
    MPI_Abort(state_->comm, code);
    std::abort();  // MPI_Abort does not return; this keeps [[noreturn]] honest
  }

 private:
  MpiCommunicator(std::shared_ptr<detail::MpiRuntime> runtime, MPI_Comm parent)
      : state_(std::make_shared<detail::MpiState>()) {
    state_->runtime = std::move(runtime);
    const detail::MpiOp op{"MpiCommunicator", 0, 0, DType::u8};
    // Errors come back as codes (thrown as dist_error) instead of aborting.
    state_->check(MPI_Comm_dup(parent, &state_->comm), op);
    state_->check(MPI_Comm_set_errhandler(state_->comm, MPI_ERRORS_RETURN), op);
    state_->check(MPI_Comm_dup(state_->comm, &state_->arrivals), op);
    state_->check(MPI_Comm_set_errhandler(state_->arrivals, MPI_ERRORS_RETURN), op);
    state_->check(MPI_Comm_rank(state_->comm, &state_->rank), op);
    state_->check(MPI_Comm_size(state_->comm, &state_->size), op);
    state_->peer_seq.assign(static_cast<size_t>(state_->size), 0);
    state_->local_rank = find_local_rank(state_->comm);
    timeout_ = detail::timeout_from_environment(timeout_);
  }

  static int find_local_rank(MPI_Comm comm) {
    MPI_Comm node = MPI_COMM_NULL;
    if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) == MPI_SUCCESS &&
        node != MPI_COMM_NULL) {
      int r = 0;
      const int rc = MPI_Comm_rank(node, &r);
      MPI_Comm_free(&node);
      if (rc == MPI_SUCCESS) return r;
    }
    for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "LOCAL_RANK"})
      if (const char* v = std::getenv(name)) return std::atoi(v);
    return 0;
  }

  std::shared_ptr<detail::MpiState> state_;
};

// The communicator of this process's job:
//   - started by mpirun (or another PMI/PMIx launcher) with more than one
//     process: an MpiCommunicator;
//   - started torchrun-style (WORLD_SIZE > 1, RANK, LOCAL_RANK, MASTER_ADDR,
//     MASTER_PORT set, no MPI launcher): a TcpCommunicator (dist/tcp.hpp),
//     which carries control messages and bootstraps NCCL for the gradients.
//     Open MPI cannot join such processes into one MPI job (each is a
//     singleton), so CPU gradients need mpirun; DataParallel says so;
//   - otherwise a LocalCommunicator.
inline std::unique_ptr<Communicator> communicator_from_environment() {
  auto env_int = [](const char* name) -> int64_t {
    const char* v = std::getenv(name);
    return v && *v ? std::atoll(v) : -1;
  };
  const bool launched = std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMIX_RANK") || std::getenv("PMI_SIZE");
  const int64_t ompi_size = env_int("OMPI_COMM_WORLD_SIZE");
  const int64_t pmi_size = env_int("PMI_SIZE");
  if (launched && ompi_size != 1 && pmi_size != 1) {
    auto comm = std::make_unique<MpiCommunicator>();
    if (comm->world_size() > 1) return comm;
    return std::make_unique<LocalCommunicator>();
  }
  if (!launched)
    if (std::unique_ptr<Communicator> tcp = tcp_communicator_from_environment()) return tcp;
  return std::make_unique<LocalCommunicator>();
}

}  // namespace mamclip::dist
