// torch.save checkpoints: files written by PyTorch (every dtype, views that
// share storages, non-contiguous tensors, a module's state dict, a Lightning
// checkpoint with foreign objects, the legacy format), pickles of every
// protocol, and hand-built archives and pickles that are corrupt or hostile.
#include "support/test_support.hpp"

#include <filesystem>
#include <fstream>

#include "mamclip/io/io.hpp"

namespace test_torch_checkpoint {
using namespace mamclip;
using namespace mamclip::test;
using namespace mamclip::test::files;
namespace fs = std::filesystem;

namespace {

std::string torch_fixture(const std::string& name) { return fixture_path("torch/" + name); }

// Row-major values of a CPU tensor of any layout.
template <class T>
std::vector<double> values(const Tensor<T>& t) {
  std::vector<double> out;
  if (t.numel() == 0) return out;
  const T* p = t.data_ptr();
  mamclip::detail::for_each_offset<1>(t.shape(), {t.strides()},
                                      [&](const std::array<int64_t, 1>& o) { out.push_back(static_cast<double>(p[o[0]])); });
  return out;
}
template <class T>
std::vector<int64_t> int_values(const Tensor<T>& t) {
  std::vector<int64_t> out;
  if (t.numel() == 0) return out;
  const T* p = t.data_ptr();
  mamclip::detail::for_each_offset<1>(t.shape(), {t.strides()},
                                      [&](const std::array<int64_t, 1>& o) { out.push_back(static_cast<int64_t>(p[o[0]])); });
  return out;
}
std::vector<double> any_values(const io::AnyStoredTensor& t) {
  return std::visit([](const auto& x) { return values(x); }, t);
}
std::vector<int64_t> any_ints(const io::AnyStoredTensor& t) {
  return std::visit([](const auto& x) { return int_values(x); }, t);
}
const Shape& any_strides(const io::AnyStoredTensor& t) {
  return std::visit([](const auto& x) -> const Shape& { return x.strides(); }, t);
}
int64_t any_offset(const io::AnyStoredTensor& t) {
  return std::visit([](const auto& x) { return x.storage_offset(); }, t);
}
const void* any_storage(const io::AnyStoredTensor& t) {
  return std::visit([](const auto& x) -> const void* { return x.storage().get(); }, t);
}

// Same dtype, shape and values (integers compared exactly).
void require_same(const io::AnyStoredTensor& got, const io::AnyStoredTensor& want, const std::string& name) {
  INFO(name);
  REQUIRE(io::st_dtype_of(got) == io::st_dtype_of(want));
  REQUIRE(io::shape_of(got) == io::shape_of(want));
  CHECK(any_ints(got) == any_ints(want));
  const auto a = any_values(got), b = any_values(want);
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i)
    CHECK((a[i] == b[i] || (std::isnan(a[i]) && std::isnan(b[i]))));
}

// ---- a stored zip writer and a pickle assembler for hand-made files

struct ZipSpec {
  std::string name;
  std::string data;
  uint16_t method = 0;
  uint16_t flags = 0;
  bool zip64_extra = false;  // sizes and offset in the zip64 extra field
};

void put16(std::string& s, uint32_t v) { s += char(v & 0xFF), s += char((v >> 8) & 0xFF); }
void put32(std::string& s, uint32_t v) { put16(s, v & 0xFFFF), put16(s, v >> 16); }
void put64(std::string& s, uint64_t v) { put32(s, uint32_t(v)), put32(s, uint32_t(v >> 32)); }

std::vector<uint8_t> make_zip(const std::vector<ZipSpec>& entries, bool zip64_end = true) {
  std::string out, cd;
  for (const auto& e : entries) {
    const uint32_t crc = io::crc32(reinterpret_cast<const uint8_t*>(e.data.data()), e.data.size());
    const uint64_t local = out.size();
    put32(out, 0x04034b50), put16(out, 20), put16(out, e.flags), put16(out, e.method), put32(out, 0);
    put32(out, crc), put32(out, uint32_t(e.data.size())), put32(out, uint32_t(e.data.size()));
    put16(out, uint32_t(e.name.size())), put16(out, 0);
    out += e.name;
    out += e.data;
    std::string extra;
    if (e.zip64_extra) put16(extra, 1), put16(extra, 24), put64(extra, e.data.size()), put64(extra, e.data.size()),
        put64(extra, local);
    put32(cd, 0x02014b50), put16(cd, 45), put16(cd, 45), put16(cd, e.flags), put16(cd, e.method), put32(cd, 0);
    put32(cd, crc);
    const uint32_t sz = e.zip64_extra ? 0xFFFFFFFF : uint32_t(e.data.size());
    put32(cd, sz), put32(cd, sz), put16(cd, uint32_t(e.name.size())), put16(cd, uint32_t(extra.size())), put16(cd, 0);
    put16(cd, 0), put16(cd, 0), put32(cd, 0), put32(cd, e.zip64_extra ? 0xFFFFFFFF : uint32_t(local));
    cd += e.name;
    cd += extra;
  }
  const uint64_t cd_offset = out.size();
  out += cd;
  if (zip64_end) {
    const uint64_t rec = out.size();
    put32(out, 0x06064b50), put64(out, 44), put16(out, 45), put16(out, 45), put32(out, 0), put32(out, 0);
    put64(out, entries.size()), put64(out, entries.size()), put64(out, cd.size()), put64(out, cd_offset);
    put32(out, 0x07064b50), put32(out, 0), put64(out, rec), put32(out, 1);
  }
  put32(out, 0x06054b50), put16(out, 0), put16(out, 0);
  put16(out, zip64_end ? 0xFFFF : uint32_t(entries.size())), put16(out, zip64_end ? 0xFFFF : uint32_t(entries.size()));
  put32(out, uint32_t(cd.size())), put32(out, zip64_end ? 0xFFFFFFFF : uint32_t(cd_offset)), put16(out, 0);
  return {out.begin(), out.end()};
}

// Builds pickle bytes opcode by opcode.
struct Pk {
  std::string b = std::string("\x80\x02", 2);
  Pk& op(uint8_t c) { b += char(c); return *this; }
  Pk& raw(const std::string& s) { b += s; return *this; }
  Pk& str(const std::string& s) { op('X'); put32(b, uint32_t(s.size())); b += s; return *this; }
  Pk& i(int64_t v) {
    if (v >= 0 && v < 256) return op('K').op(uint8_t(v));
    op(0x8a).op(8);
    put64(b, uint64_t(v));
    return *this;
  }
  Pk& global(const std::string& m, const std::string& n) { op('c'); b += m + "\n" + n + "\n"; return *this; }
  Pk& mark() { return op('('); }
  Pk& tuple() { return op('t'); }
  Pk& ints(const std::vector<int64_t>& v) {
    mark();
    for (auto x : v) i(x);
    return tuple();
  }
  // _rebuild_tensor_v2(('storage', torch.<type>, key, 'cpu', numel), offset, size, stride, False, {})
  Pk& tensor(const std::string& key, int64_t numel, int64_t offset, const std::vector<int64_t>& size,
             const std::vector<int64_t>& stride, const std::string& type = "FloatStorage",
             const std::string& fn = "_rebuild_tensor_v2") {
    global("torch._utils", fn).mark();
    mark().str("storage").global("torch", type).str(key).str("cpu").i(numel).tuple().op('Q');
    i(offset).ints(size).ints(stride).op(0x89).op('}').tuple().op('R');
    return *this;
  }
  Pk& stop() { return op('.'); }
};

std::string floats(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

// A torch.save-like archive: archive/data.pkl, archive/byteorder, archive/data/<key>.
std::vector<uint8_t> torch_zip(const std::string& pickle, const std::vector<std::pair<std::string, std::string>>& storages,
                               const std::string& byteorder = "little") {
  std::vector<ZipSpec> e = {{"archive/data.pkl", pickle}};
  if (!byteorder.empty()) e.push_back({"archive/byteorder", byteorder});
  for (const auto& [k, v] : storages) e.push_back({"archive/data/" + k, v});
  return make_zip(e);
}

io::TorchCheckpoint open_bytes(const std::vector<uint8_t>& b, const io::TorchLoadOptions& o = {}) {
  return io::TorchCheckpoint::from_bytes(b, "bad.pt", o);
}

// A state dict {"w": tensor over storage "0" of 6 floats} with the given view.
std::vector<uint8_t> one_tensor(int64_t numel, int64_t offset, const std::vector<int64_t>& size,
                                const std::vector<int64_t>& stride, const std::string& type = "FloatStorage",
                                const std::string& bytes = floats({0, 1, 2, 3, 4, 5})) {
  Pk p;
  p.op('}').mark().str("w").tensor("0", numel, offset, size, stride, type).op('u').stop();
  return torch_zip(p.b, {{"0", bytes}});
}

const io::PyObject* dict_get(const io::TorchCheckpoint& c, const io::PyObject* d, const std::string& key) {
  const auto e = c.dict_entries(d);
  REQUIRE(e.has_value());
  for (const auto& [k, v] : *e)
    if (k == key) return v;
  FAIL("no key " << key);
  return nullptr;
}

}  // namespace

TEST_CASE("reads every dtype, views that share storages and non-contiguous tensors from torch.save") {
  const auto expected = io::load_safetensors(torch_fixture("expected.safetensors"));
  const auto meta = load_json(torch_fixture("expected.json")).at("all_dtypes");
  io::TorchCheckpoint ckpt(torch_fixture("all_dtypes.pt"));
  CHECK(ckpt.archive_name() == "all_dtypes");
  CHECK_FALSE(ckpt.big_endian());
  CHECK(ckpt.pickle().protocol() == 2);
  const auto sd = ckpt.state_dict();
  // 19 tensors; "step", "note" and "list" are not tensors and are skipped.
  REQUIRE(sd.size() == meta.at("tensors").size());
  CHECK(sd.count("step") == 0);
  CHECK(sd.count("list") == 0);
  for (const auto& [name, info] : meta.at("tensors").items()) {
    INFO(name);
    REQUIRE(sd.count(name) == 1);
    const auto& t = sd.at(name);
    require_same(t, expected.at("all_dtypes/" + name), name);
    CHECK(any_strides(t) == info.at("stride").get<Shape>());  // views keep torch's layout
    CHECK(any_offset(t) == info.at("storage_offset").get<int64_t>());
  }
  // Stored dtypes: int16 and int8 widen to int64, the rest stay.
  CHECK(std::holds_alternative<Tensor<double>>(sd.at("f64")));
  CHECK(std::holds_alternative<Tensor<half>>(sd.at("f16")));
  CHECK(std::holds_alternative<Tensor<bfloat16>>(sd.at("bf16")));
  CHECK(std::holds_alternative<Tensor<int32_t>>(sd.at("i32")));
  CHECK(std::holds_alternative<Tensor<int64_t>>(sd.at("i16")));
  CHECK(std::holds_alternative<Tensor<int64_t>>(sd.at("i8")));
  CHECK(std::holds_alternative<Tensor<uint8_t>>(sd.at("u8")));
  CHECK(std::holds_alternative<Tensor<bool>>(sd.at("bool")));
  CHECK(any_ints(sd.at("i64")) ==
        std::vector<int64_t>{0, -1, (int64_t{1} << 40) + 3, -(int64_t{1} << 62), std::numeric_limits<int64_t>::max(),
                             std::numeric_limits<int64_t>::min()});
  CHECK(any_ints(sd.at("i16")) == std::vector<int64_t>{-32768, 32767, 0, -5, 123});
  CHECK(io::shape_of(sd.at("scalar")).empty());
  CHECK(io::get_as<float>(sd.at("scalar")).item() == 3.25f);

  // The transposed tensor stays a non-contiguous view with torch's values.
  const auto tr = io::get_as<float>(sd.at("transposed"));
  CHECK_FALSE(tr.is_contiguous());
  CHECK(tr.shape() == Shape{5, 3});
  CHECK(tr(4, 1) == io::get_as<float>(expected.at("all_dtypes/transposed"))(4, 1));
  // base, row and column view one storage: they share memory, as after torch.load.
  std::vector<std::vector<std::string>> shared = meta.at("shared");
  REQUIRE(shared.size() == 1);
  CHECK(shared[0] == std::vector<std::string>{"base", "row", "column"});
  CHECK(any_storage(sd.at("base")) == any_storage(sd.at("row")));
  CHECK(any_storage(sd.at("base")) == any_storage(sd.at("column")));
  CHECK(any_storage(sd.at("base")) != any_storage(sd.at("transposed")));
  io::get_as<float>(sd.at("base"))(2, 3) = 100.0f;
  CHECK(io::get_as<float>(sd.at("row"))(3) == 100.0f);
  CHECK(io::get_as<float>(sd.at("column"))(2) == 100.0f);
  // An expanded tensor keeps its stride 0.
  CHECK(any_strides(sd.at("expanded")) == Shape{0, 1});
  // Loading again makes fresh memory.
  CHECK(any_storage(io::load_torch_state_dict(torch_fixture("all_dtypes.pt")).at("base")) != any_storage(sd.at("base")));
}

TEST_CASE("the state dict of a module (pytorch_model.bin) loads, also through its directory") {
  const auto expected = io::load_safetensors(torch_fixture("expected.safetensors"));
  for (const std::string& p : {torch_fixture("hf_model/pytorch_model.bin"), torch_fixture("hf_model")}) {
    INFO(p);
    const auto sd = io::load_state_dict(p);
    REQUIRE(sd.size() == 10);
    for (const auto& [name, t] : sd) require_same(t, expected.at("model/" + name), name);
    CHECK(any_ints(sd.at("bn.num_batches_tracked")) == std::vector<int64_t>{12});
  }
  // The OrderedDict's _metadata attribute (set by BUILD) is not an entry.
  io::TorchCheckpoint c(torch_fixture("hf_model/pytorch_model.bin"));
  CHECK(c.root()->qualified_name() == "collections.OrderedDict");
  REQUIRE(c.root()->state != nullptr);
  CHECK(c.dict_entries(c.root()->state)->front().first == "_metadata");
}

TEST_CASE("a whole pickled nn.Module (torch.save(model)) gives state_dict() names without its classes") {
  const auto expected = io::load_safetensors(torch_fixture("expected.safetensors"));
  io::TorchCheckpoint c(torch_fixture("whole_model.pt"));
  CHECK(c.root()->qualified_name() == "__main__.TinyModel");
  REQUIRE(c.module_state(c.root()) != nullptr);
  const auto sd = c.state_dict();
  REQUIRE(sd.size() == 10);  // the non-persistent buffer "scratch" is left out
  for (const auto& [name, t] : sd) require_same(t, expected.at("model/" + name), name);
  CHECK(sd.count("scratch") == 0);

  // A module under "model" of a checkpoint dict; a broken submodule is named.
  Pk p;
  auto module = [&](Pk& k, bool with_child) {
    k.global("m", "Net").op(')').op(0x81).op('}').mark();
    k.str("_parameters").op('}').str("weight").global("torch._utils", "_rebuild_parameter").mark()
        .tensor("0", 6, 0, {2, 3}, {3, 1}).op(0x88).op('}').tuple().op('R').op('s').str("bias").op('N').op('s');
    k.str("_buffers").op('}').str("tmp").tensor("0", 6, 0, {1}, {1}).op('s');
    k.str("_non_persistent_buffers_set").op(0x8f).mark().str("tmp").op(0x90);
    k.str("_modules").op('}');
    if (with_child) k.str("child").i(7).op('s');
    k.op('u').op('b');
  };
  p.op('}').mark().str("epoch").i(1).str("model");
  module(p, false);
  p.op('u').stop();
  const auto m = open_bytes(torch_zip(p.b, {{"0", floats({0, 1, 2, 3, 4, 5})}})).state_dict();
  REQUIRE(m.size() == 1);  // bias None, tmp non-persistent
  CHECK(io::shape_of(m.at("weight")) == Shape{2, 3});
  Pk q;
  module(q, true);
  q.stop();
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(torch_zip(q.b, {{"0", floats({0, 1, 2, 3, 4, 5})}})).state_dict(), io_error,
                              "submodule 'child' is int 7; expected a pickled nn.Module");
}

