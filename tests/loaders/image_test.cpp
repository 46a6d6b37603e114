// loaders/image: PNG/JPEG decoding as the reference pipeline's cv2.imdecode(IMREAD_COLOR) + BGR->RGB gets it,
// label maps as PIL gives them, the atomic PNG writer, and every failure mode naming the file.
//
// Every image is generated here, with fresh random content each run (the seed is printed; MFUSER_SEED pins
// it): PNG variants are written with libpng directly (or with write_png), JPEGs with libjpeg's encoder.
// PNG decodes must be exact against an independent model of cv2's conversions; JPEG decodes must equal a
// plain libjpeg decode of the same bytes (libjpeg defaults, the settings OpenCV uses) and stay close to the
// source pixels. When Debian's /usr/bin/python3 has PIL, decodes are also compared against PIL. EXIF
// orientation (JPEG APP1, PNG eXIf) is checked against the stored grid transformed as OpenCV 4.6 does it.
#include "loaders/image.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

// jpeglib.h needs FILE and size_t declared first.
#include <jpeglib.h>
#include <png.h>
#include <zlib.h>

#include "tests/common/test_util.h"

namespace mfuser {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

int rand_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(test::rng()); }

Bytes read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const Bytes& b) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

Bytes tensor_bytes(const Tensor& t) {
  const auto* p = t.data<uint8_t>();
  return Bytes(p, p + t.numel());
}

// Index and value of the first difference, or "equal".
std::string first_difference(const Bytes& a, const Bytes& b) {
  if (a.size() != b.size()) return str_cat("sizes differ: ", a.size(), " vs ", b.size());
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) return str_cat("byte ", i, ": ", int(a[i]), " vs ", int(b[i]));
  return "equal";
}

// Smooth random colour field (a few random plane waves per channel) with a little noise: content JPEG can
// compress meaningfully, so the error bound against the source says something.
Bytes smooth_image(int h, int w, int channels) {
  std::uniform_real_distribution<double> u(0, 1);
  struct Wave {
    double fx, fy, phase, amp;
  };
  std::vector<std::vector<Wave>> waves(static_cast<size_t>(channels));
  for (auto& ws : waves)
    for (int k = 0; k < 3; ++k) ws.push_back({u(test::rng()) * 0.15, u(test::rng()) * 0.15, u(test::rng()) * 6.3, 20 + 30 * u(test::rng())});
  std::normal_distribution<double> noise(0, 2);
  Bytes px(size_t(h) * w * channels);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < channels; ++c) {
        double v = 128;
        for (const Wave& wv : waves[size_t(c)]) v += wv.amp * std::sin(wv.fx * x + wv.fy * y + wv.phase);
        v += noise(test::rng());
        px[(size_t(y) * w + x) * channels + c] = uint8_t(std::clamp(std::lround(v), 0L, 255L));
      }
  return px;
}

Bytes random_samples(size_t n, int max_value) {
  Bytes out(n);
  for (auto& v : out) v = uint8_t(rand_int(0, max_value));
  return out;
}

// ---- PNG files written with libpng directly ----------------------------------------------------------------

struct PngSpec {
  std::string name;
  int color_type = PNG_COLOR_TYPE_RGB;
  int bit_depth = 8;
  bool interlace = false;
  bool trns = false;  // palette: random alphas; gray / RGB: one transparent colour
  int width = 0, height = 0;
  std::vector<uint16_t> samples;  // h * w * channels, each < 2^bit_depth
  std::vector<png_color> palette;
  Bytes palette_alpha;
};

int png_channels(int color_type) {
  switch (color_type) {
    case PNG_COLOR_TYPE_GRAY_ALPHA: return 2;
    case PNG_COLOR_TYPE_RGB: return 3;
    case PNG_COLOR_TYPE_RGB_ALPHA: return 4;
    default: return 1;
  }
}

void fill_png_spec(PngSpec& s) {
  if (s.width == 0) s.width = rand_int(1, 70);
  if (s.height == 0) s.height = rand_int(1, 70);
  const int ch = png_channels(s.color_type);
  const int max_sample = (1 << s.bit_depth) - 1;
  if (s.color_type == PNG_COLOR_TYPE_PALETTE) {
    const int entries = rand_int(1, max_sample + 1);
    for (int i = 0; i < entries; ++i)
      s.palette.push_back({uint8_t(rand_int(0, 255)), uint8_t(rand_int(0, 255)), uint8_t(rand_int(0, 255))});
    if (s.trns) s.palette_alpha = random_samples(size_t(rand_int(1, entries)), 255);
    s.samples.resize(size_t(s.width) * s.height);
    for (auto& v : s.samples) v = uint16_t(rand_int(0, entries - 1));
  } else {
    s.samples.resize(size_t(s.width) * s.height * ch);
    for (auto& v : s.samples) v = uint16_t(rand_int(0, max_sample));
  }
}

struct PngWriteCtx {
  char message[256] = {};
};

extern "C" void test_png_error(png_structp png, png_const_charp msg) {
  std::snprintf(static_cast<PngWriteCtx*>(png_get_error_ptr(png))->message, 256, "%s", msg);
  png_longjmp(png, 1);
}

// Only plain C data in the frame that calls setjmp.
bool png_write_protected(png_structp png, png_infop info, FILE* f, const PngSpec* s, png_bytepp rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_init_io(png, f);
  png_set_IHDR(png, info, png_uint_32(s->width), png_uint_32(s->height), s->bit_depth, s->color_type,
               s->interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (s->color_type == PNG_COLOR_TYPE_PALETTE)
    png_set_PLTE(png, info, s->palette.data(), int(s->palette.size()));
  png_color_16 trans_color{};
  if (s->trns) {
    if (s->color_type == PNG_COLOR_TYPE_PALETTE) {
      png_set_tRNS(png, info, s->palette_alpha.data(), int(s->palette_alpha.size()), nullptr);
    } else {
      trans_color.gray = trans_color.red = s->samples[0];  // the first pixel's colour is "transparent"
      if (png_channels(s->color_type) == 3) {
        trans_color.green = s->samples[1];
        trans_color.blue = s->samples[2];
      }
      png_set_tRNS(png, info, nullptr, 0, &trans_color);
    }
  }
  png_write_info(png, info);
  if (s->interlace) png_set_interlace_handling(png);
  png_write_image(png, rows);
  png_write_end(png, info);
  return true;
}

// Rows in file layout: 16-bit big-endian, sub-byte samples packed MSB first.
std::vector<Bytes> png_file_rows(const PngSpec& s) {
  const int ch = png_channels(s.color_type);
  std::vector<Bytes> rows(static_cast<size_t>(s.height));
  for (int y = 0; y < s.height; ++y) {
    Bytes& r = rows[size_t(y)];
    const size_t n = size_t(s.width) * ch;
    const uint16_t* src = s.samples.data() + size_t(y) * n;
    if (s.bit_depth == 16) {
      for (size_t i = 0; i < n; ++i) {
        r.push_back(uint8_t(src[i] >> 8));
        r.push_back(uint8_t(src[i]));
      }
    } else if (s.bit_depth == 8) {
      for (size_t i = 0; i < n; ++i) r.push_back(uint8_t(src[i]));
    } else {
      r.assign((n * s.bit_depth + 7) / 8, 0);
      for (size_t i = 0; i < n; ++i) {
        const size_t bit = i * s.bit_depth;
        r[bit / 8] |= uint8_t(src[i] << (8 - s.bit_depth - bit % 8));
      }
    }
  }
  return rows;
}

void write_png_spec(const std::string& path, const PngSpec& s) {
  std::vector<Bytes> rows = png_file_rows(s);
  std::vector<png_bytep> row_ptrs;
  for (Bytes& r : rows) row_ptrs.push_back(r.data());
  PngWriteCtx ctx;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &ctx, test_png_error, nullptr);
  png_infop info = png_create_info_struct(png);
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  const bool ok = png_write_protected(png, info, f, &s, row_ptrs.data());
  png_destroy_write_struct(&png, &info);
  std::fclose(f);
  ASSERT_TRUE(ok) << s.name << ": libpng: " << ctx.message;
}

