// Collectives of MpiCommunicator, run by ctest under mpirun on 2 and 3 ranks
// (tests/dist/CMakeLists.txt). Every rank runs every case in the same order;
// each rank's inputs are a function of (rank, index), so each rank computes
// the expected result of the others' contributions itself.

#include <csignal>
#include <cstdio>
#include <thread>
#include <unistd.h>

#include "mamclip/dist/mpi.hpp"
#include "mamclip/dist/parallel.hpp"
#include "support/dist_errors.hpp"
#include "support/scoped_env.hpp"
#include "support/test_support.hpp"

using namespace mamclip;
using namespace mamclip::dist;

namespace {

// One communicator for the whole executable: MPI is finalised when the last
// MpiCommunicator goes and cannot be initialised again.
MpiCommunicator& world() {
  static MpiCommunicator comm;
  // A rank whose assertion failed skips collectives the others still wait
  // in; they stop here instead of at the ctest timeout.
  // MAMCLIP_DIST_TIMEOUT, when set, wins (the one-rank-fails run sets 3 s).
  static const bool configured =
      (comm.set_timeout(dist::detail::timeout_from_environment(std::chrono::seconds(20))), true);
  (void)configured;
  return comm;
}

uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  return x ^ (x >> 33);
}

// Non-zero values whose sums over a few ranks are exact in every dtype.
template <class T>
T value(int rank, int64_t i, uint64_t salt) {
  const uint64_t h = mix(static_cast<uint64_t>(rank) * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(i) * 31 + salt);
  int64_t v;
  if constexpr (std::is_same_v<T, int64_t>) v = static_cast<int64_t>(h % (1ull << 40)) - (1ll << 39);
  else if constexpr (std::is_same_v<T, int32_t>) v = static_cast<int64_t>(h % (1u << 20)) - (1 << 19);
  else v = static_cast<int64_t>(h % 2001) - 1000;
  if (v == 0) v = 7;
  if constexpr (std::is_floating_point_v<T>) return static_cast<T>(v) / T(8);
  else return static_cast<T>(v);
}

template <class T>
Tensor<T> rank_tensor(int rank, int64_t n, uint64_t salt) {
  Tensor<T> t = Tensor<T>::empty({n});
  for (int64_t i = 0; i < n; ++i) t.data_ptr()[i] = value<T>(rank, i, salt);
  return t;
}

template <class T>
T reduce_expected(int world_size, int64_t i, uint64_t salt, ReduceOp op) {
  T acc = value<T>(0, i, salt);
  for (int r = 1; r < world_size; ++r) {
    const T v = value<T>(r, i, salt);
    acc = op == ReduceOp::sum ? T(acc + v) : op == ReduceOp::max ? std::max(acc, v) : std::min(acc, v);
  }
  return acc;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

TEST_CASE("mpi world: size, rank and local rank agree across ranks", "[dist]") {
  MpiCommunicator& comm = world();
  REQUIRE(comm.backend() == "mpi");
  REQUIRE(comm.world_size() >= 2);
  REQUIRE(comm.thread_level() >= MPI_THREAD_SERIALIZED);
  const std::vector<int64_t> ranks = all_gather_scalar(comm, comm.rank());
  const std::vector<int64_t> sizes = all_gather_scalar(comm, comm.world_size());
  REQUIRE(ranks.size() == static_cast<size_t>(comm.world_size()));
  for (size_t r = 0; r < ranks.size(); ++r) {
    REQUIRE(ranks[r] == static_cast<int64_t>(r));
    REQUIRE(sizes[r] == comm.world_size());
  }
  // The test runs on one machine: the local ranks are the world ranks.
  const std::vector<int64_t> local = all_gather_scalar(comm, comm.local_rank());
  for (size_t r = 0; r < local.size(); ++r) REQUIRE(local[r] == static_cast<int64_t>(r));
}

TEMPLATE_TEST_CASE("mpi all_reduce: sum, max and min at awkward sizes", "[dist]", float, double, int64_t, int32_t) {
  MpiCommunicator& comm = world();
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{1000003}}) {
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::max, ReduceOp::min}) {
      const uint64_t salt = static_cast<uint64_t>(n) * 3 + static_cast<uint64_t>(op);
      Tensor<TestType> t = rank_tensor<TestType>(comm.rank(), n, salt);
      all_reduce(comm, t, op);
      int64_t bad = 0;
      for (int64_t i = 0; i < n; ++i) bad += t.data_ptr()[i] != reduce_expected<TestType>(comm.world_size(), i, salt, op);
      INFO("n = " << n << ", op = " << static_cast<int>(op));
      REQUIRE(bad == 0);
      // Every rank holds the result, not only rank 0.
      REQUIRE(all_reduce_scalar(comm, static_cast<double>(t.data_ptr()[n - 1]), ReduceOp::max) ==
              all_reduce_scalar(comm, static_cast<double>(t.data_ptr()[n - 1]), ReduceOp::min));
    }
  }
}

