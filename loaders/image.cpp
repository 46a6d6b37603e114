// PNG and JPEG decoding that reproduces the reference pipeline's cv2.imdecode(..., IMREAD_COLOR) + BGR->RGB,
// and an atomic PNG writer.
//
// libpng and libjpeg report errors by longjmp. Every call that can longjmp sits in a small function below
// ("protected" functions) whose only locals are plain C data, so the jump never skips a C++ destructor; the
// libraries' structures are owned by RAII holders in the calling frame, and pixels are decoded into a tensor
// that is only returned when the whole file decoded. No C++ exception is thrown through the C libraries.
#include "loaders/image.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <vector>

// jpeglib.h needs FILE and size_t declared first.
#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

namespace mfuser {

namespace {

// cv2's own limits (CV_IO_MAX_IMAGE_WIDTH/HEIGHT/PIXELS defaults): a header asking for more is refused
// before anything is allocated.
constexpr uint64_t kMaxSide = uint64_t(1) << 20;
constexpr uint64_t kMaxPixels = uint64_t(1) << 30;

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw ImageError(str_cat(path, ": ", what));
}

void check_size(const std::string& path, uint64_t width, uint64_t height) {
  if (width == 0 || height == 0) fail(path, str_cat("image is ", width, "x", height, ", which is empty"));
  if (width > kMaxSide || height > kMaxSide || width * height > kMaxPixels)
    fail(path, str_cat("image is ", width, "x", height, ", larger than the ", kMaxSide, "-pixel side / ",
                       kMaxPixels, "-pixel limit"));
}

// ---- file input -------------------------------------------------------------------------------------------

std::vector<uint8_t> read_whole_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, str_cat("cannot open: ", std::strerror(errno)));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) fail(path, str_cat("cannot stat: ", std::strerror(errno)));
  if (S_ISDIR(st.st_mode)) fail(path, "is a directory, not an image file");
  if (!S_ISREG(st.st_mode)) fail(path, "is not a regular file");
  if (st.st_size == 0) fail(path, "is empty (0 bytes), not an image");
  std::vector<uint8_t> bytes(size_t(st.st_size));
  size_t got = 0;
  while (got < bytes.size()) {
    const ssize_t n = ::read(fd, bytes.data() + got, bytes.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(path, str_cat("read failed: ", std::strerror(errno)));
    }
    if (n == 0) break;  // shrank while being read: decode what is there (it will be reported as truncated)
    got += size_t(n);
  }
  bytes.resize(got);
  return bytes;
}

enum class Format { png, jpeg };

constexpr uint8_t kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
constexpr uint8_t kJpegSignature[3] = {0xff, 0xd8, 0xff};  // SOI, then the next marker's 0xFF

// By content, never by extension.
Format detect_format(const std::string& path, const std::vector<uint8_t>& b) {
  if (b.size() >= 8 && std::memcmp(b.data(), kPngSignature, 8) == 0) return Format::png;
  if (b.size() >= 3 && std::memcmp(b.data(), kJpegSignature, 3) == 0) return Format::jpeg;
  if (b.size() < 8 && std::memcmp(b.data(), kPngSignature, b.size()) == 0)
    fail(path, str_cat("truncated PNG: the file ends after ", b.size(), " bytes, inside the 8-byte signature"));
  if (b.size() < 3 && std::memcmp(b.data(), kJpegSignature, b.size()) == 0)
    fail(path, str_cat("truncated JPEG: the file ends after ", b.size(), " bytes, inside the start marker"));
  std::string head;
  for (size_t i = 0; i < std::min<size_t>(b.size(), 8); ++i) {
    char hex[4];
    std::snprintf(hex, sizeof hex, "%s%02x", i ? " " : "", b[i]);
    head += hex;
  }
  fail(path, str_cat("not a PNG or JPEG file (", b.size(), " bytes, starting ", head, ")"));
}

