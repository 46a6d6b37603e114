#include "apps/pipeline.h"

#include "kernels/cast/cast.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cast/cast.h"
#include "kernels/resize/resize.h"
#include "runtime/cuda.h"
#include "runtime/parallel.h"

namespace mfuser::apps {

// ---- geometry ----------------------------------------------------------------------------------------------

std::vector<Window> slide_windows(int64_t height, int64_t width, int64_t crop_h, int64_t crop_w, int64_t stride_h,
                                  int64_t stride_w) {
  MFUSER_CHECK(height > 0 && width > 0 && crop_h > 0 && crop_w > 0 && stride_h > 0 && stride_w > 0,
               "slide_windows: bad sizes ", height, "x", width, " crop ", crop_h, "x", crop_w, " stride ", stride_h,
               "x", stride_w);
  const int64_t grids_h = std::max<int64_t>(height - crop_h + stride_h - 1, 0) / stride_h + 1;
  const int64_t grids_w = std::max<int64_t>(width - crop_w + stride_w - 1, 0) / stride_w + 1;
  std::vector<Window> windows;
  windows.reserve(size_t(grids_h * grids_w));
  for (int64_t gy = 0; gy < grids_h; ++gy)
    for (int64_t gx = 0; gx < grids_w; ++gx) {
      const int64_t y2 = std::min(gy * stride_h + crop_h, height), x2 = std::min(gx * stride_w + crop_w, width);
      windows.push_back({std::max<int64_t>(y2 - crop_h, 0), y2, std::max<int64_t>(x2 - crop_w, 0), x2});
    }
  return windows;
}

std::pair<int64_t, int64_t> rescale_size(int64_t width, int64_t height, Scale scale) {
  MFUSER_CHECK(width > 0 && height > 0 && scale.long_edge > 0 && scale.short_edge > 0, "rescale_size: bad sizes ",
               width, "x", height, " to scale ", scale.long_edge, "x", scale.short_edge);
  const double long_edge = double(std::max(scale.long_edge, scale.short_edge));
  const double short_edge = double(std::min(scale.long_edge, scale.short_edge));
  const double factor =
      std::min(long_edge / double(std::max(width, height)), short_edge / double(std::min(width, height)));
  // int(x + 0.5) of a positive double: truncation, as Python's int()
  return {int64_t(double(width) * factor + 0.5), int64_t(double(height) * factor + 0.5)};
}

// ---- pixels ------------------------------------------------------------------------------------------------

namespace {

void check_host_u8(const char* what, const Tensor& t, int ndim) {
  MFUSER_CHECK(t.defined() && t.dtype() == DType::u8 && t.ndim() == ndim && t.device().is_cpu(), what,
               ": expected a host u8 tensor of ", ndim, " dims, got ", t.defined() ? t.str() : "undefined");
}

// One axis of OpenCV's INTER_LINEAR fixed-point resize: per output index the two source taps and their
// 11-bit coefficients (see resize_u8_linear in the header).
struct LinearTaps {
  std::vector<int64_t> i0, i1;
  std::vector<int32_t> c0, c1;
  std::vector<uint8_t> border;  // columns only: the tap is one border pixel with coefficient 2048
};

int32_t fixed_coef(float v) {
  // saturate_cast<short>(v * INTER_RESIZE_COEF_SCALE): round to nearest, ties to even (the FPU's mode)
  return int32_t(std::lrint(v * 2048.0f));
}

LinearTaps linear_taps(int64_t in, int64_t out, bool columns) {
  LinearTaps t;
  t.i0.resize(size_t(out));
  t.i1.resize(size_t(out));
  t.c0.resize(size_t(out));
  t.c1.resize(size_t(out));
  t.border.assign(size_t(out), 0);
  // OpenCV derives the step from the inverse scale: scale = 1 / (out / in), not in / out (they can differ
  // in the last bit).
  const double inv_scale = double(out) / double(in);
  const double scale = 1.0 / inv_scale;
  for (int64_t d = 0; d < out; ++d) {
    float f = float((double(d) + 0.5) * scale - 0.5);
    int64_t s = int64_t(std::floor(f));
    f -= float(s);
    const size_t k = size_t(d);
    if (columns && (s < 0 || s >= in - 1)) {
      // a column outside [0, W - 1): that border pixel alone
      s = s < 0 ? 0 : in - 1;
      t.border[k] = 1;
      f = 0.0f;
    }
    t.c0[k] = fixed_coef(1.0f - f);
    t.c1[k] = fixed_coef(f);
    // rows: both taps clamped into the image, coefficients kept (OpenCV does not zero fy at the borders)
    t.i0[k] = std::clamp<int64_t>(s, 0, in - 1);
    t.i1[k] = std::clamp<int64_t>(s + 1, 0, in - 1);
  }
  return t;
}

}  // namespace

Tensor resize_u8_linear(const Tensor& src, int64_t out_h, int64_t out_w) {
  check_host_u8("resize_u8_linear", src, 3);
  const int64_t in_h = src.dim(0), in_w = src.dim(1), channels = src.dim(2);
  MFUSER_CHECK(in_h > 0 && in_w > 0 && channels > 0 && out_h > 0 && out_w > 0, "resize_u8_linear: bad sizes ",
               src.str(), " -> ", out_h, "x", out_w);
  Tensor dst = Tensor::empty({out_h, out_w, channels}, DType::u8);
  if (out_h == in_h && out_w == in_w) {
    dst.copy_from(src);
    return dst;
  }
  const LinearTaps cols = linear_taps(in_w, out_w, true);
  const LinearTaps rows = linear_taps(in_h, out_h, false);
  const uint8_t* s = src.data<uint8_t>();
  uint8_t* d = dst.data<uint8_t>();
  const int64_t row_elems = out_w * channels;

  parallel_for(out_h, 16, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> h0(static_cast<size_t>(row_elems)), h1(h0.size());
    // Horizontal pass of one source row, exact in int32.
    const auto horizontal = [&](int64_t y, int32_t* h) {
      const uint8_t* row = s + y * in_w * channels;
      for (int64_t x = 0; x < out_w; ++x) {
        const size_t k = size_t(x);
        const uint8_t* p0 = row + cols.i0[k] * channels;
        int32_t* o = h + x * channels;
        if (cols.border[k]) {
          for (int64_t c = 0; c < channels; ++c) o[c] = int32_t(p0[c]) * 2048;
        } else {
          const uint8_t* p1 = row + cols.i1[k] * channels;
          for (int64_t c = 0; c < channels; ++c) o[c] = int32_t(p0[c]) * cols.c0[k] + int32_t(p1[c]) * cols.c1[k];
        }
      }
    };
    int64_t have0 = -1, have1 = -1;  // source rows now in h0 / h1
    for (int64_t y = begin; y < end; ++y) {
      const size_t k = size_t(y);
      const int64_t r0 = rows.i0[k], r1 = rows.i1[k];
      if (r0 == have1 && r0 != have0) {
        std::swap(h0, h1);
        std::swap(have0, have1);
      }
      if (have0 != r0) {
        horizontal(r0, h0.data());
        have0 = r0;
      }
      if (have1 != r1) {
        horizontal(r1, h1.data());
        have1 = r1;
      }
      const int32_t b0 = rows.c0[k], b1 = rows.c1[k];
      uint8_t* o = d + y * row_elems;
      for (int64_t x = 0; x < row_elems; ++x) {
        // OpenCV's 16-bit arithmetic: >> 4 to fit int16, mul_hi (>> 16), then a rounding >> 2
        const int32_t v = (((b0 * (h0[size_t(x)] >> 4)) >> 16) + ((b1 * (h1[size_t(x)] >> 4)) >> 16) + 2) >> 2;
        o[x] = uint8_t(std::clamp(v, 0, 255));
      }
    }
  });
  return dst;
}

