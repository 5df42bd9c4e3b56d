// The mamclip command line. Scripts depend on its flags, output formats and
// exit codes; change them only compatibly.
//
//   mamclip tokenize --vocab FILE [--cased] [--max-length N]     < texts > ids
//   mamclip tokenize --model DIR  [--cased] [--max-length N]     < texts > ids
//   mamclip embed --model DIR --output FILE.safetensors [--max-length N] [--batch N] < texts
//   mamclip encode-image --model FILE --output FILE.safetensors [--arch NAME] [options] IMAGE...
//   mamclip pretrain [--config FILE] [--data PATH] [--resume] [KEY=VALUE ...]
//   mamclip finetune --data PATH --output DIR [--init scratch|mamclip:FILE|timm:FILE] [options]
//   mamclip zeroshot --model FILE --data PATH
//   mamclip convert INPUT OUTPUT.safetensors [--strip-prefix P]
//   mamclip gradcam --model FILE --output FILE.png IMAGE
//   mamclip demo [--data PATH] [--output DIR] [--quick]
//   (the training commands are in cli_train.hpp)
//
// Input: one text per line of stdin (UTF-8; a trailing \r is dropped, so CRLF
// files work; an empty line is an empty text; a last line without a newline counts).
//
// Exit status: 0 success; 1 a runtime error (missing or corrupt file, model
// that does not load, output that cannot be written), reported on stderr as
// "mamclip <command>: <what>"; 2 a usage error (unknown command or flag, a
// flag without its value, a value that is not a number in range), reported as
// "mamclip <command>: <what>" naming the flag, followed by a pointer to --help.

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <iostream>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mamclip/io/safetensors.hpp"
#include "mamclip/mamclip.hpp"
#include "mamclip/data/transforms.hpp"
#include "mamclip/io/image.hpp"
#include "mamclip/models/bert.hpp"
#include "mamclip/models/convnext.hpp"
#include "mamclip/text/pretrained.hpp"
#include "mamclip/text/text.hpp"

using namespace mamclip;

namespace {

constexpr const char* kMainHelp = R"(usage: mamclip <command> [options]

commands:
  tokenize   BERT WordPiece ids of each line of stdin, one line of ids per text
  embed      BERT hidden states of each line of stdin, written to a safetensors file
  encode-image  ConvNeXt features and outputs of images, written to a safetensors file
  pretrain   MAM-CLIP pretraining (contrastive + masked language modelling) from a config
  finetune   fine-tune the vision encoder as a classifier; macro-F1, ROC-AUC, confusion matrix
  evaluate   score a fine-tuned classifier on labelled images (macro-F1, ROC-AUC, confusion matrix)
  zeroshot   zero-shot classification and retrieval recall@K with a pretrained model
  convert    a .ckpt / .pth / .bin checkpoint to safetensors
  gradcam    Grad-CAM heat map of a fine-tuned classifier over a mammogram (PNG)
  demo       the whole pipeline end to end on a synthetic set (or --data) in minutes

Data (--data PATH): a mini-MIAS directory (image_labels.csv), a directory with
captions.jsonl (a synthetic set of `mamclip demo`), a TEKNOFEST
metadata_image_level.json, or MAM-CLIP image-caption records (.json / .jsonl of
{"image", "caption"}); BI-RADS maps to 3 classes: 1 normal, 2 benign, 4-5 suspicious.

mamclip <command> --help describes a command.
Exit status: 0 success, 1 runtime error (files, models), 2 usage error (flags).
)";

constexpr const char* kTokenizeHelp = R"(usage: mamclip tokenize (--vocab FILE | --model DIR) [--cased] [--max-length N]

Reads one text per line of stdin (a trailing \r is dropped) and writes one line
per text: the space-separated ids of [CLS] <WordPiece tokens> [SEP], the ids
HuggingFace's BertTokenizer gives. No padding. An empty line gives the ids of
[CLS] [SEP].

options:
  --vocab FILE      a BERT vocab.txt (one token per line, id = line number - 1);
                    lower-cases and strips accents unless --cased
  --model DIR       a HuggingFace model directory instead: vocab.txt or
                    tokenizer.json, with the settings of tokenizer_config.json
  --cased           keep case (and accents): do_lower_case=False
  --max-length N    at most N ids per line, [CLS] and [SEP] included (N >= 2);
                    longer texts lose their tail tokens. Default 512 (BERT's
                    position limit), or the model's model_max_length if smaller
  -h, --help        this text
)";