TEST_CASE("mpi all_reduce_mean and scalars", "[dist]") {
  MpiCommunicator& comm = world();
  const int n = comm.world_size();
  Tensor<double> t = rank_tensor<double>(comm.rank(), 1001, 5);
  all_reduce_mean(comm, t);
  for (int64_t i = 0; i < 1001; ++i)
    REQUIRE(t.data_ptr()[i] == Approx(reduce_expected<double>(n, i, 5, ReduceOp::sum) / n).epsilon(1e-15));
  REQUIRE(all_reduce_scalar(comm, static_cast<int64_t>(comm.rank() + 1)) == int64_t{n} * (n + 1) / 2);
  REQUIRE(all_reduce_scalar(comm, 0.5 * comm.rank(), ReduceOp::max) == 0.5 * (n - 1));
}

TEST_CASE("mpi all_reduce_async: several in flight, waited out of order", "[dist]") {
  MpiCommunicator& comm = world();
  const int n = comm.world_size();
  Tensor<float> a = rank_tensor<float>(comm.rank(), 1000003, 11);
  Tensor<double> b = rank_tensor<double>(comm.rank(), 7, 12);
  Tensor<int64_t> c = rank_tensor<int64_t>(comm.rank(), 4099, 13);
  Tensor<int32_t> d = rank_tensor<int32_t>(comm.rank(), 1, 14);
  auto wa = comm.all_reduce_async(a.data_ptr(), a.numel(), DType::f32, ReduceOp::sum);
  auto wb = comm.all_reduce_async(b.data_ptr(), b.numel(), DType::f64, ReduceOp::max);
  auto wc = comm.all_reduce_async(c.data_ptr(), c.numel(), DType::i64, ReduceOp::min);
  auto wd = comm.all_reduce_async(d.data_ptr(), d.numel(), DType::i32, ReduceOp::sum);
  wd->wait();
  wb->wait();
  while (!wc->test()) std::this_thread::yield();
  REQUIRE(wc->test());  // stays complete
  wa->wait();
  wa->wait();  // a second wait is a no-op
  for (int64_t i = 0; i < a.numel(); i += 997) REQUIRE(a.data_ptr()[i] == reduce_expected<float>(n, i, 11, ReduceOp::sum));
  REQUIRE(a.data_ptr()[a.numel() - 1] == reduce_expected<float>(n, a.numel() - 1, 11, ReduceOp::sum));
  for (int64_t i = 0; i < b.numel(); ++i) REQUIRE(b.data_ptr()[i] == reduce_expected<double>(n, i, 12, ReduceOp::max));
  for (int64_t i = 0; i < c.numel(); ++i) REQUIRE(c.data_ptr()[i] == reduce_expected<int64_t>(n, i, 13, ReduceOp::min));
  REQUIRE(d.data_ptr()[0] == reduce_expected<int32_t>(n, 0, 14, ReduceOp::sum));
}