// What cv2.imread(IMREAD_COLOR) + BGR->RGB gives, modelled independently of libpng's transforms: 16-bit
// samples keep their high byte, low-depth gray is scaled to 0..255 by bit replication, palettes are looked
// up, alpha and tRNS are ignored, gray is replicated.
Bytes expected_rgb(const PngSpec& s) {
  const int ch = png_channels(s.color_type);
  const auto to8 = [&](uint16_t v) -> uint8_t {
    if (s.bit_depth == 16) return uint8_t(v >> 8);
    if (s.bit_depth == 8) return uint8_t(v);
    return uint8_t(v * 255 / ((1 << s.bit_depth) - 1));
  };
  Bytes out;
  for (size_t p = 0; p < size_t(s.width) * s.height; ++p) {
    const uint16_t* px = s.samples.data() + p * ch;
    if (s.color_type == PNG_COLOR_TYPE_PALETTE) {
      const png_color& c = s.palette[px[0]];
      out.insert(out.end(), {c.red, c.green, c.blue});
    } else if (ch <= 2) {
      out.insert(out.end(), 3, to8(px[0]));
    } else {
      out.insert(out.end(), {to8(px[0]), to8(px[1]), to8(px[2])});
    }
  }
  return out;
}

bool is_label_spec(const PngSpec& s) {
  return s.color_type == PNG_COLOR_TYPE_PALETTE || (s.color_type == PNG_COLOR_TYPE_GRAY && s.bit_depth == 8);
}

Bytes expected_label(const PngSpec& s) {
  Bytes out;
  for (uint16_t v : s.samples) out.push_back(uint8_t(v));
  return out;
}

std::vector<PngSpec> png_variants() {
  const auto spec = [](std::string name, int type, int depth, bool interlace = false, bool trns = false) {
    PngSpec s;
    s.name = std::move(name);
    s.color_type = type;
    s.bit_depth = depth;
    s.interlace = interlace;
    s.trns = trns;
    return s;
  };
  std::vector<PngSpec> v = {
      spec("gray8", PNG_COLOR_TYPE_GRAY, 8),
      spec("gray8_trns", PNG_COLOR_TYPE_GRAY, 8, false, true),
      spec("gray1", PNG_COLOR_TYPE_GRAY, 1),
      spec("gray2", PNG_COLOR_TYPE_GRAY, 2),
      spec("gray4", PNG_COLOR_TYPE_GRAY, 4),
      spec("gray16", PNG_COLOR_TYPE_GRAY, 16),
      spec("gray_alpha8", PNG_COLOR_TYPE_GRAY_ALPHA, 8),
      spec("gray_alpha16", PNG_COLOR_TYPE_GRAY_ALPHA, 16),
      spec("rgb8", PNG_COLOR_TYPE_RGB, 8),
      spec("rgb8_trns", PNG_COLOR_TYPE_RGB, 8, false, true),
      spec("rgb16", PNG_COLOR_TYPE_RGB, 16),
      spec("rgba8", PNG_COLOR_TYPE_RGB_ALPHA, 8),
      spec("rgba16", PNG_COLOR_TYPE_RGB_ALPHA, 16),
      spec("palette8", PNG_COLOR_TYPE_PALETTE, 8),
      spec("palette8_trns", PNG_COLOR_TYPE_PALETTE, 8, false, true),
      spec("palette4", PNG_COLOR_TYPE_PALETTE, 4),
      spec("palette1_trns", PNG_COLOR_TYPE_PALETTE, 1, false, true),
      spec("adam7_gray8", PNG_COLOR_TYPE_GRAY, 8, true),
      spec("adam7_gray16", PNG_COLOR_TYPE_GRAY, 16, true),
      spec("adam7_rgb8", PNG_COLOR_TYPE_RGB, 8, true),
      spec("adam7_rgba16", PNG_COLOR_TYPE_RGB_ALPHA, 16, true),
      spec("adam7_gray_alpha8", PNG_COLOR_TYPE_GRAY_ALPHA, 8, true),
      spec("adam7_palette8_trns", PNG_COLOR_TYPE_PALETTE, 8, true, true),
      spec("adam7_palette2", PNG_COLOR_TYPE_PALETTE, 2, true),
  };
  // Adam7 corner cases: images smaller than the 8x8 pattern, where some passes are empty.
  for (auto [w, h] : {std::pair{1, 1}, std::pair{3, 2}, std::pair{1, 9}, std::pair{9, 1}}) {
    PngSpec s = spec(str_cat("adam7_rgb8_", w, "x", h), PNG_COLOR_TYPE_RGB, 8, true);
    s.width = w;
    s.height = h;
    v.push_back(s);
  }
  for (PngSpec& s : v) fill_png_spec(s);
  return v;
}

// ---- JPEG files written with libjpeg's encoder -------------------------------------------------------------

struct JpegSpec {
  std::string name;
  int components = 3;  // 1 gray, 3 RGB (stored as YCbCr), 4 CMYK
  int quality = 90;
  bool progressive = false;
  int h_samp = 2, v_samp = 2;  // luma sampling factors: 2x2 is 4:2:0, 2x1 4:2:2, 1x1 4:4:4
  int restart_rows = 0;
  bool arithmetic = false;
  bool ycck = false;
  int width = 0, height = 0;
  Bytes pixels;
  std::vector<Bytes> app1;  // APP1 marker payloads, written in order after the encoder's own APP0
  // Bounds against the source pixels (after the same colour conversion as the decoder's).
  double max_mean_abs = 0;
};

struct JpegErrorCtx {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = {};
};

extern "C" void test_jpeg_error(j_common_ptr cinfo) {
  auto* e = reinterpret_cast<JpegErrorCtx*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, e->message);
  std::longjmp(e->jump, 1);
}

bool jpeg_encode_protected(jpeg_compress_struct* c, JpegErrorCtx* err, const JpegSpec* s, unsigned char** out,
                           unsigned long* out_size) {
  if (setjmp(err->jump)) return false;
  jpeg_create_compress(c);
  jpeg_mem_dest(c, out, out_size);
  c->image_width = JDIMENSION(s->width);
  c->image_height = JDIMENSION(s->height);
  c->input_components = s->components;
  c->in_color_space = s->components == 1 ? JCS_GRAYSCALE : s->components == 3 ? JCS_RGB : JCS_CMYK;
  jpeg_set_defaults(c);
  if (s->components == 4) jpeg_set_colorspace(c, s->ycck ? JCS_YCCK : JCS_CMYK);
  jpeg_set_quality(c, s->quality, TRUE);
  if (s->components >= 3) {
    c->comp_info[0].h_samp_factor = s->h_samp;
    c->comp_info[0].v_samp_factor = s->v_samp;
  }
  if (s->progressive) jpeg_simple_progression(c);
  c->restart_in_rows = s->restart_rows;
  c->arith_code = s->arithmetic ? TRUE : FALSE;
  jpeg_start_compress(c, TRUE);
  for (const Bytes& m : s->app1) jpeg_write_marker(c, JPEG_APP0 + 1, m.data(), unsigned(m.size()));
  while (c->next_scanline < c->image_height) {
    JSAMPROW row = const_cast<JSAMPROW>(s->pixels.data() + size_t(c->next_scanline) * s->width * s->components);
    jpeg_write_scanlines(c, &row, 1);
  }
  jpeg_finish_compress(c);
  return true;
}