constexpr const char* kEmbedHelp = R"(usage: mamclip embed --model DIR --output FILE.safetensors [--max-length N] [--batch N]

Runs a BERT encoder (eval mode, no dropout) on one text per line of stdin and
writes a safetensors file with, for N texts padded to the longest L of all:
  last_hidden_state  float32 [N, L, H]
  attention_mask     int64   [N, L]   1 for tokens, 0 for padding
  cls                float32 [N, H]   last_hidden_state[:, 0] (the [CLS] position)
  input_ids          int64   [N, L]   the ids the model saw ([PAD] after the text)
and metadata {"model": DIR, "max_length": N}. Token type ids are all 0. Every
batch is padded to L, so the file equals one transformers BertModel call with
padding="longest", hidden states of padded positions included.

options:
  --model DIR       a HuggingFace BERT directory: config.json, model.safetensors
                    (or a sharded index, or pytorch_model.bin), and vocab.txt or
                    tokenizer.json (+ tokenizer_config.json)
  --output FILE     the safetensors file to write (replaced atomically)
  --max-length N    at most N tokens per text, [CLS] and [SEP] included
                    (2 <= N <= max_position_embeddings). Default: the smallest of
                    512, max_position_embeddings and model_max_length
  --batch N         texts per forward pass (N >= 1, default 32)
  -h, --help        this text
)";

constexpr const char* kEncodeImageHelp = R"(usage: mamclip encode-image --model FILE --output FILE.safetensors [--arch NAME]
                            [--height H] [--width W] [--num-classes N | --embed-dim N]
                            [--layout NAME] [--batch N] IMAGE...

Runs a ConvNeXt image encoder (eval mode, no dropout) on each IMAGE (PNG 8/16-bit,
JPEG, PGM/PPM), preprocessed as MAM-CLIP does without augmentation: resized to
H x W (bilinear), grayscale replicated to 3 channels, min-max scaled to [0, 1].
Writes a safetensors file with, for N images:
  features   float32 [N, C]   pooled features after head.norm, before head.fc (C = 768)
  output     float32 [N, K]   head.fc of the features (the MAM-CLIP image embedding);
                              the features again when the model has no head.fc
  <head>     float32 [N, k]   for a fine-tuned checkpoint, each extra linear head
                              (birads_layer, density_layer) applied to output
and metadata {"model", "arch", "layout", "height", "width", "images" (one path per line)}.

options:
  --model FILE      the weights: timm (safetensors, .pth), FAIR (.pth), a MAM-CLIP
                    Lightning .ckpt (VLModel.vision_encoder.*) or a fine-tuned .pth
  --arch NAME       convnext_tiny, convnext_small, or auto (default): the
                    architecture the checkpoint's tensor names and shapes give
  --output FILE     the safetensors file to write (replaced atomically)
  --height H, --width W
                    the network's input size (>= 32 each; default 1024 x 768, MAM-CLIP's)
  --num-classes N, --embed-dim N
                    head.fc's outputs (0 = no head.fc); default: the checkpoint's
  --layout NAME     automatic (default), timm, fair, lightning or finetune
  --batch N         images per forward pass (N >= 1, default 1)
  -h, --help        this text
)";

// A command-line mistake: exit status 2.
struct UsageError {
  std::string message;
};

// Flags of one command: name -> whether it takes a value.
using FlagSpec = std::map<std::string, bool, std::less<>>;

struct Args {
  std::map<std::string, std::string, std::less<>> values;  // flags with values (and "" for switches)
  bool help = false;

  bool has(std::string_view flag) const { return values.find(flag) != values.end(); }
  std::optional<std::string> get(std::string_view flag) const {
    const auto it = values.find(flag);
    if (it == values.end()) return std::nullopt;
    return it->second;
  }
};

