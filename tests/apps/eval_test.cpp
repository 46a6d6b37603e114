// apps/datasets: mmseg's IoU arithmetic on a hand-made confusion (label PNGs written here), the printed table,
// the data set layouts, and the label checks (size mismatch, values outside the classes) naming the file.
#include "apps/datasets.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "loaders/image.h"
#include "tests/common/test_util.h"

namespace mfuser {
namespace {

namespace fs = std::filesystem;

// A fresh folder under the system temp dir, removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / str_cat("mfuser_eval_test_", getpid(), "_", test::seed(), "_", counter()++);
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  static int& counter() {
    static int n = 0;
    return n;
  }
};

Tensor u8(const std::vector<uint8_t>& values, const Shape& shape) { return Tensor::from_vector(values, shape); }

void write_label(const fs::path& p, const std::vector<uint8_t>& values, int64_t h, int64_t w) {
  fs::create_directories(p.parent_path());
  write_png(p.string(), u8(values, {h, w}));
}

void write_image(const fs::path& p, int64_t h, int64_t w) {
  fs::create_directories(p.parent_path());
  Tensor rgb = Tensor::empty({h, w, 3}, DType::u8);
  for (int64_t i = 0; i < rgb.numel(); ++i) rgb.data<uint8_t>()[i] = uint8_t(i * 31);
  write_png(p.string(), rgb);
}

const std::vector<std::string> kNames = {"road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                                         "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                                         "truck", "bus", "train", "motorcycle", "bicycle"};

TEST(IouMetrics, HandMadeConfusion) {
  // Two images as label PNGs (ground truth and prediction), read back as eval reads them.
  TempDir dir;
  write_label(dir.path / "gt1.png", {0, 0, 1, 1, 2, 2, 255, 1}, 2, 4);
  write_label(dir.path / "pred1.png", {0, 1, 1, 1, 2, 0, 0, 1}, 2, 4);
  write_label(dir.path / "gt2.png", {3, 3, 0}, 1, 3);
  write_label(dir.path / "pred2.png", {3, 4, 0}, 1, 3);
  apps::IouAccumulator acc(19);
  for (int i : {1, 2}) {
    const apps::Sample s{(dir.path / str_cat("img", i, ".png")).string(), (dir.path / str_cat("gt", i, ".png")).string()};
    const Tensor gt = apps::load_label(s, i == 1 ? 2 : 1, i == 1 ? 4 : 3, 19);
    acc.add(read_label((dir.path / str_cat("pred", i, ".png")).string()), gt);
  }
  // By hand (the 255 pixel is left out of everything, its prediction included):
  //   class  intersect  pred  label  union   IoU   Acc
  //   0      2          3     3      4       1/2   2/3
  //   1      3          4     3      4       3/4   1
  //   2      1          1     2      2       1/2   1/2
  //   3      1          1     2      2       1/2   1/2
  //   4      0          1     0      1       0     nan
  //   5..18  0          0     0      0       nan   nan
  EXPECT_EQ(acc.images(), 2);
  EXPECT_EQ(std::vector<int64_t>(acc.area_intersect().begin(), acc.area_intersect().begin() + 6),
            (std::vector<int64_t>{2, 3, 1, 1, 0, 0}));
  EXPECT_EQ(std::vector<int64_t>(acc.area_pred().begin(), acc.area_pred().begin() + 6),
            (std::vector<int64_t>{3, 4, 1, 1, 1, 0}));
  EXPECT_EQ(std::vector<int64_t>(acc.area_label().begin(), acc.area_label().begin() + 6),
            (std::vector<int64_t>{3, 3, 2, 2, 0, 0}));
  EXPECT_EQ(std::vector<int64_t>(acc.area_union().begin(), acc.area_union().begin() + 6),
            (std::vector<int64_t>{4, 4, 2, 2, 1, 0}));
  const apps::IouMetrics m = apps::compute_metrics(acc);
  EXPECT_DOUBLE_EQ(m.iou[0], 0.5);
  EXPECT_DOUBLE_EQ(m.iou[1], 0.75);
  EXPECT_DOUBLE_EQ(m.iou[4], 0.0);
  EXPECT_TRUE(std::isnan(m.iou[5]));
  EXPECT_DOUBLE_EQ(m.acc[0], 2.0 / 3.0);
  EXPECT_TRUE(std::isnan(m.acc[4]));
  EXPECT_DOUBLE_EQ(m.miou, 2.25 / 5);                          // nanmean over the 5 classes seen
  EXPECT_DOUBLE_EQ(m.macc, (2.0 / 3.0 + 1 + 0.5 + 0.5) / 4);  // class 4 has no label pixel
  EXPECT_DOUBLE_EQ(m.aacc, 7.0 / 10.0);

  const std::string table = apps::format_metrics(m, kNames);
  std::printf("%s", table.c_str());
  for (const char* needle : {"per class results:\n\n+---------------+------+-------+\n",
                             "|     Class     | IoU  |  Acc  |\n", "|      road     | 50.0 | 66.67 |\n",
                             "|    sidewalk   | 75.0 | 100.0 |\n", "|     fence     | 0.0  |  nan  |\n",
                             "| traffic light | nan  |  nan  |\n",
                             "Summary:\n\n+------+------+-------+\n| aAcc | mIoU |  mAcc |\n+------+------+-------+\n"
                             "| 70.0 | 45.0 | 66.67 |\n+------+------+-------+\n"})
    EXPECT_NE(table.find(needle), std::string::npos) << "missing:\n" << needle;
}

TEST(IouMetrics, RoundsAsNumpyAndPrintsAsPython) {
  EXPECT_EQ(apps::py_round_repr(97.125, 2), "97.12");  // 9712.5 rounds half to even
  EXPECT_EQ(apps::py_round_repr(97.135, 2), "97.14");  // as numpy: rint(97.135 * 100) / 100
  EXPECT_EQ(apps::py_round_repr(100.0, 2), "100.0");
  EXPECT_EQ(apps::py_round_repr(0.0, 2), "0.0");
  EXPECT_EQ(apps::py_round_repr(66.66666666666667, 2), "66.67");
  EXPECT_EQ(apps::py_round_repr(std::nan(""), 2), "nan");
}

TEST(Labels, SizeMismatchAndBadValuesNameTheFile) {
  TempDir dir;
  write_label(dir.path / "ok.png", {0, 18, 255, 3, 4, 5}, 2, 3);
  write_label(dir.path / "bad.png", {0, 19, 255, 40, 4, 5}, 2, 3);
  const apps::Sample ok{"img.png", (dir.path / "ok.png").string()}, bad{"img.png", (dir.path / "bad.png").string()};
  EXPECT_EQ(apps::load_label(ok, 2, 3, 19).shape(), (Shape{2, 3}));
  try {
    apps::load_label(ok, 3, 2, 19);
    FAIL() << "size mismatch accepted";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("ok.png"), std::string::npos) << msg;
    EXPECT_NE(msg.find("3x2 (WxH)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("is 2x3"), std::string::npos) << msg;
  }
  try {
    apps::load_label(bad, 2, 3, 19);
    FAIL() << "values 19 and 40 accepted";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("bad.png"), std::string::npos) << msg;
    EXPECT_NE(msg.find("2 pixel(s) with values outside 0..18 and 255"), std::string::npos) << msg;
    EXPECT_NE(msg.find("first: value 19 at row 0, column 1"), std::string::npos) << msg;
  }
}

TEST(Labels, CityscapesLabelIdsMapToTrainIds) {
  const auto& t = apps::cityscapes_label_id_to_train_id();
  EXPECT_EQ(t[7], 0);    // road
  EXPECT_EQ(t[26], 13);  // car
  EXPECT_EQ(t[33], 18);  // bicycle
  EXPECT_EQ(t[0], 255);  // unlabeled
  EXPECT_EQ(t[9], 255);  // parking: not evaluated
  EXPECT_EQ(t[34], 255);
  int classes = 0;
  for (int v : t) classes += v != 255;
  EXPECT_EQ(classes, 19);
  TempDir dir;
  write_label(dir.path / "ids.png", {7, 26, 0, 33}, 2, 2);
  const apps::Sample s{"img.png", (dir.path / "ids.png").string(), apps::LabelEncoding::cityscapes_label_ids};
  const Tensor l = apps::load_label(s, 2, 2, 19);
  EXPECT_EQ((std::vector<int>(l.data<uint8_t>(), l.data<uint8_t>() + 4)), (std::vector<int>{0, 13, 255, 18}));
}

TEST(Datasets, LayoutsPairImagesWithTheirLabels) {
  TempDir dir;
  const fs::path r = dir.path;
  // Cityscapes: trainIds preferred, labelIds as the fallback, cities sorted
  write_image(r / "cs/leftImg8bit/val/zurich/z_000001_leftImg8bit.png", 2, 2);
  write_label(r / "cs/gtFine/val/zurich/z_000001_gtFine_labelTrainIds.png", {0, 0, 0, 0}, 2, 2);
  write_label(r / "cs/gtFine/val/zurich/z_000001_gtFine_labelIds.png", {7, 7, 7, 7}, 2, 2);
  write_image(r / "cs/leftImg8bit/val/aachen/a_000001_leftImg8bit.png", 2, 2);
  write_label(r / "cs/gtFine/val/aachen/a_000001_gtFine_labelIds.png", {7, 7, 7, 7}, 2, 2);
  const auto cs = apps::list_dataset("cityscapes", (r / "cs").string(), "val");
  ASSERT_EQ(cs.size(), 2u);
  EXPECT_NE(cs[0].image.find("aachen/a_000001_leftImg8bit.png"), std::string::npos);
  EXPECT_NE(cs[0].label.find("a_000001_gtFine_labelIds.png"), std::string::npos);
  EXPECT_EQ(cs[0].encoding, apps::LabelEncoding::cityscapes_label_ids);
  EXPECT_NE(cs[1].label.find("z_000001_gtFine_labelTrainIds.png"), std::string::npos);
  EXPECT_EQ(cs[1].encoding, apps::LabelEncoding::train_ids);

  // BDD100K: masks
  write_image(r / "bdd/images/10k/val/b1.jpg", 2, 2);  // PNG bytes under .jpg: read by content
  write_label(r / "bdd/labels/sem_seg/masks/val/b1.png", {1, 1, 1, 1}, 2, 2);
  const auto bdd = apps::list_dataset("bdd", (r / "bdd").string(), "val");
  ASSERT_EQ(bdd.size(), 1u);
  EXPECT_NE(bdd[0].label.find("masks/val/b1.png"), std::string::npos);

  // Mapillary: val -> validation, NAME_labelTrainIds.png or NAME.png
  write_image(r / "map/validation/images/m1.jpg", 2, 2);
  write_label(r / "map/validation/labels/m1.png", {2, 2, 2, 2}, 2, 2);
  const auto map = apps::list_dataset("mapillary", (r / "map").string(), "val");
  ASSERT_EQ(map.size(), 1u);
  EXPECT_NE(map[0].label.find("validation/labels/m1.png"), std::string::npos);

  // GTA5: palette labels in labelIds
  write_image(r / "gta/images/00001.png", 2, 2);
  write_label(r / "gta/labels/00001.png", {7, 7, 7, 7}, 2, 2);
  const auto gta = apps::list_dataset("gta", (r / "gta").string(), "val");
  ASSERT_EQ(gta.size(), 1u);
  EXPECT_EQ(gta[0].encoding, apps::LabelEncoding::cityscapes_label_ids);

  // An image without a label names both
  write_image(r / "gta/images/00002.png", 2, 2);
  try {
    apps::list_dataset("gta", (r / "gta").string(), "val");
    FAIL() << "an image without a label was listed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("00002.png"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("00002_labelTrainIds.png"), std::string::npos) << e.what();
  }
  EXPECT_THROW(apps::list_dataset("kitti", (r / "gta").string(), "val"), Error);
  EXPECT_THROW(apps::list_dataset("cityscapes", (r / "cs").string(), "test"), Error);  // no such split folder
}

TEST(Datasets, InputsFromFilesAndFolders) {
  TempDir dir;
  write_image(dir.path / "in/b.png", 2, 2);
  write_image(dir.path / "in/sub/a.JPG", 2, 2);
  write_label(dir.path / "in/notes.txt", {0}, 1, 1);
  const auto inputs = apps::list_inputs({(dir.path / "in").string(), (dir.path / "x.png").string()});
  ASSERT_EQ(inputs.size(), 3u);
  EXPECT_EQ(inputs[0].out_stem, "b");
  EXPECT_EQ(inputs[1].out_stem, "sub/a");
  EXPECT_EQ(inputs[2].out_stem, "x");  // a missing file is kept: it fails when read, reported per image
}

}  // namespace
}  // namespace mfuser