Bytes encode_jpeg(const JpegSpec& s) {
  jpeg_compress_struct c{};
  JpegErrorCtx err{};
  c.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = test_jpeg_error;
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  const bool ok = jpeg_encode_protected(&c, &err, &s, &buf, &size);
  jpeg_destroy_compress(&c);
  Bytes out(buf, buf + (ok ? size : 0));
  std::free(buf);
  EXPECT_TRUE(ok) << s.name << ": libjpeg encoder: " << err.message;
  return out;
}

// The plain libjpeg API with its defaults (ISLOW DCT, fancy upsampling, block smoothing), only the output
// colour space chosen: RGB, or CMYK for 4-channel files (then converted with OpenCV's CMYK->BGR formula).
bool jpeg_reference_protected(jpeg_decompress_struct* d, JpegErrorCtx* err, const Bytes* in, Bytes* out) {
  if (setjmp(err->jump)) return false;
  jpeg_create_decompress(d);
  jpeg_mem_src(d, in->data(), static_cast<unsigned long>(in->size()));
  jpeg_read_header(d, TRUE);
  const bool cmyk = d->num_components == 4;
  d->out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  jpeg_start_decompress(d);
  const size_t stride = size_t(d->output_width) * d->output_components;
  out->resize(size_t(d->output_width) * d->output_height * 3);
  unsigned char line[4 * 4096];
  while (d->output_scanline < d->output_height) {
    uint8_t* dst = out->data() + size_t(d->output_scanline) * d->output_width * 3;
    JSAMPROW row = cmyk ? line : dst;
    if (stride > sizeof line && cmyk) return false;
    jpeg_read_scanlines(d, &row, 1);
    if (cmyk)
      for (JDIMENSION x = 0; x < d->output_width; ++x) {
        const int k = line[4 * x + 3];
        for (int ch = 0; ch < 3; ++ch) dst[3 * x + ch] = uint8_t(k - ((255 - line[4 * x + ch]) * k >> 8));
      }
  }
  jpeg_finish_decompress(d);
  return true;
}

Bytes reference_jpeg_decode(const Bytes& file) {
  jpeg_decompress_struct d{};
  JpegErrorCtx err{};
  d.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = test_jpeg_error;
  Bytes out;
  const bool ok = jpeg_reference_protected(&d, &err, &file, &out);
  jpeg_destroy_decompress(&d);
  EXPECT_TRUE(ok) << "reference libjpeg decode: " << err.message;
  return out;
}

// Source pixels as RGB, the way the decoder converts them (gray replicated, CMYK by OpenCV's formula).
Bytes jpeg_source_rgb(const JpegSpec& s) {
  if (s.components == 3) return s.pixels;
  Bytes out;
  for (size_t p = 0; p < size_t(s.width) * s.height; ++p) {
    if (s.components == 1) {
      out.insert(out.end(), 3, s.pixels[p]);
    } else {
      const uint8_t* px = s.pixels.data() + 4 * p;
      for (int ch = 0; ch < 3; ++ch) out.push_back(uint8_t(px[3] - ((255 - px[ch]) * px[3] >> 8)));
    }
  }
  return out;
}

std::vector<JpegSpec> jpeg_variants() {
  const auto spec = [](std::string name, int components, int quality, bool progressive, int hs, int vs,
                       double bound) {
    JpegSpec s;
    s.name = std::move(name);
    s.components = components;
    s.quality = quality;
    s.progressive = progressive;
    s.h_samp = hs;
    s.v_samp = vs;
    s.max_mean_abs = bound;
    return s;
  };
  std::vector<JpegSpec> v = {
      spec("baseline_420_q90", 3, 90, false, 2, 2, 3.0),
      spec("baseline_422_q90", 3, 90, false, 2, 1, 3.0),
      spec("baseline_444_q95", 3, 95, false, 1, 1, 2.5),
      spec("baseline_420_q75", 3, 75, false, 2, 2, 4.5),
      spec("progressive_420_q90", 3, 90, true, 2, 2, 3.0),
      spec("progressive_444_q95", 3, 95, true, 1, 1, 2.5),
      spec("gray_q90", 1, 90, false, 1, 1, 2.5),
      spec("progressive_gray_q90", 1, 90, true, 1, 1, 2.5),
      spec("restart_420_q90", 3, 90, false, 2, 2, 3.0),
      spec("arithmetic_420_q90", 3, 90, false, 2, 2, 3.0),
      spec("cmyk_q95", 4, 95, false, 1, 1, 3.0),
      spec("ycck_q95", 4, 95, false, 1, 1, 3.0),
      // Smaller than one MCU in some direction: edge replication dominates, so the bound is looser.
      spec("tiny_420_q90", 3, 90, false, 2, 2, 7.0),
      spec("tiny_progressive_420_q90", 3, 90, true, 2, 2, 7.0),
      spec("tiny_gray_q90", 1, 90, false, 1, 1, 6.0),
  };
  for (JpegSpec& s : v) {
    const bool tiny = s.name.starts_with("tiny");
    s.width = tiny ? rand_int(1, 20) : rand_int(16, 90);
    s.height = tiny ? rand_int(1, 7) : rand_int(16, 90);
    if (tiny && rand_int(0, 1)) std::swap(s.width, s.height);
    if (s.name.starts_with("restart")) s.restart_rows = 1;
    if (s.name.starts_with("arithmetic")) s.arithmetic = true;
    if (s.name.starts_with("ycck")) s.ycck = true;
    s.pixels = smooth_image(s.height, s.width, s.components);
  }
  // One large enough for several MCU rows and columns with edge blocks on both sides.
  JpegSpec big = spec("baseline_420_q90_large", 3, 90, false, 2, 2, 3.0);
  big.width = 333;
  big.height = 251;
  big.pixels = smooth_image(big.height, big.width, 3);
  v.push_back(big);
  return v;
}

// ---- the fixture --------------------------------------------------------------------------------------------

class ImageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("mfuser_image_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

  fs::path dir_;
};

Tensor random_u8(const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::u8);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<uint8_t>()[i] = uint8_t(rand_int(0, 255));
  return t;
}

// ---- PNG ----------------------------------------------------------------------------------------------------

