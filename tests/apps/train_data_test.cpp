// apps/train_data: the synthetic data set, each mmseg augmentation on crafted inputs (cat_max_ratio, flip,
// padding, photometric distortion), the prefetching loader (deterministic across thread counts, resumable,
// epoch reshuffle), and its errors (missing folder, unreadable image naming the file).
#include "apps/train_data.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "apps/pipeline.h"
#include "loaders/image.h"
#include "tests/common/test_util.h"

namespace mfuser {
namespace {

namespace fs = std::filesystem;
using apps::LabeledImage;
using apps::TrainRng;

struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() / str_cat("mfuser_train_data_test_", getpid(), "_", counter++);
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

apps::TrainDataOptions synthetic_options(int threads) {
  apps::TrainDataOptions o;
  o.dataset = "synthetic";
  o.batch = 2;
  o.crop = 64;
  o.seed = 1234;
  o.threads = threads;
  o.prefetch = 3;
  o.synthetic_images = 5;
  return o;
}

TEST(TrainData, SyntheticImageIsDeterministicAndLabelled) {
  const LabeledImage a = apps::synthetic_image(7, 3, 64), b = apps::synthetic_image(7, 3, 64);
  EXPECT_TRUE(same_bytes(a.image, b.image));
  EXPECT_TRUE(same_bytes(a.label, b.label));
  EXPECT_FALSE(same_bytes(a.label, apps::synthetic_image(7, 4, 64).label));
  ASSERT_EQ(a.image.ndim(), 3);
  EXPECT_EQ(a.image.dim(2), 3);
  EXPECT_EQ(a.image.dtype(), DType::u8);
  EXPECT_EQ(a.label.dtype(), DType::u8);
  EXPECT_GE(a.label.dim(0), 64);
  EXPECT_LT(a.label.dim(0), 96);
  EXPECT_EQ(a.label.dim(0), a.image.dim(0));
  EXPECT_EQ(a.label.dim(1), a.image.dim(1));
  int64_t ignore = 0;
  std::set<int> classes;
  for (int64_t i = 0; i < a.label.numel(); ++i) {
    const int v = a.label.data<uint8_t>()[i];
    ASSERT_TRUE(v < 19 || v == 255) << v;
    if (v == 255) ++ignore; else classes.insert(v);
  }
  EXPECT_GT(ignore, 0);                       // the ignore border
  EXPECT_EQ(a.label.data<uint8_t>()[0], 255);
  EXPECT_GE(classes.size(), 1u);
}

TEST(TrainData, ResizeNearestMatchesOpenCvIndexing) {
  // 4 -> 6: floor(x * 4/6) = 0 0 1 2 2 3; 4 -> 2: 0 2
  Tensor src = Tensor::from_vector<uint8_t>({10, 11, 12, 13}, {1, 4});
  Tensor up = apps::resize_u8_nearest(src, 1, 6);
  EXPECT_EQ(std::vector<uint8_t>(up.data<uint8_t>(), up.data<uint8_t>() + 6),
            (std::vector<uint8_t>{10, 10, 11, 12, 12, 13}));
  Tensor down = apps::resize_u8_nearest(src, 1, 2);
  EXPECT_EQ(down.data<uint8_t>()[0], 10);
  EXPECT_EQ(down.data<uint8_t>()[1], 12);
}

TEST(TrainData, RandomResizeKeepsRatioAndLabelValues) {
  for (uint64_t s = 0; s < 8; ++s) {
    LabeledImage li = apps::synthetic_image(1, int64_t(s), 64);
    const int64_t h = li.image.dim(0), w = li.image.dim(1);
    TrainRng rng(s);
    apps::random_resize(li, 0.5, 2.0, w, h, rng);
    EXPECT_EQ(li.image.dim(0), li.label.dim(0));
    EXPECT_EQ(li.image.dim(1), li.label.dim(1));
    EXPECT_GE(li.image.dim(0), h / 2 - 1);
    EXPECT_LE(li.image.dim(0), 2 * h + 1);
    for (int64_t i = 0; i < li.label.numel(); ++i) {
      const int v = li.label.data<uint8_t>()[i];
      ASSERT_TRUE(v < 19 || v == 255);
    }
  }
}

TEST(TrainData, CatMaxRatioIsHonoured) {
  // 100 x 200 label: columns 0..99 class 0, 100..199 class 1; crop 100, offsets x1 in 0..100. A crop passes
  // (largest share < 0.75) when it holds more than 25 columns of each class: x1 in 26..74, 49 of 101 offsets.
  const int64_t h = 100, w = 200, crop = 100;
  std::vector<uint8_t> v(static_cast<size_t>(h * w));
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x) v[size_t(y * w + x)] = x < 100 ? 0 : 1;
  const Tensor label = Tensor::from_vector(v, {h, w});
  const auto passes = [&](const apps::CropBox& b) {
    const int64_t ones = std::max<int64_t>(0, b.x2 - std::max<int64_t>(b.x1, 100));
    const int64_t total = b.x2 - b.x1;
    return std::max(ones, total - ones) * 4 < total * 3;
  };
  int with = 0, without = 0;
  const int trials = 400;
  for (int t = 0; t < trials; ++t) {
    TrainRng r1(apps::mix_seed(99, uint64_t(t))), r2(apps::mix_seed(99, uint64_t(t)));
    const apps::CropBox a = apps::random_crop_box(label, crop, 0.75, r1);
    const apps::CropBox b = apps::random_crop_box(label, crop, 1.0, r2);
    EXPECT_EQ(a.y2 - a.y1, crop);
    EXPECT_EQ(a.x2 - a.x1, crop);
    with += passes(a);
    without += passes(b);
  }
  // (52/101)^11 ~ 0.7% of the samples keep a refused 11th draw; without the check about 49/101 pass
  EXPECT_GT(with, trials * 96 / 100) << with;
  EXPECT_LT(without, trials * 60 / 100) << without;

