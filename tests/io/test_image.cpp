// io/image.hpp: decoding every supported layout against PIL / OpenCV
// (tests/fixtures/image, tools/make_image_fixture.py), typed errors for
// hostile files, and PNG writing (round trip, atomic replacement).

#include <filesystem>
#include <fstream>

#include "support/test_support.hpp"
#include "mamclip/io/image.hpp"

// Included after our header so the compiler checks that io/image.hpp's own
// declarations of the stb functions agree with stb's.
#include <stb_image.h>
#include <stb_image_write.h>

namespace test_image {
using namespace mamclip;

namespace {

std::string file(const std::string& name) { return test::fixture_path("image/files/" + name); }

using test::max_abs_diff;
using test::files::read_bytes;

io::Image decode(const std::vector<uint8_t>& b, const io::ImageReadOptions& o = {}) {
  return io::decode_image(b.data(), b.size(), "test.img", o);
}

}  // namespace

TEST_CASE("read_image decodes PNG 8/16-bit, gray+alpha, RGBA, palette, JPEG, PGM 8/16-bit and PPM like PIL") {
  const io::SafetensorsFile ref(test::fixture_path("image/decoded.safetensors"));
  const auto depth = nlohmann::json::parse(ref.metadata().at("bit_depth"));
  REQUIRE(ref.names().size() == 12);
  for (const auto& name : ref.names()) {
    INFO(name);
    const io::Image img = io::read_image(file(name));
    const Tensor<float> expected = ref.get<float>(name);
    CHECK(img.pixels.shape() == expected.shape());
    CHECK(img.bit_depth == depth.at(name).get<int>());
    CHECK(img.name == file(name));
    // JPEG decoders (stb vs libjpeg-turbo) differ in IDCT and chroma upsampling.
    const bool jpeg = name.ends_with(".jpg");
    CHECK(max_abs_diff(img.pixels, expected) <= (jpeg ? 4.0 : 0.0));
  }
  const io::Image g16 = io::read_image(file("gray16.png"));
  const auto v = g16.pixels.to_vector();
  CHECK(*std::max_element(v.begin(), v.end()) > 60000.f);  // 16-bit values, not rescaled to 8 bits
  // 16-bit PGM samples are big-endian; converting a 16-bit PPM to gray uses the unswapped values.
  io::ImageReadOptions gray;
  gray.channels = 1;
  const io::Image p16 = io::read_image(file("gray16.pgm"));
  CHECK(max_abs_diff(p16.pixels, g16.pixels) == 0.0);
  const io::Image rgb16 = io::read_image(file("rgb16.png"));
  const io::Image gray16 = io::read_image(file("rgb16.png"), gray);
  CHECK(gray16.pixels(0, 3, 4) == static_cast<float>((77 * static_cast<int64_t>(rgb16.pixels(0, 3, 4)) +
                                                      150 * static_cast<int64_t>(rgb16.pixels(1, 3, 4)) +
                                                      29 * static_cast<int64_t>(rgb16.pixels(2, 3, 4))) >> 8));
}

TEST_CASE("ImageReadOptions::channels converts gray <-> RGB; bad values are refused") {
  const io::Image rgb = io::read_image(file("rgb8.png"));
  io::ImageReadOptions gray;
  gray.channels = 1;
  const io::Image g = io::read_image(file("rgb8.png"), gray);
  REQUIRE(g.pixels.shape() == Shape{1, 17, 23});
  // stb's luma: (77 R + 150 G + 29 B) >> 8.
  bool ok = true;
  for (int64_t y = 0; y < 17; ++y)
    for (int64_t x = 0; x < 23; ++x) {
      const int r = static_cast<int>(rgb.pixels(0, y, x)), gg = static_cast<int>(rgb.pixels(1, y, x)),
                b = static_cast<int>(rgb.pixels(2, y, x));
      ok = ok && g.pixels(0, y, x) == static_cast<float>((77 * r + 150 * gg + 29 * b) >> 8);
    }
  CHECK(ok);
  io::ImageReadOptions three;
  three.channels = 3;
  const io::Image g3 = io::read_image(file("gray16.png"), three);
  const io::Image g1 = io::read_image(file("gray16.png"));
  REQUIRE(g3.pixels.shape() == Shape{3, 17, 23});
  for (int64_t k = 0; k < 3; ++k) CHECK(max_abs_diff(g3.pixels.select(0, k).unsqueeze(0).contiguous(), g1.pixels) == 0);
  io::ImageReadOptions bad;
  bad.channels = 2;
  MAMCLIP_REQUIRE_THROWS_WITH(io::read_image(file("gray8.png"), bad), value_error,
                              "ImageReadOptions::channels is 2 for '");
}

TEST_CASE("decode_image refuses empty, truncated, corrupt, unsupported and oversized files by name") {
  const std::vector<uint8_t> png = read_bytes(file("gray8.png"));
  const std::vector<uint8_t> jpg = read_bytes(file("rgb.jpg"));
  MAMCLIP_REQUIRE_THROWS_WITH(io::decode_image(png.data(), 0, "empty.png"), io_error, "'empty.png' is empty");
  MAMCLIP_REQUIRE_THROWS_WITH(io::read_image(file("missing.png")), io_error, "missing.png");

  // Truncated at every length: never a crash, always io_error naming the file.
  for (size_t n = 1; n < png.size(); n += 7) {
    INFO("PNG truncated to " << n << " bytes");
    MAMCLIP_REQUIRE_THROWS_WITH(io::decode_image(png.data(), n, "cut.png"), io_error, "'cut.png'");
  }
  for (size_t n = 1; n < jpg.size(); n += 13) {
    INFO("JPEG truncated to " << n << " bytes");
    // stb decodes some truncated JPEGs (missing scan data reads as grey); it must not crash.
    try {
      const io::Image img = io::decode_image(jpg.data(), n, "cut.jpg");
      CHECK(img.pixels.shape() == Shape{3, 17, 23});
    } catch (const io_error& e) {
      CHECK_THAT(e.what(), Catch::Matchers::Contains("'cut.jpg'"));
    }
  }
  // A corrupt PNG: the IDAT data overwritten.
  std::vector<uint8_t> corrupt = png;
  for (size_t i = 60; i < corrupt.size() - 20; ++i) corrupt[i] ^= 0x5A;
  MAMCLIP_REQUIRE_THROWS_WITH(decode(corrupt), io_error, "'test.img': cannot decode the PNG");

  const std::vector<uint8_t> gif = {'G', 'I', 'F', '8', '9', 'a', 1, 0, 1, 0, 0, 0, 0};
  MAMCLIP_REQUIRE_THROWS_WITH(decode(gif), io_error, "'test.img' is a GIF; supported: PNG, JPEG, PGM/PPM");
  std::vector<uint8_t> dicom(200, 0);
  std::memcpy(dicom.data() + 128, "DICM", 4);
  MAMCLIP_REQUIRE_THROWS_WITH(decode(dicom), io_error, "a DICOM file (convert it to PNG first)");
  const std::vector<uint8_t> text = {'h', 'e', 'l', 'l', 'o'};
  MAMCLIP_REQUIRE_THROWS_WITH(decode(text), io_error, "not a known image format (first bytes 68 65 6c 6c 6f)");
  const std::string ascii_pgm = "P2\n2 2\n255\n0 1 2 3\n";
  MAMCLIP_REQUIRE_THROWS_WITH(decode(std::vector<uint8_t>(ascii_pgm.begin(), ascii_pgm.end())), io_error,
                              "ASCII or 1-bit PNM");

  // Found by fuzz_image: stb 2.27's PNM header parser overflows int on long fields.
  const std::string long_field = "P5\n2222222222222 1\n255\n";
  MAMCLIP_REQUIRE_THROWS_WITH(decode(std::vector<uint8_t>(long_field.begin(), long_field.end())), io_error,
                              "corrupt PGM/PPM header (sizes up to 2^24, maxval 1 to 65535)");
  const std::string big_maxval = "P5\n1 1\n65536\nab";
  MAMCLIP_REQUIRE_THROWS_WITH(decode(std::vector<uint8_t>(big_maxval.begin(), big_maxval.end())), io_error,
                              "corrupt PGM/PPM header");
  // Size limit from the header, before decoding: a PGM header claiming 100000 x 100000.
  const std::string huge = "P5\n100000 100000\n255\n";
  MAMCLIP_REQUIRE_THROWS_WITH(decode(std::vector<uint8_t>(huge.begin(), huge.end())), io_error,
                              "100000 x 100000 = 10000000000 pixels, more than ImageReadOptions::max_pixels");
  io::ImageReadOptions small;
  small.max_pixels = 100;
  MAMCLIP_REQUIRE_THROWS_WITH(io::read_image(file("gray8.png"), small), io_error,
                              "23 x 17 = 391 pixels, more than ImageReadOptions::max_pixels = 100");
  // A PNG header with zero width.
  std::vector<uint8_t> zero = png;
  zero[16] = zero[17] = zero[18] = zero[19] = 0;
  MAMCLIP_REQUIRE_THROWS_WITH(decode(zero), io_error, "'test.img'");
  // A PGM whose pixel data stops short (stb itself would return uninitialised memory).
  const std::string short_pgm = "P5\n4 4\n255\nabc";
  MAMCLIP_REQUIRE_THROWS_WITH(decode(std::vector<uint8_t>(short_pgm.begin(), short_pgm.end())), io_error,
                              "'test.img': truncated PGM/PPM: 4 x 4 x 1 8-bit samples need 27 bytes, the file has 14");
  const std::vector<uint8_t> pgm16 = read_bytes(file("gray16.pgm"));
  MAMCLIP_REQUIRE_THROWS_WITH(io::decode_image(pgm16.data(), pgm16.size() - 1, "g.pgm"), io_error,
                              "truncated PGM/PPM: 23 x 17 x 1 16-bit samples");
}

TEST_CASE("encode_png / write_png: 8-bit round trip, clamping, rank 2 and 3, atomic replacement") {
  const Tensor<float> img = test::uniform_random<float>({3, 9, 14}, 7, -0.2, 1.2);
  const io::Image back = decode(io::encode_png(img));
  REQUIRE(back.pixels.shape() == Shape{3, 9, 14});
  CHECK(back.bit_depth == 8);
  bool ok = true;
  const auto a = img.to_vector(), b = back.pixels.to_vector();
  for (size_t i = 0; i < a.size(); ++i)
    ok = ok && b[i] == static_cast<float>(std::lround(std::clamp(a[i], 0.f, 1.f) * 255.f));
  CHECK(ok);

  const test::files::TempDir dir("image");
  const auto path = dir / "gray.png";
  const Tensor<float> gray = test::uniform_random<float>({6, 5}, 8, 0.0, 1.0);
  io::write_png(path, gray.t());  // non-contiguous [5, 6]
  const io::Image g = io::read_image(path);
  REQUIRE(g.pixels.shape() == Shape{1, 5, 6});
  CHECK(max_abs_diff(g.pixels.squeeze(0), (gray.t().contiguous() * 255.0)) <= 0.5 + 1e-4);

  // A failed write leaves the previous file untouched.
  const auto before = read_bytes(path);
  Tensor<float> nan_img = gray.clone();
  nan_img.data_ptr()[3] = NAN;
  MAMCLIP_REQUIRE_THROWS_WITH(io::write_png(path, nan_img), value_error, "encode_png: NaN at channel 0, row 0, column 3");
  CHECK(read_bytes(path) == before);
  MAMCLIP_REQUIRE_THROWS_WITH(io::write_png(dir / "no" / "such" / "dir.png", gray), io_error, "dir.png");
  MAMCLIP_REQUIRE_THROWS_WITH(io::encode_png(zeros<float>({2, 4, 4})), shape_error, "expected 1, 3 or 4 channels");
  MAMCLIP_REQUIRE_THROWS_WITH(io::encode_png(zeros<float>({4})), shape_error, "expected [C, H, W] or [H, W]");
}

TEST_CASE("another library's stbi_set_flip_vertically_on_load does not flip our images") {
  const io::Image plain = io::read_image(file("gray8.png"));
  stbi_set_flip_vertically_on_load(1);  // process-global
  const io::Image again = io::read_image(file("gray8.png"));
  stbi_set_flip_vertically_on_load(0);
  CHECK(max_abs_diff(plain.pixels, again.pixels) == 0.0);
}

TEST_CASE("regression: a JPEG whose DHT declares more than 256 codes is refused before stb overflows its table") {
  // Found by fuzz/fuzz_image.cpp: stb_image 2.27 writes past stbi__huffman::size.
  const std::string path = test::fixture_path("image/regressions/jpeg_dht_2575_codes.jpg");
  MAMCLIP_REQUIRE_THROWS_WITH(io::read_image(path), io_error,
                              "corrupt JPEG: a JPEG Huffman table (DHT) with 2575 codes (at most 256)");
  // The same table cut short inside its counts still sums what is there.
  const std::vector<uint8_t> b = read_bytes(path);
  MAMCLIP_REQUIRE_THROWS_WITH(io::decode_image(b.data(), 436, "cut.jpg"), io_error, "(DHT) with 588 codes");
  // A DHT segment whose declared length ends inside its counts: stb reads all 16 anyway.
  MAMCLIP_REQUIRE_THROWS_WITH(io::read_image(test::fixture_path("image/regressions/jpeg_dht_short_segment.jpg")),
                              io_error, "corrupt JPEG: a JPEG Huffman table (DHT) with");
  // Corrupt entropy data that makes stb 2.27's bit reader over-shift (the second file
  // trips stb's own assert in a build with STBI_ASSERT on): an image or an io_error.
  for (const char* name : {"jpeg_huffman_shift.jpg", "jpeg_huffman_assert.jpg"}) {
    try {
      const io::Image img = io::read_image(test::fixture_path(std::string("image/regressions/") + name));
      CHECK(img.pixels.dim() == 3);
    } catch (const io_error& e) {
      CHECK_THAT(e.what(), Catch::Matchers::Contains(name));
    }
  }
  // Valid files pass the check.
  CHECK(io::read_image(file("rgb.jpg")).pixels.size(0) == 3);
}

}  // namespace test_image