TEST_F(ImageTest, WritePngRoundTripsRgbAndGray) {
  MFUSER_SEED_TRACE();
  for (int rep = 0; rep < 4; ++rep) {
    const int64_t h = rand_int(1, 80), w = rand_int(1, 80);
    SCOPED_TRACE(str_cat(h, "x", w));
    const Tensor rgb = random_u8({h, w, 3});
    write_png(path("rgb.png"), rgb);
    const Tensor back = read_rgb(path("rgb.png"));
    EXPECT_EQ(back.shape(), rgb.shape());
    EXPECT_EQ(back.dtype(), DType::u8);
    EXPECT_EQ(first_difference(tensor_bytes(back), tensor_bytes(rgb)), "equal");

    const Tensor gray = random_u8({h, w});
    write_png(path("gray.png"), gray);
    const Tensor label = read_label(path("gray.png"));
    EXPECT_EQ(label.shape(), gray.shape());
    EXPECT_EQ(first_difference(tensor_bytes(label), tensor_bytes(gray)), "equal");
    const Tensor gray_rgb = read_rgb(path("gray.png"));
    ASSERT_EQ(gray_rgb.shape(), (Shape{h, w, 3}));
    Bytes replicated;
    for (uint8_t v : tensor_bytes(gray)) replicated.insert(replicated.end(), 3, v);
    EXPECT_EQ(first_difference(tensor_bytes(gray_rgb), replicated), "equal");
  }
  // Overwrites in place; no temporary file is left behind.
  EXPECT_EQ(listing(), (std::vector<std::string>{"gray.png", "rgb.png"}));
}

TEST_F(ImageTest, PngVariantsDecodeExactly) {
  MFUSER_SEED_TRACE();
  for (const PngSpec& s : png_variants()) {
    SCOPED_TRACE(str_cat(s.name, " ", s.width, "x", s.height));
    const std::string p = path(s.name + ".png");
    write_png_spec(p, s);
    const Tensor rgb = read_rgb(p);
    ASSERT_EQ(rgb.shape(), (Shape{s.height, s.width, 3}));
    EXPECT_EQ(first_difference(tensor_bytes(rgb), expected_rgb(s)), "equal");
    if (is_label_spec(s)) {
      const Tensor label = read_label(p);
      ASSERT_EQ(label.shape(), (Shape{s.height, s.width}));
      EXPECT_EQ(first_difference(tensor_bytes(label), expected_label(s)), "equal");
    } else {
      try {
        read_label(p);
        ADD_FAILURE() << "read_label accepted " << s.name;
      } catch (const ImageError& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find(p), std::string::npos) << msg;
        EXPECT_NE(msg.find("expected an 8-bit single-channel label map"), std::string::npos) << msg;
      }
    }
  }
}

TEST_F(ImageTest, ReadLabelSaysWhatTheFileIs) {
  MFUSER_SEED_TRACE();
  const std::pair<int, const char*> cases[] = {{PNG_COLOR_TYPE_RGB, "is 8-bit RGB"},
                                               {PNG_COLOR_TYPE_RGB_ALPHA, "is 8-bit RGBA"},
                                               {PNG_COLOR_TYPE_GRAY_ALPHA, "is 8-bit gray+alpha"}};
  for (const auto& [type, words] : cases) {
    PngSpec s;
    s.name = words;
    s.color_type = type;
    fill_png_spec(s);
    write_png_spec(path("label.png"), s);
    try {
      read_label(path("label.png"));
      ADD_FAILURE() << "accepted " << words;
    } catch (const ImageError& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  }
  PngSpec g16;
  g16.color_type = PNG_COLOR_TYPE_GRAY;
  g16.bit_depth = 16;
  fill_png_spec(g16);
  write_png_spec(path("g16.png"), g16);
  EXPECT_THROW(
      {
        try {
          read_label(path("g16.png"));
        } catch (const ImageError& e) {
          EXPECT_NE(std::string(e.what()).find("is 16-bit gray"), std::string::npos) << e.what();
          throw;
        }
      },
      ImageError);
  JpegSpec j;
  j.name = "label.jpg";
  j.components = 1;
  j.width = j.height = 16;
  j.pixels = smooth_image(16, 16, 1);
  write_bytes(path("label.jpg"), encode_jpeg(j));
  try {
    read_label(path("label.jpg"));
    ADD_FAILURE() << "accepted a JPEG label";
  } catch (const ImageError& e) {
    EXPECT_NE(std::string(e.what()).find("is a JPEG"), std::string::npos) << e.what();
  }
}

// ---- JPEG ---------------------------------------------------------------------------------------------------

TEST_F(ImageTest, JpegMatchesPlainLibjpegAndSource) {
  MFUSER_SEED_TRACE();
  for (const JpegSpec& s : jpeg_variants()) {
    SCOPED_TRACE(str_cat(s.name, " ", s.width, "x", s.height));
    const Bytes file = encode_jpeg(s);
    ASSERT_FALSE(file.empty());
    const std::string p = path(s.name + ".jpg");
    write_bytes(p, file);
    const Tensor rgb = read_rgb(p);
    ASSERT_EQ(rgb.shape(), (Shape{s.height, s.width, 3}));
    const Bytes got = tensor_bytes(rgb);
    EXPECT_EQ(first_difference(got, reference_jpeg_decode(file)), "equal");

    const Bytes src = jpeg_source_rgb(s);
    double sum = 0, max_abs = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const double d = std::abs(double(got[i]) - double(src[i]));
      sum += d;
      max_abs = std::max(max_abs, d);
    }
    const double mean = sum / double(got.size());
    std::printf("  %-24s %3dx%-3d %6zu bytes  mean |err| %.3f  max |err| %.0f  (bound %.1f)\n", s.name.c_str(),
                s.width, s.height, file.size(), mean, max_abs, s.max_mean_abs);
    EXPECT_LT(mean, s.max_mean_abs);
    EXPECT_LT(max_abs, 64);
  }
}

TEST_F(ImageTest, FormatComesFromContentNotExtension) {
  MFUSER_SEED_TRACE();
  const Tensor rgb = random_u8({7, 9, 3});
  write_png(path("really_a_png.jpg"), rgb);
  EXPECT_EQ(first_difference(tensor_bytes(read_rgb(path("really_a_png.jpg"))), tensor_bytes(rgb)), "equal");
  JpegSpec j;
  j.width = 20;
  j.height = 12;
  j.pixels = smooth_image(12, 20, 3);
  const Bytes file = encode_jpeg(j);
  write_bytes(path("really_a_jpeg.png"), file);
  write_bytes(path("no_extension"), file);
  EXPECT_EQ(first_difference(tensor_bytes(read_rgb(path("really_a_jpeg.png"))), reference_jpeg_decode(file)),
            "equal");
  EXPECT_EQ(first_difference(tensor_bytes(read_rgb(path("no_extension"))), reference_jpeg_decode(file)), "equal");
}


// ---- EXIF orientation ---------------------------------------------------------------------------------------

// An image as rows of RGB pixels, and OpenCV's primitives: the expected result of an orientation is built the
// way OpenCV's ExifTransform composes cv::transpose and cv::flip, independently of the decoder's own
// single-pass remapping.
struct Rgb {
  int64_t h = 0, w = 0;
  Bytes px;
  const uint8_t* at(int64_t y, int64_t x) const { return px.data() + 3 * (y * w + x); }
};

Rgb transpose(const Rgb& a) {
  Rgb out{a.w, a.h, {}};
  for (int64_t y = 0; y < out.h; ++y)
    for (int64_t x = 0; x < out.w; ++x) out.px.insert(out.px.end(), a.at(x, y), a.at(x, y) + 3);
  return out;
}

// cv::flip codes: 1 around the vertical axis (left-right), 0 around the horizontal axis (top-bottom), -1 both.
Rgb flip(const Rgb& a, int code) {
  Rgb out{a.h, a.w, {}};
  for (int64_t y = 0; y < a.h; ++y)
    for (int64_t x = 0; x < a.w; ++x) {
      const uint8_t* p = a.at(code <= 0 ? a.h - 1 - y : y, code != 0 ? a.w - 1 - x : x);
      out.px.insert(out.px.end(), p, p + 3);
    }
  return out;
}

