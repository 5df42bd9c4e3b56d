#pragma once
// PyTorch checkpoints written by torch.save (PyTorch >= 1.6 zip format):
// pytorch_model.bin, .pt, .pth, Lightning .ckpt.
//
// Layout: a zip archive (zip.hpp) of stored entries under one top folder
// <archive>/ (the file's stem, or "archive"):
//   <archive>/data.pkl       the pickled object (protocol 2); tensors appear as
//                            torch._utils._rebuild_tensor_v2(storage, offset, size,
//                            stride, ...) where storage is a persistent id
//                            ('storage', torch.<X>Storage, key, location, numel)
//   <archive>/data/<key>     the raw bytes of storage <key>: numel elements
//   <archive>/byteorder      "little" or "big" (absent in old files: little)
//   <archive>/version, .format_version, .data/...  informational, not needed
//
// The pickle runs on pickle.hpp's inert machine: nothing is imported or
// called. This reader then gives meaning to an allow-list of globals only:
//   torch._utils._rebuild_tensor_v2, _rebuild_tensor        -> a tensor
//   torch._utils._rebuild_parameter(_with_state)            -> its data tensor
//   torch._tensor._rebuild_from_type_v2(f, type, args, _)   -> f(args), f allowed
//   collections.OrderedDict                                 -> a dict
//   torch.{Float,Double,Half,BFloat16,Long,Int,Short,Char,Byte,Bool}Storage,
//   torch.UntypedStorage and torch.<dtype> (torch.float32, torch.half, ...)
//                                                           -> a storage's dtype
// Every other global, and whatever is built from it, stays an inert value that
// the state-dict walk skips: a Lightning .ckpt whose hyper_parameters hold
// OmegaConf objects, or whose callbacks pickle user classes, still yields its
// tensors. Other torch._utils._rebuild_* calls (quantized, sparse, meta,
// nested tensors) are refused by name where they sit in a state dict.
//
// A whole pickled nn.Module (torch.save(model)) is read without its classes:
// an object whose BUILD state has _parameters, _buffers and _modules gives the
// names nn.Module.state_dict() would (parameters, persistent buffers, then
// submodules with '.').
//
// Tensors are views of their storages, as torch.load makes them: sizes,
// strides and offset are kept (a transposed tensor stays non-contiguous), and
// tensors that viewed one storage share memory. Each storage is read once,
// on first use, into memory of the nearest dtype mamclip holds (int16 and
// int8 widen to int64, as safetensors' get_any does), converted from the
// file's byte order. Before a storage is allocated its zip entry must exist
// and hold exactly numel x itemsize bytes (CRC-checked); before a tensor is
// made, its offset, sizes and strides must stay inside its storage
// (overflow-checked). Storage locations ("cpu", "cuda:0") are ignored: all
// tensors load on the CPU.
//
// Not supported, with a clear io_error: the legacy (pre-1.6) format
// (_use_new_zipfile_serialization=False, or the tar format), TorchScript
// archives (torch.jit.save), compressed or encrypted zips.
//
// defines:
//   TorchLoadOptions       CRC checking, pickle limits
//   TorchCheckpoint        the validated archive, its pickle, tensors and state dict
//   torch_storage_dtype    the dtype named by a storage-type global
//   load_torch_state_dict  the state dict of a torch.save file

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <limits>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "mamclip/core/error.hpp"
#include "mamclip/core/shape.hpp"
#include "mamclip/core/storage.hpp"
#include "mamclip/core/tensor.hpp"
#include "mamclip/io/file.hpp"
#include "mamclip/io/pickle.hpp"
#include "mamclip/io/safetensors.hpp"
#include "mamclip/io/zip.hpp"

