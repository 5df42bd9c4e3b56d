#pragma once
// MAM-CLIP: the vision-language model, its pretraining loss, the fusion
// transformer of its MLM branch, and the fine-tuned classifier.
//
//   #include <mamclip/models/clip.hpp>
//   using namespace mamclip::models::clip;
//   VLModel model(VLModelConfig::mamclip("convnext_tiny"));
//   load_vlmodel_weights(model, "pretrain_convnext_tiny.ckpt");   // Lightning .ckpt, .pth or safetensors
//   VLModelOutput out = model.forward(images, input_ids);         // float [N, 3, H, W], int64 [N, 100]
//   VLLoss loss = vlmodel_loss(out, label_ids);                   // contrastive + 0.5 * MLM
//   loss.total.backward();
//
// defines:
//   clip/fusion.hpp      FusionConfig, FusionTransformer, ResidualAttentionBlock, fusion_input,
//                        fuse_text_image, mlm_log_probs
//   clip/vlmodel.hpp     VLModelConfig, VLModel, VLModelOutput, VLLossOptions, VLLoss, vlmodel_loss,
//                        load_vlmodel_weights, save_vlmodel_weights, read_vlmodel_config
//   clip/classifier.hpp  ClassifierHead, MamClipClassifier, load_classifier_weights

#include "mamclip/models/clip/classifier.hpp"
#include "mamclip/models/clip/fusion.hpp"
#include "mamclip/models/clip/vlmodel.hpp"
