#include "runtime/nccl_communicator.h"

#ifdef MFUSER_HAVE_NCCL
#include <cstring>

#include "runtime/cuda_check.h"
#include "runtime/cuda_context.h"
#endif

namespace mfuser {

#ifdef MFUSER_HAVE_NCCL

namespace {

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(std::unique_ptr<Communicator> bootstrap, int device)
      : bootstrap_(std::move(bootstrap)), device_(device) {
    cuda::Context& ctx = cuda::context(device);  // makes the device current
    compute_ = ctx.stream();
    std::vector<uint8_t> id(sizeof(ncclUniqueId));
    if (bootstrap_->rank() == 0) {
      ncclUniqueId unique{};
      MFUSER_NCCL_CHECK(ncclGetUniqueId(&unique));
      std::memcpy(id.data(), &unique, sizeof unique);
    }
    bootstrap_->broadcast_bytes(id, 0);
    MFUSER_CHECK(id.size() == sizeof(ncclUniqueId), "nccl: the unique id from rank 0 has ", id.size(), " bytes");
    ncclUniqueId unique{};
    std::memcpy(&unique, id.data(), sizeof unique);
    MFUSER_NCCL_CHECK(ncclCommInitRank(&comm_, bootstrap_->world_size(), unique, bootstrap_->rank()));
    MFUSER_CUDA_CHECK(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
    MFUSER_CUDA_CHECK(cudaEventCreateWithFlags(&issued_, cudaEventDisableTiming));
    MFUSER_CUDA_CHECK(cudaEventCreateWithFlags(&finished_, cudaEventDisableTiming));
  }
  ~NcclCommunicator() override {
    cudaStreamSynchronize(side_);
    ncclCommDestroy(comm_);
    cudaEventDestroy(issued_);
    cudaEventDestroy(finished_);
    cudaStreamDestroy(side_);
  }

  int rank() const override { return bootstrap_->rank(); }
  int world_size() const override { return bootstrap_->world_size(); }
  std::string kind() const override { return "nccl"; }

  void all_reduce(const Tensor& in, Tensor& out, ReduceOp op, CollectiveOrder order) override {
    MFUSER_CHECK(in.dtype() == DType::f32 && out.dtype() == DType::f32 && in.numel() == out.numel(),
                 "nccl: all_reduce needs f32 tensors of equal size, got ", in.str(), " and ", out.str());
    if (in.device().is_cpu() && out.device().is_cpu()) return staged(in, out, op);
    check_device(in, "all_reduce");
    check_device(out, "all_reduce");
    cudaStream_t stream = order == CollectiveOrder::overlapped ? fork() : compute_;
    MFUSER_NCCL_CHECK(ncclAllReduce(in.raw_data(), out.raw_data(), size_t(in.numel()), ncclFloat, nccl_op(op), comm_,
                                    stream));
  }
  void all_gather(const Tensor& in, Tensor& out) override {
    if (in.device().is_cpu() && out.device().is_cpu()) {  // staged, as all_reduce
      Tensor gathered = Tensor::empty(out.shape(), out.dtype(), Device::cuda(device_));
      all_gather(in.to(Device::cuda(device_)), gathered);
      return out.copy_from(gathered.to(Device::cpu()));
    }
    check_device(in, "all_gather");
    check_device(out, "all_gather");
    MFUSER_CHECK(in.dtype() == out.dtype() && out.numel() == in.numel() * world_size(), "nccl: all_gather of ",
                 in.str(), " into ", out.str());
    MFUSER_NCCL_CHECK(ncclAllGather(in.raw_data(), out.raw_data(), in.nbytes(), ncclUint8, comm_, compute_));
  }
  void reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op, CollectiveOrder order) override {
    check_device(in, "reduce_scatter");
    check_device(out, "reduce_scatter");
    MFUSER_CHECK(in.dtype() == DType::f32 && out.dtype() == DType::f32 && in.numel() == out.numel() * world_size(),
                 "nccl: reduce_scatter of ", in.str(), " into ", out.str());
    cudaStream_t stream = order == CollectiveOrder::overlapped ? fork() : compute_;
    MFUSER_NCCL_CHECK(ncclReduceScatter(in.raw_data(), out.raw_data(), size_t(out.numel()), ncclFloat, nccl_op(op),
                                        comm_, stream));
  }
  void join() override {
    if (!forked_) return;
    MFUSER_CUDA_CHECK(cudaEventRecord(finished_, side_));
    MFUSER_CUDA_CHECK(cudaStreamWaitEvent(compute_, finished_, 0));
    forked_ = false;
  }
  void broadcast_bytes(std::vector<uint8_t>& bytes, int root) override { bootstrap_->broadcast_bytes(bytes, root); }
  void barrier() override {
    join();
    MFUSER_CUDA_CHECK(cudaStreamSynchronize(compute_));
    bootstrap_->barrier();
  }

 private:
  static ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::sum ? ncclSum : ncclAvg; }

  void check_device(const Tensor& t, const char* op) const {
    MFUSER_CHECK(t.device() == Device::cuda(device_), "nccl: ", op, " on ", t.device().str(),
                 ", but this rank's communicator is on cuda:", device_);
  }
  // The side stream, ordered after everything issued so far on the device's stream.
  cudaStream_t fork() {
    MFUSER_CUDA_CHECK(cudaEventRecord(issued_, compute_));
    MFUSER_CUDA_CHECK(cudaStreamWaitEvent(side_, issued_, 0));
    forked_ = true;
    return side_;
  }
  void staged(const Tensor& in, Tensor& out, ReduceOp op) {
    Tensor on_device = in.to(Device::cuda(device_));
    all_reduce(on_device, on_device, op, CollectiveOrder::in_stream);
    out.copy_from(on_device.to(Device::cpu()).reshape(out.shape()));
  }

  std::unique_ptr<Communicator> bootstrap_;
  int device_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t compute_ = nullptr, side_ = nullptr;
  cudaEvent_t issued_ = nullptr, finished_ = nullptr;
  bool forked_ = false;
};

}  // namespace

bool built_with_nccl() { return true; }

std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<Communicator> bootstrap, int device) {
  MFUSER_CHECK(bootstrap, "nccl: no bootstrap communicator");
  return std::make_unique<NcclCommunicator>(std::move(bootstrap), device);
}

#else

bool built_with_nccl() { return false; }

std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<Communicator>, int) {
  throw Error("nccl: this build has no NCCL (not found at configure time: install NCCL with the CUDA toolkit, or "
              "PyTorch's nvidia-nccl wheel, and reconfigure)");
}

#endif

}  // namespace mfuser