// OpenCV 4.6 ExifTransform; values outside 2..8 leave the image alone.
Rgb oriented(const Rgb& a, int orientation) {
  switch (orientation) {
    case 2: return flip(a, 1);
    case 3: return flip(a, -1);
    case 4: return flip(a, 0);
    case 5: return transpose(a);
    case 6: return flip(transpose(a), 1);
    case 7: return flip(transpose(a), -1);
    case 8: return flip(transpose(a), 0);
  }
  return a;
}

// The orientation (1..8) whose transform of `stored` is `t`, or 0.
int orientation_of(const Tensor& t, const Rgb& stored) {
  for (int o = 1; o <= 8; ++o) {
    const Rgb e = oriented(stored, o);
    if (t.shape() == Shape{e.h, e.w, 3} && tensor_bytes(t) == e.px) return o;
  }
  return 0;
}

// A TIFF block as Exif carries it: byte-order mark, 42, IFD0 at offset 8 with the given entries, next IFD 0.
// SHORT values (type 3) sit in the first two bytes of the value field, other types fill it.
struct IfdEntry {
  uint16_t tag, type;
  uint32_t count, value;
};

Bytes exif_tiff(const std::string& order, const std::vector<IfdEntry>& entries, int declared_entries = -1) {
  const bool little = order == "II";
  Bytes b(order.begin(), order.end());
  const auto put16 = [&](uint32_t v) {
    b.insert(b.end(), little ? std::initializer_list<uint8_t>{uint8_t(v), uint8_t(v >> 8)}
                             : std::initializer_list<uint8_t>{uint8_t(v >> 8), uint8_t(v)});
  };
  const auto put32 = [&](uint32_t v) {
    if (little) {
      put16(v & 0xffff);
      put16(v >> 16);
    } else {
      put16(v >> 16);
      put16(v & 0xffff);
    }
  };
  put16(42);
  put32(8);
  put16(declared_entries >= 0 ? uint32_t(declared_entries) : uint32_t(entries.size()));
  for (const IfdEntry& e : entries) {
    put16(e.tag);
    put16(e.type);
    put32(e.count);
    if (e.type == 3) {
      put16(e.value);
      put16(0);
    } else {
      put32(e.value);
    }
  }
  put32(0);
  return b;
}

Bytes orientation_tiff(const std::string& order, uint32_t orientation) {
  return exif_tiff(order, {{0x0112, 3, 1, orientation}});
}

Bytes exif_app1(const Bytes& tiff) {
  static const char kIdentifier[6] = {'E', 'x', 'i', 'f', 0, 0};
  Bytes b(tiff.size() + 6);
  std::memcpy(b.data(), kIdentifier, 6);
  if (!tiff.empty()) std::memcpy(b.data() + 6, tiff.data(), tiff.size());
  return b;
}

// A JPEG with the given APP1 payloads and its stored pixel grid (a plain libjpeg decode, which ignores Exif).
struct OrientedJpeg {
  Bytes file;
  Rgb stored;
};

OrientedJpeg jpeg_with_app1(const JpegSpec& base, std::vector<Bytes> app1) {
  JpegSpec s = base;
  s.app1 = std::move(app1);
  OrientedJpeg j;
  j.file = encode_jpeg(s);
  j.stored = {s.height, s.width, reference_jpeg_decode(j.file)};
  return j;
}

JpegSpec non_square_jpeg_spec() {
  JpegSpec j;
  j.width = rand_int(9, 40);
  j.height = rand_int(9, 40);
  if (j.height == j.width) ++j.width;
  j.pixels = smooth_image(j.height, j.width, 3);
  return j;
}

// Every orientation value in both byte orders, written by libjpeg's encoder as an APP1 marker
// (jpeg_write_marker): read_rgb gives the stored grid transformed as OpenCV 4.6's ExifTransform does, H and W
// swapped for 5..8; 0 and 9 (out of range) leave it alone. (Checked by hand against cv2 4.6.0's imdecode with
// IMREAD_COLOR on the same kind of files: orientations 1..8 come out as transforms 1..8, 0 and 9 as 1.)
TEST_F(ImageTest, JpegExifOrientationIsApplied) {
  MFUSER_SEED_TRACE();
  JpegSpec base = non_square_jpeg_spec();
  for (bool progressive : {false, true}) {
    base.progressive = progressive;
    for (const std::string order : {"II", "MM"}) {
      for (int o = 0; o <= 9; ++o) {
        SCOPED_TRACE(str_cat(progressive ? "progressive " : "baseline ", order, " orientation ", o));
        const OrientedJpeg j = jpeg_with_app1(base, {exif_app1(orientation_tiff(order, uint32_t(o)))});
        const Bytes app1_marker = {0xff, 0xe1};
        ASSERT_NE(std::search(j.file.begin(), j.file.end(), app1_marker.begin(), app1_marker.end()), j.file.end());
        const std::string p = path(str_cat("orientation_", order, "_", o, ".jpg"));
        write_bytes(p, j.file);
        const Tensor rgb = read_rgb(p);
        const Rgb want = oriented(j.stored, o);
        ASSERT_EQ(rgb.shape(), (Shape{want.h, want.w, 3}));
        EXPECT_EQ(first_difference(tensor_bytes(rgb), want.px), "equal");
        EXPECT_EQ(orientation_of(rgb, j.stored), o >= 1 && o <= 8 ? o : 1);
      }
    }
  }
}

