// Safetensors files: a validating, mmap-based reader and an atomic writer.
//
// Format: 8-byte little-endian header length N, N bytes of UTF-8 JSON mapping tensor names to
// {"dtype", "shape", "data_offsets": [begin, end]} (plus an optional "__metadata__" string map), then the
// data region. The reader validates like the reference implementation: header within the file and at most
// 100 MB, valid JSON, known dtypes, shape x dtype size equal to the byte span, offsets inside the data region,
// no overlaps, no holes, no duplicate names. Every error names the file and, where one is involved, the tensor.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "runtime/error.h"
#include "runtime/tensor.h"

namespace mfuser {

enum class SafetensorsErrc {
  io,                  // cannot open / stat / map / write
  header_too_small,    // file shorter than the 8-byte length prefix
  header_too_large,    // declared header length above 100 MB
  header_out_of_file,  // declared header length runs past the end of the file
  header_not_utf8,
  header_not_json,     // also: not a JSON object
  invalid_entry,       // entry is not {"dtype","shape","data_offsets"} of the right JSON types
  invalid_metadata,    // "__metadata__" is not a string -> string map
  duplicate_name,
  unknown_dtype,
  size_mismatch,       // numel x dtype size != end - begin, or element count overflows
  invalid_offsets,     // begin > end, overlap, hole, or end beyond the data region
  incomplete_buffer,   // data region longer than what the tensors cover
  missing_tensor,      // asked for a name the file does not hold
  unsupported,         // valid file, but a dtype or rank the runtime cannot hold, or a bad conversion
};

std::string_view safetensors_errc_name(SafetensorsErrc code);

class SafetensorsError : public Error {
 public:
  SafetensorsError(SafetensorsErrc code, const std::string& message) : Error(message), code_(code) {}
  SafetensorsErrc code() const { return code_; }

 private:
  SafetensorsErrc code_;
};

struct SafetensorsEntry {
  std::string name;
  std::string dtype;             // safetensors spelling, e.g. "BF16"
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;   // byte span inside the data region
};

class SafetensorsReader {
 public:
  // Maps and validates the whole header; throws SafetensorsError.
  explicit SafetensorsReader(const std::string& path);

  const std::string& path() const { return path_; }
  // Entries in data-region order.
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const SafetensorsEntry* find(std::string_view name) const;
  const SafetensorsEntry& entry(std::string_view name) const;  // throws missing_tensor
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Zero-copy host tensor over the mapped bytes (keeps the mapping alive). Falls back to a copy when the
  // bytes are not aligned for the element type.
  Tensor view(std::string_view name) const;
  // A new tensor: converted to `as` when given (float types, F64 included, convert to F32/BF16/F16 with
  // round-to-nearest-even; other conversions are refused) and placed on `device`.
  Tensor load(std::string_view name, std::optional<DType> as = std::nullopt, Device device = Device::cpu()) const;

 private:
  [[noreturn]] void fail(SafetensorsErrc code, const std::string& message) const;
  void parse_header(std::string_view header, uint64_t data_size);

  std::string path_;
  std::shared_ptr<const void> mapping_;  // unmapped when the last reader or view goes away
  const uint8_t* data_ = nullptr;        // start of the data region
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

// Writes `tensors` (any device; CUDA tensors are copied to the host) in the given order. Atomic: the bytes go
// to a temporary file in the same directory which is fsync'ed and renamed over `path`, so a crash leaves either
// the old file or the new one, never a torn one.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace mfuser