  // One class only (or all ignore): never passes, the 11th draw is taken; still a valid box.
  const Tensor flat = Tensor::zeros({50, 80}, DType::u8);
  TrainRng r(5);
  const apps::CropBox b = apps::random_crop_box(flat, 64, 0.75, r);
  EXPECT_EQ(b.y1, 0);
  EXPECT_EQ(b.y2, 50);  // clipped to the image
  EXPECT_EQ(b.x2 - b.x1, 64);
}

TEST(TrainData, FlipFlipsImageAndLabelTogether) {
  LabeledImage li = apps::synthetic_image(3, 0, 32);
  const LabeledImage orig{li.image.to(Device::cpu()), li.label.to(Device::cpu())};
  apps::hflip(li);
  const int64_t h = li.image.dim(0), w = li.image.dim(1);
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x) {
      ASSERT_EQ(li.label.data<uint8_t>()[y * w + x], orig.label.data<uint8_t>()[y * w + (w - 1 - x)]);
      for (int c = 0; c < 3; ++c)
        ASSERT_EQ(li.image.data<uint8_t>()[(y * w + x) * 3 + c], orig.image.data<uint8_t>()[(y * w + w - 1 - x) * 3 + c]);
    }
}

TEST(TrainData, PackPadsWithZeroAndIgnore) {
  // a 20 x 30 sample in a 32 crop: normalised pixels top-left, 0 / 255 elsewhere
  LabeledImage li = apps::synthetic_image(4, 0, 32);
  apps::crop_to(li, {0, 20, 0, 30});
  const int64_t crop = 32;
  std::vector<float> img(size_t(3 * crop * crop), -7.f);
  std::vector<int64_t> lab(size_t(crop * crop), -7);
  apps::pack_sample(li, crop, img.data(), lab.data());
  const Tensor norm = apps::clip_normalize(li.image);
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t y = 0; y < crop; ++y)
      for (int64_t x = 0; x < crop; ++x) {
        const float got = img[size_t((c * crop + y) * crop + x)];
        if (y < 20 && x < 30)
          ASSERT_EQ(got, norm.data<float>()[(c * 20 + y) * 30 + x]);
        else
          ASSERT_EQ(got, 0.f);
      }
  for (int64_t y = 0; y < crop; ++y)
    for (int64_t x = 0; x < crop; ++x) {
      const int64_t got = lab[size_t(y * crop + x)];
      if (y < 20 && x < 30)
        ASSERT_EQ(got, li.label.data<uint8_t>()[y * 30 + x]);
      else
        ASSERT_EQ(got, 255);
    }
}