// OpenCV's reading of odd and damaged Exif, each case checked by hand against cv2 4.6.0 (imdecode,
// IMREAD_COLOR) on files built the same way: which orientation comes out, and never a failed decode.
TEST_F(ImageTest, JpegExifQuirksFollowOpenCv) {
  MFUSER_SEED_TRACE();
  const JpegSpec base = non_square_jpeg_spec();
  struct Case {
    std::string name;
    std::vector<Bytes> app1;
    int want;
  };
  const Bytes good = orientation_tiff("II", 6);
  std::vector<Case> cases = {
      // Only the first APP1 counts, and its 6-byte identifier is skipped unread.
      {"xmp_then_exif", {Bytes{'h', 't', 't', 'p', ':', '/', '/', 'n', 's', 0, '<', 'x', '/', '>'}, exif_app1(good)},
       1},
      {"exif_then_exif", {exif_app1(good), exif_app1(orientation_tiff("II", 3))}, 6},
      {"other_identifier", {[&] { Bytes b = exif_app1(good); b[0] = 'X'; b[1] = 'Y'; return b; }()}, 6},
      // Byte order: only "II" is little-endian.
      {"order_IM_read_big_endian", {exif_app1([] { Bytes t = orientation_tiff("MM", 6); t[0] = 'I'; return t; }())}, 6},
      {"order_garbage_read_big_endian",
       {exif_app1([] { Bytes t = orientation_tiff("MM", 8); t[0] = t[1] = 'X'; return t; }())}, 8},
      {"order_II_but_big_endian_data",
       {exif_app1([] { Bytes t = orientation_tiff("MM", 6); t[0] = t[1] = 'I'; return t; }())}, 1},
      // The value is the SHORT at entry + 8, whatever the type.
      {"long_little_endian", {exif_app1(exif_tiff("II", {{0x0112, 4, 1, 6}}))}, 6},
      {"long_big_endian_reads_0", {exif_app1(exif_tiff("MM", {{0x0112, 4, 1, 6}}))}, 1},
      // The first Orientation entry wins; an entry that OpenCV cannot read stops the walk.
      {"duplicate_orientation", {exif_app1(exif_tiff("II", {{0x0112, 3, 1, 6}, {0x0112, 3, 1, 3}}))}, 6},
      {"bad_make_string_before", {exif_app1(exif_tiff("II", {{0x010f, 2, 100, 5000}, {0x0112, 3, 1, 6}}))}, 1},
      {"bad_make_string_after", {exif_app1(exif_tiff("II", {{0x0112, 3, 1, 6}, {0x010f, 2, 100, 5000}}))}, 6},
      {"short_make_string_before", {exif_app1(exif_tiff("II", {{0x010f, 2, 4, 0}, {0x0112, 3, 1, 5}}))}, 5},
      {"bad_resolution_before", {exif_app1(exif_tiff("II", {{0x011a, 5, 1, 4000}, {0x0112, 3, 1, 6}}))}, 1},
      {"unknown_tags_before",
       {exif_app1(exif_tiff("MM", {{0x0100, 4, 1, 99}, {0x8769, 4, 1, 9999}, {0x0112, 3, 1, 7}}))}, 7},
      {"entry_count_too_large", {exif_app1(exif_tiff("II", {{0x0112, 3, 1, 2}}, 40))}, 2},
      {"ifd_offset_out_of_range", {exif_app1([] { Bytes t = orientation_tiff("II", 6); t[4] = 0xf0; return t; }())}, 1},
      {"bad_tag_mark", {exif_app1([] { Bytes t = orientation_tiff("II", 6); t[2] = 43; return t; }())}, 1},
      {"identifier_only", {Bytes{'E', 'x', 'i', 'f', 0, 0}}, 1},
      {"empty_app1", {Bytes{}}, 1},
  };
  // Cut anywhere: the orientation counts once its two value bytes are there (20 bytes of TIFF).
  for (size_t cut = 0; cut < good.size(); ++cut)
    cases.push_back(
        {str_cat("cut_", cut), {exif_app1(Bytes(good.begin(), good.begin() + long(cut)))}, cut >= 20 ? 6 : 1});
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const OrientedJpeg j = jpeg_with_app1(base, c.app1);
    const std::string p = path(c.name + ".jpg");
    write_bytes(p, j.file);
    Tensor rgb;
    ASSERT_NO_THROW(rgb = read_rgb(p));
    EXPECT_EQ(orientation_of(rgb, j.stored), c.want);
  }
  // Random Exif bytes (after a valid header, or not): always decodes, to one of the eight orientations.
  for (int i = 0; i < 200; ++i) {
    Bytes tiff = random_samples(size_t(rand_int(0, 80)), 255);
    if (i % 2 == 0) {
      const Bytes head = orientation_tiff(i % 4 == 0 ? "II" : "MM", 6);
      std::copy(head.begin(), head.begin() + long(std::min<size_t>(10, tiff.size())), tiff.begin());
    }
    const OrientedJpeg j = jpeg_with_app1(base, {exif_app1(tiff)});
    const std::string p = path(str_cat("random_exif_", i, ".jpg"));
    write_bytes(p, j.file);
    Tensor rgb;
    ASSERT_NO_THROW(rgb = read_rgb(p)) << p;
    EXPECT_NE(orientation_of(rgb, j.stored), 0) << p;
    fs::remove(p);
  }
}

uint32_t be32(const Bytes& b, size_t at) {
  return uint32_t(b[at]) << 24 | uint32_t(b[at + 1]) << 16 | uint32_t(b[at + 2]) << 8 | b[at + 3];
}

// Offset of the first chunk of the given type (its length field).
size_t png_chunk(const Bytes& b, const char* type) {
  size_t at = 8;
  while (at + 8 <= b.size()) {
    if (std::memcmp(&b[at + 4], type, 4) == 0) return at;
    at += 12 + be32(b, at);
  }
  ADD_FAILURE() << "no " << type << " chunk";
  return 8;
}

// `png` with a chunk inserted at byte offset `at` (a chunk boundary), CRC computed.
Bytes insert_png_chunk(const Bytes& png, size_t at, const char* type, const Bytes& data) {
  Bytes chunk;
  const uint32_t n = uint32_t(data.size());
  chunk.insert(chunk.end(), {uint8_t(n >> 24), uint8_t(n >> 16), uint8_t(n >> 8), uint8_t(n)});
  chunk.insert(chunk.end(), type, type + 4);
  chunk.insert(chunk.end(), data.begin(), data.end());
  const uint32_t crc = uint32_t(crc32(0, chunk.data() + 4, uInt(chunk.size() - 4)));
  chunk.insert(chunk.end(), {uint8_t(crc >> 24), uint8_t(crc >> 16), uint8_t(crc >> 8), uint8_t(crc)});
  Bytes out(png.begin(), png.begin() + long(at));
  out.insert(out.end(), chunk.begin(), chunk.end());
  out.insert(out.end(), png.begin() + long(at), png.end());
  return out;
}

// cv2 4.6 (libpng's eXIf support) applies a PNG eXIf chunk's orientation too, before or after the image data
// (checked by hand: orientations 1..8, "II" and "MM", both places). libpng itself drops an eXIf whose byte-order
// mark is wrong (an "Exif\0\0"-prefixed block), and cv2 then leaves the image alone. Label maps never rotate
// (cv2's IMREAD_UNCHANGED does not apply the orientation either; its IMREAD_GRAYSCALE would).
TEST_F(ImageTest, PngExifOrientationIsApplied) {
  MFUSER_SEED_TRACE();
  int64_t h = rand_int(2, 30), w = rand_int(2, 30);
  if (h == w) ++w;
  const Tensor rgb = random_u8({h, w, 3}), gray = random_u8({h, w});
  write_png(path("rgb.png"), rgb);
  write_png(path("gray.png"), gray);
  const Bytes rgb_png = read_bytes(path("rgb.png")), gray_png = read_bytes(path("gray.png"));
  const Rgb stored{h, w, tensor_bytes(rgb)};
  Rgb stored_gray{h, w, {}};
  for (uint8_t v : tensor_bytes(gray)) stored_gray.px.insert(stored_gray.px.end(), 3, v);
  for (const bool after : {false, true}) {
    for (const std::string order : {"II", "MM"}) {
      for (int o = 0; o <= 9; ++o) {
        SCOPED_TRACE(str_cat(after ? "eXIf after IDAT, " : "eXIf before IDAT, ", order, " orientation ", o));
        const int want = o >= 1 && o <= 8 ? o : 1;
        const auto at = [&](const Bytes& png) { return after ? png_chunk(png, "IEND") : png_chunk(png, "IDAT"); };
        const std::string p = path(str_cat("rgb_", after, order, o, ".png"));
        write_bytes(p, insert_png_chunk(rgb_png, at(rgb_png), "eXIf", orientation_tiff(order, uint32_t(o))));
        const Tensor t = read_rgb(p);
        const Rgb e = oriented(stored, want);
        ASSERT_EQ(t.shape(), (Shape{e.h, e.w, 3}));
        EXPECT_EQ(first_difference(tensor_bytes(t), e.px), "equal");

        const std::string g = path(str_cat("gray_", after, order, o, ".png"));
        write_bytes(g, insert_png_chunk(gray_png, at(gray_png), "eXIf", orientation_tiff(order, uint32_t(o))));
        EXPECT_EQ(orientation_of(read_rgb(g), stored_gray), want);
        const Tensor label = read_label(g);
        EXPECT_EQ(label.shape(), (Shape{h, w}));
        EXPECT_EQ(first_difference(tensor_bytes(label), tensor_bytes(gray)), "equal");
      }
    }
  }
  const std::string p = path("exif_prefixed.png");
  write_bytes(p, insert_png_chunk(rgb_png, png_chunk(rgb_png, "IDAT"), "eXIf", exif_app1(orientation_tiff("II", 6))));
  EXPECT_EQ(orientation_of(read_rgb(p), stored), 1);
}

