// load_state_dict: one entry for every checkpoint format (picked from the
// bytes), directories and sharded indexes; KeyMapping and map_keys.
#include "support/test_support.hpp"

#include <filesystem>
#include <fstream>

#include "mamclip/io/io.hpp"

namespace test_checkpoint {
using namespace mamclip;
using namespace mamclip::test;
using namespace mamclip::test::files;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> keys(const io::TensorMap& m) {
  std::vector<std::string> out;
  for (const auto& [k, v] : m) out.push_back(k);
  return out;
}

// Row-major values (Tensor<bool>::to_vector() does not compile: vector<bool> has no data()).
std::vector<double> any_values(const io::AnyStoredTensor& t) {
  return std::visit([](const auto& x) {
    std::vector<double> out;
    if (x.numel() == 0) return out;
    const auto* p = x.data_ptr();
    mamclip::detail::for_each_offset<1>(x.shape(), {x.strides()},
                                        [&](const std::array<int64_t, 1>& o) { out.push_back(static_cast<double>(p[o[0]])); });
    return out;
  }, t);
}

}  // namespace

TEST_CASE("load_state_dict picks the format from the bytes") {
  const auto expected = io::load_safetensors(fixture_path("torch/expected.safetensors"));
  // torch zip: a state dict, a Lightning checkpoint (its nested state_dict).
  const auto bin = io::load_state_dict(fixture_path("torch/hf_model/pytorch_model.bin"));
  REQUIRE(bin.size() == 10);
  CHECK(any_values(bin.at("fc.weight")) == any_values(expected.at("model/fc.weight")));
  CHECK(keys(io::load_state_dict(fixture_path("torch/lightning.ckpt"))) ==
        std::vector<std::string>{"VLModel.encoder.ids", "VLModel.encoder.weight", "VLModel.logit_scale",
                                 "VLModel.text_projection"});
  // safetensors, whatever the file is called.
  TempDir dir("formats");
  fs::copy(fixture_path("torch/expected.safetensors"), dir / "weights.pt");
  CHECK(io::load_state_dict((dir / "weights.pt").string()).size() == expected.size());
  fs::copy(fixture_path("torch/hf_model/pytorch_model.bin"), dir / "model.safetensors");
  CHECK(io::load_state_dict((dir / "model.safetensors").string()).size() == 10);
  // Sharded safetensors through the index and through its directory.
  CHECK(io::load_state_dict(fixture_path("safetensors/sharded/model.safetensors.index.json")).size() == 4);
  CHECK(io::load_state_dict(fixture_path("safetensors/sharded")).size() == 4);
  CHECK(io::load_state_dict(fixture_path("torch/hf_model")).size() == 10);
  // Errors: legacy torch, not a checkpoint, missing file, a directory without weights.
  MAMCLIP_REQUIRE_THROWS_WITH(io::load_state_dict(fixture_path("torch/legacy.pt")), io_error,
                              "legacy torch.save format is not supported; re-save with torch >= 1.6");
  std::ofstream(dir / "notes.txt") << "hello, this is not a checkpoint";
  MAMCLIP_REQUIRE_THROWS_WITH(io::load_state_dict((dir / "notes.txt").string()), io_error, "safetensors file '");
  MAMCLIP_REQUIRE_THROWS_WITH(io::load_state_dict((dir / "missing.bin").string()), io_error, "cannot open");
  fs::create_directories(dir / "empty");
  MAMCLIP_REQUIRE_THROWS_WITH(io::load_state_dict((dir / "empty").string()), io_error,
                              "directory '" + (dir / "empty").string() + "' holds none of model.safetensors.index.json");
}

TEST_CASE("a sharded torch checkpoint loads through pytorch_model.bin.index.json") {
  TempDir dir("bin_shards");
  fs::copy(fixture_path("torch/hf_model/pytorch_model.bin"), dir / "pytorch_model-00001-of-00002.bin");
  fs::copy(fixture_path("torch/all_dtypes.pt"), dir / "pytorch_model-00002-of-00002.bin");
  const auto index = (dir / "pytorch_model.bin.index.json").string();
  std::ofstream(index) << R"({"metadata": {"total_size": 1}, "weight_map": {
      "fc.weight": "pytorch_model-00001-of-00002.bin", "bn.num_batches_tracked": "pytorch_model-00001-of-00002.bin",
      "f16": "pytorch_model-00002-of-00002.bin", "row": "pytorch_model-00002-of-00002.bin"}})";
  for (const std::string& p : {index, dir.str()}) {
    INFO(p);
    const auto m = io::load_state_dict(p);
    CHECK(keys(m) == std::vector<std::string>{"bn.num_batches_tracked", "f16", "fc.weight", "row"});
    CHECK(std::holds_alternative<Tensor<half>>(m.at("f16")));
  }
  std::ofstream(index) << R"({"weight_map": {"ghost": "pytorch_model-00001-of-00002.bin"}})";
  MAMCLIP_REQUIRE_THROWS_WITH(io::load_state_dict(index), io_error,
                              "maps tensor 'ghost' to shard 'pytorch_model-00001-of-00002.bin', which has no such tensor");
  std::ofstream(index) << R"({"weight_map": {"x": "../escape.bin"}})";
  MAMCLIP_REQUIRE_THROWS_WITH(io::load_state_dict(index), io_error,
                              "maps tensor 'x' to '../escape.bin'; expected a file name relative to the index");
  std::ofstream(index) << R"({"weight_map": {"x": "nope.bin"}})";
  MAMCLIP_REQUIRE_THROWS_WITH(io::load_state_dict(index), io_error, "to shard 'nope.bin', which does not exist");
  std::ofstream(index) << R"({"weights": {}})";
  MAMCLIP_REQUIRE_THROWS_WITH(io::load_state_dict(index), io_error, "has no 'weight_map' object");
  std::ofstream(index) << R"({"weight_map": {"x": 3}})";
  MAMCLIP_REQUIRE_THROWS_WITH(io::load_state_dict(index), io_error, "weight_map['x'] is a JSON number");
}

