// The training commands of the mamclip program: pretrain, finetune, evaluate,
// zeroshot, convert and demo (the end-to-end run of README's first command).
// Included by mamclip_cli.cpp after its flag parsing helpers.
//
// Data for every command (--data PATH):
//   a directory with image_labels.csv     mini-MIAS (normal / benign / malignant, captions from its annotations)
//   a directory with captions.jsonl       a set written by `mamclip demo` / make_synthetic_set
//   *.json holding "birads" records       TEKNOFEST metadata_image_level.json (--image-root: the image folder)
//   *.json / *.jsonl                      MAM-CLIP image-caption records (--image-root; default the file's folder)
// Labels map to classes with the documented default 3-class grouping (--birads changes
// TEKNOFEST's).

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <set>
#include <sstream>

#include "mamclip/data/data.hpp"
#include "mamclip/models/clip.hpp"
#include "mamclip/train/config.hpp"
#include "mamclip/train/finetune.hpp"
#include "mamclip/train/pretrain_loop.hpp"
#include "mamclip/train/zeroshot.hpp"

#ifdef MAMCLIP_CLI_YAML
#include <yaml-cpp/yaml.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef MAMCLIP_WITH_MPI
#include "mamclip/dist/mpi.hpp"
#else
#include "mamclip/dist/tcp.hpp"
#endif

namespace {

// ---- config files

#ifdef MAMCLIP_CLI_YAML
// YAML scalars become JSON numbers, booleans or null when they read as such
// (YAML 1.2 core schema), strings otherwise.
nlohmann::json yaml_to_json(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return nullptr;
    case YAML::NodeType::Sequence: {
      nlohmann::json j = nlohmann::json::array();
      for (const auto& item : node) j.push_back(yaml_to_json(item));
      return j;
    }
    case YAML::NodeType::Map: {
      nlohmann::json j = nlohmann::json::object();
      for (const auto& kv : node) j[kv.first.as<std::string>()] = yaml_to_json(kv.second);
      return j;
    }
    case YAML::NodeType::Scalar: {
      const std::string s = node.Scalar();
      if (node.Tag() == "!") return s;  // quoted: always a string
      if (s == "true" || s == "True" || s == "TRUE") return true;
      if (s == "false" || s == "False" || s == "FALSE") return false;
      if (s == "null" || s == "~" || s == "Null" || s == "NULL") return nullptr;
      int64_t i = 0;
      if (auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), i); ec == std::errc() && p == s.data() + s.size())
        return i;
      double d = 0;
      if (auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), d); ec == std::errc() && p == s.data() + s.size())
        return d;
      return s;
    }
  }
  return nullptr;
}
#endif

nlohmann::json read_config_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw io_error("cannot open the config file '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string ext = std::filesystem::path(path).extension().string();
  if (ext == ".json") {
    auto j = nlohmann::json::parse(ss.str(), nullptr, false);
    if (j.is_discarded()) throw io_error("the config file '" + path + "' is not valid JSON");
    return j;
  }
#ifdef MAMCLIP_CLI_YAML
  try {
    return yaml_to_json(YAML::Load(ss.str()));
  } catch (const YAML::Exception& e) {
    throw io_error("the config file '" + path + "' is not valid YAML: " + e.what());
  }
#else
  throw io_error("the config file '" + path + "' is YAML, and this mamclip was built without yaml-cpp; use JSON");
#endif
}

// ---- data

struct LabelledData {
  std::vector<data::Sample> samples;
  std::vector<std::string> class_names;
  std::string description;
};

// --birads MAP: "1=normal,2=benign,4=suspicious,5=suspicious" (BI-RADS category =
// class name; classes numbered in order of first appearance; categories not
// named have no class and are dropped).
data::BiradsMapping parse_birads(const std::string& spec) {
  data::BiradsMapping m;
  std::stringstream items(spec);
  std::string item;
  while (std::getline(items, item, ',')) {
    const size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == item.size())
      throw UsageError{"--birads expects CATEGORY=CLASS[,...], e.g. 1=normal,2=benign,4=suspicious; got item '" +
                       item + "'"};
    const int category = static_cast<int>(parse_int("--birads", item.substr(0, eq), 0, 6));
    if (m.to_class.count(category)) throw UsageError{"--birads names category " + std::to_string(category) + " twice"};
    const std::string name = item.substr(eq + 1);
    const auto it = std::find(m.class_names.begin(), m.class_names.end(), name);
    m.to_class[category] = static_cast<int>(it - m.class_names.begin());
    if (it == m.class_names.end()) m.class_names.push_back(name);
  }
  if (m.to_class.empty()) throw UsageError{"--birads: no CATEGORY=CLASS item in '" + spec + "'"};
  return m;
}

// birads: the classes of TEKNOFEST metadata (default BiradsMapping::default_3class());
// a usage error for other data, whose classes come with it.
LabelledData read_data(const std::string& path, const std::optional<std::string>& image_root,
                       const std::optional<data::BiradsMapping>& birads_option = std::nullopt) {
  namespace fs = std::filesystem;
  LabelledData d;
  const data::BiradsMapping birads = birads_option.value_or(data::BiradsMapping::default_3class());
  const auto not_teknofest = [&] {
    if (birads_option)
      throw UsageError{"--birads applies to TEKNOFEST metadata (records with \"birads\"); '" + path + "' has none"};
  };
  if (fs::is_directory(path) && fs::exists(fs::path(path) / "image_labels.csv")) {
    not_teknofest();
    d.samples = data::read_mias(path);
    d.class_names = {"normal", "benign", "malignant"};
    d.description = "mini-MIAS at " + path;
    return d;
  }
  fs::path file = path;
  if (fs::is_directory(path)) file = fs::path(path) / "captions.jsonl";
  if (!fs::exists(file)) throw io_error("--data '" + path + "': no such file, and not a mini-MIAS or demo directory");
  const fs::path root = image_root ? fs::path(*image_root) : file.parent_path();
  bool teknofest = false;
  if (file.extension() == ".json") {
    std::ifstream in(file);
    std::string head(4096, '\0');
    in.read(head.data(), static_cast<std::streamsize>(head.size()));
    teknofest = head.find("\"birads\"") != std::string::npos;
  }
  if (teknofest) {
    int64_t dropped = 0;
    d.samples = data::read_teknofest_metadata(file, root, birads, &dropped);
    d.description = "TEKNOFEST metadata " + file.string() + " (" + std::to_string(dropped) + " images without a class)";
  } else {
    not_teknofest();
    d.samples = data::read_caption_records(file, root);
    d.description = "image-caption records " + file.string();
  }
  d.class_names = birads.class_names;
  if (fs::exists(file.parent_path() / "README.txt") && file.filename() == "captions.jsonl")
    d.class_names = {"normal", "benign", "malignant"};  // a synthetic set's classes
  return d;
}

