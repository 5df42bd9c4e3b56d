#pragma once
// Training checkpoints for exact resume, and the atomic writes every saved
// file goes through.
//
// defines:
//   atomic_write                   a file written whole or not at all (stream or bytes)
//   remove_stale_temporaries       the "<name>.tmp-XXXXXX" files a killed writer left
//   GeneratorState, TrainingMeta   loop position, RNG states, config, free-form JSON
//   save_training_state            model + AdamW state + meta in one safetensors file
//   load_training_state            the same back, strictly
//
// A training state file is safetensors:
//   "model.<name>"                  every entry of model.state_dict() (parameters and buffers), F32
//   "optim.<name>.step"             I64 scalar, for each parameter the optimizer has state for
//   "optim.<name>.exp_avg"          F32, the parameter's shape
//   "optim.<name>.exp_avg_sq"       F32
//   "optim.<name>.max_exp_avg_sq"   F32, only when the parameter's group uses amsgrad
// <name> is the parameter's name in model.named_parameters(), so the state
// survives a rebuilt model and optimizer. __metadata__ holds
//   "format": "mamclip.training_state", "version": "1",
//   "optimizer": {"type": "AdamW", "groups": [{"lr", "beta1", "beta2", "eps",
//                 "weight_decay", "amsgrad", "params": [names]}]},
//   "meta": TrainingMeta::to_json()
// (each a JSON text). Loading restores the group options as PyTorch's
// Optimizer.load_state_dict does, so a scheduler's lr, and every other option,
// continues from the saved values. Resume in this order: build the model, the
// optimizer (with the run's base options) and the scheduler, then
// load_training_state, then scheduler.set_step(meta.scheduler_step) and
// meta.generators[name].apply_to(generator) for each generator; the loader
// skips meta.batch_in_epoch batches of epoch meta.epoch.
//
// Crash safety: atomic_write goes through io::AtomicFile (a temporary in the
// target's directory, fsync, rename over the target, fsync of the directory),
// so whenever the process dies, the target holds either the previous complete
// file or the new complete one. A writer killed before its rename leaves its
// temporary behind ("<name>.tmp-XXXXXX"); save_training_state removes such
// leftovers of its target before writing, which assumes one writer per path
// (a concurrent writer's temporary would be removed and its rename fail with
// an io_error, never a corrupt file).

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <span>
#include <streambuf>
#include <string>
#include <unordered_map>
#include <vector>

#include "mamclip/core/error.hpp"
#include "mamclip/core/random.hpp"
#include "mamclip/io/file.hpp"
#include "mamclip/io/safetensors.hpp"
#include "mamclip/nn/module.hpp"
#include "mamclip/optim/adamw.hpp"

namespace mamclip::train {

namespace detail {

// An output streambuf that hands its bytes to an AtomicFile in 1 MiB chunks.
class AtomicFileBuf final : public std::streambuf {
 public:
  explicit AtomicFileBuf(io::AtomicFile& file) : file_(file), buf_(size_t{1} << 20) {
    setp(buf_.data(), buf_.data() + buf_.size());
  }
  // Writes what is buffered; AtomicFile::write throws io_error on failure.
  void drain() {
    const auto n = static_cast<size_t>(pptr() - pbase());
    if (n) file_.write(pbase(), n);
    setp(buf_.data(), buf_.data() + buf_.size());
  }

 protected:
  int_type overflow(int_type ch) override {
    drain();
    if (!traits_type::eq_int_type(ch, traits_type::eof())) {
      *pptr() = traits_type::to_char_type(ch);
      pbump(1);
    }
    return traits_type::not_eof(ch);
  }
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    if (n >= static_cast<std::streamsize>(buf_.size())) {  // large blocks skip the copy
      drain();
      file_.write(s, static_cast<size_t>(n));
      return n;
    }
    return std::streambuf::xsputn(s, n);
  }
  int sync() override {
    drain();
    return 0;
  }

 private:
  io::AtomicFile& file_;
  std::vector<char> buf_;
};

inline std::string file_name_of(const std::filesystem::path& p) { return p.filename().string(); }

}  // namespace detail

