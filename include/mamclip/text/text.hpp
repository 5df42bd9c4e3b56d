#pragma once
// text: the BERT tokenizer that reproduces HuggingFace's Python BertTokenizer,
// and MAM-CLIP's MLM masking. Needs utf8proc: link the mamclip::text target.
//
//   auto tok = mamclip::text::BertTokenizer::from_file("vocab.txt");
//   auto batch = tok.encode_batch({"Spiculated mass at 10 o'clock."});   // [1, 100] ids + mask
//   mamclip::text::MlmMasker masker(tok);
//   mamclip::Generator gen(42);
//   auto mlm = masker.encode_batch({"Spiculated mass at 10 o'clock."}, gen);
//
// defines:
//   unicode.hpp          unicode:: UTF-8 decoding (Python's "replace"), categories, BERT's character
//                        classes, str.lower() with final sigma, NFD, NFC, strip_accents
//   vocab.hpp            SpecialTokens, Vocab (vocab.txt loading with checked errors)
//   basic_tokenizer.hpp  BasicTokenizerOptions, BasicTokenizer
//   wordpiece.hpp        WordPiece (greedy longest-match, "##" continuations, [UNK] words)
//   tokenizer.hpp        BertTokenizerOptions, BertTokenizer (token_ids, tokenize, encode,
//                        encode_batch, decode), EncodeOptions, Padding, Encoding, BatchEncoding
//   pretrained.hpp       load_bert_tokenizer, read_bert_tokenizer_settings, BertTokenizerSettings
//                        (HF model directories: vocab.txt or tokenizer.json, tokenizer_config.json)
//   mlm_masking.hpp      MlmOptions, MlmAction, MlmDecision, MaskedCaption, MlmEncoding, MlmBatch, MlmMasker

#include "mamclip/text/basic_tokenizer.hpp"
#include "mamclip/text/mlm_masking.hpp"
#include "mamclip/text/pretrained.hpp"
#include "mamclip/text/tokenizer.hpp"
#include "mamclip/text/unicode.hpp"
#include "mamclip/text/vocab.hpp"
#include "mamclip/text/wordpiece.hpp"