TEST_CASE("a Lightning checkpoint yields its state_dict; foreign objects stay inert") {
  const auto expected = io::load_safetensors(torch_fixture("expected.safetensors"));
  io::TorchCheckpoint c(torch_fixture("lightning.ckpt"));
  const auto sd = c.state_dict();
  REQUIRE(sd.size() == 4);
  for (const auto& [name, t] : sd) require_same(t, expected.at("lightning/" + name), name);
  CHECK(std::holds_alternative<Tensor<half>>(sd.at("VLModel.encoder.weight")));
  CHECK(io::load_state_dict(torch_fixture("lightning.ckpt")).size() == 4);

  // The user class and functools.partial are inert values recording what they were.
  const auto* hp = dict_get(c, c.root(), "hyper_parameters");
  const auto* cfg = dict_get(c, hp, "config");
  CHECK(cfg->kind == io::PyKind::object);
  CHECK(cfg->qualified_name() == "__main__.HyperParams");
  REQUIRE(cfg->state != nullptr);
  CHECK(dict_get(c, cfg->state, "name")->str() == "mam-clip");
  CHECK(dict_get(c, hp, "act")->qualified_name() == "functools.partial");
  CHECK(dict_get(c, c.root(), "epoch")->integer == 3);
  // Tensors elsewhere in the checkpoint are reachable on request.
  const auto* opt = dict_get(c, c.root(), "optimizer_states");
  REQUIRE(opt->kind == io::PyKind::list);
  const auto* state0 = dict_get(c, dict_get(c, opt->items.at(0), "state"), "0");
  const auto* exp_avg = dict_get(c, state0, "exp_avg");
  REQUIRE(c.is_tensor(exp_avg));
  CHECK(io::shape_of(c.tensor(exp_avg, "exp_avg")) == Shape{4, 4});
  CHECK_FALSE(c.is_tensor(cfg));
}