TEST_CASE("mpi all_reduce_async: a Work dropped unwaited is completed first", "[dist]") {
  MpiCommunicator& comm = world();
  Tensor<int64_t> t = rank_tensor<int64_t>(comm.rank(), 333, 15);
  { auto w = comm.all_reduce_async(t.data_ptr(), t.numel(), DType::i64, ReduceOp::sum); }
  for (int64_t i = 0; i < t.numel(); ++i)
    REQUIRE(t.data_ptr()[i] == reduce_expected<int64_t>(comm.world_size(), i, 15, ReduceOp::sum));
}

TEST_CASE("mpi broadcast from a non-zero root, 2-byte floats included", "[dist]") {
  MpiCommunicator& comm = world();
  const int root = comm.world_size() - 1;
  Tensor<float> t = rank_tensor<float>(comm.rank(), 1000003, 21);
  broadcast(comm, t, root);
  int64_t bad = 0;
  for (int64_t i = 0; i < t.numel(); ++i) bad += t.data_ptr()[i] != value<float>(root, i, 21);
  REQUIRE(bad == 0);

  Tensor<bfloat16> h = Tensor<bfloat16>::empty({7});
  for (int64_t i = 0; i < 7; ++i) h.data_ptr()[i] = bfloat16(static_cast<float>(value<float>(comm.rank(), i, 22)));
  broadcast(comm, h, 1);
  for (int64_t i = 0; i < 7; ++i) REQUIRE(static_cast<float>(h.data_ptr()[i]) == static_cast<float>(bfloat16(value<float>(1, i, 22))));

  MAMCLIP_REQUIRE_THROWS_WITH(broadcast(comm, t, comm.world_size()), value_error, "broadcast: root is");
}

TEST_CASE("mpi all_gather: different row counts, one rank with none", "[dist]") {
  MpiCommunicator& comm = world();
  const int n = comm.world_size();
  auto rows_of = [](int r) -> int64_t { return r == 1 ? 0 : r + 2; };
  const int64_t width = 5;
  Tensor<float> local = Tensor<float>::empty({rows_of(comm.rank()), width});
  for (int64_t i = 0; i < local.numel(); ++i) local.data_ptr()[i] = value<float>(comm.rank(), i, 31);
  std::vector<int64_t> rows{99};  // replaced, not appended to
  Tensor<float> all = all_gather(comm, local, &rows);
  int64_t total = 0;
  for (int r = 0; r < n; ++r) total += rows_of(r);
  REQUIRE(all.shape() == Shape{total, width});
  REQUIRE(rows.size() == static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) CHECK(rows[static_cast<size_t>(r)] == rows_of(r));
  int64_t at = 0;
  for (int r = 0; r < n; ++r)
    for (int64_t i = 0; i < rows_of(r) * width; ++i, ++at) REQUIRE(all.data_ptr()[at] == value<float>(r, i, 31));

  // f16 travels as 2-byte words.
  std::vector<half> send(static_cast<size_t>(comm.rank() + 1), half(0.25f * (comm.rank() + 1)));
  std::vector<int64_t> counts;
  for (int r = 0; r < n; ++r) counts.push_back(r + 1);
  std::vector<half> recv(static_cast<size_t>(n * (n + 1) / 2));
  comm.all_gather(send.data(), recv.data(), counts, DType::f16);
  size_t k = 0;
  for (int r = 0; r < n; ++r)
    for (int i = 0; i <= r; ++i) REQUIRE(static_cast<float>(recv[k++]) == 0.25f * (r + 1));

  MAMCLIP_REQUIRE_THROWS_WITH(comm.all_gather(send.data(), recv.data(), {1}, DType::f16), value_error,
                              "all_gather: 1 counts for a world of " + std::to_string(n));
}

