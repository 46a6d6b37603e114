#include "loaders/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "runtime/cuda.h"

namespace mfuser {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's limit

// Byte sizes of every dtype the format defines (not only those the runtime computes in).
std::optional<size_t> format_dtype_size(std::string_view name) {
  static const std::pair<std::string_view, size_t> kSizes[] = {
      {"BOOL", 1}, {"U8", 1}, {"I8", 1}, {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"I16", 2}, {"U16", 2},
      {"F16", 2},  {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4}, {"F64", 8}, {"I64", 8}, {"U64", 8}};
  for (const auto& [n, s] : kSizes)
    if (n == name) return s;
  return std::nullopt;
}

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = uint8_t(s[i]);
    size_t len;
    uint32_t cp;
    if (c < 0x80) { ++i; continue; }
    if ((c & 0xe0) == 0xc0) { len = 2; cp = c & 0x1f; }
    else if ((c & 0xf0) == 0xe0) { len = 3; cp = c & 0x0f; }
    else if ((c & 0xf8) == 0xf0) { len = 4; cp = c & 0x07; }
    else return false;
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = uint8_t(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    const uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += len;
  }
  return true;
}

// Reads element i of a floating source as float.
float read_float(const uint8_t* p, std::string_view dtype, int64_t i) {
  if (dtype == "F32") { float v; std::memcpy(&v, p + 4 * i, 4); return v; }
  if (dtype == "F64") { double v; std::memcpy(&v, p + 8 * i, 8); return float(v); }
  uint16_t bits;
  std::memcpy(&bits, p + 2 * i, 2);
  return dtype == "BF16" ? bf16_to_float(bf16_t{bits}) : f16_to_float(f16_t{bits});
}

}  // namespace

std::string_view safetensors_errc_name(SafetensorsErrc code) {
  switch (code) {
    case SafetensorsErrc::io: return "io";
    case SafetensorsErrc::header_too_small: return "header_too_small";
    case SafetensorsErrc::header_too_large: return "header_too_large";
    case SafetensorsErrc::header_out_of_file: return "header_out_of_file";
    case SafetensorsErrc::header_not_utf8: return "header_not_utf8";
    case SafetensorsErrc::header_not_json: return "header_not_json";
    case SafetensorsErrc::invalid_entry: return "invalid_entry";
    case SafetensorsErrc::invalid_metadata: return "invalid_metadata";
    case SafetensorsErrc::duplicate_name: return "duplicate_name";
    case SafetensorsErrc::unknown_dtype: return "unknown_dtype";
    case SafetensorsErrc::size_mismatch: return "size_mismatch";
    case SafetensorsErrc::invalid_offsets: return "invalid_offsets";
    case SafetensorsErrc::incomplete_buffer: return "incomplete_buffer";
    case SafetensorsErrc::missing_tensor: return "missing_tensor";
    case SafetensorsErrc::unsupported: return "unsupported";
  }
  return "?";
}

void SafetensorsReader::fail(SafetensorsErrc code, const std::string& message) const {
  throw SafetensorsError(code, str_cat(path_, ": ", message));
}

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(SafetensorsErrc::io, str_cat("cannot open: ", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail(SafetensorsErrc::io, str_cat("cannot stat: ", std::strerror(err)));
  }
  const auto file_size = uint64_t(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    fail(SafetensorsErrc::header_too_small, str_cat("file is ", file_size, " bytes, shorter than the 8-byte header length"));
  }
  void* base = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);
  if (base == MAP_FAILED) fail(SafetensorsErrc::io, str_cat("cannot mmap: ", std::strerror(map_err)));
  mapping_ = std::shared_ptr<const void>(base, [file_size](const void* p) { ::munmap(const_cast<void*>(p), file_size); });

  const auto* bytes = static_cast<const uint8_t*>(base);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > kMaxHeaderBytes)
    fail(SafetensorsErrc::header_too_large, str_cat("header length ", header_len, " exceeds the 100 MB limit"));
  if (header_len > file_size - 8)
    fail(SafetensorsErrc::header_out_of_file,
         str_cat("header length ", header_len, " runs past the end of the ", file_size, "-byte file"));
  data_ = bytes + 8 + header_len;
  parse_header(std::string_view(reinterpret_cast<const char*>(bytes + 8), header_len), file_size - 8 - header_len);
}

