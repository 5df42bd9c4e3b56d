// BERT against transformers 4.57 (tests/fixtures/bert, made by
// tools/make_bert_fixture.py): a tiny random BertForPreTraining checkpoint,
// saved as float32 safetensors and as a bfloat16 pytorch_model.bin, loaded as
// BertModel and as BertForMaskedLM; outputs and every parameter gradient, the
// checkpoint name variants found in the wild, strict-loading errors,
// save_pretrained round trips and config.json errors. With
// MAMCLIP_BERT_BIG_DIR set, also a full-size PubMedBERT-shaped model
// (tools/make_bert_fixture.py --pubmedbert-dir DIR).
#include "support/test_support.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <unistd.h>

#include "mamclip/models/bert.hpp"

namespace test_bert {
using namespace mamclip;
using namespace mamclip::test;
using namespace mamclip::test::files;
using namespace mamclip::models;
namespace fs = std::filesystem;

namespace {

const std::string kModelDir = fixture_path("bert/model");
const std::string kBinDir = fixture_path("bert/model_bin");

struct Expected {
  io::TensorMap t = io::load_safetensors(fixture_path("bert/expected.safetensors"));
  Tensor<float> f(const std::string& name) const {
    REQUIRE(t.count(name) == 1);
    return io::get_as<float>(t.at(name), name);
  }
  Tensor<int64_t> i(const std::string& name) const {
    REQUIRE(t.count(name) == 1);
    return io::get_as<int64_t>(t.at(name), name);
  }
  Tensor<int64_t> ids() const { return i("input_ids"); }
  Tensor<int64_t> mask() const { return i("attention_mask"); }
  Tensor<int64_t> types() const { return i("token_type_ids"); }
  // The names under "grad.<which>." (every parameter of that model).
  std::set<std::string> grad_names(const std::string& which) const {
    std::set<std::string> out;
    const std::string p = "grad." + which + ".";
    for (const auto& [k, v] : t)
      if (k.compare(0, p.size(), p) == 0) out.insert(k.substr(p.size()));
    return out;
  }
};

const Expected& expected() {
  static const Expected e;
  return e;
}

// max |a - b| / max |b|: the error relative to the reference's scale.
double rel_err(const Tensor<float>& a, const Tensor<float>& b) {
  REQUIRE(a.shape() == b.shape());
  const auto va = a.to_vector(), vb = b.to_vector();
  double num = 0, den = 0;
  for (size_t k = 0; k < va.size(); ++k) {
    const double d = std::abs(static_cast<double>(va[k]) - vb[k]);
    num = std::isnan(d) ? INFINITY : std::max(num, d);
    den = std::max(den, std::abs(static_cast<double>(vb[k])));
  }
  return den > 0 ? num / den : num;
}

// The error of a parameter gradient relative to the reference's scale. The key
// bias adds one constant to every score of a softmax row, so its exact gradient
// is zero and both sides hold rounding noise (~1e-9 of the key weight's
// gradient): it is measured against the scale of the key weight's gradient.
double grad_err(const std::string& name, const Tensor<float>& grad, const Expected& e, const std::string& which) {
  const std::string ref_name = "grad." + which + "." + name;
  const std::string suffix = "attention.self.key.bias";
  if (name.size() < suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return rel_err(grad, e.f(ref_name));
  const std::string weight = ref_name.substr(0, ref_name.size() - 4) + "weight";
  const double scale = amax(abs(e.f(weight))).item();
  REQUIRE(scale > 0);
  return amax(abs(grad - e.f(ref_name))).item() / scale;
}

void require_rel(const Tensor<float>& a, const Tensor<float>& b, double tol, const std::string& what) {
  const double e = rel_err(a, b);
  INFO(what << ": max relative error " << e << " (limit " << tol << ")");
  CHECK(e <= tol);
}

bool same_values(const Tensor<float>& a, const Tensor<float>& b) {
  return a.shape() == b.shape() && a.to_vector() == b.to_vector();
}

// A model directory holding the fixture's config and `tensors`.
void write_checkpoint_dir(const TempDir& dir, const io::TensorMap& tensors) {
  fs::copy_file(kModelDir + "/config.json", dir.file("config.json"), fs::copy_options::overwrite_existing);
  io::save_safetensors(dir.file("model.safetensors"), tensors);
}

io::TensorMap fixture_tensors() { return io::load_safetensors(kModelDir + "/model.safetensors"); }

// sum(last_hidden_state * w_hidden) + sum(pooler_output * w_pool), as the fixture script.
Tensor<float> base_loss(const BertOutput& o) {
  const Expected& e = expected();
  return sum(o.last_hidden_state * e.f("w_hidden")) + sum(o.pooler_output * e.f("w_pool"));
}

void check_base_outputs(BertModel& model, const std::string& what) {
  const Expected& e = expected();
  NoGradGuard no_grad;
  BertOutput o = model.forward(e.ids(), e.mask(), e.types());
  require_rel(o.last_hidden_state, e.f("last_hidden_state"), 1e-5, what + " last_hidden_state");
  require_rel(o.pooler_output, e.f("pooler_output"), 1e-5, what + " pooler_output");
}

void check_mlm_logits(BertForMaskedLM& model, const std::string& what) {
  const Expected& e = expected();
  NoGradGuard no_grad;
  require_rel(model.forward(e.ids(), e.mask(), e.types()), e.f("mlm_logits"), 1e-5, what + " logits");
}

Tensor<float> mlm_loss(BertForMaskedLM& model) {
  const Expected& e = expected();
  Tensor<float> logits = model.forward(e.ids(), e.mask(), e.types());
  const int64_t V = model.config().vocab_size;
  return cross_entropy(logits.reshape({-1, V}), e.i("mlm_labels").reshape({-1}));
}

std::string config_text() {
  std::ifstream f(kModelDir + "/config.json");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

TEST_CASE("BertModel from model.safetensors matches transformers: outputs and every gradient") {
  const Expected& e = expected();
  auto model = load_bert(kModelDir);
  CHECK_FALSE(model->is_training());
  CHECK(model->has_pooler());

  // Parameter names are HF's, one for one.
  std::set<std::string> names;
  for (const auto& [name, p] : model->named_parameters()) names.insert(name);
  CHECK(names == e.grad_names("base"));
  CHECK(names.count("encoder.layer.1.attention.output.LayerNorm.weight") == 1);

  BertOutput o = model->forward(e.ids(), e.mask(), e.types());
  const double err_h = rel_err(o.last_hidden_state, e.f("last_hidden_state"));
  const double err_p = rel_err(o.pooler_output, e.f("pooler_output"));
  CHECK(err_h <= 1e-5);
  CHECK(err_p <= 1e-5);
  Tensor<float> loss = base_loss(o);
  CHECK(loss.item() == Approx(e.f("base_loss").item()).epsilon(1e-5));
  loss.backward();
  double worst = 0;
  std::string worst_name;
  for (const auto& [name, p] : model->named_parameters()) {
    REQUIRE(p.grad().defined());
    const double err = grad_err(name, p.grad(), e, "base");
    INFO("grad of " << name << ": max relative error " << err);
    CHECK(err <= 1e-4);
    if (err > worst) worst = err, worst_name = name;
  }
  std::printf("BertModel vs transformers: last_hidden_state %.2e, pooler_output %.2e, worst gradient %.2e (%s)\n",
              err_h, err_p, worst, worst_name.c_str());
}

TEST_CASE("BertForMaskedLM from model.safetensors matches transformers: logits and every gradient") {
  const Expected& e = expected();
  auto model = load_bert_for_masked_lm(kModelDir);
  CHECK_FALSE(model->bert().has_pooler());
  std::set<std::string> names;
  for (const auto& [name, p] : model->named_parameters()) names.insert(name);
  CHECK(names == e.grad_names("mlm"));
  CHECK(names.count("cls.predictions.bias") == 1);
  CHECK(names.count("cls.predictions.decoder.weight") == 0);  // tied to the word embeddings

  Tensor<float> logits = model->forward(e.ids(), e.mask(), e.types());
  const double err_l = rel_err(logits, e.f("mlm_logits"));
  CHECK(err_l <= 1e-5);
  Tensor<float> loss = mlm_loss(*model);
  CHECK(loss.item() == Approx(e.f("mlm_loss").item()).epsilon(1e-5));
  loss.backward();
  double worst = 0;
  for (const auto& [name, p] : model->named_parameters()) {
    REQUIRE(p.grad().defined());
    const double err = grad_err(name, p.grad(), e, "mlm");
    INFO("grad of " << name << ": max relative error " << err);
    CHECK(err <= 1e-4);
    worst = std::max(worst, err);
  }
  // The padding row gets gradient only through the tied decoder (label 0 is used once).
  const Tensor<float> g0 = model->bert().embeddings->word_embeddings->weight.grad().select(0, 0);
  CHECK(amax(abs(g0)).item() > 0);
  std::printf("BertForMaskedLM vs transformers: logits %.2e, worst gradient %.2e\n", err_l, worst);
}

TEST_CASE("pytorch_model.bin in bfloat16 loads the same weights as model.safetensors") {
  auto st = load_bert(kModelDir);
  auto bin = load_bert(kBinDir);
  for (const auto& [name, t] : st->state_dict()) {
    INFO(name);
    CHECK(same_values(bin->state_dict().at(name), t));
  }
  check_base_outputs(*bin, "pytorch_model.bin");
  // The .bin also holds cls.predictions.decoder.{weight,bias} (torch.save keeps tied copies).
  auto mlm = load_bert_for_masked_lm(kBinDir);
  check_mlm_logits(*mlm, "pytorch_model.bin");
}

TEST_CASE("an undefined attention_mask means all ones; token types default to zeros") {
  const Expected& e = expected();
  auto model = load_bert(kModelDir);
  NoGradGuard no_grad;
  BertOutput a = model->forward(e.ids(), Tensor<int64_t>(), e.types());
  BertOutput b = model->forward(e.ids(), ones<int64_t>(e.ids().shape()), e.types());
  require_allclose(a.last_hidden_state, b.last_hidden_state, 0, 0, "no mask vs all ones");
  require_allclose(a.pooler_output, b.pooler_output, 0, 0, "no mask vs all ones (pooler)");
  BertOutput c = model->forward(e.ids(), e.mask());
  BertOutput d = model->forward(e.ids(), e.mask(), zeros<int64_t>(e.ids().shape()));
  require_allclose(c.last_hidden_state, d.last_hidden_state, 0, 0, "no token types vs zeros");
  // And the mask matters: padding changes the real tokens' states.
  CHECK(rel_err(a.last_hidden_state.select(0, 1), model->forward(e.ids(), e.mask(), e.types())
                                                        .last_hidden_state.select(0, 1)) > 1e-3);
}

TEST_CASE("checkpoint name variants: no prefix, gamma/beta, position_ids, fp16, extra heads") {
  const io::TensorMap base = fixture_tensors();

  SECTION("BertModel-style keys with LayerNorm.gamma/beta, a position_ids buffer and float16 weights") {
    io::TensorMap v;
    for (const auto& [key, t] : base) {
      if (key.compare(0, 4, "cls.") == 0) continue;
      std::string k = key.substr(5);  // drop "bert."
      if (auto at = k.find("LayerNorm.weight"); at != std::string::npos) k.replace(at, 16, "LayerNorm.gamma");
      if (auto at = k.find("LayerNorm.bias"); at != std::string::npos) k.replace(at, 14, "LayerNorm.beta");
      // The fixture's weights are bfloat16-exact, and bfloat16 of this size is float16-exact
      // for all but tiny magnitudes; keep the embeddings float32 to cover both paths.
      if (k.find("encoder.layer.0.") == 0)
        v.emplace(k, io::get_as<float>(t).to<half>());
      else
        v.emplace(k, t);
    }
    v.emplace("embeddings.position_ids", arange<int64_t>(0, 64).reshape({1, 64}));
    CHECK(v.count("encoder.layer.0.attention.output.LayerNorm.gamma") == 1);
    TempDir dir("variant");
    write_checkpoint_dir(dir, v);
    auto model = load_bert(dir.str());
    auto ref = load_bert(kModelDir);
    // Layer 0 went through float16: compare with the float32 model rounded the same way.
    for (const auto& [name, t] : ref->state_dict())
      if (name.find("encoder.layer.0.") == 0) {
        NoGradGuard no_grad;
        Tensor<float> r = t;
        r.copy_(t.to<half>().to<float>());
      }
    NoGradGuard no_grad;
    const Expected& e = expected();
    require_allclose(model->forward(e.ids(), e.mask(), e.types()).last_hidden_state,
                     ref->forward(e.ids(), e.mask(), e.types()).last_hidden_state, 0, 0, "variant vs reference");
    // ... into a BertForMaskedLM: the "bert." prefix is added, the pooler ignored; the head is missing.
    REQUIRE_THROWS_AS(load_bert_for_masked_lm(dir.str()), nn::state_dict_error);
    try {
      load_bert_for_masked_lm(dir.str());
    } catch (const nn::state_dict_error& err) {
      CHECK(err.unexpected_keys.empty());
      CHECK(err.missing_keys == std::vector<std::string>{"cls.predictions.bias",
                                                         "cls.predictions.transform.dense.weight",
                                                         "cls.predictions.transform.dense.bias",
                                                         "cls.predictions.transform.LayerNorm.weight",
                                                         "cls.predictions.transform.LayerNorm.bias"});
    }
  }

  SECTION("bert.-prefixed keys with LayerNorm.gamma/beta and a position_ids buffer load into both classes") {
    io::TensorMap v;
    for (const auto& [key, t] : base) {
      std::string k = key;
      if (auto at = k.find("LayerNorm.weight"); at != std::string::npos) k.replace(at, 16, "LayerNorm.gamma");
      if (auto at = k.find("LayerNorm.bias"); at != std::string::npos) k.replace(at, 14, "LayerNorm.beta");
      v.emplace(k, t);
    }
    v.emplace("bert.embeddings.position_ids", arange<int64_t>(0, 64).reshape({1, 64}));
    CHECK(v.count("bert.encoder.layer.1.output.LayerNorm.beta") == 1);
    CHECK(v.count("cls.predictions.transform.LayerNorm.gamma") == 1);
    TempDir dir("prefixed");
    write_checkpoint_dir(dir, v);
    auto model = load_bert(dir.str());
    check_base_outputs(*model, "prefixed gamma/beta");
    auto mlm = load_bert_for_masked_lm(dir.str());
    check_mlm_logits(*mlm, "prefixed gamma/beta");
  }

  SECTION("a BertModel checkpoint plus a head without the bert. prefix loads into BertForMaskedLM") {
    io::TensorMap v;
    for (const auto& [key, t] : base) {
      if (key.compare(0, 21, "cls.seq_relationship.") == 0 || key.find("pooler") != std::string::npos) continue;
      v.emplace(key.compare(0, 5, "bert.") == 0 ? key.substr(5) : key, t);
    }
    // An old-style head: the bias only as decoder.bias, the tied decoder weight stored.
    v.emplace("cls.predictions.decoder.bias", v.at("cls.predictions.bias"));
    v.erase("cls.predictions.bias");
    v.emplace("cls.predictions.decoder.weight", v.at("embeddings.word_embeddings.weight"));
    TempDir dir("mlm");
    write_checkpoint_dir(dir, v);
    auto model = load_bert_for_masked_lm(dir.str());
    check_mlm_logits(*model, "unprefixed checkpoint");
    // Loaded as a BertModel: cls.* ignored, the pooler missing unless not asked for.
    MAMCLIP_REQUIRE_THROWS_WITH(load_bert(dir.str()), nn::state_dict_error, "missing keys (2): 'pooler.dense.weight'");
    BertLoadOptions no_pooler;
    no_pooler.add_pooling_layer = false;
    auto enc = load_bert(dir.str(), no_pooler);
    CHECK_FALSE(enc->has_pooler());
    const Expected& e = expected();
    NoGradGuard no_grad;
    require_rel(enc->forward(e.ids(), e.mask(), e.types()).last_hidden_state, e.f("last_hidden_state"), 1e-5,
                "encoder without pooler");
  }

  SECTION("an untied decoder weight is refused") {
    io::TensorMap v = base;
    Tensor<float> w = io::get_as<float>(base.at("bert.embeddings.word_embeddings.weight")).clone();
    w.select(0, 3).fill_(0.5f);
    v.emplace("cls.predictions.decoder.weight", w);
    TempDir dir("untied");
    write_checkpoint_dir(dir, v);
    MAMCLIP_REQUIRE_THROWS_WITH(load_bert_for_masked_lm(dir.str()), value_error,
                                "'cls.predictions.decoder.weight' differs from 'bert.embeddings.word_embeddings.weight'");
    CHECK_NOTHROW(load_bert(dir.str()));  // a BertModel ignores the head
  }

  SECTION("gamma and weight for one tensor collide") {
    io::TensorMap v = base;
    v.emplace("bert.embeddings.LayerNorm.gamma", v.at("bert.embeddings.LayerNorm.weight"));
    TempDir dir("collide");
    write_checkpoint_dir(dir, v);
    MAMCLIP_REQUIRE_THROWS_WITH(load_bert(dir.str()), value_error, "both map to 'embeddings.LayerNorm.weight'");
  }

  SECTION("integer weights are a dtype error naming the tensor") {
    io::TensorMap v = base;
    v["bert.pooler.dense.bias"] = zeros<int64_t>({64});
    TempDir dir("int");
    write_checkpoint_dir(dir, v);
    MAMCLIP_REQUIRE_THROWS_WITH(load_bert(dir.str()), dtype_error, "tensor 'bert.pooler.dense.bias' is int64");
  }
}

TEST_CASE("a sharded checkpoint (model.safetensors.index.json) loads like the single file") {
  const io::TensorMap base = fixture_tensors();
  TempDir dir("sharded");
  fs::copy_file(kModelDir + "/config.json", dir.file("config.json"));
  io::TensorMap shard[2];
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  for (const auto& [key, t] : base) {
    const int s = key.find("encoder.layer.1.") != std::string::npos || key.compare(0, 4, "cls.") == 0 ? 1 : 0;
    shard[s].emplace(key, t);
    index["weight_map"][key] = "model-0000" + std::to_string(s + 1) + "-of-00002.safetensors";
  }
  REQUIRE(!shard[0].empty());
  REQUIRE(!shard[1].empty());
  io::save_safetensors(dir.file("model-00001-of-00002.safetensors"), shard[0]);
  io::save_safetensors(dir.file("model-00002-of-00002.safetensors"), shard[1]);
  write_file(dir.file("model.safetensors.index.json"), index.dump(2));
  CHECK(find_bert_weights(dir.str()) == dir.file("model.safetensors.index.json"));
  auto model = load_bert(dir.str());
  check_base_outputs(*model, "sharded");
  auto mlm = load_bert_for_masked_lm(dir.str());
  check_mlm_logits(*mlm, "sharded");
  // model.safetensors beside an index wins, as in transformers.
  fs::copy_file(kModelDir + "/model.safetensors", dir.file("model.safetensors"));
  CHECK(find_bert_weights(dir.str()) == dir.file("model.safetensors"));
}

TEST_CASE("strict loading lists every missing, unexpected and mis-shaped key in one error") {
  io::TensorMap v = fixture_tensors();
  v.erase("bert.encoder.layer.1.output.dense.bias");
  v.erase("bert.embeddings.token_type_embeddings.weight");
  v.emplace("bert.encoder.layer.2.output.dense.bias", zeros<float>({64}));
  v["bert.pooler.dense.weight"] = zeros<float>({64, 32});
  TempDir dir("strict");
  write_checkpoint_dir(dir, v);
  const std::string file = dir.file("model.safetensors");
  try {
    load_bert(dir.str());
    FAIL("expected a state_dict_error");
  } catch (const nn::state_dict_error& err) {
    const std::string msg = err.what();
    INFO(msg);
    CHECK(msg.find(file) != std::string::npos);
    CHECK(msg.find("missing keys (2): 'embeddings.token_type_embeddings.weight', "
                   "'encoder.layer.1.output.dense.bias'") != std::string::npos);
    CHECK(msg.find("unexpected keys (1): 'encoder.layer.2.output.dense.bias'") != std::string::npos);
    CHECK(msg.find("'pooler.dense.weight': checkpoint has [64, 32], the module has [64, 64]") != std::string::npos);
    CHECK(err.missing_keys.size() == 2);
    CHECK(err.unexpected_keys == std::vector<std::string>{"encoder.layer.2.output.dense.bias"});
    CHECK(err.shape_mismatches == std::vector<std::string>{"pooler.dense.weight"});
  }
  // Non-strict: missing and unexpected keys pass, a shape mismatch never does.
  BertLoadOptions lax;
  lax.strict = false;
  MAMCLIP_REQUIRE_THROWS_WITH(load_bert(dir.str(), lax), nn::state_dict_error, "shape mismatches (1)");
  v["bert.pooler.dense.weight"] = zeros<float>({64, 64});
  write_checkpoint_dir(dir, v);
  auto model = load_bert(dir.str(), lax);
  CHECK(amax(abs(model->pooler->dense->weight)).item() == 0.0f);
}

TEST_CASE("save_pretrained writes HF names and config; loading it back gives identical outputs") {
  const Expected& e = expected();
  TempDir dir("save");
  {
    auto model = load_bert(kModelDir);
    save_pretrained(*model, dir.str());
    io::SafetensorsFile f(dir.file("model.safetensors"));
    CHECK(f.metadata() == io::Metadata{{"format", "pt"}});
    std::set<std::string> keys(f.names().begin(), f.names().end());
    CHECK(keys == e.grad_names("base"));
    for (const auto& name : f.names()) CHECK(f.info(name).dtype == io::StDtype::F32);
    const nlohmann::json j = load_json(dir.file("config.json"));
    CHECK(j.at("architectures") == nlohmann::json::array({"BertModel"}));
    CHECK(j.at("model_type") == "bert");
    CHECK(j.at("hidden_act") == "gelu");
    CHECK(j.at("layer_norm_eps").get<double>() == 1e-12);

    auto back = load_bert(dir.str());
    NoGradGuard no_grad;
    BertOutput a = model->forward(e.ids(), e.mask(), e.types());
    BertOutput b = back->forward(e.ids(), e.mask(), e.types());
    require_allclose(b.last_hidden_state, a.last_hidden_state, 0, 0, "reloaded last_hidden_state");
    require_allclose(b.pooler_output, a.pooler_output, 0, 0, "reloaded pooler_output");
    const BertConfig& c = back->config();
    CHECK(c.vocab_size == 100);
    CHECK(c.num_hidden_layers == 2);
    CHECK(c.num_attention_heads == 4);
    CHECK(c.intermediate_size == 128);
    CHECK(c.max_position_embeddings == 64);
  }
  // For tools/make_bert_fixture.py --check-saved: transformers loads what we wrote.
  const char* keep = std::getenv("MAMCLIP_BERT_KEEP_SAVED");
  auto keep_copy = [&](const TempDir& d, const std::string& sub) {
    if (!keep) return;
    const fs::path to = fs::path(keep) / sub;
    fs::create_directories(to);
    fs::copy(d.path(), to, fs::copy_options::overwrite_existing | fs::copy_options::recursive);
    std::printf("kept %s\n", to.string().c_str());
  };
  keep_copy(dir, "base");
  {
    TempDir mdir("save_mlm");
    auto mlm = load_bert_for_masked_lm(kModelDir);
    save_pretrained(*mlm, mdir.str());
    io::SafetensorsFile f(mdir.file("model.safetensors"));
    std::set<std::string> keys(f.names().begin(), f.names().end());
    CHECK(keys == e.grad_names("mlm"));
    CHECK(load_json(mdir.file("config.json")).at("architectures") == nlohmann::json::array({"BertForMaskedLM"}));
    auto back = load_bert_for_masked_lm(mdir.str());
    check_mlm_logits(*back, "reloaded BertForMaskedLM");
    keep_copy(mdir, "mlm");
  }
  // Saving over a previous save replaces it.
  BertConfig small;
  small.vocab_size = 100;
  small.hidden_size = 64;
  small.num_hidden_layers = 1;
  small.num_attention_heads = 4;
  small.intermediate_size = 128;
  small.max_position_embeddings = 64;
  BertModel fresh(small);
  save_pretrained(fresh, dir.str());
  CHECK(load_bert(dir.str())->config().num_hidden_layers == 1);
}

TEST_CASE("BertConfig: HF defaults, validation and typed errors naming config.json and the key") {
  SECTION("defaults and unknown keys") {
    BertConfig c = BertConfig::from_json(nlohmann::json::parse(R"({"architectures": ["X"], "foo": 1})"), "c.json");
    CHECK(c.vocab_size == 30522);
    CHECK(c.hidden_size == 768);
    CHECK(c.max_position_embeddings == 512);
    CHECK(c.type_vocab_size == 2);
    CHECK(c.pad_token_id == 0);
    CHECK(c.layer_norm_eps == 1e-12);
    CHECK(c.hidden_act == "gelu");
    BertConfig r = BertConfig::from_json(c.to_json(), "round trip");
    CHECK(r.to_json() == c.to_json());
  }
  SECTION("the fixture's config") {
    BertConfig c = BertConfig::from_json_file(kModelDir + "/config.json");
    CHECK(c.hidden_size == 64);
    CHECK(c.head_dim() == 16);
  }

  TempDir dir("config");
  const std::string path = dir.file("config.json");
  auto with = [&](const std::string& key, const std::string& value) {
    nlohmann::json j = nlohmann::json::parse(config_text());
    j[key] = nlohmann::json::parse(value);
    write_file(path, j.dump());
    fs::copy_file(kModelDir + "/model.safetensors", dir.file("model.safetensors"), fs::copy_options::overwrite_existing);
  };
  with("hidden_size", "66");
  MAMCLIP_REQUIRE_THROWS_WITH(load_bert(dir.str()), value_error,
                              path + ": 'hidden_size' (66) is not a multiple of 'num_attention_heads' (4)");
  with("hidden_act", "\"swish\"");
  MAMCLIP_REQUIRE_THROWS_WITH(load_bert(dir.str()), value_error, path + ": 'hidden_act' is \"swish\"; supported:");
  with("num_hidden_layers", "\"two\"");
  MAMCLIP_REQUIRE_THROWS_WITH(load_bert(dir.str()), value_error,
                              path + ": 'num_hidden_layers' is \"two\"; expected an integer");
  with("vocab_size", "0");
  MAMCLIP_REQUIRE_THROWS_WITH(load_bert(dir.str()), value_error, path + ": 'vocab_size' is 0; expected a positive");
  with("intermediate_size", "2.5");
  MAMCLIP_REQUIRE_THROWS_WITH(load_bert(dir.str()), value_error, "'intermediate_size' is 2.5; expected an integer");
  with("position_embedding_type", "\"relative_key\"");
  MAMCLIP_REQUIRE_THROWS_WITH(load_bert(dir.str()), value_error, "'position_embedding_type' is \"relative_key\"");
  with("is_decoder", "true");
  MAMCLIP_REQUIRE_THROWS_WITH(load_bert(dir.str()), value_error, "'is_decoder' is true");
  with("hidden_dropout_prob", "1.5");
  MAMCLIP_REQUIRE_THROWS_WITH(load_bert(dir.str()), value_error, "'hidden_dropout_prob' is 1.5");
  with("pad_token_id", "100");
  MAMCLIP_REQUIRE_THROWS_WITH(load_bert(dir.str()), value_error, "'pad_token_id' is 100");
  with("layer_norm_eps", "\"small\"");
  MAMCLIP_REQUIRE_THROWS_WITH(load_bert(dir.str()), value_error, "'layer_norm_eps' is \"small\"; expected a number");
  // A shape the weights do not have: the config is fine, loading reports the mismatches.
  with("intermediate_size", "96");
  MAMCLIP_REQUIRE_THROWS_WITH(load_bert(dir.str()), nn::state_dict_error, "shape mismatches (6)");
  // Activations: tanh variants and relu are accepted.
  for (const char* act : {"\"gelu_new\"", "\"gelu_pytorch_tanh\"", "\"relu\""}) {
    with("hidden_act", act);
    CHECK_NOTHROW(load_bert(dir.str()));
  }

  write_file(path, "{\"hidden_size\": 64,");
  MAMCLIP_REQUIRE_THROWS_WITH(load_bert(dir.str()), io_error, path + ": not valid JSON");
  write_file(path, "[1, 2]");
  MAMCLIP_REQUIRE_THROWS_WITH(load_bert(dir.str()), value_error, path + ": expected a JSON object, got a JSON array");
  fs::remove(path);
  MAMCLIP_REQUIRE_THROWS_WITH(load_bert(dir.str()), io_error, "cannot open BERT config '" + path + "'");
  fs::copy_file(kModelDir + "/config.json", path);
  fs::remove(dir.file("model.safetensors"));
  MAMCLIP_REQUIRE_THROWS_WITH(load_bert(dir.str()), io_error, "holds none of model.safetensors");
  MAMCLIP_REQUIRE_THROWS_WITH(load_bert(dir.file("nothing")), io_error, "is not a directory");

  BertConfig bad;
  bad.num_attention_heads = 5;
  MAMCLIP_REQUIRE_THROWS_WITH(BertModel{bad}, value_error, "'hidden_size' (768) is not a multiple");
}

TEST_CASE("a new BertModel is initialised as HF does") {
  BertConfig c;
  c.vocab_size = 300;
  c.hidden_size = 48;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 3;
  c.intermediate_size = 80;
  c.max_position_embeddings = 40;
  c.pad_token_id = 7;
  c.initializer_range = 0.05;
  Generator gen(123);
  BertForMaskedLM m(c, gen);
  CHECK(m.is_training());
  auto std_of = [](const Tensor<float>& t) { return std::sqrt(mean(t * t).item()); };
  const auto& emb = m.bert().embeddings;
  CHECK(std_of(emb->word_embeddings->weight) == Approx(0.05).epsilon(0.05));
  CHECK(amax(abs(emb->word_embeddings->weight.select(0, 7))).item() == 0.0f);
  const auto& layer = (*m.bert().encoder->layer)[0];
  CHECK(std_of(layer->intermediate->dense->weight) == Approx(0.05).epsilon(0.05));
  CHECK(amax(abs(layer->intermediate->dense->bias)).item() == 0.0f);
  CHECK(amin(layer->output->LayerNorm->weight).item() == 1.0f);
  CHECK(amax(abs(m.cls->predictions->bias)).item() == 0.0f);
  CHECK(std_of(m.cls->predictions->transform->dense->weight) == Approx(0.05).epsilon(0.05));
  // Same generator seed, same weights.
  Generator gen2(123);
  BertForMaskedLM m2(c, gen2);
  CHECK(same_values(m2.bert().embeddings->word_embeddings->weight, emb->word_embeddings->weight));
  // A forward and backward run end to end.
  Tensor<float> logits = m.forward(randint<int64_t>(0, 300, {2, 9}, gen));
  CHECK(logits.shape() == Shape{2, 9, 300});
  sum(logits).backward();
  CHECK(emb->position_embeddings->weight.grad().defined());
}

TEST_CASE("BertModel.forward checks its inputs") {
  auto model = load_bert(kModelDir);
  const Expected& e = expected();
  MAMCLIP_REQUIRE_THROWS_WITH(model->forward(zeros<int64_t>({2, 65})), shape_error,
                              "input_ids has length 65; expected at most max_position_embeddings = 64");
  MAMCLIP_REQUIRE_THROWS_WITH(model->forward(zeros<int64_t>({12})), shape_error,
                              "input_ids has shape [12]; expected [batch, length]");
  MAMCLIP_REQUIRE_THROWS_WITH(model->forward(e.ids(), ones<int64_t>({3, 11})), shape_error,
                              "attention_mask has shape [3, 11]; expected the shape of input_ids [3, 12]");
  MAMCLIP_REQUIRE_THROWS_WITH(model->forward(e.ids(), e.mask(), ones<int64_t>({2, 12})), shape_error,
                              "token_type_ids has shape [2, 12]");
  CHECK_THROWS_AS(model->forward(full<int64_t>({1, 4}, 100)), index_error);
  CHECK_THROWS_AS(model->forward(e.ids(), e.mask(), full<int64_t>({3, 12}, 2)), index_error);
}

TEST_CASE("dropout is active in training mode only") {
  const Expected& e = expected();
  auto model = load_bert(kModelDir);
  NoGradGuard no_grad;
  const Tensor<float> ev = model->forward(e.ids(), e.mask(), e.types()).last_hidden_state;
  model->train();
  const Tensor<float> t1 = model->forward(e.ids(), e.mask(), e.types()).last_hidden_state;
  const Tensor<float> t2 = model->forward(e.ids(), e.mask(), e.types()).last_hidden_state;
  CHECK(rel_err(t1, ev) > 1e-3);
  CHECK(rel_err(t1, t2) > 1e-3);
  model->eval();
  require_allclose(model->forward(e.ids(), e.mask(), e.types()).last_hidden_state, ev, 0, 0, "eval again");
}

TEST_CASE("full-size PubMedBERT-shaped model matches transformers (MAMCLIP_BERT_BIG_DIR)") {
  const char* dir = std::getenv("MAMCLIP_BERT_BIG_DIR");
  if (!dir || !*dir) {
    WARN("skipped: set MAMCLIP_BERT_BIG_DIR to a directory made by "
         "tools/make_bert_fixture.py --pubmedbert-dir DIR (a ~440 MB random BERT-base and its reference outputs)");
    return;
  }
  const io::TensorMap ref = io::load_safetensors((fs::path(dir) / "reference.safetensors").string());
  auto get_i = [&](const char* k) { return io::get_as<int64_t>(ref.at(k), k); };
  auto get_f = [&](const char* k) { return io::get_as<float>(ref.at(k), k); };
  const auto t0 = std::chrono::steady_clock::now();
  auto model = load_bert(dir);
  const auto t1 = std::chrono::steady_clock::now();
  NoGradGuard no_grad;
  BertOutput o = model->forward(get_i("input_ids"), get_i("attention_mask"), get_i("token_type_ids"));
  const auto t2 = std::chrono::steady_clock::now();
  const double err_h = rel_err(o.last_hidden_state, get_f("last_hidden_state"));
  const double err_p = rel_err(o.pooler_output, get_f("pooler_output"));
  CHECK(err_h <= 1e-5);
  CHECK(err_p <= 1e-5);
  auto secs = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
  std::printf("PubMedBERT-shaped (%lld layers, hidden %lld, batch %s): load %.2f s, forward %.2f s; "
              "last_hidden_state %.2e, pooler_output %.2e\n",
              static_cast<long long>(model->config().num_hidden_layers),
              static_cast<long long>(model->config().hidden_size), shape_str(get_i("input_ids").shape()).c_str(),
              secs(t0, t1), secs(t1, t2), err_h, err_p);
}

}  // namespace test_bert
