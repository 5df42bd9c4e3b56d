#pragma once
// BERT (HuggingFace transformers' BertModel and BertForMaskedLM): config,
// modules, and loading / saving HF model directories.
//
//   #include <mamclip/models/bert.hpp>
//   auto bert = mamclip::models::load_bert("pubmedbert/");   // config.json + model.safetensors | pytorch_model.bin
//   auto out = bert->forward(input_ids, attention_mask);      // int64 [B, L] each
//   out.last_hidden_state;                                    // [B, L, 768]
//
// defines:
//   bert/config.hpp      BertConfig (config.json <-> struct, validation)
//   bert/modeling.hpp    BertModel, BertForMaskedLM, BertOutput and the layers they are made of
//   bert/pretrained.hpp  load_bert, load_bert_for_masked_lm, save_pretrained, BertLoadOptions

#include "mamclip/models/bert/config.hpp"
#include "mamclip/models/bert/modeling.hpp"
#include "mamclip/models/bert/pretrained.hpp"
