// TcpCommunicator: the rendezvous of torchrun-style launches. Each test forks
// its ranks as processes of this executable (no launcher needed) on
// 127.0.0.1, and checks every rank's outcome in the parent.

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <functional>
#include <thread>

#include "mamclip/dist/parallel.hpp"
#include "mamclip/dist/tcp.hpp"
#include "support/scoped_env.hpp"
#include "support/test_support.hpp"

using namespace mamclip;
using namespace mamclip::dist;

namespace {

using Clock = std::chrono::steady_clock;

// What a rank's process reports: "ok", or the type and text of what it threw.
struct Outcome {
  std::string kind;  // ok, dist_error, dist_timeout_error, other
  std::string message;
  double seconds = 0;  // from the start of the rank's body to its end
};

// A port nobody listens on now (the kernel's next free one).
int free_port() {
  dist::detail::Socket s = dist::detail::tcp_listen(0);
  return dist::detail::bound_port(s);
}

// Checks inside a rank's process (Catch2's REQUIRE belongs to the parent).
void expect(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error("check failed: " + what);
}

// Runs body(rank, port) in one forked process per rank in `ranks` and returns
// each one's outcome, in the order of `ranks`.
std::vector<Outcome> run_ranks(const std::vector<int>& ranks, const std::function<void(int rank, int port)>& body) {
  const int port = free_port();
  std::vector<pid_t> pids;
  std::vector<int> pipes;
  for (int rank : ranks) {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::close(fds[0]);
      Outcome o{"ok", "", 0};
      const auto start = Clock::now();
      try {
        body(rank, port);
      } catch (const dist_timeout_error& e) {
        o = {"dist_timeout_error", e.what(), 0};
      } catch (const dist_error& e) {
        o = {"dist_error", e.what(), 0};
      } catch (const std::exception& e) {
        o = {"other", e.what(), 0};
      }
      o.seconds = std::chrono::duration<double>(Clock::now() - start).count();
      const std::string report = o.kind + "\n" + std::to_string(o.seconds) + "\n" + o.message;
      (void)!::write(fds[1], report.data(), report.size());
      ::close(fds[1]);
      ::_exit(0);
    }
    ::close(fds[1]);
    pids.push_back(pid);
    pipes.push_back(fds[0]);
  }
  std::vector<Outcome> out;
  for (size_t i = 0; i < pids.size(); ++i) {
    std::string report;
    char buf[4096];
    for (ssize_t k; (k = ::read(pipes[i], buf, sizeof(buf))) != 0;) {
      if (k < 0 && errno == EINTR) continue;
      if (k < 0) break;
      report.append(buf, static_cast<size_t>(k));
    }
    ::close(pipes[i]);
    int status = 0;
    ::waitpid(pids[i], &status, 0);
    Outcome o{"crashed", "rank " + std::to_string(ranks[i]) + " reported nothing (status " + std::to_string(status) + ")", 0};
    const size_t a = report.find('\n'), b = a == std::string::npos ? a : report.find('\n', a + 1);
    if (b != std::string::npos) o = {report.substr(0, a), report.substr(b + 1), std::stod(report.substr(a + 1, b - a - 1))};
    out.push_back(o);
  }
  return out;
}

std::vector<int> ranks_upto(int n) {
  std::vector<int> r;
  for (int i = 0; i < n; ++i) r.push_back(i);
  return r;
}

TcpOptions options(int rank, int world, int port, std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  TcpOptions o;
  o.master_addr = "127.0.0.1";
  o.master_port = port;
  o.rank = rank;
  o.world_size = world;
  o.local_rank = rank;
  o.timeout = timeout;
  return o;
}

void require_all_ok(const std::vector<Outcome>& outcomes) {
  for (size_t r = 0; r < outcomes.size(); ++r) {
    INFO("rank " << r << ": " << outcomes[r].message);
    REQUIRE(outcomes[r].kind == "ok");
  }
}

// A value that differs by rank and element, never zero.
double value(int rank, int64_t i) { return 0.25 + rank * 1.5 + std::sin(0.7 * static_cast<double>(i) + rank); }

}  // namespace