// Writes `path` whole or not at all: `write` fills a stream backed by a
// temporary file in the same directory, which is then fsynced and renamed over
// `path` (and the directory fsynced). If `write` throws, or the stream fails,
// the temporary is removed and the exception propagates; `path` is unchanged.
// If the process dies before the rename, `path` is unchanged and the temporary
// stays (see remove_stale_temporaries).
inline void atomic_write(const std::filesystem::path& path, const std::function<void(std::ostream&)>& write) {
  MAMCLIP_CHECK(write != nullptr, value_error, "atomic_write('", path.string(), "'): the write function is empty");
  io::AtomicFile file(path.string());
  detail::AtomicFileBuf buf(file);
  {
    std::ostream os(&buf);
    // badbit in the mask makes the stream rethrow the io_error AtomicFile threw.
    os.exceptions(std::ios::badbit | std::ios::failbit);
    write(os);
    os.flush();
  }
  buf.drain();
  file.commit();
}

inline void atomic_write(const std::filesystem::path& path, std::span<const uint8_t> bytes) {
  io::AtomicFile file(path.string());
  file.write(bytes.data(), bytes.size());
  file.commit();
}

// Removes "<filename>.tmp-XXXXXX" files beside `path` (the temporaries of
// writers that died before their rename). Returns how many were removed. Only
// safe while no other writer is saving to `path`.
inline int remove_stale_temporaries(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  const std::string prefix = detail::file_name_of(path) + ".tmp-";
  std::error_code ec;
  int removed = 0;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    // mkstemp's suffix is exactly six characters.
    if (name.size() == prefix.size() + 6 && name.compare(0, prefix.size(), prefix) == 0 &&
        it->is_regular_file(ec)) {
      std::error_code rm;
      if (fs::remove(it->path(), rm)) ++removed;
    }
  }
  return removed;
}

// A Generator's position: Generator::set_state(seed, offset) restores it.
struct GeneratorState {
  uint64_t seed = 0;
  uint64_t offset = 0;

  static GeneratorState of(const Generator& g) { return {g.seed(), g.offset()}; }
  void apply_to(Generator& g) const { g.set_state(seed, offset); }
  bool operator==(const GeneratorState&) const = default;
};

// Where training stands, beside the tensors of a training state.
struct TrainingMeta {
  int64_t epoch = 0;           // the epoch in progress (0-based)
  int64_t batch_in_epoch = 0;  // batches of that epoch already consumed (the loader skips them on resume)
  int64_t global_step = 0;     // optimizer steps so far
  int64_t scheduler_step = 0;  // LRScheduler::last_step()
  double best_metric = std::numeric_limits<double>::quiet_NaN();  // NaN: none yet (JSON null)
  std::map<std::string, GeneratorState> generators;                // by the loop's names, e.g. "dropout", "masking"
  nlohmann::json config = nlohmann::json::object();                // the run's configuration
  nlohmann::json extra = nlohmann::json::object();                 // anything else (history, names of best files...)

  nlohmann::json to_json() const {
    nlohmann::json j;
    j["epoch"] = epoch;
    j["batch_in_epoch"] = batch_in_epoch;
    j["global_step"] = global_step;
    j["scheduler_step"] = scheduler_step;
    j["best_metric"] = std::isnan(best_metric) ? nlohmann::json(nullptr) : nlohmann::json(best_metric);
    nlohmann::json gens = nlohmann::json::object();
    for (const auto& [name, s] : generators) gens[name] = {{"seed", s.seed}, {"offset", s.offset}};
    j["generators"] = std::move(gens);
    j["config"] = config;
    j["extra"] = extra;
    return j;
  }

