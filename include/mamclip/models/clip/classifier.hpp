#pragma once
// The MAM-CLIP fine-tuned classifier: the pretrained vision encoder (timm
// ConvNeXt, head.fc = Linear(dims.back(), embed_dim)) with classification
// heads on its embed_dim-wide output.
//
// Module tree and state-dict names are those of the released
// convnext_{tiny,small}_ftune.pth, which the reference's loading notebook
// (train/mam_clip_load.ipynb) builds as a timm model with attributes added:
//
//   model = timm.create_model("convnext_tiny"); model.head.fc = nn.Linear(768, 768)
//   model.birads_layer = nn.Sequential(nn.Linear(768, 5)); model.density_layer = nn.Sequential(nn.Linear(768, 4))
//
// so the keys are the ConvNeXt's own at the top level, then each head:
//
//   stem.*, stages.*, head.norm.*, head.fc.{weight,bias}   [embed_dim, dims.back()], [embed_dim]
//   <head name>.0.weight, .bias                            [num_classes, embed_dim], [num_classes]
//
// Each head's Sequential holds only the Linear: nothing (no activation, no
// dropout) sits between head.fc and a head, so logits = head(head.fc(pooled)).
// The reference's fine-tuning code is not public; this is what its module
// tree computes.
//
// defines: ClassifierHead, MamClipClassifier, load_classifier_weights

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mamclip/models/clip/vlmodel.hpp"
#include "mamclip/nn/containers.hpp"
#include "mamclip/nn/linear.hpp"

namespace mamclip::models::clip {

struct ClassifierHead {
  std::string name;     // the module name, e.g. "birads_layer"
  int64_t num_classes;  // outputs of "<name>.0"
};

class MamClipClassifier : public nn::Module {
 public:
  // The released models' heads: BI-RADS 0, 1, 2, 4, 5 and ACR density A-D.
  static std::vector<ClassifierHead> mamclip_heads() { return {{"birads_layer", 5}, {"density_layer", 4}}; }

  // Initialised as the reference builds it: timm's init for the trunk, nn.Linear's default init for
  // head.fc and the heads, all drawn from `gen`. vision.num_classes is not used.
  MamClipClassifier(const ConvNeXtConfig& vision, int64_t embed_dim, std::vector<ClassifierHead> heads,
                    Generator& gen = default_generator())
      : heads_(std::move(heads)) {
    MAMCLIP_CHECK(embed_dim > 0, value_error, "MamClipClassifier: embed_dim is ", embed_dim,
                  "; expected a positive integer");
    MAMCLIP_CHECK(!heads_.empty(), value_error, "MamClipClassifier: no heads; expected at least one");
    ConvNeXtConfig vc = vision;
    vc.num_classes = 0;
    encoder = ConvNeXt(vc, gen).with_classifier(embed_dim, gen);
    // The encoder's children sit at the top level (timm's names), the encoder itself is not a child.
    register_module("stem", encoder->stem);
    register_module("stages", encoder->stages);
    register_module("head", encoder->head);
    for (const auto& h : heads_) {
      MAMCLIP_CHECK(h.num_classes > 0, value_error, "MamClipClassifier: head '", h.name, "' has ", h.num_classes,
                    " classes; expected at least 1");
      auto seq = std::make_shared<nn::Sequential>();
      seq->push_back(std::make_shared<nn::Linear>(embed_dim, h.num_classes, true, gen));
      head_layers.push_back(register_module(h.name, seq));
    }
  }
  std::string type_name() const override { return "ConvNeXt"; }

  // images [N, C, H, W] -> logits [N, num_classes] of each head, in head order.
  std::vector<Tensor<float>> forward(const Tensor<float>& images) {
    const Tensor<float> features = encoder->forward(images);  // [N, embed_dim]: head.fc's output
    std::vector<Tensor<float>> out;
    for (const auto& h : head_layers) out.push_back(h->forward(features));
    return out;
  }
  std::vector<Tensor<float>> operator()(const Tensor<float>& images) { return forward(images); }

  // Copies a pretrained VLModel's vision_encoder.* (head.fc included) into the encoder; the heads keep
  // their weights. state_dict_error when the architectures differ.
  void init_from_vlmodel(const VLModel& pretrained) { encoder->load_state_dict(pretrained.vision_encoder->state_dict()); }

  const std::vector<ClassifierHead>& heads() const { return heads_; }

  std::shared_ptr<ConvNeXt> encoder;  // shares its stem, stages and head with this module
  std::vector<std::shared_ptr<nn::Sequential>> head_layers;

 private:
  std::vector<ClassifierHead> heads_;
};

// Loads a fine-tuned checkpoint (.pth, .bin, safetensors) strictly: one state_dict_error, prefixed
// with the path, lists every missing, unexpected and mis-shaped key.
inline void load_classifier_weights(MamClipClassifier& model, const std::filesystem::path& path) {
  nn::StateDict sd;
  for (const auto& [name, t] : io::load_state_dict(path.string()))
    sd.insert(name, models::detail::to_float_weight(t, name, path.string()));
  try {
    model.load_state_dict(sd, /*strict=*/true);
  } catch (const nn::state_dict_error& e) {
    throw nn::state_dict_error(mamclip::detail::str_cat(path.string(), ": ", e.what()), e.missing_keys,
                               e.unexpected_keys, e.shape_mismatches);
  }
}

}  // namespace mamclip::models::clip