// A WordPiece vocabulary that spells every caption: the special tokens, every
// lower-cased word of the captions, and single characters with their ##
// forms (so any other word still tokenizes). For the small model when no BERT
// vocabulary is given.
text::BertTokenizer caption_vocabulary(const std::vector<data::Sample>& samples) {
  std::vector<std::string> tokens{"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
  std::set<std::string> words;
  for (const auto& s : samples) {
    std::string w;
    for (char c : s.caption + " ") {
      const unsigned char u = static_cast<unsigned char>(c);
      if (std::isalnum(u)) {
        w += static_cast<char>(std::tolower(u));
      } else {
        if (!w.empty()) words.insert(w);
        w.clear();
      }
    }
  }
  for (int c = 33; c < 127; ++c) {
    if (std::islower(c)) continue;  // already added, lower-cased, at its capital's place
    const auto ch = static_cast<char>(std::tolower(c));
    tokens.push_back(std::string(1, ch));
    if (std::isalnum(c)) tokens.push_back("##" + std::string(1, ch));
  }
  const std::set<std::string> seen(tokens.begin(), tokens.end());
  for (const auto& w : words)
    if (!seen.count(w)) tokens.push_back(w);
  return text::BertTokenizer(std::make_shared<const text::Vocab>(text::Vocab::from_tokens(tokens, "<captions>")));
}

text::BertTokenizer tokenizer_for(const train::PretrainConfig& c, const std::vector<data::Sample>& samples) {
  if (!c.bert_model_path.empty()) return text::load_bert_tokenizer(c.bert_model_path);
  if (!c.vocab_path.empty()) return text::BertTokenizer::from_file(c.vocab_path);
  if (c.model_size == "small") return caption_vocabulary(samples);
  throw value_error(
      "the full-size model needs PubMedBERT's vocabulary: set text_model.bert_model_path (a local HF directory) or "
      "text_model.vocab_path (vocab.txt)");
}

std::string f3(double x) {
  if (!std::isfinite(x)) return "  -  ";
  std::ostringstream os;
  os << std::fixed << std::setprecision(3) << x;
  return os.str();
}

// ---- pretrain

// The job's communicator: MPI's under mpirun (or srun), TCP's under torchrun
// (GPU training: NCCL reduces the gradients), else a world of one.
// Ranks on one machine share its cores: each takes its share of the CPU
// kernels' threads unless OMP_NUM_THREADS says otherwise.
std::unique_ptr<dist::Communicator> job_communicator() {
#ifdef MAMCLIP_WITH_MPI
  std::unique_ptr<dist::Communicator> comm = dist::communicator_from_environment();
#else
  std::unique_ptr<dist::Communicator> comm = dist::tcp_communicator_from_environment();
  if (!comm) comm = std::make_unique<dist::LocalCommunicator>();
#endif
#ifdef _OPENMP
  if (comm->world_size() > 1 && !std::getenv("OMP_NUM_THREADS")) {
    int local = comm->world_size();
    for (const char* name : {"OMPI_COMM_WORLD_LOCAL_SIZE", "LOCAL_WORLD_SIZE"})
      if (const char* v = std::getenv(name); v && std::atoi(v) > 0) {
        local = std::atoi(v);
        break;
      }
    omp_set_num_threads(std::max(1, omp_get_num_procs() / local));
  }
#endif
  return comm;
}

constexpr const char* kPretrainHelp = R"(usage: mamclip pretrain [--config FILE] [--data PATH] [--image-root DIR] [--resume] [KEY=VALUE ...]

MAM-CLIP pretraining: contrastive image-caption loss + 0.5 x masked language
modelling through the fusion block, AdamW, gradient accumulation to the
effective batch. The config file (YAML or JSON) has the sections and keys of the
reference cfg.yaml (embed_dim, vision_model, optimizer, text_model, data,
trainparams) plus mamclip's own: model_size (full | small), text_model.bert_model_path /
vocab_path, trainparams.negatives (paper | full = GradCache over the effective
batch), precision (fp32 | bf16 | fp16 autocast; fp16 with a dynamic loss scale), device (cpu |
cuda | cuda:N; cuda needs a build with the CUDA backend), mlm_coeff, max_logit_scale, seed, grad_checkpointing,
init_checkpoint, max_steps, checkpoint_every_steps, data.skip_unreadable (leave out and count
unreadable images; one process only). KEY=VALUE arguments override it, e.g.
optimizer.lr=3e-4 data.batch_size=4 "data.image_size=[512,384]".

Writes into trainparams.checkpoint_dir_path/experiment_name: last.ckpt.safetensors
(the training state, atomic), best.safetensors (the best validation loss, in the
reference's names, with the tokenizer's vocabulary), metrics.csv / metrics.jsonl and loss.png.

Data parallel: `mpirun -np N mamclip pretrain ...` trains on N processes (each
takes data.batch_size pairs of every step; the negatives and the gradients are
those of one process with N x data.batch_size); on GPUs torchrun-style launches
work too (`torchrun --nproc-per-node N --no-python mamclip pretrain ...`); see
docs/distributed.md.

options:
  --config FILE     the config (default: the paper's values)
  --data PATH       training data (see mamclip --help); default data.train_json_path;
                    without data.valid_json_path 10 % of the patients are held out
  --image-root DIR  the folder the records' image paths are relative to (data.image_main_path)
  --resume          continue from last.ckpt.safetensors when it exists
  -h, --help        this text
)";

int run_pretrain(const std::vector<std::string>& argv) {
  std::vector<std::string> overrides;
  const Args a = parse_flags(argv, {{"--config", true}, {"--data", true}, {"--image-root", true}, {"--resume", false}},
                             &overrides);
  if (a.help) {
    std::cout << kPretrainHelp;
    return 0;
  }
  nlohmann::json j = a.has("--config") ? read_config_file(*a.get("--config")) : nlohmann::json::object();
  for (const auto& o : overrides) {
    if (o.find('=') == std::string::npos) throw UsageError{"unexpected argument '" + o + "' (overrides are KEY=VALUE)"};
    train::apply_override(j, o);
  }
  if (a.has("--data")) j["data"]["train_json_path"] = *a.get("--data");
  if (a.has("--image-root")) j["data"]["image_main_path"] = *a.get("--image-root");
  const train::PretrainConfig cfg = train::PretrainConfig::from_json(j, a.get("--config").value_or("config"));
  if (cfg.train_json_path.empty()) throw UsageError{"no training data: give --data or data.train_json_path"};
  const std::optional<std::string> root =
      cfg.image_main_path.empty() ? std::nullopt : std::optional<std::string>(cfg.image_main_path);
  LabelledData train_data = read_data(cfg.train_json_path, root);
  std::vector<data::Sample> train_set = train_data.samples, val_set;
  if (!cfg.valid_json_path.empty()) {
    val_set = read_data(cfg.valid_json_path, root).samples;
  } else {
    const data::Split s = data::patient_split(train_set, 0.1, 0.0, cfg.seed);
    train_set = s.train;
    val_set = s.val;
  }
  const std::unique_ptr<dist::Communicator> comm = job_communicator();
  std::ostringstream quiet;
  std::ostream& out = comm->rank() == 0 ? std::cout : quiet;  // rank 0 speaks for the job
  out << "pretrain: " << train_data.description << ": " << train_set.size() << " training and " << val_set.size()
      << " validation pairs\n";
  train::Pretrainer p(cfg, tokenizer_for(cfg, train_data.samples), train_set, val_set, out, comm.get());
  if (p.world_size() > 1)
    out << "pretrain: data parallel over " << p.world_size() << " ranks (" << comm->backend() << "), "
        << p.world_size() * cfg.batch_size << " pairs per micro-batch in all; gradients all-reduced per step: "
        << p.data_parallel()->reduced_bytes_per_step() << " bytes in " << p.data_parallel()->buckets()
        << " bucket(s) for " << 4 * p.model().num_parameters() << " bytes of float32 parameters\n";
  const auto r = p.run(a.has("--resume"));
  out << "pretrain: " << r.global_step << " steps; best loss " << f3(r.best_val_loss) << " -> "
      << r.best_weights.string() << "\n";
  return 0;
}

// ---- finetune / evaluate

constexpr const char* kFinetuneHelp = R"(usage: mamclip finetune --data PATH --output DIR [options]

Fine-tunes the ConvNeXt vision encoder with a classification head
(birads_layer.0) on labelled images, keeps the epoch with the best validation
macro-F1, and reports macro-F1, per-class F1, accuracy, ROC-AUC (one-vs-rest)
and the confusion matrix on the test split. Splits are by patient (no patient
in two splits), seeded.

Data parallel: `mpirun -np N mamclip finetune ...` trains on N processes (each
takes --batch images of every step; the step is one process's with N x --batch
images); validation and test are scored over all ranks; rank 0 writes the files.

options:
  --data PATH          labelled data (see mamclip --help)
  --image-root DIR     the folder the records' image paths are relative to
  --output DIR         metrics.csv/jsonl, best.safetensors, confusion_matrix.png, loss.png, result.json
  --init SPEC          scratch (default) | mamclip:FILE (a MAM-CLIP checkpoint: ours or the authors'
                       .ckpt) | timm:FILE (timm ImageNet ConvNeXt weights)
  --arch NAME          convnext_tiny | convnext_small | small (default convnext_small;
                       with mamclip:FILE the checkpoint's config when it has one)
  --labels N           train on a stratified, seeded subset of N labelled training images
  --epochs N           default 10
  --batch N            default 8 (per rank under mpirun)
  --lr X               AdamW learning rate, default 1e-4 (weight decay 0.05)
  --height H --width W input size, default 1024 x 768
  --val F --test F     fractions of patients held out, default 0.15 and 0.25
  --class-weighting    inverse-frequency class weights in the loss
  --skip-unreadable    leave out (and count) images that cannot be read instead of stopping
                       (one process only)
  --birads MAP         TEKNOFEST metadata: BI-RADS category -> class, e.g. (the default)
                       1=normal,2=benign,4=suspicious,5=suspicious; unnamed categories are dropped
  --precision P        fp32 (default) | bf16: the training forward in bfloat16 autocast
  --device D           cpu (default) | cuda | cuda:N: where the model trains and is evaluated
                       (cuda needs a build with the CUDA backend; under mpirun, cuda is each
                       rank's local GPU)
  --seed S             default 0
  -h, --help           this text
)";

struct FinetuneSpec {
  std::string init = "scratch", arch = "convnext_small";
  Device device = kCPU;
  bool device_per_rank = false;  // --device cuda: under mpirun, the local rank's GPU
  std::optional<int64_t> labels;
  double val = 0.15, test = 0.25;
  train::FinetuneOptions options;
};

double parse_double(const std::string& flag, const std::string& text) {
  try {
    size_t used = 0;
    const double v = std::stod(text, &used);
    if (used == text.size() && std::isfinite(v)) return v;
  } catch (const std::exception&) {
  }
  throw UsageError{flag + " expects a number, got '" + text + "'"};
}

// The classifier an --init / --arch pair describes, and its pretrained weights.
std::shared_ptr<models::clip::MamClipClassifier> make_classifier(const FinetuneSpec& s, int64_t num_classes,
                                                                 const models::clip::VLModel* pretrained) {
  Generator gen(s.options.seed);
  std::vector<models::clip::ClassifierHead> heads{{"birads_layer", num_classes}};
  if (pretrained) {
    auto m = std::make_shared<models::clip::MamClipClassifier>(pretrained->config().vision, pretrained->config().embed_dim,
                                                               heads, gen);
    m->init_from_vlmodel(*pretrained);
    return m;
  }
  const models::ConvNeXtConfig vision =
      s.arch == "small" ? models::clip::VLModelConfig::small().vision : models::ConvNeXtConfig::by_name(s.arch);
  const int64_t embed = s.arch == "small" ? models::clip::VLModelConfig::small().embed_dim : 768;
  auto m = std::make_shared<models::clip::MamClipClassifier>(vision, embed, heads, gen);
  if (s.init.rfind("timm:", 0) == 0) {
    // ImageNet weights for everything but head.fc (a new Linear(C, embed)).
    const auto loaded = models::load_convnext(s.init.substr(5));
    nn::StateDict sd;
    for (const auto& [name, t] : loaded.model->state_dict())
      if (name.rfind("head.fc.", 0) != 0) sd.insert(name, t);
    for (const auto& [name, t] : m->encoder->state_dict())
      if (name.rfind("head.fc.", 0) == 0) sd.insert(name, t);
    m->encoder->load_state_dict(sd);
  }
  return m;
}

std::unique_ptr<models::clip::VLModel> load_pretrained_vlmodel(const std::string& file, const std::string& arch) {
  auto cfg = models::clip::read_vlmodel_config(file);
  if (!cfg) cfg = arch == "small" ? models::clip::VLModelConfig::small() : models::clip::VLModelConfig::mamclip(arch);
  auto m = std::make_unique<models::clip::VLModel>(*cfg, models::clip::VLModelSkipInit{});
  models::clip::load_vlmodel_weights(*m, file);
  return m;
}

void write_result_json(const std::filesystem::path& file, const train::FinetuneResult& r,
                       const std::vector<std::string>& names, const nlohmann::json& about) {
  nlohmann::json j = about;
  auto eval = [&](const train::EvalResult& e) {
    return nlohmann::json{{"macro_f1", e.macro_f1},   {"accuracy", e.accuracy}, {"roc_auc_ovr", e.roc_auc_ovr},
                          {"per_class_f1", e.per_class_f1}, {"count", e.count},      {"class_names", names}};
  };
  j["best_epoch"] = r.best_epoch;
  j["val"] = eval(r.best_val);
  j["test"] = eval(r.test);
  train::atomic_write(file, [&](std::ostream& os) { os << j.dump(2) << "\n"; });
}

train::FinetuneResult finetune_on(const LabelledData& d, const FinetuneSpec& s, models::clip::MamClipClassifier& model,
                                  std::ostream& out, dist::Communicator* comm = nullptr) {
  data::Split split = data::patient_split(d.samples, s.val, s.test, s.options.seed);
  if (s.labels) split.train = data::stratified_subset(split.train, *s.labels, s.options.seed);
  out << "finetune: " << split.train.size() << " training, " << split.val.size() << " validation, "
      << split.test.size() << " test images (" << d.class_names.size() << " classes)\n";
  return train::finetune_classifier(model, split.train, split.val, split.test, s.options, d.class_names, comm);
}

int run_finetune(const std::vector<std::string>& argv) {
  const Args a = parse_flags(argv, {{"--data", true},   {"--image-root", true}, {"--output", true},
                                    {"--init", true},   {"--arch", true},       {"--labels", true},
                                    {"--epochs", true}, {"--batch", true},      {"--lr", true},
                                    {"--height", true}, {"--width", true},      {"--val", true},
                                    {"--test", true},   {"--seed", true},       {"--class-weighting", false},
                                    {"--precision", true},  {"--device", true},     {"--birads", true},
                                    {"--skip-unreadable", false}});
  if (a.help) {
    std::cout << kFinetuneHelp;
    return 0;
  }
  for (const char* flag : {"--data", "--output"})
    if (!a.has(flag)) throw UsageError{std::string(flag) + " is required"};
  FinetuneSpec s;
  s.init = a.get("--init").value_or("scratch");
  s.arch = a.get("--arch").value_or("convnext_small");
  if (a.has("--labels")) s.labels = parse_int("--labels", *a.get("--labels"), 1, std::numeric_limits<int64_t>::max());
  auto& o = s.options;
  o.height = 1024;
  o.width = 768;
  if (a.has("--epochs")) o.epochs = parse_int("--epochs", *a.get("--epochs"), 1, 100000);
  if (a.has("--batch")) o.batch_size = parse_int("--batch", *a.get("--batch"), 1, 4096);
  if (a.has("--lr")) o.lr = parse_double("--lr", *a.get("--lr"));
  if (a.has("--height")) o.height = parse_int("--height", *a.get("--height"), 32, 16384);
  if (a.has("--width")) o.width = parse_int("--width", *a.get("--width"), 32, 16384);
  if (a.has("--val")) s.val = parse_double("--val", *a.get("--val"));
  if (a.has("--test")) s.test = parse_double("--test", *a.get("--test"));
  if (a.has("--seed")) o.seed = static_cast<uint64_t>(parse_int("--seed", *a.get("--seed"), 0, std::numeric_limits<int64_t>::max()));
  o.class_weighting = a.has("--class-weighting");
  o.skip_unreadable = a.has("--skip-unreadable");
  o.precision = a.get("--precision").value_or("fp32");
  if (o.precision != "fp32" && o.precision != "bf16")
    throw UsageError{"--precision expects fp32 or bf16, got '" + o.precision + "'"};
  if (a.has("--device")) {
    const std::optional<Device> device = parse_device(*a.get("--device"));
    if (!device) throw UsageError{"--device expects cpu, cuda or cuda:N, got '" + *a.get("--device") + "'"};
    s.device = *device;
    s.device_per_rank = *a.get("--device") == "cuda";
  }
  o.output_dir = *a.get("--output");
  if (!(s.init == "scratch" || s.init.rfind("mamclip:", 0) == 0 || s.init.rfind("timm:", 0) == 0))
    throw UsageError{"--init expects scratch, mamclip:FILE or timm:FILE, got '" + s.init + "'"};

  std::optional<data::BiradsMapping> birads;
  if (a.has("--birads")) birads = parse_birads(*a.get("--birads"));
  const LabelledData d = read_data(*a.get("--data"), a.get("--image-root"), birads);
  std::unique_ptr<models::clip::VLModel> pretrained;
  if (s.init.rfind("mamclip:", 0) == 0) pretrained = load_pretrained_vlmodel(s.init.substr(8), s.arch);
  auto model = make_classifier(s, static_cast<int64_t>(d.class_names.size()), pretrained.get());
  const std::unique_ptr<dist::Communicator> comm = job_communicator();
  std::ostringstream quiet;
  std::ostream& out = comm->rank() == 0 ? std::cout : quiet;  // rank 0 speaks for the job
  if (comm->world_size() > 1) {
    if (s.device_per_rank) s.device = Device::cuda(comm->local_rank());
    out << "finetune: data parallel over " << comm->world_size() << " ranks (" << comm->backend() << "), "
        << comm->world_size() * o.batch_size << " images per step in all\n";
  }
  if (!s.device.is_cpu()) {
    model->to(s.device);
    out << "finetune: training on " << s.device.str() << "\n";
  }
  const auto r = finetune_on(d, s, *model, out, comm.get());
  train::print_confusion(out, r.test.confusion, d.class_names);
  out << "finetune: test macro-F1 " << f3(r.test.macro_f1) << ", accuracy " << f3(r.test.accuracy)
      << ", ROC-AUC " << f3(r.test.roc_auc_ovr) << " (best epoch " << r.best_epoch + 1 << ")\n";
  if (r.skipped_images > 0) out << "finetune: " << r.skipped_images << " unreadable images were skipped\n";
  if (comm->rank() == 0)
    write_result_json(o.output_dir / "result.json", r, d.class_names,
                      {{"data", d.description}, {"init", s.init}, {"arch", s.arch}});
  return 0;
}

// ---- convert

constexpr const char* kConvertHelp = R"(usage: mamclip convert INPUT OUTPUT.safetensors [--strip-prefix P] [--add-prefix P]

Writes the tensors of a checkpoint (PyTorch .pth/.bin/.pt, Lightning .ckpt:
its state_dict, safetensors or a sharded index) into one safetensors file,
names unchanged unless a prefix is stripped (e.g. --strip-prefix VLModel.) or
added. float16/bfloat16 stay as they are. The output is replaced atomically.

options:
  --strip-prefix P  remove P from every name that starts with it
  --add-prefix P    put P before every name
  -h, --help        this text
)";

int run_convert(const std::vector<std::string>& argv) {
  std::vector<std::string> files;
  const Args a = parse_flags(argv, {{"--strip-prefix", true}, {"--add-prefix", true}}, &files);
  if (a.help) {
    std::cout << kConvertHelp;
    return 0;
  }
  if (files.size() != 2) throw UsageError{"expected INPUT and OUTPUT, got " + std::to_string(files.size()) + " files"};
  io::KeyMapping m;
  if (a.has("--strip-prefix")) m.strip_prefix = {*a.get("--strip-prefix")};
  if (a.has("--add-prefix")) m.add_prefix = *a.get("--add-prefix");
  const io::TensorMap tensors = io::map_keys(io::load_state_dict(files[0]), m);
  io::save_safetensors(files[1], tensors, {{"source", std::filesystem::path(files[0]).filename().string()}});
  std::cerr << "mamclip convert: wrote " << tensors.size() << " tensors to " << files[1] << "\n";
  return 0;
}

// ---- zeroshot

constexpr const char* kZeroshotHelp = R"(usage: mamclip zeroshot --model FILE --data PATH [--vocab FILE] [--image-root DIR] [--height H --width W]

Zero-shot classification with a pretrained MAM-CLIP model: each class is
described by a few text prompts ("a mammogram with a malignant mass", ...),
whose normalised text features are averaged; an image gets the class of the
most similar description. Also reports image-to-text and text-to-image
retrieval recall@1/5/10 over the images' own captions.

options:
  --model FILE     a MAM-CLIP checkpoint (best.safetensors of `mamclip pretrain`, or a .ckpt)
  --data PATH      labelled image-caption data (see mamclip --help)
  --vocab FILE     the model's vocab.txt (default: the vocabulary `mamclip pretrain` stored with the
                   weights; for weights without one, the captions', as the small model's pretraining)
  --image-root DIR the folder the records' image paths are relative to
  --height H --width W   input size (default 1024 x 768)
  -h, --help       this text
)";