void SafetensorsReader::parse_header(std::string_view header, uint64_t data_size) {
  using nlohmann::json;
  if (!valid_utf8(header)) fail(SafetensorsErrc::header_not_utf8, "header is not valid UTF-8");
  if (header.empty() || header.front() != '{')
    fail(SafetensorsErrc::header_not_json, "header does not start with '{'");

  // nlohmann keeps the last of duplicate keys silently; catch them while parsing.
  std::string duplicate;
  std::set<std::string, std::less<>> seen;
  json::parser_callback_t on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && !seen.insert(parsed.get<std::string>()).second &&
        duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  json root;
  try {
    root = json::parse(header.begin(), header.end(), on_event);
  } catch (const json::exception& e) {
    fail(SafetensorsErrc::header_not_json, str_cat("header is not valid JSON: ", e.what()));
  }
  if (!root.is_object()) fail(SafetensorsErrc::header_not_json, "header is not a JSON object");
  if (!duplicate.empty()) fail(SafetensorsErrc::duplicate_name, str_cat("tensor '", duplicate, "' appears twice"));

  for (auto& [name, value] : root.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) fail(SafetensorsErrc::invalid_metadata, "__metadata__ is not an object");
      for (auto& [k, v] : value.items()) {
        if (!v.is_string())
          fail(SafetensorsErrc::invalid_metadata, str_cat("__metadata__ value of '", k, "' is not a string"));
        metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    const auto bad = [&](const std::string& why) {
      fail(SafetensorsErrc::invalid_entry, str_cat("tensor '", name, "': ", why));
    };
    if (!value.is_object()) bad("entry is not an object");
    for (const char* key : {"dtype", "shape", "data_offsets"})
      if (!value.contains(key)) bad(str_cat("missing \"", key, "\""));
    SafetensorsEntry e;
    e.name = name;
    if (!value["dtype"].is_string()) bad("\"dtype\" is not a string");
    e.dtype = value["dtype"].get<std::string>();
    const json& shape = value["shape"];
    if (!shape.is_array()) bad("\"shape\" is not an array");
    for (const json& d : shape) {
      if (!d.is_number_unsigned()) bad(str_cat("shape dimension ", d.dump(), " is not a non-negative integer"));
      if (d.get<uint64_t>() > uint64_t(INT64_MAX)) bad(str_cat("shape dimension ", d.dump(), " is too large"));
      e.shape.push_back(d.get<int64_t>());
    }
    const json& offsets = value["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned())
      bad("\"data_offsets\" is not a pair of non-negative integers");
    e.begin = offsets[0].get<uint64_t>();
    e.end = offsets[1].get<uint64_t>();

    const auto elem = format_dtype_size(e.dtype);
    if (!elem) fail(SafetensorsErrc::unknown_dtype, str_cat("tensor '", name, "': unknown dtype '", e.dtype, "'"));
    if (e.begin > e.end)
      fail(SafetensorsErrc::invalid_offsets, str_cat("tensor '", name, "': data_offsets [", e.begin, ", ", e.end, "] are reversed"));
    uint64_t nbytes = *elem;
    for (int64_t d : e.shape)
      if (__builtin_mul_overflow(nbytes, uint64_t(d), &nbytes))
        fail(SafetensorsErrc::size_mismatch, str_cat("tensor '", name, "': element count overflows"));
    if (nbytes != e.end - e.begin)
      fail(SafetensorsErrc::size_mismatch, str_cat("tensor '", name, "': shape x dtype size is ", nbytes,
                                                   " bytes but data_offsets span ", e.end - e.begin));
    entries_.push_back(std::move(e));
  }

  // The tensors must tile the data region exactly: sorted by offset, each starts where the previous ended.
  std::sort(entries_.begin(), entries_.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
  uint64_t expected = 0;
  for (const SafetensorsEntry& e : entries_) {
    if (e.begin != expected)
      fail(SafetensorsErrc::invalid_offsets,
           str_cat("tensor '", e.name, "': starts at byte ", e.begin, " but the previous tensor ends at ", expected,
                   e.begin < expected ? " (overlap)" : " (hole)"));
    if (e.end > data_size)
      fail(SafetensorsErrc::invalid_offsets, str_cat("tensor '", e.name, "': ends at byte ", e.end,
                                                     " beyond the ", data_size, "-byte data region"));
    expected = e.end;
  }
  if (expected != data_size)
    fail(SafetensorsErrc::incomplete_buffer,
         str_cat("data region is ", data_size, " bytes but the tensors cover only ", expected));
  for (size_t i = 0; i < entries_.size(); ++i) index_.emplace(entries_[i].name, i);
}

const SafetensorsEntry* SafetensorsReader::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

const SafetensorsEntry& SafetensorsReader::entry(std::string_view name) const {
  const SafetensorsEntry* e = find(name);
  if (!e) fail(SafetensorsErrc::missing_tensor, str_cat("no tensor named '", name, "'"));
  return *e;
}

Tensor SafetensorsReader::view(std::string_view name) const {
  const SafetensorsEntry& e = entry(name);
  const auto dtype = dtype_from_name(e.dtype);
  if (!dtype) fail(SafetensorsErrc::unsupported, str_cat("tensor '", e.name, "': dtype ", e.dtype, " is not supported by the runtime"));
  if (e.shape.size() > size_t(kMaxDims))
    fail(SafetensorsErrc::unsupported, str_cat("tensor '", e.name, "' has ", e.shape.size(), " dims; at most ", kMaxDims, " are supported"));
  const Shape shape(e.shape);
  const uint8_t* ptr = data_ + e.begin;
  if (reinterpret_cast<uintptr_t>(ptr) % dtype_size(*dtype) != 0) {
    Tensor copy = Tensor::empty(shape, *dtype);
    std::memcpy(copy.raw_data(), ptr, copy.nbytes());
    return copy;
  }
  // Read-only mapping exposed through a mutable pointer: kernels take inputs as const, and the mapping is
  // MAP_PRIVATE, so even a stray write could never reach the file.
  auto storage = Storage::wrap(const_cast<uint8_t*>(ptr), e.end - e.begin, Device::cpu(), mapping_);
  return Tensor(std::move(storage), 0, shape, *dtype);
}

Tensor SafetensorsReader::load(std::string_view name, std::optional<DType> as, Device device) const {
  const SafetensorsEntry& e = entry(name);
  const auto src_dtype = dtype_from_name(e.dtype);
  if (!as || (src_dtype && *as == *src_dtype)) return view(name).to(device);

  const bool float_src = e.dtype == "F32" || e.dtype == "F64" || e.dtype == "BF16" || e.dtype == "F16";
  if (!float_src || !is_floating(*as))
    fail(SafetensorsErrc::unsupported, str_cat("tensor '", e.name, "': cannot convert ", e.dtype, " to ", dtype_name(*as)));
  if (e.shape.size() > size_t(kMaxDims))
    fail(SafetensorsErrc::unsupported, str_cat("tensor '", e.name, "' has ", e.shape.size(), " dims; at most ", kMaxDims, " are supported"));
  Tensor out = Tensor::empty(Shape(e.shape), *as);
  const uint8_t* src = data_ + e.begin;
  const int64_t n = out.numel();
  for (int64_t i = 0; i < n; ++i) {
    const float v = read_float(src, e.dtype, i);
    switch (*as) {
      case DType::f32: out.data<float>()[i] = v; break;
      case DType::bf16: out.data<bf16_t>()[i] = float_to_bf16(v); break;
      default: out.data<f16_t>()[i] = float_to_f16(v); break;
    }
  }
  return device.is_cpu() ? out : out.to(device);
}

// ---- writer ---------------------------------------------------------------------------------------------

namespace {

[[noreturn]] void write_fail(const std::string& path, const std::string& what) {
  throw SafetensorsError(SafetensorsErrc::io, str_cat(path, ": ", what, ": ", std::strerror(errno)));
}

void write_all(int fd, const void* data, size_t size, const std::string& path) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      write_fail(path, "write failed");
    }
    p += n;
    size -= size_t(n);
  }
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    MFUSER_CHECK(t.defined(), path, ": tensor '", name, "' is undefined");
    MFUSER_CHECK(name != "__metadata__" && !header.contains(name), path, ": tensor name '", name, "' used twice");
    header[name] = {{"dtype", std::string(dtype_name(t.dtype()))},
                    {"shape", std::vector<int64_t>(t.shape().dims().begin(), t.shape().dims().end())},
                    {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data region 8-byte aligned
  uint8_t len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = uint8_t(uint64_t(text.size()) >> (8 * i));

  namespace fs = std::filesystem;
  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  const std::string tmp = (dir / str_cat('.', target.filename().string(), ".tmp.", ::getpid())).string();
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) write_fail(path, "cannot create temporary file " + tmp);
  try {
    write_all(fd, len_bytes, 8, path);
    write_all(fd, text.data(), text.size(), path);
    for (const auto& [name, t] : tensors) {
      const Tensor host = t.device().is_cpu() ? t : t.to(Device::cpu());
      write_all(fd, host.nbytes() ? host.raw_data() : nullptr, host.nbytes(), path);
    }
    if (::fsync(fd) != 0) write_fail(path, "fsync failed");
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::close(fd) != 0) {
    ::unlink(tmp.c_str());
    write_fail(path, "close failed");
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    write_fail(path, "cannot rename the temporary file into place");
  }
  // Make the rename itself durable.
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace mfuser