TEST_CASE("mpi all_gather: rows of different widths throw shape_error on every rank", "[dist]") {
  MpiCommunicator& comm = world();
  const int last = comm.world_size() - 1;
  Tensor<double> t = rank_tensor<double>(comm.rank(), comm.rank() == last ? 8 : 6, 41).view({2, -1});
  MAMCLIP_REQUIRE_THROWS_WITH(all_gather(comm, t), shape_error, "all_gather: rank ");
  // Every rank threw, so the next collective still lines up.
  REQUIRE(all_reduce_scalar(comm, int64_t{1}) == comm.world_size());
}

// The job's loss is the sum of every rank's loss, and each rank's loss uses
// every rank's rows; gather_with_grad's backward must give each rank the
// derivative of that sum with respect to its own rows. Checked against
// central differences in double: for each element of each rank, its owner
// moves it by ±h and all ranks recompute the summed loss.
TEST_CASE("mpi gather_with_grad: gradient of the loss summed over ranks, by finite differences", "[dist]") {
  MpiCommunicator& comm = world();
  const int rank = comm.rank(), n = comm.world_size();
  auto rows_of = [](int r) -> int64_t { return r + 1; };
  const int64_t width = 3, total_rows = n * (n + 1) / 2;
  Tensor<double> x = Tensor<double>::empty({rows_of(rank), width});
  for (int64_t i = 0; i < x.numel(); ++i) x.data_ptr()[i] = value<double>(rank, i, 47) / 1000.0;
  x.set_requires_grad();
  // This rank's loss: sum(tanh(c * G) * W), different c and W on each rank.
  Tensor<double> weights = Tensor<double>::empty({total_rows, width});
  for (int64_t i = 0; i < weights.numel(); ++i) weights.data_ptr()[i] = value<double>(rank, i, 53) / 1000.0;
  const double c = 1.0 + 0.5 * rank;
  auto rank_loss = [&](const Tensor<double>& rows) { return sum(tanh(gather_with_grad(comm, rows) * c) * weights); };

  Tensor<double> loss = rank_loss(x);
  REQUIRE(loss.numel() == 1);
  loss.backward();
  const Tensor<double> analytic = x.grad();
  REQUIRE(analytic.shape() == x.shape());

  const double h = 1e-6;
  std::vector<double> numeric(static_cast<size_t>(x.numel()));
  NoGradGuard no_grad;
  for (int owner = 0; owner < n; ++owner) {
    for (int64_t i = 0; i < rows_of(owner) * width; ++i) {
      double summed[2];
      for (int side = 0; side < 2; ++side) {
        Tensor<double> moved = x.detach().clone();
        if (rank == owner) moved.data_ptr()[i] += side == 0 ? h : -h;
        summed[side] = all_reduce_scalar(comm, rank_loss(moved).item());
      }
      if (rank == owner) numeric[static_cast<size_t>(i)] = (summed[0] - summed[1]) / (2 * h);
    }
  }
  for (int64_t i = 0; i < x.numel(); ++i) {
    INFO("rank " << rank << " element " << i);
    REQUIRE(analytic.data_ptr()[i] == Approx(numeric[static_cast<size_t>(i)]).epsilon(1e-6).margin(1e-9));
  }
}

TEST_CASE("mpi check_same: equal passes, a differing rank is named on every rank", "[dist]") {
  MpiCommunicator& comm = world();
  check_same(comm, "model configuration", "convnext_tiny width=768");
  const std::string mine = comm.rank() == 1 ? "convnext_small" : "convnext_tiny";
  MAMCLIP_REQUIRE_THROWS_WITH(check_same(comm, "model configuration", mine), dist_error,
                              "the model configuration differs across ranks: rank(s) 1 disagree with rank 0");
}