  // `where` names the source (file) in messages; every key is required.
  static TrainingMeta from_json(const nlohmann::json& j, const std::string& where) {
    MAMCLIP_CHECK(j.is_object(), io_error, where, ": the training meta is a JSON ", j.type_name(),
                  "; expected an object");
    auto need = [&](const char* key) -> const nlohmann::json& {
      MAMCLIP_CHECK(j.contains(key), io_error, where, ": the training meta has no key '", key, "'");
      return j.at(key);
    };
    auto integer = [&](const char* key) {
      const auto& v = need(key);
      MAMCLIP_CHECK(v.is_number_integer(), io_error, where, ": training meta key '", key, "' is ", v.dump(),
                    "; expected an integer");
      return v.get<int64_t>();
    };
    TrainingMeta m;
    m.epoch = integer("epoch");
    m.batch_in_epoch = integer("batch_in_epoch");
    m.global_step = integer("global_step");
    m.scheduler_step = integer("scheduler_step");
    const auto& best = need("best_metric");
    MAMCLIP_CHECK(best.is_null() || best.is_number(), io_error, where, ": training meta key 'best_metric' is ",
                  best.dump(), "; expected a number or null");
    m.best_metric = best.is_null() ? std::numeric_limits<double>::quiet_NaN() : best.get<double>();
    const auto& gens = need("generators");
    MAMCLIP_CHECK(gens.is_object(), io_error, where, ": training meta key 'generators' is a JSON ", gens.type_name(),
                  "; expected an object of {seed, offset}");
    for (const auto& [name, g] : gens.items()) {
      const bool ok = g.is_object() && g.size() == 2 && g.contains("seed") && g.contains("offset") &&
                      g["seed"].is_number_unsigned() && g["offset"].is_number_unsigned();
      MAMCLIP_CHECK(ok, io_error, where, ": generator '", name, "' is ", g.dump(),
                    "; expected {\"seed\": unsigned, \"offset\": unsigned}");
      m.generators[name] = {g["seed"].get<uint64_t>(), g["offset"].get<uint64_t>()};
    }
    m.config = need("config");
    m.extra = need("extra");
    return m;
  }
};

namespace detail {

inline constexpr const char* kTrainingStateFormat = "mamclip.training_state";
inline constexpr const char* kTrainingStateVersion = "1";

// Parameter identity (TensorImpl) -> its name in the model.
inline std::unordered_map<const void*, std::string> parameter_names(const nn::Module& model) {
  std::unordered_map<const void*, std::string> out;
  for (const auto& [name, p] : model.named_parameters()) out.emplace(p.impl().get(), name);
  return out;
}

// The optimizer's parameters by group, as model names; value_error if one is
// not the model's.
inline std::vector<std::vector<std::string>> optimizer_param_names(const nn::Module& model, const optim::AdamW& opt,
                                                                   const std::string& who) {
  const auto names = parameter_names(model);
  std::vector<std::vector<std::string>> out;
  for (size_t g = 0; g < opt.num_param_groups(); ++g) {
    out.emplace_back();
    const auto& ps = opt.group_params(g);
    for (size_t i = 0; i < ps.size(); ++i) {
      const auto it = names.find(ps[i].impl().get());
      MAMCLIP_CHECK(it != names.end(), value_error, who, ": parameter ", i, " of optimizer group ", g,
                    " (shape ", shape_str(ps[i].shape()), ") is not a parameter of the model (", model.type_name(),
                    "); the optimizer must be built from the model's parameters");
      out.back().push_back(it->second);
    }
  }
  return out;
}

inline Tensor<int64_t> scalar_i64(int64_t v) {
  Tensor<int64_t> t = Tensor<int64_t>::empty({});
  t.data_ptr()[0] = v;
  return t;
}

inline nlohmann::json parse_metadata_json(const io::Metadata& md, const std::string& key, const std::string& where) {
  const auto it = md.find(key);
  MAMCLIP_CHECK(it != md.end(), io_error, where, ": __metadata__ has no '", key, "' entry");
  try {
    return nlohmann::json::parse(it->second);
  } catch (const nlohmann::json::exception& e) {
    throw io_error(mamclip::detail::str_cat(where, ": __metadata__ entry '", key, "' is not valid JSON: ", e.what()));
  }
}

}  // namespace detail

