#pragma once
// TcpCommunicator: the rendezvous and control channel of a job whose
// processes were started by torchrun (or any launcher that sets RANK,
// WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT) instead of mpirun.
//
//   auto comm = tcp_communicator_from_environment();   // torchrun --nproc-per-node 8 ...
//   NcclCommunicator gpu(*comm);                        // NCCL's id travels over TCP
//
// Rank 0 listens on MASTER_PORT; every other rank connects to
// MASTER_ADDR:MASTER_PORT (retrying while rank 0 is not up yet) and sends its
// rank and world size. Collectives go through rank 0 (a star): each rank
// sends its part, rank 0 combines the parts in rank order (so sums are
// deterministic) and sends the result back. That suits what this channel
// carries: NCCL's unique id, configuration checks, loss values, the
// contrastive loss's feature gathers (batch x embed). It does not suit
// gradients, and DataParallel refuses to reduce them over it: NCCL does that
// on GPUs, and CPU jobs are launched with mpirun (Open MPI).
//
// Failures: rank 0 talks to every rank, so it names the ranks that left (their
// connection closed) or did not arrive within timeout(), and sends that
// message to the other ranks before throwing; a rank that loses rank 0 says
// so. After a failure the communicator is unusable (every call throws).
// POSIX sockets only: no library to link.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "mamclip/dist/communicator.hpp"

namespace mamclip::dist {

struct TcpOptions {
  std::string master_addr = "127.0.0.1";  // where rank 0 runs (host name or address)
  int master_port = 29500;                // rank 0 listens here; 0 on rank 0 of a world of one only
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;  // the rank's index on its machine (its GPU)
  std::chrono::milliseconds timeout{std::chrono::minutes(10)};
};

namespace detail {

using tcp_clock = std::chrono::steady_clock;

// An owned file descriptor.
class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  Socket(Socket&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Socket& operator=(Socket&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  ~Socket() { reset(); }
  int fd() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

inline int ms_left(tcp_clock::time_point deadline) {
  const int64_t left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - tcp_clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(std::min<int64_t>(left, INT_MAX));
}

inline std::string seconds_str(std::chrono::milliseconds t) {
  std::string s = std::to_string(t.count() / 1000.0);
  while (s.size() > 1 && s.back() == '0') s.pop_back();
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s + " s";
}

enum class Io { ok, closed, timed_out, failed };

inline Io wait_fd(int fd, short events, tcp_clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, ms_left(deadline));
    if (n > 0) return Io::ok;  // ready or hung up: the next read or write says which
    if (n == 0) return Io::timed_out;
    if (errno != EINTR) return Io::failed;
  }
}

// Sockets are non-blocking; these loop until all bytes moved or the deadline.
inline Io send_all(int fd, const void* data, size_t n, tcp_clock::time_point deadline) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k > 0) {
      p += k;
      n -= static_cast<size_t>(k);
    } else if (k < 0 && errno == EINTR) {
      continue;
    } else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (const Io w = wait_fd(fd, POLLOUT, deadline); w != Io::ok) return w;
    } else {
      return errno == EPIPE || errno == ECONNRESET ? Io::closed : Io::failed;
    }
  }
  return Io::ok;
}

inline Io recv_all(int fd, void* data, size_t n, tcp_clock::time_point deadline) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    const ssize_t k = ::recv(fd, p, n, 0);
    if (k > 0) {
      p += k;
      n -= static_cast<size_t>(k);
    } else if (k == 0) {
      return Io::closed;
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (const Io w = wait_fd(fd, POLLIN, deadline); w != Io::ok) return w;
    } else {
      return errno == ECONNRESET ? Io::closed : Io::failed;
    }
  }
  return Io::ok;
}

inline void set_socket_options(int fd) {
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));  // small messages, one round trip each
}

// What travels: a fixed header, then `bytes` of payload. Every rank runs the
// same program on the same kind of machine, so the layout is the struct's.
enum class TcpKind : uint32_t {
  hello = 1,      // rank -> rank 0 at connection
  welcome,        // rank 0 -> rank: every rank is here
  all_reduce,     // rank -> rank 0: its part
  broadcast,
  all_gather,
  barrier,
  result,         // rank 0 -> rank: the combined result
  failed,         // rank 0 -> rank: a message saying what went wrong
  timed_out,      // same, for a rank that did not arrive in time
};

inline const char* kind_name(TcpKind k) {
  switch (k) {
    case TcpKind::hello: return "hello";
    case TcpKind::welcome: return "welcome";
    case TcpKind::all_reduce: return "all_reduce";
    case TcpKind::broadcast: return "broadcast";
    case TcpKind::all_gather: return "all_gather";
    case TcpKind::barrier: return "barrier";
    case TcpKind::result: return "result";
    case TcpKind::failed: return "failure notice";
    case TcpKind::timed_out: return "timeout notice";
  }
  return "unknown message";
}

