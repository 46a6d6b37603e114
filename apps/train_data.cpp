#include "apps/train_data.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <map>
#include <mutex>
#include <thread>

#include "apps/datasets.h"
#include "apps/pipeline.h"
#include "loaders/image.h"
#include "runtime/error.h"
#include "runtime/splitmix.h"

namespace mfuser::apps {

namespace {

constexpr int kNumClasses = 19;
constexpr uint8_t kIgnore = 255;

void check_u8(const char* what, const Tensor& t, int ndim) {
  MFUSER_CHECK(t.defined() && t.dtype() == DType::u8 && t.ndim() == ndim && t.device().is_cpu(), what,
               ": expected a host u8 tensor of ", ndim, " dims, got ", t.defined() ? t.str() : "undefined");
}

void check_pair(const char* what, const LabeledImage& s) {
  check_u8(what, s.image, 3);
  check_u8(what, s.label, 2);
  MFUSER_CHECK(s.image.dim(2) == 3 && s.image.dim(0) == s.label.dim(0) && s.image.dim(1) == s.label.dim(1), what,
               ": image ", s.image.str(), " and label ", s.label.str(), " do not match");
}

uint8_t clip_u8_trunc(float v) {  // np.clip(v, 0, 255).astype(np.uint8)
  return uint8_t(std::clamp(v, 0.f, 255.f));
}

// mmseg's PhotoMetricDistortion.convert on every byte of [n] values.
void convert_u8(uint8_t* p, int64_t n, int64_t stride, float alpha, float beta) {
  for (int64_t i = 0; i < n; ++i) p[i * stride] = clip_u8_trunc(float(p[i * stride]) * alpha + beta);
}

}  // namespace

// ---- randomness ----------------------------------------------------------------------------------------------

uint64_t TrainRng::next_u64() {
  const uint64_t draw = splitmix64(state_);
  state_ += kSplitMixGamma;
  return draw;
}

double TrainRng::uniform() { return double(next_u64() >> 11) * 0x1.0p-53; }

double TrainRng::uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

int64_t TrainRng::randint(int64_t lo, int64_t hi) {
  MFUSER_CHECK(hi > lo, "randint: empty range [", lo, ", ", hi, ")");
  const uint64_t span = uint64_t(hi - lo);
  // rejection sampling: no modulo bias
  const uint64_t limit = UINT64_MAX - UINT64_MAX % span;
  uint64_t x;
  do x = next_u64();
  while (x >= limit);
  return lo + int64_t(x % span);
}

uint64_t mix_seed(uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
  TrainRng r(a);
  uint64_t h = r.next_u64();
  for (uint64_t v : {b, c, d}) {
    TrainRng t(h ^ (v * 0xD6E8FEB86659FD93ull));
    h = t.next_u64();
  }
  return h;
}

namespace {

constexpr uint64_t kTagShuffle = 0x5348554646ull, kTagAugment = 0x415547ull, kTagSynthetic = 0x53594eull,
                   kTagSyntheticVal = 0x53594e56414cull, kTagRareClass = 0x524353ull;

std::vector<int64_t> epoch_permutation(uint64_t seed, int64_t size, int64_t epoch) {
  std::vector<int64_t> perm(static_cast<size_t>(size));
  for (int64_t i = 0; i < size; ++i) perm[size_t(i)] = i;
  TrainRng rng(mix_seed(seed, kTagShuffle, uint64_t(epoch)));
  for (int64_t i = size - 1; i > 0; --i) std::swap(perm[size_t(i)], perm[size_t(rng.randint(0, i + 1))]);
  return perm;
}

}  // namespace

LabeledImage load_labeled_image(const Sample& sample, int num_classes) {
  LabeledImage s;
  s.image = read_rgb(sample.image);
  s.label = load_label(sample, s.image.dim(0), s.image.dim(1), num_classes);
  return s;
}

int64_t epoch_sample(uint64_t seed, int64_t size, int64_t position) {
  MFUSER_CHECK(size > 0 && position >= 0, "epoch_sample: bad size ", size, " or position ", position);
  return epoch_permutation(seed, size, position / size)[size_t(position % size)];
}

// ---- the synthetic data set ------------------------------------------------------------------------------

SyntheticSplit synthetic_split(const std::string& name) {
  if (name == "train") return SyntheticSplit::train;
  if (name == "val") return SyntheticSplit::val;
  throw Error(str_cat("unknown split '", name, "' of the synthetic data set (train or val)"));
}

LabeledImage synthetic_image(uint64_t seed, int64_t index, int64_t crop, SyntheticSplit split) {
  MFUSER_CHECK(crop >= 16, "synthetic_image: crop ", crop, " is too small");
  const bool train = split == SyntheticSplit::train;
  TrainRng rng(mix_seed(seed, train ? kTagSynthetic : kTagSyntheticVal, uint64_t(index)));
  const int64_t h = train ? int64_t(double(crop) * rng.uniform(1.0, 1.5)) : crop;
  const int64_t w = train ? int64_t(double(crop) * rng.uniform(1.0, 1.5)) : crop * 3 / 2;
  Tensor label = Tensor::empty({h, w}, DType::u8);
  uint8_t* l = label.data<uint8_t>();
  std::fill(l, l + h * w, uint8_t(rng.randint(0, kNumClasses)));  // background class

  const int64_t shapes = rng.randint(3, 7);
  for (int64_t k = 0; k < shapes; ++k) {
    const uint8_t cls = uint8_t(rng.randint(0, kNumClasses));
    const int kind = int(rng.randint(0, 3));
    const double cy = rng.uniform(0, double(h)), cx = rng.uniform(0, double(w));
    const double side = double(std::min(h, w));
    if (kind == 0) {  // axis-aligned rectangle
      const double hh = rng.uniform(0.05, 0.25) * side, hw = rng.uniform(0.05, 0.25) * side;
      const int64_t y0 = std::max<int64_t>(0, int64_t(cy - hh)), y1 = std::min<int64_t>(h, int64_t(cy + hh));
      const int64_t x0 = std::max<int64_t>(0, int64_t(cx - hw)), x1 = std::min<int64_t>(w, int64_t(cx + hw));
      for (int64_t y = y0; y < y1; ++y) std::fill(l + y * w + x0, l + y * w + std::max(x0, x1), cls);
    } else if (kind == 1) {  // disc
      const double r = rng.uniform(0.05, 0.25) * side;
      for (int64_t y = std::max<int64_t>(0, int64_t(cy - r)); y < std::min<int64_t>(h, int64_t(cy + r) + 1); ++y)
        for (int64_t x = std::max<int64_t>(0, int64_t(cx - r)); x < std::min<int64_t>(w, int64_t(cx + r) + 1); ++x)
          if ((double(y) - cy) * (double(y) - cy) + (double(x) - cx) * (double(x) - cx) <= r * r) l[y * w + x] = cls;
    } else {  // triangle: three vertices around the centre
      const double r = rng.uniform(0.08, 0.3) * side;
      std::array<double, 3> vy, vx;
      for (int v = 0; v < 3; ++v) {
        const double a = rng.uniform(0, 6.283185307179586);
        vy[size_t(v)] = cy + r * std::sin(a);
        vx[size_t(v)] = cx + r * std::cos(a);
      }
      const auto edge = [&](int i, int j, double y, double x) {
        return (vx[size_t(j)] - vx[size_t(i)]) * (y - vy[size_t(i)]) - (vy[size_t(j)] - vy[size_t(i)]) * (x - vx[size_t(i)]);
      };
      const int64_t y0 = std::max<int64_t>(0, int64_t(cy - r)), y1 = std::min<int64_t>(h, int64_t(cy + r) + 1);
      const int64_t x0 = std::max<int64_t>(0, int64_t(cx - r)), x1 = std::min<int64_t>(w, int64_t(cx + r) + 1);
      for (int64_t y = y0; y < y1; ++y)
        for (int64_t x = x0; x < x1; ++x) {
          const double e0 = edge(0, 1, double(y), double(x)), e1 = edge(1, 2, double(y), double(x)),
                       e2 = edge(2, 0, double(y), double(x));
          if ((e0 >= 0 && e1 >= 0 && e2 >= 0) || (e0 <= 0 && e1 <= 0 && e2 <= 0)) l[y * w + x] = cls;
        }
    }
  }
  // a thin ignore border, as real label maps have unlabelled pixels
  constexpr int64_t border = 2;
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x)
      if (y < border || y >= h - border || x < border || x >= w - border) l[y * w + x] = kIgnore;

