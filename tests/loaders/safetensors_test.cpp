#include "loaders/safetensors.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "tests/common/test_util.h"

namespace mfuser {
namespace {

namespace fs = std::filesystem;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("mfuser_st_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // A file with an arbitrary declared header length, header text and data bytes.
  std::string write_raw(const std::string& name, uint64_t declared_len, const std::string& header, size_t data_bytes) {
    const std::string p = path(name);
    std::ofstream out(p, std::ios::binary);
    for (int i = 0; i < 8; ++i) out.put(char(declared_len >> (8 * i)));
    out << header << std::string(data_bytes, '\x11');
    return p;
  }
  std::string write_header(const std::string& name, const std::string& header, size_t data_bytes) {
    return write_raw(name, header.size(), header, data_bytes);
  }

  fs::path dir_;
};

TEST_F(SafetensorsTest, RoundTripAllDtypesEmptyAndScalars) {
  MFUSER_SEED_TRACE();
  std::vector<std::pair<std::string, Tensor>> tensors;
  Tensor f32 = Tensor::empty({3, 5}, DType::f32);
  test::fill_uniform(f32);
  Tensor bf16 = Tensor::empty({2, 3, 4}, DType::bf16);
  test::fill_uniform(bf16);
  Tensor f16 = Tensor::empty({7}, DType::f16);
  test::fill_uniform(f16);
  tensors = {{"w.f32", f32},
             {"w.bf16", bf16},
             {"w.f16", f16},
             {"ids.i32", Tensor::from_vector<int32_t>({-1, 2, 3}, {3})},
             {"ids.i64", Tensor::from_vector<int64_t>({49406, 1759, 49407, 0, 0, 1}, {2, 3})},
             {"u8", Tensor::from_vector<uint8_t>({0, 255, 7}, {1, 3})},
             {"mask", Tensor::from_vector<bool>({true, false}, {2})},
             {"empty", Tensor::empty({0, 3}, DType::f32)},
             {"scale", Tensor::from_vector<float>({1e-3f}, {})},
             {"num_batches_tracked", Tensor::from_vector<int64_t>({42}, {})},
             {"six_dims", Tensor::zeros({1, 2, 1, 2, 1, 2}, DType::f32)}};
  const std::string p = path("round.safetensors");
  write_safetensors(p, tensors, {{"format", "pt"}, {"seed", "1"}});

  SafetensorsReader reader(p);
  EXPECT_EQ(reader.entries().size(), tensors.size());
  EXPECT_EQ(reader.metadata().at("format"), "pt");
  for (const auto& [name, t] : tensors) {
    SCOPED_TRACE(name);
    const Tensor v = reader.view(name);
    EXPECT_EQ(v.dtype(), t.dtype());
    EXPECT_EQ(v.shape(), t.shape());
    ASSERT_EQ(v.nbytes(), t.nbytes());
    if (t.nbytes()) {
      EXPECT_EQ(std::memcmp(v.raw_data(), t.raw_data(), t.nbytes()), 0);
    }
  }
  EXPECT_EQ(reader.view("scale").ndim(), 0);
  EXPECT_EQ(reader.view("scale").data<float>()[0], 1e-3f);
}

TEST_F(SafetensorsTest, ViewIsZeroCopyAndOutlivesReader) {
  Tensor t = Tensor::from_vector<float>({1, 2, 3, 4}, {2, 2});
  const std::string p = path("v.safetensors");
  write_safetensors(p, {{"t", t}});
  Tensor v;
  {
    SafetensorsReader reader(p);
    v = reader.view("t");
    EXPECT_EQ(v.raw_data(), reader.view("t").raw_data());  // both point into the mapping: no copy
  }
  EXPECT_EQ(v.data<float>()[3], 4.f);  // the mapping stays alive with the view
}

TEST_F(SafetensorsTest, LoadConvertsFloatTypes) {
  MFUSER_SEED_TRACE();
  Tensor t = Tensor::empty({64}, DType::f32);
  test::fill_uniform(t, -100.f, 100.f);
  const std::string p = path("c.safetensors");
  write_safetensors(p, {{"t", t}, {"ids", Tensor::from_vector<int64_t>({1}, {1})}});
  SafetensorsReader reader(p);
  const Tensor b = reader.load("t", DType::bf16);
  const Tensor h = reader.load("t", DType::f16);
  for (int64_t i = 0; i < 64; ++i) {
    EXPECT_EQ(b.data<bf16_t>()[i].bits, float_to_bf16(t.data<float>()[i]).bits);
    EXPECT_EQ(h.data<f16_t>()[i].bits, float_to_f16(t.data<float>()[i]).bits);
  }
  const Tensor back = reader.load("t", DType::f32);
  EXPECT_NE(back.storage(), reader.view("t").storage());  // load always copies
  EXPECT_THROW(reader.load("ids", DType::f32), SafetensorsError);
}

TEST_F(SafetensorsTest, LoadsF64SourcesAsF32) {
  double values[3] = {0.1, -2.5, 1e300};
  std::string header = R"({"d":{"dtype":"F64","shape":[3],"data_offsets":[0,24]}})";
  const std::string p = path("f64.safetensors");
  {
    std::ofstream out(p, std::ios::binary);
    const uint64_t n = header.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << header;
    out.write(reinterpret_cast<const char*>(values), sizeof values);
  }
  SafetensorsReader reader(p);
  const Tensor f = reader.load("d", DType::f32);
  EXPECT_EQ(f.data<float>()[0], 0.1f);
  EXPECT_EQ(f.data<float>()[1], -2.5f);
  EXPECT_TRUE(std::isinf(f.data<float>()[2]));
  try {
    (void)reader.view("d");
    FAIL() << "F64 view should be refused";
  } catch (const SafetensorsError& e) {
    EXPECT_EQ(e.code(), SafetensorsErrc::unsupported);
    EXPECT_NE(std::string(e.what()).find("'d'"), std::string::npos);
  }
}

TEST_F(SafetensorsTest, MissingTensorNamesFileAndTensor) {
  const std::string p = path("m.safetensors");
  write_safetensors(p, {{"a", Tensor::zeros({1}, DType::f32)}});
  SafetensorsReader reader(p);
  try {
    (void)reader.view("backbone.adapter.0.A_log");
    FAIL();
  } catch (const SafetensorsError& e) {
    EXPECT_EQ(e.code(), SafetensorsErrc::missing_tensor);
    const std::string msg = e.what();
    EXPECT_NE(msg.find(p), std::string::npos) << msg;
    EXPECT_NE(msg.find("backbone.adapter.0.A_log"), std::string::npos) << msg;
  }
}

// ---- malformed files: each must fail with its specific error, naming the file (and tensor) --------------

struct Malformed {
  const char* name;
  SafetensorsErrc code;
  const char* must_mention;  // besides the file path
};

TEST_F(SafetensorsTest, MalformedFilesFailWithSpecificErrors) {
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  struct Case {
    Malformed expect;
    std::string file;
  };
  std::vector<Case> cases;
  {
    const std::string p = path("empty");
    std::ofstream(p, std::ios::binary).flush();
    cases.push_back({{"empty file", SafetensorsErrc::header_too_small, "8-byte"}, p});
  }
  {
    const std::string p = path("five_bytes");
    std::ofstream(p, std::ios::binary) << "abcde";
    cases.push_back({{"truncated length prefix", SafetensorsErrc::header_too_small, "8-byte"}, p});
  }
  cases.push_back({{"header longer than file", SafetensorsErrc::header_out_of_file, "runs past"},
                   write_raw("c2", 1000, "{}", 0)});
  cases.push_back({{"truncated header", SafetensorsErrc::header_out_of_file, "runs past"},
                   write_raw("c3", 40, "{\"a\":{\"dtype\":\"F32\"", 0)});
  cases.push_back({{"length overflow", SafetensorsErrc::header_too_large, "100 MB"},
                   write_raw("c4", ~uint64_t(0), "{}", 0)});
  cases.push_back({{"header over 100 MB", SafetensorsErrc::header_too_large, "100 MB"},
                   write_raw("c5", 100'000'001, "{}", 0)});
  cases.push_back({{"not UTF-8", SafetensorsErrc::header_not_utf8, "UTF-8"}, write_header("c6", "{\"\xff\xfe\":1}", 0)});
  cases.push_back({{"not an object", SafetensorsErrc::header_not_json, "'{'"}, write_header("c7", "[1, 2]", 0)});
  cases.push_back({{"not JSON", SafetensorsErrc::header_not_json, "JSON"}, write_header("c8", "{\"a\": ", 0)});
  cases.push_back({{"NaN in shape", SafetensorsErrc::header_not_json, "JSON"},
                   write_header("c9", R"({"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,4]}})", 4)});
  cases.push_back({{"fractional shape", SafetensorsErrc::invalid_entry, "'a'"},
                   write_header("c10", R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4)});
  cases.push_back({{"negative shape", SafetensorsErrc::invalid_entry, "'a'"},
                   write_header("c11", R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4)});
  cases.push_back({{"unknown dtype", SafetensorsErrc::unknown_dtype, "'F12'"},
                   write_header("c12", R"({"a":{"dtype":"F12","shape":[1],"data_offsets":[0,4]}})", 4)});
  cases.push_back({{"missing data_offsets", SafetensorsErrc::invalid_entry, "data_offsets"},
                   write_header("c13", R"({"a":{"dtype":"F32","shape":[1]}})", 4)});
  cases.push_back({{"three offsets", SafetensorsErrc::invalid_entry, "data_offsets"},
                   write_header("c14", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", 4)});
  cases.push_back({{"shape/size mismatch", SafetensorsErrc::size_mismatch, "'a'"},
                   write_header("c15", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8)});
  cases.push_back({{"element count overflow", SafetensorsErrc::size_mismatch, "overflow"},
                   write_header("c16", R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})", 8)});
  cases.push_back({{"offsets out of range", SafetensorsErrc::invalid_offsets, "beyond"},
                   write_header("c17", "{" + ok_entry + "}", 4)});
  cases.push_back({{"reversed offsets", SafetensorsErrc::invalid_offsets, "reversed"},
                   write_header("c18", R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 8)});
  cases.push_back({{"overlapping tensors", SafetensorsErrc::invalid_offsets, "overlap"},
                   write_header("c19", "{" + ok_entry + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12)});
  cases.push_back({{"hole between tensors", SafetensorsErrc::invalid_offsets, "hole"},
                   write_header("c20", "{" + ok_entry + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})", 16)});
  cases.push_back({{"trailing bytes", SafetensorsErrc::incomplete_buffer, "cover only"},
                   write_header("c21", "{" + ok_entry + "}", 12)});
  cases.push_back({{"duplicate names", SafetensorsErrc::duplicate_name, "'a'"},
                   write_header("c22", "{" + ok_entry + "," + ok_entry + "}", 8)});
  cases.push_back({{"metadata not strings", SafetensorsErrc::invalid_metadata, "'seed'"},
                   write_header("c23", R"({"__metadata__":{"seed":3},)" + ok_entry + "}", 8)});
  cases.push_back({{"entry not an object", SafetensorsErrc::invalid_entry, "'a'"},
                   write_header("c24", R"({"a":[1,2]})", 0)});
  cases.push_back({{"no such file", SafetensorsErrc::io, "cannot open"}, path("does_not_exist.safetensors")});

  ASSERT_GE(cases.size(), 15u);
  for (const Case& c : cases) {
    SCOPED_TRACE(c.expect.name);
    try {
      SafetensorsReader reader(c.file);
      ADD_FAILURE() << "opened without error";
    } catch (const SafetensorsError& e) {
      const std::string msg = e.what();
      EXPECT_EQ(e.code(), c.expect.code) << "got " << safetensors_errc_name(e.code()) << ": " << msg;
      EXPECT_NE(msg.find(c.file), std::string::npos) << msg;
      EXPECT_NE(msg.find(c.expect.must_mention), std::string::npos) << msg;
    }
  }
}

TEST_F(SafetensorsTest, WriterIsAtomicAndReplacesWholeFiles) {
  const std::string p = path("atomic.safetensors");
  write_safetensors(p, {{"old", Tensor::zeros({1000}, DType::f32)}});
  write_safetensors(p, {{"new", Tensor::zeros({2}, DType::f32)}});
  SafetensorsReader reader(p);
  EXPECT_TRUE(reader.contains("new"));
  EXPECT_FALSE(reader.contains("old"));
  for (const auto& entry : fs::directory_iterator(dir_))
    EXPECT_EQ(entry.path().filename().string().find(".tmp."), std::string::npos) << "left behind: " << entry.path();

  // A failed write leaves the previous file untouched and no temporary behind.
  EXPECT_THROW(write_safetensors(p, {{"x", Tensor::zeros({1}, DType::f32)}, {"x", Tensor::zeros({1}, DType::f32)}}),
               Error);
  EXPECT_TRUE(SafetensorsReader(p).contains("new"));
  EXPECT_THROW(write_safetensors(path("no/such/dir/f.safetensors"), {{"a", Tensor::zeros({1}, DType::f32)}}),
               SafetensorsError);
}

TEST_F(SafetensorsTest, RefusesTooManyDims) {
  const std::string p = write_header(
      "rank7", R"({"a":{"dtype":"F32","shape":[1,1,1,1,1,1,1],"data_offsets":[0,4]}})", 4);
  SafetensorsReader reader(p);
  try {
    (void)reader.view("a");
    FAIL();
  } catch (const SafetensorsError& e) {
    EXPECT_EQ(e.code(), SafetensorsErrc::unsupported);
  }
}

class SafetensorsCuda : public SafetensorsTest {};

TEST_F(SafetensorsCuda, LoadUploadsAndConverts) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  Tensor t = Tensor::empty({1000}, DType::f32);
  test::fill_uniform(t);
  const std::string p = path("gpu.safetensors");
  write_safetensors(p, {{"t", t}});
  SafetensorsReader reader(p);
  const Tensor d = reader.load("t", std::nullopt, Device::cuda());
  EXPECT_TRUE(d.device().is_cuda());
  EXPECT_EQ(test::compare(d, t).max_abs, 0.0);
  const Tensor b = reader.load("t", DType::bf16, Device::cuda()).to(Device::cpu());
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(b.data<bf16_t>()[i].bits, float_to_bf16(t.data<float>()[i]).bits);
  // And back out: the writer copies device tensors to the host.
  write_safetensors(path("from_gpu.safetensors"), {{"d", d}});
  EXPECT_EQ(test::compare(SafetensorsReader(path("from_gpu.safetensors")).view("d"), t).max_abs, 0.0);
}

}  // namespace
}  // namespace mfuser
