#pragma once
// ConvNeXt checkpoints -> ConvNeXt, whatever their layout:
//
//   auto loaded = models::load_convnext("pretrain_convnext_tiny.ckpt", models::ConvNeXtConfig::convnext_tiny(768));
//   loaded.model->forward(images);                 // eval mode
//   loaded.layout;                                 // ConvNeXtLayout::lightning
//
// Layouts (detected from the keys unless ConvNeXtLoadOptions::layout forces one):
//   timm        stem.0.weight, stages.<i>.blocks.<j>.conv_dw.weight, head.fc.weight, ... (timm's
//               state_dict; safetensors, pytorch_model.bin or .pth)
//   fair        the original FAIR release: downsample_layers.0.* (the stem),
//               downsample_layers.<i>.{0,1}.* (stage i's downsampling), stages.<i>.<j>.{dwconv,
//               norm, pwconv1, pwconv2, gamma}, norm.* (head.norm), head.* (head.fc); as a
//               state dict or {"model": state_dict}
//   lightning   a MAM-CLIP Lightning .ckpt: its state_dict's VLModel.vision_encoder.<timm name>
//               keys (the prefix is ConvNeXtLoadOptions::lightning_prefix); the text encoder,
//               fusion module and other VLModel.* tensors are left out
//   finetune    timm names plus extra heads, as MAM-CLIP's convnext_{tiny,small}_ftune.pth
//               (birads_layer.0 = Linear(768, 5), density_layer.0 = Linear(768, 4)): the
//               keys under ConvNeXtLoadOptions::extra_head_prefixes are returned in
//               LoadedConvNeXt::extra_heads (linear_head builds a Linear from them), the rest
//               loads into the ConvNeXt
// Weights of any floating dtype are converted to float32. With strict (the
// default) one state_dict_error lists every missing, unexpected and mis-shaped
// key (model names, checkpoint and model shapes), the file, the layout, and
// what the checkpoint's shapes say its architecture is when that differs.
//
// defines: ConvNeXtLayout, convnext_layout_name, parse_convnext_layout, ConvNeXtLoadOptions,
//   ConvNeXtCheckpoint, detect_convnext_layout, convnext_state_dict_from, infer_convnext_config,
//   LoadedConvNeXt, load_convnext, linear_head, fair_to_timm_key

#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <variant>
#include <vector>

#include "mamclip/io/checkpoint.hpp"
#include "mamclip/models/convnext/config.hpp"
#include "mamclip/models/convnext/modeling.hpp"
#include "mamclip/nn/linear.hpp"
#include "mamclip/nn/module.hpp"

