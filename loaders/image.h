// Image files: PNG (libpng) and JPEG (libjpeg-turbo) in, PNG out.
//
// Decoded images are host u8 tensors in HWC layout, as the reference pipeline loads them (mmcv imread with
// RGB order): read_rgb -> [H, W, 3]. read_rgb applies the EXIF orientation as the reference's
// cv2.imdecode(IMREAD_COLOR) does (OpenCV 4.6): the IFD0 Orientation tag of a JPEG's first APP1 marker or of
// a PNG's eXIf chunk (before or after the image data) flips / transposes / rotates the decoded image, so
// orientations 5..8 swap H and W; a missing, damaged or out-of-range tag leaves it as stored, and never fails
// the decode. Label maps are read without any colour conversion and without EXIF orientation (as cv2's
// IMREAD_UNCHANGED and PIL's plain open): a palette PNG gives its indices, a gray PNG its values (Cityscapes
// *_labelTrainIds.png, BDD100K masks, GTA5's palette labels), read_label -> [H, W].
// Every failure (missing, unreadable, corrupt or truncated file, unsupported format) throws ImageError naming
// the file; nothing is returned half-decoded.
#pragma once

#include <string>

#include "runtime/error.h"
#include "runtime/tensor.h"

namespace mfuser {

class ImageError : public Error {
 public:
  using Error::Error;
};

// PNG (8-bit gray, gray+alpha, RGB, RGBA, palette; 16-bit is reduced to 8) or JPEG (baseline, progressive,
// gray or YCbCr) by content, not by extension. Alpha is dropped; gray is replicated to three channels.
Tensor read_rgb(const std::string& path);

// A single-channel 8-bit PNG (gray or palette indices), u8 [H, W]. Other formats are refused.
Tensor read_label(const std::string& path);

// Writes u8 [H, W] (gray) or [H, W, 3] (RGB) as an 8-bit PNG, atomically (temporary file + rename).
void write_png(const std::string& path, const Tensor& image);

}  // namespace mfuser