// ---- EXIF orientation ------------------------------------------------------------------------------------

// The IFD0 Orientation tag (0x0112) of an Exif TIFF block (starting at its byte-order mark), read exactly as
// OpenCV 4.6's ExifReader reads it, or 1 when there is none. ExifReader walks IFD0 entry by entry and stops
// at the first read past the end of the block (then keeping what it parsed so far): the orientation found
// before that counts, and so does a damaged block's. Its quirks are kept, since they decide which files rotate:
//  - byte order: "II" is little-endian; anything else ("MM", but also "IM", garbage) is read big-endian;
//  - the value is the SHORT at entry + 8, whatever the entry's type and count say (a big-endian LONG 6 reads 0);
//  - a duplicate Orientation entry does not replace the first;
//  - the entries OpenCV decodes before the orientation (strings, rationals) can stop the walk when their data
//    lies outside the block: a string of > 4 bytes at its offset, one of <= 4 bytes at absolute offset 8
//    (OpenCV's bug), rationals at their offset.
// Values other than 1..8 leave the image as it is.
int parse_exif_orientation(const uint8_t* data, size_t size) {
  if (size == 0) return 1;
  const bool little = size > 1 ? (data[0] == 'I' && data[1] == 'I') : data[0] == 'I';
  struct OutOfRange {};
  const auto u16 = [&](uint64_t at) -> uint32_t {
    if (at + 1 >= size) throw OutOfRange{};
    return little ? data[at] | uint32_t(data[at + 1]) << 8 : uint32_t(data[at]) << 8 | data[at + 1];
  };
  const auto u32 = [&](uint64_t at) -> uint32_t {
    if (at + 3 >= size) throw OutOfRange{};
    const uint32_t b0 = data[at], b1 = data[at + 1], b2 = data[at + 2], b3 = data[at + 3];
    return little ? b0 | b1 << 8 | b2 << 16 | b3 << 24 : b0 << 24 | b1 << 16 | b2 << 8 | b3;
  };
  // Rationals (two u32 each) from the offset stored in the entry: out of range iff the last byte is.
  const auto rationals = [&](uint64_t entry, uint64_t count) {
    const uint64_t at = u32(entry + 8);
    if (at + 8 * count > size) throw OutOfRange{};
  };
  try {
    if (u16(2) != 0x2a) return 1;
    uint64_t entry = u32(4);
    const uint32_t entries = u16(entry);
    entry += 2;
    for (uint32_t i = 0; i < entries; ++i, entry += 12) {
      switch (u16(entry)) {
        case 0x0112: {  // Orientation
          const uint32_t v = u16(entry + 8);
          return v >= 1 && v <= 8 ? int(v) : 1;
        }
        case 0x010e: case 0x010f: case 0x0110: case 0x0131: case 0x0132: case 0x8298: {  // ASCII strings
          const uint64_t n = u32(entry + 4);
          const uint64_t at = n > 4 ? u32(entry + 8) : 8;
          if (at > size || at + n > size) throw OutOfRange{};
          break;
        }
        case 0x011a: case 0x011b: rationals(entry, 1); break;  // X/YResolution
        case 0x013e: rationals(entry, 2); break;               // WhitePoint
        case 0x013f: rationals(entry, 6); break;               // PrimaryChromaticities
        case 0x0211: rationals(entry, 3); break;               // YCbCrCoefficients
        case 0x0214: rationals(entry, 6); break;               // ReferenceBlackWhite
        case 0x0128: case 0x0213: (void)u16(entry + 8); break;  // ResolutionUnit, YCbCrPositioning
        default: break;
      }
    }
  } catch (const OutOfRange&) {
  }
  return 1;
}

