// safetensors: round trips of every dtype, files written by the reference
// Python package (read them; write the same bytes), sharded checkpoints,
// corrupt and hostile files, atomic saves.
#include "support/test_support.hpp"

#include <signal.h>
#include <sys/resource.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>

#include "mamclip/io/io.hpp"

namespace test_safetensors {
using namespace mamclip;
using namespace mamclip::test;
using namespace mamclip::test::files;
namespace fs = std::filesystem;

namespace {

std::string st_fixture(const std::string& name) { return fixture_path("safetensors/" + name); }

// Row-major values of a CPU tensor of any layout (bool included).
template <class T>
std::vector<double> values(const Tensor<T>& t) {
  std::vector<double> out;
  const T* p = t.data_ptr();
  if (t.numel() == 0) return out;
  mamclip::detail::for_each_offset<1>(t.shape(), {t.strides()},
                                      [&](const std::array<int64_t, 1>& o) { out.push_back(static_cast<double>(p[o[0]])); });
  return out;
}
template <class T>
std::vector<int64_t> int_values(const Tensor<T>& t) {
  std::vector<int64_t> out;
  const T* p = t.data_ptr();
  if (t.numel() == 0) return out;
  mamclip::detail::for_each_offset<1>(t.shape(), {t.strides()},
                                      [&](const std::array<int64_t, 1>& o) { out.push_back(static_cast<int64_t>(p[o[0]])); });
  return out;
}

// A [r, c] tensor holding `rowmajor` whose storage is the transpose (strides {1, r}).
template <class T>
Tensor<T> transposed_layout(const std::vector<T>& rowmajor, int64_t r, int64_t c) {
  Tensor<T> store = Tensor<T>::empty({c, r});
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) store.data_ptr()[j * r + i] = rowmajor[static_cast<size_t>(i * c + j)];
  Tensor<T> v = Tensor<T>::from_storage(store.storage(), 0, {r, c}, {1, r});
  REQUIRE_FALSE(v.is_contiguous());
  return v;
}

// The bytes of a safetensors file: size field (header.size() unless given), header, data.
std::vector<uint8_t> st_bytes(const std::string& header, size_t data_len, std::optional<uint64_t> n = {}) {
  const uint64_t size = n ? *n : header.size();
  std::vector<uint8_t> b(8 + header.size() + data_len);
  for (size_t i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(size >> (8 * i));
  for (size_t i = 0; i < header.size(); ++i) b[8 + i] = static_cast<uint8_t>(header[i]);
  for (size_t i = 0; i < data_len; ++i) b[8 + header.size() + i] = static_cast<uint8_t>(i % 2);  // valid BOOL bytes too
  return b;
}
io::SafetensorsFile open_bytes(const std::vector<uint8_t>& b) { return io::SafetensorsFile::from_bytes(b, "bad.safetensors"); }

// Element values of a fixture entry {"dtype", "shape", "data"}.
std::vector<double> json_values(const nlohmann::json& j) {
  std::vector<double> v;
  for (const auto& x : j.at("data")) v.push_back(x.get<double>());
  return v;
}
std::vector<int64_t> json_ints(const nlohmann::json& j) {
  std::vector<int64_t> v;
  for (const auto& x : j.at("data")) v.push_back(x.get<int64_t>());
  return v;
}

// Values of an AnyStoredTensor as doubles (exact for every stored type but
// the extreme int64 values, which the tests compare as integers).
std::vector<double> any_values(const io::AnyStoredTensor& t) {
  return std::visit([](const auto& x) { return values(x); }, t);
}

const std::map<std::string, io::StDtype> kTorchToSt = {
    {"float64", io::StDtype::F64}, {"float32", io::StDtype::F32}, {"float16", io::StDtype::F16},
    {"bfloat16", io::StDtype::BF16}, {"int64", io::StDtype::I64}, {"int32", io::StDtype::I32},
    {"int16", io::StDtype::I16}, {"int8", io::StDtype::I8}, {"uint8", io::StDtype::U8},
    {"bool", io::StDtype::BOOL}, {"uint16", io::StDtype::U16}, {"float8_e4m3fn", io::StDtype::F8_E4M3}};

}  // namespace

TEST_CASE("round trip of every writable dtype, 0-dim, empty and non-contiguous tensors") {
  TempDir dir("roundtrip");
  Generator g(7);
  auto f32 = noncontiguous(randn<float>({5, 9}, g));
  auto f64 = randn<double>({3, 7, 2}, g);
  auto f16 = noncontiguous(randn<float>({11}, g)).to<half>();
  auto bf16 = randn<float>({4, 3}, g).to<bfloat16>().t();
  REQUIRE_FALSE(bf16.is_contiguous());
  std::vector<int64_t> i64v = {0, -1, std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min(), 1LL << 40,
                               -12345};
  auto i64 = transposed_layout<int64_t>(i64v, 2, 3);
  auto i32 = randint<int32_t>(-1000000, 1000000, {13}, g);
  auto u8 = transposed_layout<uint8_t>({0, 255, 7, 128, 1, 2, 3, 4}, 2, 4);
  auto b = transposed_layout<bool>({true, false, false, true, true, true}, 3, 2);
  auto sc = scalar<double>(-2.5);
  auto empty_a = zeros<float>({0, 3});
  auto empty_b = zeros<int64_t>({2, 0, 5});

  io::NamedTensors ts = {{"z.f32", f32}, {"f64", f64},   {"f16", f16},         {"bf16", bf16},
                         {"i64", i64},   {"i32", i32},   {"u8", u8},           {"b", b},
                         {"scalar", sc}, {"empty_a", empty_a}, {"a/empty_b", empty_b}};
  const io::Metadata meta = {{"format", "pt"}, {"note \"quoted\"\n", "caf\xc3\xa9 \\ \x01"}};
  const auto path = (dir / "m.safetensors").string();
  io::save_safetensors(path, ts, meta);
  CHECK(dir.entries() == std::vector<std::string>{"m.safetensors"});  // no temporary left behind

  io::SafetensorsFile f(path);
  CHECK(f.path() == path);
  CHECK(f.metadata() == meta);
  std::vector<std::string> given;
  for (const auto& [n, t] : ts) given.push_back(n);
  CHECK(f.names() == given);  // written in the given order
  CHECK(f.data_offset() % 8 == 0);

  for (const auto& [name, t] : ts) {
    INFO(name);
    const auto& info = f.info(name);
    CHECK(info.name == name);
    CHECK(info.dtype == io::st_dtype_of(t));
    CHECK(info.shape == io::shape_of(t));
    const auto back = f.get_any(name);
    REQUIRE(back.index() == t.index());
    std::visit(
        [&](const auto& orig) {
          using T = typename std::decay_t<decltype(orig)>::value_type;
          const Tensor<T> r = std::get<Tensor<T>>(back);
          if (r.numel() > 0) CHECK(r.is_contiguous());  // core calls some empty layouts non-contiguous
          CHECK_FALSE(r.shares_storage_with(orig));
          CHECK(r.shape() == orig.shape());
          CHECK(int_values(r) == int_values(orig));
          CHECK(values(r) == values(orig));
        },
        t);
  }
  // Values checked exactly above; spot checks that the data really are there.
  CHECK(f.get<int64_t>("i64")(0, 2) == std::numeric_limits<int64_t>::max());
  CHECK(f.get<int64_t>("i64")(1, 0) == std::numeric_limits<int64_t>::min());
  CHECK(f.get<bool>("b")(0, 0));
  CHECK_FALSE(f.get<bool>("b")(0, 1));
  CHECK(f.get<double>("scalar").dim() == 0);
  CHECK(f.get<double>("scalar").item() == -2.5);
  CHECK(f.get<float>("empty_a").shape() == Shape{0, 3});
  CHECK(f.info("a/empty_b").nbytes() == 0);

  // In-memory serialization gives the file's bytes.
  CHECK(io::serialize_safetensors(ts, meta) == read_bytes(path));

  // Saving over an existing file replaces it.
  io::save_safetensors(path, io::NamedTensors{{"only", sc}});
  CHECK(io::SafetensorsFile(path).names() == std::vector<std::string>{"only"});
  CHECK(io::SafetensorsFile(path).metadata().empty());
}

TEST_CASE("an empty tensor list is a valid file") {
  const auto b = io::serialize_safetensors({});
  CHECK(b.size() == 16);  // size field + "{}" padded to 8
  auto f = io::SafetensorsFile::from_bytes(b);
  CHECK(f.size() == 0);
  CHECK(f.names().empty());
}

TEST_CASE("get converts between floating types and widens integers") {
  Generator g(3);
  auto x = randn<double>({3, 4}, g);
  io::NamedTensors ts = {{"x", x}, {"h", x.to<half>()}, {"i8", from_vector<uint8_t>({0, 200, 255})},
                         {"i32", from_vector<int32_t>({-7, 1 << 30})}};
  auto f = io::SafetensorsFile::from_bytes(io::serialize_safetensors(ts));
  // F64 -> float/half/bfloat16 round like a cast; F16 -> double is exact.
  const auto xs = values(x);
  const auto as_f = values(f.get<float>("x"));
  const auto as_h = values(f.get<half>("x"));
  const auto as_b = values(f.get<bfloat16>("x"));
  for (size_t i = 0; i < xs.size(); ++i) {
    CHECK(as_f[i] == static_cast<double>(static_cast<float>(xs[i])));
    CHECK(as_h[i] == static_cast<double>(static_cast<half>(static_cast<float>(xs[i]))));
    CHECK(as_b[i] == static_cast<double>(static_cast<bfloat16>(static_cast<float>(xs[i]))));
  }
  CHECK(values(f.get<double>("h")) == values(x.to<half>()));
  CHECK(int_values(f.get<int64_t>("i8")) == std::vector<int64_t>{0, 200, 255});
  CHECK(int_values(f.get<int32_t>("i8")) == std::vector<int64_t>{0, 200, 255});
  CHECK(int_values(f.get<int64_t>("i32")) == std::vector<int64_t>{-7, 1 << 30});
  MAMCLIP_REQUIRE_THROWS_WITH(f.get<float>("i32"), dtype_error,
                              "tensor 'i32' is stored as I32, which cannot be read as float32");
  MAMCLIP_REQUIRE_THROWS_WITH(f.get<uint8_t>("i32"), dtype_error, "cannot be read as uint8 (uint8 reads U8)");
  MAMCLIP_REQUIRE_THROWS_WITH(f.get<int64_t>("x"), dtype_error, "stored as F64, which cannot be read as int64");
  MAMCLIP_REQUIRE_THROWS_WITH(f.get<bool>("i8"), dtype_error, "cannot be read as bool (only BOOL can)");
  MAMCLIP_REQUIRE_THROWS_WITH(f.get<float>("nope"), index_error,
                              "safetensors file '<memory>' has no tensor 'nope' (4 tensors: 'x', 'h', 'i8', 'i32')");
  MAMCLIP_REQUIRE_THROWS_WITH(io::get_as<float>(f.get_any("x"), "x"), dtype_error,
                              "tensor 'x' holds F64 data; it was asked for as float32");
  CHECK(values(io::get_as<double>(f.get_any("x"))) == xs);
}

TEST_CASE("reads every dtype and the metadata of a file written by Python safetensors") {
  const auto expected = load_json(st_fixture("expected.json")).at("all_dtypes");
  io::SafetensorsFile f(st_fixture("all_dtypes.safetensors"));
  CHECK(f.metadata() == io::Metadata{{"format", "pt"}, {"source", "make_safetensors_fixture.py"}});
  REQUIRE(f.size() == expected.size());
  uint64_t prev_end = 0;
  for (const auto& name : f.names()) {  // data order: contiguous offsets
    CHECK(f.info(name).begin == prev_end);
    prev_end = f.info(name).end;
  }
  CHECK(f.names().front() == "i64");  // the reference writer puts the widest alignment first

  for (const auto& [name, e] : expected.items()) {
    INFO(name);
    const auto& info = f.info(name);
    CHECK(info.dtype == kTorchToSt.at(e.at("dtype").get<std::string>()));
    CHECK(info.shape == e.at("shape").get<Shape>());
    if (!io::st_dtype_loadable(info.dtype)) {
      MAMCLIP_REQUIRE_THROWS_WITH(f.get_any(name), dtype_error,
                                  "tensor '" + name + "' has dtype " + std::string(io::st_dtype_name(info.dtype)) +
                                      ", which mamclip cannot load");
      continue;
    }
    const auto t = f.get_any(name);
    if (std::holds_alternative<Tensor<int64_t>>(t))
      CHECK(int_values(std::get<Tensor<int64_t>>(t)) == json_ints(e));
    else
      CHECK(any_values(t) == json_values(e));
  }
  CHECK(std::holds_alternative<Tensor<int64_t>>(f.get_any("i16")));  // narrow integers widen to int64
  CHECK(std::holds_alternative<Tensor<int64_t>>(f.get_any("i8")));
  CHECK(std::holds_alternative<Tensor<bfloat16>>(f.get_any("bf16")));
  CHECK(std::holds_alternative<Tensor<bool>>(f.get_any("bool")));
  CHECK(f.get<float>("scalar").dim() == 0);
  CHECK(f.get<float>("empty").shape() == Shape{0, 4});
  // Conversions on real files: F16 -> float, BF16 -> double, I8 -> int32, U8 -> int64.
  CHECK(values(f.get<float>("f16")) == json_values(expected.at("f16")));
  CHECK(values(f.get<double>("bf16")) == json_values(expected.at("bf16")));
  CHECK(int_values(f.get<int32_t>("i8")) == json_ints(expected.at("i8")));
  CHECK(int_values(f.get<int64_t>("u8")) == json_ints(expected.at("u8")));
  CHECK(int_values(f.get<int32_t>("i16")) == json_ints(expected.at("i16")));

  const auto all = io::load_safetensors(st_fixture("golden.safetensors"));
  CHECK(all.size() == 11);
}

TEST_CASE("the writer reproduces Python's bytes, including names that need JSON escaping") {
  const auto golden_path = st_fixture("golden.safetensors");
  const auto golden = read_bytes(golden_path);
  io::SafetensorsFile f(golden_path);
  REQUIRE(f.metadata() == io::Metadata{{"format", "pt"}});
  io::NamedTensors ts;
  for (const auto& name : f.names()) ts.emplace_back(name, f.get_any(name));
  REQUIRE(ts.size() == 11);
  CHECK(io::serialize_safetensors(ts, f.metadata()) == golden);

  // Any order, sorted like the reference writer, gives the same bytes.
  std::mt19937 rng(1);
  for (int round = 0; round < 5; ++round) {
    std::shuffle(ts.begin(), ts.end(), rng);
    io::NamedTensors sorted = ts;
    io::sort_like_safetensors(sorted);
    CHECK(io::serialize_safetensors(sorted, f.metadata()) == golden);
  }
  // Without sorting the header differs but the content reads back the same.
  io::NamedTensors reversed(ts.rbegin(), ts.rend());
  io::sort_like_safetensors(reversed);
  std::reverse(reversed.begin(), reversed.end());
  const auto other = io::serialize_safetensors(reversed, f.metadata());
  CHECK(other != golden);
  auto g = io::SafetensorsFile::from_bytes(other);
  for (const auto& name : f.names()) CHECK(any_values(g.get_any(name)) == any_values(f.get_any(name)));

  TempDir dir("golden");
  io::NamedTensors sorted = ts;
  io::sort_like_safetensors(sorted);
  io::save_safetensors((dir / "g.safetensors").string(), sorted, f.metadata());
  CHECK(read_bytes(dir / "g.safetensors") == golden);
}

TEST_CASE("sharded checkpoints load through their index") {
  const auto expected = load_json(st_fixture("expected.json")).at("sharded");
  for (const std::string& p : {st_fixture("sharded"), st_fixture("sharded/model.safetensors.index.json")}) {
    INFO(p);
    const auto m = io::load_sharded(p);
    REQUIRE(m.size() == expected.size());
    CHECK(m.count("unmapped.extra") == 0);  // in a shard but not in the index
    for (const auto& [name, e] : expected.items()) {
      INFO(name);
      REQUIRE(m.count(name) == 1);
      CHECK(io::st_dtype_of(m.at(name)) == kTorchToSt.at(e.at("dtype").get<std::string>()));
      CHECK(io::shape_of(m.at(name)) == e.at("shape").get<Shape>());
      CHECK(any_values(m.at(name)) == json_values(e));
    }
  }

  TempDir dir("sharded");
  const auto copy = [&](const std::string& to) {
    fs::create_directories(dir / to);
    for (const auto& e : fs::directory_iterator(st_fixture("sharded"))) fs::copy(e.path(), dir / to / e.path().filename());
  };
  const auto index_of = [&](const std::string& d) { return (dir / d / "model.safetensors.index.json").string(); };
  const auto rewrite = [&](const std::string& d, const std::function<void(nlohmann::json&)>& edit) {
    auto j = load_json(index_of(d));
    edit(j);
    std::ofstream(index_of(d)) << j.dump();
  };

  copy("missing");
  fs::remove(dir / "missing" / "model-00002-of-00002.safetensors");
  MAMCLIP_REQUIRE_THROWS_WITH(io::load_sharded((dir / "missing").string()), io_error,
                              "maps 2 tensors (e.g. 'encoder.layer.0.bias') to shard "
                              "'model-00002-of-00002.safetensors', which does not exist");

  copy("absent");
  rewrite("absent", [](auto& j) { j["weight_map"]["ghost"] = "model-00001-of-00002.safetensors"; });
  MAMCLIP_REQUIRE_THROWS_WITH(io::load_sharded(index_of("absent")), io_error,
                              "maps tensor 'ghost' to shard 'model-00001-of-00002.safetensors', which has no such tensor");

  copy("escape");
  rewrite("escape", [](auto& j) { j["weight_map"]["x"] = "../../etc/passwd"; });
  MAMCLIP_REQUIRE_THROWS_WITH(io::load_sharded(index_of("escape")), io_error,
                              "maps tensor 'x' to '../../etc/passwd'; expected a file name relative to the index");

  copy("nomap");
  rewrite("nomap", [](auto& j) { j.erase("weight_map"); });
  MAMCLIP_REQUIRE_THROWS_WITH(io::load_sharded(index_of("nomap")), io_error, "has no 'weight_map'");

  copy("badvalue");
  rewrite("badvalue", [](auto& j) { j["weight_map"]["x"] = 3; });
  MAMCLIP_REQUIRE_THROWS_WITH(io::load_sharded(index_of("badvalue")), io_error,
                              "weight_map['x'] is a JSON number; expected a shard file name");

  fs::create_directories(dir / "nothing");
  MAMCLIP_REQUIRE_THROWS_WITH(io::load_sharded((dir / "nothing").string()), io_error,
                              "holds neither model.safetensors.index.json nor model.safetensors");
  MAMCLIP_REQUIRE_THROWS_WITH(io::load_sharded((dir / "nothing" / "x.json").string()), io_error, "cannot open");

  // A directory with a single model.safetensors loads it.
  fs::create_directories(dir / "single");
  fs::copy(st_fixture("golden.safetensors"), dir / "single" / "model.safetensors");
  CHECK(io::load_sharded((dir / "single").string()).size() == 11);
}

TEST_CASE("corrupt and hostile headers give typed errors naming the file, tensor and values") {
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]})";
  // The valid baseline parses, so each case below fails for its own reason.
  CHECK(open_bytes(st_bytes("{" + ok_entry + "}", 24)).size() == 1);

  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes({1, 2, 3}), io_error,
                              "safetensors file 'bad.safetensors' is 3 bytes long; expected at least 8");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes("{}", 0, uint64_t{1} << 62)), io_error,
                              "header size 4611686018427387904 exceeds the limit of 100000000 bytes");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes("{}", 0, 100000001)), io_error, "exceeds the limit");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes("{}", 0, 200)), io_error,
                              "header size 200 exceeds the 2 bytes after the size field (truncated file?)");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes(R"({"a": {"dtype": "F32",)", 0)), io_error,
                              "safetensors file 'bad.safetensors' header: invalid JSON at byte 23");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes("{\"a\xff\":1}", 0)), io_error, "invalid JSON");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes("", 0)), io_error, "invalid JSON at byte 1");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes("[1, 2]", 0)), io_error,
                              "the header is a JSON array; expected an object of tensor entries");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes(R"({"a": [[[1]]]})", 0)), io_error, "JSON nests deeper than 3 levels");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes(R"({"a": 5})", 0)), io_error,
                              "tensor 'a' is a JSON number; expected an object with dtype, shape and data_offsets");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes(R"({"a":{"dtype":"F32","shape":[]}})", 0)), io_error,
                              "tensor 'a' has no 'data_offsets' field");
  MAMCLIP_REQUIRE_THROWS_WITH(
      open_bytes(st_bytes(R"({"a":{"dtype":"F32","shape":[],"data_offsets":[0,4],"offsets":1}})", 4)), io_error,
      "tensor 'a' has an unexpected field 'offsets'; expected exactly dtype, shape and data_offsets");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes(R"({"a":{"dtype":1,"shape":[],"data_offsets":[0,4]}})", 4)),
                              io_error, "tensor 'a': dtype is a JSON number; expected a string");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes(R"({"a":{"dtype":"float32","shape":[],"data_offsets":[0,4]}})", 4)),
                              dtype_error,
                              "tensor 'a' has dtype 'float32', which is not a safetensors dtype; mamclip loads F64, F32");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes(R"({"a":{"dtype":"F32","shape":[2,-3],"data_offsets":[0,24]}})", 24)),
                              shape_error, "tensor 'a' has shape [2,-3] with negative dimension -3");
  MAMCLIP_REQUIRE_THROWS_WITH(
      open_bytes(st_bytes(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", 0)),
      shape_error, "tensor 'a' has shape [4294967296, 4294967296], whose element count overflows 64-bit sizes");
  // Zero sizes do not hide an overflowing extent (strides would overflow).
  MAMCLIP_REQUIRE_THROWS_WITH(
      open_bytes(st_bytes(R"({"a":{"dtype":"U8","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}})", 0)),
      shape_error, "overflows 64-bit sizes");
  MAMCLIP_REQUIRE_THROWS_WITH(
      open_bytes(st_bytes(R"({"a":{"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,0]}})", 0)),
      shape_error, "whose dimension 9223372036854775808 overflows 64-bit sizes");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8)),
                              io_error, "tensor 'a': shape [2.5] holds 2.5; expected non-negative integers");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes(R"({"a":{"dtype":"F32","shape":7,"data_offsets":[0,8]}})", 8)),
                              io_error, "tensor 'a': shape is a JSON number; expected an array");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes(R"({"a":{"dtype":"F32","shape":[],"data_offsets":[0]}})", 4)),
                              io_error, "tensor 'a': data_offsets is [0]; expected [begin, end]");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes(R"({"a":{"dtype":"F32","shape":[],"data_offsets":[-4,0]}})", 4)),
                              io_error, "data_offsets is [-4,0]; expected [begin, end] with non-negative integers");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes(R"({"a":{"dtype":"F32","shape":[],"data_offsets":[4,0]}})", 4)),
                              io_error, "tensor 'a' has data_offsets [4, 0]; expected begin <= end");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes(R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", 20)),
                              io_error,
                              "tensor 'a' has data_offsets [0, 20] spanning 20 bytes; expected 24 bytes for F32 shape "
                              "[2, 3] (6 elements x 32 bits)");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes(R"({"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}})", 1)),
                              io_error, "tensor 'a' (F4, shape [3]) does not end on a byte boundary");
  // Offsets must tile the data buffer.
  MAMCLIP_REQUIRE_THROWS_WITH(
      open_bytes(st_bytes("{" + ok_entry + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[20,24]}})", 24)),
      io_error, "tensor 'b' has data_offsets [20, 24], which overlap tensor 'a' at [0, 24]");
  MAMCLIP_REQUIRE_THROWS_WITH(
      open_bytes(st_bytes("{" + ok_entry + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[28,32]}})", 32)),
      io_error, "bytes [24, 28) of the data buffer belong to no tensor (a hole before tensor 'b' at [28, 32])");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8)),
                              io_error, "bytes [0, 4) of the data buffer belong to no tensor");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes("{" + ok_entry + "}", 30)), io_error,
                              "the tensors cover 24 bytes but the data buffer holds 30; expected no trailing bytes");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes("{" + ok_entry + "}", 23)), io_error,
                              "the tensors need 24 bytes of data but the file holds only 23 after the header (truncated");
  // Header order does not matter; offsets do.
  CHECK(open_bytes(st_bytes(R"({"b":{"dtype":"U8","shape":[2],"data_offsets":[24,26]},)" + ok_entry + "}", 26))
            .names() == std::vector<std::string>{"a", "b"});
  // Duplicates anywhere are refused (a JSON parser would keep the last silently).
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes("{" + ok_entry + "," + ok_entry + "}", 24)), io_error,
                              "key 'a' appears twice in the same JSON object (duplicate tensor name)");
  MAMCLIP_REQUIRE_THROWS_WITH(
      open_bytes(st_bytes(R"({"a":{"dtype":"F32","dtype":"F32","shape":[],"data_offsets":[0,4]}})", 4)), io_error,
      "key 'dtype' appears twice");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes(R"({"__metadata__":{"k":"1"},"__metadata__":{}})", 0)), io_error,
                              "key '__metadata__' appears twice");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes(R"({"__metadata__":[]})", 0)), io_error,
                              "__metadata__ is a JSON array; expected an object of strings");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(st_bytes(R"({"__metadata__":{"k":1}})", 0)), io_error,
                              "__metadata__ entry 'k' is a JSON number; expected a string");
  CHECK(open_bytes(st_bytes(R"({"__metadata__":null})", 0)).metadata().empty());
  // Padding with spaces (any length) is whitespace.
  CHECK(open_bytes(st_bytes("{" + ok_entry + "}     ", 24)).size() == 1);
  // A BOOL byte other than 0/1 is refused when read.
  auto bad_bool = st_bytes(R"({"m":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}})", 3);
  bad_bool.back() = 2;
  auto bf = open_bytes(bad_bool);
  MAMCLIP_REQUIRE_THROWS_WITH(bf.get<bool>("m"), io_error, "BOOL tensor 'm' holds byte 2 at element 2; expected 0 or 1");
}