namespace mamclip::io {

// The element types a torch storage can have here; `unsupported` covers the
// rest (complex, quantized, float8, unsigned > 8 bits).
enum class TorchDtype : uint8_t { f64, f32, f16, bf16, i64, i32, i16, i8, u8, boolean, unsupported };

constexpr std::string_view torch_dtype_name(TorchDtype d) {
  constexpr std::string_view names[] = {"float64", "float32", "float16", "bfloat16", "int64", "int32",
                                        "int16",   "int8",    "uint8",   "bool",     "unsupported"};
  return names[static_cast<int>(d)];
}
constexpr size_t torch_dtype_size(TorchDtype d) {
  switch (d) {
    case TorchDtype::f64: case TorchDtype::i64: return 8;
    case TorchDtype::f32: case TorchDtype::i32: return 4;
    case TorchDtype::f16: case TorchDtype::bf16: case TorchDtype::i16: return 2;
    case TorchDtype::i8: case TorchDtype::u8: case TorchDtype::boolean: return 1;
    default: return 0;
  }
}

// The dtype a storage-type global of module "torch" names, or nullopt when
// the name is not a storage type at all.
inline std::optional<TorchDtype> torch_storage_dtype(std::string_view name) {
  static const std::pair<std::string_view, TorchDtype> kNames[] = {
      {"FloatStorage", TorchDtype::f32},   {"DoubleStorage", TorchDtype::f64}, {"HalfStorage", TorchDtype::f16},
      {"BFloat16Storage", TorchDtype::bf16}, {"LongStorage", TorchDtype::i64}, {"IntStorage", TorchDtype::i32},
      {"ShortStorage", TorchDtype::i16},   {"CharStorage", TorchDtype::i8},    {"ByteStorage", TorchDtype::u8},
      {"BoolStorage", TorchDtype::boolean}, {"UntypedStorage", TorchDtype::u8},
      // torch.<dtype>, as newer writers and torch.package name typed storages
      {"float32", TorchDtype::f32}, {"float", TorchDtype::f32},     {"float64", TorchDtype::f64},
      {"double", TorchDtype::f64},  {"float16", TorchDtype::f16},   {"half", TorchDtype::f16},
      {"bfloat16", TorchDtype::bf16}, {"int64", TorchDtype::i64},   {"long", TorchDtype::i64},
      {"int32", TorchDtype::i32},   {"int", TorchDtype::i32},       {"int16", TorchDtype::i16},
      {"short", TorchDtype::i16},   {"int8", TorchDtype::i8},       {"uint8", TorchDtype::u8},
      {"bool", TorchDtype::boolean},
      // real torch storage types and dtypes mamclip does not hold
      {"ComplexFloatStorage", TorchDtype::unsupported}, {"ComplexDoubleStorage", TorchDtype::unsupported},
      {"QInt8Storage", TorchDtype::unsupported}, {"QUInt8Storage", TorchDtype::unsupported},
      {"QInt32Storage", TorchDtype::unsupported}, {"QUInt4x2Storage", TorchDtype::unsupported},
      {"QUInt2x4Storage", TorchDtype::unsupported}, {"complex64", TorchDtype::unsupported},
      {"complex128", TorchDtype::unsupported}, {"cfloat", TorchDtype::unsupported},
      {"cdouble", TorchDtype::unsupported}, {"uint16", TorchDtype::unsupported},
      {"uint32", TorchDtype::unsupported}, {"uint64", TorchDtype::unsupported},
      {"float8_e4m3fn", TorchDtype::unsupported}, {"float8_e5m2", TorchDtype::unsupported},
      {"float8_e4m3fnuz", TorchDtype::unsupported}, {"float8_e5m2fnuz", TorchDtype::unsupported},
  };
  for (const auto& [n, d] : kNames)
    if (n == name) return d;
  return std::nullopt;
}

struct TorchLoadOptions {
  bool verify_crc = true;  // check each entry's CRC-32 as it is read (one extra pass over the data)
  PickleLimits pickle_limits{};
  // Dicts nest at most this deep in the pickled object, and a state dict may
  // not expand to more entries than max_entries (shared sub-dicts could make
  // the expansion exponential).
  int max_depth = 64;
  size_t max_entries = size_t{1} << 18;
};

class TorchCheckpoint {
 public:
  explicit TorchCheckpoint(const std::string& path, const TorchLoadOptions& options = {})
      : TorchCheckpoint(FileBytes::map(path), options) {}
  explicit TorchCheckpoint(std::shared_ptr<const FileBytes> bytes, const TorchLoadOptions& options = {})
      : bytes_(std::move(bytes)), options_(options) {
    open();
  }
  static TorchCheckpoint from_bytes(std::vector<uint8_t> bytes, std::string name = "<memory>",
                                    const TorchLoadOptions& options = {}) {
    return TorchCheckpoint(FileBytes::from_vector(std::move(bytes), std::move(name)), options);
  }
  TorchCheckpoint(TorchCheckpoint&&) = default;

  // The legacy format's first bytes: protocol 2, then LONG1 of torch's magic
  // number 0x1950a86a20f9469cfc6c.
  static constexpr uint8_t kLegacyMagic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46,
                                             0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
  static constexpr const char* kLegacyMessage =
      "legacy torch.save format is not supported; re-save with torch >= 1.6 (torch.save(obj, path))";
  static bool is_zip(const uint8_t* b, size_t n) { return n >= 4 && std::memcmp(b, "PK\x03\x04", 4) == 0; }
  // Whether bytes start like a legacy torch.save file (pickle or tar). A zip
  // never is, whatever its entries hold at the tar magic's offset 257.
  static bool is_legacy(const uint8_t* b, size_t n) {
    if (is_zip(b, n)) return false;
    if (n >= sizeof(kLegacyMagic) && std::memcmp(b, kLegacyMagic, sizeof(kLegacyMagic)) == 0) return true;
    return n >= 262 && std::memcmp(b + 257, "ustar", 5) == 0;
  }