// Applies EXIF orientation 2..8 to u8 [H, W, 3] as OpenCV's ExifTransform does (1 and anything else: as is):
// 2 flip left-right, 3 rotate 180, 4 flip top-bottom, 5 transpose, 6 transpose + flip left-right (rotate 90
// clockwise), 7 transpose + rotate 180, 8 transpose + flip top-bottom (rotate 90 counter-clockwise).
Tensor apply_exif_orientation(Tensor image, int orientation) {
  if (orientation < 2 || orientation > 8) return image;
  const int64_t h = image.dim(0), w = image.dim(1);
  // Output pixel (y, x) is input pixel base + y * dy + x * dx (in pixels, row-major input).
  int64_t base = 0, dy = 0, dx = 0;
  switch (orientation) {
    case 2: base = w - 1, dy = w, dx = -1; break;
    case 3: base = (h - 1) * w + w - 1, dy = -w, dx = -1; break;
    case 4: base = (h - 1) * w, dy = -w, dx = 1; break;
    case 5: base = 0, dy = 1, dx = w; break;
    case 6: base = (h - 1) * w, dy = 1, dx = -w; break;
    case 7: base = (h - 1) * w + w - 1, dy = -1, dx = -w; break;
    case 8: base = w - 1, dy = -1, dx = w; break;
  }
  const bool swap = orientation >= 5;
  const int64_t oh = swap ? w : h, ow = swap ? h : w;
  Tensor out = Tensor::empty({oh, ow, 3}, DType::u8);
  const uint8_t* src = image.data<uint8_t>();
  uint8_t* dst = out.data<uint8_t>();
  for (int64_t y = 0; y < oh; ++y) {
    int64_t p = base + y * dy;
    for (int64_t x = 0; x < ow; ++x, p += dx, dst += 3) {
      const uint8_t* s = src + 3 * p;
      dst[0] = s[0];
      dst[1] = s[1];
      dst[2] = s[2];
    }
  }
  return out;
}

// ---- PNG decoding -----------------------------------------------------------------------------------------

// State shared with libpng's callbacks: the in-memory file and the first error message.
struct PngInput {
  const uint8_t* data = nullptr;
  size_t size = 0;
  size_t pos = 0;
  bool truncated = false;
  char message[256] = {};
};

extern "C" void png_on_error(png_structp png, png_const_charp msg) {
  auto* in = static_cast<PngInput*>(png_get_error_ptr(png));
  std::snprintf(in->message, sizeof in->message, "%s", msg ? msg : "unknown libpng error");
  png_longjmp(png, 1);
}

// libpng's warnings (a bad CRC in an ancillary chunk, which it then skips; an unknown sRGB profile...) are
// not fatal, exactly as with cv2, which uses libpng's default handling. They are not printed either.
extern "C" void png_on_warning(png_structp, png_const_charp) {}

extern "C" void png_read_from_memory(png_structp png, png_bytep out, png_size_t n) {
  auto* in = static_cast<PngInput*>(png_get_io_ptr(png));
  if (n > in->size - in->pos) {
    in->truncated = true;
    png_error(png, "unexpected end of file");
  }
  std::memcpy(out, in->data + in->pos, n);
  in->pos += n;
}

struct PngHeader {
  png_uint_32 width = 0, height = 0;
  int bit_depth = 0, color_type = 0, interlace = 0;
};

// Protected: reads the signature and every chunk up to the first IDAT.
bool png_protected_read_info(png_structp png, png_infop info, PngHeader* h) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_info(png, info);
  png_get_IHDR(png, info, &h->width, &h->height, &h->bit_depth, &h->color_type, &h->interlace, nullptr, nullptr);
  return true;
}