  Tensor image = Tensor::empty({h, w, 3}, DType::u8);
  uint8_t* im = image.data<uint8_t>();
  const auto& palette = cityscapes_palette();
  const uint64_t noise_seed = rng.next_u64();
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x) {
      const uint8_t cls = l[y * w + x];
      TrainRng noise(noise_seed ^ uint64_t(y * w + x) * 0x9E3779B97F4A7C15ull);
      const uint64_t bits = noise.next_u64();
      uint8_t* px = im + (y * w + x) * 3;
      if (cls == kIgnore) {
        for (int c = 0; c < 3; ++c) px[c] = uint8_t(bits >> (8 * c));
        continue;
      }
      const int64_t period = 4 + 2 * (cls / 3), half = period / 2;
      bool on;
      switch (cls % 3) {
        case 0: on = (y / half) % 2 == 0; break;
        case 1: on = (x / half) % 2 == 0; break;
        default: on = ((y / half) + (x / half)) % 2 == 0; break;
      }
      for (int c = 0; c < 3; ++c) {
        const int n = int((bits >> (8 * c)) & 31) - 16;  // noise in [-16, 15]
        px[c] = uint8_t(std::clamp(int(palette[cls][size_t(c)]) + (on ? 35 : -35) + n, 0, 255));
      }
    }
  return {image, label};
}