// --flag VALUE, --flag=VALUE, switches; each flag at most once. A value may
// start with '-' (a file named "-x" is still a file) only in the --flag=VALUE
// form or when it is not itself a known flag. Other arguments go to
// `positional` when the command takes them (non-null), else are usage errors.
Args parse_flags(const std::vector<std::string>& argv, const FlagSpec& spec,
                 std::vector<std::string>* positional = nullptr) {
  Args a;
  for (size_t i = 0; i < argv.size(); ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      a.help = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0) {
      if (!positional) throw UsageError{"unexpected argument '" + arg + "' (texts are read from stdin)"};
      positional->push_back(arg);
      continue;
    }
    std::optional<std::string> inline_value;
    if (const size_t eq = arg.find('='); eq != std::string::npos) {
      inline_value = arg.substr(eq + 1);
      arg.resize(eq);
    }
    const auto it = spec.find(arg);
    if (it == spec.end()) throw UsageError{"unknown option '" + arg + "'"};
    if (a.has(arg)) throw UsageError{arg + " is given twice"};
    if (!it->second) {
      if (inline_value) throw UsageError{arg + " takes no value, got '" + *inline_value + "'"};
      a.values[arg] = "";
      continue;
    }
    if (inline_value) {
      a.values[arg] = *inline_value;
    } else {
      if (i + 1 >= argv.size() || spec.count(argv[i + 1]) || argv[i + 1] == "--help" || argv[i + 1] == "-h")
        throw UsageError{arg + " needs a value"};
      a.values[arg] = argv[++i];
    }
    if (a.values[arg].empty()) throw UsageError{arg + " needs a non-empty value"};
  }
  return a;
}

int64_t parse_int(const std::string& flag, const std::string& text, int64_t lo, int64_t hi) {
  int64_t v = 0;
  const char* end = text.data() + text.size();
  const auto [p, ec] = std::from_chars(text.data(), end, v);
  const bool ok = ec == std::errc() && p == end && v >= lo && v <= hi;
  if (!ok) {
    std::string range = hi == std::numeric_limits<int64_t>::max() ? ">= " + std::to_string(lo)
                                                                 : "in " + std::to_string(lo) + ".." + std::to_string(hi);
    throw UsageError{flag + " expects an integer " + range + ", got '" + text + "'"};
  }
  return v;
}

// Lines of stdin; a trailing \r is dropped from each.
std::vector<std::string> read_lines(std::istream& in) {
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
  }
  if (in.bad()) throw io_error("error while reading stdin");
  return lines;
}

constexpr int64_t kDefaultMaxLength = 512;

// ---- tokenize