TEST(TrainData, HsvRoundTripAndOpenCvValues) {
  // cv2.cvtColor(np.uint8([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [128, 64, 32]]]) (RGB),
  // cv2.COLOR_RGB2HSV) = [0 255 255], [60 255 255], [120 255 255], [30 255 255], [10 191 128]
  Tensor rgb = Tensor::from_vector<uint8_t>({255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 0, 128, 64, 32}, {1, 5, 3});
  Tensor hsv = apps::rgb_to_hsv_u8(rgb);
  EXPECT_EQ(std::vector<uint8_t>(hsv.data<uint8_t>(), hsv.data<uint8_t>() + 15),
            (std::vector<uint8_t>{0, 255, 255, 60, 255, 255, 120, 255, 255, 30, 255, 255, 10, 191, 128}));
  LabeledImage li = apps::synthetic_image(5, 0, 32);
  Tensor back = apps::hsv_to_rgb_u8(apps::rgb_to_hsv_u8(li.image));
  int max_diff = 0;
  for (int64_t i = 0; i < back.numel(); ++i)
    max_diff = std::max(max_diff, std::abs(int(back.data<uint8_t>()[i]) - int(li.image.data<uint8_t>()[i])));
  EXPECT_LE(max_diff, 4);  // u8 hue quantisation (2 degrees)
}

TEST(TrainData, PhotometricDistortionKeepsLabels) {
  apps::TrainDataOptions on = synthetic_options(1), off = on;
  on.crop = off.crop = 48;
  off.photometric = false;
  int changed = 0;
  for (uint64_t s = 0; s < 6; ++s) {
    LabeledImage a = apps::synthetic_image(2, int64_t(s), 48), b = apps::synthetic_image(2, int64_t(s), 48);
    TrainRng ra(s), rb(s);
    apps::augment(a, on, ra);
    apps::augment(b, off, rb);
    EXPECT_TRUE(same_bytes(a.label, b.label));
    ASSERT_EQ(a.image.shape(), b.image.shape());
    changed += !same_bytes(a.image, b.image);
  }
  EXPECT_GT(changed, 0);
}

TEST(TrainData, BatchesShapesDtypesValues) {
  auto data = apps::open_train_data(synthetic_options(2));
  EXPECT_EQ(data->size(), 5);
  for (int i = 0; i < 3; ++i) {
    const apps::TrainBatch b = data->next();
    EXPECT_EQ(b.step, i);
    EXPECT_EQ(b.images.dtype(), DType::f32);
    EXPECT_EQ(b.images.shape(), Shape({2, 3, 64, 64}));
    EXPECT_EQ(b.labels.dtype(), DType::i64);
    EXPECT_EQ(b.labels.shape(), Shape({2, 64, 64}));
    EXPECT_EQ(b.indices.size(), 2u);
    EXPECT_GE(b.wait_seconds, 0.0);
    int64_t valid = 0;
    for (int64_t k = 0; k < b.labels.numel(); ++k) {
      const int64_t v = b.labels.data<int64_t>()[k];
      ASSERT_TRUE((v >= 0 && v < 19) || v == 255) << v;
      valid += v != 255;
    }
    EXPECT_GT(valid, 0);
    for (int64_t k = 0; k < b.images.numel(); ++k) ASSERT_TRUE(std::isfinite(b.images.data<float>()[k]));
  }
  EXPECT_EQ(data->step(), 3);
  EXPECT_GE(data->total_wait_seconds(), 0.0);
}

TEST(TrainData, SameSequenceForAnyThreadCount) {
  auto one = apps::open_train_data(synthetic_options(1));
  auto three = apps::open_train_data(synthetic_options(3));
  for (int i = 0; i < 7; ++i) {  // past an epoch boundary (5 images, 2 per step)
    const apps::TrainBatch a = one->next(), b = three->next();
    ASSERT_TRUE(same_bytes(a.images, b.images)) << "step " << i;
    ASSERT_TRUE(same_bytes(a.labels, b.labels)) << "step " << i;
    ASSERT_EQ(a.indices, b.indices);
  }
  apps::TrainDataOptions other = synthetic_options(1);
  other.seed = 4321;
  EXPECT_FALSE(same_bytes(apps::open_train_data(other)->next().images, apps::open_train_data(synthetic_options(2))->next().images));
}