int run_zeroshot(const std::vector<std::string>& argv) {
  const Args a = parse_flags(argv, {{"--model", true}, {"--data", true}, {"--image-root", true}, {"--vocab", true},
                                    {"--height", true}, {"--width", true}});
  if (a.help) {
    std::cout << kZeroshotHelp;
    return 0;
  }
  for (const char* flag : {"--model", "--data"})
    if (!a.has(flag)) throw UsageError{std::string(flag) + " is required"};
  const LabelledData d = read_data(*a.get("--data"), a.get("--image-root"));
  auto model = load_pretrained_vlmodel(*a.get("--model"), "convnext_small");
  // The model's own vocabulary: --vocab, else the one pretraining stored with the weights, else
  // (weights from elsewhere) the captions', as the small model's pretraining builds it.
  std::optional<text::BertTokenizer> stored;
  if (!a.has("--vocab")) stored = train::tokenizer_from_weights(*a.get("--model"));
  if (!a.has("--vocab") && !stored)
    std::cerr << "mamclip zeroshot: " << *a.get("--model")
              << " holds no vocabulary; using the captions' (pass --vocab for the model's own)\n";
  const text::BertTokenizer tok = a.has("--vocab") ? text::BertTokenizer::from_file(*a.get("--vocab"))
                                  : stored         ? *stored
                                                   : caption_vocabulary(d.samples);
  data::LoaderOptions lo;
  lo.shuffle = false;
  lo.height = a.has("--height") ? parse_int("--height", *a.get("--height"), 32, 16384) : 1024;
  lo.width = a.has("--width") ? parse_int("--width", *a.get("--width"), 32, 16384) : 768;
  data::Loader loader(d.samples, lo);
  const auto r = train::zeroshot_classify(*model, tok, loader, train::default_zeroshot_prompts(d.class_names));
  std::cout << "zeroshot: macro-F1 " << f3(r.macro_f1) << ", accuracy " << f3(r.accuracy) << " over " << r.count
            << " images\n";
  train::print_confusion(std::cout, r.confusion, d.class_names);
  data::Loader again(d.samples, lo);
  const auto pairs = train::encode_pairs(*model, tok, again);
  const auto rr = train::retrieval_recall(pairs.image, pairs.text);
  for (const auto& [k, v] : rr.image_to_text)
    std::cout << "retrieval: recall@" << k << " image->text " << f3(v) << ", text->image " << f3(rr.text_to_image.at(k))
              << "\n";
  return 0;
}