TEST_CASE("the legacy torch.save format is refused with a hint") {
  const std::string msg = "legacy torch.save format is not supported; re-save with torch >= 1.6 (torch.save(obj, path))";
  MAMCLIP_REQUIRE_THROWS_WITH(io::TorchCheckpoint(torch_fixture("legacy.pt")), io_error,
                              "torch checkpoint '" + torch_fixture("legacy.pt") + "': " + msg);
  MAMCLIP_REQUIRE_THROWS_WITH(io::load_state_dict(torch_fixture("legacy.pt")), io_error, msg);
  std::vector<uint8_t> tar(600, 0);
  std::memcpy(tar.data() + 257, "ustar", 5);
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(tar), io_error, msg);
  // A zip whose entry bytes happen to hold "ustar" at offset 257 is a zip (found by fuzzing).
  std::memcpy(tar.data(), "PK\x03\x04", 4);
  CHECK_FALSE(io::TorchCheckpoint::is_legacy(tar.data(), tar.size()));
}

TEST_CASE("pickles of every protocol run on the inert machine") {
  const auto cases = load_json(torch_fixture("expected.json")).at("pickles");
  REQUIRE(cases.size() == 6);
  for (const auto& [proto, hex] : cases.items()) {
    INFO("protocol " << proto);
    std::vector<uint8_t> b;
    const std::string h = hex.get<std::string>();
    for (size_t i = 0; i + 1 < h.size(); i += 2) b.push_back(static_cast<uint8_t>(std::stoi(h.substr(i, 2), nullptr, 16)));
    const auto pk = io::unpickle(b.data(), b.size(), "case");
    const int p = std::stoi(proto);
    CHECK(pk.protocol() == (p >= 2 ? p : 0));
    const io::PyObject* root = pk.root();
    REQUIRE(root->kind == io::PyKind::dict);
    std::map<std::string, const io::PyObject*> d;
    for (const auto& [k, v] : root->entries) d[k->str()] = v;
    CHECK(d.size() == (p >= 4 ? 12u : 11u));

    std::vector<int64_t> ints;
    for (const auto* x : d.at("ints")->items) {
      REQUIRE(x->kind == io::PyKind::integer);
      ints.push_back(x->integer);
    }
    CHECK(ints == std::vector<int64_t>{0, 1, -1, 255, 256, 65535, 65536, -(int64_t{1} << 31), (int64_t{1} << 31) - 1,
                                       int64_t{1} << 31, std::numeric_limits<int64_t>::max(),
                                       std::numeric_limits<int64_t>::min()});
    CHECK(d.at("big")->kind == io::PyKind::big_integer);
    CHECK(d.at("float")->floating == -2.5e-3);
    const auto* flags = d.at("flags");
    REQUIRE(flags->kind == io::PyKind::tuple);
    REQUIRE(flags->items.size() == 3);
    CHECK((flags->items[0]->kind == io::PyKind::boolean && flags->items[0]->boolean));
    CHECK((flags->items[1]->kind == io::PyKind::boolean && !flags->items[1]->boolean));
    CHECK(flags->items[2]->kind == io::PyKind::none);
    CHECK(d.at("text")->str() == "caf\xc3\xa9 \xf0\x9f\x98\x80 \\ \n");
    if (p >= 3) {
      CHECK(d.at("bytes")->kind == io::PyKind::bytes);
      CHECK(d.at("bytes")->text == std::string("\x00\xff" "ab", 4));
    }
    const auto* tup = d.at("tuple");
    REQUIRE(tup->items.size() == 3);
    CHECK(tup->items[1]->str() == "a");
    CHECK(tup->items[2]->items.at(0)->integer == 2);
    // Sets: EMPTY_SET + ADDITEMS and FROZENSET from protocol 4; a call to set() before.
    if (p >= 4) {
      CHECK(d.at("set")->kind == io::PyKind::set);
      CHECK(d.at("set")->items.at(0)->integer == 3);
      CHECK(d.at("frozen")->kind == io::PyKind::frozenset);
    } else {
      CHECK(d.at("set")->qualified_name() == (p >= 3 ? "builtins.set" : "__builtin__.set"));
    }
    // Shared references stay shared (memo).
    const auto* sh = d.at("shared");
    REQUIRE(sh->items.size() == 2);
    CHECK(sh->items[0] == sh->items[1]);
    CHECK(sh->items[0]->items.size() == 2);
    // A user class: INST (0), OBJ (1), NEWOBJ (2+), then BUILD with its __dict__.
    const auto* pt = d.at("point");
    CHECK(pt->kind == io::PyKind::object);
    // Protocols 0 and 1 pickle it through copy_reg._reconstructor(cls, object, None).
    CHECK(pt->qualified_name() == (p >= 2 ? "__main__.Point" : "copy_reg._reconstructor"));
    if (p < 2) CHECK(pt->args->items.at(0)->qualified_name() == "__main__.Point");
    REQUIRE(pt->state != nullptr);
    REQUIRE(pt->state->kind == io::PyKind::dict);
    CHECK(pt->state->entries.at(1).second->str() == "y");
    if (p >= 4) {
      const auto* kw = d.at("kw");
      CHECK(kw->qualified_name() == "__main__.WithKw");
      REQUIRE(kw->kwargs != nullptr);
      CHECK(kw->kwargs->entries.at(0).first->str() == "size");
    }
  }
}