namespace mamclip::models {

enum class ConvNeXtLayout { automatic, timm, fair, lightning, finetune };

inline const char* convnext_layout_name(ConvNeXtLayout l) {
  switch (l) {
    case ConvNeXtLayout::automatic:
      return "automatic";
    case ConvNeXtLayout::timm:
      return "timm";
    case ConvNeXtLayout::fair:
      return "fair";
    case ConvNeXtLayout::lightning:
      return "lightning";
    case ConvNeXtLayout::finetune:
      return "finetune";
  }
  return "?";
}

// "automatic", "timm", "fair", "lightning" or "finetune"; value_error otherwise.
inline ConvNeXtLayout parse_convnext_layout(const std::string& name) {
  for (auto l : {ConvNeXtLayout::automatic, ConvNeXtLayout::timm, ConvNeXtLayout::fair, ConvNeXtLayout::lightning,
                 ConvNeXtLayout::finetune})
    if (name == convnext_layout_name(l)) return l;
  throw value_error(mamclip::detail::str_cat("ConvNeXt: unknown checkpoint layout \"", name,
                                             "\"; known: automatic, timm, fair, lightning, finetune"));
}

struct ConvNeXtLoadOptions {
  ConvNeXtLayout layout = ConvNeXtLayout::automatic;
  // Missing and unexpected keys are errors (shape mismatches always are).
  bool strict = true;
  // load_convnext: replace the config's num_classes with the checkpoint's
  // (head.fc.weight's rows; 0 when it has no head.fc).
  bool num_classes_from_checkpoint = false;
  std::string lightning_prefix = "VLModel.vision_encoder.";
  std::vector<std::string> extra_head_prefixes{"birads_layer.", "density_layer."};
};

struct ConvNeXtCheckpoint {
  ConvNeXtLayout layout = ConvNeXtLayout::timm;  // as detected or forced
  nn::StateDict weights;                         // under the ConvNeXt's (timm's) names
  nn::StateDict extra_heads;                     // keys under extra_head_prefixes, as stored
};

namespace detail {

inline bool has_prefix(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// Digits at s[pos...] up to the next '.', or nullopt.
inline std::optional<std::string> index_at(const std::string& s, size_t pos, size_t& end) {
  end = s.find('.', pos);
  if (end == std::string::npos || end == pos) return std::nullopt;
  for (size_t k = pos; k < end; ++k)
    if (s[k] < '0' || s[k] > '9') return std::nullopt;
  return s.substr(pos, end - pos);
}

}  // namespace detail

// One FAIR key under its timm name (timm's checkpoint_filter_fn for ConvNeXt
// V1), or nullopt for a key that is not FAIR-shaped.
inline std::optional<std::string> fair_to_timm_key(const std::string& key) {
  size_t end = 0;
  if (detail::has_prefix(key, "downsample_layers.")) {
    const auto i = detail::index_at(key, 18, end);
    if (!i) return std::nullopt;
    const std::string rest = key.substr(end + 1);  // "<0|1>.weight"
    return *i == "0" ? "stem." + rest : "stages." + *i + ".downsample." + rest;
  }
  if (detail::has_prefix(key, "stages.")) {
    size_t end2 = 0;
    const auto i = detail::index_at(key, 7, end);
    const auto j = i ? detail::index_at(key, end + 1, end2) : std::nullopt;
    if (!j) return std::nullopt;
    std::string rest = key.substr(end2 + 1);
    for (const auto& [from, to] : {std::pair<std::string, std::string>{"dwconv.", "conv_dw."},
                                   {"pwconv1.", "mlp.fc1."},
                                   {"pwconv2.", "mlp.fc2."}})
      if (detail::has_prefix(rest, from)) rest = to + rest.substr(from.size());
    return "stages." + *i + ".blocks." + *j + "." + rest;
  }
  if (detail::has_prefix(key, "norm.")) return "head." + key;
  if (detail::has_prefix(key, "head.")) return "head.fc." + key.substr(5);
  return std::nullopt;
}

// The layout of a checkpoint's keys (see the top of this header); value_error
// naming `where` and a few keys when it is none of them.
inline ConvNeXtLayout detect_convnext_layout(const io::TensorMap& tensors, const std::string& where,
                                             const ConvNeXtLoadOptions& options = {}) {
  bool lightning = false, fair = false, timm = false, extra = false;
  for (const auto& [key, t] : tensors) {
    lightning = lightning || detail::has_prefix(key, options.lightning_prefix);
    fair = fair || detail::has_prefix(key, "downsample_layers.");
    timm = timm || detail::has_prefix(key, "stem.");
    for (const auto& p : options.extra_head_prefixes) extra = extra || detail::has_prefix(key, p);
  }
  if (lightning) return ConvNeXtLayout::lightning;
  if (fair) return ConvNeXtLayout::fair;
  if (timm) return extra ? ConvNeXtLayout::finetune : ConvNeXtLayout::timm;
  std::ostringstream keys;
  size_t n = 0;
  for (const auto& [key, t] : tensors) {
    if (n == 4) break;
    keys << (n++ ? ", '" : "'") << key << "'";
  }
  throw value_error(mamclip::detail::str_cat(
      where, ": not a ConvNeXt checkpoint of a known layout (", tensors.size(), " tensors",
      n ? ", e.g. " + keys.str() : std::string(), "); expected timm keys (stem.0.weight, stages.*), FAIR keys ",
      "(downsample_layers.*) or a MAM-CLIP Lightning checkpoint (", options.lightning_prefix, "*)"));
}

// A checkpoint's tensors under the ConvNeXt's names, extra heads apart, in
// the layout options.layout names (detected when automatic).
inline ConvNeXtCheckpoint convnext_state_dict_from(const io::TensorMap& tensors, const std::string& where,
                                                   const ConvNeXtLoadOptions& options = {}) {
  ConvNeXtCheckpoint out;
  out.layout =
      options.layout == ConvNeXtLayout::automatic ? detect_convnext_layout(tensors, where, options) : options.layout;
  io::KeyMapping m;
  if (out.layout == ConvNeXtLayout::lightning) {
    m.strip_prefix = {options.lightning_prefix};
    m.only_prefixed = true;
  } else if (out.layout == ConvNeXtLayout::fair) {
    for (const auto& [key, t] : tensors)
      if (auto to = fair_to_timm_key(key)) m.renames.push_back({key, *to, /*exact=*/true});
  }
  for (const auto& [name, t] : io::map_keys(tensors, m)) {
    const Tensor<float> w = std::visit(
        [&](const auto& x) -> Tensor<float> {
          using T = typename std::decay_t<decltype(x)>::value_type;
          if constexpr (is_floating_v<T>) return x.template to<float>();
          throw dtype_error(mamclip::detail::str_cat(where, ": tensor '", name, "' holds ", dtype_name(dtype_v<T>),
                                                     " data; expected floating-point weights"));
        },
        t);
    bool is_extra = false;
    for (const auto& p : options.extra_head_prefixes) is_extra = is_extra || detail::has_prefix(name, p);
    (is_extra ? out.extra_heads : out.weights).insert(name, w);
  }
  return out;
}

// The architecture a timm-named state dict has: depths (blocks per stage), dims,
// in_chans, kernel_size, patch_size, mlp_ratio and num_classes (0 without head.fc);
// the other fields keep their defaults. value_error naming `where` and the key
// when one that every ConvNeXt has is missing.
inline ConvNeXtConfig infer_convnext_config(const nn::StateDict& weights, const std::string& where) {
  auto shape = [&](const std::string& key) -> const Shape& {
    const Tensor<float>* t = weights.find(key);
    MAMCLIP_CHECK(t != nullptr, value_error, where, ": no tensor '", key, "'; every ConvNeXt checkpoint has one");
    return t->shape();
  };
  ConvNeXtConfig c;
  const Shape& stem = shape("stem.0.weight");  // [dims[0], in_chans, p, p]
  MAMCLIP_CHECK(stem.size() == 4, value_error, where, ": 'stem.0.weight' has shape ", shape_str(stem),
                "; expected [dims[0], in_chans, patch, patch]");
  c.in_chans = stem[1];
  c.patch_size = stem[2];
  for (size_t i = 0; i < 4; ++i) {
    int64_t depth = 0;
    while (weights.contains(mamclip::detail::str_cat("stages.", i, ".blocks.", depth, ".conv_dw.weight"))) ++depth;
    c.depths[i] = depth;
    const Shape& dw = shape(mamclip::detail::str_cat("stages.", i, ".blocks.0.conv_dw.weight"));   // [d, 1, k, k]
    const Shape& fc1 = shape(mamclip::detail::str_cat("stages.", i, ".blocks.0.mlp.fc1.weight"));  // [hidden, d]
    c.dims[i] = dw[0];
    c.kernel_size = dw.size() == 4 ? dw[2] : c.kernel_size;
    c.mlp_ratio = static_cast<double>(fc1[0]) / static_cast<double>(dw[0]);
  }
  const Tensor<float>* fc = weights.find("head.fc.weight");
  c.num_classes = fc ? fc->size(0) : 0;
  return c;
}

struct LoadedConvNeXt {
  std::shared_ptr<ConvNeXt> model;  // eval mode
  ConvNeXtLayout layout = ConvNeXtLayout::timm;
  nn::StateDict extra_heads;  // e.g. birads_layer.0.{weight,bias} of a fine-tuned checkpoint
};

namespace detail {

inline std::string describe_arch(const ConvNeXtConfig& c) {
  return mamclip::detail::str_cat("depths (", c.depths[0], ", ", c.depths[1], ", ", c.depths[2], ", ", c.depths[3],
                                  "), dims (", c.dims[0], ", ", c.dims[1], ", ", c.dims[2], ", ", c.dims[3],
                                  "), num_classes ", c.num_classes);
}

}  // namespace detail

namespace detail {

// `ckpt` (read from `path`) loaded into a new ConvNeXt of `config`, in eval mode.
inline LoadedConvNeXt load_convnext_from(ConvNeXtCheckpoint&& ckpt, const ConvNeXtConfig& config,
                                         const std::string& path, const ConvNeXtLoadOptions& options) {
  LoadedConvNeXt out;
  out.layout = ckpt.layout;
  out.extra_heads = std::move(ckpt.extra_heads);
  out.model = std::make_shared<ConvNeXt>(config, ConvNeXtSkipInit{});
  try {
    out.model->load_state_dict(ckpt.weights, options.strict);
  } catch (const nn::state_dict_error& e) {
    std::string hint;
    try {
      const ConvNeXtConfig seen = infer_convnext_config(ckpt.weights, path);
      const std::string a = describe_arch(seen), b = describe_arch(config);
      if (a != b) hint = "\n the checkpoint's shapes say " + a + "; the model has " + b;
    } catch (const value_error&) {
      // No architecture to report: the key list above says what is missing.
    }
    throw nn::state_dict_error(
        mamclip::detail::str_cat(path, " (", convnext_layout_name(out.layout), " layout): ", e.what(), hint),
        e.missing_keys, e.unexpected_keys, e.shape_mismatches);
  }
  out.model->eval();
  return out;
}

}  // namespace detail

// A ConvNeXt of `config` with the weights of `path` (any format
// io::load_state_dict reads, any layout above), in eval mode.
inline LoadedConvNeXt load_convnext(const std::string& path, ConvNeXtConfig config,
                                    const ConvNeXtLoadOptions& options = {}) {
  ConvNeXtCheckpoint ckpt = convnext_state_dict_from(io::load_state_dict(path), path, options);
  if (options.num_classes_from_checkpoint) {
    const Tensor<float>* fc = ckpt.weights.find("head.fc.weight");
    config.num_classes = fc && fc->dim() == 2 ? fc->size(0) : 0;
  }
  return detail::load_convnext_from(std::move(ckpt), config, path, options);
}

// The same with the architecture the checkpoint's shapes give
// (infer_convnext_config; num_classes included, other fields at their defaults).
inline LoadedConvNeXt load_convnext(const std::string& path, const ConvNeXtLoadOptions& options = {}) {
  ConvNeXtCheckpoint ckpt = convnext_state_dict_from(io::load_state_dict(path), path, options);
  ConvNeXtConfig config = infer_convnext_config(ckpt.weights, path);
  config.validate(path);
  return detail::load_convnext_from(std::move(ckpt), config, path, options);
}

// A Linear built from `heads`' "<prefix>weight" [out, in] and "<prefix>bias"
// [out] (optional), e.g. linear_head(loaded.extra_heads, "birads_layer.0.");
// value_error naming the prefix when there is no such weight or the shapes disagree.
inline std::shared_ptr<nn::Linear> linear_head(const nn::StateDict& heads, const std::string& prefix) {
  const Tensor<float>* w = heads.find(prefix + "weight");
  const Tensor<float>* b = heads.find(prefix + "bias");
  MAMCLIP_CHECK(w != nullptr && w->dim() == 2, value_error, "linear_head: no 2-D tensor '", prefix, "weight' (",
                heads.size(), " extra tensors)");
  MAMCLIP_CHECK(b == nullptr || b->shape() == Shape{w->size(0)}, value_error, "linear_head: '", prefix,
                "bias' has shape ", b ? shape_str(b->shape()) : std::string(), "; expected [", w->size(0), "]");
  auto lin = std::make_shared<nn::Linear>(w->size(1), w->size(0), b != nullptr);
  NoGradGuard no_grad;
  lin->weight.copy_(*w);
  if (b) lin->bias.copy_(*b);
  return lin;
}

}  // namespace mamclip::models
