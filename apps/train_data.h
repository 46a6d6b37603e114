// Training data for `mfuser train`: batches of augmented crops with their label maps, produced ahead of the
// training step by a pool of CPU threads (apps/train_data.cpp).
//
// The training pipeline is the official one of MFuser-CLIP (configs/_base_/datasets/gta2city-512.py of the
// MFuser repository, mmseg 0.x transforms), per sample:
//   load (RGB u8 [H, W, 3], trainIds u8 [H, W])
//   -> Resize(ratio_range=(0.5, 2.0)), keep_ratio: ratio ~ U[0.5, 2.0), target scale (int(W * ratio),
//      int(H * ratio)) of the image's own size (the official config gives no img_scale; `img_scale_long` /
//      `img_scale_short` override it), new size by mmcv's rescale_size; image bilinear (resize_u8_linear, cv2
//      INTER_LINEAR), label nearest (cv2 INTER_NEAREST)
//   -> RandomCrop(512, cat_max_ratio=0.75): offsets ~ randint(0, margin + 1) per axis; up to 10 times, a crop
//      whose most frequent non-ignore class covers >= 75% of its non-ignore pixels (or that has fewer than two
//      such classes) is drawn again; after 10 refusals the 11th draw is taken as is. Clipped to the image.
//   -> RandomFlip(prob=0.5): horizontal, image and label together
//   -> PhotoMetricDistortion: brightness (delta 32), then contrast (0.5-1.5) first or last by a coin (mode),
//      saturation (0.5-1.5) and hue (delta 18) in OpenCV's u8 HSV (H in 0..179); each applied with
//      probability 1/2; u8 arithmetic as mmseg (x * alpha + beta in float, clipped, truncated)
//   -> Normalize (CLIP mean / std, clip_normalize of apps/pipeline.h)
//   -> Pad to crop x crop at the bottom / right: 0 in the normalised image, 255 in the label.
// Randomness comes from our own generator (not numpy's), derived from (seed, sample position), so a batch is
// a pure function of (options, step): the sequence does not depend on the thread count, and a resumed run
// (start_step / skip_to) continues it exactly. Rare-class sampling (the config's UGDataset) is optional and
// off by default (RareClassSampling below).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "apps/datasets.h"
#include "runtime/tensor.h"