TEST_CASE("hand-written pickle opcodes: text forms, memo, marks and errors") {
  auto run = [](const std::string& s, const io::PickleLimits& l = {}) {
    return io::unpickle(s, "p", l);
  };
  // Protocol 0 text: INT booleans, LONG with L, FLOAT, quoted STRING escapes, PUT/GET, DICT, POP, DUP.
  auto pk = run("(lp0\nI01\naL-12L\naF2.5\naS'a\\nb\\x41\\'\\101'\nag0\na(dp1\nS\"k\"\nI7\nsa0(I3\n2t.");
  const io::PyObject* r = pk.root();
  REQUIRE(r->kind == io::PyKind::tuple);
  REQUIRE(r->items.size() == 2);
  CHECK(r->items[0] == r->items[1]);  // DUP
  CHECK(r->items[0]->integer == 3);
  // The list went to the stack below; POP removed the list after its last APPEND.
  auto pk2 = run("(lp0\nI01\naL-12L\naF2.5\naS'a\\nb\\x41\\'\\101'\nag0\na.");
  const auto& items = pk2.root()->items;
  REQUIRE(items.size() == 5);
  CHECK(items[0]->boolean);
  CHECK(items[1]->integer == -12);
  CHECK(items[2]->floating == 2.5);
  CHECK(items[3]->str() == "a\nbA'A");
  CHECK(items[4] == pk2.root());  // a list that holds itself: freed without recursion

  // Protocol 4/5 framing: FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL, BYTEARRAY8, READONLY_BUFFER.
  std::string p4 = std::string("\x80\x05\x95", 3) + std::string("\x10\0\0\0\0\0\0\0", 8) + "\x8c\x01m\x94\x8c\x01n\x93" +
                   "h" + std::string("\0", 1) + "\x96" + std::string("\x02\0\0\0\0\0\0\0", 8) + "ab\x98\x87.";
  auto pk4 = run(p4);
  REQUIRE(pk4.root()->kind == io::PyKind::tuple);
  CHECK(pk4.root()->items[0]->qualified_name() == "m.n");
  CHECK(pk4.root()->items[1]->str() == "m");
  CHECK(pk4.root()->items[2]->text == "ab");

  // Errors name the opcode and its byte offset.
  MAMCLIP_REQUIRE_THROWS_WITH(run(std::string("\x80\x02K\x01\xff.", 6)), io_error,
                              "p: unknown pickle opcode 0xff at byte 4; expected an opcode of pickle protocols 0 to 5");
  MAMCLIP_REQUIRE_THROWS_WITH(run("\x80\x02K"), io_error,
                              "p: pickle opcode BININT1 (0x4b) at byte 2: needs 1 argument bytes but only 0 remain");
  MAMCLIP_REQUIRE_THROWS_WITH(run(std::string("\x80\x02K\x01", 4)), io_error, "without a STOP opcode");
  MAMCLIP_REQUIRE_THROWS_WITH(run("\x80\x02."), io_error, "pickle opcode STOP (0x2e) at byte 2: the stack is empty");
  MAMCLIP_REQUIRE_THROWS_WITH(run("\x80\x06."), io_error, "protocol 6 is newer than 5");
  MAMCLIP_REQUIRE_THROWS_WITH(run("\x80\x02h\x05."), io_error, "BINGET (0x68) at byte 2: memo entry 5 was never stored");
  MAMCLIP_REQUIRE_THROWS_WITH(run("\x80\x02)t."), io_error, "TUPLE (0x74) at byte 3: there is no MARK to pop to");
  MAMCLIP_REQUIRE_THROWS_WITH(run("\x80\x02)(a."), io_error, "APPEND (0x61) at byte 4: the stack is empty");  // fence
  MAMCLIP_REQUIRE_THROWS_WITH(run(std::string("\x80\x02)K\x01\x61.", 6)), io_error,
                              "APPEND (0x61) at byte 5: appends to a tuple; expected a list");
  MAMCLIP_REQUIRE_THROWS_WITH(run(std::string("\x80\x02}K\x01\x62.", 6)), io_error,
                              "BUILD (0x62) at byte 5: sets state on a dict; expected an object");
  MAMCLIP_REQUIRE_THROWS_WITH(run("\x80\x02(K\x01K\x02K\x03" "d."), io_error, "has 3 values after the MARK");
  MAMCLIP_REQUIRE_THROWS_WITH(run(std::string("\x80\x02\x82\x07.", 5)), io_error,
                              "EXT1 (0x82) at byte 2: refers to extension code 7, which is not registered");
  MAMCLIP_REQUIRE_THROWS_WITH(run("\x80\x05\x97."), io_error, "NEXT_BUFFER (0x97) at byte 2: refers to out-of-band");
  MAMCLIP_REQUIRE_THROWS_WITH(run("Ix\n."), io_error, "INT (0x49) at byte 0: its argument 'x' is not a decimal integer");
  MAMCLIP_REQUIRE_THROWS_WITH(run("cos\nsystem"), io_error, "GLOBAL (0x63) at byte 0: its text argument has no terminating");
  MAMCLIP_REQUIRE_THROWS_WITH(run(std::string("\x80\x04K\x01K\x02\x93.", 8)), io_error,
                              "STACK_GLOBAL (0x93) at byte 6: expects two str (module, name), got int 1 and int 2");
  MAMCLIP_REQUIRE_THROWS_WITH(run("\x80\x02X\xff\xff\xff\xff."), io_error,
                              "BINUNICODE (0x58) at byte 2: needs 4294967295 argument bytes but only 1 remain");
  MAMCLIP_REQUIRE_THROWS_WITH(run(std::string("\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\xff.", 12)), io_error,
                              "FRAME (0x95) at byte 2: frames 18446744073709551615 bytes but only 1 remain");

  // Limits: stack, MARK nesting, memo.
  io::PickleLimits small;
  small.max_stack = 100;
  small.max_marks = 10;
  small.max_memo = 5;
  MAMCLIP_REQUIRE_THROWS_WITH(run("\x80\x02" + std::string(200, 'N') + ".", small), io_error,
                              "NONE (0x4e) at byte 102: the stack would exceed 100 values");
  MAMCLIP_REQUIRE_THROWS_WITH(run("\x80\x02" + std::string(11, '(') + ".", small), io_error,
                              "MARK (0x28) at byte 12: MARKs nest deeper than 10");
  std::string memo = "\x80\x02N";
  for (int k = 0; k < 6; ++k) memo += "r" + std::string(1, char(k)) + std::string("\xff\xff\xff", 3);
  MAMCLIP_REQUIRE_THROWS_WITH(run(memo + ".", small), io_error, "the memo would exceed 5 entries");
  // Re-storing one index is not growth.
  std::string same = "\x80\x02N";
  for (int k = 0; k < 50; ++k) same += std::string("q\x07", 2);
  CHECK(run(same + ".", small).root()->kind == io::PyKind::none);
  // Deep nesting through the default limit: 5000 nested MARKs are refused.
  MAMCLIP_REQUIRE_THROWS_WITH(run("\x80\x02" + std::string(5000, '(') + "."), io_error, "MARKs nest deeper than 4096");
  // Deep nesting without MARKs (list in list in list ...) parses in linear time and space.
  std::string deep = "\x80\x02]";
  for (int k = 0; k < 100000; ++k) deep += "]";
  for (int k = 0; k < 100000; ++k) deep += "a";
  CHECK(run(deep + ".").root()->items.size() == 1);
}