// ---- the transforms ------------------------------------------------------------------------------------------

Tensor resize_u8_nearest(const Tensor& src, int64_t out_h, int64_t out_w) {
  MFUSER_CHECK(src.defined() && src.dtype() == DType::u8 && (src.ndim() == 2 || src.ndim() == 3) &&
                   src.device().is_cpu(),
               "resize_u8_nearest: expected a host u8 [H, W] or [H, W, C] tensor, got ",
               src.defined() ? src.str() : "undefined");
  const int64_t in_h = src.dim(0), in_w = src.dim(1), ch = src.ndim() == 3 ? src.dim(2) : 1;
  MFUSER_CHECK(in_h > 0 && in_w > 0 && out_h > 0 && out_w > 0, "resize_u8_nearest: bad sizes ", src.str(), " -> ",
               out_h, "x", out_w);
  Tensor dst = src.ndim() == 3 ? Tensor::empty({out_h, out_w, ch}, DType::u8) : Tensor::empty({out_h, out_w}, DType::u8);
  // OpenCV's resizeNN: ifx = 1 / (dsize / ssize) in double, sx = min(floor(x * ifx), ssize - 1)
  const double ifx = 1.0 / (double(out_w) / double(in_w)), ify = 1.0 / (double(out_h) / double(in_h));
  std::vector<int64_t> xs(static_cast<size_t>(out_w));
  for (int64_t x = 0; x < out_w; ++x) xs[size_t(x)] = std::min(int64_t(std::floor(double(x) * ifx)), in_w - 1);
  const uint8_t* s = src.data<uint8_t>();
  uint8_t* d = dst.data<uint8_t>();
  for (int64_t y = 0; y < out_h; ++y) {
    const int64_t sy = std::min(int64_t(std::floor(double(y) * ify)), in_h - 1);
    const uint8_t* row = s + sy * in_w * ch;
    uint8_t* o = d + y * out_w * ch;
    for (int64_t x = 0; x < out_w; ++x)
      for (int64_t c = 0; c < ch; ++c) o[x * ch + c] = row[xs[size_t(x)] * ch + c];
  }
  return dst;
}

void random_resize(LabeledImage& s, double ratio_min, double ratio_max, int64_t scale_w, int64_t scale_h,
                   TrainRng& rng) {
  check_pair("random_resize", s);
  MFUSER_CHECK(ratio_min > 0 && ratio_min <= ratio_max && scale_w > 0 && scale_h > 0, "random_resize: bad ratio range [",
               ratio_min, ", ", ratio_max, "] or scale ", scale_w, "x", scale_h);
  // mmseg random_sample_ratio: ratio = U * (max - min) + min; scale = (int(w * ratio), int(h * ratio))
  const double ratio = rng.uniform() * (ratio_max - ratio_min) + ratio_min;
  const int64_t tw = std::max<int64_t>(1, int64_t(double(scale_w) * ratio));
  const int64_t th = std::max<int64_t>(1, int64_t(double(scale_h) * ratio));
  const auto [new_w, new_h] = rescale_size(s.image.dim(1), s.image.dim(0), Scale{std::max(tw, th), std::min(tw, th)});
  if (new_w == s.image.dim(1) && new_h == s.image.dim(0)) return;
  s.image = resize_u8_linear(s.image, std::max<int64_t>(1, new_h), std::max<int64_t>(1, new_w));
  s.label = resize_u8_nearest(s.label, std::max<int64_t>(1, new_h), std::max<int64_t>(1, new_w));
}

namespace {

CropBox draw_box(int64_t h, int64_t w, int64_t crop, TrainRng& rng) {
  const int64_t margin_h = std::max<int64_t>(h - crop, 0), margin_w = std::max<int64_t>(w - crop, 0);
  const int64_t oy = rng.randint(0, margin_h + 1), ox = rng.randint(0, margin_w + 1);
  return {oy, std::min(oy + crop, h), ox, std::min(ox + crop, w)};
}

}  // namespace

