#pragma once
// A WordPiece vocabulary that spells any lowercase ASCII caption (specials,
// letters, digits, their ## continuations and punctuation): a real
// tokenizer for the pretraining-loop tests without a vocab file.
#include <memory>
#include <string>
#include <vector>

#include "mamclip/text/tokenizer.hpp"

namespace mamclip::test {

inline text::BertTokenizer spelling_tokenizer() {
  std::vector<std::string> tokens{"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
  for (char c : std::string("abcdefghijklmnopqrstuvwxyz0123456789")) {
    tokens.push_back(std::string(1, c));
    tokens.push_back("##" + std::string(1, c));
  }
  for (char c : std::string(".,;:-()/%")) tokens.push_back(std::string(1, c));
  return text::BertTokenizer(std::make_shared<const text::Vocab>(text::Vocab::from_tokens(tokens)));
}

}  // namespace mamclip::test