TEST_CASE("unknown globals, REDUCE on them included, are inert and do not stop the tensors") {
  Pk p;
  p.op('}').mark();
  p.str("w").tensor("0", 6, 0, {2, 3}, {3, 1});
  // os.system("rm -rf /") as the pickle would call it; and a BUILD on its result.
  p.str("evil").global("os", "system").mark().str("rm -rf /").tuple().op('R').op('}').op('b');
  // NEWOBJ and NEWOBJ_EX of a foreign class, an INST.
  p.str("obj").global("foo.bar", "Baz").op(')').op(0x81);
  p.str("objx").global("foo.bar", "Baz").op(')').op('}').op(0x92);
  p.str("inst").mark().i(1).op('i').raw("x.y\nZ\n");
  p.str("obj1").mark().global("x.y", "W").i(2).op('o');
  p.op('u').stop();
  auto c = open_bytes(torch_zip(p.b, {{"0", floats({0, 1, 2, 3, 4, 5})}}));
  const auto sd = c.state_dict();
  REQUIRE(sd.size() == 1);
  CHECK(any_values(sd.at("w")) == std::vector<double>{0, 1, 2, 3, 4, 5});
  const auto* evil = dict_get(c, c.root(), "evil");
  CHECK(evil->qualified_name() == "os.system");
  CHECK(evil->args->items.at(0)->str() == "rm -rf /");
  CHECK(dict_get(c, c.root(), "inst")->qualified_name() == "x.y.Z");
  CHECK(dict_get(c, c.root(), "obj1")->qualified_name() == "x.y.W");
  CHECK(dict_get(c, c.root(), "obj1")->args->items.at(0)->integer == 2);
  CHECK(dict_get(c, c.root(), "objx")->kwargs->kind == io::PyKind::dict);
}