int run_tokenize(const std::vector<std::string>& argv) {
  const Args a = parse_flags(argv, {{"--vocab", true}, {"--model", true}, {"--cased", false}, {"--max-length", true}});
  if (a.help) {
    std::cout << kTokenizeHelp;
    return 0;
  }
  if (a.has("--vocab") == a.has("--model"))
    throw UsageError{a.has("--vocab") ? "give --vocab or --model, not both" : "--vocab FILE or --model DIR is required"};
  std::optional<int64_t> max_length;
  if (const auto v = a.get("--max-length"))
    max_length = parse_int("--max-length", *v, 2, std::numeric_limits<int64_t>::max());

  // Files are read after the command line is known to be valid: a usage
  // error never depends on what is on disk.
  std::optional<text::BertTokenizer> tok;
  if (const auto vocab = a.get("--vocab")) {
    text::BertTokenizerOptions options;
    options.do_lower_case = !a.has("--cased");
    tok.emplace(text::BertTokenizer::from_file(*vocab, options));
  } else {
    text::BertTokenizerSettings settings;
    tok.emplace(text::load_bert_tokenizer(*a.get("--model"), &settings));
    if (a.has("--cased")) {
      settings.options.do_lower_case = false;
      const auto vocab = tok->vocab_ptr();  // emplace destroys *tok before building the new one
      tok.emplace(vocab, settings.options);
    }
    if (!max_length && settings.model_max_length)
      max_length = std::max<int64_t>(2, std::min(kDefaultMaxLength, *settings.model_max_length));
  }
  text::EncodeOptions opt;
  opt.max_length = max_length.value_or(kDefaultMaxLength);
  opt.padding = text::Padding::none;
  opt.truncation = true;

  std::string line, out;
  while (std::getline(std::cin, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const auto enc = tok->encode(line, opt);
    out.clear();
    char buf[24];
    for (size_t i = 0; i < enc.input_ids.size(); ++i) {
      if (i) out += ' ';
      const auto r = std::to_chars(buf, buf + sizeof buf, enc.input_ids[i]);
      out.append(buf, r.ptr);
    }
    out += '\n';
    std::cout.write(out.data(), static_cast<std::streamsize>(out.size()));
  }
  if (std::cin.bad()) throw io_error("error while reading stdin");
  std::cout.flush();
  if (!std::cout) throw io_error("error while writing stdout");
  return 0;
}

// ---- embed

int run_embed(const std::vector<std::string>& argv) {
  const Args a =
      parse_flags(argv, {{"--model", true}, {"--output", true}, {"--max-length", true}, {"--batch", true}});
  if (a.help) {
    std::cout << kEmbedHelp;
    return 0;
  }
  if (!a.has("--model")) throw UsageError{"--model DIR is required"};
  if (!a.has("--output")) throw UsageError{"--output FILE is required"};
  std::optional<int64_t> max_length;
  if (const auto v = a.get("--max-length"))
    max_length = parse_int("--max-length", *v, 2, std::numeric_limits<int64_t>::max());
  const int64_t batch = a.has("--batch") ? parse_int("--batch", *a.get("--batch"), 1, 1 << 20) : 32;
  const std::string dir = *a.get("--model"), output = *a.get("--output");

  // Cheap checks before the weights are read.
  text::BertTokenizerSettings settings;
  const text::BertTokenizer tok = text::load_bert_tokenizer(dir, &settings);
  const auto config = models::BertConfig::from_json_file((std::filesystem::path(dir) / "config.json").string());
  MAMCLIP_CHECK(tok.vocab().size() <= config.vocab_size, value_error, "the tokenizer of '", dir, "' has ",
                tok.vocab().size(), " tokens but config.json's vocab_size is ", config.vocab_size);
  if (max_length) {
    if (*max_length > config.max_position_embeddings)
      throw UsageError{"--max-length " + std::to_string(*max_length) + " exceeds the model's max_position_embeddings " +
                       std::to_string(config.max_position_embeddings)};
  } else {
    max_length = std::min(kDefaultMaxLength, config.max_position_embeddings);
    if (settings.model_max_length) max_length = std::min(*max_length, *settings.model_max_length);
    max_length = std::max<int64_t>(*max_length, 2);
  }

  const std::vector<std::string> texts = read_lines(std::cin);
  text::EncodeOptions opt;
  opt.max_length = *max_length;
  opt.padding = text::Padding::none;
  opt.truncation = true;
  std::vector<text::Encoding> encodings;
  encodings.reserve(texts.size());
  int64_t L = 0;
  for (const auto& t : texts) {
    encodings.push_back(tok.encode(t, opt));
    L = std::max<int64_t>(L, static_cast<int64_t>(encodings.back().input_ids.size()));
  }
  const int64_t N = static_cast<int64_t>(texts.size()), H = config.hidden_size;

  std::vector<int64_t> ids(static_cast<size_t>(N * L), tok.vocab().pad_id()), mask(static_cast<size_t>(N * L), 0);
  for (int64_t n = 0; n < N; ++n) {
    const auto& e = encodings[static_cast<size_t>(n)];
    std::copy(e.input_ids.begin(), e.input_ids.end(), ids.begin() + n * L);
    std::copy(e.attention_mask.begin(), e.attention_mask.end(), mask.begin() + n * L);
  }
  Tensor<float> hidden = Tensor<float>::empty({N, L, H});
  Tensor<float> cls = Tensor<float>::empty({N, H});

  if (N > 0) {
    models::BertLoadOptions load;
    load.add_pooling_layer = false;  // embed never uses it; checkpoints without one load too
    const auto model = models::load_bert(dir, load);
    model->eval();
    NoGradGuard no_grad;
    for (int64_t b0 = 0; b0 < N; b0 += batch) {
      const int64_t b = std::min(batch, N - b0);
      const std::vector<int64_t> bid(ids.begin() + b0 * L, ids.begin() + (b0 + b) * L);
      const std::vector<int64_t> bmask(mask.begin() + b0 * L, mask.begin() + (b0 + b) * L);
      const auto out = model->forward(from_vector<int64_t>(bid, {b, L}), from_vector<int64_t>(bmask, {b, L}));
      const Tensor<float> h = out.last_hidden_state.contiguous();  // [b, L, H]
      MAMCLIP_CHECK(h.shape() == (Shape{b, L, H}), shape_error, "the model returned last_hidden_state of shape ",
                    shape_str(h.shape()), "; expected ", shape_str(Shape{b, L, H}));
      std::copy(h.data_ptr(), h.data_ptr() + b * L * H, hidden.data_ptr() + b0 * L * H);
    }
    for (int64_t n = 0; n < N; ++n)
      std::copy(hidden.data_ptr() + n * L * H, hidden.data_ptr() + n * L * H + H, cls.data_ptr() + n * H);
  }

  io::NamedTensors tensors;
  tensors.emplace_back("last_hidden_state", hidden);
  tensors.emplace_back("attention_mask", from_vector<int64_t>(mask, {N, L}));
  tensors.emplace_back("cls", cls);
  tensors.emplace_back("input_ids", from_vector<int64_t>(ids, {N, L}));
  io::save_safetensors(output, tensors, {{"model", dir}, {"max_length", std::to_string(*max_length)}});
  std::cerr << "mamclip embed: wrote " << output << ": " << N << " texts, last_hidden_state [" << N << ", " << L
            << ", " << H << "]\n";
  return 0;
}

// ---- encode-image

int run_encode_image(const std::vector<std::string>& argv) {
  std::vector<std::string> images;
  const Args a = parse_flags(argv,
                             {{"--model", true}, {"--arch", true}, {"--output", true}, {"--height", true},
                              {"--width", true}, {"--num-classes", true}, {"--embed-dim", true}, {"--layout", true},
                              {"--batch", true}},
                             &images);
  if (a.help) {
    std::cout << kEncodeImageHelp;
    return 0;
  }
  for (const char* flag : {"--model", "--output"})
    if (!a.has(flag)) throw UsageError{std::string(flag) + " FILE is required"};
  if (images.empty()) throw UsageError{"no IMAGE given"};
  const std::string arch = a.get("--arch").value_or("auto");
  if (arch != "convnext_tiny" && arch != "convnext_small" && arch != "auto")
    throw UsageError{"--arch expects convnext_tiny, convnext_small or auto, got '" + arch + "'"};
  if (a.has("--num-classes") && a.has("--embed-dim")) throw UsageError{"give --num-classes or --embed-dim, not both"};
  data::MammogramTransformOptions transform;
  if (const auto v = a.get("--height")) transform.height = parse_int("--height", *v, 32, 1 << 15);
  if (const auto v = a.get("--width")) transform.width = parse_int("--width", *v, 32, 1 << 15);
  std::optional<int64_t> num_classes;
  for (const char* flag : {"--num-classes", "--embed-dim"})
    if (const auto v = a.get(flag)) num_classes = parse_int(flag, *v, 0, 1 << 20);
  models::ConvNeXtLoadOptions load;
  if (const auto v = a.get("--layout")) {
    try {
      load.layout = models::parse_convnext_layout(*v);
    } catch (const value_error&) {
      throw UsageError{"--layout expects automatic, timm, fair, lightning or finetune, got '" + *v + "'"};
    }
  }
  const int64_t batch = a.has("--batch") ? parse_int("--batch", *a.get("--batch"), 1, 1 << 16) : 1;
  const std::string model_path = *a.get("--model"), output = *a.get("--output");
#if !defined(MAMCLIP_CLI_IMAGES)
  throw io_error(
      "this mamclip was built without image decoding: a compiled stb (Debian: libstb-dev) was not found when it was "
      "configured");
#endif

  load.num_classes_from_checkpoint = !num_classes;
  const auto loaded =
      arch == "auto"
          ? models::load_convnext(model_path, load)
          : models::load_convnext(model_path, models::ConvNeXtConfig::by_name(arch, num_classes.value_or(0)), load);
  models::ConvNeXt& model = *loaded.model;
  MAMCLIP_CHECK(!num_classes || model.num_classes() == *num_classes, value_error, model_path, ": head.fc has ",
                model.num_classes(), " outputs; expected ", *num_classes, " (--num-classes / --embed-dim)");
  model.eval();
  // Extra heads of a fine-tuned checkpoint: "<name>.0.{weight,bias}" = Sequential(Linear).
  std::vector<std::pair<std::string, std::shared_ptr<nn::Linear>>> heads;
  for (const auto& key : loaded.extra_heads.keys()) {
    const std::string suffix = ".0.weight";
    if (key.size() > suffix.size() && key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0) {
      const std::string name = key.substr(0, key.size() - suffix.size());
      heads.emplace_back(name, models::linear_head(loaded.extra_heads, name + ".0."));
    }
  }

  const int64_t N = static_cast<int64_t>(images.size()), C = model.num_features();
  std::vector<Tensor<float>> features, outputs;
  std::vector<std::vector<Tensor<float>>> head_outputs(heads.size());
  Generator gen;  // preprocessing without augmentation draws nothing
  NoGradGuard no_grad;
  for (int64_t b0 = 0; b0 < N; b0 += batch) {
    std::vector<Tensor<float>> pixels;
    for (int64_t i = b0; i < std::min(N, b0 + batch); ++i) {
#if defined(MAMCLIP_CLI_IMAGES)
      pixels.push_back(data::preprocess_mammogram(io::read_image(images[static_cast<size_t>(i)]), transform, gen));
#endif
    }
    const models::ConvNeXtOutput out = model.forward_with_features(stack(pixels));
    features.push_back(out.pooled);
    outputs.push_back(out.output);
    for (size_t h = 0; h < heads.size(); ++h) head_outputs[h].push_back(heads[h].second->forward(out.output));
  }

  io::NamedTensors tensors;
  tensors.emplace_back("features", cat(features).contiguous());
  tensors.emplace_back("output", cat(outputs).contiguous());
  for (size_t h = 0; h < heads.size(); ++h) tensors.emplace_back(heads[h].first, cat(head_outputs[h]).contiguous());
  std::string list;
  for (const auto& p : images) list += (list.empty() ? "" : "\n") + p;
  io::save_safetensors(output, tensors,
                       {{"model", model_path}, {"arch", arch}, {"layout", models::convnext_layout_name(loaded.layout)},
                        {"height", std::to_string(transform.height)}, {"width", std::to_string(transform.width)},
                        {"images", list}});
  std::cerr << "mamclip encode-image: wrote " << output << ": " << N << " images (" << arch << ", "
            << models::convnext_layout_name(loaded.layout) << " checkpoint), features [" << N << ", " << C
            << "], output [" << N << ", " << (model.num_classes() ? model.num_classes() : C)
            << "]\n";
  return 0;
}

}  // namespace