// Protected: sets the transforms, decodes every row (all seven Adam7 passes when interlaced) and reads on to
// IEND, so a file cut anywhere, even after its last IDAT, is an error (cv2 calls png_read_end too). Chunks
// after the image data go to end_info, as with cv2 (an eXIf chunk there counts too).
//
// to_rgb reproduces OpenCV's PngDecoder::readData for a 3-channel 8-bit destination (IMREAD_COLOR):
// png_set_strip_16 (16-bit samples keep their high byte, i.e. v >> 8, not a rounded rescale),
// png_set_strip_alpha (alpha, and tRNS transparency, dropped without compositing), png_set_palette_to_rgb,
// png_set_expand_gray_1_2_4_to_8 for low-depth gray, png_set_gray_to_rgb, interlace handling; no gamma.
// OpenCV's extra png_set_bgr is its BGR order, which the reference undoes with BGR->RGB.
// Otherwise (labels) samples stay as stored: 8-bit values or palette indices, low-depth indices unpacked.
bool png_protected_decode(png_structp png, png_infop info, png_infop end_info, const PngHeader* h, bool to_rgb,
                          size_t row_bytes, png_bytepp rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  if (to_rgb) {
    if (h->bit_depth == 16) png_set_strip_16(png);
    png_set_strip_alpha(png);
    if (h->color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if ((h->color_type & PNG_COLOR_MASK_COLOR) == 0) {
      if (h->bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
      png_set_gray_to_rgb(png);
    }
  } else if (h->bit_depth < 8) {
    png_set_packing(png);
  }
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  if (png_get_rowbytes(png, info) != row_bytes) png_error(png, "unexpected row size after conversion");
  png_read_image(png, rows);
  png_read_end(png, end_info);
  return true;
}

std::string png_color_type_name(int color_type) {
  switch (color_type) {
    case PNG_COLOR_TYPE_GRAY: return "gray";
    case PNG_COLOR_TYPE_GRAY_ALPHA: return "gray+alpha";
    case PNG_COLOR_TYPE_RGB: return "RGB";
    case PNG_COLOR_TYPE_RGB_ALPHA: return "RGBA";
    case PNG_COLOR_TYPE_PALETTE: return "palette";
  }
  return str_cat("colour type ", color_type);
}

// Owns libpng's read structures. A member of PngDecoder, so it is destroyed even when PngDecoder's
// constructor throws.
struct PngReadHandles {
  png_structp png = nullptr;
  png_infop info = nullptr;
  png_infop end_info = nullptr;
  PngReadHandles() = default;
  PngReadHandles(const PngReadHandles&) = delete;
  PngReadHandles& operator=(const PngReadHandles&) = delete;
  ~PngReadHandles() {
    if (png) png_destroy_read_struct(&png, info ? &info : nullptr, end_info ? &end_info : nullptr);
  }
};

class PngDecoder {
 public:
  PngDecoder(const std::string& path, const std::vector<uint8_t>& bytes) : path_(path) {
    in_.data = bytes.data();
    in_.size = bytes.size();
    h_.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &in_, png_on_error, png_on_warning);
    if (h_.png) h_.info = png_create_info_struct(h_.png);
    if (h_.info) h_.end_info = png_create_info_struct(h_.png);
    if (!h_.png || !h_.info || !h_.end_info) fail(path_, "libpng could not allocate its decoder");
    png_set_read_fn(h_.png, &in_, png_read_from_memory);
    if (!png_protected_read_info(h_.png, h_.info, &header_)) fail_decode();
    check_size(path_, header_.width, header_.height);
  }
  PngDecoder(const PngDecoder&) = delete;
  PngDecoder& operator=(const PngDecoder&) = delete;

  const PngHeader& header() const { return header_; }

  // u8 [H, W, channels]; channels is 3 for RGB output, 1 for labels.
  Tensor decode(bool to_rgb) {
    const int64_t h = header_.height, w = header_.width, c = to_rgb ? 3 : 1;
    Tensor out = Tensor::empty(c == 3 ? Shape{h, w, 3} : Shape{h, w}, DType::u8);
    std::vector<png_bytep> rows(static_cast<size_t>(h));
    for (int64_t y = 0; y < h; ++y) rows[size_t(y)] = out.data<uint8_t>() + y * w * c;
    if (!png_protected_decode(h_.png, h_.info, h_.end_info, &header_, to_rgb, size_t(w * c), rows.data()))
      fail_decode();
    return out;
  }

  // The EXIF orientation of a decoded file's eXIf chunk (libpng has checked its byte-order mark), taken as
  // cv2 takes it: the one before the image data, else the one after; 1 without one.
  int exif_orientation() const {
    png_uint_32 size = 0;
    png_bytep data = nullptr;
    if (png_get_valid(h_.png, h_.info, PNG_INFO_eXIf))
      png_get_eXIf_1(h_.png, h_.info, &size, &data);
    else if (png_get_valid(h_.png, h_.end_info, PNG_INFO_eXIf))
      png_get_eXIf_1(h_.png, h_.end_info, &size, &data);
    return data && size > 0 ? parse_exif_orientation(data, size) : 1;
  }

 private:
  [[noreturn]] void fail_decode() const {
    if (in_.truncated)
      fail(path_, str_cat("truncated PNG: the file ends after ", in_.size, " bytes (", in_.message, ")"));
    fail(path_, str_cat("corrupt PNG: ", in_.message));
  }

  std::string path_;
  PngInput in_;
  PngReadHandles h_;
  PngHeader header_;
};

// ---- JPEG decoding ----------------------------------------------------------------------------------------

struct JpegErrors {
  jpeg_error_mgr mgr;  // first: libjpeg sees a jpeg_error_mgr*
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = {};
};

extern "C" void jpeg_on_error(j_common_ptr cinfo) {
  auto* errors = reinterpret_cast<JpegErrors*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, errors->message);
  std::longjmp(errors->jump, 1);
}