// ---- failures -----------------------------------------------------------------------------------------------

void fix_crc(Bytes& b, size_t chunk) {
  const uint32_t len = be32(b, chunk);
  const uint32_t crc = uint32_t(crc32(0, &b[chunk + 4], uInt(len + 4)));
  for (int i = 0; i < 4; ++i) b[chunk + 8 + len + i] = uint8_t(crc >> (24 - 8 * i));
}

size_t find_marker(const Bytes& b, uint8_t marker) {
  for (size_t i = 2; i + 1 < b.size(); ++i)
    if (b[i] == 0xff && b[i + 1] == marker) return i;
  ADD_FAILURE() << "no marker " << int(marker);
  return 2;
}

TEST_F(ImageTest, BrokenInputsThrowImageErrorNamingTheFile) {
  MFUSER_SEED_TRACE();
  // A noisy gray PNG (large IDAT; a valid label map too, so read_label reaches the same decode errors) and
  // JPEGs, all valid, to cut and corrupt.
  write_png(path("good.png"), random_u8({40, 50}));
  const Bytes png = read_bytes(path("good.png"));
  JpegSpec j;
  j.width = 64;
  j.height = 48;
  j.pixels = smooth_image(48, 64, 3);
  const Bytes jpeg = encode_jpeg(j);
  JpegSpec jp = j;
  jp.progressive = true;
  const Bytes progressive = encode_jpeg(jp);
  ASSERT_NO_THROW(read_rgb(path("good.png")));

  struct Case {
    std::string name;
    Bytes bytes;
    std::string words;  // expected in the message besides the path
  };
  std::vector<Case> cases;
  const size_t idat = png_chunk(png, "IDAT"), iend = png_chunk(png, "IEND");
  for (size_t cut : {size_t(1), size_t(4), size_t(8), size_t(20), size_t(33), idat + 4, idat + 8 + be32(png, idat) / 2,
                     iend, iend + 8, png.size() - 1})
    cases.push_back({str_cat("png_cut_at_", cut), Bytes(png.begin(), png.begin() + long(cut)), "truncated PNG"});
  {
    Bytes b = png;
    b[16] ^= 0x01;  // IHDR width, CRC left stale
    cases.push_back({"png_bad_ihdr_crc", b, "CRC"});
  }
  {
    Bytes b = png;
    b[idat + 8 + be32(png, idat)] ^= 0x5a;  // the IDAT CRC itself; the data is intact
    cases.push_back({"png_bad_idat_crc", b, "CRC"});
  }
  {
    Bytes b = png;
    b[idat + 8 + be32(png, idat) / 2] ^= 0x5a;  // inside the compressed data, CRC left stale: zlib's own check
    cases.push_back({"png_idat_bit_flip", b, "corrupt PNG"});
  }
  {
    Bytes b = png;
    for (size_t i = 0; i < 16; ++i) b[idat + 10 + i] ^= 0xa5;  // corrupt deflate data, CRC recomputed
    fix_crc(b, idat);
    cases.push_back({"png_bad_deflate_data", b, "corrupt PNG"});
  }
  {
    Bytes b = png;
    b[24] = 7;  // bit depth 7 (CRC recomputed)
    fix_crc(b, 8);
    cases.push_back({"png_bad_bit_depth", b, "corrupt PNG"});
  }
  const size_t sos = find_marker(jpeg, 0xda), scan_middle = (sos + jpeg.size()) / 2;
  for (size_t cut : {size_t(2), size_t(20), sos + 4, scan_middle, jpeg.size() - 2, jpeg.size() - 1})
    cases.push_back({str_cat("jpeg_cut_at_", cut), Bytes(jpeg.begin(), jpeg.begin() + long(cut)), "truncated JPEG"});
  for (size_t cut : {(find_marker(progressive, 0xda) + progressive.size()) / 2, progressive.size() - 2})
    cases.push_back({str_cat("progressive_jpeg_cut_at_", cut), Bytes(progressive.begin(), progressive.begin() + long(cut)),
                     "truncated JPEG"});
  {
    Bytes b(jpeg.begin(), jpeg.begin() + long(scan_middle));  // scan cut short, then a proper EOI
    b.insert(b.end(), {0xff, 0xd9});
    cases.push_back({"jpeg_scan_cut_then_eoi", b, "premature end of data segment"});
  }
  {
    Bytes b = jpeg;
    b[find_marker(b, 0xc0) + 4] = 13;  // SOF0 sample precision 13
    cases.push_back({"jpeg_bad_precision", b, "corrupt JPEG"});
  }
  {
    Bytes b(jpeg.begin(), jpeg.begin() + 2);  // SOI then garbage
    for (int i = 0; i < 300; ++i) b.push_back(uint8_t(rand_int(0, 255)));
    b[2] = 0xff;
    b[3] = 0xc8;  // JPG: a reserved SOF marker libjpeg refuses
    cases.push_back({"jpeg_soi_then_garbage", b, "corrupt JPEG"});
  }
  {
    Bytes b = random_samples(size_t(rand_int(16, 4000)), 255);
    b[0] = uint8_t(rand_int(0, 0x7f));  // neither signature
    cases.push_back({"garbage", b, "not a PNG or JPEG file"});
  }
  const std::string text = "P3\n# this is a text file, not an image\n2 2 255\n0 0 0 255 255 255\n";
  cases.push_back({"text.png", Bytes(text.begin(), text.end()), "not a PNG or JPEG file"});
  cases.push_back({"empty.png", {}, "empty"});

  const auto check = [](const std::string& p, const std::string& words, bool label) {
    try {
      (void)(label ? read_label(p) : read_rgb(p));
      ADD_FAILURE() << p << ": no error";
    } catch (const ImageError& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind(p + ": ", 0), 0u) << msg;
      EXPECT_NE(msg.find(words), std::string::npos) << "expected '" << words << "' in: " << msg;
      if (!label) std::printf("  %s\n", msg.substr(msg.rfind('/') + 1).c_str());
    } catch (const std::exception& e) {
      ADD_FAILURE() << p << ": not an ImageError: " << e.what();
    }
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string p = path(c.name);
    write_bytes(p, c.bytes);
    check(p, c.words, false);
    if (!c.name.starts_with("jpeg") && !c.name.starts_with("progressive"))
      check(p, c.words, true);
  }
  fs::create_directories(path("a_directory.png"));
  check(path("a_directory.png"), "is a directory", false);
  check(path("a_directory.png"), "is a directory", true);
  check(path("missing.png"), "cannot open", false);
  check(path("missing.png"), "cannot open", true);
}