namespace mfuser::apps {

struct TrainBatch {
  Tensor images;  // f32 [B, 3, crop, crop], CLIP-normalized (what the model's "image" input takes)
  Tensor labels;  // i64 [B, crop, crop], trainIds, 255 = ignore (padding included)
  double wait_seconds = 0;  // how long next() waited for this batch (data starvation of the step)
  int64_t step = 0;                // the batch's index in the sequence
  std::vector<int64_t> indices;    // the data-set image index of each crop
};

class TrainData {
 public:
  virtual ~TrainData() = default;
  // The next batch (blocks until one is ready). Endless: the data set is reshuffled at each epoch. A worker's
  // failure (an unreadable image, a bad label) is thrown here as an Error naming the step and the file, and
  // is thrown again by every later call (the sequence cannot skip a batch).
  virtual TrainBatch next() = 0;
  virtual int64_t size() const = 0;  // images in the data set
  // The step of the batch the next call of next() returns.
  virtual int64_t step() const = 0;
  // Continues the sequence at `step` (a resumed run): batches prepared for other steps are dropped.
  virtual void skip_to(int64_t step) = 0;
  // Sum of wait_seconds over the batches returned so far.
  virtual double total_wait_seconds() const = 0;
};

// Rare-class sampling (RCS, DAFormer's; the UGDataset of MFuser's official configs). When on, a crop does not
// take the next image of the shuffled epoch: it draws a class c with probability softmax((1 - f_c) / T) over
// the classes present in the training labels (f_c: c's share of all labelled pixels, ignore left out), then
// uniformly one of the images with more than min_pixels pixels of c (at full size, before augmentation),
// then augments it; while the crop holds no more than min_pixels * min_crop_ratio pixels of c, the whole
// augmentation is drawn again, up to 10 times (the 11th draw is kept as is; min_crop_ratio 0: no redraw).
// The draws come from (seed, sample position), like the rest of the sequence.
struct RareClassSampling {
  bool enabled = false;
  // MFuser's values (rare_class_sampling=dict(min_pixels=3000, class_temp=100, min_crop_ratio=0.5) in
  // configs/_base_/datasets/gta2city-512.py and the other *2*-512 configs). T = 100 makes the class draw
  // nearly uniform over the classes; DAFormer's T = 0.01 favours the rarest ones sharply.
  double temperature = 100;
  int64_t min_pixels = 3000;
  double min_crop_ratio = 0.5;
};

struct TrainDataOptions {
  std::string dataset;      // "synthetic", or a data-set kind known to apps/datasets.h ("cityscapes", ...)
  std::string root;         // data-set folder (unused for "synthetic")
  std::string split = "train";  // the split listed by list_dataset (ignored for gta), or synthetic_split's
  int64_t batch = 2;        // crops per step (per rank)
  // Data parallel: step s's global batch is world_size * batch samples, of which this rank gets the slice
  // [rank * batch, (rank + 1) * batch), so N ranks see exactly what one process with batch N * batch sees.
  int rank = 0, world_size = 1;
  int64_t crop = 512;       // square crop side
  uint64_t seed = 0;        // shuffling and augmentation randomness
  int threads = 4;          // decoding / augmentation workers
  int prefetch = 4;         // batches prepared ahead
  int64_t synthetic_images = 4096;  // size of the synthetic train split (generated on the fly; 64 overfit)
  int64_t start_step = 0;         // first step produced (resume)
  // Resize: ratio range, and the scale it multiplies (0, 0: each image's own size, as the official config).
  double ratio_min = 0.5, ratio_max = 2.0;
  int64_t img_scale_long = 0, img_scale_short = 0;
  double cat_max_ratio = 0.75;
  double flip_prob = 0.5;
  bool photometric = true;
  RareClassSampling rare_class_sampling;
};

// Opens the data source; errors name the folder or file at fault.
std::unique_ptr<TrainData> open_train_data(const TrainDataOptions& options);

// ---- the pieces, for tests and tools -------------------------------------------------------------------

// The project's random generator (SplitMix64): platform-independent, so batches are reproducible anywhere.
class TrainRng {
 public:
  explicit TrainRng(uint64_t seed) : state_(seed) {}
  uint64_t next_u64();
  double uniform();                          // [0, 1), 53 bits
  double uniform(double lo, double hi);      // [lo, hi)
  int64_t randint(int64_t lo, int64_t hi);   // [lo, hi), as numpy's randint(lo, hi)