// libjpeg reports damaged data as warnings and carries on, filling what is missing (a truncated file comes
// out with its bottom gray; cv2 accepts such files). Warnings that mean pixel data is missing or corrupt are
// errors here, so nothing half-decoded is returned. Harmless ones (extraneous bytes before a marker, unknown
// JFIF revision or Adobe transform code, a bad ICC marker) are accepted, silently, as cv2 accepts them.
extern "C" void jpeg_on_message(j_common_ptr cinfo, int level) {
  if (level >= 0) return;  // trace output
  switch (cinfo->err->msg_code) {
    case JWRN_JPEG_EOF:        // premature end of file (truncated)
    case JWRN_HIT_MARKER:      // entropy-coded segment ended early
    case JWRN_HUFF_BAD_CODE:   // corrupt Huffman data
    case JWRN_ARITH_BAD_CODE:  // corrupt arithmetic-coded data
    case JWRN_MUST_RESYNC:     // restart markers out of order: data was skipped
      jpeg_on_error(cinfo);
      break;
    default:
      cinfo->err->num_warnings++;
  }
}

extern "C" void jpeg_no_output(j_common_ptr) {}

bool jpeg_protected_create(jpeg_decompress_struct* cinfo, JpegErrors* errors) {
  if (setjmp(errors->jump)) return false;
  jpeg_create_decompress(cinfo);
  return true;
}

bool jpeg_protected_read_header(jpeg_decompress_struct* cinfo, JpegErrors* errors, const uint8_t* data,
                                size_t size) {
  if (setjmp(errors->jump)) return false;
  jpeg_mem_src(cinfo, data, static_cast<unsigned long>(size));
  jpeg_save_markers(cinfo, JPEG_APP0 + 1, 0xffff);  // APP1 (Exif), kept whole as OpenCV keeps it
  jpeg_read_header(cinfo, TRUE);
  return true;
}