Tensor clip_normalize(const Tensor& rgb) {
  check_host_u8("clip_normalize", rgb, 3);
  MFUSER_CHECK(rgb.dim(2) == 3, "clip_normalize: expected RGB [H, W, 3], got ", rgb.str());
  const int64_t h = rgb.dim(0), w = rgb.dim(1), plane = h * w;
  // (v - mean) * (1 / std) in double, as the oracle (float64 buffers built from these Python products)
  static const std::array<double, 3> mean = {0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255};
  static const std::array<double, 3> stdev = {0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255};
  std::array<std::array<float, 256>, 3> table;
  for (int c = 0; c < 3; ++c)
    for (int v = 0; v < 256; ++v) table[size_t(c)][size_t(v)] = float((double(v) - mean[size_t(c)]) * (1.0 / stdev[size_t(c)]));
  Tensor out = Tensor::empty({1, 3, h, w}, DType::f32);
  const uint8_t* in = rgb.data<uint8_t>();
  float* o = out.data<float>();
  parallel_for(plane, 1 << 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      for (int c = 0; c < 3; ++c) o[c * plane + i] = table[size_t(c)][in[i * 3 + c]];
  });
  return out;
}

Tensor argmax_classes(const Tensor& logits) {
  MFUSER_CHECK(logits.dtype() == DType::f32 && logits.ndim() == 3 && logits.device().is_cpu() && logits.dim(0) > 0 &&
                   logits.dim(0) <= 255,
               "argmax_classes: expected host f32 [K, H, W] with 1 <= K <= 255, got ", logits.str());
  const int64_t classes = logits.dim(0), plane = logits.dim(1) * logits.dim(2);
  Tensor labels = Tensor::empty({logits.dim(1), logits.dim(2)}, DType::u8);
  const float* l = logits.data<float>();
  uint8_t* out = labels.data<uint8_t>();
  parallel_for(plane, 1 << 14, [&](int64_t begin, int64_t end) {
    std::vector<float> best(l + begin, l + end);
    std::fill(out + begin, out + end, uint8_t(0));
    for (int64_t k = 1; k < classes; ++k) {
      const float* row = l + k * plane;
      for (int64_t i = begin; i < end; ++i)
        if (row[i] > best[size_t(i - begin)]) {  // strictly greater: the first maximum wins
          best[size_t(i - begin)] = row[i];
          out[i] = uint8_t(k);
        }
    }
  });
  return labels;
}