CropBox random_crop_box(const Tensor& label, int64_t crop, double cat_max_ratio, TrainRng& rng) {
  check_u8("random_crop_box", label, 2);
  MFUSER_CHECK(crop > 0, "random_crop_box: bad crop ", crop);
  const int64_t h = label.dim(0), w = label.dim(1);
  CropBox box = draw_box(h, w, crop, rng);
  if (cat_max_ratio >= 1.0) return box;
  const uint8_t* l = label.data<uint8_t>();
  for (int attempt = 0; attempt < 10; ++attempt) {
    std::array<int64_t, 256> count{};
    for (int64_t y = box.y1; y < box.y2; ++y)
      for (int64_t x = box.x1; x < box.x2; ++x) ++count[l[y * w + x]];
    count[kIgnore] = 0;
    int64_t classes = 0, total = 0, most = 0;
    for (int64_t c : count)
      if (c > 0) {
        ++classes;
        total += c;
        most = std::max(most, c);
      }
    if (classes > 1 && double(most) / double(total) < cat_max_ratio) break;
    box = draw_box(h, w, crop, rng);
  }
  return box;
}

void crop_to(LabeledImage& s, const CropBox& box) {
  check_pair("crop_to", s);
  const int64_t h = s.image.dim(0), w = s.image.dim(1);
  MFUSER_CHECK(0 <= box.y1 && box.y1 < box.y2 && box.y2 <= h && 0 <= box.x1 && box.x1 < box.x2 && box.x2 <= w,
               "crop_to: box [", box.y1, ", ", box.y2, ") x [", box.x1, ", ", box.x2, ") outside ", h, "x", w);
  if (box.y1 == 0 && box.x1 == 0 && box.y2 == h && box.x2 == w) return;
  const int64_t ch = box.y2 - box.y1, cw = box.x2 - box.x1;
  Tensor image = Tensor::empty({ch, cw, 3}, DType::u8), label = Tensor::empty({ch, cw}, DType::u8);
  const uint8_t *si = s.image.data<uint8_t>(), *sl = s.label.data<uint8_t>();
  uint8_t *di = image.data<uint8_t>(), *dl = label.data<uint8_t>();
  for (int64_t y = 0; y < ch; ++y) {
    std::copy_n(si + ((box.y1 + y) * w + box.x1) * 3, cw * 3, di + y * cw * 3);
    std::copy_n(sl + (box.y1 + y) * w + box.x1, cw, dl + y * cw);
  }
  s.image = image;
  s.label = label;
}

void hflip(LabeledImage& s) {
  check_pair("hflip", s);
  const int64_t h = s.image.dim(0), w = s.image.dim(1);
  uint8_t *im = s.image.data<uint8_t>(), *l = s.label.data<uint8_t>();
  for (int64_t y = 0; y < h; ++y) {
    std::reverse(l + y * w, l + (y + 1) * w);
    uint8_t* row = im + y * w * 3;
    for (int64_t a = 0, b = w - 1; a < b; ++a, --b)
      for (int c = 0; c < 3; ++c) std::swap(row[a * 3 + c], row[b * 3 + c]);
  }
}

Tensor rgb_to_hsv_u8(const Tensor& rgb) {
  check_u8("rgb_to_hsv_u8", rgb, 3);
  MFUSER_CHECK(rgb.dim(2) == 3, "rgb_to_hsv_u8: expected [H, W, 3], got ", rgb.str());
  // OpenCV's RGB2HSV_b: 12-bit fixed-point divisions by tables, hue range 180
  constexpr int shift = 12;
  static const auto tables = [] {
    std::array<std::array<int, 256>, 2> t{};  // sdiv, hdiv180
    for (int i = 1; i < 256; ++i) {
      t[0][size_t(i)] = int(std::nearbyint(double(255 << shift) / double(i)));
      t[1][size_t(i)] = int(std::nearbyint(double(180 << shift) / (6.0 * double(i))));
    }
    return t;
  }();
  Tensor out = Tensor::empty(rgb.shape(), DType::u8);
  const uint8_t* s = rgb.data<uint8_t>();
  uint8_t* d = out.data<uint8_t>();
  const int64_t n = rgb.dim(0) * rgb.dim(1);
  for (int64_t i = 0; i < n; ++i) {
    const int r = s[i * 3], g = s[i * 3 + 1], b = s[i * 3 + 2];
    const int v = std::max({r, g, b}), vmin = std::min({r, g, b}), diff = v - vmin;
    const int sat = (diff * tables[0][size_t(v)] + (1 << (shift - 1))) >> shift;
    int hue = v == r ? g - b : v == g ? b - r + 2 * diff : r - g + 4 * diff;
    hue = (hue * tables[1][size_t(diff)] + (1 << (shift - 1))) >> shift;
    if (hue < 0) hue += 180;
    d[i * 3] = uint8_t(std::clamp(hue, 0, 255));
    d[i * 3 + 1] = uint8_t(std::clamp(sat, 0, 255));
    d[i * 3 + 2] = uint8_t(v);
  }
  return out;
}