TEST(TrainData, SkipToAndStartStepReproduceTheSequence) {
  auto full = apps::open_train_data(synthetic_options(2));
  std::vector<apps::TrainBatch> ref;
  for (int i = 0; i < 6; ++i) ref.push_back(full->next());

  auto skipped = apps::open_train_data(synthetic_options(2));
  skipped->next();  // step 0, with steps 1.. in flight
  skipped->skip_to(3);
  EXPECT_EQ(skipped->step(), 3);
  for (int i = 3; i < 6; ++i) {
    const apps::TrainBatch b = skipped->next();
    EXPECT_EQ(b.step, i);
    ASSERT_TRUE(same_bytes(b.images, ref[size_t(i)].images)) << "step " << i;
    ASSERT_TRUE(same_bytes(b.labels, ref[size_t(i)].labels)) << "step " << i;
  }
  skipped->skip_to(1);  // backwards too
  ASSERT_TRUE(same_bytes(skipped->next().images, ref[1].images));

  apps::TrainDataOptions resumed = synthetic_options(3);
  resumed.start_step = 4;
  auto r = apps::open_train_data(resumed);
  ASSERT_TRUE(same_bytes(r->next().labels, ref[4].labels));
  ASSERT_TRUE(same_bytes(r->next().images, ref[5].images));
}

TEST(TrainData, EpochsArePermutationsReshuffled) {
  const int64_t n = 9;
  std::vector<int64_t> e0, e1;
  for (int64_t p = 0; p < n; ++p) e0.push_back(apps::epoch_sample(11, n, p));
  for (int64_t p = n; p < 2 * n; ++p) e1.push_back(apps::epoch_sample(11, n, p));
  std::vector<int64_t> s0 = e0, s1 = e1, iota(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) iota[size_t(i)] = i;
  std::sort(s0.begin(), s0.end());
  std::sort(s1.begin(), s1.end());
  EXPECT_EQ(s0, iota);
  EXPECT_EQ(s1, iota);
  EXPECT_NE(e0, e1);
}

TEST(TrainData, MissingDatasetFolderIsAClearError) {
  apps::TrainDataOptions o = synthetic_options(1);
  o.dataset = "cityscapes";
  o.root = "/nonexistent/mfuser_cityscapes";
  try {
    apps::open_train_data(o);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/mfuser_cityscapes"), std::string::npos) << e.what();
  }
  TempDir dir;  // an existing root without the layout's folders
  o.root = dir.path.string();
  try {
    apps::open_train_data(o);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("leftImg8bit"), std::string::npos) << e.what();
  }
  o.dataset = "nosuchset";
  EXPECT_THROW(apps::open_train_data(o), Error);
}

TEST(TrainData, RealLayoutAndUnreadableImage) {
  // A two-image GTA layout: labels in trainIds, one image given as a corrupt file.
  TempDir dir;
  fs::create_directories(dir.path / "images");
  fs::create_directories(dir.path / "labels");
  for (int k = 0; k < 2; ++k) {
    LabeledImage li = apps::synthetic_image(8, k, 40);
    write_png((dir.path / "images" / str_cat("0000", k, ".png")).string(), li.image);
    write_png((dir.path / "labels" / str_cat("0000", k, "_labelTrainIds.png")).string(), li.label);
  }
  apps::TrainDataOptions o = synthetic_options(2);
  o.dataset = "gta";
  o.root = dir.path.string();
  o.crop = 32;
  {
    auto data = apps::open_train_data(o);
    EXPECT_EQ(data->size(), 2);
    const apps::TrainBatch b = data->next();
    EXPECT_EQ(b.images.shape(), Shape({2, 3, 32, 32}));
    for (int64_t k = 0; k < b.labels.numel(); ++k) {
      const int64_t v = b.labels.data<int64_t>()[k];
      ASSERT_TRUE((v >= 0 && v < 19) || v == 255) << v;
    }
  }
  const fs::path bad = dir.path / "images" / "00001.png";
  std::ofstream(bad, std::ios::trunc) << "not a png";
  auto data = apps::open_train_data(o);
  try {
    for (int i = 0; i < 4; ++i) data->next();  // every step reads both images
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("00001.png"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("step 0"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mfuser
