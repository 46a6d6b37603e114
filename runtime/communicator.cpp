#include "runtime/communicator.h"

namespace mfuser {

namespace {

// World size 1: a reduction or gather over one rank is that rank's tensor.
class SingleCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  std::string kind() const override { return "single"; }
  void all_reduce(const Tensor& in, Tensor& out, ReduceOp, CollectiveOrder) override { copy(in, out, "all_reduce"); }
  void all_gather(const Tensor& in, Tensor& out) override { copy(in, out, "all_gather"); }
  void reduce_scatter(const Tensor& in, Tensor& out, ReduceOp, CollectiveOrder) override {
    copy(in, out, "reduce_scatter");
  }
  void join() override {}
  void broadcast_bytes(std::vector<uint8_t>&, int root) override {
    MFUSER_CHECK(root == 0, "communicator: broadcast from rank ", root, " in a world of size 1");
  }
  void barrier() override {}

 private:
  static void copy(const Tensor& in, Tensor& out, const char* op) {
    MFUSER_CHECK(in.defined() && out.defined() && in.numel() == out.numel() && in.dtype() == out.dtype(),
                 "communicator: ", op, " of ", in.str(), " into ", out.str(), " (world size 1: equal sizes)");
    if (in.raw_data() != out.raw_data() || in.device() != out.device()) out.copy_from(in.reshape(out.shape()));
  }
};

}  // namespace

std::unique_ptr<Communicator> make_single_communicator() { return std::make_unique<SingleCommunicator>(); }

}  // namespace mfuser
