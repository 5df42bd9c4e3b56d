#pragma once
// ConvNeXtConfig: the hyperparameters of timm's ConvNeXt (timm 1.0) that
// ConvNeXt-T/S and the MAM-CLIP vision encoder use: the "patch" stem, 7x7
// depthwise blocks with channels-last LayerNorm and Linear MLP, layer scale,
// and the pool -> norm -> fc head (head_norm_first = False). timm's other
// variants (conv_mlp, GRN, overlapping stems, output_stride < 32) are not built.
//
// defines: ConvNeXtConfig (convnext_tiny(), convnext_small(), by_name(), validate(), drop_path_rates())

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "mamclip/core/error.hpp"

namespace mamclip::models {

struct ConvNeXtConfig {
  std::vector<int64_t> depths{3, 3, 9, 3};       // blocks per stage (4 stages)
  std::vector<int64_t> dims{96, 192, 384, 768};  // channels per stage
  int64_t in_chans = 3;
  // Outputs of head.fc; 0 = no classifier (forward returns the pooled features).
  // timm's default is 1000 (ImageNet); MAM-CLIP replaces head.fc with Linear(768, 768).
  int64_t num_classes = 1000;
  int64_t kernel_size = 7;       // depthwise conv of every block (padding kernel_size / 2)
  int64_t patch_size = 4;        // stem conv kernel and stride
  double mlp_ratio = 4.0;        // mlp.fc1 has int(mlp_ratio * dim) outputs, as timm's int()
  double ls_init_value = 1e-6;   // initial layer scale (gamma)
  double head_init_scale = 1.0;  // scales head.fc's initial weight and bias
  double drop_path_rate = 0.0;   // stochastic depth of the last block; linear from 0 over all blocks
  double drop_rate = 0.0;        // dropout before head.fc (timm's head.drop)
  double layer_norm_eps = 1e-6;  // every LayerNorm: stem, downsampling, blocks, head

  // timm's convnext_tiny / convnext_small (depths (3, 3, 9, 3) / (3, 3, 27, 3), dims 96..768).
  static ConvNeXtConfig convnext_tiny(int64_t num_classes = 1000) {
    ConvNeXtConfig c;
    c.num_classes = num_classes;
    return c;
  }
  static ConvNeXtConfig convnext_small(int64_t num_classes = 1000) {
    ConvNeXtConfig c = convnext_tiny(num_classes);
    c.depths = {3, 3, 27, 3};
    return c;
  }
  // "convnext_tiny" or "convnext_small" (timm's model names); value_error naming the known ones otherwise.
  static ConvNeXtConfig by_name(const std::string& name, int64_t num_classes = 1000) {
    if (name == "convnext_tiny") return convnext_tiny(num_classes);
    if (name == "convnext_small") return convnext_small(num_classes);
    throw value_error(mamclip::detail::str_cat("ConvNeXtConfig: unknown architecture \"", name,
                                               "\"; known: \"convnext_tiny\", \"convnext_small\""));
  }

  int64_t num_features() const { return dims.back(); }  // width of the pooled features
  int64_t num_blocks() const {
    int64_t n = 0;
    for (int64_t d : depths) n += d;
    return n;
  }
  int64_t hidden_dim(size_t stage) const { return static_cast<int64_t>(mlp_ratio * static_cast<double>(dims[stage])); }

  // Stochastic-depth probability of every block, stage by stage: timm's
  // torch.linspace(0, drop_path_rate, num_blocks) in float32 (its values, float
  // rounding included, reach DropPath as Python floats).
  std::vector<std::vector<double>> drop_path_rates() const {
    const int64_t n = num_blocks();
    std::vector<double> flat(static_cast<size_t>(n));
    const float start = 0.0f, end = static_cast<float>(drop_path_rate);
    // ATen's linspace kernel: step in float, the first half counted up from
    // the start and the second half back from the end, each value one fused
    // multiply-add (ATen's build contracts `end - step * k`; a separate multiply
    // and subtract differs in the last bit for some blocks).
    const float step = n > 1 ? (end - start) / static_cast<float>(n - 1) : 0.0f;
    const int64_t half = n / 2;
    for (int64_t i = 0; i < n; ++i)
      flat[static_cast<size_t>(i)] = i < half ? static_cast<double>(std::fma(step, static_cast<float>(i), start))
                                              : static_cast<double>(std::fma(-step, static_cast<float>(n - i - 1), end));
    std::vector<std::vector<double>> out;
    size_t k = 0;
    for (int64_t d : depths) {
      out.emplace_back(flat.begin() + static_cast<std::ptrdiff_t>(k),
                       flat.begin() + static_cast<std::ptrdiff_t>(k + d));
      k += static_cast<size_t>(d);
    }
    return out;
  }

  // value_error naming `where` and the field when a size is not positive,
  // depths and dims are not four each, a rate is outside [0, 1) or a scale is
  // not finite.
  void validate(const std::string& where = "ConvNeXtConfig") const {
    MAMCLIP_CHECK(depths.size() == 4 && dims.size() == 4, value_error, where, ": depths has ", depths.size(),
                  " and dims has ", dims.size(), " entries; expected 4 stages each");
    for (size_t i = 0; i < 4; ++i) {
      MAMCLIP_CHECK(depths[i] > 0, value_error, where, ": depths[", i, "] is ", depths[i],
                    "; expected a positive number of blocks");
      MAMCLIP_CHECK(dims[i] > 0, value_error, where, ": dims[", i, "] is ", dims[i], "; expected a positive width");
    }
    MAMCLIP_CHECK(in_chans > 0, value_error, where, ": in_chans is ", in_chans, "; expected a positive integer");
    MAMCLIP_CHECK(num_classes >= 0, value_error, where, ": num_classes is ", num_classes,
                  "; expected 0 (no classifier) or a positive integer");
    MAMCLIP_CHECK(kernel_size > 0 && kernel_size % 2 == 1, value_error, where, ": kernel_size is ", kernel_size,
                  "; expected a positive odd integer (the depthwise conv keeps the size with padding kernel_size / 2)");
    MAMCLIP_CHECK(patch_size > 0, value_error, where, ": patch_size is ", patch_size, "; expected a positive integer");
    for (size_t i = 0; i < 4; ++i)
      MAMCLIP_CHECK(hidden_dim(i) > 0, value_error, where, ": mlp_ratio ", mlp_ratio, " gives ", hidden_dim(i),
                    " hidden channels for dims[", i, "] = ", dims[i], "; expected at least 1");
    auto rate = [&](const char* key, double p) {
      MAMCLIP_CHECK(p >= 0 && p < 1, value_error, where, ": ", key, " is ", p, "; expected a probability in [0, 1)");
    };
    rate("drop_path_rate", drop_path_rate);
    rate("drop_rate", drop_rate);
    MAMCLIP_CHECK(std::isfinite(ls_init_value) && std::isfinite(head_init_scale), value_error, where,
                  ": ls_init_value (", ls_init_value, ") and head_init_scale (", head_init_scale, ") must be finite");
    MAMCLIP_CHECK(layer_norm_eps > 0 && std::isfinite(layer_norm_eps), value_error, where, ": layer_norm_eps is ",
                  layer_norm_eps, "; expected a positive number");
  }
};

}  // namespace mamclip::models