TEST_CASE("tcp collectives over three ranks agree with the same sums, gathers and broadcasts", "[dist]") {
  constexpr int kWorld = 3;
  require_all_ok(run_ranks(ranks_upto(kWorld), [](int rank, int port) {
    TcpCommunicator comm(options(rank, kWorld, port));
    expect(comm.rank() == rank && comm.world_size() == kWorld && comm.backend() == "tcp", "rank and world");

    // Sums over ranks in rank order: bit-equal on every rank.
    std::vector<double> d(5);
    std::vector<float> f(7);
    for (size_t i = 0; i < d.size(); ++i) d[i] = value(rank, static_cast<int64_t>(i));
    for (size_t i = 0; i < f.size(); ++i) f[i] = static_cast<float>(value(rank, static_cast<int64_t>(i)));
    comm.all_reduce(d.data(), 5, DType::f64, ReduceOp::sum);
    comm.all_reduce(f.data(), 7, DType::f32, ReduceOp::max);
    for (size_t i = 0; i < d.size(); ++i) {
      double want = 0;
      for (int r = 0; r < kWorld; ++r) want += value(r, static_cast<int64_t>(i));
      expect(d[i] == want, "f64 sum element " + std::to_string(i));
    }
    for (size_t i = 0; i < f.size(); ++i) {
      float want = -1e30f;
      for (int r = 0; r < kWorld; ++r) want = std::max(want, static_cast<float>(value(r, static_cast<int64_t>(i))));
      expect(f[i] == want, "f32 max element " + std::to_string(i));
    }
    expect(all_reduce_scalar(comm, int64_t{rank + 2}, ReduceOp::min) == 2, "i64 min");
    bfloat16 h[2] = {bfloat16(0.5f * static_cast<float>(rank + 1)), bfloat16(-1.0f)};
    comm.all_reduce(h, 2, DType::bf16, ReduceOp::sum);
    expect(static_cast<float>(h[0]) == 3.0f && static_cast<float>(h[1]) == -3.0f, "bf16 sum");
    bool flags[2] = {rank == 1, false};
    comm.all_reduce(flags, 2, DType::boolean, ReduceOp::sum);
    expect(flags[0] && !flags[1], "bool sum is or");

    // Broadcast from every root, including one that is not rank 0.
    for (int root = 0; root < kWorld; ++root) {
      int32_t b[3] = {rank * 10, rank * 10 + 1, rank * 10 + 2};
      comm.broadcast(b, 3, DType::i32, root);
      expect(b[0] == root * 10 && b[2] == root * 10 + 2, "broadcast from root " + std::to_string(root));
    }

    // All-gather with unequal counts, one of them zero.
    const std::vector<int64_t> counts = {2, 0, 3};
    std::vector<double> mine(static_cast<size_t>(counts[static_cast<size_t>(rank)]));
    for (size_t i = 0; i < mine.size(); ++i) mine[i] = value(rank, static_cast<int64_t>(i));
    std::vector<double> all(5, -7.0);
    comm.all_gather(mine.data(), all.data(), counts, DType::f64);
    expect(all[0] == value(0, 0) && all[1] == value(0, 1) && all[2] == value(2, 0) && all[4] == value(2, 2),
           "all_gather with counts 2, 0, 3");

    // The tensor collectives work unchanged on top.
    Tensor<float> t = full<float>({rank + 1, 2}, static_cast<float>(rank));
    std::vector<int64_t> rows;
    Tensor<float> g = all_gather(comm, t, &rows);
    expect(g.size(0) == 6 && rows == std::vector<int64_t>{1, 2, 3}, "tensor all_gather shape");
    expect(g.data_ptr()[0] == 0.0f && g.data_ptr()[2] == 1.0f && g.data_ptr()[11] == 2.0f, "tensor all_gather rows");
    check_same(comm, "model configuration", "convnext_tiny");
    comm.barrier();
  }));
}

TEST_CASE("tcp check_same names the rank that differs, on every rank", "[dist]") {
  const std::vector<Outcome> out = run_ranks(ranks_upto(3), [](int rank, int port) {
    TcpCommunicator comm(options(rank, 3, port));
    check_same(comm, "model configuration", rank == 2 ? "convnext_small" : "convnext_tiny");
  });
  for (const Outcome& o : out) {
    REQUIRE(o.kind == "dist_error");
    REQUIRE_THAT(o.message, Catch::Matchers::Contains("the model configuration differs across ranks: rank(s) 2"));
  }
}

