// libFuzzer target for io/image.hpp's decoder: no input may crash, read out
// of bounds, leak or allocate past the size limit; every rejection is a
// mamclip::error. What decodes must be a [C, H, W] image with C in {1, 3},
// H * W within the limit and samples within the bit depth's range, and it
// must survive encode_png / decode_image unchanged in 8 bits.
//
// The stb implementation is compiled into this program (instrumented with the
// sanitizers, unlike a system libstb), the way a program without a compiled
// stb provides it. Built and run by fuzz/run_fuzzers.sh.

// stb's internal asserts fire on corrupt JPEG entropy data once its bit reader
// has over-shifted (see run_fuzzers.sh); they are off here, as in NDEBUG
// builds, so the fuzzer keeps looking for memory errors, which ASan still catches.
#define STBI_ASSERT(x) ((void)0)
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image.h>
#include <stb_image_write.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "mamclip/io/image.hpp"

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_image: property violated: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mamclip;
  io::ImageReadOptions options;
  options.max_pixels = int64_t{1} << 22;  // keeps each run fast; the check is the same at any limit
  options.channels = size > 0 ? (data[size - 1] % 3 == 0 ? 0 : (data[size - 1] % 3 == 1 ? 1 : 3)) : 0;
  io::Image img;
  try {
    img = io::decode_image(data, size, "fuzz", options);
  } catch (const mamclip::error&) {
    return 0;
  }
  const Tensor<float>& p = img.pixels;
  if (p.dim() != 3) fail("not [C, H, W]");
  const int64_t c = p.size(0), h = p.size(1), w = p.size(2);
  if (!(c == 1 || c == 3) || (options.channels != 0 && c != options.channels)) fail("channel count");
  if (h <= 0 || w <= 0 || h * w > options.max_pixels) fail("size limit");
  if (img.bit_depth != 8 && img.bit_depth != 16) fail("bit depth");
  const float top = img.bit_depth == 8 ? 255.f : 65535.f;
  const float* v = p.data_ptr();
  for (int64_t i = 0; i < p.numel(); ++i)
    if (!(v[i] >= 0.f && v[i] <= top) || v[i] != static_cast<float>(static_cast<int64_t>(v[i]))) fail("sample range");
  if (img.bit_depth == 8 && h * w <= 4096) {
    try {
      Tensor<float> unit = empty<float>(p.shape());  // core only: scale by hand
      for (int64_t i = 0; i < unit.numel(); ++i) unit.data_ptr()[i] = v[i] / 255.f;
      const std::vector<uint8_t> png = io::encode_png(unit);
      const io::Image back = io::decode_image(png.data(), png.size(), "re-encoded");
      if (back.pixels.shape() != p.shape() || back.pixels.to_vector() != p.to_vector()) fail("PNG round trip");
    } catch (const mamclip::error&) {
      fail("re-encoding a decoded image failed");
    }
  }
  return 0;
}