// Protected: decodes every scanline into out (u8 [H, W, 3], RGB) and reads on to EOI.
//
// The settings are OpenCV's (JpegDecoder::readData, which cv2.imdecode uses) and libjpeg's defaults: ISLOW
// integer DCT, fancy (triangle-filter) upsampling, block smoothing for progressive files, full scale, no
// colour quantisation. Gray and YCbCr/RGB files are converted by libjpeg to 3-channel RGB (OpenCV asks for
// JCS_EXT_BGR, the same conversion in the other channel order). Four-channel files (CMYK, or YCCK which
// libjpeg turns into CMYK) are converted as OpenCV's icvCvt_CMYK2BGR_8u_C4C3R does: per channel
// v' = k - ((255 - v) * k >> 8), with C->R, M->G, Y->B. cmyk_row is scratch for one 4-channel row.
bool jpeg_protected_decode(jpeg_decompress_struct* cinfo, JpegErrors* errors, bool cmyk, uint8_t* out,
                           uint8_t* cmyk_row) {
  if (setjmp(errors->jump)) return false;
  cinfo->out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  cinfo->dct_method = JDCT_ISLOW;
  cinfo->do_fancy_upsampling = TRUE;
  cinfo->do_block_smoothing = TRUE;
  cinfo->quantize_colors = FALSE;
  cinfo->scale_num = cinfo->scale_denom = 1;
  jpeg_start_decompress(cinfo);
  if (cinfo->output_components != (cmyk ? 4 : 3)) ERREXIT(cinfo, JERR_BAD_J_COLORSPACE);
  const size_t row_bytes = size_t(cinfo->output_width) * 3;
  while (cinfo->output_scanline < cinfo->output_height) {
    uint8_t* dst = out + size_t(cinfo->output_scanline) * row_bytes;
    JSAMPROW row = cmyk ? cmyk_row : dst;
    if (jpeg_read_scanlines(cinfo, &row, 1) != 1) ERREXIT(cinfo, JERR_INPUT_EMPTY);
    if (cmyk) {
      for (JDIMENSION x = 0; x < cinfo->output_width; ++x) {
        const int k = cmyk_row[4 * x + 3];
        for (int ch = 0; ch < 3; ++ch) dst[3 * x + ch] = uint8_t(k - (((255 - cmyk_row[4 * x + ch]) * k) >> 8));
      }
    }
  }
  jpeg_finish_decompress(cinfo);
  return true;
}

// Owns libjpeg's decompressor and its error manager (which it points to, so neither moves). A member of
// JpegDecoder, so it is destroyed even when JpegDecoder's constructor throws.
struct JpegHandle {
  jpeg_decompress_struct cinfo{};
  JpegErrors errors{};
  bool created = false;
  JpegHandle() = default;
  JpegHandle(const JpegHandle&) = delete;
  JpegHandle& operator=(const JpegHandle&) = delete;
  ~JpegHandle() {
    if (created) jpeg_destroy_decompress(&cinfo);
  }
};

class JpegDecoder {
 public:
  JpegDecoder(const std::string& path, const std::vector<uint8_t>& bytes) : path_(path), size_(bytes.size()) {
    h_.cinfo.err = jpeg_std_error(&h_.errors.mgr);
    h_.errors.mgr.error_exit = jpeg_on_error;
    h_.errors.mgr.emit_message = jpeg_on_message;
    h_.errors.mgr.output_message = jpeg_no_output;
    // jpeg_CreateDecompress frees what it allocated before it reports a failure, so a failed create leaves
    // nothing to destroy.
    if (!jpeg_protected_create(&h_.cinfo, &h_.errors)) fail(path_, str_cat("libjpeg: ", h_.errors.message));
    h_.created = true;
    if (!jpeg_protected_read_header(&h_.cinfo, &h_.errors, bytes.data(), bytes.size())) fail_decode();
    check_size(path_, h_.cinfo.image_width, h_.cinfo.image_height);
    // As OpenCV's JpegDecoder: the first APP1 marker, whatever its identifier, minus the 6 bytes that are
    // "Exif\0\0" in an Exif block. Read now: libjpeg frees saved markers when decompression finishes.
    for (jpeg_saved_marker_ptr m = h_.cinfo.marker_list; m; m = m->next) {
      if (m->marker != JPEG_APP0 + 1) continue;
      if (m->data_length > 6) orientation_ = parse_exif_orientation(m->data + 6, m->data_length - 6);
      break;
    }
  }
  JpegDecoder(const JpegDecoder&) = delete;
  JpegDecoder& operator=(const JpegDecoder&) = delete;