Tensor hsv_to_rgb_u8(const Tensor& hsv) {
  check_u8("hsv_to_rgb_u8", hsv, 3);
  MFUSER_CHECK(hsv.dim(2) == 3, "hsv_to_rgb_u8: expected [H, W, 3], got ", hsv.str());
  // OpenCV's HSV2RGB_b: through float, sector table, saturate_cast (round half to even) of x * 255
  static const int sector_data[6][3] = {{1, 3, 0}, {1, 0, 2}, {3, 0, 1}, {0, 2, 1}, {0, 1, 3}, {2, 1, 0}};
  Tensor out = Tensor::empty(hsv.shape(), DType::u8);
  const uint8_t* s = hsv.data<uint8_t>();
  uint8_t* d = out.data<uint8_t>();
  const int64_t n = hsv.dim(0) * hsv.dim(1);
  for (int64_t i = 0; i < n; ++i) {
    float hh = float(s[i * 3]) * (6.f / 180.f);
    const float sat = float(s[i * 3 + 1]) * (1.f / 255.f), val = float(s[i * 3 + 2]) * (1.f / 255.f);
    float b = val, g = val, r = val;
    if (sat != 0.f) {
      while (hh >= 6.f) hh -= 6.f;
      int sector = int(std::floor(hh));
      hh -= float(sector);
      if (sector < 0 || sector >= 6) {
        sector = 0;
        hh = 0.f;
      }
      const float tab[4] = {val, val * (1.f - sat), val * (1.f - sat * hh), val * (1.f - sat * (1.f - hh))};
      b = tab[sector_data[sector][0]];
      g = tab[sector_data[sector][1]];
      r = tab[sector_data[sector][2]];
    }
    const auto to_u8 = [](float x) { return uint8_t(std::clamp(std::nearbyint(x * 255.f), 0.f, 255.f)); };
    d[i * 3] = to_u8(r);
    d[i * 3 + 1] = to_u8(g);
    d[i * 3 + 2] = to_u8(b);
  }
  return out;
}

void photometric_distortion(Tensor& rgb, TrainRng& rng) {
  check_u8("photometric_distortion", rgb, 3);
  MFUSER_CHECK(rgb.dim(2) == 3, "photometric_distortion: expected [H, W, 3], got ", rgb.str());
  const int64_t n = rgb.numel();
  const auto contrast = [&] {
    if (rng.randint(0, 2)) convert_u8(rgb.data<uint8_t>(), n, 1, float(rng.uniform(0.5, 1.5)), 0.f);
  };
  if (rng.randint(0, 2)) convert_u8(rgb.data<uint8_t>(), n, 1, 1.f, float(rng.uniform(-32.0, 32.0)));  // brightness
  const int64_t mode = rng.randint(0, 2);
  if (mode == 1) contrast();
  if (rng.randint(0, 2)) {  // saturation
    const float alpha = float(rng.uniform(0.5, 1.5));
    Tensor hsv = rgb_to_hsv_u8(rgb);
    convert_u8(hsv.data<uint8_t>() + 1, n / 3, 3, alpha, 0.f);
    rgb = hsv_to_rgb_u8(hsv);
  }
  if (rng.randint(0, 2)) {  // hue: (h + randint(-18, 18)) % 180
    const int delta = int(rng.randint(-18, 18));
    Tensor hsv = rgb_to_hsv_u8(rgb);
    uint8_t* p = hsv.data<uint8_t>();
    for (int64_t i = 0; i < n / 3; ++i) p[i * 3] = uint8_t((((int(p[i * 3]) + delta) % 180) + 180) % 180);
    rgb = hsv_to_rgb_u8(hsv);
  }
  if (mode == 0) contrast();
}

// ---- rare-class sampling -------------------------------------------------------------------------------------

ClassPixels count_class_pixels(const Tensor& label) {
  check_u8("count_class_pixels", label, 2);
  std::array<int64_t, 256> all{};
  const uint8_t* l = label.data<uint8_t>();
  for (int64_t i = 0; i < label.numel(); ++i) ++all[l[i]];
  ClassPixels counts{};
  std::copy_n(all.begin(), kNumClasses, counts.begin());
  return counts;
}