TEST_CASE("mpi duplicate: its collectives interleave with the parent's", "[dist]") {
  MpiCommunicator& comm = world();
  std::unique_ptr<Communicator> dup = comm.duplicate();
  REQUIRE(dup->backend() == "mpi");
  REQUIRE(dup->rank() == comm.rank());
  REQUIRE(dup->world_size() == comm.world_size());
  REQUIRE(dup->timeout() == comm.timeout());
  const int n = comm.world_size();
  Tensor<float> grads = rank_tensor<float>(comm.rank(), 100003, 51);
  auto work = comm.all_reduce_async(grads.data_ptr(), grads.numel(), DType::f32, ReduceOp::sum);
  // The loss's gathers on the duplicate while the gradients are in flight.
  Tensor<double> feats = rank_tensor<double>(comm.rank(), 6, 52).view({2, 3});
  Tensor<double> all = all_gather(*dup, feats);
  dup->barrier();
  Tensor<int32_t> ids = rank_tensor<int32_t>(comm.rank(), 9, 53);
  broadcast(*dup, ids, 0);
  work->wait();
  REQUIRE(all.shape() == Shape{2 * n, 3});
  for (int r = 0; r < n; ++r)
    for (int64_t i = 0; i < 6; ++i) REQUIRE(all.data_ptr()[r * 6 + i] == value<double>(r, i, 52));
  for (int64_t i = 0; i < 9; ++i) REQUIRE(ids.data_ptr()[i] == value<int32_t>(0, i, 53));
  for (int64_t i = 0; i < grads.numel(); i += 101)
    REQUIRE(grads.data_ptr()[i] == reduce_expected<float>(n, i, 51, ReduceOp::sum));
  // A duplicate of a duplicate outlives nothing it needs.
  std::unique_ptr<Communicator> dup2 = dup->duplicate();
  dup.reset();
  REQUIRE(all_reduce_scalar(*dup2, int64_t{2}) == 2 * n);
}

TEST_CASE("mpi: what MPI cannot do throws before any rank communicates", "[dist]") {
  MpiCommunicator& comm = world();
  Tensor<half> h = Tensor<half>::empty({4});
  Tensor<bfloat16> b = Tensor<bfloat16>::empty({4});
  MAMCLIP_REQUIRE_THROWS_WITH(all_reduce(comm, h), dtype_error, "all_reduce: MPI cannot reduce float16");
  MAMCLIP_REQUIRE_THROWS_WITH(all_reduce(comm, b, ReduceOp::max), dtype_error, "all_reduce: MPI cannot reduce bfloat16");
  // Counts beyond an int are refused, not truncated (the buffer is never read).
  float dummy = 0;
  MAMCLIP_REQUIRE_THROWS_WITH(comm.all_reduce(&dummy, int64_t{INT_MAX} + 1, DType::f32, ReduceOp::sum), value_error,
                              "all_reduce: count is 2147483648; MPI takes at most 2147483647 elements");
  MAMCLIP_REQUIRE_THROWS_WITH(comm.broadcast(&dummy, int64_t{1} << 32, DType::f32, 0), value_error,
                              "broadcast: count is 4294967296");
  REQUIRE(all_reduce_scalar(comm, int64_t{1}) == comm.world_size());
}

