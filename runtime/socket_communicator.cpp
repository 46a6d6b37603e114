#include "runtime/socket_communicator.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>
#include <utility>

namespace mfuser {

namespace {

struct Header {
  uint32_t kind;
  uint32_t rank;
  uint64_t bytes;
};

// Message kinds, in SocketCommunicator::Kind's order (for errors).
const char* kind_name(uint32_t kind) {
  constexpr const char* names[] = {"connect", "all_reduce(sum)", "all_reduce(mean)", "all_gather",
                                   "reduce_scatter(sum)", "reduce_scatter(mean)", "broadcast", "barrier"};
  return kind < std::size(names) ? names[kind] : "an unknown message";
}

std::string socket_error(const std::string& what) { return str_cat(what, ": ", std::strerror(errno)); }

void set_timeout(int fd, std::chrono::seconds timeout) {
  timeval tv{};
  tv.tv_sec = time_t(timeout.count());
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void send_all(int fd, const void* data, size_t bytes, int peer) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (bytes > 0) {
    const ssize_t n = ::send(fd, p, bytes, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    MFUSER_CHECK(n > 0, socket_error(str_cat("communicator: sending to rank ", peer, " failed")));
    p += n;
    bytes -= size_t(n);
  }
}

void recv_all(int fd, void* data, size_t bytes, int peer) {
  auto* p = static_cast<uint8_t*>(data);
  while (bytes > 0) {
    const ssize_t n = ::recv(fd, p, bytes, 0);
    if (n < 0 && errno == EINTR) continue;
    MFUSER_CHECK(n != 0, "communicator: rank ", peer, " closed the connection (it stopped or failed)");
    MFUSER_CHECK(n > 0, errno == EAGAIN || errno == EWOULDBLOCK
                            ? str_cat("communicator: timed out waiting for rank ", peer)
                            : socket_error(str_cat("communicator: receiving from rank ", peer, " failed")));
    p += n;
    bytes -= size_t(n);
  }
}

sockaddr_in resolve(const std::string& address, int port) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const int rc = getaddrinfo(address.c_str(), nullptr, &hints, &found);
  MFUSER_CHECK(rc == 0 && found, "communicator: cannot resolve the address '", address, "' (MASTER_ADDR): ",
               gai_strerror(rc));
  sockaddr_in addr = *reinterpret_cast<sockaddr_in*>(found->ai_addr);
  freeaddrinfo(found);
  addr.sin_port = htons(uint16_t(port));
  return addr;
}

}  // namespace

enum class SocketCommunicator::Kind : uint32_t { hello, all_reduce_sum, all_reduce_mean, all_gather, reduce_scatter_sum,
                                                 reduce_scatter_mean, broadcast, barrier };

SocketCommunicator::SocketCommunicator(int rank, int world_size, const SocketOptions& options)
    : rank_(rank), world_size_(world_size), options_(options) {
  MFUSER_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "communicator: rank ", rank,
               " is outside a world of size ", world_size);
  MFUSER_CHECK(options.port > 0 && options.port < 65536, "communicator: port ", options.port,
               " is not a TCP port (MASTER_PORT)");
  if (world_size == 1) return;
  try {
    connect_group();
  } catch (...) {
    close_all();  // a constructor that throws runs no destructor: no socket may stay open (or listening)
    throw;
  }
}