RareClassTable rare_class_table(const std::vector<ClassPixels>& per_image, const RareClassSampling& options) {
  MFUSER_CHECK(std::isfinite(options.temperature) && options.temperature > 0, "rare-class sampling: temperature ",
               options.temperature, " must be a finite number > 0");
  ClassPixels overall{};
  for (const ClassPixels& counts : per_image)
    for (size_t c = 0; c < counts.size(); ++c) overall[c] += counts[c];
  RareClassTable t;
  for (int c = 0; c < kNumClasses; ++c)
    if (overall[size_t(c)] > 0) t.classes.push_back(c);
  MFUSER_CHECK(!t.classes.empty(), "rare-class sampling: the training labels hold no class pixel at all");
  std::stable_sort(t.classes.begin(), t.classes.end(),
                   [&](int a, int b) { return overall[size_t(a)] < overall[size_t(b)]; });
  double total = 0;
  for (int c : t.classes) total += double(overall[size_t(c)]);
  double top = -INFINITY;
  for (int c : t.classes) {
    t.frequency.push_back(double(overall[size_t(c)]) / total);
    top = std::max(top, (1 - t.frequency.back()) / options.temperature);
  }
  double sum = 0;
  for (double f : t.frequency) sum += t.probability.emplace_back(std::exp((1 - f) / options.temperature - top));
  for (double& p : t.probability) p /= sum;

  std::string without;
  for (int c : t.classes) {
    std::vector<int64_t>& images = t.images.emplace_back();
    for (size_t i = 0; i < per_image.size(); ++i)
      if (per_image[i][size_t(c)] > options.min_pixels) images.push_back(int64_t(i));
    if (images.empty()) without += str_cat(without.empty() ? "" : ", ", c);
  }
  MFUSER_CHECK(without.empty(), "rare-class sampling: no training image has more than min_pixels = ",
               options.min_pixels, " pixels of class(es) ", without, " (lower min_pixels)");
  return t;
}

RareClassDraw draw_rare_class(const RareClassTable& table, TrainRng& rng) {
  MFUSER_CHECK(!table.classes.empty(), "draw_rare_class: empty table");
  const double u = rng.uniform();
  size_t i = 0;
  for (double cumulative = table.probability[0]; i + 1 < table.classes.size() && u >= cumulative;)
    cumulative += table.probability[++i];
  const std::vector<int64_t>& images = table.images[i];
  return {table.classes[i], images[size_t(rng.randint(0, int64_t(images.size())))]};
}

// ---- the whole augmentation -------------------------------------------------------------------------------

void augment(LabeledImage& s, const TrainDataOptions& o, TrainRng& rng) {
  check_pair("augment", s);
  const int64_t h = s.image.dim(0), w = s.image.dim(1);
  const bool own = o.img_scale_long <= 0 || o.img_scale_short <= 0;
  // an explicit img_scale is (long, short): mmseg's (w, h) = (long, short) for landscape images
  random_resize(s, o.ratio_min, o.ratio_max, own ? w : o.img_scale_long, own ? h : o.img_scale_short, rng);
  crop_to(s, random_crop_box(s.label, o.crop, o.cat_max_ratio, rng));
  if (rng.uniform() < o.flip_prob) hflip(s);
  if (o.photometric) photometric_distortion(s.image, rng);
}

void pack_sample(const LabeledImage& s, int64_t crop, float* image_out, int64_t* label_out) {
  check_pair("pack_sample", s);
  const int64_t h = s.image.dim(0), w = s.image.dim(1);
  MFUSER_CHECK(h <= crop && w <= crop, "pack_sample: ", h, "x", w, " does not fit the crop ", crop);
  const Tensor norm = clip_normalize(s.image);  // f32 [1, 3, h, w]
  const float* n = norm.data<float>();
  const uint8_t* l = s.label.data<uint8_t>();
  std::fill(image_out, image_out + 3 * crop * crop, 0.f);
  std::fill(label_out, label_out + crop * crop, int64_t(kIgnore));
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t y = 0; y < h; ++y) std::copy_n(n + (c * h + y) * w, w, image_out + (c * crop + y) * crop);
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x) label_out[y * crop + x] = l[y * w + x];
}

// ---- the loader ------------------------------------------------------------------------------------------

namespace {

// The training images: generated (synthetic) or files.
class ImageSource {
 public:
  ImageSource(const TrainDataOptions& o, std::vector<Sample> samples)
      : synthetic_(o.dataset == "synthetic"),
        seed_(o.seed),
        crop_(o.crop),
        split_(synthetic_ ? synthetic_split(o.split) : SyntheticSplit::train),
        samples_(std::move(samples)),
        size_(synthetic_ ? o.synthetic_images : int64_t(samples_.size())) {}

  int64_t size() const { return size_; }

