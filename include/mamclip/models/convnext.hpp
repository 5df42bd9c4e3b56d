#pragma once
// ConvNeXt (timm's ConvNeXt-T/S, the MAM-CLIP vision encoder): config,
// modules, and loading checkpoints of timm, FAIR, MAM-CLIP Lightning and
// MAM-CLIP fine-tuned layouts.
//
//   #include <mamclip/models/convnext.hpp>
//   auto enc = mamclip::models::load_convnext("pretrain_convnext_tiny.ckpt",
//                                             mamclip::models::ConvNeXtConfig::convnext_tiny(768)).model;
//   auto out = enc->forward_with_features(images);   // float [N, 3, 1024, 768] in [0, 1]
//   out.pooled;                                      // [N, 768] after head.norm
//   out.output;                                      // [N, 768] head.fc: the image embedding
//
// defines:
//   convnext/config.hpp      ConvNeXtConfig (presets convnext_tiny / convnext_small, drop-path rates)
//   convnext/modeling.hpp    ConvNeXt, ConvNeXtStage, ConvNeXtBlock, ConvNeXtMlp, ConvNeXtHead,
//                            ConvNeXtOutput, init_convnext_weights, ConvNeXtSkipInit
//   convnext/pretrained.hpp  load_convnext, convnext_state_dict_from, detect_convnext_layout,
//                            infer_convnext_config, linear_head, ConvNeXtLoadOptions, ConvNeXtLayout

#include "mamclip/models/convnext/config.hpp"
#include "mamclip/models/convnext/modeling.hpp"
#include "mamclip/models/convnext/pretrained.hpp"
