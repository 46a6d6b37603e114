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
#include "apps/trainer.h"
#include "loaders/config.h"
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

TEST(TrainData, SyntheticValSplitIsHeldOut) {
  // val: one size (crop x 1.5 crop), its own stream: never equal to a training image of any seed tried
  const LabeledImage v = apps::synthetic_image(0, 3, 64, apps::SyntheticSplit::val);
  EXPECT_EQ(v.image.shape(), Shape({64, 96, 3}));
  EXPECT_EQ(v.label.shape(), Shape({64, 96}));
  EXPECT_TRUE(same_bytes(v.label, apps::synthetic_image(0, 3, 64, apps::SyntheticSplit::val).label));
  EXPECT_TRUE(same_bytes(apps::synthetic_image(0, 3, 64).label,
                         apps::synthetic_image(0, 3, 64, apps::SyntheticSplit::train).label));
  for (uint64_t seed = 0; seed < 4; ++seed)
    for (int64_t i = 0; i < 16; ++i) {
      const LabeledImage t = apps::synthetic_image(seed, i, 64);
      EXPECT_FALSE(same_bytes(t.image, v.image)) << "seed " << seed << " image " << i;
    }
  EXPECT_EQ(apps::synthetic_split("val"), apps::synthetic_split("val"));
  EXPECT_NE(apps::synthetic_split("train"), apps::synthetic_split("val"));
  EXPECT_THROW(apps::synthetic_split("test"), Error);
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

// ---- rare-class sampling ----

TEST(RareClassSampling, CountsFrequenciesAndProbabilities) {
  const Tensor label = Tensor::from_vector<uint8_t>({0, 0, 3, 255, 18, 3, 3, 255}, {2, 4});
  const apps::ClassPixels c = apps::count_class_pixels(label);
  EXPECT_EQ(c[0], 2);
  EXPECT_EQ(c[3], 3);
  EXPECT_EQ(c[18], 1);
  EXPECT_EQ(c[1], 0);

  // pixel totals: class 0: 1000 + 800, class 1: 10, class 2: 190 (2000 in all); classes 3..18 absent
  std::vector<apps::ClassPixels> per_image(3);
  per_image[0][0] = 1000;
  per_image[0][1] = 10;
  per_image[1][0] = 800;
  per_image[1][2] = 150;
  per_image[2][2] = 40;
  apps::RareClassSampling o;
  o.enabled = true;
  o.temperature = 0.1;
  o.min_pixels = 5;
  const apps::RareClassTable t = apps::rare_class_table(per_image, o);
  EXPECT_EQ(t.classes, (std::vector<int>{1, 2, 0}));  // rarest first
  const std::vector<double> f = {10 / 2000.0, 190 / 2000.0, 1800 / 2000.0};
  double z = 0;
  for (double x : f) z += std::exp((1 - x) / 0.1);
  ASSERT_EQ(t.frequency.size(), 3u);
  ASSERT_EQ(t.probability.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_NEAR(t.frequency[i], f[i], 1e-15);
    EXPECT_NEAR(t.probability[i], std::exp((1 - f[i]) / 0.1) / z, 1e-12);
  }
  EXPECT_GT(t.probability[0], 0.99 * t.probability[1]);  // 1 and 2: both rare, nearly alike
  EXPECT_LT(t.probability[2], 1e-3);                    // 0 covers 90% of the pixels
  // more than min_pixels (strictly) of the class
  EXPECT_EQ(t.images[0], (std::vector<int64_t>{0}));
  EXPECT_EQ(t.images[1], (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(t.images[2], (std::vector<int64_t>{0, 1}));
  o.min_pixels = 10;  // strictly more: image 0's 10 pixels of class 1 do not count
  try {
    apps::rare_class_table(per_image, o);
    FAIL() << "class 1 has no image with more than 10 pixels";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("class(es) 1 "), std::string::npos) << e.what();
  }
}

TEST(RareClassSampling, ClassesWithoutImagesAreAnErrorNamingThem) {
  std::vector<apps::ClassPixels> per_image(2);
  per_image[0][4] = 100;
  per_image[1][4] = 50;
  per_image[1][7] = 20;
  apps::RareClassSampling o;
  o.enabled = true;
  o.min_pixels = 30;
  try {
    apps::rare_class_table(per_image, o);
    FAIL() << "class 7 has no image with more than 30 pixels";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("class(es) 7"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("min_pixels"), std::string::npos) << e.what();
  }
  o.min_pixels = 10;
  EXPECT_EQ(apps::rare_class_table(per_image, o).classes, (std::vector<int>{7, 4}));
}

TEST(RareClassSampling, DrawsFollowTheProbabilities) {
  std::vector<apps::ClassPixels> per_image(4);
  per_image[0][5] = 5000;
  per_image[1][5] = 5000;
  per_image[1][9] = 50;
  per_image[2][9] = 50;
  per_image[3][11] = 500;
  apps::RareClassSampling o;
  o.enabled = true;
  o.temperature = 0.05;
  o.min_pixels = 0;
  const apps::RareClassTable t = apps::rare_class_table(per_image, o);
  ASSERT_EQ(t.classes, (std::vector<int>{9, 11, 5}));
  const int draws = 20000;
  std::vector<int> by_class(19), by_image(4);
  TrainRng rng(77);
  for (int i = 0; i < draws; ++i) {
    const apps::RareClassDraw d = apps::draw_rare_class(t, rng);
    ++by_class[size_t(d.cls)];
    ++by_image[size_t(d.image)];
    ASSERT_GT(per_image[size_t(d.image)][size_t(d.cls)], 0) << "image " << d.image << " lacks class " << d.cls;
  }
  for (size_t i = 0; i < t.classes.size(); ++i) {
    const double p = t.probability[i], tolerance = 5 * std::sqrt(p * (1 - p) / draws);
    EXPECT_NEAR(by_class[size_t(t.classes[i])] / double(draws), p, tolerance) << "class " << t.classes[i];
  }
  // the rarest class (0.8% of the pixels) is drawn most, far above its pixel share
  EXPECT_GT(by_class[9], by_class[5]);
  EXPECT_GT(by_class[9], draws / 3);
  // class 9's two images alike
  EXPECT_NEAR(by_image[2] / double(by_class[9]), 0.5, 0.05);
}

TEST(RareClassSampling, LoaderFavoursRareClassesDeterministically) {
  apps::TrainDataOptions o = synthetic_options(1);
  o.synthetic_images = 16;
  o.photometric = false;
  std::vector<apps::ClassPixels> per_image;
  for (int64_t i = 0; i < o.synthetic_images; ++i)
    per_image.push_back(apps::count_class_pixels(apps::synthetic_image(o.seed, i, o.crop).label));
  o.rare_class_sampling.enabled = true;
  o.rare_class_sampling.temperature = 0.01;
  o.rare_class_sampling.min_pixels = 0;  // any image holding the class; a crop is redrawn until it does too
  o.rare_class_sampling.min_crop_ratio = 1;
  const apps::RareClassTable t = apps::rare_class_table(per_image, o.rare_class_sampling);
  const std::set<int> rare(t.classes.begin(), t.classes.begin() + 3);  // the three rarest
  // the share of crops showing one of the three rarest classes, and the sequence itself
  const auto rare_share = [&](const apps::TrainDataOptions& options, std::vector<apps::TrainBatch>* keep) {
    auto data = apps::open_train_data(options);
    int64_t with_rare = 0, crops = 0;
    for (int step = 0; step < 40; ++step) {
      apps::TrainBatch b = data->next();
      const int64_t pixels = b.labels.numel() / b.labels.dim(0);
      for (int64_t n = 0; n < b.labels.dim(0); ++n, ++crops) {
        const int64_t* l = b.labels.data<int64_t>() + n * pixels;
        with_rare += std::any_of(l, l + pixels, [&](int64_t v) { return rare.count(int(v)) > 0; });
      }
      if (keep) keep->push_back(std::move(b));
    }
    return double(with_rare) / double(crops);
  };
  apps::TrainDataOptions off = o;
  off.rare_class_sampling.enabled = false;
  std::vector<apps::TrainBatch> one_thread;
  const double with_rcs = rare_share(o, &one_thread), without = rare_share(off, nullptr);
  const double drawn = t.probability[0] + t.probability[1] + t.probability[2];
  std::printf("crops showing one of the three rarest classes: %.3f with RCS (drawn with probability %.3f), %.3f "
              "without\n", with_rcs, drawn, without);
  // a crop is redrawn until it shows the class drawn (80 crops: a binomial standard deviation <= 0.06)
  EXPECT_GT(with_rcs, drawn - 0.15);
  EXPECT_GT(with_rcs, 2 * without);
  for (const apps::TrainBatch& b : one_thread)
    for (int64_t index : b.indices) {
      // every crop's image holds one of the table's classes above min_pixels
      bool listed = false;
      for (const std::vector<int64_t>& images : t.images)
        listed = listed || std::find(images.begin(), images.end(), index) != images.end();
      ASSERT_TRUE(listed) << index;
    }

  // deterministic from (seed, step): any thread count, and a resumed run continues exactly
  apps::TrainDataOptions three = o;
  three.threads = 3;
  three.start_step = 25;
  auto resumed = apps::open_train_data(three);
  for (int step = 25; step < 40; ++step) {
    const apps::TrainBatch b = resumed->next();
    ASSERT_TRUE(same_bytes(b.images, one_thread[size_t(step)].images)) << "step " << step;
    ASSERT_TRUE(same_bytes(b.labels, one_thread[size_t(step)].labels)) << "step " << step;
    ASSERT_EQ(b.indices, one_thread[size_t(step)].indices);
  }

  o.rare_class_sampling.min_pixels = 1 << 20;  // more than any image has
  EXPECT_THROW(apps::open_train_data(o), Error);
}

TEST(RareClassSampling, TrainingConfigKeys) {
  // Unset: on with MFuser's values on a real data set (as every official config), off on the synthetic one.
  const apps::TrainConfig synthetic = apps::TrainConfig::parse("{}");
  EXPECT_FALSE(synthetic.effective_rare_class_sampling().enabled);
  EXPECT_TRUE(synthetic.photometric);
  EXPECT_EQ(synthetic.resize_ratio_min, 0.5);
  EXPECT_EQ(synthetic.resize_ratio_max, 2.0);
  const apps::RareClassSampling official =
      apps::TrainConfig::parse(R"({"dataset": "gta", "root": "/data/gta"})").effective_rare_class_sampling();
  EXPECT_TRUE(official.enabled);
  EXPECT_EQ(official.temperature, 100);
  EXPECT_EQ(official.min_pixels, 3000);
  EXPECT_EQ(official.min_crop_ratio, 0.5);
  EXPECT_FALSE(apps::TrainConfig::parse(R"({"dataset": "gta", "rare_class_sampling": null})")
                   .effective_rare_class_sampling()
                   .enabled);

  // an empty object turns RCS on with MFuser's values
  const apps::RareClassSampling mfuser =
      apps::TrainConfig::parse(R"({"rare_class_sampling": {}})").effective_rare_class_sampling();
  EXPECT_TRUE(mfuser.enabled);
  EXPECT_EQ(mfuser.temperature, 100);
  EXPECT_EQ(mfuser.min_pixels, 3000);
  EXPECT_EQ(mfuser.min_crop_ratio, 0.5);

  const apps::TrainConfig c = apps::TrainConfig::parse(
      R"({"rare_class_sampling": {"temperature": 0.01, "min_pixels": 20, "min_crop_ratio": 0},
          "photometric": false, "resize_ratio": [1, 1.5]})");
  EXPECT_EQ(c.effective_rare_class_sampling().temperature, 0.01);
  EXPECT_EQ(c.effective_rare_class_sampling().min_pixels, 20);
  EXPECT_EQ(c.effective_rare_class_sampling().min_crop_ratio, 0);
  EXPECT_FALSE(c.photometric);
  EXPECT_EQ(c.resize_ratio_max, 1.5);
  const apps::TrainConfig back = apps::TrainConfig::parse(c.to_json());  // checkpoints store to_json()
  EXPECT_TRUE(back.effective_rare_class_sampling().enabled);
  EXPECT_EQ(back.effective_rare_class_sampling().min_pixels, 20);
  EXPECT_FALSE(back.photometric);
  EXPECT_EQ(back.resize_ratio_min, 1.0);
  EXPECT_FALSE(apps::TrainConfig::parse(synthetic.to_json()).effective_rare_class_sampling().enabled);
  EXPECT_FALSE(apps::TrainConfig::parse(R"({"rare_class_sampling": null})").effective_rare_class_sampling().enabled);

  const auto rejects = [](const char* text, const char* key) {
    try {
      apps::TrainConfig::parse(text);
      ADD_FAILURE() << "accepted " << text;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  };
  rejects(R"({"rare_class_sampling": {"temperature": 0}})", "rare_class_sampling.temperature");
  rejects(R"({"rare_class_sampling": {"min_pixels": -1}})", "rare_class_sampling.min_pixels");
  rejects(R"({"rare_class_sampling": {"class_temp": 100}})", "rare_class_sampling.class_temp");
  rejects(R"({"rare_class_sampling": true})", "rare_class_sampling");
  rejects(R"({"resize_ratio": [2, 1]})", "resize_ratio");
  rejects(R"({"photometric": 1})", "photometric");
}

}  // namespace
}  // namespace mfuser