  LabeledImage load(int64_t index) const {
    return synthetic_ ? synthetic_image(seed_, index, crop_, split_)
                      : load_labeled_image(samples_[size_t(index)], kNumClasses);
  }

  // Every image's class pixel counts at full size, read by `threads` threads.
  std::vector<ClassPixels> class_pixels(int threads) const {
    std::vector<ClassPixels> counts(static_cast<size_t>(size_));
    std::mutex mu;
    std::string error;
    int64_t next = 0;
    const auto work = [&] {
      for (;;) {
        int64_t i;
        {
          std::lock_guard<std::mutex> lock(mu);
          if (next >= size_ || !error.empty()) return;
          i = next++;
        }
        try {
          const Tensor label = synthetic_ ? synthetic_image(seed_, i, crop_, split_).label
                                          : read_train_ids(samples_[size_t(i)], kNumClasses);
          counts[size_t(i)] = count_class_pixels(label);
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> lock(mu);
          if (error.empty()) error = str_cat("rare-class sampling, counting the classes of image ", i, ": ", e.what());
        }
      }
    };
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) pool.emplace_back(work);
    for (std::thread& t : pool) t.join();
    if (!error.empty()) throw Error(error);
    return counts;
  }

 private:
  const bool synthetic_;
  const uint64_t seed_;
  const int64_t crop_;
  const SyntheticSplit split_;
  const std::vector<Sample> samples_;
  const int64_t size_;
};

class PrefetchingTrainData final : public TrainData {
 public:
  PrefetchingTrainData(TrainDataOptions options, ImageSource source, RareClassTable rare_classes)
      : o_(std::move(options)),
        source_(std::move(source)),
        rare_classes_(std::move(rare_classes)),
        size_(source_.size()),
        window_(std::max(o_.prefetch, 1)),
        consumer_(o_.start_step),
        next_claim_(o_.start_step) {
    workers_.reserve(size_t(o_.threads));
    for (int t = 0; t < o_.threads; ++t) workers_.emplace_back([this] { work(); });
  }

  ~PrefetchingTrainData() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (std::thread& t : workers_) t.join();
  }

  TrainBatch next() override {
    const auto t0 = std::chrono::steady_clock::now();
    std::unique_lock<std::mutex> lock(mu_);
    ready_cv_.wait(lock, [&] { return ready_.count(consumer_) > 0; });
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    auto it = ready_.find(consumer_);
    if (!it->second.error.empty()) throw Error(it->second.error);  // kept: every later call fails alike
    TrainBatch batch = std::move(it->second.batch);
    ready_.erase(it);
    ++consumer_;
    batch.wait_seconds = waited;
    total_wait_ += waited;
    lock.unlock();
    work_cv_.notify_all();
    return batch;
  }

  int64_t size() const override { return size_; }

  int64_t step() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return consumer_;
  }

  void skip_to(int64_t step) override {
    MFUSER_CHECK(step >= 0, "skip_to: negative step ", step);
    {
      std::lock_guard<std::mutex> lock(mu_);
      consumer_ = step;
      next_claim_ = step;
      ready_.clear();  // batches in flight for steps >= step still land (a batch depends on its step only)
    }
    work_cv_.notify_all();
  }

  double total_wait_seconds() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return total_wait_;
  }

 private:
  struct Slot {
    TrainBatch batch;
    std::string error;
  };

  void work() {
    omp_set_num_threads(1);  // this thread's own OpenMP setting: the pool is the parallelism, not OpenMP
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      work_cv_.wait(lock, [&] { return stop_ || next_claim_ < consumer_ + window_; });
      if (stop_) return;
      const int64_t s = next_claim_++;
      lock.unlock();
      Slot slot;
      try {
        slot.batch = make_batch(s);
      } catch (const std::exception& e) {
        slot.error = str_cat("training data, step ", s, ": ", e.what());
      }
      lock.lock();
      if (s >= consumer_ && s < consumer_ + window_ && ready_.count(s) == 0) {
        ready_.emplace(s, std::move(slot));
        ready_cv_.notify_all();
      }
    }
  }

  std::shared_ptr<const std::vector<int64_t>> permutation(int64_t epoch) {
    std::lock_guard<std::mutex> lock(perm_mu_);
    auto it = perms_.find(epoch);
    if (it != perms_.end()) return it->second;
    auto perm = std::make_shared<const std::vector<int64_t>>(epoch_permutation(o_.seed, size_, epoch));
    if (perms_.size() >= 4) perms_.erase(perms_.begin());  // the oldest epoch (workers are within a few steps)
    perms_.emplace(epoch, perm);
    return perm;
  }

  // The crop at global sample position `position`, and its image's index.
  std::pair<LabeledImage, int64_t> sample(int64_t position) {
    TrainRng rng(mix_seed(o_.seed, kTagAugment, uint64_t(position)));
    if (!o_.rare_class_sampling.enabled) {
      const int64_t index = (*permutation(position / size_))[size_t(position % size_)];
      LabeledImage s = source_.load(index);
      augment(s, o_, rng);
      return {std::move(s), index};
    }
    TrainRng pick(mix_seed(o_.seed, kTagRareClass, uint64_t(position)));
    const RareClassDraw draw = draw_rare_class(rare_classes_, pick);
    const RareClassSampling& rcs = o_.rare_class_sampling;
    LabeledImage s = source_.load(draw.image);
    augment(s, o_, rng);
    for (int redraw = 0; redraw < 10 && rcs.min_crop_ratio > 0; ++redraw) {
      if (double(count_class_pixels(s.label)[size_t(draw.cls)]) > double(rcs.min_pixels) * rcs.min_crop_ratio) break;
      s = source_.load(draw.image);  // afresh: augment works in place
      augment(s, o_, rng);
    }
    return {std::move(s), draw.image};
  }

  TrainBatch make_batch(int64_t step) {
    const int64_t b = o_.batch, c = o_.crop;
    TrainBatch out;
    out.step = step;
    out.images = Tensor::empty({b, 3, c, c}, DType::f32);
    out.labels = Tensor::empty({b, c, c}, DType::i64);
    for (int64_t i = 0; i < b; ++i) {
      // This rank's slice of the group's global batch of world_size * b samples.
      const auto [s, index] = sample((step * o_.world_size + o_.rank) * b + i);
      out.indices.push_back(index);
      pack_sample(s, c, out.images.data<float>() + i * 3 * c * c, out.labels.data<int64_t>() + i * c * c);
    }
    return out;
  }

  const TrainDataOptions o_;
  const ImageSource source_;
  const RareClassTable rare_classes_;  // empty when rare-class sampling is off
  const int64_t size_;
  const int64_t window_;

  mutable std::mutex mu_;
  std::condition_variable work_cv_, ready_cv_;
  int64_t consumer_, next_claim_;
  std::map<int64_t, Slot> ready_;
  bool stop_ = false;
  double total_wait_ = 0;

  std::mutex perm_mu_;
  std::map<int64_t, std::shared_ptr<const std::vector<int64_t>>> perms_;

  std::vector<std::thread> workers_;  // last: started after every member above exists
};

}  // namespace