TEST_CASE("byte order, zip64 fields, parameters and new-style storage types") {
  Pk p;
  p.op('}').mark();
  p.str("a").tensor("0", 3, 1, {2}, {1});
  p.str("b").tensor("1", 2, 0, {2}, {1}, "LongStorage");
  p.str("p").global("torch._utils", "_rebuild_parameter").mark().tensor("0", 3, 0, {3}, {1}).op(0x88).op('}').tuple().op('R');
  p.str("n").tensor("2", 2, 0, {2}, {1}, "bfloat16");
  p.str("s").tensor("3", 2, 0, {2}, {1}, "ShortStorage");
  p.str("u").tensor("4", 8, 0, {8}, {1}, "UntypedStorage");
  p.op('u').stop();
  auto be = [](std::string s, size_t k) {
    for (size_t i = 0; i + k <= s.size(); i += k) std::reverse(s.begin() + long(i), s.begin() + long(i + k));
    return s;
  };
  const std::string f = floats({1.5f, -2, 3}), l = std::string("\x07\0\0\0\0\0\0\0\xff\xff\xff\xff\xff\xff\xff\xff", 16);
  const std::string bf = std::string("\x80\x3f\x00\xc0", 4), sh = std::string("\xfe\xff\x05\x00", 4), u = "abcdefgh";
  for (bool big : {false, true}) {
    INFO("big endian " << big);
    const auto bytes = torch_zip(p.b,
                                 {{"0", big ? be(f, 4) : f}, {"1", big ? be(l, 8) : l}, {"2", big ? be(bf, 2) : bf},
                                  {"3", big ? be(sh, 2) : sh}, {"4", u}},
                                 big ? "big" : "little");
    auto c = open_bytes(bytes);
    CHECK(c.big_endian() == big);
    const auto sd = c.state_dict();
    CHECK(any_values(sd.at("a")) == std::vector<double>{-2, 3});
    CHECK(any_ints(sd.at("b")) == std::vector<int64_t>{7, -1});
    CHECK(any_values(sd.at("p")) == std::vector<double>{1.5, -2, 3});
    CHECK(any_storage(sd.at("p")) == any_storage(sd.at("a")));
    CHECK(any_values(sd.at("n")) == std::vector<double>{1, -2});
    CHECK(any_ints(sd.at("s")) == std::vector<int64_t>{-2, 5});
    CHECK(any_ints(sd.at("u")) == std::vector<int64_t>{'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'});
  }
  // No byteorder entry (older writers): little-endian.
  CHECK(any_values(open_bytes(torch_zip(p.b, {{"0", f}, {"1", l}, {"2", bf}, {"3", sh}, {"4", u}}, ""))
                       .state_dict()
                       .at("a")) == std::vector<double>{-2, 3});
  // Sizes and offsets in the zip64 extra field, and a classic end record.
  Pk q;
  q.op('}').mark().str("w").tensor("0", 2, 0, {2}, {1}).op('u').stop();
  for (bool z64 : {false, true}) {
    const auto z = make_zip({{"archive/data.pkl", q.b, 0, 0, z64}, {"archive/data/0", floats({4, 5}), 0, 0, z64}}, z64);
    CHECK(any_values(open_bytes(z).state_dict().at("w")) == std::vector<double>{4, 5});
  }
}