  Tensor decode_rgb() {
    bool cmyk = false;
    switch (h_.cinfo.jpeg_color_space) {
      case JCS_GRAYSCALE:
      case JCS_YCbCr:
      case JCS_RGB: break;
      case JCS_CMYK:
      case JCS_YCCK: cmyk = true; break;
      default:
        fail(path_, str_cat("unsupported JPEG colour space (", h_.cinfo.num_components, " components)"));
    }
    const int64_t h = h_.cinfo.image_height, w = h_.cinfo.image_width;
    Tensor out = Tensor::empty({h, w, 3}, DType::u8);
    std::vector<uint8_t> cmyk_row(cmyk ? size_t(w) * 4 : 0);
    if (!jpeg_protected_decode(&h_.cinfo, &h_.errors, cmyk, out.data<uint8_t>(), cmyk_row.data())) fail_decode();
    return out;
  }

  int exif_orientation() const { return orientation_; }

 private:
  [[noreturn]] void fail_decode() const {
    if (h_.errors.mgr.msg_code == JWRN_JPEG_EOF)
      fail(path_, str_cat("truncated JPEG (", size_, " bytes): the data ends before the image is complete (",
                          h_.errors.message, ")"));
    fail(path_, str_cat("corrupt JPEG: ", h_.errors.message));
  }

  std::string path_;
  size_t size_;
  JpegHandle h_;
  int orientation_ = 1;
};

// ---- PNG encoding -----------------------------------------------------------------------------------------

struct PngOutput {
  int fd = -1;
  int write_errno = 0;
  char message[256] = {};
};

extern "C" void png_write_to_fd(png_structp png, png_bytep data, png_size_t n) {
  auto* out = static_cast<PngOutput*>(png_get_io_ptr(png));
  while (n > 0) {
    const ssize_t w = ::write(out->fd, data, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      out->write_errno = errno;
      png_error(png, "write failed");
    }
    data += w;
    n -= size_t(w);
  }
}

extern "C" void png_flush_nothing(png_structp) {}

extern "C" void png_on_write_error(png_structp png, png_const_charp msg) {
  auto* out = static_cast<PngOutput*>(png_get_error_ptr(png));
  std::snprintf(out->message, sizeof out->message, "%s", msg ? msg : "unknown libpng error");
  png_longjmp(png, 1);
}

// Protected: the whole encode, rows already laid out.
bool png_protected_encode(png_structp png, png_infop info, png_uint_32 width, png_uint_32 height, int color_type,
                          png_bytepp rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_IHDR(png, info, width, height, 8, color_type, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  png_write_image(png, rows);
  png_write_end(png, info);
  return true;
}

std::atomic<uint64_t> g_temp_counter{0};

}  // namespace

// ---- public API -------------------------------------------------------------------------------------------

Tensor read_rgb(const std::string& path) {
  const std::vector<uint8_t> bytes = read_whole_file(path);
  // cv2.imdecode(IMREAD_COLOR) applies the EXIF orientation after decoding, for both formats.
  if (detect_format(path, bytes) == Format::png) {
    PngDecoder decoder(path, bytes);
    Tensor rgb = decoder.decode(/*to_rgb=*/true);
    return apply_exif_orientation(std::move(rgb), decoder.exif_orientation());
  }
  JpegDecoder decoder(path, bytes);
  Tensor rgb = decoder.decode_rgb();
  return apply_exif_orientation(std::move(rgb), decoder.exif_orientation());
}