// Writes model, optimizer state and meta to `path` atomically (see the file
// comment for the layout), after removing temporaries a killed save left there.
// value_error when an optimizer parameter is not a parameter of `model`.
inline void save_training_state(const std::filesystem::path& path, const nn::Module& model, const optim::AdamW& opt,
                                const TrainingMeta& meta) {
  const std::string who = "save_training_state('" + path.string() + "')";
  const auto groups = detail::optimizer_param_names(model, opt, who);

  io::NamedTensors tensors;
  for (const auto& [name, t] : model.state_dict()) tensors.emplace_back("model." + name, t);
  nlohmann::json jgroups = nlohmann::json::array();
  // state() is non-const only so that a checkpoint can restore it; saving reads.
  auto& mopt = const_cast<optim::AdamW&>(opt);
  for (size_t g = 0; g < groups.size(); ++g) {
    const optim::AdamWOptions& o = opt.param_groups()[g].options;
    jgroups.push_back({{"lr", o.lr},
                       {"beta1", o.beta1},
                       {"beta2", o.beta2},
                       {"eps", o.eps},
                       {"weight_decay", o.weight_decay},
                       {"amsgrad", o.amsgrad},
                       {"params", groups[g]}});
    const auto& ps = opt.group_params(g);
    for (size_t i = 0; i < ps.size(); ++i) {
      const optim::AdamWState* st = mopt.state(ps[i]);
      if (!st) continue;
      const std::string base = "optim." + groups[g][i];
      tensors.emplace_back(base + ".step", detail::scalar_i64(st->step));
      tensors.emplace_back(base + ".exp_avg", st->exp_avg);
      tensors.emplace_back(base + ".exp_avg_sq", st->exp_avg_sq);
      if (o.amsgrad) {
        MAMCLIP_CHECK(st->max_exp_avg_sq.defined(), value_error, who, ": parameter '", groups[g][i],
                      "' is in an amsgrad group but has no max_exp_avg_sq (its state predates amsgrad)");
        tensors.emplace_back(base + ".max_exp_avg_sq", st->max_exp_avg_sq);
      }
    }
  }
  io::Metadata md;
  md["format"] = detail::kTrainingStateFormat;
  md["version"] = detail::kTrainingStateVersion;
  md["optimizer"] = nlohmann::json{{"type", opt.type_name()}, {"groups", jgroups}}.dump();
  md["meta"] = meta.to_json().dump();

  // Validate and build the header before touching the file system.
  const std::string header = io::detail::safetensors_header(tensors, md, who);
  remove_stale_temporaries(path);
  atomic_write(path, [&](std::ostream& os) {
    io::detail::emit_safetensors(tensors, header, [&](const uint8_t* p, size_t n) {
      os.write(reinterpret_cast<const char*>(p), static_cast<std::streamsize>(n));
    });
  });
}