TEST_CASE("a tcp duplicate has connections of its own and interleaves with its parent", "[dist]") {
  require_all_ok(run_ranks(ranks_upto(3), [](int rank, int port) {
    TcpCommunicator comm(options(rank, 3, port));
    std::unique_ptr<Communicator> dup = comm.duplicate();
    expect(dup->backend() == "tcp" && dup->rank() == rank && dup->world_size() == 3, "duplicate's ranks");
    for (int k = 0; k < 3; ++k) {
      expect(all_reduce_scalar(*dup, int64_t{k + rank}) == 3 * k + 3, "duplicate's sum");
      expect(all_reduce_scalar(comm, 2.0 * rank) == 6.0, "parent's sum");
    }
  }));
}

TEST_CASE("tcp: ranks that call different collectives get an error naming them", "[dist]") {
  const std::vector<Outcome> out = run_ranks(ranks_upto(3), [](int rank, int port) {
    TcpCommunicator comm(options(rank, 3, port));
    double v = 1.0;
    if (rank == 1) comm.broadcast(&v, 1, DType::f64, 0);
    else comm.all_reduce(&v, 1, DType::f64, ReduceOp::sum);
  });
  for (const Outcome& o : out) {
    INFO(o.message);
    REQUIRE(o.kind == "dist_error");
    REQUIRE_THAT(o.message, Catch::Matchers::Contains("rank 1 is in broadcast #1"));
    REQUIRE_THAT(o.message, Catch::Matchers::Contains("the ranks called different collectives"));
  }
  // All but rank 0 hear it from rank 0.
  REQUIRE_THAT(out[2].message, Catch::Matchers::Contains("on rank 2 of 3 failed: rank 0 reports: rank 1 is in"));
}

TEST_CASE("tcp: a rank that dies is named by the others at once", "[dist]") {
  const std::vector<Outcome> out = run_ranks(ranks_upto(3), [](int rank, int port) {
    TcpCommunicator comm(options(rank, 3, port, std::chrono::seconds(30)));
    comm.barrier();
    if (rank == 2) ::_exit(3);  // dies without a word, as a killed process does
    all_reduce_scalar(comm, 1.0);
  });
  for (int r : {0, 1}) {
    INFO("rank " << r << ": " << out[static_cast<size_t>(r)].message);
    REQUIRE(out[static_cast<size_t>(r)].kind == "dist_error");
    REQUIRE_THAT(out[static_cast<size_t>(r)].message, Catch::Matchers::Contains("all_reduce #2"));
    REQUIRE_THAT(out[static_cast<size_t>(r)].message, Catch::Matchers::Contains("rank 2 left (its connection closed)"));
    REQUIRE(out[static_cast<size_t>(r)].seconds < 10.0);  // not the 30 s timeout
  }
  REQUIRE(out[2].kind == "crashed");  // it reported nothing: it died
}

TEST_CASE("tcp: a hung rank is named within the timeout, and the communicator is then unusable", "[dist]") {
  const std::vector<Outcome> out = run_ranks(ranks_upto(3), [](int rank, int port) {
    TcpCommunicator comm(options(rank, 3, port, std::chrono::seconds(1)));
    if (rank == 1) std::this_thread::sleep_for(std::chrono::seconds(5));  // hangs past everyone's timeout
    try {
      all_reduce_scalar(comm, 1.0);
    } catch (const dist_timeout_error&) {
      if (rank == 1) throw;
      // A timed-out communicator refuses further use, naming why.
      try {
        comm.barrier();
      } catch (const dist_error& e) {
        expect(std::string(e.what()).find("unusable after an earlier failure") != std::string::npos, e.what());
      }
      throw;
    }
  });
  for (int r : {0, 2}) {
    INFO("rank " << r << ": " << out[static_cast<size_t>(r)].message);
    REQUIRE(out[static_cast<size_t>(r)].kind == "dist_timeout_error");
    REQUIRE_THAT(out[static_cast<size_t>(r)].message, Catch::Matchers::Contains("rank 1 did not arrive within 1 s"));
    REQUIRE(out[static_cast<size_t>(r)].seconds < 4.5);
  }
  // The late rank finds rank 0's notice waiting for it.
  INFO(out[1].message);
  REQUIRE(out[1].kind == "dist_timeout_error");
  REQUIRE_THAT(out[1].message, Catch::Matchers::Contains("rank 0 reports: rank 1 did not arrive"));
}