const std::array<std::array<uint8_t, 3>, 19>& cityscapes_palette() {
  static const std::array<std::array<uint8_t, 3>, 19> palette = {{{128, 64, 128},
                                                                  {244, 35, 232},
                                                                  {70, 70, 70},
                                                                  {102, 102, 156},
                                                                  {190, 153, 153},
                                                                  {153, 153, 153},
                                                                  {250, 170, 30},
                                                                  {220, 220, 0},
                                                                  {107, 142, 35},
                                                                  {152, 251, 152},
                                                                  {70, 130, 180},
                                                                  {220, 20, 60},
                                                                  {255, 0, 0},
                                                                  {0, 0, 142},
                                                                  {0, 0, 70},
                                                                  {0, 60, 100},
                                                                  {0, 80, 100},
                                                                  {0, 0, 230},
                                                                  {119, 11, 32}}};
  return palette;
}

Tensor colorize(const Tensor& labels) {
  check_host_u8("colorize", labels, 2);
  Tensor out = Tensor::zeros({labels.dim(0), labels.dim(1), 3}, DType::u8);
  const uint8_t* l = labels.data<uint8_t>();
  uint8_t* o = out.data<uint8_t>();
  const auto& palette = cityscapes_palette();
  for (int64_t i = 0; i < labels.numel(); ++i)
    if (l[i] < palette.size()) std::memcpy(o + 3 * i, palette[l[i]].data(), 3);
  return out;
}