TEST_CASE("corrupt archives give io_error naming the file, entry and offset") {
  Pk q;
  q.op('}').mark().str("w").tensor("0", 2, 0, {2}, {1}).op('u').stop();
  const std::string data = floats({4, 5});
  CHECK(open_bytes(make_zip({{"archive/data.pkl", q.b}, {"archive/data/0", data}})).state_dict().size() == 1);

  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes({1, 2, 3}), io_error,
                              "torch checkpoint 'bad.pt' starts with bytes [01 02 03]; expected a torch.save zip");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(make_zip({{"archive/data.pkl", q.b, 8}, {"archive/data/0", data}})), io_error,
                              "zip archive 'bad.pt': entry 'archive/data.pkl' is compressed (method 8, deflate); "
                              "torch.save stores entries uncompressed");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(make_zip({{"archive/data.pkl", q.b, 0, 1}})), io_error,
                              "entry 'archive/data.pkl' is encrypted");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(make_zip({{"archive/x", "1"}})), io_error,
                              "is a zip archive without <archive>/data.pkl (1 entries, e.g. 'archive/x')");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(make_zip({{"m/data.pkl", q.b}, {"m/constants.pkl", q.b}})), io_error,
                              "is a TorchScript archive (torch.jit.save");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(make_zip({{"a/data.pkl", q.b}, {"b/data.pkl", q.b}})), io_error,
                              "holds two pickles, 'a/data.pkl' and 'b/data.pkl'");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(make_zip({{"archive/data.pkl", q.b}, {"archive/data.pkl", q.b}})), io_error,
                              "entry 'archive/data.pkl' appears twice");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(make_zip({{"archive/data.pkl", q.b}, {"archive/byteorder", "middle"}})),
                              io_error, "entry 'archive/byteorder' holds 'middle'; expected 'little' or 'big'");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(make_zip({{"archive/data.pkl", q.b}})).state_dict(), io_error,
                              "tensor 'w''s storage '0' has no entry 'archive/data/0' in the archive");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(make_zip({{"archive/data.pkl", q.b}, {"archive/data/0", data + "x"}})).state_dict(),
                              io_error, "storage '0' is 2 elements of float32 (4 bytes each) but entry 'archive/data/0' holds 9 bytes");

  // A flipped data byte fails the CRC (unless asked not to check).
  auto z = make_zip({{"archive/data.pkl", q.b}, {"archive/data/0", data}});
  const std::vector<uint8_t> data_bytes(data.begin(), data.end());
  const auto at = std::search(z.begin(), z.end(), data_bytes.begin(), data_bytes.end()) - z.begin();
  REQUIRE(size_t(at) < z.size());
  z[size_t(at)] ^= 0x40;
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(z).state_dict(), io_error,
                              "entry 'archive/data/0' (8 bytes at offset " + std::to_string(at) + ") has CRC-32 0x");
  io::TorchLoadOptions no_crc;
  no_crc.verify_crc = false;
  CHECK(open_bytes(z, no_crc).state_dict().size() == 1);

  // Central directory and local header fields.
  const auto good = make_zip({{"archive/data.pkl", q.b}, {"archive/data/0", data}}, false);
  const size_t eocd = good.size() - 22;
  auto bad = good;
  bad[eocd + 10] = 99;  // total entries
  bad[eocd + 8] = 99;
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(bad), io_error, "the end record claims 99 entries in a central directory of");
  bad = good;
  bad[eocd + 16] = 0xF0;  // central directory offset
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(bad), io_error, "does not end before the end records");
  bad = good;
  bad[eocd + 4] = 1;
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(bad), io_error, "multi-disk archives are not supported");
  bad = good;
  bad[0] = 'P', bad[1] = 'K', bad[2] = 3, bad[3] = 4;
  bad[4 + 22] = 9;  // local name length
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(bad), io_error, "names another entry or method");
  bad = good;
  bad[0] = 'X';
  bad[1] = 'X';
  bad[2] = 'X';  // still looks like... no: the file must start with PK\3\4
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(bad), io_error, "expected a torch.save zip archive (PK\\3\\4)");
  // No end record at all.
  std::vector<uint8_t> nothing = {'P', 'K', 3, 4};
  nothing.resize(100, 0);
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(nothing), io_error,
                              "zip archive 'bad.pt': no end-of-central-directory record (signature PK\\5\\6) in the "
                              "last 100 bytes");
  // A zip64 locator that points nowhere.
  auto z64 = make_zip({{"archive/data.pkl", q.b}, {"archive/data/0", data}});
  const size_t loc = z64.size() - 22 - 20;
  z64[loc + 8] = 0xFF;
  z64[loc + 12] = 0x7F;
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(z64), io_error, "the zip64 locator at offset " + std::to_string(loc) +
                                                             " points to a zip64 end record at offset");
}

