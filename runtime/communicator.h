// Communicator: a group of ranks (processes or threads, one device each) that run the same graph on different
// data and combine tensors, for data-parallel training (apps/trainer.h) and SyncBN (graph/model/distributed.h).
//
// Every rank must call the same collectives in the same order with tensors of the same sizes, as NCCL and
// MPI require. The socket implementation checks this (a mismatch is an Error naming both calls); NCCL cannot,
// and hangs. A rank that stops calling leaves the others waiting: the socket implementation gives up after
// its timeout, naming the rank it waited for.
//
// Implementations:
//   make_single_communicator()   world size 1: every collective is a copy.
//   SocketCommunicator           (runtime/socket_communicator.h) host tensors over TCP, reduced by rank 0 in
//                                rank order: bitwise the same result on every rank and in every run. For the
//                                CPU backend (tests: ranks as threads or processes on loopback) and debugging.
//   NcclCommunicator             (runtime/nccl_communicator.h) device tensors over NCCL, with its own stream
//                                so that gradient all-reduces overlap the backward.
//
// Tensors are f32 (reductions) or any dtype (gathers), contiguous, on the communicator's device; the NCCL
// communicator also takes host tensors (staged through the device: for a few scalars, not for bulk data).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace mfuser {

enum class ReduceOp : uint8_t { sum, mean };

// How a collective is ordered against the device's other work (CUDA; on the CPU every collective is done
// when the call returns).
enum class CollectiveOrder : uint8_t {
  in_stream,   // on the device's stream: later work sees the result (SyncBN statistics)
  overlapped,  // on the communicator's own stream, after everything issued before it: its result is ready
               // for work issued after the next join() (bucketed gradient all-reduces during the backward).
               // The input must stay untouched and the output unread until then.
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual std::string kind() const = 0;  // "single", "socket", "nccl"

  // out = the sum (or mean) over ranks of every rank's `in`. f32, equal sizes; out may be in.
  virtual void all_reduce(const Tensor& in, Tensor& out, ReduceOp op,
                          CollectiveOrder order = CollectiveOrder::in_stream) = 0;
  // out (world_size * in.numel() elements, rank-major) = every rank's `in`, rank 0 first. Any dtype (out's).
  virtual void all_gather(const Tensor& in, Tensor& out) = 0;
  // out (in.numel() / world_size elements) = this rank's block of the sum (or mean) over ranks of `in`, whose
  // blocks are rank-major. f32. The ZeRO-1 gradient step.
  virtual void reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op,
                              CollectiveOrder order = CollectiveOrder::in_stream) = 0;
  // Makes the device's later work wait for every overlapped collective issued so far.
  virtual void join() = 0;
  // `bytes` of rank `root` to every rank (resized): rendezvous data such as the NCCL unique id.
  virtual void broadcast_bytes(std::vector<uint8_t>& bytes, int root) = 0;
  // Returns when every rank has called it.
  virtual void barrier() = 0;
};

std::unique_ptr<Communicator> make_single_communicator();

}  // namespace mfuser