struct TcpHeader {
  static constexpr uint32_t kMagic = 0x4d434c50;  // "MCLP"
  uint32_t magic = kMagic;
  TcpKind kind = TcpKind::hello;
  int32_t rank = 0;
  int32_t world = 0;
  int64_t seq = 0;    // the collective's number on its communicator
  int64_t bytes = 0;  // payload that follows
  int32_t dtype = 0;
  int32_t op = 0;
  int32_t root = 0;
  int32_t pad = 0;
};

// One communicator's connections: on rank 0 one per other rank (index =
// rank), elsewhere the one to rank 0.
struct TcpState {
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  std::string master_addr;
  std::vector<Socket> peers;  // rank 0 only
  Socket hub;                 // other ranks
  int64_t seq = 0;
  std::string poisoned;

  void check_usable(const char* op) const {
    MAMCLIP_CHECK(poisoned.empty(), dist_error, "tcp ", op, " on rank ", rank,
                  ": this communicator is unusable after an earlier failure (", poisoned,
                  "); the job must be restarted");
  }
};

inline std::string rank_list(const std::vector<int>& ranks) {
  std::string s;
  for (int r : ranks) s += (s.empty() ? "" : ", ") + std::to_string(r);
  return (ranks.size() == 1 ? "rank " : "ranks ") + s;
}

// Rank 0's listening socket on `port` (0: any free port), all interfaces.
inline Socket tcp_listen(int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* list = nullptr;
  const std::string service = std::to_string(port);
  const int gai = ::getaddrinfo(nullptr, service.c_str(), &hints, &list);
  MAMCLIP_CHECK(gai == 0, dist_error, "tcp rendezvous on rank 0: cannot resolve the local address for port ", port,
                ": ", ::gai_strerror(gai));
  std::string last = "no address";
  Socket s;
  for (addrinfo* a = list; a && !s.valid(); a = a->ai_next) {
    Socket c(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
    if (!c.valid()) continue;
    int one = 1, zero = 0;
    ::setsockopt(c.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (a->ai_family == AF_INET6) ::setsockopt(c.fd(), IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    if (::bind(c.fd(), a->ai_addr, a->ai_addrlen) == 0 && ::listen(c.fd(), SOMAXCONN) == 0) s = std::move(c);
    else last = std::strerror(errno);
  }
  ::freeaddrinfo(list);
  MAMCLIP_CHECK(s.valid(), dist_error, "tcp rendezvous on rank 0: cannot listen on port ", port, ": ", last,
                " (another program may hold the port: set MAMCLIP_RENDEZVOUS_PORT, or MASTER_PORT, to a free one)");
  ::fcntl(s.fd(), F_SETFL, ::fcntl(s.fd(), F_GETFL, 0) | O_NONBLOCK);
  return s;
}

inline int bound_port(const Socket& s) {
  sockaddr_storage a{};
  socklen_t len = sizeof(a);
  if (::getsockname(s.fd(), reinterpret_cast<sockaddr*>(&a), &len) != 0) return -1;
  if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&a)->sin_port);
  return ntohs(reinterpret_cast<sockaddr_in6*>(&a)->sin6_port);
}

// A connection to host:port, retried until the deadline (rank 0 may start
// after the others).
inline Socket tcp_connect(const std::string& host, int port, tcp_clock::time_point deadline, int rank,
                          std::chrono::milliseconds timeout) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  const std::string service = std::to_string(port);
  std::string last = "no attempt";
  for (;;) {
    addrinfo* list = nullptr;
    const int gai = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &list);
    if (gai != 0) {
      last = std::string("cannot resolve '") + host + "': " + ::gai_strerror(gai);
    } else {
      for (addrinfo* a = list; a; a = a->ai_next) {
        Socket c(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
        if (!c.valid()) continue;
        set_socket_options(c.fd());
        int rc = ::connect(c.fd(), a->ai_addr, a->ai_addrlen);
        if (rc != 0 && errno == EINPROGRESS) {
          int err = ETIMEDOUT;
          if (wait_fd(c.fd(), POLLOUT, deadline) == Io::ok) {
            socklen_t len = sizeof(err);
            ::getsockopt(c.fd(), SOL_SOCKET, SO_ERROR, &err, &len);
          }
          rc = err == 0 ? 0 : -1;
          errno = err;
        }
        if (rc == 0) {
          ::freeaddrinfo(list);
          return c;
        }
        last = std::strerror(errno);
      }
      ::freeaddrinfo(list);
    }
    if (ms_left(deadline) == 0)
      throw dist_timeout_error("tcp rendezvous: rank " + std::to_string(rank) + " could not connect to rank 0 at " +
                               host + ":" + service + " within " + seconds_str(timeout) + " (" + last +
                               "); check MASTER_ADDR and MASTER_PORT, and that rank 0 started");
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min(100, ms_left(deadline))));
  }
}

}  // namespace detail