// ---- demo

constexpr const char* kDemoHelp = R"(usage: mamclip demo [--data PATH] [--output DIR] [--images N] [--quick] [--class-weighting] [--seed S]

The whole MAM-CLIP pipeline, end to end, on the CPU in minutes:
  1. data: a procedurally generated, clearly labelled SYNTHETIC mammogram-like
     image-caption set (default, written to OUTPUT/synthetic), or --data (e.g.
     mini-MIAS: ../shared/data/mias), split by patient into train / val / test;
  2. pretraining of a small MAM-CLIP model (ConvNeXt depths 1-1-1-1, a 2-layer
     BERT, the fusion block; contrastive + MLM loss, GradCache negatives) on the
     training images and captions;
  3. fine-tuning for the 3 classes, from scratch and from the pretrained
     vision encoder, at two label budgets;
  4. the macro-F1 table (printed and OUTPUT/results.md), loss curves and
     confusion matrices (PNG) in each run's folder.

options:
  --data PATH    labelled image-caption data instead of the synthetic set
  --output DIR   default runs/demo
  --images N     size of the synthetic set (default 480)
  --quick        fewer images and epochs (a smoke test, seconds)
  --class-weighting  inverse-frequency class weights when fine-tuning (imbalanced
                 data such as mini-MIAS: 207 normal, 63 benign, 52 malignant)
  --seed S       data split, initialisation and order (default 0)
  --set-only     write the synthetic set to OUTPUT/synthetic and stop (data for
                 other commands, e.g. benchmarks/dist/scaling.sh)
  -h, --help     this text
)";