TEST_CASE("hostile tensors and state dicts give typed errors naming the tensor") {
  CHECK(any_values(open_bytes(one_tensor(6, 1, {2, 2}, {1, 2})).state_dict().at("w")) == std::vector<double>{1, 3, 2, 4});
  // Views that reach past the storage, with and without overflow.
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(one_tensor(6, 0, {2, 4}, {3, 1})).state_dict(), io_error,
                              "torch checkpoint 'bad.pt': tensor 'w' (float32, size [2, 4], stride [3, 1], storage "
                              "offset 0) reaches past the end of its storage of 6 elements");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(one_tensor(6, 6, {1}, {1})).state_dict(), io_error, "reaches past the end");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(one_tensor(6, 1, {2, 3}, {int64_t{1} << 62, int64_t{1} << 62})).state_dict(),
                              io_error, "reaches past the end of its storage of 6 elements");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(one_tensor(6, 0, {int64_t{1} << 40, int64_t{1} << 40}, {1, 1})).state_dict(),
                              shape_error, "tensor 'w' has size [1099511627776, 1099511627776], whose element count overflows");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(one_tensor(6, 7, {0}, {1})).state_dict(), io_error,
                              "tensor 'w' (empty, size [0]) starts at element 7 of a storage of 6 elements");
  CHECK(io::shape_of(open_bytes(one_tensor(6, 6, {0, 3}, {3, 1})).state_dict().at("w")) == Shape{0, 3});
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(one_tensor(6, 0, {2, 3}, {3})).state_dict(), shape_error,
                              "tensor 'w' has size [2, 3] but stride [3]; expected one stride per dimension");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(one_tensor(6, 0, {2}, {-1})).state_dict(), io_error,
                              "tensor 'w' has stride holding int -1; expected non-negative ints");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(one_tensor(7, 0, {2}, {1})).state_dict(), io_error,
                              "storage '0' is 7 elements of float32 (4 bytes each) but entry 'archive/data/0' holds 24 bytes");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(one_tensor(-1, 0, {2}, {1})).state_dict(), io_error,
                              "tensor 'w''s storage size is int -1; expected a non-negative int");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(one_tensor(6, 0, {2}, {1}, "ComplexFloatStorage")).state_dict(), dtype_error,
                              "tensor 'w' is stored as torch.ComplexFloatStorage, which mamclip cannot load");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(one_tensor(6, 0, {2}, {1}, "Sneaky")).state_dict(), io_error,
                              "tensor 'w''s storage type is torch.Sneaky, which is not a torch storage type");
  MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(one_tensor(3, 0, {3}, {1}, "BoolStorage", std::string("\x01\x00\x02", 3)))
                                  .state_dict(),
                              io_error, "tensor 'w': bool storage '0' holds byte 2 at element 2; expected 0 or 1");

  // Two tensors viewing one storage with different types or sizes.
  {
    Pk p;
    p.op('}').mark().str("a").tensor("0", 6, 0, {6}, {1}).str("b").tensor("0", 3, 0, {3}, {1}, "DoubleStorage").op('u').stop();
    MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(torch_zip(p.b, {{"0", floats({0, 1, 2, 3, 4, 5})}})).state_dict(), io_error,
                                "tensor 'b' views storage '0' as 3 elements of float64, but another tensor views it as "
                                "6 elements of float32");
  }
  // Malformed rebuild arguments and persistent ids.
  {
    Pk p;
    p.op('}').mark().str("w").global("torch._utils", "_rebuild_tensor_v2").i(3).op('R').op('u').stop();
    MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(torch_zip(p.b, {})).state_dict(), io_error,
                                "tensor 'w': torch._utils._rebuild_tensor_v2 is called with int 3; expected a tuple");
    Pk q;
    q.op('}').mark().str("w").global("torch._utils", "_rebuild_tensor_v2").mark().i(1).i(0).ints({1}).ints({1}).tuple()
        .op('R').op('u').stop();
    MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(torch_zip(q.b, {})).state_dict(), io_error,
                                "tensor 'w''s storage is int 1; expected a persistent id");
    Pk r;
    r.op('}').mark().str("w").global("torch._utils", "_rebuild_tensor_v2").mark().str("storage").op('Q').i(0).ints({1})
        .ints({1}).tuple().op('R').op('u').stop();
    MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(torch_zip(r.b, {})).state_dict(), io_error,
                                "tensor 'w' has persistent id str 'storage'; expected a tuple ('storage', type, key");
  }
  // Special tensors are refused by name, not dropped.
  {
    Pk p;
    p.op('}').mark().str("q").global("torch._utils", "_rebuild_qtensor").op(')').op('R').op('u').stop();
    MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(torch_zip(p.b, {})).state_dict(), io_error,
                                "tensor 'q' is rebuilt by torch._utils._rebuild_qtensor, which mamclip does not support");
  }
  // Roots that are not state dicts.
  {
    Pk p;
    p.i(5).stop();
    MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(torch_zip(p.b, {})).state_dict(), io_error,
                                "torch checkpoint 'bad.pt' holds int 5; expected a state dict (a dict of tensors) or a "
                                "checkpoint dict with 'state_dict', 'model' or 'module'");
    Pk t;
    t.tensor("0", 6, 0, {6}, {1}).stop();
    MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(torch_zip(t.b, {{"0", floats({0, 1, 2, 3, 4, 5})}})).state_dict(), io_error,
                                "holds a single tensor; expected a state dict");
    Pk d;
    d.op('}').str("epoch").i(3).op('s').stop();
    MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(torch_zip(d.b, {})).state_dict(), io_error,
                                "holds a dict of 1 entries without tensors");
  }
  // A dict that holds itself, and dicts shared so the expansion is exponential.
  {
    Pk p;
    p.op('}').op('q').op(0).str("w").tensor("0", 6, 0, {6}, {1}).op('s').str("self").op('h').op(0).op('s').stop();
    MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(torch_zip(p.b, {{"0", floats({0, 1, 2, 3, 4, 5})}})).state_dict(), io_error,
                                "dicts nest deeper than 64 levels at 'self.self.self.");
    // Build level k+1 = {"a": level k, "b": level k}.
    Pk x;
    x.op('}').str("w").tensor("0", 6, 0, {6}, {1}).op('s');
    for (int k = 0; k < 40; ++k) x.op('q').op(uint8_t(k)).op('}').str("a").op('h').op(uint8_t(k)).op('s').str("b")
        .op('h').op(uint8_t(k)).op('s');
    x.stop();
    io::TorchLoadOptions few;
    few.max_entries = 5000;  // the default (262144) behaves the same, only slower
    MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(torch_zip(x.b, {{"0", floats({0, 1, 2, 3, 4, 5})}}), few).state_dict(), io_error,
                                "the state dict expands to more than 5000 entries");
  }
  // A nested dict flattens with '.', and may not collide with a dotted key.
  {
    Pk p;
    p.op('}').mark().str("enc").op('}').str("w").tensor("0", 6, 0, {6}, {1}).op('s').str("enc.w").tensor("0", 6, 0, {3}, {1})
        .op('u').stop();
    MAMCLIP_REQUIRE_THROWS_WITH(open_bytes(torch_zip(p.b, {{"0", floats({0, 1, 2, 3, 4, 5})}})).state_dict(), io_error,
                                "two entries flatten to the name 'enc.w'");
    Pk q;
    q.op('}').mark().str("enc").op('}').str("w").tensor("0", 6, 0, {6}, {1}).op('s').str("dec.w").tensor("0", 6, 3, {3}, {1})
        .str("meta").op('}').mark().i(1).i(2).tuple().str("x").op('s').op('u').stop();
    const auto sd = open_bytes(torch_zip(q.b, {{"0", floats({0, 1, 2, 3, 4, 5})}})).state_dict();
    REQUIRE(sd.size() == 2);
    CHECK(any_values(sd.at("dec.w")) == std::vector<double>{3, 4, 5});
    CHECK(io::shape_of(sd.at("enc.w")) == Shape{6});
  }
  // "model" / "module" are used when the top dict has no tensor values; a key set twice keeps the last value.
  for (const char* key : {"state_dict", "model", "module"}) {
    Pk p;
    p.op('}').mark().str("epoch").i(1).str(key).op('}').str("x").i(1).op('s').str(key).op('}').str("w")
        .tensor("0", 6, 0, {2}, {1}).op('s').op('u').stop();
    const auto sd = open_bytes(torch_zip(p.b, {{"0", floats({0, 1, 2, 3, 4, 5})}})).state_dict();
    REQUIRE(sd.size() == 1);
    CHECK(sd.count("w") == 1);
  }
}

TEST_CASE("truncated and bit-flipped fixtures give typed errors, never crashes") {
  for (const char* name : {"all_dtypes.pt", "lightning.ckpt", "hf_model/pytorch_model.bin", "whole_model.pt"}) {
    INFO(name);
    const auto full = read_bytes(torch_fixture(name));
    CHECK(open_bytes(full).state_dict().size() > 0);
    // Every cut: the end records are at the end, so each one is refused.
    for (size_t cut = 0; cut < full.size(); cut += (cut < 32 || full.size() - cut < 120) ? 1 : 61) {
      INFO("cut to " << cut);
      const std::vector<uint8_t> part(full.begin(), full.begin() + long(cut));
      REQUIRE_THROWS_AS(open_bytes(part).state_dict(), mamclip::error);
    }
    // Flips anywhere: a typed error or (padding, timestamps) the same tensors.
    const auto want = open_bytes(full).state_dict();
    size_t refused = 0, loaded = 0;
    for (size_t at = 0; at < full.size(); at += 11) {
      for (uint8_t mask : {uint8_t(at % 2 ? 0x01 : 0x80)}) {
        auto b = full;
        b[at] ^= mask;
        try {
          const auto sd = open_bytes(b).state_dict();
          ++loaded;
          REQUIRE(sd.size() == want.size());
          for (const auto& [k, t] : want) {
            REQUIRE(sd.count(k) == 1);
            CHECK(any_ints(sd.at(k)) == any_ints(t));
          }
        } catch (const mamclip::error&) {
          ++refused;
        }
      }
    }
    CHECK(refused > loaded);
  }
}

}  // namespace test_torch_checkpoint