  const std::string& path() const { return bytes_->name(); }
  const ZipArchive& zip() const { return *zip_; }
  // The archive's top folder ("archive" or the stem of the saved file's name).
  const std::string& archive_name() const { return archive_; }
  bool big_endian() const { return big_endian_; }
  const Pickle& pickle() const { return pickle_; }
  const PyObject* root() const { return pickle_.root(); }

  // Whether `o` is a call to an allowed tensor-rebuild function.
  bool is_tensor(const PyObject* o) const { return rebuild_kind(o) == Rebuild::tensor; }

  // The tensor that `o` (is_tensor) rebuilds; `name` names it in messages.
  // Tensors of one storage share its memory; asking twice gives the same tensor.
  AnyStoredTensor tensor(const PyObject* o, const std::string& name) const {
    auto it = tensors_.find(o);
    if (it != tensors_.end()) return it->second;
    AnyStoredTensor t = rebuild(o, name, 0);
    tensors_.emplace(o, t);
    return t;
  }

  // The entries of a dict or an OrderedDict, one per key (the last value of a
  // key set twice wins, as in Python), in first-insertion order; nullopt for
  // other values. Keys are str, ints are written in decimal; entries with
  // other keys (tuples, floats, objects) are left out.
  std::optional<std::vector<std::pair<std::string, const PyObject*>>> dict_entries(const PyObject* o) const {
    auto d = dict_view(o);
    if (!d) return std::nullopt;
    return std::move(d->entries);
  }

  // The state dict: the top object when it is a dict with tensor values or a
  // pickled nn.Module, else its "state_dict" (Lightning), "model" or "module"
  // entry when that holds tensors or is a module, else the top dict if tensors
  // sit in its nested dicts. Nested dicts flatten with '.', values that are not
  // tensors (ints, strings, foreign objects, lists) are skipped.
  TensorMap state_dict() const;

  // The __dict__ of a pickled nn.Module (its BUILD state when that holds
  // _parameters, _buffers and _modules), or nullptr.
  const PyObject* module_state(const PyObject* o) const {
    if (!o || o->kind != PyKind::object || !o->state) return nullptr;
    const auto d = dict_view(o->state);
    if (!d) return nullptr;
    int found = 0;
    for (const auto& [k, v] : d->entries) found += k == "_parameters" || k == "_buffers" || k == "_modules";
    return found == 3 ? o->state : nullptr;
  }

  // Every tensor under `o`, flattened with '.' from `prefix` (see state_dict).
  void flatten(const PyObject* o, const std::string& prefix, TensorMap& out) const {
    size_t visited = 0;
    flatten(o, prefix, out, 0, visited);
  }

 private:
  enum class Rebuild { none, tensor, unsupported };
  struct DictView {
    std::vector<std::pair<std::string, const PyObject*>> entries;
    std::vector<std::pair<const PyObject*, const PyObject*>> other_keys;  // keys that are neither str nor int
  };
  std::optional<DictView> dict_view(const PyObject* o) const;

  std::string where() const { return "torch checkpoint '" + bytes_->name() + "'"; }

  void open();
  Rebuild rebuild_kind(const PyObject* o) const;
  AnyStoredTensor rebuild(const PyObject* o, const std::string& name, int depth) const;
  AnyStoredTensor rebuild_v2(const PyObject* args, const std::string& name) const;
  bool holds_tensors(const PyObject* o, int depth, std::unordered_set<const PyObject*>& seen) const;
  void flatten(const PyObject* o, const std::string& prefix, TensorMap& out, int depth, size_t& visited) const;
  void flatten_module(const PyObject* o, const std::string& prefix, TensorMap& out, int depth, size_t& visited) const;
  void add_tensor(const PyObject* v, const std::string& name, TensorMap& out) const;

  struct StorageSlot {
    TorchDtype dtype = TorchDtype::unsupported;
    int64_t numel = 0;
    std::shared_ptr<Storage> storage;  // elements of the held type (int16/int8 widened to int64)
  };
  const StorageSlot& storage(const PyObject* pid, const std::string& name) const;

