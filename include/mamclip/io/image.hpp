#pragma once
// Images: PNG (8- and 16-bit), JPEG and binary PGM/PPM decoded into float
// tensors, and 8-bit PNGs written atomically.
//
//   Image          pixels [C, H, W] float (C = 1 or 3, alpha dropped), values as
//                  stored in the file: 0..255 for 8-bit, 0..65535 (or the PGM's
//                  maxval) for 16-bit; bit_depth 8 or 16; name = path or given name
//   read_image     a file; decode_image: bytes in memory
//   encode_png     [C, H, W] / [H, W] in [0, 1] -> PNG bytes (8-bit, clamped)
//   write_png      encode_png + AtomicFile: a failed write leaves the old file
//
// Hostile files: the size limit (ImageReadOptions::max_pixels) is checked from
// the header before anything is decoded; truncated or corrupt data, empty
// files, unsupported formats (GIF, BMP, TIFF, DICOM, WebP are named) and bad
// channel requests throw io_error / value_error naming the file.
//
// Decoding is stb_image's, encoding stb_image_write's. This header declares the
// few stb functions it calls (the same C declarations as stb's headers) and
// needs their one definition at link time only when these functions are used:
// link the CMake target mamclip::image (a compiled stb, e.g. Debian's libstb),
// or define STB_IMAGE_IMPLEMENTATION and STB_IMAGE_WRITE_IMPLEMENTATION in one
// .cpp of the program before including <stb_image.h> and <stb_image_write.h>.
// See cmake/stb.cmake for why stb is not compiled into this header.
//
// Known stb 2.27 defects guarded here (found by fuzz/fuzz_image.cpp): JPEG
// Huffman tables with more than 256 codes (a write past stb's table) and PNM
// header fields that overflow int are refused before stb parses them; a short
// PNM is refused instead of returning uninitialised memory; 16-bit PNM byte
// order is probed and corrected. Not guardable without decoding: on corrupt
// JPEG entropy data stb's bit reader may shift by more than 31 bits (garbage
// pixels, no out-of-bounds access under ASan), after which an stb built with
// its asserts on (Debian's libstb is) may fail one of them and abort.
//
// stb state: decoding turns stb's per-thread "flip vertically on load" off on
// the calling thread (so another library's stbi_set_flip_vertically_on_load
// cannot flip our images). stbi_flip_vertically_on_write is process-global in
// stb and must stay off while write_png runs.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "mamclip/core/error.hpp"
#include "mamclip/core/factory.hpp"
#include "mamclip/core/tensor.hpp"
#include "mamclip/io/file.hpp"

extern "C" {
// From stb_image.h (v2.x); unsigned char is stb's stbi_uc, unsigned short its stbi_us.
unsigned char* stbi_load_from_memory(const unsigned char* buffer, int len, int* x, int* y, int* channels_in_file,
                                     int desired_channels);
unsigned short* stbi_load_16_from_memory(const unsigned char* buffer, int len, int* x, int* y,
                                         int* channels_in_file, int desired_channels);
int stbi_info_from_memory(const unsigned char* buffer, int len, int* x, int* y, int* comp);
int stbi_is_16_bit_from_memory(const unsigned char* buffer, int len);
void stbi_image_free(void* retval_from_stbi_load);
const char* stbi_failure_reason(void);
void stbi_set_flip_vertically_on_load_thread(int flag_true_if_should_flip);
// From stb_image_write.h.
typedef void stbi_write_func(void* context, void* data, int size);
int stbi_write_png_to_func(stbi_write_func* func, void* context, int w, int h, int comp, const void* data,
                           int stride_in_bytes);
}