// Restores what save_training_state wrote into `model` and `opt` and returns
// the meta. Strict: the file must hold exactly the model's state-dict entries
// with their shapes, the optimizer's groups (same count, same parameter names
// in the same order) and, for parameters with state, all of its tensors, and
// nothing else. Errors name the file and the key: io_error (unreadable,
// truncated or corrupt file, missing or unexpected keys, bad metadata),
// shape_error (a tensor of another shape), value_error (an optimizer parameter
// that is not the model's). Nothing is modified unless everything checks out.
inline TrainingMeta load_training_state(const std::filesystem::path& path, nn::Module& model, optim::AdamW& opt) {
  const std::string where = "training state '" + path.string() + "'";
  const std::string who = "load_training_state('" + path.string() + "')";
  const io::SafetensorsFile file(path.string());  // io_error on truncated or corrupt files
  const io::Metadata& md = file.metadata();
  {
    const auto f = md.find("format");
    MAMCLIP_CHECK(f != md.end() && f->second == detail::kTrainingStateFormat, io_error, where,
                  " is not a mamclip training state (__metadata__ 'format' is ",
                  f == md.end() ? std::string("missing") : "'" + f->second + "'", "; expected '",
                  detail::kTrainingStateFormat, "')");
    const auto v = md.find("version");
    MAMCLIP_CHECK(v != md.end() && v->second == detail::kTrainingStateVersion, io_error, where, " has version ",
                  v == md.end() ? std::string("(none)") : "'" + v->second + "'", "; this build reads version ",
                  detail::kTrainingStateVersion);
  }
  const TrainingMeta meta = TrainingMeta::from_json(detail::parse_metadata_json(md, "meta", where), where);
  const nlohmann::json jopt = detail::parse_metadata_json(md, "optimizer", where);

  std::vector<std::string> expected;  // every tensor name the file must hold

  // Model tensors: all present with their shapes.
  nn::StateDict loaded;
  for (const auto& [name, target] : model.state_dict()) {
    const std::string key = "model." + name;
    MAMCLIP_CHECK(file.contains(key), io_error, where, " has no tensor '", key, "' (the model's '", name, "')");
    MAMCLIP_CHECK(file.info(key).shape == target.shape(), shape_error, where, ": tensor '", key, "' has shape ",
                  shape_str(file.info(key).shape), " but the model's '", name, "' has shape ",
                  shape_str(target.shape()));
    loaded.insert(name, file.get<float>(key));
    expected.push_back(key);
  }

  // Optimizer groups: same layout, options restored from the file.
  const auto groups = detail::optimizer_param_names(model, opt, who);
  MAMCLIP_CHECK(jopt.is_object() && jopt.value("type", "") == opt.type_name() && jopt.contains("groups") &&
                    jopt["groups"].is_array(),
                io_error, where, ": __metadata__ 'optimizer' is ", io::detail::short_dump(jopt),
                "; expected {\"type\": \"", opt.type_name(), "\", \"groups\": [...]}");
  const auto& jgroups = jopt["groups"];
  MAMCLIP_CHECK(jgroups.size() == groups.size(), io_error, where, " has ", jgroups.size(),
                " optimizer parameter groups; the optimizer has ", groups.size());
  std::vector<optim::AdamWOptions> options(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    const auto& jg = jgroups[g];
    try {
      MAMCLIP_CHECK(jg.at("params").get<std::vector<std::string>>() == groups[g], io_error, where,
                    ": optimizer group ", g, " holds parameters ", jg.at("params").dump(),
                    " but the optimizer's group ", g, " holds ", nlohmann::json(groups[g]).dump());
      options[g].lr = jg.at("lr").get<double>();
      options[g].beta1 = jg.at("beta1").get<double>();
      options[g].beta2 = jg.at("beta2").get<double>();
      options[g].eps = jg.at("eps").get<double>();
      options[g].weight_decay = jg.at("weight_decay").get<double>();
      options[g].amsgrad = jg.at("amsgrad").get<bool>();
    } catch (const nlohmann::json::exception& e) {
      throw io_error(mamclip::detail::str_cat(where, ": optimizer group ", g, " is malformed (", e.what(), ")"));
    }
    options[g].check(who, g);
  }

  // Per-parameter state: complete or absent.
  struct Pending {
    Tensor<float> param;
    std::optional<optim::AdamWState> state;
  };
  std::vector<Pending> pending;
  for (size_t g = 0; g < groups.size(); ++g) {
    const auto& ps = opt.group_params(g);
    for (size_t i = 0; i < ps.size(); ++i) {
      const std::string base = "optim." + groups[g][i];
      Pending pd{ps[i], std::nullopt};
      if (file.contains(base + ".step")) {
        std::vector<std::string> keys = {base + ".exp_avg", base + ".exp_avg_sq"};
        if (options[g].amsgrad) keys.push_back(base + ".max_exp_avg_sq");
        for (const auto& key : keys) {
          MAMCLIP_CHECK(file.contains(key), io_error, where, " has no tensor '", key, "' (it has '", base,
                        ".step', so the state of parameter '", groups[g][i], "' is incomplete)");
          MAMCLIP_CHECK(file.info(key).shape == ps[i].shape(), shape_error, where, ": tensor '", key,
                        "' has shape ", shape_str(file.info(key).shape), " but parameter '", groups[g][i],
                        "' has shape ", shape_str(ps[i].shape()));
        }
        MAMCLIP_CHECK(file.info(base + ".step").shape.empty(), shape_error, where, ": tensor '", base,
                      ".step' has shape ", shape_str(file.info(base + ".step").shape), "; expected a scalar []");
        optim::AdamWState st;
        st.step = file.get<int64_t>(base + ".step").data_ptr()[0];
        MAMCLIP_CHECK(st.step >= 0, io_error, where, ": tensor '", base, ".step' is ", st.step,
                      "; expected a non-negative step count");
        const Device dev = ps[i].device();
        st.exp_avg = file.get<float>(keys[0]).to(dev);
        st.exp_avg_sq = file.get<float>(keys[1]).to(dev);
        if (options[g].amsgrad) st.max_exp_avg_sq = file.get<float>(keys[2]).to(dev);
        pd.state = std::move(st);
        expected.push_back(base + ".step");
        expected.insert(expected.end(), keys.begin(), keys.end());
      }
      pending.push_back(std::move(pd));
    }
  }

  // Nothing else may be in the file.
  if (file.size() != expected.size()) {
    std::unordered_map<std::string, int> want;
    for (const auto& k : expected) want[k] = 1;
    for (const auto& name : file.names())
      MAMCLIP_CHECK(want.count(name), io_error, where, " has an unexpected tensor '", name,
                    "' (neither a model entry nor the state of an optimized parameter)");
  }

  model.load_state_dict(loaded, /*strict=*/true);
  for (size_t g = 0; g < groups.size(); ++g) opt.param_groups()[g].options = options[g];
  for (auto& pd : pending) opt.set_state(pd.param, std::move(pd.state));
  return meta;
}

}  // namespace mamclip::train