class TcpCommunicator final : public Communicator {
 public:
  // Collective over options.world_size processes; returns when all have
  // connected (or throws, naming the ranks that did not within the timeout).
  explicit TcpCommunicator(const TcpOptions& options) : state_(std::make_shared<detail::TcpState>()) {
    MAMCLIP_CHECK(options.world_size >= 1, value_error, "TcpCommunicator: world size is ", options.world_size,
                  "; expected at least 1");
    MAMCLIP_CHECK(options.rank >= 0 && options.rank < options.world_size, value_error, "TcpCommunicator: rank is ",
                  options.rank, "; expected 0..", options.world_size - 1, " (world size ", options.world_size, ")");
    MAMCLIP_CHECK(options.master_port >= 0 && options.master_port <= 65535, value_error,
                  "TcpCommunicator: port is ", options.master_port, "; expected 0..65535");
    MAMCLIP_CHECK(options.timeout.count() > 0, value_error, "TcpCommunicator: the timeout must be positive");
    state_->rank = options.rank;
    state_->size = options.world_size;
    state_->local_rank = options.local_rank;
    state_->master_addr = options.master_addr;
    timeout_ = options.timeout;
    if (state_->size == 1) return;
    if (state_->rank == 0) {
      detail::Socket listener = detail::tcp_listen(options.master_port);
      accept_all(listener, "port " + std::to_string(options.master_port));
    } else {
      join(options.master_port);
    }
  }

  int rank() const override { return state_->rank; }
  int world_size() const override { return state_->size; }
  int local_rank() const override { return state_->local_rank; }
  std::string backend() const override { return "tcp"; }

  void all_reduce(void* data, int64_t count, DType dtype, ReduceOp op) override {
    const size_t bytes = checked_bytes("all_reduce", count, dtype);
    Message m = begin(detail::TcpKind::all_reduce, static_cast<int64_t>(bytes), dtype);
    m.header.op = static_cast<int32_t>(op);
    if (state_->size == 1) return;
    if (state_->rank != 0) return exchange(m, data, bytes, data, bytes);
    std::vector<std::vector<char>> parts = gather_parts(m, [&](int) { return bytes; });
    for (int r = 1; r < state_->size; ++r) reduce_into(data, parts[static_cast<size_t>(r)].data(), count, dtype, op);
    send_result(m, data, bytes);
  }

  // Over TCP a collective completes before it returns; the Work is done.
  std::unique_ptr<Work> all_reduce_async(void* data, int64_t count, DType dtype, ReduceOp op) override {
    all_reduce(data, count, dtype, op);
    struct Done final : Work {
      bool test() override { return true; }
      void wait() override {}
    };
    return std::make_unique<Done>();
  }

  void broadcast(void* data, int64_t count, DType dtype, int root) override {
    MAMCLIP_CHECK(root >= 0 && root < state_->size, value_error, "broadcast: root is ", root,
                  "; the world has ranks 0..", state_->size - 1);
    const size_t bytes = checked_bytes("broadcast", count, dtype);
    Message m = begin(detail::TcpKind::broadcast, static_cast<int64_t>(bytes), dtype);
    m.header.root = root;
    if (state_->size == 1) return;
    if (state_->rank != 0) {
      // The root sends its data; the others only say they are here.
      m.header.bytes = state_->rank == root ? static_cast<int64_t>(bytes) : 0;
      return exchange(m, data, state_->rank == root ? bytes : 0, data, bytes);
    }
    std::vector<std::vector<char>> parts = gather_parts(m, [&](int r) { return r == root ? bytes : size_t{0}; });
    if (root != 0 && bytes > 0) std::memcpy(data, parts[static_cast<size_t>(root)].data(), bytes);
    send_result(m, data, bytes);
  }