  std::shared_ptr<const FileBytes> bytes_;
  TorchLoadOptions options_;
  std::optional<ZipArchive> zip_;
  std::string archive_;
  bool big_endian_ = false;
  Pickle pickle_;
  mutable std::map<std::string, StorageSlot> storages_;
  mutable std::unordered_map<const PyObject*, AnyStoredTensor> tensors_;
};

inline void TorchCheckpoint::open() {
  const std::string w = where();
  const uint8_t* b = bytes_->data();
  const size_t n = bytes_->size();
  MAMCLIP_CHECK(!is_legacy(b, n), io_error, w, ": ", kLegacyMessage);
  if (!is_zip(b, n)) {
    std::string head;
    for (size_t i = 0; i < std::min<size_t>(n, 4); ++i) {
      static constexpr char kHex[] = "0123456789abcdef";
      head += (i ? " " : "");
      head += kHex[b[i] >> 4];
      head += kHex[b[i] & 15];
    }
    throw io_error(mamclip::detail::str_cat(w, " starts with bytes [", head,
                                            "]; expected a torch.save zip archive (PK\\3\\4)"));
  }
  zip_.emplace(bytes_);

  // The pickle is <archive>/data.pkl, with <archive> a single folder.
  const ZipEntry* pkl = nullptr;
  for (const auto& e : zip_->entries()) {
    const auto slash = e.name.find('/');
    if (slash != std::string::npos && e.name.compare(slash, std::string::npos, "/constants.pkl") == 0)
      throw io_error(mamclip::detail::str_cat(w, " is a TorchScript archive (torch.jit.save; it holds '", e.name,
                                              "'); save the weights with torch.save(model.state_dict(), path)"));
    if (slash == std::string::npos || e.name.compare(slash, std::string::npos, "/data.pkl") != 0) continue;
    MAMCLIP_CHECK(pkl == nullptr, io_error, w, " holds two pickles, '", pkl ? pkl->name : "", "' and '", e.name,
                  "'; expected one <archive>/data.pkl");
    pkl = &e;
  }
  MAMCLIP_CHECK(pkl != nullptr, io_error, w, " is a zip archive without <archive>/data.pkl (", zip_->entries().size(),
                " entries", zip_->entries().empty() ? "" : ", e.g. '" + zip_->entries().front().name + "'",
                "); expected a file written by torch.save");
  archive_ = pkl->name.substr(0, pkl->name.size() - std::string_view("/data.pkl").size());

  if (const ZipEntry* bo = zip_->find(archive_ + "/byteorder")) {
    const std::string_view order = zip_->data(*bo, options_.verify_crc);
    MAMCLIP_CHECK(order == "little" || order == "big", io_error, w, ": entry '", bo->name, "' holds '",
                  order.substr(0, 20), "'; expected 'little' or 'big'");
    big_endian_ = order == "big";
  }
  pickle_ = unpickle(zip_->data(*pkl, options_.verify_crc), w + " (entry '" + pkl->name + "')", options_.pickle_limits);
}

inline TorchCheckpoint::Rebuild TorchCheckpoint::rebuild_kind(const PyObject* o) const {
  if (!o || o->kind != PyKind::object || !o->callable || o->callable->kind != PyKind::global) return Rebuild::none;
  const PyObject* g = o->callable;
  if (g->text == "torch._utils") {
    if (g->name == "_rebuild_tensor_v2" || g->name == "_rebuild_tensor" || g->name == "_rebuild_parameter" ||
        g->name == "_rebuild_parameter_with_state")
      return Rebuild::tensor;
    if (g->name.rfind("_rebuild_", 0) == 0) return Rebuild::unsupported;
  }
  if (g->is_global("torch._tensor", "_rebuild_from_type_v2")) return Rebuild::tensor;
  return Rebuild::none;
}

inline AnyStoredTensor TorchCheckpoint::rebuild(const PyObject* o, const std::string& name, int depth) const {
  const std::string w = where() + ": tensor '" + name + "'";
  MAMCLIP_CHECK(depth < 8, io_error, w, " wraps tensor rebuilds deeper than 8 levels");
  const PyObject* g = o->callable;
  const PyObject* args = o->args;
  MAMCLIP_CHECK(args && args->kind == PyKind::tuple, io_error, w, ": ", g->qualified_name(), " is called with ",
                describe(args), "; expected a tuple of arguments");
  const auto& a = args->items;
  if (g->name == "_rebuild_tensor_v2" || g->name == "_rebuild_tensor") return rebuild_v2(args, name);
  if (g->name == "_rebuild_parameter" || g->name == "_rebuild_parameter_with_state") {
    MAMCLIP_CHECK(!a.empty() && rebuild_kind(a[0]) == Rebuild::tensor, io_error, w, ": ", g->qualified_name(),
                  "'s first argument is ", describe(a.empty() ? nullptr : a[0]), "; expected a tensor");
    return tensor(a[0], name);
  }
  // _rebuild_from_type_v2(func, new_type, args, state): a tensor subclass or a
  // tensor with attributes; only the data matter here.
  MAMCLIP_CHECK(a.size() >= 3 && a[0]->kind == PyKind::global && a[2]->kind == PyKind::tuple, io_error, w, ": ",
                g->qualified_name(), " is called with ", describe(args),
                "; expected (function, type, arguments tuple, state)");
  PyObject call;  // the inner call, never stored: tensors are cached by the outer object
  call.kind = PyKind::object;
  call.callable = a[0];
  call.args = a[2];
  MAMCLIP_CHECK(rebuild_kind(&call) == Rebuild::tensor, io_error, w, ": ", g->qualified_name(), " rebuilds with ",
                describe(a[0]), ", which is not an allowed tensor rebuild function");
  return rebuild(&call, name, depth + 1);
}

inline const TorchCheckpoint::StorageSlot& TorchCheckpoint::storage(const PyObject* pid, const std::string& name) const {
  const std::string w = where() + ": tensor '" + name + "'";
  MAMCLIP_CHECK(pid && pid->kind == PyKind::persistent_id, io_error, w, "'s storage is ", describe(pid),
                "; expected a persistent id ('storage', type, key, location, numel)");
  const PyObject* t = pid->args;
  MAMCLIP_CHECK(t && t->kind == PyKind::tuple && t->items.size() == 5 && t->items[0]->kind == PyKind::str &&
                    t->items[0]->text == "storage",
                io_error, w, " has persistent id ", describe(t),
                "; expected a tuple ('storage', type, key, location, numel)");
  const PyObject* type = t->items[1];
  const PyObject* key = t->items[2];
  const PyObject* numel = t->items[4];
  MAMCLIP_CHECK(type->kind == PyKind::global && type->text == "torch", io_error, w, "'s storage type is ", describe(type),
                "; expected a torch storage type such as torch.FloatStorage");
  const auto dtype = torch_storage_dtype(type->name);
  MAMCLIP_CHECK(dtype.has_value(), io_error, w, "'s storage type is torch.", type->name,
                ", which is not a torch storage type");
  MAMCLIP_CHECK(*dtype != TorchDtype::unsupported, dtype_error, w, " is stored as torch.", type->name,
                ", which mamclip cannot load; loadable: float64, float32, float16, bfloat16, int64, int32, int16, "
                "int8, uint8, bool");
  MAMCLIP_CHECK(key->kind == PyKind::str, io_error, w, "'s storage key is ", describe(key), "; expected a str");
  MAMCLIP_CHECK(numel->kind == PyKind::integer && numel->integer >= 0, io_error, w, "'s storage size is ",
                describe(numel), "; expected a non-negative int");

  auto found = storages_.find(key->text);
  if (found != storages_.end()) {
    const StorageSlot& s = found->second;
    MAMCLIP_CHECK(s.dtype == *dtype && s.numel == numel->integer, io_error, w, " views storage '", key->text,
                  "' as ", numel->integer, " elements of ", torch_dtype_name(*dtype),
                  ", but another tensor views it as ", s.numel, " elements of ", torch_dtype_name(s.dtype));
    return s;
  }

  const std::string entry_name = archive_ + "/data/" + key->text;
  const ZipEntry* e = zip_->find(entry_name);
  MAMCLIP_CHECK(e != nullptr, io_error, w, "'s storage '", key->text, "' has no entry '", entry_name,
                "' in the archive");
  const size_t item = torch_dtype_size(*dtype);
  const uint64_t count = static_cast<uint64_t>(numel->integer);
  MAMCLIP_CHECK(count <= e->size / item && count * item == e->size, io_error, w, "'s storage '", key->text,
                "' is ", count, " elements of ", torch_dtype_name(*dtype), " (", item, " bytes each) but entry '",
                entry_name, "' holds ", e->size, " bytes");
  const uint8_t* src = reinterpret_cast<const uint8_t*>(zip_->data(*e, options_.verify_crc).data());

  StorageSlot slot;
  slot.dtype = *dtype;
  slot.numel = numel->integer;
  const bool swap = big_endian_ != (std::endian::native == std::endian::big);
  const size_t n = static_cast<size_t>(count);
  auto fill = [&](auto src_tag, auto dst_tag) {
    using S = decltype(src_tag);
    using D = decltype(dst_tag);
    slot.storage = std::make_shared<Storage>(n * sizeof(D), kCPU);
    D* dst = static_cast<D*>(slot.storage->data());
    if (std::is_same_v<S, D> && !swap) {
      if (n) std::memcpy(dst, src, n * sizeof(D));
      return;
    }
    for (size_t i = 0; i < n; ++i) {
      uint8_t raw[sizeof(S)];
      std::memcpy(raw, src + i * sizeof(S), sizeof(S));
      if (swap) std::reverse(raw, raw + sizeof(S));
      S v;
      std::memcpy(&v, raw, sizeof(S));
      dst[i] = static_cast<D>(v);
    }
  };
  switch (*dtype) {
    case TorchDtype::f64: fill(double{}, double{}); break;
    case TorchDtype::f32: fill(float{}, float{}); break;
    case TorchDtype::f16: fill(half{}, half{}); break;
    case TorchDtype::bf16: fill(bfloat16{}, bfloat16{}); break;
    case TorchDtype::i64: fill(int64_t{}, int64_t{}); break;
    case TorchDtype::i32: fill(int32_t{}, int32_t{}); break;
    case TorchDtype::i16: fill(int16_t{}, int64_t{}); break;
    case TorchDtype::i8: fill(int8_t{}, int64_t{}); break;
    case TorchDtype::u8: fill(uint8_t{}, uint8_t{}); break;
    case TorchDtype::boolean: {
      // A byte other than 0 or 1 has no C++ bool value: refuse it rather than
      // copy an invalid object representation.
      for (size_t i = 0; i < n; ++i)
        MAMCLIP_CHECK(src[i] <= 1, io_error, w, ": bool storage '", key->text, "' holds byte ", int(src[i]),
                      " at element ", i, "; expected 0 or 1");
      slot.storage = std::make_shared<Storage>(n, kCPU);
      if (n) std::memcpy(slot.storage->data(), src, n);
      break;
    }
    default: break;
  }
  return storages_.emplace(key->text, std::move(slot)).first->second;
}

inline AnyStoredTensor TorchCheckpoint::rebuild_v2(const PyObject* args, const std::string& name) const {
  const std::string w = where() + ": tensor '" + name + "'";
  const auto& a = args->items;
  MAMCLIP_CHECK(a.size() >= 4, io_error, w, " is rebuilt from ", describe(args),
                "; expected (storage, storage_offset, size, stride, ...)");
  const PyObject* off = a[1];
  MAMCLIP_CHECK(off->kind == PyKind::integer && off->integer >= 0, io_error, w, " has storage offset ", describe(off),
                "; expected a non-negative int");
  auto ints = [&](const PyObject* v, const char* what) {
    MAMCLIP_CHECK(v->kind == PyKind::tuple || v->kind == PyKind::list, io_error, w, " has ", what, " ", describe(v),
                  "; expected a tuple of non-negative ints");
    Shape s;
    for (const PyObject* x : v->items) {
      MAMCLIP_CHECK(x->kind == PyKind::integer && x->integer >= 0, io_error, w, " has ", what, " holding ",
                    describe(x), "; expected non-negative ints");
      s.push_back(x->integer);
    }
    return s;
  };
  const Shape size = ints(a[2], "size");
  const Shape stride = ints(a[3], "stride");
  MAMCLIP_CHECK(size.size() == stride.size(), shape_error, w, " has size ", shape_str(size), " but stride ",
                shape_str(stride), "; expected one stride per dimension");
  // Sizes must keep element counts and byte offsets inside int64 (zeros taken
  // as 1: strides derive from them).
  int64_t extent = 1;
  bool empty = false;
  for (int64_t d : size) {
    const int64_t f = d > 1 ? d : 1;
    MAMCLIP_CHECK(extent <= std::numeric_limits<int64_t>::max() / 8 / f, shape_error, w, " has size ",
                  shape_str(size), ", whose element count overflows 64-bit sizes");
    extent *= f;
    empty = empty || d == 0;
  }

  const StorageSlot& s = storage(a[0], name);
  const int64_t offset = off->integer;
  if (empty) {
    MAMCLIP_CHECK(offset <= s.numel, io_error, w, " (empty, size ", shape_str(size), ") starts at element ", offset,
                  " of a storage of ", s.numel, " elements");
  } else {
    // The last element reached, offset + sum((size - 1) * stride), must be
    // below numel; each step is checked against the room left so nothing overflows.
    bool inside = offset < s.numel;
    int64_t last = offset;
    for (size_t i = 0; i < size.size() && inside; ++i) {
      if (size[i] <= 1 || stride[i] == 0) continue;
      const int64_t room = s.numel - 1 - last;
      inside = size[i] - 1 <= room / stride[i];
      if (inside) last += (size[i] - 1) * stride[i];
    }
    MAMCLIP_CHECK(inside, io_error, w, " (", torch_dtype_name(s.dtype), ", size ", shape_str(size), ", stride ",
                  shape_str(stride), ", storage offset ", offset, ") reaches past the end of its storage of ", s.numel,
                  " elements");
  }
  auto make = [&](auto tag) -> AnyStoredTensor {
    using T = decltype(tag);
    return Tensor<T>::from_storage(s.storage, offset, size, stride);
  };
  switch (s.dtype) {
    case TorchDtype::f64: return make(double{});
    case TorchDtype::f32: return make(float{});
    case TorchDtype::f16: return make(half{});
    case TorchDtype::bf16: return make(bfloat16{});
    case TorchDtype::i64: case TorchDtype::i16: case TorchDtype::i8: return make(int64_t{});
    case TorchDtype::i32: return make(int32_t{});
    case TorchDtype::u8: return make(uint8_t{});
    case TorchDtype::boolean: return make(bool{});
    default: throw dtype_error(w + ": unsupported storage dtype");
  }
}

inline std::optional<TorchCheckpoint::DictView> TorchCheckpoint::dict_view(const PyObject* o) const {
  if (!o) return std::nullopt;
  const bool ordered = o->kind == PyKind::object && o->callable && o->callable->is_global("collections", "OrderedDict");
  if (o->kind != PyKind::dict && !ordered) return std::nullopt;
  DictView out;
  std::unordered_map<std::string, size_t> pos;
  auto add = [&](const PyObject* k, const PyObject* v) {
    std::string key;
    if (k->kind == PyKind::str) {
      key = k->text;
    } else if (k->kind == PyKind::integer) {
      key = std::to_string(k->integer);
    } else {
      out.other_keys.emplace_back(k, v);
      return;
    }
    auto [it, fresh] = pos.emplace(key, out.entries.size());
    if (fresh) out.entries.emplace_back(std::move(key), v);
    else out.entries[it->second].second = v;
  };
  // OrderedDict(pairs) as older pickles write it: its argument comes first.
  if (ordered && o->args && o->args->kind == PyKind::tuple && !o->args->items.empty()) {
    const PyObject* pairs = o->args->items[0];
    if (pairs->kind == PyKind::list || pairs->kind == PyKind::tuple)
      for (const PyObject* kv : pairs->items)
        if ((kv->kind == PyKind::tuple || kv->kind == PyKind::list) && kv->items.size() == 2)
          add(kv->items[0], kv->items[1]);
  }
  for (const auto& [k, v] : o->entries) add(k, v);
  return out;
}

inline bool TorchCheckpoint::holds_tensors(const PyObject* o, int depth,
                                           std::unordered_set<const PyObject*>& seen) const {
  if (depth > options_.max_depth || !seen.insert(o).second) return false;
  if (module_state(o)) return true;
  const auto d = dict_view(o);
  if (!d) return false;
  for (const auto& [k, v] : d->entries)
    if (rebuild_kind(v) != Rebuild::none || holds_tensors(v, depth + 1, seen)) return true;
  for (const auto& [k, v] : d->other_keys)
    if (rebuild_kind(v) != Rebuild::none || holds_tensors(v, depth + 1, seen)) return true;
  return false;
}

inline void TorchCheckpoint::flatten(const PyObject* o, const std::string& prefix, TensorMap& out, int depth,
                                     size_t& visited) const {
  const std::string w = where();
  MAMCLIP_CHECK(depth <= options_.max_depth, io_error, w, ": dicts nest deeper than ", options_.max_depth,
                " levels at '", prefix.substr(0, 200), "' (a dict that holds itself?)");
  if (module_state(o)) return flatten_module(o, prefix, out, depth, visited);
  const auto d = dict_view(o);
  if (!d) return;
  for (const auto& [k, v] : d->other_keys) {
    std::unordered_set<const PyObject*> seen;
    MAMCLIP_CHECK(rebuild_kind(v) == Rebuild::none && !holds_tensors(v, depth + 1, seen), io_error, w, ": dict '",
                  prefix, "' maps key ", describe(k), " to tensors; expected str keys");
  }
  for (const auto& [k, v] : d->entries) {
    MAMCLIP_CHECK(++visited <= options_.max_entries, io_error, w, ": the state dict expands to more than ",
                  options_.max_entries, " entries (dicts shared many times?)");
    const std::string name = prefix.empty() ? k : prefix + "." + k;
    if (rebuild_kind(v) == Rebuild::none) flatten(v, name, out, depth + 1, visited);
    else add_tensor(v, name, out);
  }
}

inline void TorchCheckpoint::add_tensor(const PyObject* v, const std::string& name, TensorMap& out) const {
  const std::string w = where();
  MAMCLIP_CHECK(rebuild_kind(v) == Rebuild::tensor, io_error, w, ": tensor '", name, "' is rebuilt by ",
                v->qualified_name(),
                ", which mamclip does not support (quantized, sparse or other special tensors); expected dense tensors");
  auto t = tensor(v, name);
  MAMCLIP_CHECK(out.emplace(name, std::move(t)).second, io_error, w, ": two entries flatten to the name '", name,
                "' (a key with a '.' and a nested dict)");
}

// nn.Module.state_dict() order: own parameters (None skipped), persistent
// buffers, then each submodule under "<name>.".
inline void TorchCheckpoint::flatten_module(const PyObject* o, const std::string& prefix, TensorMap& out, int depth,
                                            size_t& visited) const {
  const std::string w = where();
  const std::string at = prefix.empty() ? std::string("the top module") : "module '" + prefix + "'";
  const auto d = dict_view(module_state(o));
  std::map<std::string, const PyObject*> fields;
  for (const auto& [k, v] : d->entries) fields.emplace(k, v);
  // Non-persistent buffer names: set() as REDUCE(builtins.set, ([names],)) in
  // protocols < 4, a PyKind::set from protocol 4.
  std::unordered_set<std::string> transient;
  if (auto it = fields.find("_non_persistent_buffers_set"); it != fields.end()) {
    const PyObject* s = it->second;
    const PyObject* list = s->kind == PyKind::set ? s
                           : (s->kind == PyKind::object && s->args && s->args->kind == PyKind::tuple &&
                              !s->args->items.empty())
                               ? s->args->items[0]
                               : nullptr;
    if (list)
      for (const PyObject* n : list->items)
        if (n->kind == PyKind::str) transient.insert(n->text);
  }
  auto name_of = [&](const std::string& k) { return prefix.empty() ? k : prefix + "." + k; };
  for (const char* field : {"_parameters", "_buffers"}) {
    const auto tensors = dict_view(fields.at(field));
    MAMCLIP_CHECK(tensors.has_value(), io_error, w, ": ", at, " has ", field, " = ", describe(fields.at(field)),
                  "; expected a dict of tensors");
    for (const auto& [k, v] : tensors->entries) {
      MAMCLIP_CHECK(++visited <= options_.max_entries, io_error, w, ": the state dict expands to more than ",
                    options_.max_entries, " entries (modules shared many times?)");
      if (v->kind == PyKind::none || (std::string_view(field) == "_buffers" && transient.count(k))) continue;
      add_tensor(v, name_of(k), out);
    }
  }
  const auto modules = dict_view(fields.at("_modules"));
  MAMCLIP_CHECK(modules.has_value(), io_error, w, ": ", at, " has _modules = ", describe(fields.at("_modules")),
                "; expected a dict of modules");
  for (const auto& [k, v] : modules->entries) {
    if (v->kind == PyKind::none) continue;
    MAMCLIP_CHECK(module_state(v) != nullptr, io_error, w, ": submodule '", name_of(k), "' is ", describe(v),
                  "; expected a pickled nn.Module");
    MAMCLIP_CHECK(depth < options_.max_depth, io_error, w, ": modules nest deeper than ", options_.max_depth,
                  " levels at '", name_of(k).substr(0, 200), "' (a module that holds itself?)");
    flatten_module(v, name_of(k), out, depth + 1, visited);
  }
}

inline TensorMap TorchCheckpoint::state_dict() const {
  const std::string w = where();
  const PyObject* top = root();
  TensorMap out;
  if (module_state(top)) {
    flatten(top, "", out);
    return out;
  }
  const auto entries = dict_entries(top);
  if (!entries) {
    MAMCLIP_CHECK(!is_tensor(top), io_error, w, " holds a single tensor; expected a state dict (a dict of tensors)");
    throw io_error(mamclip::detail::str_cat(
        w, " holds ", describe(top),
        "; expected a state dict (a dict of tensors) or a checkpoint dict with 'state_dict', 'model' or 'module'"));
  }
  for (const auto& [k, v] : *entries)
    if (rebuild_kind(v) != Rebuild::none) {
      flatten(top, "", out);
      return out;
    }
  for (const char* key : {"state_dict", "model", "module"})
    for (const auto& [k, v] : *entries) {
      std::unordered_set<const PyObject*> seen;
      if (k == key && holds_tensors(v, 0, seen)) {
        flatten(v, "", out);
        return out;
      }
    }
  std::unordered_set<const PyObject*> seen;
  MAMCLIP_CHECK(holds_tensors(top, 0, seen), io_error, w, " holds a dict of ", entries->size(),
                " entries without tensors; expected a state dict or a checkpoint dict with 'state_dict', 'model' or "
                "'module'");
  flatten(top, "", out);
  return out;
}

// The state dict of a torch.save file (see TorchCheckpoint::state_dict).
inline TensorMap load_torch_state_dict(const std::string& path, const TorchLoadOptions& options = {}) {
  return TorchCheckpoint(path, options).state_dict();
}

}  // namespace mamclip::io