TEST_CASE("mpi timeout: a rank that stops participating is named within the timeout", "[dist]") {
  MpiCommunicator& comm = world();
  // A communicator of its own: the one that times out is poisoned.
  std::unique_ptr<Communicator> dup = comm.duplicate();
  const auto timeout = std::chrono::seconds(2);
  std::vector<float> buf(1000, static_cast<float>(comm.rank() + 1));
  comm.barrier();
  if (comm.rank() == 1) {
    // Hung: arrives only after the others have given up (and then completes
    // the collective they left in flight, so none of them has to abort).
    std::this_thread::sleep_for(timeout + std::chrono::seconds(2));
    dup->set_timeout(std::chrono::seconds(30));
    dup->all_reduce(buf.data(), 1000, DType::f32, ReduceOp::sum);
  } else {
    dup->set_timeout(timeout);
    const auto start = std::chrono::steady_clock::now();
    std::string message;
    try {
      dup->all_reduce(buf.data(), 1000, DType::f32, ReduceOp::sum);
    } catch (const dist_timeout_error& e) {
      message = e.what();
    }
    const double elapsed = seconds_since(start);
    INFO(message);
    std::printf("rank %d: all_reduce timeout detected after %.3f s (timeout 2 s)\n", comm.rank(), elapsed);
    REQUIRE(elapsed >= 2.0);
    REQUIRE(elapsed < 3.5);  // generous: the ranks share two cores
    REQUIRE_THAT(message, Catch::Matchers::Contains("mpi all_reduce #1 (1000 float32 elements) timed out on rank " +
                                                    std::to_string(comm.rank()) + " of " +
                                                    std::to_string(comm.world_size())));
    REQUIRE_THAT(message, Catch::Matchers::Contains("(timeout 2.000000 s): rank(s) 1 (last seen in #0) did not arrive"));
    // Poisoned: no more collectives on it, at once.
    const auto again = std::chrono::steady_clock::now();
    MAMCLIP_REQUIRE_THROWS_WITH(dup->barrier(), dist_error, "this communicator is unusable after an earlier failure");
    REQUIRE(seconds_since(again) < 0.5);
    MAMCLIP_REQUIRE_THROWS_WITH(dup->duplicate(), dist_error, "unusable");
  }
  // The world communicator is unaffected; once rank 1 has joined, the
  // abandoned all-reduce completes too (no MPI_Abort when dup goes).
  comm.barrier();
  dup.reset();
  REQUIRE(all_reduce_scalar(comm, int64_t{1}) == comm.world_size());
}

// Run by kill_rank.sh, not by default: rank 1 dies by SIGKILL in the middle of
// a loop of collectives; mpirun must end the job and name it.
TEST_CASE("mpi kill: rank 1 dies mid-loop", "[.kill]") {
  MpiCommunicator& comm = world();
  comm.set_timeout(std::chrono::seconds(5));
  std::vector<float> buf(1000, 1.0f);
  test::print_dist_error(comm.rank(), [&] {
    for (int i = 0; i < 400; ++i) {
      if (i == 100 && comm.rank() == 1) {
        std::printf("rank 1 (pid %d): raising SIGKILL\n", static_cast<int>(getpid()));
        std::fflush(stdout);
        std::raise(SIGKILL);
      }
      comm.all_reduce(buf.data(), 1000, DType::f32, ReduceOp::sum);
      for (float& v : buf) v = 1.0f;
    }
  });
  FAIL("the loop finished although rank 1 was killed");
}

// Run by the ctest entry test_dist_collectives_one_rank_fails (WILL_FAIL): an
// assertion that fails on rank 1 only must fail the whole mpirun, although
// rank 0 is left waiting in a collective rank 1 never joins.
TEST_CASE("mpi fail: an assertion fails on one rank only", "[.fail]") {
  MpiCommunicator& comm = world();
  REQUIRE(comm.rank() != 1);
  comm.barrier();
}

TEST_CASE("local communicator: a world of one", "[dist]") {
  LocalCommunicator comm;
  REQUIRE(comm.rank() == 0);
  REQUIRE(comm.world_size() == 1);
  REQUIRE(comm.local_rank() == 0);
  REQUIRE(comm.backend() == "local");
  Tensor<float> t = rank_tensor<float>(0, 7, 61);
  all_reduce(comm, t);
  all_reduce_mean(comm, t);
  for (int64_t i = 0; i < 7; ++i) REQUIRE(t.data_ptr()[i] == value<float>(0, i, 61));
  REQUIRE(comm.all_reduce_async(t.data_ptr(), 7, DType::f32, ReduceOp::sum)->test());
  broadcast(comm, t, 0);
  MAMCLIP_REQUIRE_THROWS_WITH(broadcast(comm, t, 1), value_error, "broadcast: root is 1; the world has only rank 0");
  Tensor<float> g = all_gather(comm, t.view({7, 1}));
  REQUIRE(g.shape() == Shape{7, 1});
  for (int64_t i = 0; i < 7; ++i) REQUIRE(g.data_ptr()[i] == t.data_ptr()[i]);
  REQUIRE(all_gather_scalar(comm, 42) == std::vector<int64_t>{42});
  check_same(comm, "anything", "x");
  REQUIRE(comm.duplicate()->backend() == "local");
  comm.barrier();
}