Tensor read_label(const std::string& path) {
  const std::vector<uint8_t> bytes = read_whole_file(path);
  if (detect_format(path, bytes) == Format::jpeg)
    fail(path, "is a JPEG, expected an 8-bit single-channel PNG label map (gray or palette)");
  PngDecoder decoder(path, bytes);
  const PngHeader& h = decoder.header();
  // Palette PNGs give their indices (any depth, unpacked; the palette and tRNS are not applied), as PIL's
  // "P" mode does for the reference's label loader. Gray must be exactly 8-bit.
  const bool gray8 = h.color_type == PNG_COLOR_TYPE_GRAY && h.bit_depth == 8;
  if (!gray8 && h.color_type != PNG_COLOR_TYPE_PALETTE)
    fail(path, str_cat("is ", h.bit_depth, "-bit ", png_color_type_name(h.color_type),
                       ", expected an 8-bit single-channel label map (gray or palette)"));
  return decoder.decode(/*to_rgb=*/false);
}

void write_png(const std::string& path, const Tensor& image) {
  if (!image.defined()) throw ImageError(str_cat(path, ": cannot write an undefined tensor as PNG"));
  if (image.dtype() != DType::u8 || !(image.ndim() == 2 || (image.ndim() == 3 && image.dim(2) == 3)))
    throw ImageError(str_cat(path, ": write_png takes u8 [H, W] or [H, W, 3], got ", image.str()));
  const int64_t h = image.dim(0), w = image.dim(1), c = image.ndim() == 3 ? 3 : 1;
  if (h <= 0 || w <= 0 || uint64_t(h) > 0x7fffffffu || uint64_t(w) > 0x7fffffffu)
    throw ImageError(str_cat(path, ": cannot write a ", h, "x", w, " image as PNG"));
  const Tensor host = image.device().is_cpu() ? image : image.to(Device::cpu());
  std::vector<png_bytep> rows(static_cast<size_t>(h));
  for (int64_t y = 0; y < h; ++y) rows[size_t(y)] = host.data<uint8_t>() + y * w * c;

  namespace fs = std::filesystem;
  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  const std::string tmp =
      (dir / str_cat('.', target.filename().string(), ".tmp.", ::getpid(), '.', g_temp_counter++)).string();
  const auto io_fail = [&](const std::string& what, int err) {
    throw ImageError(str_cat(path, ": ", what, err ? str_cat(": ", std::strerror(err)) : std::string()));
  };

  PngOutput out;
  out.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (out.fd < 0) io_fail("cannot create temporary file " + tmp, errno);
  struct PngWriter {
    png_structp png = nullptr;
    png_infop info = nullptr;
    ~PngWriter() { png_destroy_write_struct(&png, info ? &info : nullptr); }
  } writer;
  bool ok = false;
  int err = 0;
  std::string what;
  writer.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &out, png_on_write_error, png_on_warning);
  if (writer.png) writer.info = png_create_info_struct(writer.png);
  if (!writer.png || !writer.info) {
    what = "libpng could not allocate its encoder";
  } else {
    png_set_write_fn(writer.png, &out, png_write_to_fd, png_flush_nothing);
    if (!png_protected_encode(writer.png, writer.info, png_uint_32(w), png_uint_32(h),
                              c == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY, rows.data())) {
      what = str_cat("PNG encoding failed (", out.message, ")");
      err = out.write_errno;
    } else if (::fsync(out.fd) != 0) {
      what = "fsync failed";
      err = errno;
    } else {
      ok = true;
    }
  }
  if (::close(out.fd) != 0 && ok) {
    ok = false;
    what = "close failed";
    err = errno;
  }
  if (!ok) {
    ::unlink(tmp.c_str());
    io_fail(what, err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    err = errno;
    ::unlink(tmp.c_str());
    io_fail("cannot rename the temporary file " + tmp + " into place", err);
  }
  // Make the rename itself durable.
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace mfuser
