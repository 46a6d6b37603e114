#include "loaders/config.h"

#include <filesystem>

#include "tests/common/test_util.h"

namespace mfuser {
namespace {

std::string expect_config_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no ConfigError";
  return "";
}

TEST(Config, TypedNestedAccess) {
  const Config c = Config::parse(R"({"vision": {"width": 1024, "out_indices": [7, 11, 15, 23]},
                                     "tau": 0.07, "name": "x", "flag": true, "scale": 2})",
                                 "cfg.json");
  EXPECT_EQ(c.get<int>("vision.width"), 1024);
  EXPECT_EQ(c.get<std::vector<int>>("vision.out_indices"), (std::vector<int>{7, 11, 15, 23}));
  EXPECT_DOUBLE_EQ(c.get<double>("tau"), 0.07);
  EXPECT_DOUBLE_EQ(c.get<double>("scale"), 2.0);  // an integer is a valid number
  EXPECT_EQ(c.get<std::string>("name"), "x");
  EXPECT_TRUE(c.get<bool>("flag"));
  EXPECT_EQ(c.get_or<int>("missing", 5), 5);
  EXPECT_TRUE(c.has("vision.width"));
  EXPECT_FALSE(c.has("vision.width.deeper"));
  EXPECT_EQ(c.section("vision").get<int>("width"), 1024);
}

TEST(Config, ErrorsNameFileKeyAndType) {
  const Config c = Config::parse(R"({"vision": {"width": "wide", "layers": 2.5}, "ids": [1, "x"]})", "cfg.json");
  std::string msg = expect_config_error([&] { c.get<int>("vision.heads"); });
  EXPECT_NE(msg.find("cfg.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'vision.heads'"), std::string::npos) << msg;
  msg = expect_config_error([&] { c.get<int>("vision.width"); });
  EXPECT_NE(msg.find("must be integer, got string"), std::string::npos) << msg;
  msg = expect_config_error([&] { c.get<int>("vision.layers"); });
  EXPECT_NE(msg.find("must be integer"), std::string::npos) << msg;
  msg = expect_config_error([&] { c.get<std::vector<int>>("ids"); });
  EXPECT_NE(msg.find("array of integers"), std::string::npos) << msg;
  msg = expect_config_error([&] { c.section("vision").get<int>("heads"); });
  EXPECT_NE(msg.find("'vision.heads'"), std::string::npos) << msg;
  msg = expect_config_error([&] { c.section("ids"); });
  EXPECT_NE(msg.find("must be object"), std::string::npos) << msg;
}

TEST(Config, BadFilesAreReported) {
  EXPECT_NE(expect_config_error([] { Config::load("/nonexistent/config.json"); }).find("/nonexistent/config.json"),
            std::string::npos);
  EXPECT_NE(expect_config_error([] { Config::parse("{\"a\": ", "broken.json"); }).find("broken.json: invalid JSON"),
            std::string::npos);
  EXPECT_NE(expect_config_error([] { Config::parse("[1]", "arr.json"); }).find("not a JSON object"), std::string::npos);
}

TEST(Config, ShippedModelConfigsParse) {
  const char* src = std::getenv("MFUSER_SOURCE_DIR");
  ASSERT_NE(src, nullptr) << "run through ctest";
  for (const char* name : {"mfuser_clip_vitl_512.json", "mfuser_clip_tiny.json"}) {
    const Config c = Config::load(std::string(src) + "/tools/configs/" + name);
    EXPECT_EQ(c.get<int>("num_classes"), 19) << name;
    EXPECT_EQ(c.get<std::vector<int>>("vision.out_indices").size(), 4u) << name;
    EXPECT_EQ(c.get<std::vector<std::string>>("class_names").size(), 19u) << name;
  }
}

}  // namespace
}  // namespace mfuser
