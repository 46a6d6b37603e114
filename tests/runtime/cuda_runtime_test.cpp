// The CUDA runtime layer: availability probing (never crashes without a GPU), allocator, copies, errors.
#include "runtime/cuda.h"

#include "kernels/cast/cast.h"
#include "tests/common/test_util.h"

namespace mfuser {
namespace {

TEST(CudaProbe, AnswersWithoutCrashing) {
  // Must hold on machines without a GPU and in builds without CUDA.
  if (!cuda::available()) {
    EXPECT_FALSE(cuda::unavailable_reason().empty());
    EXPECT_EQ(cuda::device_count(), 0);
    EXPECT_THROW(Tensor::empty({4}, DType::f32, Device::cuda()), Error);
    EXPECT_THROW(cuda::memory_stats(0), Error);
  } else {
    EXPECT_GT(cuda::device_count(), 0);
  }
}

TEST(RuntimeCuda, RoundTripAndDeviceCopies) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  Tensor host = Tensor::empty({257, 33}, DType::f32);
  test::fill_uniform(host);
  Tensor dev = host.to(Device::cuda());
  EXPECT_TRUE(dev.device().is_cuda());
  Tensor dev2 = Tensor::empty(host.shape(), DType::f32, Device::cuda());
  test::poison(dev2);
  dev2.copy_from(dev);
  Tensor back = dev2.slice_rows(1, 257).to(Device::cpu());
  EXPECT_EQ(std::memcmp(back.raw_data(), host.slice_rows(1, 257).raw_data(), back.nbytes()), 0);
}

TEST(RuntimeCuda, AllocatorCachesAndCountsPeak) {
  MFUSER_REQUIRE_CUDA();
  cuda::reset_peak(0);
  const size_t before = cuda::memory_stats(0).in_use;
  void* first = nullptr;
  {
    Tensor a = Tensor::empty({1 << 20}, DType::f32, Device::cuda());
    first = a.raw_data();
    EXPECT_GE(cuda::memory_stats(0).in_use, before + (4u << 20));
  }
  EXPECT_EQ(cuda::memory_stats(0).in_use, before);
  EXPECT_GE(cuda::memory_stats(0).peak, before + (4u << 20));
  Tensor b = Tensor::empty({1 << 20}, DType::f32, Device::cuda());
  EXPECT_EQ(b.raw_data(), first);  // same size class comes back from the cache
}

// Scratch memory a captured kernel used belongs to the graph until it is destroyed: the next allocation of
// that size elsewhere must not get the block the replays write into.
TEST(RuntimeCuda, CapturedScratchStaysWithItsGraph) {
  MFUSER_REQUIRE_CUDA();
  const Shape scratch_shape{3 << 18};
  const Tensor source = Tensor::zeros(scratch_shape, DType::f32).to(Device::cuda());
  void* warm = nullptr;
  {
    Tensor t = Tensor::empty(scratch_shape, DType::f32, Device::cuda());  // the eager run caches one block
    warm = t.raw_data();
  }
  void* in_graph = nullptr;
  auto graph = cuda::capture(0, [&] {
    Tensor scratch = Tensor::empty(scratch_shape, DType::f32, Device::cuda());
    kernels::cast(source, scratch);  // a kernel that writes the scratch at every replay
    in_graph = scratch.raw_data();
  });
  EXPECT_EQ(in_graph, warm);  // the capture reused the cached block (no cudaMalloc while capturing)
  {
    Tensor other = Tensor::empty(scratch_shape, DType::f32, Device::cuda());
    EXPECT_NE(other.raw_data(), in_graph);
  }
  graph->replay();
  cuda::synchronize(0);
  graph.reset();  // the graph's blocks go back to the cache
  Tensor after = Tensor::empty(scratch_shape, DType::f32, Device::cuda());
  Tensor after2 = Tensor::empty(scratch_shape, DType::f32, Device::cuda());
  EXPECT_TRUE(after.raw_data() == in_graph || after2.raw_data() == in_graph);
}

TEST(RuntimeCuda, OutOfMemoryIsAnErrorNotACrash) {
  MFUSER_REQUIRE_CUDA();
  const size_t too_much = cuda::device_info(0).total_memory * 4;
  try {
    Tensor huge = Tensor::empty({int64_t(too_much / 4)}, DType::f32, Device::cuda());
    FAIL() << "allocation of " << too_much << " bytes succeeded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("out of memory"), std::string::npos) << e.what();
  }
  Tensor small = Tensor::empty({16}, DType::f32, Device::cuda());  // still usable afterwards
  EXPECT_TRUE(small.defined());
}

}  // namespace
}  // namespace mfuser
