// The test-time pipeline of MFuser-CLIP on whole images, as the official mmseg one (and the oracle's
// `segment` in tools/reference/mfuser_ref/model.py, except for the resize, see below):
//
//   RGB u8 [H, W, 3]
//   -> keep-ratio resize to the dataset scale (mmcv imrescale: target size by rescale_size(), pixels by
//      cv2.resize INTER_LINEAR on uint8, reproduced bit for bit by resize_u8_linear); skipped when the size
//      already matches (Cityscapes 2048x1024 at (2048, 1024), BDD100K 1280x720 at (1280, 720))
//   -> CLIP normalisation ((v - mean) / std in float64, then f32), NCHW
//   -> slide inference: mmseg's window grid (crop 512, stride 341 for the real config; slide_windows), the
//      crop logits summed into place in window order and divided by the per-pixel window count
//      (or "whole": one forward of the whole resized image)
//   -> logits resized back to the original size (bilinear, align_corners=False: kernels::resize_bilinear)
//   -> argmax over the classes (the first maximum on ties, as torch.argmax; softmax does not change it)
//
// A Segmenter holds the model and one graph Executor per crop-batch shape, cached (a few shapes are kept,
// least recently used first out), so a run over a data set builds the crop graph once.
#pragma once

#include <array>
#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "graph/executor.h"
#include "graph/graph.h"
#include "graph/model/config.h"
#include "graph/model/mfuser.h"
#include "runtime/tensor.h"

