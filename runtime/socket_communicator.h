// SocketCommunicator: the CPU communicator (runtime/communicator.h) over TCP, a star around rank 0.
//
// Rank 0 listens on (address, port); every other rank connects (retrying until the timeout, so ranks may
// start in any order) and says its rank. A collective: every rank sends a header (which collective, how many
// bytes) and its data to rank 0; rank 0 checks that all headers agree (else an Error naming both calls),
// reduces in rank order 0, 1, ..., W-1 (so every rank gets bitwise the same result, run after run), and
// sends the result back. Meant for correctness (tests run N ranks as threads or processes on loopback, the
// multi-rank CPU training) and for the NCCL rendezvous (broadcast_bytes of the unique id), not for speed.
//
// Host tensors only. Errors (a peer that closed its socket, a timeout, a mismatched collective) name the
// rank and the collective; the communicator is unusable afterwards.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/communicator.h"

namespace mfuser {

struct SocketOptions {
  std::string address = "127.0.0.1";  // rank 0's address (MASTER_ADDR)
  int port = 29500;                    // rank 0's port (MASTER_PORT)
  std::chrono::seconds timeout{300};   // for connecting and for every receive
};

class SocketCommunicator final : public Communicator {
 public:
  // Blocks until the group is connected (rank 0: all peers have connected; others: connected to rank 0).
  SocketCommunicator(int rank, int world_size, const SocketOptions& options = {});
  ~SocketCommunicator() override;

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  std::string kind() const override { return "socket"; }
  void all_reduce(const Tensor& in, Tensor& out, ReduceOp op, CollectiveOrder order) override;
  void all_gather(const Tensor& in, Tensor& out) override;
  void reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op, CollectiveOrder order) override;
  void join() override {}
  void broadcast_bytes(std::vector<uint8_t>& bytes, int root) override;
  void barrier() override;

 private:
  enum class Kind : uint32_t;
  void connect_group();
  void close_all();
  using Payloads = std::vector<std::vector<uint8_t>>;
  // Sends this rank's payload to rank 0, which collects all of them (index = rank) and computes the replies
  // with `combine`: one for every rank, or one per rank. Returns this rank's reply.
  std::vector<uint8_t> exchange(Kind kind, const void* data, size_t bytes,
                                const std::function<Payloads(Payloads&)>& combine);

  int rank_, world_size_;
  SocketOptions options_;
  int listen_fd_ = -1;
  std::vector<int> peers_;  // rank 0: the socket of rank r at [r] ([0] unused); others: [0] = rank 0
};

// A TCP port on 127.0.0.1 that nobody listens on right now (tests start a group on it).
int free_loopback_port();

}  // namespace mfuser