Tensor overlay(const Tensor& rgb, const Tensor& color, double opacity) {
  check_host_u8("overlay", rgb, 3);
  check_host_u8("overlay", color, 3);
  MFUSER_CHECK(rgb.shape() == color.shape(), "overlay: image ", rgb.str(), " and colours ", color.str(), " differ");
  Tensor out = Tensor::empty(rgb.shape(), DType::u8);
  const uint8_t *a = rgb.data<uint8_t>(), *b = color.data<uint8_t>();
  uint8_t* o = out.data<uint8_t>();
  for (int64_t i = 0; i < rgb.numel(); ++i) o[i] = uint8_t(double(a[i]) * (1 - opacity) + double(b[i]) * opacity);
  return out;
}

// ---- the segmenter -----------------------------------------------------------------------------------------

Segmenter::Segmenter(const std::string& weights_path, model::ModelConfig config, SegmenterOptions options)
    : options_(std::move(options)) {
  MFUSER_CHECK(options_.precision == "fp32" || options_.precision == "bf16", "unknown precision '", options_.precision,
               "' (fp32 or bf16)");
  MFUSER_CHECK(options_.precision != "bf16" || options_.device.is_cuda(),
               "--precision bf16 runs on CUDA only (on the CPU a bf16 graph is a slow test reference): add --device cuda");
  MFUSER_CHECK(options_.batch >= 0, "crop batch must be >= 0 (0 = all windows of an image), got ", options_.batch);
  MFUSER_CHECK(options_.max_cached_shapes >= 1, "the executor cache needs room for one shape");
  if (options_.device.is_cuda())
    MFUSER_CHECK(cuda::available(), "--device cuda: CUDA is unavailable: ", cuda::unavailable_reason());
  MFUSER_CHECK(config.num_classes >= 1 && config.num_classes <= 255, "a u8 label map holds at most 255 classes, the "
               "config has ", config.num_classes);
  model_ = std::make_unique<model::MfuserModel>(weights_path, std::move(config));
}

Segmenter::~Segmenter() = default;

graph::Executor& Segmenter::executor_for(int64_t n, int64_t h, int64_t w) {
  const auto shape = std::make_tuple(n, h, w);
  for (auto it = cache_.begin(); it != cache_.end(); ++it)
    if (it->shape == shape) {
      cache_.splice(cache_.begin(), cache_, it);
      return *cache_.front().executor;
    }
  while (cache_.size() >= options_.max_cached_shapes) cache_.pop_back();  // frees that arena first
  Cached entry;
  entry.shape = shape;
  entry.graph = model_->build(n, h, w, options_.precision == "bf16" ? DType::bf16 : DType::f32);
  entry.executor = std::make_unique<graph::Executor>(*entry.graph, options_.device);
  cache_.push_front(std::move(entry));
  ++graphs_built_;
  return *cache_.front().executor;
}

Tensor Segmenter::forward(const Tensor& crops) {
  graph::Executor& ex = executor_for(crops.dim(0), crops.dim(2), crops.dim(3));
  ex.set_input("image", crops);
  ex.run();
  const Tensor logits = ex.get("logits");
  // on the CPU a view into the arena: valid until the next run of this executor, which the callers respect
  if (logits.device().is_cpu()) return logits;
  return (logits.dtype() == DType::f32 ? logits : kernels::cast_to(logits, DType::f32)).to(Device::cpu());
}