int run_demo(const std::vector<std::string>& argv) {
  namespace fs = std::filesystem;
  const Args a =
      parse_flags(argv, {{"--data", true},
                         {"--output", true},
                         {"--images", true},
                         {"--quick", false},
                         {"--seed", true},
                         {"--class-weighting", false},
                         {"--set-only", false}});
  if (a.help) {
    std::cout << kDemoHelp;
    return 0;
  }
  const bool quick = a.has("--quick");
  const fs::path out = a.get("--output").value_or("runs/demo");
  const uint64_t seed =
      a.has("--seed") ? static_cast<uint64_t>(parse_int("--seed", *a.get("--seed"), 0, 1 << 30)) : 0;
  const int64_t H = 128, W = 96;
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };

  LabelledData d;
  if (a.has("--data")) {
    d = read_data(*a.get("--data"), std::nullopt);
  } else {
    const int64_t n = a.has("--images") ? parse_int("--images", *a.get("--images"), 60, 100000) : (quick ? 96 : 480);
    d.samples = data::make_synthetic_set(out / "synthetic", n, 2 * H, 2 * W, seed + 1);
    d.class_names = {"normal", "benign", "malignant"};
    d.description = std::to_string(n) + " SYNTHETIC mammogram-like images with captions (" + (out / "synthetic").string() +
                    "; not real patients)";
  }
  std::cout << "demo: data: " << d.description << "\n";
  if (a.has("--set-only")) return 0;
  const data::Split split = data::patient_split(d.samples, 0.15, 0.25, seed);
  std::cout << "demo: patients split into " << split.train.size() << " train / " << split.val.size() << " val / "
            << split.test.size() << " test images\n";

  // 1. Pretraining on the training split's image-caption pairs.
  train::PretrainConfig pc;
  pc.model_size = "small";
  pc.context_length = 48;
  pc.batch_size = 8;
  pc.effective_batch_size = 32;
  pc.negatives = "full";
  pc.image_height = H;
  pc.image_width = W;
  pc.max_epochs = quick ? 2 : 12;
  pc.lr = 5e-4;
  pc.train_transforms = "soft";
  pc.checkpoint_dir_path = out.string();
  pc.experiment_name = "pretrain";
  pc.seed = seed;
  pc.num_workers = 2;
  std::cout << "\ndemo: [1/2] pretraining (small MAM-CLIP, " << pc.max_epochs << " epochs, effective batch "
            << pc.effective_batch_size << ", GradCache negatives)\n";
  train::Pretrainer pretrainer(pc, caption_vocabulary(d.samples), split.train, split.val, std::cout);
  const auto pr = pretrainer.run();
  auto pretrained = load_pretrained_vlmodel(pr.best_weights.string(), "small");
  std::cout << "demo: pretraining done in " << std::fixed << std::setprecision(0) << elapsed() << " s\n"
            << std::defaultfloat;

  // 2. Fine-tuning at two label budgets, from scratch and from the pretrained encoder.
  const int64_t all = static_cast<int64_t>(split.train.size());
  const std::vector<int64_t> budgets{std::max<int64_t>(12, all / 4), all};
  struct Row {
    int64_t labels;
    double scratch, pretrained;
  };
  std::vector<Row> rows;
  std::cout << "\ndemo: [2/2] fine-tuning 3-class classifiers\n";
  for (const int64_t n : budgets) {
    Row row{n, 0, 0};
    for (const bool use_pretrained : {false, true}) {
      FinetuneSpec s;
      s.arch = "small";
      s.val = 0.15;
      s.test = 0.25;
      if (n < all) s.labels = n;
      s.options.epochs = quick ? 2 : 10;
      s.options.batch_size = 8;
      s.options.lr = 5e-4;
      s.options.weight_decay = 0.05;
      s.options.height = H;
      s.options.width = W;
      s.options.seed = seed;
      s.options.quiet = true;
      s.options.augmentation = "soft";
      s.options.class_weighting = a.has("--class-weighting");
      // One epoch of linear warmup: a randomly initialised ConvNeXt otherwise
      // tends to stay on the class prior at this learning rate.
      s.options.warmup_steps = (std::min<int64_t>(n, all) + s.options.batch_size - 1) / s.options.batch_size;
      const std::string name = (use_pretrained ? "finetune_pretrained_" : "finetune_scratch_") + std::to_string(n);
      s.options.output_dir = out / name;
      auto model = make_classifier(s, 3, use_pretrained ? pretrained.get() : nullptr);
      std::ostringstream quiet;
      const auto r = finetune_on(d, s, *model, quiet);
      write_result_json(s.options.output_dir / "result.json", r, d.class_names,
                        {{"labels", n}, {"init", use_pretrained ? "mamclip" : "scratch"}});
      (use_pretrained ? row.pretrained : row.scratch) = r.test.macro_f1;
      std::cout << "demo:   " << std::left << std::setw(34) << name << std::right << " test macro-F1 "
                << f3(r.test.macro_f1) << "  (" << std::fixed << std::setprecision(0) << elapsed() << " s)\n"
                << std::defaultfloat;
    }
    rows.push_back(row);
  }

  std::ostringstream table;
  table << "| labelled training images | macro-F1, from scratch | macro-F1, MAM-CLIP pretrained | difference |\n"
        << "|---:|---:|---:|---:|\n";
  for (const auto& r : rows)
    table << "| " << r.labels << " | " << f3(r.scratch) << " | " << f3(r.pretrained) << " | "
          << (r.pretrained >= r.scratch ? "+" : "") << f3(r.pretrained - r.scratch) << " |\n";
  std::cout << "\nTest macro-F1 (" << split.test.size() << " test images; " << d.description << "):\n\n"
            << table.str() << "\n";
  train::atomic_write(out / "results.md", [&](std::ostream& os) {
    os << "# mamclip demo\n\nData: " << d.description << ".\n\n" << table.str()
       << "\nEach run's folder has metrics.csv, loss.png and confusion_matrix.png; pretrain/ has the pretraining "
          "loss curve and checkpoints.\n";
  });
  std::cout << "demo: wrote " << (out / "results.md").string() << " and the plots under " << out.string() << " in "
            << std::fixed << std::setprecision(0) << elapsed() << " s\n";
  return 0;
}

}  // namespace