std::unique_ptr<TrainData> open_train_data(const TrainDataOptions& options) {
  const TrainDataOptions& o = options;
  MFUSER_CHECK(o.world_size >= 1 && o.rank >= 0 && o.rank < o.world_size, "training data: rank ", o.rank,
               " of world size ", o.world_size);
  MFUSER_CHECK(o.batch >= 1 && o.crop >= 16 && o.threads >= 1 && o.prefetch >= 1 && o.start_step >= 0,
               "training data: bad options (batch ", o.batch, ", crop ", o.crop, ", threads ", o.threads, ", prefetch ",
               o.prefetch, ", start step ", o.start_step, ")");
  MFUSER_CHECK(o.ratio_min > 0 && o.ratio_min <= o.ratio_max, "training data: bad resize ratio range [", o.ratio_min,
               ", ", o.ratio_max, "]");
  std::vector<Sample> samples;
  if (o.dataset == "synthetic") {
    MFUSER_CHECK(o.synthetic_images >= 1, "training data: the synthetic data set needs at least one image");
  } else {
    MFUSER_CHECK(!o.root.empty(), "training data set '", o.dataset, "': no folder given (--root)");
    try {
      samples = list_dataset(o.dataset, o.root, o.split);
    } catch (const std::exception& e) {
      throw Error(str_cat("training data set '", o.dataset, "' under '", o.root, "': ", e.what()));
    }
  }
  ImageSource source(o, std::move(samples));
  RareClassTable rare_classes;
  if (o.rare_class_sampling.enabled) {
    const RareClassSampling& r = o.rare_class_sampling;
    MFUSER_CHECK(r.min_pixels >= 0 && std::isfinite(r.min_crop_ratio) && r.min_crop_ratio >= 0,
                 "training data: bad rare-class sampling (min_pixels ", r.min_pixels, ", min_crop_ratio ",
                 r.min_crop_ratio, ")");
    rare_classes = rare_class_table(source.class_pixels(o.threads), r);
  }
  return std::make_unique<PrefetchingTrainData>(o, std::move(source), std::move(rare_classes));
}

}  // namespace mfuser::apps