namespace mfuser::apps {

// ---- geometry ----------------------------------------------------------------------------------------------

// A slide window, rows [y1, y2) x columns [x1, x2) of the (resized) image.
struct Window {
  int64_t y1, y2, x1, x2;
  bool operator==(const Window&) const = default;
};

// mmseg's slide-mode windows, row by row: ceil((size - crop) / stride) + 1 per axis (at least 1), the last
// ones shifted back to end at the border; a crop larger than the image is clipped to it (no padding). Every
// window has the same size, min(crop, image) per axis. Cityscapes 2048x1024 with 512/341: 3 x 6 = 18.
std::vector<Window> slide_windows(int64_t height, int64_t width, int64_t crop_h, int64_t crop_w, int64_t stride_h,
                                  int64_t stride_w);

// A keep-ratio target scale (long edge, short edge), as mmseg's img_scale=(2048, 1024).
struct Scale {
  int64_t long_edge = 2048, short_edge = 1024;
};

// mmcv's imrescale target size for a (long, short) scale: factor = min(long / max(h, w), short / min(h, w))
// in double, new size = int(size * factor + 0.5) per axis. Returns {new_w, new_h}.
std::pair<int64_t, int64_t> rescale_size(int64_t width, int64_t height, Scale scale);

// ---- pixels ------------------------------------------------------------------------------------------------

// cv2.resize(src, (out_w, out_h), interpolation=cv2.INTER_LINEAR) for u8 [H, W, C] -> u8 [out_h, out_w, C],
// bit-exact (checked against OpenCV 4.6 where the golden script finds cv2). OpenCV's fixed-point path:
//  * per output column: fx = float((dx + 0.5) * scale_x - 0.5) with scale_x = 1 / (out_w / W) in double,
//    sx = floor(fx), fx -= sx (float); a column left of the image (sx < 0) or at/after its last pixel
//    (sx >= W - 1) takes that border pixel alone (fx = 0). Coefficients a0 = rint(2048 * (1 - fx)),
//    a1 = rint(2048 * fx) in float, rounded half to even (11 fractional bits);
//  * per output row the same with fy, except that fy is not zeroed at the borders: the two source rows
//    floor(fy) and floor(fy) + 1 are clamped to the image instead; b0, b1 as above;
//  * horizontal pass in int32, exact: h = S[sx] * a0 + S[sx + 1] * a1 (or S[border] * 2048);
//  * vertical pass in OpenCV's 16-bit SIMD arithmetic, which its scalar code repeats so both agree:
//    out = saturate_u8((((b0 * (h0 >> 4)) >> 16) + ((b1 * (h1 >> 4)) >> 16) + 2) >> 2)
//    (4 + 16 + 2 = 22 = 2 x 11 fractional bits, truncating twice before the final rounding).
// An exact 2x downscale is INTER_AREA inside OpenCV ((a + b + c + d + 2) >> 2), which the formula above
// reproduces exactly (all coefficients 1024), so it needs no branch of its own. Same size: a plain copy.
Tensor resize_u8_linear(const Tensor& src, int64_t out_h, int64_t out_w);

// CLIP normalisation of RGB u8 [H, W, 3] -> f32 [1, 3, H, W]: ((double(v) - mean_c) * (1 / std_c)) rounded to
// f32, mean = (0.48145466, 0.4578275, 0.40821073) x 255, std = (0.26862954, 0.26130258, 0.27577711) x 255
// (mmcv imnormalize as the oracle's `normalize`).
Tensor clip_normalize(const Tensor& rgb);

// Per-pixel argmax over the classes of f32 [K, H, W] (host) -> u8 [H, W]; the first maximum wins. K <= 255.
Tensor argmax_classes(const Tensor& logits);

// The Cityscapes palette of the 19 trainIds (mmseg's CityscapesDataset.PALETTE).
const std::array<std::array<uint8_t, 3>, 19>& cityscapes_palette();
// trainIds u8 [H, W] -> RGB u8 [H, W, 3] in the palette; ids outside it (255 = ignore) are black.
Tensor colorize(const Tensor& labels);
// mmseg's show_result blend: uint8(rgb * (1 - opacity) + color * opacity), truncated, of two u8 [H, W, 3].
Tensor overlay(const Tensor& rgb, const Tensor& color, double opacity = 0.5);

// ---- the segmenter -----------------------------------------------------------------------------------------

enum class InferenceMode { slide, whole };

struct SegmenterOptions {
  Device device = Device::cpu();
  std::string precision = "fp32";  // fp32, or bf16 (weights and activations in bf16; CUDA only)
  InferenceMode mode = InferenceMode::slide;
  int batch = 0;                   // crops per forward; 0 = all windows of an image in one batch
  Scale scale;                     // the dataset's keep-ratio test scale
  size_t max_cached_shapes = 3;    // executors kept (each holds its activation arena)
};

struct Segmentation {
  Tensor labels;                   // u8 [H, W] trainIds at the input's size
  Tensor logits;                   // f32 [K, H, W] at the input's size (only when asked for)
  int64_t resized_h = 0, resized_w = 0;  // the size the model saw
  int64_t windows = 0;             // forward windows (1 in whole mode)
};

class Segmenter {
 public:
  // Loads and checks the weights (see MfuserModel); throws on a bad option (device, precision, batch).
  Segmenter(const std::string& weights_path, model::ModelConfig config, SegmenterOptions options);
  ~Segmenter();

  // The whole pipeline on one RGB u8 [H, W, 3] host image.
  Segmentation segment(const Tensor& rgb, bool want_logits = false);

  // The stages, for tests and tools: logits f32 [1, K, h, w] (host) of a normalised image f32 [1, 3, h, w] by
  // slide inference or one whole-image forward.
  Tensor slide_logits(const Tensor& image);
  Tensor whole_logits(const Tensor& image);

  const model::ModelConfig& config() const { return model_->config(); }
  const SegmenterOptions& options() const { return options_; }
  // Number of distinct crop-batch shapes built so far (graph + executor), cached or since evicted.
  int64_t graphs_built() const { return graphs_built_; }

 private:
  // Runs the crop graph on `crops` f32 [n, 3, h, w] (host) and returns the crop logits f32 [n, K, h, w] (host).
  Tensor forward(const Tensor& crops);

  struct Cached {
    std::tuple<int64_t, int64_t, int64_t> shape;
    std::unique_ptr<graph::Graph> graph;
    std::unique_ptr<graph::Executor> executor;
  };
  graph::Executor& executor_for(int64_t n, int64_t h, int64_t w);

  SegmenterOptions options_;
  std::unique_ptr<model::MfuserModel> model_;
  std::list<Cached> cache_;  // most recently used first
  int64_t graphs_built_ = 0;
};

}  // namespace mfuser::apps