  void all_gather(const void* send, void* recv, const std::vector<int64_t>& counts, DType dtype) override {
    MAMCLIP_CHECK(counts.size() == static_cast<size_t>(state_->size), value_error, "all_gather: ", counts.size(),
                  " counts for a world of ", state_->size);
    std::vector<size_t> offsets(counts.size() + 1, 0);
    for (size_t r = 0; r < counts.size(); ++r)
      offsets[r + 1] = offsets[r] + checked_bytes("all_gather", counts[r], dtype);
    const size_t mine = offsets[static_cast<size_t>(state_->rank) + 1] - offsets[static_cast<size_t>(state_->rank)];
    const size_t total = offsets.back();
    Message m = begin(detail::TcpKind::all_gather, static_cast<int64_t>(mine), dtype);
    char* out = static_cast<char*>(recv);
    if (state_->rank != 0 && state_->size > 1) return exchange(m, send, mine, recv, total);
    if (mine > 0 && send != out) std::memmove(out, send, mine);
    if (state_->size == 1) return;
    std::vector<std::vector<char>> parts =
        gather_parts(m, [&](int r) { return offsets[static_cast<size_t>(r) + 1] - offsets[static_cast<size_t>(r)]; });
    for (int r = 1; r < state_->size; ++r)
      if (!parts[static_cast<size_t>(r)].empty())
        std::memcpy(out + offsets[static_cast<size_t>(r)], parts[static_cast<size_t>(r)].data(),
                    parts[static_cast<size_t>(r)].size());
    send_result(m, recv, total);
  }

  void barrier() override {
    Message m = begin(detail::TcpKind::barrier, 0, DType::u8);
    if (state_->size == 1) return;
    if (state_->rank != 0) return exchange(m, nullptr, 0, nullptr, 0);
    gather_parts(m, [](int) { return size_t{0}; });
    send_result(m, nullptr, 0);
  }

  // Fresh connections: rank 0 listens on a free port, which travels over
  // this communicator; the duplicate's messages never mix with this one's.
  std::unique_ptr<Communicator> duplicate() const override {
    auto* self = const_cast<TcpCommunicator*>(this);  // the port's broadcast is a collective of this one
    auto dup = std::unique_ptr<TcpCommunicator>(new TcpCommunicator());
    auto& s = *dup->state_;
    s.rank = state_->rank;
    s.size = state_->size;
    s.local_rank = state_->local_rank;
    s.master_addr = state_->master_addr;
    dup->set_timeout(timeout_);
    if (s.size == 1) return dup;
    detail::Socket listener;
    int64_t port = 0;
    if (s.rank == 0) {
      listener = detail::tcp_listen(0);
      port = detail::bound_port(listener);
    }
    self->broadcast(&port, 1, DType::i64, 0);
    if (s.rank == 0) dup->accept_all(listener, "port " + std::to_string(port) + " (a duplicate communicator)");
    else dup->join(static_cast<int>(port));
    return dup;
  }

 private:
  struct Message {
    detail::TcpHeader header;
    std::string what;  // "all_reduce #3 (4 float32 elements) on rank 1 of 3"
  };

  TcpCommunicator() : state_(std::make_shared<detail::TcpState>()) {}

  static size_t checked_bytes(const char* op, int64_t count, DType dtype) {
    MAMCLIP_CHECK(count >= 0, value_error, op, ": negative count ", count);
    return static_cast<size_t>(count) * dtype_size(dtype);
  }

  Message begin(detail::TcpKind kind, int64_t bytes, DType dtype) {
    state_->check_usable(detail::kind_name(kind));
    Message m;
    m.header.kind = kind;
    m.header.rank = state_->rank;
    m.header.world = state_->size;
    m.header.seq = ++state_->seq;
    m.header.bytes = bytes;
    m.header.dtype = static_cast<int32_t>(dtype);
    const int64_t elements = static_cast<int64_t>(static_cast<size_t>(bytes) / std::max<size_t>(1, dtype_size(dtype)));
    m.what = std::string(detail::kind_name(kind)) + " #" + std::to_string(m.header.seq) +
             (kind == detail::TcpKind::barrier
                  ? std::string()
                  : " (" + std::to_string(elements) + " " + std::string(dtype_name(dtype)) + " elements)") +
             " on rank " + std::to_string(state_->rank) + " of " + std::to_string(state_->size);
    return m;
  }

  // ---- ranks other than 0: send my part, receive the result