// Random damage (byte flips, cuts, both): every read either succeeds with the right shape (JPEG has no
// checksum, so some damage is undetectable) or throws ImageError naming the file; nothing else escapes.
TEST_F(ImageTest, RandomlyDamagedFilesFailCleanly) {
  MFUSER_SEED_TRACE();
  write_png(path("base.png"), random_u8({23, 31}));
  const Bytes png = read_bytes(path("base.png"));
  JpegSpec j;
  j.width = 31;
  j.height = 23;
  j.pixels = smooth_image(23, 31, 3);
  const Bytes baseline = encode_jpeg(j);
  j.progressive = true;
  const Bytes progressive = encode_jpeg(j);
  int errors = 0, decoded = 0;
  for (int iter = 0; iter < 300; ++iter) {
    const Bytes& base = iter % 3 == 0 ? png : iter % 3 == 1 ? baseline : progressive;
    Bytes b = base;
    const int mode = rand_int(0, 2);
    if (mode != 1)
      for (int k = rand_int(1, 8); k > 0; --k) b[size_t(rand_int(0, int(b.size()) - 1))] ^= uint8_t(rand_int(1, 255));
    if (mode != 0) b.resize(size_t(rand_int(1, int(b.size()) - 1)));
    const std::string p = path(str_cat("damaged_", iter));
    write_bytes(p, b);
    for (bool label : {false, true}) {
      try {
        const Tensor t = label ? read_label(p) : read_rgb(p);
        EXPECT_EQ(t.ndim(), label ? 2 : 3) << p;
        const Shape want = label ? Shape{23, 31} : Shape{23, 31, 3};
        if (&base == &png) {
          EXPECT_EQ(t.shape(), want) << p;  // IHDR is CRC-protected
        }
        ++decoded;
      } catch (const ImageError& e) {
        EXPECT_EQ(std::string(e.what()).rfind(p + ": ", 0), 0u) << e.what();
        ++errors;
      } catch (const std::exception& e) {
        ADD_FAILURE() << p << ": not an ImageError: " << e.what();
      }
    }
    fs::remove(p);
  }
  std::printf("  600 reads of damaged files: %d ImageError, %d decoded (undetectable JPEG damage)\n", errors,
              decoded);
}

TEST_F(ImageTest, WritePngRefusesBadInputAndLeavesNothingBehind) {
  MFUSER_SEED_TRACE();
  const auto expect_error = [&](const std::string& p, const Tensor& t, const std::string& words) {
    try {
      write_png(p, t);
      ADD_FAILURE() << "wrote " << t.str();
    } catch (const ImageError& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind(p + ": ", 0), 0u) << msg;
      EXPECT_NE(msg.find(words), std::string::npos) << msg;
    }
  };
  expect_error(path("f32.png"), Tensor::zeros({4, 4, 3}, DType::f32), "u8 [H, W] or [H, W, 3]");
  expect_error(path("rgba.png"), Tensor::zeros({4, 4, 4}, DType::u8), "u8 [H, W] or [H, W, 3]");
  expect_error(path("flat.png"), Tensor::zeros({16}, DType::u8), "u8 [H, W] or [H, W, 3]");
  expect_error(path("empty.png"), Tensor::zeros({0, 4, 3}, DType::u8), "0x4");
  expect_error(path("undefined.png"), Tensor(), "undefined");
  expect_error(path("no_such_dir/x.png"), random_u8({3, 3}), "cannot create temporary file");
  fs::create_directories(path("is_a_dir.png"));
  expect_error(path("is_a_dir.png"), random_u8({3, 3}), "cannot rename");
  EXPECT_EQ(listing(), (std::vector<std::string>{"is_a_dir.png"}));

  // An existing file is replaced whole.
  const Tensor first = random_u8({30, 20, 3}), second = random_u8({5, 6});
  write_png(path("replace.png"), first);
  write_png(path("replace.png"), second);
  EXPECT_EQ(first_difference(tensor_bytes(read_label(path("replace.png"))), tensor_bytes(second)), "equal");
  EXPECT_EQ(listing(), (std::vector<std::string>{"is_a_dir.png", "replace.png"}));
}

// ---- PIL cross-check ----------------------------------------------------------------------------------------

// PIL (Debian's python3-pil, linked against the same libpng and libjpeg-turbo) as an independent decoder:
// RGB decodes of every PNG and JPEG variant and label decodes of gray/palette PNGs must match it exactly.
// Skipped: 16-bit gray, which PIL opens as a 32-bit integer image and clips instead of dropping the low byte
// as cv2 does, and CMYK/YCCK JPEGs, which PIL inverts (Adobe convention) where OpenCV does not.
TEST_F(ImageTest, DecodesMatchPil) {
  MFUSER_SEED_TRACE();
  if (std::system("/usr/bin/python3 -c 'import PIL' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "/usr/bin/python3 cannot import PIL (Debian python3-pil); skipping the PIL cross-check";
  struct Item {
    std::string kind, file, out;
  };
  std::vector<Item> items;
  for (const PngSpec& s : png_variants()) {
    if (s.color_type == PNG_COLOR_TYPE_GRAY && s.bit_depth == 16) continue;
    const std::string p = path(s.name + ".png");
    write_png_spec(p, s);
    items.push_back({"rgb", p, p + ".rgb"});
    if (is_label_spec(s)) items.push_back({"label", p, p + ".label"});
  }
  for (const JpegSpec& s : jpeg_variants()) {
    if (s.components == 4) continue;
    const std::string p = path(s.name + ".jpg");
    write_bytes(p, encode_jpeg(s));
    items.push_back({"rgb", p, p + ".rgb"});
  }
  write_png(path("writer_rgb.png"), random_u8({rand_int(1, 60), rand_int(1, 60), 3}));
  items.push_back({"rgb", path("writer_rgb.png"), path("writer_rgb.png.rgb")});
  write_png(path("writer_gray.png"), random_u8({rand_int(1, 60), rand_int(1, 60)}));
  items.push_back({"label", path("writer_gray.png"), path("writer_gray.png.label")});

  {
    std::ofstream manifest(path("manifest.tsv"));
    for (const Item& it : items) manifest << it.kind << '\t' << it.file << '\t' << it.out << '\n';
    std::ofstream script(path("pil_decode.py"));
    script << "import sys\n"
              "from PIL import Image\n"
              "for line in open(sys.argv[1]):\n"
              "    kind, src, dst = line.rstrip('\\n').split('\\t')\n"
              "    im = Image.open(src)\n"
              "    if kind == 'rgb':\n"
              "        data = im.convert('RGB').tobytes()\n"
              "    else:\n"
              "        assert im.mode in ('L', 'P'), (src, im.mode)\n"
              "        data = im.tobytes()\n"
              "    open(dst, 'wb').write(data)\n";
  }
  ASSERT_EQ(std::system(str_cat("/usr/bin/python3 -W ignore ", path("pil_decode.py"), " ", path("manifest.tsv")).c_str()), 0);
  int compared = 0;
  for (const Item& it : items) {
    SCOPED_TRACE(it.file + " (" + it.kind + ")");
    const Tensor t = it.kind == "rgb" ? read_rgb(it.file) : read_label(it.file);
    EXPECT_EQ(first_difference(tensor_bytes(t), read_bytes(it.out)), "equal");
    ++compared;
  }
  std::printf("  %d decodes compared with PIL\n", compared);
}

}  // namespace
}  // namespace mfuser