namespace {

// ---- classifier files

// A fine-tuned classifier file (ours or convnext_*_ftune.pth) with the heads
// and embedding width its tensors have; `arch` names the ConvNeXt.
std::unique_ptr<models::clip::MamClipClassifier> load_classifier_file(const std::string& path, const std::string& arch) {
  if (arch != "small" && arch != "convnext_tiny" && arch != "convnext_small")
    throw UsageError{"--arch expects convnext_tiny, convnext_small or small, got '" + arch + "'"};
  std::vector<models::clip::ClassifierHead> heads;
  int64_t embed = 0;
  for (const auto& [name, t] : io::load_state_dict(path)) {
    const Tensor<float> w = models::detail::to_float_weight(t, name, path);
    if (name == "head.fc.weight") embed = w.size(0);
    const auto dot = name.find(".0.weight");
    if (dot != std::string::npos && dot + 9 == name.size() && name.rfind("stem", 0) != 0 &&
        name.rfind("stages", 0) != 0 && name.rfind("head", 0) != 0)
      heads.push_back({name.substr(0, dot), w.size(0)});
  }
  if (embed == 0 || heads.empty())
    throw value_error(path + ": not a classifier checkpoint (expected head.fc.weight and <head>.0.weight tensors)");
  const models::ConvNeXtConfig vision =
      arch == "small" ? models::clip::VLModelConfig::small().vision : models::ConvNeXtConfig::by_name(arch);
  auto model = std::make_unique<models::clip::MamClipClassifier>(vision, embed, heads);
  models::clip::load_classifier_weights(*model, path);
  return model;
}

// ---- evaluate

constexpr const char* kEvaluateHelp = R"(usage: mamclip evaluate --model FILE --data PATH [options]

Scores a fine-tuned classifier (best.safetensors of `mamclip finetune`, or the
authors' convnext_*_ftune.pth) on labelled images: macro-F1, per-class F1,
accuracy, ROC-AUC (one-vs-rest) and the confusion matrix.

options:
  --model FILE         the classifier
  --data PATH          labelled data (see mamclip --help)
  --image-root DIR     the folder the records' image paths are relative to
  --arch NAME          convnext_tiny | convnext_small | small (default convnext_small)
  --head NAME          the head to score (default: the file's first, e.g. birads_layer)
  --split NAME         all (default) | train | val | test: the patient split of
                       `mamclip finetune` with the same --val, --test and --seed
  --val F --test F     default 0.15 and 0.25
  --seed S             default 0
  --batch N            default 8
  --height H --width W input size, default 1024 x 768
  --birads MAP         TEKNOFEST metadata: BI-RADS category -> class (see finetune --help); e.g. a
                       5-way head: 0=birads0,1=birads1,2=birads2,4=birads4,5=birads5
  --output DIR         result.json and confusion_matrix.png
  -h, --help           this text
)";

int run_evaluate(const std::vector<std::string>& argv) {
  const Args a = parse_flags(argv, {{"--model", true}, {"--data", true},  {"--image-root", true}, {"--arch", true},
                                    {"--head", true},  {"--split", true}, {"--val", true},        {"--test", true},
                                    {"--seed", true},  {"--batch", true}, {"--height", true},     {"--width", true},
                                    {"--output", true}, {"--birads", true}});
  if (a.help) {
    std::cout << kEvaluateHelp;
    return 0;
  }
  for (const char* flag : {"--model", "--data"})
    if (!a.has(flag)) throw UsageError{std::string(flag) + " is required"};
  const std::string split_name = a.get("--split").value_or("all");
  if (split_name != "all" && split_name != "train" && split_name != "val" && split_name != "test")
    throw UsageError{"--split expects all, train, val or test, got '" + split_name + "'"};
  const double val = a.has("--val") ? parse_double("--val", *a.get("--val")) : 0.15;
  const double test = a.has("--test") ? parse_double("--test", *a.get("--test")) : 0.25;
  const uint64_t seed =
      a.has("--seed") ? static_cast<uint64_t>(parse_int("--seed", *a.get("--seed"), 0, std::numeric_limits<int64_t>::max())) : 0;

  const auto model = load_classifier_file(*a.get("--model"), a.get("--arch").value_or("convnext_small"));
  const std::string head = a.get("--head").value_or(model->heads().front().name);
  const int64_t index = train::head_index(*model, head);
  const int64_t classes = model->heads()[static_cast<size_t>(index)].num_classes;

  std::optional<data::BiradsMapping> birads;
  if (a.has("--birads")) birads = parse_birads(*a.get("--birads"));
  const LabelledData d = read_data(*a.get("--data"), a.get("--image-root"), birads);
  std::vector<data::Sample> samples = d.samples;
  if (split_name != "all") {
    const data::Split split = data::patient_split(d.samples, val, test, seed);
    samples = split_name == "train" ? split.train : split_name == "val" ? split.val : split.test;
  }
  std::vector<std::string> names = d.class_names;
  names.resize(static_cast<size_t>(std::max<int64_t>(classes, static_cast<int64_t>(names.size()))));
  for (size_t i = d.class_names.size(); i < names.size(); ++i) names[i] = "class " + std::to_string(i);

  data::LoaderOptions lo;
  lo.shuffle = false;
  lo.batch_size = a.has("--batch") ? parse_int("--batch", *a.get("--batch"), 1, 4096) : 8;
  lo.height = a.has("--height") ? parse_int("--height", *a.get("--height"), 32, 16384) : 1024;
  lo.width = a.has("--width") ? parse_int("--width", *a.get("--width"), 32, 16384) : 768;
  data::Loader loader(samples, lo);
  const train::EvalResult r = train::evaluate_classifier(*model, loader, classes, index);
  std::cout << "evaluate: " << d.description << ", split " << split_name << ": " << r.count << " images, head "
            << head << " (" << classes << " classes)\n";
  train::print_confusion(std::cout, r.confusion, names);
  std::cout << "evaluate: macro-F1 " << f3(r.macro_f1) << ", accuracy " << f3(r.accuracy) << ", ROC-AUC "
            << f3(r.roc_auc_ovr) << "; per-class F1";
  for (size_t i = 0; i < r.per_class_f1.size(); ++i) std::cout << " " << names[i] << " " << f3(r.per_class_f1[i]);
  std::cout << "\n";
  if (a.has("--output")) {
    const std::filesystem::path out = *a.get("--output");
    std::filesystem::create_directories(out);
    const nlohmann::json j{{"model", *a.get("--model")}, {"data", d.description}, {"split", split_name},
                           {"head", head},  {"macro_f1", r.macro_f1}, {"accuracy", r.accuracy},
                           {"roc_auc_ovr", r.roc_auc_ovr}, {"per_class_f1", r.per_class_f1},
                           {"count", r.count}, {"class_names", names}};
    train::atomic_write(out / "result.json", [&](std::ostream& os) { os << j.dump(2) << "\n"; });
    if (r.count > 0) train::plot_confusion_matrix(out / "confusion_matrix.png", r.confusion, names);
  }
  return 0;
}

// ---- gradcam

constexpr const char* kGradcamHelp = R"(usage: mamclip gradcam --model FILE --output FILE.png [--arch NAME] [--class K] [--height H --width W] IMAGE

Grad-CAM of a fine-tuned classifier (best.safetensors of `mamclip finetune`, or
the authors' convnext_*_ftune.pth): the gradient of the class score with
respect to the last stage's feature map, averaged per channel, weights that
map; the ReLU of the sum, scaled to [0, 1], is drawn as a heat map over the
preprocessed mammogram.

options:
  --model FILE      the classifier's weights; its heads (<name>.0.weight) are read from the file
  --arch NAME       convnext_small (default), convnext_tiny or small (the demo's size)
  --output FILE     the PNG to write
  --class K         the class to explain (default: the predicted one), of the first head
  --height H --width W   input size (default 1024 x 768)
  -h, --help        this text
)";

int run_gradcam(const std::vector<std::string>& argv) {
  std::vector<std::string> images;
  const Args a = parse_flags(argv,
                             {{"--model", true}, {"--output", true}, {"--arch", true}, {"--class", true},
                              {"--height", true}, {"--width", true}},
                             &images);
  if (a.help) {
    std::cout << kGradcamHelp;
    return 0;
  }
  for (const char* flag : {"--model", "--output"})
    if (!a.has(flag)) throw UsageError{std::string(flag) + " FILE is required"};
  if (images.size() != 1) throw UsageError{"expected one IMAGE, got " + std::to_string(images.size())};
  const auto loaded = load_classifier_file(*a.get("--model"), a.get("--arch").value_or("convnext_small"));
  models::clip::MamClipClassifier& model = *loaded;
  const auto& heads = model.heads();

  data::LoaderOptions lo;
  lo.batch_size = 1;
  lo.shuffle = false;
  lo.workers = 0;
  lo.height = a.has("--height") ? parse_int("--height", *a.get("--height"), 32, 16384) : 1024;
  lo.width = a.has("--width") ? parse_int("--width", *a.get("--width"), 32, 16384) : 768;
  data::Sample sample;
  sample.image = images[0];
  data::Loader loader({sample}, lo);
  const Tensor<float> image = loader.next()->images;
  int64_t target = 0;
  {
    model.eval();
    NoGradGuard no_grad;
    const auto probs = softmax(model.forward(image)[0], -1).to_vector();
    target = std::max_element(probs.begin(), probs.end()) - probs.begin();
    std::cout << "gradcam: " << heads[0].name << " probabilities";
    for (float p : probs) std::cout << " " << f3(p);
    std::cout << "\n";
  }
  if (a.has("--class")) target = parse_int("--class", *a.get("--class"), 0, heads[0].num_classes - 1);
  const Tensor<float> cam = train::write_grad_cam(*a.get("--output"), model, image, target);
  std::cout << "gradcam: class " << target << ", map " << cam.size(0) << " x " << cam.size(1) << " -> "
            << *a.get("--output") << "\n";
  return 0;
}

}  // namespace