  void exchange(const Message& m, const void* send, size_t send_bytes, void* recv, size_t recv_bytes) {
    detail::TcpHeader h = m.header;
    h.bytes = static_cast<int64_t>(send_bytes);
    const auto deadline = detail::tcp_clock::now() + timeout_;
    const int fd = state_->hub.fd();
    detail::Io sent = detail::send_all(fd, &h, sizeof(h), deadline);
    if (sent == detail::Io::ok && send_bytes > 0) sent = detail::send_all(fd, send, send_bytes, deadline);
    if (sent != detail::Io::ok) {
      // Rank 0 may have given up on this collective already: its notice says why.
      read_notice(m, std::chrono::milliseconds(500));
      check_io(sent, m, "sending to rank 0");
    }
    // Rank 0 names a missing rank when its own timeout passes; wait a little
    // longer so that its message, not a bare timeout, is what arrives.
    const auto reply_deadline = detail::tcp_clock::now() + timeout_ + grace();
    detail::TcpHeader r;
    check_io(detail::recv_all(fd, &r, sizeof(r), reply_deadline), m, "waiting for rank 0");
    if (r.magic != detail::TcpHeader::kMagic)
      fail(m, "rank 0 answered with a message that is not ours (bad magic)");
    if (r.kind == detail::TcpKind::failed || r.kind == detail::TcpKind::timed_out) notice_body(m, r);
    if (r.kind != detail::TcpKind::result || r.seq != m.header.seq || r.bytes != static_cast<int64_t>(recv_bytes))
      fail(m, std::string("rank 0 answered with ") + detail::kind_name(r.kind) + " #" + std::to_string(r.seq) + " of " +
                  std::to_string(r.bytes) + " bytes, expected the result #" + std::to_string(m.header.seq) + " of " +
                  std::to_string(recv_bytes) + " bytes (the ranks called different collectives)");
    if (recv_bytes > 0) check_io(detail::recv_all(fd, recv, recv_bytes, reply_deadline), m, "receiving from rank 0");
  }

  void check_io(detail::Io io, const Message& m, const char* doing) {
    using detail::Io;
    if (io == Io::ok) return;
    if (io == Io::timed_out) {
      state_->poisoned = m.what + " timed out";
      throw dist_timeout_error("tcp " + m.what + " timed out after " + detail::seconds_str(timeout_ + grace()) +
                               " " + doing + ": rank 0 did not answer (it hangs, or it lost its connection)");
    }
    fail(m, std::string(doing) + ": " +
                (io == Io::closed ? "rank 0 left (its connection closed)" : std::string(std::strerror(errno))));
  }

  // Throws rank 0's notice when one arrives within `wait`; else returns.
  void read_notice(const Message& m, std::chrono::milliseconds wait) {
    detail::TcpHeader r;
    if (detail::recv_all(state_->hub.fd(), &r, sizeof(r), detail::tcp_clock::now() + wait) == detail::Io::ok &&
        r.magic == detail::TcpHeader::kMagic &&
        (r.kind == detail::TcpKind::failed || r.kind == detail::TcpKind::timed_out))
      notice_body(m, r);
  }

  // Reads the text of a notice whose header is `r`, and throws it.
  [[noreturn]] void notice_body(const Message& m, const detail::TcpHeader& r) {
    std::string why(static_cast<size_t>(std::clamp<int64_t>(r.bytes, 0, 1 << 16)), '\0');
    if (detail::recv_all(state_->hub.fd(), why.data(), why.size(), detail::tcp_clock::now() + std::chrono::seconds(5)) !=
        detail::Io::ok)
      why = "(its message was cut off)";
    throw_notice(m, r.kind, why);
  }

  // A failure or timeout notice from rank 0, which names the cause.
  [[noreturn]] void throw_notice(const Message& m, detail::TcpKind kind, const std::string& why) {
    const bool timed_out = kind == detail::TcpKind::timed_out;
    state_->poisoned = m.what + ": " + why;
    const std::string text = "tcp " + m.what + (timed_out ? " timed out" : " failed") + ": rank 0 reports: " + why;
    if (timed_out) throw dist_timeout_error(text);
    throw dist_error(text);
  }

  [[noreturn]] void fail(const Message& m, const std::string& why) {
    state_->poisoned = m.what + ": " + why;
    throw dist_error("tcp " + m.what + " failed: " + why);
  }

  std::chrono::milliseconds grace() const { return std::chrono::milliseconds(2000); }

  // ---- rank 0: receive every part, combine, send the result