namespace mamclip::io {

struct ImageReadOptions {
  // Largest height * width accepted, checked from the header before decoding
  // (2^27 = 128 Mpixel: a 16-bit 4096 x 3328 mammogram is 13.6 Mpixel).
  int64_t max_pixels = int64_t{1} << 27;
  // 0: as stored (gray and gray+alpha -> 1, RGB and RGBA -> 3); 1: gray (RGB is
  // converted by stb's luma, (77 R + 150 G + 29 B) >> 8); 3: RGB (gray replicated).
  int channels = 0;
};

struct Image {
  Tensor<float> pixels;  // [C, H, W]
  int bit_depth = 8;     // 8 or 16
  std::string name;      // the path, or the name given to decode_image
};

namespace detail {

enum class ImageFormat { png, jpeg, pnm, unknown };

inline ImageFormat sniff_image_format(const uint8_t* d, size_t n) {
  static constexpr uint8_t png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  if (n >= 8 && std::memcmp(d, png_magic, 8) == 0) return ImageFormat::png;
  if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return ImageFormat::jpeg;
  if (n >= 2 && d[0] == 'P' && (d[1] == '5' || d[1] == '6')) return ImageFormat::pnm;
  return ImageFormat::unknown;
}

inline const char* image_format_name(ImageFormat f) {
  switch (f) {
    case ImageFormat::png: return "PNG";
    case ImageFormat::jpeg: return "JPEG";
    case ImageFormat::pnm: return "PGM/PPM";
    default: return "unknown";
  }
}

// A name for formats we refuse, so the message says what the file is.
inline std::string describe_unsupported(const uint8_t* d, size_t n) {
  auto starts = [&](const char* magic, size_t len, size_t at = 0) {
    return n >= at + len && std::memcmp(d + at, magic, len) == 0;
  };
  if (starts("GIF8", 4)) return "a GIF";
  if (starts("BM", 2)) return "a BMP";
  if (starts("II*\0", 4) || starts("MM\0*", 4)) return "a TIFF";
  if (starts("DICM", 4, 128)) return "a DICOM file (convert it to PNG first)";
  if (starts("RIFF", 4) && starts("WEBP", 4, 8)) return "a WebP";
  if (n >= 2 && d[0] == 'P' && (d[1] == '1' || d[1] == '2' || d[1] == '3' || d[1] == '4'))
    return "an ASCII or 1-bit PNM (only binary P5/P6 are supported)";
  std::string hex = "not a known image format (first bytes";
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n && i < 8; ++i) {
    hex += ' ';
    hex += digits[d[i] >> 4];
    hex += digits[d[i] & 15];
  }
  return hex + ")";
}

// A binary PNM header (P5 gray / P6 RGB): its size fields and where the
// samples start. stb does not check that the samples are all there (it would
// return uninitialised memory for a short file), so decode_image does.
struct PnmHeader {
  int64_t width = 0, height = 0, maxval = 0, channels = 0, data_offset = 0;
};

inline bool parse_pnm_header(const uint8_t* d, size_t n, PnmHeader& h) {
  size_t pos = 2;
  auto space = [](uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
  int64_t fields[3];
  for (int64_t& f : fields) {
    while (pos < n && (space(d[pos]) || d[pos] == '#')) {
      if (d[pos] == '#')
        while (pos < n && d[pos] != '\n' && d[pos] != '\r') ++pos;
      else
        ++pos;
    }
    if (pos >= n || d[pos] < '0' || d[pos] > '9') return false;
    f = 0;
    while (pos < n && d[pos] >= '0' && d[pos] <= '9') {
      f = f * 10 + (d[pos++] - '0');
      // stb's int parser overflows (undefined behaviour) on long fields; stb
      // caps sizes at 2^24 and maxval at 65535 anyway.
      if (f > (int64_t{1} << 24)) return false;
    }
  }
  if (pos >= n || !space(d[pos])) return false;
  h.width = fields[0], h.height = fields[1], h.maxval = fields[2];
  h.channels = d[1] == '5' ? 1 : 3;
  h.data_offset = static_cast<int64_t>(pos) + 1;
  return true;
}

// Whether this stb returns 16-bit PNM samples byte-swapped (stb 2.27 reads
// them little-endian; PNM stores them big-endian), probed once on a 1 x 1 file.
inline bool stb_swaps_16bit_pnm() {
  static const bool swaps = [] {
    static constexpr unsigned char probe[] = {'P', '5', '\n', '1', ' ', '1', '\n', '6', '5', '5', '3', '5', '\n', 0x01, 0x02};
    int w = 0, h = 0, c = 0;
    unsigned short* p = stbi_load_16_from_memory(probe, static_cast<int>(sizeof(probe)), &w, &h, &c, 1);
    const bool swapped = p != nullptr && p[0] == 0x0201;
    stbi_image_free(p);
    return swapped;
  }();
  return swaps;
}

// stb_image 2.27 (Debian's) writes past its Huffman size table when a JPEG
// DHT segment declares more than 256 codes, so decode_image checks every DHT
// segment, including those between progressive scans, before stb sees the
// file. Returns an empty string when the tables are sane.
inline std::string check_jpeg_huffman_tables(const uint8_t* d, size_t n) {
  size_t pos = 2;  // after SOI
  while (pos + 1 < n) {
    if (d[pos] != 0xFF) {
      ++pos;  // entropy-coded data between markers
      continue;
    }
    const uint8_t m = d[pos + 1];
    // Stuffed zero, fill byte, restart markers and TEM carry no length.
    if (m == 0x00 || m == 0xFF || (m >= 0xD0 && m <= 0xD7) || m == 0x01) {
      pos += m == 0xFF ? 1 : 2;
      continue;
    }
    if (m == 0xD9) break;  // EOI
    if (pos + 4 > n) break;  // truncated: stb reports it
    const size_t len = (size_t{d[pos + 2]} << 8) | d[pos + 3];
    if (len < 2) return "a JPEG segment length below 2";
    const size_t end = std::min(n, pos + 2 + len);
    if (m == 0xC4) {  // DHT: tables of (class/id, 16 counts, symbols)
      size_t p = pos + 4;
      while (p < end) {
        // stb reads all 16 counts even past the segment's declared end (it
        // notices the length mismatch only afterwards); past the end of the
        // file they read as 0.
        size_t codes = 0;
        for (size_t i = 1; i <= 16 && p + i < n; ++i) codes += d[p + i];
        if (codes > 256) return "a JPEG Huffman table (DHT) with " + std::to_string(codes) + " codes (at most 256)";
        p += 17 + codes;
      }
    }
    pos = end;
  }
  return {};
}

inline std::string stb_reason() {
  const char* r = stbi_failure_reason();
  return r ? std::string(r) : std::string("unknown error");
}

struct StbFree {
  void operator()(void* p) const { stbi_image_free(p); }
};

// Interleaved [H, W, C] -> planar [C, H, W] floats.
template <class Pixel>
Tensor<float> planar_from_interleaved(const Pixel* src, int64_t h, int64_t w, int64_t c) {
  Tensor<float> out = empty<float>({c, h, w});
  float* dst = out.data_ptr();
  const int64_t plane = h * w;
  if (c == 1) {
    for (int64_t i = 0; i < plane; ++i) dst[i] = static_cast<float>(src[i]);
  } else {
    for (int64_t i = 0; i < plane; ++i)
      for (int64_t k = 0; k < c; ++k) dst[k * plane + i] = static_cast<float>(src[i * c + k]);
  }
  return out;
}

// [C, H, W] gray <-> RGB the way stb converts: replication, or the luma
// (77 R + 150 G + 29 B) >> 8 on integer samples.
inline Tensor<float> convert_channels(const Tensor<float>& chw, int channels) {
  const int64_t h = chw.size(1), w = chw.size(2), plane = h * w;
  Tensor<float> out = empty<float>({channels, h, w});
  const float* s = chw.data_ptr();
  float* d = out.data_ptr();
  if (channels == 3) {
    for (int k = 0; k < 3; ++k) std::memcpy(d + k * plane, s, sizeof(float) * plane);
  } else {
    for (int64_t i = 0; i < plane; ++i) {
      const auto r = static_cast<int64_t>(s[i]), g = static_cast<int64_t>(s[plane + i]),
                 b = static_cast<int64_t>(s[2 * plane + i]);
      d[i] = static_cast<float>((r * 77 + g * 150 + b * 29) >> 8);
    }
  }
  return out;
}

}  // namespace detail

// Decodes an image held in memory. `name` stands for the file in messages.
inline Image decode_image(const uint8_t* data, size_t size, const std::string& name,
                          const ImageReadOptions& options = {}) {
  MAMCLIP_CHECK(options.channels == 0 || options.channels == 1 || options.channels == 3, value_error,
                "decode_image: ImageReadOptions::channels is ", options.channels, " for '", name,
                "'; expected 0 (as stored), 1 or 3");
  MAMCLIP_CHECK(options.max_pixels > 0, value_error, "decode_image: ImageReadOptions::max_pixels is ",
                options.max_pixels, " for '", name, "'; expected > 0");
  MAMCLIP_CHECK(size > 0, io_error, "decode_image: '", name, "' is empty (0 bytes)");
  MAMCLIP_CHECK(data != nullptr, value_error, "decode_image: no data for '", name, "' (", size, " bytes)");
  // stb takes an int length.
  MAMCLIP_CHECK(size <= static_cast<size_t>(std::numeric_limits<int>::max()), io_error, "decode_image: '", name,
                "' is ", size, " bytes; images over 2 GiB are not supported");
  const detail::ImageFormat format = detail::sniff_image_format(data, size);
  MAMCLIP_CHECK(format != detail::ImageFormat::unknown, io_error, "decode_image: '", name, "' is ",
                detail::describe_unsupported(data, size), "; supported: PNG, JPEG, PGM/PPM (binary P5/P6)");
  const char* fmt = detail::image_format_name(format);
  if (format == detail::ImageFormat::jpeg) {
    const std::string bad = detail::check_jpeg_huffman_tables(data, size);
    MAMCLIP_CHECK(bad.empty(), io_error, "decode_image: '", name, "': corrupt JPEG: ", bad);
  }
  const int len = static_cast<int>(size);

  detail::PnmHeader pnm;
  if (format == detail::ImageFormat::pnm) {
    MAMCLIP_CHECK(detail::parse_pnm_header(data, size, pnm) && pnm.maxval >= 1 && pnm.maxval <= 65535, io_error,
                  "decode_image: '", name, "': corrupt PGM/PPM header (sizes up to 2^24, maxval 1 to 65535)");
  }
  int w = 0, h = 0, comp = 0;
  MAMCLIP_CHECK(stbi_info_from_memory(data, len, &w, &h, &comp) == 1, io_error, "decode_image: '", name,
                "': corrupt or truncated ", fmt, " header (", size, " bytes): ", detail::stb_reason());
  MAMCLIP_CHECK(w > 0 && h > 0, io_error, "decode_image: '", name, "' is a ", fmt, " of ", w, " x ", h,
                " pixels; expected a non-empty image");
  MAMCLIP_CHECK(comp >= 1 && comp <= 4, io_error, "decode_image: '", name, "' has ", comp,
                " channels in its header; expected 1 to 4");
  const int64_t pixels = int64_t{w} * int64_t{h};
  MAMCLIP_CHECK(pixels <= options.max_pixels, io_error, "decode_image: '", name, "' is a ", fmt, " of ", w,
                " x ", h, " = ", pixels, " pixels, more than ImageReadOptions::max_pixels = ", options.max_pixels);
  const bool sixteen = stbi_is_16_bit_from_memory(data, len) == 1;
  if (format == detail::ImageFormat::pnm) {
    MAMCLIP_CHECK(pnm.width == w && pnm.height == h, io_error, "decode_image: '", name,
                  "': corrupt PGM/PPM header");
    const int64_t need = pnm.data_offset + pixels * pnm.channels * (sixteen ? 2 : 1);
    MAMCLIP_CHECK(static_cast<int64_t>(size) >= need, io_error, "decode_image: '", name, "': truncated PGM/PPM: ", w,
                  " x ", h, " x ", pnm.channels, (sixteen ? " 16-bit" : " 8-bit"), " samples need ", need,
                  " bytes, the file has ", size);
  }
  const int stored = comp <= 2 ? 1 : 3;  // alpha dropped
  const int channels = options.channels == 0 ? stored : options.channels;

  stbi_set_flip_vertically_on_load_thread(0);
  int dw = 0, dh = 0, dcomp = 0;
  Image out;
  out.name = name;
  out.bit_depth = sixteen ? 16 : 8;
  if (sixteen) {
    // A byte-swapping stb must not convert channels before we swap.
    const bool swap = format == detail::ImageFormat::pnm && detail::stb_swaps_16bit_pnm();
    const int load = swap ? stored : channels;
    std::unique_ptr<unsigned short, detail::StbFree> p(stbi_load_16_from_memory(data, len, &dw, &dh, &dcomp, load));
    MAMCLIP_CHECK(p != nullptr, io_error, "decode_image: '", name, "': cannot decode the 16-bit ", fmt, " (", w,
                  " x ", h, ", ", size, " bytes; corrupt or truncated?): ", detail::stb_reason());
    MAMCLIP_CHECK(dw == w && dh == h, io_error, "decode_image: '", name, "': the ", fmt, " header says ", w, " x ", h,
                  " but the data decodes to ", dw, " x ", dh);
    if (swap) {
      unsigned short* q = p.get();
      for (int64_t i = 0; i < pixels * load; ++i) q[i] = static_cast<unsigned short>((q[i] >> 8) | (q[i] << 8));
    }
    out.pixels = detail::planar_from_interleaved(p.get(), h, w, load);
    if (load != channels) out.pixels = detail::convert_channels(out.pixels, channels);
  } else {
    std::unique_ptr<unsigned char, detail::StbFree> p(stbi_load_from_memory(data, len, &dw, &dh, &dcomp, channels));
    MAMCLIP_CHECK(p != nullptr, io_error, "decode_image: '", name, "': cannot decode the ", fmt, " (", w, " x ", h,
                  ", ", size, " bytes; corrupt or truncated?): ", detail::stb_reason());
    MAMCLIP_CHECK(dw == w && dh == h, io_error, "decode_image: '", name, "': the ", fmt, " header says ", w, " x ", h,
                  " but the data decodes to ", dw, " x ", dh);
    out.pixels = detail::planar_from_interleaved(p.get(), h, w, channels);
  }
  return out;
}

inline Image read_image(const std::filesystem::path& path, const ImageReadOptions& options = {}) {
  const auto bytes = FileBytes::map(path.string());
  return decode_image(bytes->data(), bytes->size(), path.string(), options);
}

// PNG bytes of `image`: [C, H, W] with C in {1, 3, 4} or [H, W]; values in
// [0, 1] are clamped and stored as round(255 x), 8-bit. NaN is refused.
inline std::vector<uint8_t> encode_png(const Tensor<float>& image) {
  MAMCLIP_CHECK(image.defined(), value_error, "encode_png: the image tensor is undefined");
  MAMCLIP_CHECK(image.device().is_cpu(), device_error, "encode_png: the image is on ", image.device(),
                "; expected a CPU tensor");
  MAMCLIP_CHECK(image.dim() == 2 || image.dim() == 3, shape_error, "encode_png: image has shape ",
                shape_str(image.shape()), "; expected [C, H, W] or [H, W]");
  const bool rank2 = image.dim() == 2;
  const int64_t c = rank2 ? 1 : image.size(0), h = image.size(rank2 ? 0 : 1), w = image.size(rank2 ? 1 : 2);
  // Element strides of [C, H, W] (any layout, views included).
  const int64_t sc = rank2 ? 0 : image.stride(0), sh = image.stride(rank2 ? 0 : 1), sw = image.stride(rank2 ? 1 : 2);
  MAMCLIP_CHECK(c == 1 || c == 3 || c == 4, shape_error, "encode_png: image has shape ", shape_str(image.shape()),
                "; expected 1, 3 or 4 channels");
  MAMCLIP_CHECK(h > 0 && w > 0, shape_error, "encode_png: image has shape ", shape_str(image.shape()),
                "; expected a non-empty image");
  // stb_image_write takes int sizes and an int row stride.
  MAMCLIP_CHECK(h <= std::numeric_limits<int>::max() && w * c <= std::numeric_limits<int>::max(), shape_error,
                "encode_png: image has shape ", shape_str(image.shape()), "; too large for PNG rows");
  const float* src = image.data_ptr();
  std::vector<uint8_t> interleaved(static_cast<size_t>(h * w * c));
  for (int64_t k = 0; k < c; ++k) {
    for (int64_t y = 0; y < h; ++y) {
      for (int64_t x = 0; x < w; ++x) {
        const float v = src[k * sc + y * sh + x * sw];
        MAMCLIP_CHECK(!std::isnan(v), value_error, "encode_png: NaN at channel ", k, ", row ", y, ", column ", x);
        const float clamped = v < 0.f ? 0.f : (v > 1.f ? 1.f : v);
        interleaved[static_cast<size_t>((y * w + x) * c + k)] = static_cast<uint8_t>(std::lround(clamped * 255.f));
      }
    }
  }
  std::vector<uint8_t> out;
  auto sink = [](void* context, void* bytes, int n) {
    auto* v = static_cast<std::vector<uint8_t>*>(context);
    v->insert(v->end(), static_cast<const uint8_t*>(bytes), static_cast<const uint8_t*>(bytes) + n);
  };
  MAMCLIP_CHECK(stbi_write_png_to_func(sink, &out, static_cast<int>(w), static_cast<int>(h), static_cast<int>(c),
                                       interleaved.data(), static_cast<int>(w * c)) != 0,
                io_error, "encode_png: stb_image_write failed for a ", c, " x ", h, " x ", w, " image (out of memory?)");
  return out;
}

// Writes `image` (see encode_png) to `path` through a temporary file and a
// rename: an error leaves an existing file at `path` unchanged.
inline void write_png(const std::filesystem::path& path, const Tensor<float>& image) {
  const std::vector<uint8_t> bytes = encode_png(image);
  AtomicFile file(path.string());
  file.write(bytes.data(), bytes.size());
  file.commit();
}

}  // namespace mamclip::io