TEST_CASE("tcp rendezvous: a rank that never starts is named; so is a missing rank 0", "[dist]") {
  SECTION("rank 2 of 3 missing") {
    const std::vector<Outcome> out = run_ranks({0, 1}, [](int rank, int port) {
      TcpCommunicator comm(options(rank, 3, port, std::chrono::seconds(1)));
    });
    for (const Outcome& o : out) {
      INFO(o.message);
      REQUIRE(o.kind == "dist_timeout_error");
      REQUIRE_THAT(o.message, Catch::Matchers::Contains("rank 2 did not connect within 1 s"));
    }
  }
  SECTION("rank 0 missing") {
    const std::vector<Outcome> out = run_ranks({1}, [](int rank, int port) {
      TcpCommunicator comm(options(rank, 2, port, std::chrono::milliseconds(500)));
    });
    INFO(out[0].message);
    REQUIRE(out[0].kind == "dist_timeout_error");
    REQUIRE_THAT(out[0].message, Catch::Matchers::Contains("rank 1 could not connect to rank 0 at 127.0.0.1:"));
    REQUIRE_THAT(out[0].message, Catch::Matchers::Contains("check MASTER_ADDR and MASTER_PORT"));
  }
}

TEST_CASE("tcp rendezvous: a different WORLD_SIZE or a rank used twice stops every rank", "[dist]") {
  SECTION("world sizes differ") {
    const std::vector<Outcome> out = run_ranks({0, 1}, [](int rank, int port) {
      TcpCommunicator comm(options(rank, rank == 0 ? 2 : 3, port, std::chrono::seconds(5)));
    });
    for (const Outcome& o : out) {
      INFO(o.message);
      REQUIRE(o.kind == "dist_error");
      REQUIRE_THAT(o.message, Catch::Matchers::Contains("rank 1 was started with WORLD_SIZE 3, rank 0 with 2"));
    }
  }
  SECTION("two processes say rank 1") {
    const std::vector<Outcome> out = run_ranks({0, 1, 1}, [](int rank, int port) {
      TcpCommunicator comm(options(rank, 3, port, std::chrono::seconds(5)));
    });
    REQUIRE(out[0].kind == "dist_error");
    REQUIRE_THAT(out[0].message, Catch::Matchers::Contains("two processes say they are rank 1 (check RANK)"));
  }
}

TEST_CASE("tcp gather_with_grad: each rank's gradient is the sum over ranks of its rows' gradients", "[dist]") {
  require_all_ok(run_ranks(ranks_upto(3), [](int rank, int port) {
    TcpCommunicator comm(options(rank, 3, port));
    // Rank r holds r + 1 rows of width 2; every rank's loss is sum(G * W_r).
    Tensor<double> x = full<double>({rank + 1, 2}, 0.5 + rank);
    x.set_requires_grad();
    Tensor<double> w = Tensor<double>::empty({6, 2});
    for (int64_t i = 0; i < 12; ++i) w.data_ptr()[i] = value(rank, i);
    Tensor<double> g = gather_with_grad(comm, x);
    expect(g.size(0) == 6 && g.data_ptr()[11] == 2.5, "gathered rows");
    sum(g * w).backward();
    const int64_t first = rank * (rank + 1) / 2;  // rows of ranks before this one
    for (int64_t i = 0; i < x.numel(); ++i) {
      double want = 0;
      for (int r = 0; r < 3; ++r) want += value(r, first * 2 + i);
      expect(std::abs(x.grad().data_ptr()[i] - want) < 1e-12, "gradient element " + std::to_string(i));
    }
  }));
}