TEST_CASE("glob_match") {
  CHECK(io::glob_match("a.b", "a.b"));
  CHECK_FALSE(io::glob_match("a.b", "a.bc"));
  CHECK(io::glob_match("*.num_batches_tracked", "encoder.bn.num_batches_tracked"));
  CHECK(io::glob_match("layer.?.weight", "layer.3.weight"));
  CHECK_FALSE(io::glob_match("layer.?.weight", "layer.13.weight"));
  CHECK(io::glob_match("*", ""));
  CHECK(io::glob_match("a*b*c", "aXXbYYbc"));
  CHECK_FALSE(io::glob_match("a*b*c", "aXXbYYbd"));
  CHECK(io::glob_match("**x", "yyx"));
  CHECK_FALSE(io::glob_match("", "x"));
  // Many stars against a long near-miss stay fast (no exponential backtracking).
  CHECK_FALSE(io::glob_match("*a*a*a*a*a*a*a*a*b", std::string(5000, 'a')));
}

TEST_CASE("KeyMapping: ignore, strip, rename, add, in that order") {
  io::KeyMapping m;
  m.ignore = {"*.num_batches_tracked", "VLModel.positional_embedding"};
  m.strip_prefix = {"VLModel.", "module."};
  m.renames = {{"gamma", "weight"}, {"beta", "bias"}, {"text_projection", "proj.weight", true}};
  m.add_prefix = "clip.";
  CHECK(m.map("VLModel.ln.gamma") == std::optional<std::string>("clip.ln.weight"));
  CHECK(m.map("module.ln.beta_beta") == std::optional<std::string>("clip.ln.bias_bias"));  // every occurrence
  CHECK(m.map("VLModel.text_projection") == std::optional<std::string>("clip.proj.weight"));   // exact
  CHECK(m.map("VLModel.text_projection.x") == std::optional<std::string>("clip.text_projection.x"));
  CHECK(m.map("VLModel.bn.num_batches_tracked") == std::nullopt);
  CHECK(m.map("VLModel.positional_embedding") == std::nullopt);
  CHECK(m.map("other.w") == std::optional<std::string>("clip.other.w"));
  // Only the first matching prefix is stripped.
  CHECK(m.map("VLModel.module.w") == std::optional<std::string>("clip.module.w"));
  m.only_prefixed = true;
  CHECK(m.map("other.w") == std::nullopt);
  CHECK(io::KeyMapping{}.map("x.y") == std::optional<std::string>("x.y"));
  // Renames chain: the second sees the first's result; an empty `from` does nothing.
  io::KeyMapping chain;
  chain.renames = {{"a", "b"}, {"b", "c"}, {"", "z"}};
  CHECK(chain.map("ab") == std::optional<std::string>("cc"));
}

TEST_CASE("map_keys renames a loaded checkpoint and refuses collisions") {
  const auto sd = io::load_state_dict(fixture_path("torch/lightning.ckpt"));
  io::KeyMapping m;
  m.strip_prefix = {"VLModel."};
  m.ignore = {"*.ids"};
  const auto out = io::map_keys(sd, m);
  CHECK(keys(out) == std::vector<std::string>{"encoder.weight", "logit_scale", "text_projection"});
  // The tensors are the same objects (no copy).
  CHECK(std::get<Tensor<float>>(out.at("logit_scale")).is_same(std::get<Tensor<float>>(sd.at("VLModel.logit_scale"))));

  io::KeyMapping clash;
  clash.renames = {{"VLModel.encoder.ids", "w", true}, {"VLModel.encoder.weight", "w", true}};
  MAMCLIP_REQUIRE_THROWS_WITH(io::map_keys(sd, clash), value_error,
                              "map_keys: keys 'VLModel.encoder.ids' and 'VLModel.encoder.weight' both map to 'w'");
}

}  // namespace test_checkpoint
