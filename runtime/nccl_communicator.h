// NcclCommunicator: the CUDA communicator (runtime/communicator.h), one process per GPU.
//
// Collectives run on NCCL. CollectiveOrder::in_stream ones go on the device's stream (cuda::context), so later
// kernels see their results; overlapped ones go on the communicator's own stream after an event of the
// device's stream, and join() makes the device's stream wait for them: the bucketed gradient all-reduces run
// while the backward computes the next gradients (graph/model/distributed.h). Both are legal inside a CUDA-graph
// capture (the fork/join through events is captured with them). Host tensors (all_reduce, all_gather) are
// staged through the device (meant for a few scalars: the trainer's loss counts and losses). The mean is ncclAvg.
//
// Built when NCCL was found at configure time (the CUDA toolkit, or PyTorch's nvidia-nccl wheel); otherwise
// make_nccl_communicator throws, saying so.
#pragma once

#include <memory>

#include "runtime/communicator.h"

namespace mfuser {

bool built_with_nccl();

// This rank's NCCL communicator on CUDA device `device`. `bootstrap` (a communicator of the same group, e.g. a
// SocketCommunicator) carries rank 0's unique id to every rank; the NCCL communicator keeps it for
// broadcast_bytes and barrier.
std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<Communicator> bootstrap, int device);

}  // namespace mfuser
