#pragma once
// One entry point for weights in any format mamclip reads, and the name
// mapping that moves them between a checkpoint's names and a model's.
//
//   load_state_dict(path)   the format is picked from the file's bytes (and,
//                           for index files and directories, its name):
//     a directory            model.safetensors.index.json, model.safetensors,
//                            pytorch_model.bin.index.json or pytorch_model.bin in it
//     *.index.json           a sharded checkpoint: {"weight_map": {tensor: shard}};
//                            each shard is loaded by its own bytes
//     PK\3\4                 torch.save zip (pytorch_model.bin, .pt, .pth, Lightning
//                            .ckpt: see TorchCheckpoint::state_dict for which dict)
//     legacy torch.save      io_error: re-save with torch >= 1.6
//     anything else          safetensors (its reader says what is wrong)
//   safetensors_metadata    a safetensors file's metadata (nullopt for the other formats)
//   KeyMapping, map_keys    strip / rename / add prefixes, ignore keys, refuse collisions
//
// defines: load_state_dict, safetensors_metadata, KeyMapping, map_keys, glob_match

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mamclip/core/error.hpp"
#include "mamclip/io/file.hpp"
#include "mamclip/io/safetensors.hpp"
#include "mamclip/io/torch_checkpoint.hpp"

namespace mamclip::io {

inline TensorMap load_state_dict(const std::string& path);

namespace detail {

inline bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A sharded checkpoint of any format: the index maps each tensor to a shard
// file beside it; every mapped tensor must be in its shard.
inline TensorMap load_indexed(const std::string& index_path) {
  namespace fs = std::filesystem;
  if (ends_with(index_path, ".safetensors.index.json")) return load_sharded(index_path);
  const std::string w = "checkpoint index '" + index_path + "'";
  const fs::path dir = fs::path(index_path).parent_path();
  const auto shards = read_shard_index(index_path, w);
  TensorMap out;
  for (const auto& [file, names] : shards) {
    MAMCLIP_CHECK(!ends_with(file, ".json"), io_error, w, " maps tensors to '", file,
                  "', another index; expected weight files");
    TensorMap shard = load_state_dict((dir / file).string());
    for (const auto& name : names) {
      auto it = shard.find(name);
      MAMCLIP_CHECK(it != shard.end(), io_error, w, " maps tensor '", name, "' to shard '", file,
                    "', which has no such tensor (it holds ", shard.size(), ")");
      out.emplace(name, std::move(it->second));
    }
  }
  return out;
}

}  // namespace detail

// The tensors of a checkpoint file or model directory, whatever its format
// (see the top of this header). Tensors keep their stored dtype (int16/int8
// widen to int64). Torch tensors may be non-contiguous views sharing memory,
// as torch.load gives them; safetensors tensors own contiguous memory.
inline TensorMap load_state_dict(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const fs::path dir = path;
    for (const char* name : {"model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                             "pytorch_model.bin"})
      if (fs::is_regular_file(dir / name, ec)) return load_state_dict((dir / name).string());
    throw io_error(mamclip::detail::str_cat("load_state_dict: directory '", path,
                                            "' holds none of model.safetensors.index.json, model.safetensors, "
                                            "pytorch_model.bin.index.json, pytorch_model.bin"));
  }
  if (detail::ends_with(path, ".index.json")) return detail::load_indexed(path);
  auto bytes = FileBytes::map(path);
  if (TorchCheckpoint::is_legacy(bytes->data(), bytes->size()))
    throw io_error(mamclip::detail::str_cat("torch checkpoint '", path, "': ", TorchCheckpoint::kLegacyMessage));
  if (TorchCheckpoint::is_zip(bytes->data(), bytes->size())) return TorchCheckpoint(std::move(bytes)).state_dict();
  SafetensorsFile f(std::move(bytes));
  TensorMap out;
  for (const auto& name : f.names()) out.emplace(name, f.get_any(name));
  return out;
}

// The string metadata of a checkpoint when it is a safetensors file; nullopt
// for the other formats load_state_dict reads (a torch zip or legacy file, a
// directory), which carry none. A missing or unreadable file is io_error.
inline std::optional<Metadata> safetensors_metadata(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return std::nullopt;
  auto bytes = FileBytes::map(path);
  if (TorchCheckpoint::is_zip(bytes->data(), bytes->size()) || TorchCheckpoint::is_legacy(bytes->data(), bytes->size()))
    return std::nullopt;
  return SafetensorsFile(std::move(bytes)).metadata();
}

// Whether `name` matches a glob `pattern`: '*' any run of characters (dots
// included), '?' any one character, everything else literally.
inline bool glob_match(std::string_view pattern, std::string_view name) {
  // Iterative with one backtrack point: linear in practice, no recursion.
  size_t p = 0, n = 0, star = std::string_view::npos, mark = 0;
  while (n < name.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == name[n])) {
      ++p, ++n;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = n;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      n = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

// Maps checkpoint names to model names. map(key) applies, in this order:
//   1. ignore         patterns (glob_match; a pattern without '*' or '?' is an
//                     exact name) tested on the original key: a match drops it
//   2. strip_prefix   the first listed prefix the key starts with is removed;
//                     with only_prefixed, keys that start with none are dropped
//                     (selects a sub-model, e.g. "VLModel.vision_encoder.")
//   3. renames        in order, each on the result of the previous one: an
//                     exact rename replaces the whole key when it equals `from`;
//                     a substring rename replaces every occurrence of `from`
//                     (left to right, not overlapping), e.g. "gamma" -> "weight"
//   4. add_prefix     prepended to what is left
// It returns nullopt for a dropped key.
struct KeyMapping {
  struct Rename {
    std::string from, to;
    bool exact = false;
  };
  std::vector<std::string> ignore;
  std::vector<std::string> strip_prefix;
  bool only_prefixed = false;
  std::vector<Rename> renames;
  std::string add_prefix;

  std::optional<std::string> map(const std::string& key) const {
    for (const auto& pattern : ignore)
      if (glob_match(pattern, key)) return std::nullopt;
    std::string k = key;
    bool stripped = false;
    for (const auto& prefix : strip_prefix)
      if (k.compare(0, prefix.size(), prefix) == 0) {
        k.erase(0, prefix.size());
        stripped = true;
        break;
      }
    if (only_prefixed && !stripped) return std::nullopt;
    for (const auto& r : renames) {
      if (r.exact) {
        if (k == r.from) k = r.to;
      } else if (!r.from.empty()) {
        std::string out;
        size_t start = 0;
        for (size_t at; (at = k.find(r.from, start)) != std::string::npos; start = at + r.from.size())
          out.append(k, start, at - start).append(r.to);
        out.append(k, start, std::string::npos);
        k = std::move(out);
      }
    }
    return add_prefix + k;
  }
};

// The tensors of `tensors` under their mapped names (dropped keys left out).
// Two keys that map to one name are a value_error naming both.
inline TensorMap map_keys(const TensorMap& tensors, const KeyMapping& mapping) {
  TensorMap out;
  std::map<std::string, const std::string*> source;
  for (const auto& [key, t] : tensors) {
    auto name = mapping.map(key);
    if (!name) continue;
    auto [it, fresh] = source.emplace(*name, &key);
    MAMCLIP_CHECK(fresh, value_error, "map_keys: keys '", *it->second, "' and '", key, "' both map to '", *name,
                  "'; expected distinct names (ignore one of them or add a rename)");
    out.emplace(std::move(*name), t);
  }
  return out;
}

}  // namespace mamclip::io