Tensor Segmenter::slide_logits(const Tensor& image) {
  MFUSER_CHECK(image.dtype() == DType::f32 && image.ndim() == 4 && image.dim(0) == 1 && image.dim(1) == 3 &&
                   image.device().is_cpu(),
               "slide_logits: expected a host f32 [1, 3, H, W] image, got ", image.str());
  const model::ModelConfig& cfg = config();
  const int64_t h = image.dim(2), w = image.dim(3), classes = cfg.num_classes;
  const std::vector<Window> windows =
      slide_windows(h, w, cfg.slide_crop, cfg.slide_crop, cfg.slide_stride, cfg.slide_stride);
  const int64_t ch = windows[0].y2 - windows[0].y1, cw = windows[0].x2 - windows[0].x1;
  const int64_t per_batch = options_.batch > 0 ? options_.batch : int64_t(windows.size());

  Tensor preds = Tensor::zeros({1, classes, h, w}, DType::f32);
  std::vector<float> count(size_t(h * w), 0.0f);
  float* p = preds.data<float>();
  const float* img = image.data<float>();
  for (size_t first = 0; first < windows.size(); first += size_t(per_batch)) {
    const size_t n = std::min(windows.size() - first, size_t(per_batch));
    Tensor crops = Tensor::empty({int64_t(n), 3, ch, cw}, DType::f32);
    float* c = crops.data<float>();
    for (size_t i = 0; i < n; ++i) {
      const Window& win = windows[first + i];
      for (int64_t ch_i = 0; ch_i < 3; ++ch_i)
        for (int64_t y = 0; y < ch; ++y)
          std::memcpy(c + ((int64_t(i) * 3 + ch_i) * ch + y) * cw, img + (ch_i * h + win.y1 + y) * w + win.x1,
                      size_t(cw) * sizeof(float));
    }
    const Tensor logits = forward(crops);
    const float* l = logits.data<float>();
    // Summed into place in window order (mmseg adds each padded crop to the running sum).
    parallel_for(classes, 1, [&](int64_t k0, int64_t k1) {
      for (size_t i = 0; i < n; ++i) {
        const Window& win = windows[first + i];
        for (int64_t k = k0; k < k1; ++k)
          for (int64_t y = 0; y < ch; ++y) {
            const float* src = l + ((int64_t(i) * classes + k) * ch + y) * cw;
            float* dst = p + (k * h + win.y1 + y) * w + win.x1;
            for (int64_t x = 0; x < cw; ++x) dst[x] += src[x];
          }
      }
    });
    for (size_t i = 0; i < n; ++i) {
      const Window& win = windows[first + i];
      for (int64_t y = win.y1; y < win.y2; ++y)
        for (int64_t x = win.x1; x < win.x2; ++x) count[size_t(y * w + x)] += 1.0f;
    }
  }
  for (float c : count) MFUSER_CHECK(c > 0, "slide_logits: a pixel no window covers (cannot happen)");
  parallel_for(classes, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k)
      for (int64_t i = 0; i < h * w; ++i) p[k * h * w + i] /= count[size_t(i)];
  });
  return preds;
}

Tensor Segmenter::whole_logits(const Tensor& image) {
  MFUSER_CHECK(image.dtype() == DType::f32 && image.ndim() == 4 && image.dim(0) == 1 && image.dim(1) == 3 &&
                   image.device().is_cpu(),
               "whole_logits: expected a host f32 [1, 3, H, W] image, got ", image.str());
  const Tensor logits = forward(image);
  Tensor out = Tensor::empty(logits.shape(), DType::f32);
  out.copy_from(logits);
  return out;
}

Segmentation Segmenter::segment(const Tensor& rgb, bool want_logits) {
  check_host_u8("segment", rgb, 3);
  MFUSER_CHECK(rgb.dim(2) == 3, "segment: expected an RGB image [H, W, 3], got ", rgb.str());
  const int64_t height = rgb.dim(0), width = rgb.dim(1), classes = config().num_classes;
  Segmentation out;
  const auto [new_w, new_h] = rescale_size(width, height, options_.scale);
  out.resized_h = new_h;
  out.resized_w = new_w;
  const Tensor resized = (new_h == height && new_w == width) ? rgb : resize_u8_linear(rgb, new_h, new_w);
  const Tensor image = clip_normalize(resized);
  Tensor logits;
  if (options_.mode == InferenceMode::slide) {
    out.windows = int64_t(slide_windows(new_h, new_w, config().slide_crop, config().slide_crop, config().slide_stride,
                                        config().slide_stride)
                              .size());
    logits = slide_logits(image);
  } else {
    out.windows = 1;
    logits = whole_logits(image);
  }
  if (new_h != height || new_w != width) {
    Tensor full = Tensor::empty({1, classes, height, width}, DType::f32);
    kernels::resize_bilinear(logits, full);
    logits = full;
  }
  logits = logits.reshape({classes, height, width});
  out.labels = argmax_classes(logits);
  if (want_logits) out.logits = logits;
  return out;
}

}  // namespace mfuser::apps