using mamclip::test::ScopedEnv;

TEST_CASE("communicator_from_environment: no launcher gives a world of one, a torchrun launch TCP", "[dist]") {
  MpiCommunicator& comm = world();
  // Rank 0's free port, shared before the launcher's variables disappear.
  int64_t port = 0;
  if (comm.rank() == 0) {
    dist::detail::Socket s = dist::detail::tcp_listen(0);
    port = dist::detail::bound_port(s);
  }
  comm.broadcast(&port, 1, DType::i64, 0);
  ScopedEnv a("OMPI_COMM_WORLD_SIZE", nullptr), b("PMIX_RANK", nullptr), c("PMI_SIZE", nullptr);
  {
    ScopedEnv w("WORLD_SIZE", nullptr);
    REQUIRE(communicator_from_environment()->backend() == "local");
  }
  {
    ScopedEnv w("WORLD_SIZE", "4"), r("RANK", nullptr);
    MAMCLIP_REQUIRE_THROWS_WITH(communicator_from_environment(), dist_error,
                                "RANK is not set; a torchrun-style launch (WORLD_SIZE > 1) needs this process's rank");
  }
  // These processes, started by mpirun, play a torchrun launch.
  const std::string n = std::to_string(comm.world_size()), r = std::to_string(comm.rank()), p = std::to_string(port);
  ScopedEnv w("WORLD_SIZE", n.c_str()), rk("RANK", r.c_str()), lr("LOCAL_RANK", r.c_str()),
      ad("MASTER_ADDR", "127.0.0.1"), po("MASTER_PORT", p.c_str());
  std::unique_ptr<Communicator> tcp = communicator_from_environment();
  REQUIRE(tcp->backend() == "tcp");
  REQUIRE(tcp->rank() == comm.rank());
  REQUIRE(all_reduce_scalar(*tcp, int64_t{comm.rank() + 1}) == comm.world_size() * (comm.world_size() + 1) / 2);
}

TEST_CASE("MAMCLIP_DIST_TIMEOUT sets the default timeout in seconds", "[dist]") {
  const std::chrono::milliseconds fallback(1234);
  {
    ScopedEnv t("MAMCLIP_DIST_TIMEOUT", nullptr);
    REQUIRE(dist::detail::timeout_from_environment(fallback) == fallback);
  }
  {
    ScopedEnv t("MAMCLIP_DIST_TIMEOUT", "2.5");
    REQUIRE(dist::detail::timeout_from_environment(fallback) == std::chrono::milliseconds(2500));
  }
  ScopedEnv t("MAMCLIP_DIST_TIMEOUT", "ten");
  MAMCLIP_REQUIRE_THROWS_WITH(dist::detail::timeout_from_environment(fallback), value_error,
                              "MAMCLIP_DIST_TIMEOUT is 'ten'; expected a positive number of seconds");
}

TEST_CASE("communicator_from_environment: mpirun gives MPI", "[dist]") {
  // Under mpirun with >= 2 ranks (how this executable runs).
  REQUIRE(std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr);
  MpiCommunicator& comm = world();  // keeps MPI initialised past the new communicator's life
  std::unique_ptr<Communicator> env = communicator_from_environment();
  REQUIRE(env->backend() == "mpi");
  REQUIRE(env->rank() == comm.rank());
  REQUIRE(env->world_size() == comm.world_size());
  REQUIRE(all_reduce_scalar(*env, int64_t{3}) == 3 * comm.world_size());
}