void SocketCommunicator::connect_group() {
  const SocketOptions& options = options_;
  const int rank = rank_, world_size = world_size_;
  const sockaddr_in addr = resolve(options.address, options.port);
  const auto deadline = std::chrono::steady_clock::now() + options.timeout;
  if (rank == 0) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    MFUSER_CHECK(listen_fd_ >= 0, socket_error("communicator: socket()"));
    const int one = 1;
    setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in any = addr;
    any.sin_addr.s_addr = htonl(INADDR_ANY);
    MFUSER_CHECK(::bind(listen_fd_, reinterpret_cast<const sockaddr*>(&any), sizeof any) == 0,
                 socket_error(str_cat("communicator: rank 0 cannot listen on port ", options.port)));
    MFUSER_CHECK(::listen(listen_fd_, world_size) == 0, socket_error("communicator: listen()"));
    set_timeout(listen_fd_, options.timeout);
    peers_.assign(size_t(world_size), -1);
    for (int connected = 1; connected < world_size; ++connected) {
      const int fd = ::accept(listen_fd_, nullptr, nullptr);
      MFUSER_CHECK(fd >= 0, errno == EAGAIN || errno == EWOULDBLOCK
                                ? str_cat("communicator: rank 0 waited ", options.timeout.count(), " s for ",
                                          world_size - connected, " of ", world_size - 1, " ranks to connect")
                                : socket_error("communicator: accept()"));
      peers_[0] = fd;  // owned (closed on failure) until its rank is known
      set_timeout(fd, options.timeout);
      Header hello{};
      recv_all(fd, &hello, sizeof hello, -1);
      MFUSER_CHECK(hello.kind == uint32_t(Kind::hello) && hello.bytes == uint64_t(world_size) && hello.rank > 0 &&
                       hello.rank < uint32_t(world_size) && peers_[hello.rank] < 0,
                   "communicator: a peer connected with rank ", hello.rank, " of world size ", hello.bytes,
                   " (this group: world size ", world_size, "; each rank once)");
      peers_[hello.rank] = std::exchange(peers_[0], -1);
    }
    ::close(std::exchange(listen_fd_, -1));
  } else {
    int fd = -1;
    while (true) {
      fd = ::socket(AF_INET, SOCK_STREAM, 0);
      MFUSER_CHECK(fd >= 0, socket_error("communicator: socket()"));
      if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) break;
      ::close(fd);
      MFUSER_CHECK(std::chrono::steady_clock::now() < deadline, "communicator: rank ", rank, " could not connect to "
                   "rank 0 at ", options.address, ":", options.port, " within ", options.timeout.count(), " s");
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    peers_.assign(1, fd);
    set_timeout(fd, options.timeout);
    const Header hello{uint32_t(Kind::hello), uint32_t(rank), uint64_t(world_size)};
    send_all(fd, &hello, sizeof hello, 0);
  }
}

SocketCommunicator::~SocketCommunicator() { close_all(); }

void SocketCommunicator::close_all() {
  for (int& fd : peers_)
    if (fd >= 0) ::close(std::exchange(fd, -1));
  if (listen_fd_ >= 0) ::close(std::exchange(listen_fd_, -1));
}

std::vector<uint8_t> SocketCommunicator::exchange(Kind kind, const void* data, size_t bytes,
                                                  const std::function<Payloads(Payloads&)>& combine) {
  const auto own = static_cast<const uint8_t*>(data);
  if (rank_ != 0) {
    const Header h{uint32_t(kind), uint32_t(rank_), bytes};
    send_all(peers_[0], &h, sizeof h, 0);
    send_all(peers_[0], own, bytes, 0);
    Header reply{};
    recv_all(peers_[0], &reply, sizeof reply, 0);
    MFUSER_CHECK(reply.kind == uint32_t(kind), "communicator: rank ", rank_, " called ", kind_name(uint32_t(kind)),
                 " but the group ran ", kind_name(reply.kind));
    std::vector<uint8_t> out(reply.bytes);
    recv_all(peers_[0], out.data(), out.size(), 0);
    return out;
  }
  Payloads all(static_cast<size_t>(world_size_));
  all[0].assign(own, own + bytes);
  for (int r = 1; r < world_size_; ++r) {
    Header h{};
    recv_all(peers_[size_t(r)], &h, sizeof h, r);
    MFUSER_CHECK(h.kind == uint32_t(kind), "communicator: rank 0 called ", kind_name(uint32_t(kind)), " but rank ", r,
                 " called ", kind_name(h.kind), " (every rank must run the same collectives in the same order)");
    MFUSER_CHECK(kind == Kind::broadcast || h.bytes == bytes, "communicator: ", kind_name(uint32_t(kind)),
                 " of ", bytes, " bytes on rank 0 but ", h.bytes, " bytes on rank ", r);
    all[size_t(r)].resize(h.bytes);
    recv_all(peers_[size_t(r)], all[size_t(r)].data(), h.bytes, r);
  }
  Payloads replies = combine(all);
  MFUSER_CHECK(replies.size() == 1 || replies.size() == size_t(world_size_), "communicator: bad reply count");
  for (int r = 1; r < world_size_; ++r) {
    const std::vector<uint8_t>& reply = replies[replies.size() == 1 ? 0 : size_t(r)];
    const Header h{uint32_t(kind), 0, reply.size()};
    send_all(peers_[size_t(r)], &h, sizeof h, r);
    send_all(peers_[size_t(r)], reply.data(), reply.size(), r);
  }
  return std::move(replies[0]);
}