#ifdef MAMCLIP_CLI_IMAGES
#include "cli_train.hpp"
#endif

int main(int argc, char** argv) {
  std::ios::sync_with_stdio(false);
  const std::vector<std::string> all(argv + 1, argv + argc);
  if (all.empty()) {
    std::cerr << kMainHelp;
    return 2;
  }
  const std::string& command = all[0];
  if (command == "-h" || command == "--help" || command == "help") {
    std::cout << kMainHelp;
    return 0;
  }
  const std::vector<std::string> rest(all.begin() + 1, all.end());
  int (*run)(const std::vector<std::string>&) = nullptr;
  if (command == "tokenize") run = run_tokenize;
  if (command == "embed") run = run_embed;
  if (command == "encode-image") run = run_encode_image;
#ifdef MAMCLIP_CLI_IMAGES
  if (command == "pretrain") run = run_pretrain;
  if (command == "finetune") run = run_finetune;
  if (command == "zeroshot") run = run_zeroshot;
  if (command == "convert") run = run_convert;
  if (command == "demo") run = run_demo;
  if (command == "gradcam") run = run_gradcam;
  if (command == "evaluate") run = run_evaluate;
#endif
  if (!run) {
    std::cerr << "mamclip: unknown command '" << command
              << "' (commands: tokenize, embed, encode-image, pretrain, finetune, evaluate, zeroshot, convert, gradcam, demo; see mamclip --help)\n";
    return 2;
  }
  try {
    return run(rest);
  } catch (const UsageError& e) {
    std::cerr << "mamclip " << command << ": " << e.message << " (see mamclip " << command << " --help)\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "mamclip " << command << ": " << e.what() << "\n";
    return 1;
  } catch (...) {
    std::cerr << "mamclip " << command << ": unexpected error\n";
    return 1;
  }
}