 private:
  uint64_t state_;
};
// A well-mixed seed from a few integers (order matters).
uint64_t mix_seed(uint64_t a, uint64_t b, uint64_t c = 0, uint64_t d = 0);

// The data-set index at global sample position `position` (step * batch + b): epoch position / size is a
// permutation of 0..size-1 drawn from (seed, epoch).
int64_t epoch_sample(uint64_t seed, int64_t size, int64_t position);

struct LabeledImage {
  Tensor image;  // RGB u8 [H, W, 3]
  Tensor label;  // trainIds u8 [H, W], 255 = ignore
};
// A data-set sample's image and its trainId label, checked against the image (load_label).
LabeledImage load_labeled_image(const Sample& sample, int num_classes);

// The synthetic data set has two splits drawn from separate random streams, so no validation image is a
// training image whatever the seeds: "train" (what `mfuser train --data synthetic` reads) and "val" (the
// held-out images `mfuser eval --dataset synthetic` scores).
enum class SyntheticSplit { train, val };
SyntheticSplit synthetic_split(const std::string& name);  // "train" or "val"; throws for anything else

// The synthetic data set's image `index` of `split`: deterministic from (seed, split, index). Size crop x
// U[1, 1.5) per axis for train (room for the random crop), crop x 1.5 crop for val (one size, so the test
// pipeline sees every image at its own size); a background class and 3..6 shapes (rectangles, discs,
// triangles) of classes 0..18; class k is drawn in its Cityscapes palette colour plus a class-dependent
// texture (horizontal stripes, vertical stripes or a checker by k % 3, period 4 + 2 * (k / 3) pixels) and
// pixel noise; a 2-pixel border is ignore (255).
LabeledImage synthetic_image(uint64_t seed, int64_t index, int64_t crop,
                             SyntheticSplit split = SyntheticSplit::train);

// cv2.resize(..., INTER_NEAREST) of u8 [H, W] or [H, W, C]: source index min(floor(dst * (1 / (out / in))),
// in - 1) per axis.
Tensor resize_u8_nearest(const Tensor& src, int64_t out_h, int64_t out_w);

// Resize(ratio_range, keep_ratio=True) of mmseg with a scale (scale_w, scale_h) the ratio multiplies.
void random_resize(LabeledImage& s, double ratio_min, double ratio_max, int64_t scale_w, int64_t scale_h,
                   TrainRng& rng);

struct CropBox {
  int64_t y1, y2, x1, x2;  // rows [y1, y2) x columns [x1, x2), clipped to the image
};
// RandomCrop's box choice on `label` u8 [H, W] (see the top of this file); cat_max_ratio >= 1 disables the check.
CropBox random_crop_box(const Tensor& label, int64_t crop, double cat_max_ratio, TrainRng& rng);
void crop_to(LabeledImage& s, const CropBox& box);
void hflip(LabeledImage& s);

// OpenCV's u8 RGB <-> HSV (H in 0..179, S and V in 0..255) on [H, W, 3], as cv2.cvtColor.
Tensor rgb_to_hsv_u8(const Tensor& rgb);
Tensor hsv_to_rgb_u8(const Tensor& hsv);
// mmseg's PhotoMetricDistortion on RGB u8 [H, W, 3], in place.
void photometric_distortion(Tensor& rgb, TrainRng& rng);

// RCS's statistics (see RareClassSampling): per image, its pixel count of each of the 19 classes.
using ClassPixels = std::array<int64_t, 19>;
ClassPixels count_class_pixels(const Tensor& label);  // u8 [H, W] trainIds; 255 and other values left out

struct RareClassTable {
  std::vector<int> classes;         // the classes with any pixel, rarest first (upstream's order)
  std::vector<double> frequency;    // f_c of classes[i]: its share of all counted pixels
  std::vector<double> probability;  // softmax((1 - f_c) / temperature), summing to 1
  std::vector<std::vector<int64_t>> images;  // per classes[i]: the images with more than min_pixels of it
};
// Builds the table from every image's counts; throws naming the classes that no image holds more than
// min_pixels pixels of (upstream asserts the same), so the draw cannot pick a class without images.
RareClassTable rare_class_table(const std::vector<ClassPixels>& per_image, const RareClassSampling& options);
struct RareClassDraw {
  int cls;        // the class drawn
  int64_t image;  // the image drawn among those holding it
};
RareClassDraw draw_rare_class(const RareClassTable& table, TrainRng& rng);

// The whole per-sample augmentation above (resize, crop, flip, photometric), with the options' settings.
void augment(LabeledImage& s, const TrainDataOptions& options, TrainRng& rng);
// Normalises `s` (at most crop x crop) into image slot f32 [3, crop, crop] and label slot i64 [crop, crop],
// padding with 0 and 255.
void pack_sample(const LabeledImage& s, int64_t crop, float* image_out, int64_t* label_out);

}  // namespace mfuser::apps