namespace {

void check_host(const Tensor& t, const char* op, const char* role) {
  MFUSER_CHECK(t.defined() && t.device().is_cpu(), "communicator (socket): ", op, " needs a host tensor as ", role,
               t.defined() ? str_cat(", got one on ", t.device().str()) : std::string(", got none"));
}

// The element-wise sum of every rank's f32 payload in rank order (divided by the world size for a mean),
// restricted to elements [begin, begin + count).
std::vector<uint8_t> reduce_f32(const std::vector<std::vector<uint8_t>>& all, size_t begin, size_t count,
                                ReduceOp op) {
  std::vector<uint8_t> out(count * sizeof(float));
  auto* acc = reinterpret_cast<float*>(out.data());
  std::memcpy(acc, all[0].data() + begin * sizeof(float), out.size());
  for (size_t r = 1; r < all.size(); ++r) {
    const auto* x = reinterpret_cast<const float*>(all[r].data()) + begin;
    for (size_t i = 0; i < count; ++i) acc[i] += x[i];
  }
  if (op == ReduceOp::mean)
    for (size_t i = 0; i < count; ++i) acc[i] /= float(all.size());
  return out;
}

}  // namespace

void SocketCommunicator::all_reduce(const Tensor& in, Tensor& out, ReduceOp op, CollectiveOrder) {
  check_host(in, "all_reduce", "input");
  check_host(out, "all_reduce", "output");
  MFUSER_CHECK(in.dtype() == DType::f32 && out.dtype() == DType::f32 && in.numel() == out.numel(),
               "communicator: all_reduce needs f32 tensors of equal size, got ", in.str(), " and ", out.str());
  if (world_size_ == 1) {
    if (out.raw_data() != in.raw_data()) out.copy_from(in.reshape(out.shape()));
    return;
  }
  const size_t n = size_t(in.numel());
  const std::vector<uint8_t> result =
      exchange(op == ReduceOp::sum ? Kind::all_reduce_sum : Kind::all_reduce_mean, in.raw_data(), in.nbytes(),
               [&](Payloads& all) { return Payloads{reduce_f32(all, 0, n, op)}; });
  std::memcpy(out.raw_data(), result.data(), result.size());
}

void SocketCommunicator::all_gather(const Tensor& in, Tensor& out) {
  check_host(in, "all_gather", "input");
  check_host(out, "all_gather", "output");
  MFUSER_CHECK(in.dtype() == out.dtype() && out.numel() == in.numel() * world_size_, "communicator: all_gather of ",
               in.str(), " into ", out.str(), " (needs the same dtype and ", world_size_, "x the elements)");
  const std::vector<uint8_t> result = exchange(Kind::all_gather, in.raw_data(), in.nbytes(), [](Payloads& all) {
    std::vector<uint8_t> joined;
    for (const auto& p : all) joined.insert(joined.end(), p.begin(), p.end());
    return Payloads{std::move(joined)};
  });
  std::memcpy(out.raw_data(), result.data(), result.size());
}

void SocketCommunicator::reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op, CollectiveOrder) {
  check_host(in, "reduce_scatter", "input");
  check_host(out, "reduce_scatter", "output");
  MFUSER_CHECK(in.dtype() == DType::f32 && out.dtype() == DType::f32 && in.numel() == out.numel() * world_size_,
               "communicator: reduce_scatter of ", in.str(), " into ", out.str(), " (f32, the input ", world_size_,
               "x the output)");
  const size_t block = size_t(out.numel());
  const std::vector<uint8_t> result =
      exchange(op == ReduceOp::sum ? Kind::reduce_scatter_sum : Kind::reduce_scatter_mean, in.raw_data(),
               in.nbytes(), [&](Payloads& all) {
                 Payloads blocks;
                 for (size_t r = 0; r < all.size(); ++r) blocks.push_back(reduce_f32(all, r * block, block, op));
                 return blocks;
               });
  std::memcpy(out.raw_data(), result.data(), result.size());
}

void SocketCommunicator::broadcast_bytes(std::vector<uint8_t>& bytes, int root) {
  MFUSER_CHECK(root >= 0 && root < world_size_, "communicator: broadcast from rank ", root, " of ", world_size_);
  if (world_size_ == 1) return;
  const bool mine = rank_ == root;
  bytes = exchange(Kind::broadcast, mine ? bytes.data() : nullptr, mine ? bytes.size() : 0,
                   [&](Payloads& all) { return Payloads{all[size_t(root)]}; });
}

void SocketCommunicator::barrier() {
  if (world_size_ > 1) exchange(Kind::barrier, nullptr, 0, [](Payloads&) { return Payloads{{}}; });
}

int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  MFUSER_CHECK(fd >= 0, socket_error("free_loopback_port: socket()"));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  const bool ok = ::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  ::close(fd);
  MFUSER_CHECK(ok, socket_error("free_loopback_port: bind()"));
  return ntohs(addr.sin_port);
}

}  // namespace mfuser