  // parts[r] = rank r's payload (r >= 1), checked against what rank 0 expects.
  template <class ExpectedBytes>
  std::vector<std::vector<char>> gather_parts(const Message& m, ExpectedBytes expected) {
    std::vector<std::vector<char>> parts(static_cast<size_t>(state_->size));
    std::vector<int> pending;
    for (int r = 1; r < state_->size; ++r) pending.push_back(r);
    const auto deadline = detail::tcp_clock::now() + timeout_;
    while (!pending.empty()) {
      std::vector<pollfd> fds;
      for (int r : pending) fds.push_back({state_->peers[static_cast<size_t>(r)].fd(), POLLIN, 0});
      const int n = ::poll(fds.data(), fds.size(), detail::ms_left(deadline));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) abort_job(m, std::string("poll failed: ") + std::strerror(errno), false);
      if (n == 0)
        abort_job(m,
                  detail::rank_list(pending) + " did not arrive within " +
                      detail::seconds_str(timeout_) + " (hung, or slower than MAMCLIP_DIST_TIMEOUT allows)",
                  true);
      std::vector<int> still;
      for (size_t i = 0; i < fds.size(); ++i) {
        const int r = pending[i];
        if (fds[i].revents == 0) {
          still.push_back(r);
          continue;
        }
        parts[static_cast<size_t>(r)] = read_part(m, r, expected(r), deadline);
      }
      pending = std::move(still);
    }
    return parts;
  }

  std::vector<char> read_part(const Message& m, int r, size_t expected, detail::tcp_clock::time_point deadline) {
    const int fd = state_->peers[static_cast<size_t>(r)].fd();
    detail::TcpHeader h;
    const std::string who = "rank " + std::to_string(r);
    read_or_abort(m, r, detail::recv_all(fd, &h, sizeof(h), deadline));
    if (h.magic != detail::TcpHeader::kMagic || h.rank != r)
      abort_job(m, who + " sent a message that is not ours (bad magic or rank)", false);
    const auto& mine = m.header;
    if (h.kind != mine.kind || h.seq != mine.seq || h.dtype != mine.dtype || h.op != mine.op ||
        h.root != mine.root || h.bytes != static_cast<int64_t>(expected)) {
      const DType theirs = static_cast<DType>(std::clamp(h.dtype, 0, static_cast<int>(DType::boolean)));
      abort_job(m,
                who + " is in " + detail::kind_name(h.kind) + " #" + std::to_string(h.seq) + " (" +
                    std::to_string(h.bytes) + " bytes of " + std::string(dtype_name(theirs)) + ", op " +
                    std::to_string(h.op) + ", root " + std::to_string(h.root) + ") but rank 0 expects " +
                    std::to_string(expected) + " bytes of " +
                    std::string(dtype_name(static_cast<DType>(mine.dtype))) + ", op " + std::to_string(mine.op) +
                    ", root " + std::to_string(mine.root) +
                    ": the ranks called different collectives or passed different sizes",
                false);
    }
    std::vector<char> part(expected);
    if (expected > 0) read_or_abort(m, r, detail::recv_all(fd, part.data(), expected, deadline));
    return part;
  }

  void read_or_abort(const Message& m, int r, detail::Io io) {
    using detail::Io;
    if (io == Io::ok) return;
    const std::string who = "rank " + std::to_string(r);
    if (io == Io::closed) abort_job(m, who + " left (its connection closed)", false);
    if (io == Io::timed_out)
      abort_job(m, who + " did not finish sending within " + detail::seconds_str(timeout_), true);
    abort_job(m, "reading from " + who + ": " + std::strerror(errno), false);
  }

  void send_result(const Message& m, const void* data, size_t bytes) {
    detail::TcpHeader h = m.header;
    h.kind = detail::TcpKind::result;
    h.rank = 0;
    h.bytes = static_cast<int64_t>(bytes);
    const auto deadline = detail::tcp_clock::now() + timeout_;
    for (int r = 1; r < state_->size; ++r) {
      const int fd = state_->peers[static_cast<size_t>(r)].fd();
      detail::Io io = detail::send_all(fd, &h, sizeof(h), deadline);
      if (io == detail::Io::ok && bytes > 0) io = detail::send_all(fd, data, bytes, deadline);
      if (io == detail::Io::closed) abort_job(m, "rank " + std::to_string(r) + " left (its connection closed)", false);
      if (io != detail::Io::ok) abort_job(m, "sending the result to rank " + std::to_string(r) + " failed", false);
    }
  }

  // Rank 0: tell every rank what went wrong, then throw it here too.
  [[noreturn]] void abort_job(const Message& m, const std::string& why, bool timed_out) {
    const std::string text = "tcp " + m.what + (timed_out ? " timed out: " : " failed: ") + why;
    notify_all(timed_out ? detail::TcpKind::timed_out : detail::TcpKind::failed, why, m.header.seq);
    state_->poisoned = m.what + ": " + why;
    if (timed_out) throw dist_timeout_error(text);
    throw dist_error(text);
  }

  void notify_all(detail::TcpKind kind, const std::string& text, int64_t seq) {
    for (detail::Socket& s : state_->peers)
      if (s.valid()) notify(s, kind, text, seq);
  }

  void notify(const detail::Socket& s, detail::TcpKind kind, const std::string& text, int64_t seq) {
    detail::TcpHeader h;
    h.kind = kind;
    h.seq = seq;
    h.world = state_->size;
    h.bytes = static_cast<int64_t>(text.size());
    const auto deadline = detail::tcp_clock::now() + std::chrono::seconds(2);
    if (detail::send_all(s.fd(), &h, sizeof(h), deadline) == detail::Io::ok)
      detail::send_all(s.fd(), text.data(), text.size(), deadline);
    ::shutdown(s.fd(), SHUT_WR);  // the rank reads the notice, then sees the end
  }

  template <class T>
  static void reduce_typed(T* acc, const T* x, int64_t n, ReduceOp op) {
    for (int64_t i = 0; i < n; ++i) {
      if constexpr (std::is_same_v<T, bool>) {
        acc[i] = op == ReduceOp::min ? (acc[i] && x[i]) : (acc[i] || x[i]);  // sum of bools is or
      } else {
        using A = acc_t<T>;
        const A a = static_cast<A>(acc[i]), b = static_cast<A>(x[i]);
        acc[i] = static_cast<T>(op == ReduceOp::sum ? A(a + b) : op == ReduceOp::max ? std::max(a, b) : std::min(a, b));
      }
    }
  }

  static void reduce_into(void* acc, const void* x, int64_t n, DType dtype, ReduceOp op) {
    switch (dtype) {
      case DType::f32: return reduce_typed(static_cast<float*>(acc), static_cast<const float*>(x), n, op);
      case DType::f64: return reduce_typed(static_cast<double*>(acc), static_cast<const double*>(x), n, op);
      case DType::f16: return reduce_typed(static_cast<half*>(acc), static_cast<const half*>(x), n, op);
      case DType::bf16: return reduce_typed(static_cast<bfloat16*>(acc), static_cast<const bfloat16*>(x), n, op);
      case DType::i64: return reduce_typed(static_cast<int64_t*>(acc), static_cast<const int64_t*>(x), n, op);
      case DType::i32: return reduce_typed(static_cast<int32_t*>(acc), static_cast<const int32_t*>(x), n, op);
      case DType::u8: return reduce_typed(static_cast<uint8_t*>(acc), static_cast<const uint8_t*>(x), n, op);
      case DType::boolean: return reduce_typed(static_cast<bool*>(acc), static_cast<const bool*>(x), n, op);
    }
  }

  // ---- rendezvous

  // Rank 0: accept world_size - 1 ranks, each saying hello with its rank and
  // world size; then welcome them all.
  void accept_all(detail::Socket& listener, const std::string& where) {
    const auto deadline = detail::tcp_clock::now() + timeout_;
    state_->peers.clear();
    state_->peers.resize(static_cast<size_t>(state_->size));
    Message m;
    m.what = "rendezvous on " + where + " (rank 0 of " + std::to_string(state_->size) + ")";
    int joined = 0;
    while (joined < state_->size - 1) {
      if (detail::wait_fd(listener.fd(), POLLIN, deadline) != detail::Io::ok) {
        std::vector<int> missing;
        for (int r = 1; r < state_->size; ++r)
          if (!state_->peers[static_cast<size_t>(r)].valid()) missing.push_back(r);
        abort_job(m,
                  detail::rank_list(missing) + " did not connect within " + detail::seconds_str(timeout_) +
                      " (check that every rank started with the same MASTER_ADDR and MASTER_PORT)",
                  true);
      }
      detail::Socket c(::accept4(listener.fd(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!c.valid()) continue;
      detail::set_socket_options(c.fd());
      detail::TcpHeader h;
      // A stray connection (not one of ours) gets a few seconds, then is dropped.
      const auto hello_deadline = std::min(deadline, detail::tcp_clock::now() + std::chrono::seconds(10));
      if (detail::recv_all(c.fd(), &h, sizeof(h), hello_deadline) != detail::Io::ok ||
          h.magic != detail::TcpHeader::kMagic || h.kind != detail::TcpKind::hello)
        continue;
      std::string wrong;
      if (h.world != state_->size)
        wrong = "rank " + std::to_string(h.rank) + " was started with WORLD_SIZE " + std::to_string(h.world) +
                ", rank 0 with " + std::to_string(state_->size);
      else if (h.rank < 1 || h.rank >= state_->size)
        wrong = "a process says it is rank " + std::to_string(h.rank) + "; expected 1.." +
                std::to_string(state_->size - 1) + " (check RANK)";
      else if (state_->peers[static_cast<size_t>(h.rank)].valid())
        wrong = "two processes say they are rank " + std::to_string(h.rank) + " (check RANK)";
      if (!wrong.empty()) {
        notify(c, detail::TcpKind::failed, wrong, 0);  // it is not among the peers yet
        abort_job(m, wrong, false);
      }
      state_->peers[static_cast<size_t>(h.rank)] = std::move(c);
      ++joined;
    }
    detail::TcpHeader welcome;
    welcome.kind = detail::TcpKind::welcome;
    welcome.world = state_->size;
    for (int r = 1; r < state_->size; ++r)
      if (detail::send_all(state_->peers[static_cast<size_t>(r)].fd(), &welcome, sizeof(welcome), deadline) !=
          detail::Io::ok)
        abort_job(m, "rank " + std::to_string(r) + " left during the rendezvous", false);
  }

  // Other ranks: connect to rank 0, say hello, wait for everyone.
  void join(int port) {
    const auto deadline = detail::tcp_clock::now() + timeout_;
    state_->hub = detail::tcp_connect(state_->master_addr, port, deadline, state_->rank, timeout_);
    Message m;
    m.what = "rendezvous with rank 0 at " + state_->master_addr + ":" + std::to_string(port) + " (rank " +
             std::to_string(state_->rank) + " of " + std::to_string(state_->size) + ")";
    detail::TcpHeader hello;
    hello.kind = detail::TcpKind::hello;
    hello.rank = state_->rank;
    hello.world = state_->size;
    check_io(detail::send_all(state_->hub.fd(), &hello, sizeof(hello), deadline), m, "greeting rank 0");
    detail::TcpHeader r;
    check_io(detail::recv_all(state_->hub.fd(), &r, sizeof(r), deadline + grace()), m, "waiting for every rank");
    if (r.kind == detail::TcpKind::failed || r.kind == detail::TcpKind::timed_out) notice_body(m, r);
    if (r.magic != detail::TcpHeader::kMagic || r.kind != detail::TcpKind::welcome)
      fail(m, "the process at the rendezvous address is not rank 0 of this job");
  }

  std::shared_ptr<detail::TcpState> state_;
};

// The launch that torchrun describes in the environment (RANK, WORLD_SIZE,
// LOCAL_RANK, MASTER_ADDR, MASTER_PORT; MAMCLIP_DIST_TIMEOUT), or a world of
// one (rank 0, world size 1) when WORLD_SIZE is unset or 1. Rank 0 listens on
// MAMCLIP_RENDEZVOUS_PORT when set, else on MASTER_PORT + 1 when torchrun's
// agent holds MASTER_PORT (TORCHELASTIC_USE_AGENT_STORE=True), else on
// MASTER_PORT.
inline TcpOptions tcp_options_from_environment() {
  auto get = [](const char* name) -> const char* {
    const char* v = std::getenv(name);
    return v && *v ? v : nullptr;
  };
  auto integer = [&](const char* name, int64_t lo, int64_t hi, const std::string& meaning) -> int {
    const char* v = get(name);
    MAMCLIP_CHECK(v, dist_error, name, " is not set; a torchrun-style launch (WORLD_SIZE > 1) needs ", meaning);
    char* end = nullptr;
    errno = 0;
    const long long x = std::strtoll(v, &end, 10);
    MAMCLIP_CHECK(errno == 0 && end != v && *end == '\0' && x >= lo && x <= hi, dist_error, name, " is '", v,
                  "'; expected an integer in ", lo, "..", hi, " (", meaning, ")");
    return static_cast<int>(x);
  };
  TcpOptions o;
  if (!get("WORLD_SIZE")) return o;
  o.world_size = integer("WORLD_SIZE", 1, INT_MAX, "the number of processes");
  if (o.world_size == 1) return o;
  o.rank = integer("RANK", 0, o.world_size - 1, "this process's rank");
  o.local_rank = integer("LOCAL_RANK", 0, o.world_size - 1, "the rank's index on its machine, which picks its GPU");
  const char* addr = get("MASTER_ADDR");
  MAMCLIP_CHECK(addr, dist_error, "MASTER_ADDR is not set; a torchrun-style launch (WORLD_SIZE > 1) needs ",
                "the host name or address of rank 0's machine");
  o.master_addr = addr;
  o.master_port = integer("MASTER_PORT", 1, 65535, "the port of the rendezvous on rank 0's machine");
  // torchrun's agent on node 0 serves its own store on MASTER_PORT when it
  // says TORCHELASTIC_USE_AGENT_STORE=True; rank 0 then takes the next port.
  if (get("MAMCLIP_RENDEZVOUS_PORT"))
    o.master_port = integer("MAMCLIP_RENDEZVOUS_PORT", 1, 65535, "the port rank 0 listens on, instead of MASTER_PORT");
  else if (const char* agent = get("TORCHELASTIC_USE_AGENT_STORE"); agent && std::string(agent) == "True")
    o.master_port = o.master_port == 65535 ? 65534 : o.master_port + 1;
  o.timeout = detail::timeout_from_environment(o.timeout);
  return o;
}

// A TcpCommunicator for a torchrun-style launch (WORLD_SIZE > 1 in the
// environment), else nullptr.
inline std::unique_ptr<Communicator> tcp_communicator_from_environment() {
  const TcpOptions o = tcp_options_from_environment();
  if (o.world_size <= 1) return nullptr;
  return std::make_unique<TcpCommunicator>(o);
}

}  // namespace mamclip::dist