TEST_CASE("tcp: DataParallel refuses to reduce CPU gradients over the rendezvous, pointing to mpirun", "[dist]") {
  const std::vector<Outcome> out = run_ranks(ranks_upto(2), [](int rank, int port) {
    TcpCommunicator comm(options(rank, 2, port));
    nn::Linear layer(3, 2);
    DataParallel dp(layer, comm);
  });
  for (const Outcome& o : out) {
    INFO(o.message);
    REQUIRE(o.kind == "dist_error");
    REQUIRE_THAT(o.message, Catch::Matchers::Contains("the parameters are on cpu and this job was launched torchrun-style"));
    REQUIRE_THAT(o.message, Catch::Matchers::Contains("launch with `mpirun -np 2 <program> ...`"));
  }
}

using mamclip::test::ScopedEnv;

TEST_CASE("tcp_communicator_from_environment reads torchrun's variables", "[dist]") {
  SECTION("no WORLD_SIZE, or 1: no communicator") {
    ScopedEnv w("WORLD_SIZE", nullptr);
    REQUIRE(tcp_communicator_from_environment() == nullptr);
    ScopedEnv w1("WORLD_SIZE", "1");
    REQUIRE(tcp_communicator_from_environment() == nullptr);
  }
  SECTION("a full launch: every rank joins") {
    require_all_ok(run_ranks(ranks_upto(2), [](int rank, int port) {
      ::setenv("WORLD_SIZE", "2", 1);
      ::setenv("RANK", std::to_string(rank).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
      ::setenv("MASTER_ADDR", "localhost", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      ::setenv("MAMCLIP_DIST_TIMEOUT", "20", 1);
      std::unique_ptr<Communicator> comm = tcp_communicator_from_environment();
      expect(comm && comm->backend() == "tcp" && comm->rank() == rank && comm->local_rank() == rank, "ranks");
      expect(comm->timeout() == std::chrono::seconds(20), "MAMCLIP_DIST_TIMEOUT");
      expect(all_reduce_scalar(*comm, int64_t{rank + 1}) == 3, "sum");
    }));
  }
  SECTION("under torchrun's agent store, rank 0 listens on the next port; MAMCLIP_RENDEZVOUS_PORT overrides") {
    ScopedEnv w("WORLD_SIZE", "2"), r("RANK", "1"), l("LOCAL_RANK", "1"), a("MASTER_ADDR", "node1"),
        p("MASTER_PORT", "29500"), t("MAMCLIP_DIST_TIMEOUT", "7");
    {
      ScopedEnv agent("TORCHELASTIC_USE_AGENT_STORE", nullptr), own("MAMCLIP_RENDEZVOUS_PORT", nullptr);
      const TcpOptions o = tcp_options_from_environment();
      REQUIRE(o.master_port == 29500);
      REQUIRE(o.master_addr == "node1");
      REQUIRE(o.rank == 1);
      REQUIRE(o.local_rank == 1);
      REQUIRE(o.world_size == 2);
      REQUIRE(o.timeout == std::chrono::seconds(7));
    }
    ScopedEnv agent("TORCHELASTIC_USE_AGENT_STORE", "True");
    {
      ScopedEnv own("MAMCLIP_RENDEZVOUS_PORT", nullptr);
      REQUIRE(tcp_options_from_environment().master_port == 29501);
    }
    ScopedEnv own("MAMCLIP_RENDEZVOUS_PORT", "31000");
    REQUIRE(tcp_options_from_environment().master_port == 31000);
  }
  SECTION("missing or bad variables name themselves") {
    ScopedEnv w("WORLD_SIZE", "2"), r("RANK", "5"), l("LOCAL_RANK", "0"), a("MASTER_ADDR", nullptr),
        p("MASTER_PORT", "29500"), own("MAMCLIP_RENDEZVOUS_PORT", nullptr);
    MAMCLIP_REQUIRE_THROWS_WITH(tcp_options_from_environment(), dist_error,
                                "RANK is '5'; expected an integer in 0..1 (this process's rank)");
    ScopedEnv r0("RANK", "0");
    MAMCLIP_REQUIRE_THROWS_WITH(tcp_options_from_environment(), dist_error,
                                "MASTER_ADDR is not set; a torchrun-style launch (WORLD_SIZE > 1) needs the host name");
    ScopedEnv a1("MASTER_ADDR", "node1"), p1("MASTER_PORT", "http");
    MAMCLIP_REQUIRE_THROWS_WITH(tcp_options_from_environment(), dist_error,
                                "MASTER_PORT is 'http'; expected an integer in 1..65535");
  }
}