TEST_CASE("truncated files and bad paths give io_error") {
  const auto golden = read_bytes(st_fixture("golden.safetensors"));
  for (size_t cut : {golden.size() - 1, golden.size() - 40, size_t{100}, size_t{8}, size_t{5}, size_t{0}}) {
    INFO("cut to " << cut);
    const std::vector<uint8_t> part(golden.begin(), golden.begin() + static_cast<long>(cut));
    REQUIRE_THROWS_AS(open_bytes(part), io_error);
  }
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(std::vector<uint8_t>(golden.begin(), golden.end() - 1)), io_error,
                              "truncated file?");
  TempDir dir("paths");
  MAMCLIP_REQUIRE_THROWS_WITH(io::SafetensorsFile((dir / "missing.safetensors").string()), io_error,
                              "cannot open '" + (dir / "missing.safetensors").string() + "': No such file or directory");
  MAMCLIP_REQUIRE_THROWS_WITH(io::SafetensorsFile(dir.str()), io_error, "' is not a regular file");
  write_bytes(dir / "empty.safetensors", {});
  MAMCLIP_REQUIRE_THROWS_WITH(io::SafetensorsFile((dir / "empty.safetensors").string()), io_error,
                              "empty.safetensors' is 0 bytes long");
}

TEST_CASE("the writer refuses what it cannot write and leaves the file system alone") {
  TempDir dir("refuse");
  const auto path = (dir / "m.safetensors").string();
  io::save_safetensors(path, io::NamedTensors{{"w", ones<float>({2})}});
  const auto before = read_bytes(path);
  MAMCLIP_REQUIRE_THROWS_WITH(io::save_safetensors(path, io::NamedTensors{{"a", ones<float>({2})}, {"a", zeros<double>({1})}}),
                              value_error, "save_safetensors('" + path + "'): tensor name 'a' appears twice");
  MAMCLIP_REQUIRE_THROWS_WITH(io::save_safetensors(path, io::NamedTensors{{"__metadata__", ones<float>({2})}}), value_error,
                              "'__metadata__' is reserved");
  MAMCLIP_REQUIRE_THROWS_WITH(io::save_safetensors(path, io::NamedTensors{{"bad\xff", ones<float>({2})}}), value_error,
                              "is not valid UTF-8");
  MAMCLIP_REQUIRE_THROWS_WITH(io::save_safetensors(path, io::NamedTensors{{"u", Tensor<float>()}}), value_error,
                              "tensor 'u' is undefined");
  MAMCLIP_REQUIRE_THROWS_WITH(io::save_safetensors(path, io::NamedTensors{{"w", ones<float>({1})}}, io::Metadata{{"k", "\xc0\xaf"}}), value_error,
                              "metadata entry 'k' is not valid UTF-8");
  CHECK(read_bytes(path) == before);
  CHECK(dir.entries() == std::vector<std::string>{"m.safetensors"});
}

