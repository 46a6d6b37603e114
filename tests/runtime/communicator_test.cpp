// The single-process communicator, and the NCCL one at world size 1 (what one lent GPU can run): every
// collective on device tensors, in stream order and overlapped (joined), and staged host tensors. The
// multi-rank semantics are tested on the CPU with the socket communicator (tests/apps/distributed_test.cpp).
#include "runtime/communicator.h"

#include "runtime/nccl_communicator.h"
#include "runtime/socket_communicator.h"
#include "tests/common/cuda_test.h"

namespace mfuser {
namespace {

Tensor ramp(int64_t n, float start) {
  Tensor t = Tensor::empty({n}, DType::f32);
  for (int64_t i = 0; i < n; ++i) t.data<float>()[i] = start + 0.25f * float(i);
  return t;
}

void expect_equal(const Tensor& got, const Tensor& want, const std::string& what) {
  const Tensor host = got.to(Device::cpu());
  ASSERT_EQ(host.numel(), want.numel()) << what;
  for (int64_t i = 0; i < want.numel(); ++i)
    ASSERT_EQ(host.data<float>()[i], want.data<float>()[i]) << what << " element " << i;
}

// One rank's collectives are copies, on any device the communicator serves.
void check_world_of_one(Communicator& comm, Device device) {
  const Tensor x = ramp(1000, 1.f);
  Tensor out = Tensor::empty({1000}, DType::f32, device);
  for (const ReduceOp op : {ReduceOp::sum, ReduceOp::mean}) {
    for (const CollectiveOrder order : {CollectiveOrder::in_stream, CollectiveOrder::overlapped}) {
      test::poison(out);
      comm.all_reduce(x.to(device), out, op, order);
      comm.join();
      expect_equal(out, x, comm.kind() + " all_reduce");
    }
  }
  Tensor gathered = Tensor::empty({1, 1000}, DType::f32, device);
  test::poison(gathered);
  comm.all_gather(x.to(device), gathered);
  expect_equal(gathered, x, comm.kind() + " all_gather");
  test::poison(out);
  comm.reduce_scatter(x.to(device), out, ReduceOp::sum);
  expect_equal(out, x, comm.kind() + " reduce_scatter");
  std::vector<uint8_t> bytes{1, 2, 3};
  comm.broadcast_bytes(bytes, 0);
  EXPECT_EQ(bytes, (std::vector<uint8_t>{1, 2, 3}));
  comm.barrier();
}

TEST(Communicator, SingleProcessCollectivesAreCopies) {
  auto comm = make_single_communicator();
  EXPECT_EQ(comm->world_size(), 1);
  check_world_of_one(*comm, Device::cpu());
  SocketCommunicator socket(0, 1);  // a group of one needs no peer
  check_world_of_one(socket, Device::cpu());
  Tensor wrong = Tensor::empty({3}, DType::f32);
  EXPECT_THROW(comm->all_reduce(ramp(4, 0.f), wrong, ReduceOp::sum), Error);
}

TEST(NcclCommunicatorCuda, WorldOfOneOnDeviceAndStagedHost) {
  MFUSER_REQUIRE_CUDA();
  if (!built_with_nccl()) GTEST_SKIP() << "this build has no NCCL";
  auto comm = make_nccl_communicator(std::make_unique<SocketCommunicator>(0, 1), 0);
  EXPECT_EQ(comm->kind(), "nccl");
  check_world_of_one(*comm, Device::cuda());
  // Host tensors are staged through the device (the trainer's loss counts and losses).
  Tensor host = ramp(7, 2.f);
  comm->all_reduce(host, host, ReduceOp::mean);
  expect_equal(host, ramp(7, 2.f), "staged all_reduce");
  Tensor gathered = Tensor::empty({1, 7}, DType::f32);
  comm->all_gather(ramp(7, 2.f), gathered);
  expect_equal(gathered, ramp(7, 2.f), "staged all_gather");
}

}  // namespace
}  // namespace mfuser