TEST_CASE("a failed save never destroys the last good file") {
  TempDir dir("atomic");
  const auto path = (dir / "ckpt.safetensors").string();
  io::save_safetensors(path, io::NamedTensors{{"w", arange<float>(0, 10)}});
  const auto good = read_bytes(path);

  SECTION("the disk fills up in the middle of the write") {
    // A file size limit makes write() fail with EFBIG after the first bytes,
    // as a full disk would.
    struct rlimit old {};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old) == 0);
    auto* old_handler = ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit small = old;
    small.rlim_cur = 4096;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
    std::string message;
    bool threw_io = false;
    try {
      io::save_safetensors(path, io::NamedTensors{{"big", zeros<float>({100000})}});
    } catch (const io_error& e) {
      threw_io = true;
      message = e.what();
    }
    ::setrlimit(RLIMIT_FSIZE, &old);
    ::signal(SIGXFSZ, old_handler);
    CHECK(threw_io);
    CHECK_THAT(message, Catch::Matchers::Contains("cannot write '" + path + ".tmp-") &&
                            Catch::Matchers::Contains("File too large; '" + path + "' is unchanged"));
  }
  SECTION("the target is a directory, so the final rename fails") {
    const auto dpath = (dir / "taken").string();
    fs::create_directories(dpath);
    fs::copy(path, dir / "taken" / "inside");
    MAMCLIP_REQUIRE_THROWS_WITH(io::save_safetensors(dpath, io::NamedTensors{{"x", ones<float>({3})}}), io_error,
                                "cannot rename '" + dpath + ".tmp-");
    CHECK(fs::is_directory(dpath));
    CHECK(read_bytes(dir / "taken" / "inside") == good);
    fs::remove_all(dpath);
  }
  SECTION("the directory does not exist") {
    const auto missing = (dir / "no" / "such" / "dir.safetensors").string();
    MAMCLIP_REQUIRE_THROWS_WITH(io::save_safetensors(missing, io::NamedTensors{{"x", ones<float>({3})}}), io_error,
                                "cannot create a temporary file '" + missing + ".tmp-XXXXXX'");
  }
  SECTION("an exception while writing (no commit) removes the temporary") {
    {
      io::AtomicFile f(path);
      f.write("garbage", 7);
      CHECK(fs::exists(f.temp_path()));
      CHECK(dir.entries().size() == 2);
    }
  }
  CHECK(read_bytes(path) == good);
  CHECK(io::SafetensorsFile(path).get<float>("w")(9) == 9.0f);
  CHECK(dir.entries() == std::vector<std::string>{"ckpt.safetensors"});  // no temporary left behind
}

TEST_CASE("a mapped file stays readable after it is replaced on disk") {
  TempDir dir("remap");
  const auto path = (dir / "m.safetensors").string();
  io::save_safetensors(path, io::NamedTensors{{"w", full<float>({4}, 1.5f)}});
  io::SafetensorsFile f(path);
  io::save_safetensors(path, io::NamedTensors{{"v", full<double>({2}, 2.0)}});  // rename: new inode
  CHECK(values(f.get<float>("w")) == std::vector<double>{1.5, 1.5, 1.5, 1.5});
  CHECK(io::SafetensorsFile(path).names() == std::vector<std::string>{"v"});
  io::SafetensorsFile copy = f;  // copies share the mapping
  CHECK(copy.get<float>("w")(3) == 1.5f);
}

}  // namespace test_safetensors
