#pragma once
// safetensors (https://github.com/huggingface/safetensors): reading, writing,
// sharded checkpoints.
//
// Layout: an 8-byte little-endian u64 N, N bytes of UTF-8 JSON (the header,
// padded with spaces), then the data buffer. The header maps each tensor name
// to {"dtype", "shape", "data_offsets": [begin, end]} (byte offsets into the
// data buffer) and may hold "__metadata__": {string: string}. Data are
// little-endian and row-major.
//
// Files are untrusted input. Everything in the header is checked against the
// format's rules before any tensor is allocated: header size within 100 MB and
// within the file, valid JSON without duplicate keys, exactly the three fields
// per tensor, a known dtype, non-negative shapes whose element count does not
// overflow, end - begin == numel x dtype size, and offsets that tile the data
// buffer exactly (sorted by offset: no overlap, no hole, the last end is the
// end of the file).
//
// defines:
//   StDtype, st_dtype_name, st_dtype_bits   the format's dtypes (alignment order)
//   TensorInfo, Metadata                    a tensor's header entry; __metadata__
//   AnyStoredTensor, NamedTensors, TensorMap  tensors of the writable dtypes
//   SafetensorsFile                         validated, memory-mapped reader
//   load_safetensors, load_sharded          whole files, sharded checkpoints
//   serialize_safetensors, save_safetensors (atomic), sort_like_safetensors

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include "mamclip/core/dtype.hpp"
#include "mamclip/core/error.hpp"
#include "mamclip/core/shape.hpp"
#include "mamclip/core/tensor.hpp"
#include "mamclip/core/tensor_data.hpp"
#include "mamclip/io/file.hpp"

namespace mamclip::io {

// The format's dtypes, in increasing alignment order: the reference writer
// sorts tensors by this order, descending, so every tensor starts aligned.
enum class StDtype : uint8_t {
  BOOL, F4, F6_E2M3, F6_E3M2, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ,
  I16, U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64,
};
inline constexpr int kNumStDtypes = static_cast<int>(StDtype::U64) + 1;

constexpr std::string_view st_dtype_name(StDtype d) {
  constexpr std::string_view names[kNumStDtypes] = {
      "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ",
      "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64"};
  return names[static_cast<int>(d)];
}

// Bits per element (F4 and F6 pack several elements into a byte).
constexpr uint64_t st_dtype_bits(StDtype d) {
  switch (d) {
    case StDtype::F4: return 4;
    case StDtype::F6_E2M3: case StDtype::F6_E3M2: return 6;
    case StDtype::BOOL: case StDtype::U8: case StDtype::I8: case StDtype::F8_E5M2: case StDtype::F8_E4M3:
    case StDtype::F8_E8M0: case StDtype::F8_E4M3FNUZ: case StDtype::F8_E5M2FNUZ: return 8;
    case StDtype::I16: case StDtype::U16: case StDtype::F16: case StDtype::BF16: return 16;
    case StDtype::I32: case StDtype::U32: case StDtype::F32: return 32;
    case StDtype::C64: case StDtype::F64: case StDtype::I64: case StDtype::U64: return 64;
  }
  return 0;
}

// The dtypes mamclip reads into tensors; the others are validated and listed
// but get() refuses them.
constexpr bool st_dtype_loadable(StDtype d) {
  switch (d) {
    case StDtype::F64: case StDtype::F32: case StDtype::F16: case StDtype::BF16: case StDtype::I64:
    case StDtype::I32: case StDtype::I16: case StDtype::I8: case StDtype::U8: case StDtype::BOOL: return true;
    default: return false;
  }
}
inline constexpr const char* kLoadableStDtypes = "F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL";

// The safetensors dtype a Tensor<T> is written as.
template <class T> constexpr StDtype st_dtype_of();
template <> constexpr StDtype st_dtype_of<double>() { return StDtype::F64; }
template <> constexpr StDtype st_dtype_of<float>() { return StDtype::F32; }
template <> constexpr StDtype st_dtype_of<half>() { return StDtype::F16; }
template <> constexpr StDtype st_dtype_of<bfloat16>() { return StDtype::BF16; }
template <> constexpr StDtype st_dtype_of<int64_t>() { return StDtype::I64; }
template <> constexpr StDtype st_dtype_of<int32_t>() { return StDtype::I32; }
template <> constexpr StDtype st_dtype_of<uint8_t>() { return StDtype::U8; }
template <> constexpr StDtype st_dtype_of<bool>() { return StDtype::BOOL; }

// One header entry. begin/end are byte offsets into the data buffer, which
// starts at data_offset() of the file.
struct TensorInfo {
  std::string name;
  StDtype dtype = StDtype::F32;
  Shape shape;
  uint64_t begin = 0;
  uint64_t end = 0;
  int64_t numel() const { return numel_of(shape); }
  uint64_t nbytes() const { return end - begin; }
};

using Metadata = std::map<std::string, std::string>;

// A tensor of any dtype the writer supports.
using AnyStoredTensor = std::variant<Tensor<float>, Tensor<double>, Tensor<half>, Tensor<bfloat16>, Tensor<int64_t>,
                                     Tensor<int32_t>, Tensor<uint8_t>, Tensor<bool>>;
// Written in this order.
using NamedTensors = std::vector<std::pair<std::string, AnyStoredTensor>>;
using TensorMap = std::map<std::string, AnyStoredTensor>;

inline StDtype st_dtype_of(const AnyStoredTensor& t) {
  return std::visit([](const auto& x) { return st_dtype_of<typename std::decay_t<decltype(x)>::value_type>(); }, t);
}
inline const Shape& shape_of(const AnyStoredTensor& t) {
  return std::visit([](const auto& x) -> const Shape& { return x.shape(); }, t);
}

// The Tensor<T> held by `t`; dtype_error when it holds another type.
template <class T>
Tensor<T> get_as(const AnyStoredTensor& t, const std::string& name = "") {
  const auto* p = std::get_if<Tensor<T>>(&t);
  MAMCLIP_CHECK(p != nullptr, dtype_error, "tensor '", name, "' holds ", st_dtype_name(st_dtype_of(t)),
                " data; it was asked for as ", dtype_name(dtype_v<T>));
  return *p;
}

namespace detail {

inline constexpr uint64_t kMaxHeaderSize = 100'000'000;  // the reference implementation's limit

template <class U>
U load_le(const uint8_t* p) {
  U v;
  std::memcpy(&v, p, sizeof(U));
  if constexpr (std::endian::native == std::endian::big && sizeof(U) > 1) {
    auto* b = reinterpret_cast<uint8_t*>(&v);
    std::reverse(b, b + sizeof(U));
  }
  return v;
}

// Swaps every element of a buffer between little-endian and host order (a
// no-op on little-endian hosts).
inline void to_little_endian(uint8_t* p, size_t nbytes, size_t elem) {
  if constexpr (std::endian::native == std::endian::big) {
    if (elem > 1)
      for (size_t i = 0; i + elem <= nbytes; i += elem) std::reverse(p + i, p + i + elem);
  } else {
    (void)p, (void)nbytes, (void)elem;
  }
}

inline bool parse_st_dtype(std::string_view s, StDtype& out) {
  for (int i = 0; i < kNumStDtypes; ++i)
    if (st_dtype_name(static_cast<StDtype>(i)) == s) {
      out = static_cast<StDtype>(i);
      return true;
    }
  return false;
}

// A string as JSON, escaped the way serde_json escapes (the reference writer),
// so headers match byte for byte: \" \\ \b \f \n \r \t, other control bytes as
// \u00xx, everything else (UTF-8 included) verbatim.
inline void append_json_string(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (u < 0x20) {
          out += "\\u00";
          out += kHex[u >> 4];
          out += kHex[u & 15];
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

// Whether s is well-formed UTF-8 (no overlongs, surrogates or code points
// above U+10FFFF): JSON text must be.
inline bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n;
    uint32_t cp;
    if (c < 0x80) { ++i; continue; }
    if (c >= 0xC2 && c <= 0xDF) n = 1, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF) n = 2, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4) n = 3, cp = c & 0x07;
    else return false;
    if (i + n >= s.size()) return false;  // the continuation bytes i+1..i+n must exist
    for (size_t k = 1; k <= n; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += n + 1;
  }
  return true;
}

// Builds a JSON value like nlohmann's DOM parser, but refuses duplicate keys
// in any object (a DOM parser keeps the last silently) and containers nested
// deeper than max_depth (a header never nests more than three levels; refusing
// early bounds the parse's memory). Every step is O(log n): nlohmann's
// callback parser rescans the parent object at each object's end, which is
// quadratic in the number of tensors and a denial of service on a hostile
// 100 MB header.
class StrictJsonBuilder final : public nlohmann::json_sax<nlohmann::json> {
 public:
  using json = nlohmann::json;
  StrictJsonBuilder(std::string where, size_t max_depth, std::vector<std::string>* top_keys)
      : where_(std::move(where)), max_depth_(max_depth), top_keys_(top_keys) {}

  json& result() { return root_; }

  bool null() override { return add(json(nullptr)); }
  bool boolean(bool v) override { return add(json(v)); }
  bool number_integer(number_integer_t v) override { return add(json(v)); }
  bool number_unsigned(number_unsigned_t v) override { return add(json(v)); }
  bool number_float(number_float_t v, const string_t&) override { return add(json(v)); }
  bool string(string_t& v) override { return add(json(std::move(v))); }
  bool binary(binary_t& v) override { return add(json::binary(std::move(v))); }
  bool start_object(std::size_t) override { return open(json::value_t::object); }
  bool start_array(std::size_t) override { return open(json::value_t::array); }
  bool end_object() override {
    stack_.pop_back();
    keys_.pop_back();
    return true;
  }
  bool end_array() override {
    stack_.pop_back();
    return true;
  }
  bool key(string_t& k) override {
    MAMCLIP_CHECK(keys_.back().insert(k).second, io_error, where_, ": key '", k,
                  "' appears twice in the same JSON object", stack_.size() == 1 ? " (duplicate tensor name)" : "");
    if (stack_.size() == 1 && top_keys_) top_keys_->push_back(k);
    slot_ = &(*stack_.back())[k];
    return true;
  }
  bool parse_error(std::size_t position, const std::string&, const nlohmann::json::exception& e) override {
    throw io_error(mamclip::detail::str_cat(where_, ": invalid JSON at byte ", position, ": ", e.what()));
  }

 private:
  // Stores v where the parser is (root, array element or the pending key).
  json* place(json&& v) {
    if (stack_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    json& parent = *stack_.back();
    if (parent.is_array()) {
      parent.push_back(std::move(v));
      return &parent.back();
    }
    *slot_ = std::move(v);
    return slot_;
  }
  bool add(json&& v) {
    place(std::move(v));
    return true;
  }
  bool open(json::value_t type) {
    MAMCLIP_CHECK(stack_.size() < max_depth_, io_error, where_, ": JSON nests deeper than ", max_depth_,
                  " levels; expected a flat header");
    stack_.push_back(place(json(type)));
    if (type == json::value_t::object) keys_.emplace_back();
    return true;
  }

  std::string where_;
  size_t max_depth_;
  std::vector<std::string>* top_keys_;
  json root_;
  std::vector<json*> stack_;  // open containers; pointers stay valid: only the innermost grows
  std::vector<std::unordered_set<std::string>> keys_;  // keys seen, per open object
  json* slot_ = nullptr;      // the value of the last key
};

// Parses JSON text with StrictJsonBuilder. When top_keys is given it receives
// the top-level object's keys in file order (objects are std::maps).
inline nlohmann::json parse_json_strict(std::string_view text, const std::string& where, size_t max_depth,
                                        std::vector<std::string>* top_keys = nullptr) {
  StrictJsonBuilder builder(where, max_depth, top_keys);
  try {
    nlohmann::json::sax_parse(text.begin(), text.end(), &builder);
  } catch (const nlohmann::json::exception& e) {
    throw io_error(mamclip::detail::str_cat(where, ": invalid JSON: ", e.what()));
  }
  return std::move(builder.result());
}

// JSON text for a message, cut short when long.
inline std::string short_dump(const nlohmann::json& j) {
  std::string s = j.dump();
  if (s.size() > 120) s = s.substr(0, 100) + "...";
  return s;
}

inline std::string json_type_name(const nlohmann::json& j) { return j.type_name(); }

}  // namespace detail

// A validated safetensors file. Opening maps the file and checks the whole
// header; tensors are read on demand with get<T>() or get_any(), each a copy
// that owns its memory. Copies of a SafetensorsFile share the mapping.
class SafetensorsFile {
 public:
  // Maps and validates `path`. Throws io_error, dtype_error or shape_error.
  explicit SafetensorsFile(const std::string& path) : SafetensorsFile(FileBytes::map(path)) {}
  explicit SafetensorsFile(std::shared_ptr<const FileBytes> bytes) : bytes_(std::move(bytes)) { parse(); }
  // Validates an in-memory file; `name` stands for the file name in messages.
  static SafetensorsFile from_bytes(std::vector<uint8_t> bytes, std::string name = "<memory>") {
    return SafetensorsFile(FileBytes::from_vector(std::move(bytes), std::move(name)));
  }

  const std::string& path() const { return bytes_->name(); }
  // Tensor names in the order of their data in the file (the header's order
  // for files written by safetensors or by mamclip).
  const std::vector<std::string>& names() const { return names_; }
  const Metadata& metadata() const { return metadata_; }
  size_t size() const { return infos_.size(); }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  // Where the data buffer starts in the file (8 + header size).
  uint64_t data_offset() const { return data_offset_; }

  const TensorInfo& info(const std::string& name) const {
    auto it = index_.find(name);
    if (it == index_.end()) throw index_error(missing_message(name));
    return infos_[it->second];
  }

  // The tensor `name` as Tensor<T>, converted from the stored dtype where T
  // differs: any of F64/F32/F16/BF16 to a floating T (half and bfloat16 are
  // rounded from float), I64/I32/I16/I8/U8 to int64_t, I32/I16/I8/U8 to
  // int32_t, U8 to uint8_t, BOOL to bool. Others are a dtype_error.
  template <class T>
  Tensor<T> get(const std::string& name) const {
    static_assert(std::is_constructible_v<AnyStoredTensor, Tensor<T>>,
                  "get<T>: T must be float, double, half, bfloat16, int64_t, int32_t, uint8_t or bool");
    const TensorInfo& ti = info(name);
    const uint8_t* src = bytes_->data() + data_offset_ + ti.begin;
    switch (ti.dtype) {
      case StDtype::F64: return convert<double, T>(ti, src);
      case StDtype::F32: return convert<float, T>(ti, src);
      case StDtype::F16: return convert<half, T>(ti, src);
      case StDtype::BF16: return convert<bfloat16, T>(ti, src);
      case StDtype::I64: return convert<int64_t, T>(ti, src);
      case StDtype::I32: return convert<int32_t, T>(ti, src);
      case StDtype::I16: return convert<int16_t, T>(ti, src);
      case StDtype::I8: return convert<int8_t, T>(ti, src);
      case StDtype::U8: return convert<uint8_t, T>(ti, src);
      case StDtype::BOOL: return convert<bool, T>(ti, src);
      default: throw dtype_error(unloadable_message(ti));
    }
  }

  // The tensor `name` in the type closest to its stored dtype (I16 and I8
  // widen to int64_t, the index type).
  AnyStoredTensor get_any(const std::string& name) const {
    const TensorInfo& ti = info(name);
    switch (ti.dtype) {
      case StDtype::F64: return get<double>(name);
      case StDtype::F32: return get<float>(name);
      case StDtype::F16: return get<half>(name);
      case StDtype::BF16: return get<bfloat16>(name);
      case StDtype::I64: case StDtype::I16: case StDtype::I8: return get<int64_t>(name);
      case StDtype::I32: return get<int32_t>(name);
      case StDtype::U8: return get<uint8_t>(name);
      case StDtype::BOOL: return get<bool>(name);
      default: throw dtype_error(unloadable_message(ti));
    }
  }

 private:
  std::string where() const { return "safetensors file '" + bytes_->name() + "'"; }

  std::string missing_message(const std::string& name) const {
    std::string m = mamclip::detail::str_cat(where(), " has no tensor '", name, "' (", names_.size(), " tensors");
    const size_t shown = std::min<size_t>(names_.size(), 5);
    for (size_t i = 0; i < shown; ++i) m += (i ? ", '" : ": '") + names_[i] + "'";
    if (shown < names_.size()) m += ", ...";
    return m + ")";
  }

  std::string unloadable_message(const TensorInfo& ti) const {
    return mamclip::detail::str_cat(where(), ": tensor '", ti.name, "' has dtype ", st_dtype_name(ti.dtype),
                   ", which mamclip cannot load; loadable dtypes: ", kLoadableStDtypes);
  }

  template <class S, class T>
  static constexpr bool convertible() {
    if constexpr (std::is_same_v<S, T>) return true;
    else if constexpr (is_floating_v<T>) return is_floating_v<S>;
    else if constexpr (std::is_same_v<T, int64_t>)
      return std::is_integral_v<S> && !std::is_same_v<S, bool> && !std::is_same_v<S, uint64_t>;
    else if constexpr (std::is_same_v<T, int32_t>)
      return std::is_same_v<S, int16_t> || std::is_same_v<S, int8_t> || std::is_same_v<S, uint8_t>;
    else return false;
  }

  template <class S, class T>
  Tensor<T> convert(const TensorInfo& ti, const uint8_t* src) const {
    static_assert(std::is_trivially_copyable_v<S> && std::is_trivially_copyable_v<T>);
    if constexpr (!convertible<S, T>()) {
      throw dtype_error(mamclip::detail::str_cat(where(), ": tensor '", ti.name, "' is stored as ", st_dtype_name(ti.dtype),
                                ", which cannot be read as ", dtype_name(dtype_v<T>),
                                std::is_same_v<T, bool> ? " (only BOOL can)"
                                : is_floating_v<T>      ? " (floating types read F64, F32, F16, BF16)"
                                : std::is_same_v<T, int64_t> ? " (int64 reads I64, I32, I16, I8, U8)"
                                : std::is_same_v<T, int32_t> ? " (int32 reads I32, I16, I8, U8)"
                                                             : " (uint8 reads U8)"));
    } else {
      const int64_t n = ti.numel();
      Tensor<T> out = Tensor<T>::empty(ti.shape);
      if (n == 0) return out;
      T* dst = out.data_ptr();
      if constexpr (std::is_same_v<S, bool>) {
        // A bool byte other than 0 or 1 has no C++ bool value: refuse it rather
        // than copy an invalid object representation.
        for (int64_t i = 0; i < n; ++i) {
          const uint8_t b = src[i];
          MAMCLIP_CHECK(b <= 1, io_error, where(), ": BOOL tensor '", ti.name, "' holds byte ", int(b),
                        " at element ", i, "; expected 0 or 1");
          dst[i] = b != 0;
        }
      } else if constexpr (std::is_same_v<S, T> && std::endian::native == std::endian::little) {
        std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(T));
      } else {
        for (int64_t i = 0; i < n; ++i) {
          const S v = detail::load_le<S>(src + static_cast<size_t>(i) * sizeof(S));
          if constexpr (std::is_same_v<S, T>) dst[i] = v;
          else if constexpr (is_floating_v<T>) dst[i] = static_cast<T>(static_cast<acc_t<S>>(v));
          else dst[i] = static_cast<T>(v);
        }
      }
      return out;
    }
  }

  void parse();

  std::shared_ptr<const FileBytes> bytes_;
  uint64_t data_offset_ = 0;
  std::vector<TensorInfo> infos_;  // sorted by data offset
  std::vector<std::string> names_;
  std::unordered_map<std::string, size_t> index_;
  Metadata metadata_;
};

inline void SafetensorsFile::parse() {
  using json = nlohmann::json;
  const std::string w = where();
  const uint8_t* data = bytes_->data();
  const uint64_t size = bytes_->size();
  MAMCLIP_CHECK(size >= 8, io_error, w, " is ", size,
                " bytes long; expected at least 8 (the header size field). Truncated or not a safetensors file");
  const uint64_t n = detail::load_le<uint64_t>(data);
  MAMCLIP_CHECK(n <= detail::kMaxHeaderSize, io_error, w, ": header size ", n, " exceeds the limit of ",
                detail::kMaxHeaderSize, " bytes (corrupt, or not a safetensors file)");
  MAMCLIP_CHECK(n <= size - 8, io_error, w, ": header size ", n, " exceeds the ", size - 8,
                " bytes after the size field (truncated file?)");
  data_offset_ = 8 + n;
  const uint64_t buffer_size = size - data_offset_;

  const std::string_view text(reinterpret_cast<const char*>(data + 8), static_cast<size_t>(n));
  std::vector<std::string> keys;  // the header's order, which breaks ties between empty tensors
  const json header = detail::parse_json_strict(text, w + " header", 3, &keys);
  MAMCLIP_CHECK(header.is_object(), io_error, w, ": the header is a JSON ", detail::json_type_name(header),
                "; expected an object of tensor entries");

  for (const std::string& key : keys) {
    const json& entry = header.at(key);
    if (key == "__metadata__") {
      if (entry.is_null()) continue;
      MAMCLIP_CHECK(entry.is_object(), io_error, w, ": __metadata__ is a JSON ", detail::json_type_name(entry),
                    "; expected an object of strings");
      for (const auto& [mk, mv] : entry.items()) {
        MAMCLIP_CHECK(mv.is_string(), io_error, w, ": __metadata__ entry '", mk, "' is a JSON ",
                      detail::json_type_name(mv), "; expected a string");
        metadata_.emplace(mk, mv.get<std::string>());
      }
      continue;
    }
    const std::string t = w + ": tensor '" + key + "'";
    MAMCLIP_CHECK(entry.is_object(), io_error, t, " is a JSON ", detail::json_type_name(entry),
                  "; expected an object with dtype, shape and data_offsets");
    for (const auto& [field, _] : entry.items())
      MAMCLIP_CHECK(field == "dtype" || field == "shape" || field == "data_offsets", io_error, t,
                    " has an unexpected field '", field, "'; expected exactly dtype, shape and data_offsets");
    for (const char* field : {"dtype", "shape", "data_offsets"})
      MAMCLIP_CHECK(entry.contains(field), io_error, t, " has no '", field,
                    "' field; expected dtype, shape and data_offsets");

    TensorInfo ti;
    ti.name = key;
    const json& jd = entry["dtype"];
    MAMCLIP_CHECK(jd.is_string(), io_error, t, ": dtype is a JSON ", detail::json_type_name(jd), "; expected a string");
    const auto& dname = jd.get_ref<const std::string&>();
    MAMCLIP_CHECK(detail::parse_st_dtype(dname, ti.dtype), dtype_error, t, " has dtype '", dname,
                  "', which is not a safetensors dtype; mamclip loads ", kLoadableStDtypes);

    const json& js = entry["shape"];
    MAMCLIP_CHECK(js.is_array(), io_error, t, ": shape is a JSON ", detail::json_type_name(js),
                  "; expected an array of non-negative integers");
    for (const json& d : js) {
      MAMCLIP_CHECK(d.is_number_integer(), io_error, t, ": shape ", detail::short_dump(js), " holds ", detail::short_dump(d),
                    "; expected non-negative integers");
      MAMCLIP_CHECK(d.is_number_unsigned(), shape_error, t, " has shape ", detail::short_dump(js), " with negative dimension ",
                    d.get<int64_t>(), "; expected non-negative sizes");
      const auto v = d.get<uint64_t>();
      MAMCLIP_CHECK(v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), shape_error, t, " has shape ",
                    detail::short_dump(js), " whose dimension ", v, " overflows 64-bit sizes");
      ti.shape.push_back(static_cast<int64_t>(v));
    }
    // The extent (product with zero sizes taken as 1) must fit 8-byte elements
    // in int64: strides and byte counts derive from it, whatever T is read.
    int64_t extent = 1;
    for (int64_t d : ti.shape) {
      const int64_t f = d > 1 ? d : 1;
      MAMCLIP_CHECK(extent <= std::numeric_limits<int64_t>::max() / 8 / f, shape_error, t, " has shape ",
                    shape_str(ti.shape), ", whose element count overflows 64-bit sizes");
      extent *= f;
    }
    // numel <= 2^60, so numel x (bytes per element) and numel x (bits of a
    // sub-byte type) both fit in uint64.
    const uint64_t numel = static_cast<uint64_t>(ti.numel()), bits = st_dtype_bits(ti.dtype);
    MAMCLIP_CHECK(bits % 8 == 0 || numel * bits % 8 == 0, io_error, t, " (", st_dtype_name(ti.dtype), ", shape ",
                  shape_str(ti.shape), ") does not end on a byte boundary");
    const uint64_t expected = bits % 8 == 0 ? numel * (bits / 8) : numel * bits / 8;

    const json& jo = entry["data_offsets"];
    MAMCLIP_CHECK(jo.is_array() && jo.size() == 2 && jo[0].is_number_unsigned() && jo[1].is_number_unsigned(),
                  io_error, t, ": data_offsets is ", detail::short_dump(jo), "; expected [begin, end] with non-negative integers");
    ti.begin = jo[0].get<uint64_t>();
    ti.end = jo[1].get<uint64_t>();
    MAMCLIP_CHECK(ti.begin <= ti.end, io_error, t, " has data_offsets [", ti.begin, ", ", ti.end,
                  "]; expected begin <= end");
    MAMCLIP_CHECK(ti.end - ti.begin == expected, io_error, t, " has data_offsets [", ti.begin, ", ", ti.end,
                  "] spanning ", ti.end - ti.begin, " bytes; expected ", expected, " bytes for ",
                  st_dtype_name(ti.dtype), " shape ", shape_str(ti.shape), " (", ti.numel(), " elements x ",
                  st_dtype_bits(ti.dtype), " bits)");
    infos_.push_back(std::move(ti));
  }

  // The data buffer must be tiled exactly, in offset order. Ties (empty
  // tensors) keep the header's order.
  std::stable_sort(infos_.begin(), infos_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  for (size_t i = 0; i < infos_.size(); ++i) {
    const TensorInfo& ti = infos_[i];
    if (ti.begin < cursor) {
      const TensorInfo& prev = infos_[i - 1];
      throw io_error(mamclip::detail::str_cat(w, ": tensor '", ti.name, "' has data_offsets [", ti.begin, ", ", ti.end,
                             "], which overlap tensor '", prev.name, "' at [", prev.begin, ", ", prev.end,
                             "]; expected each tensor to start where the previous one ends"));
    }
    if (ti.begin > cursor)
      throw io_error(mamclip::detail::str_cat(w, ": bytes [", cursor, ", ", ti.begin, ") of the data buffer belong to no tensor (a hole before tensor '",
                             ti.name, "' at [", ti.begin, ", ", ti.end,
                             "]); expected each tensor to start where the previous one ends"));
    cursor = ti.end;
  }
  MAMCLIP_CHECK(cursor <= buffer_size, io_error, w, ": the tensors need ", cursor,
                " bytes of data but the file holds only ", buffer_size, " after the header (truncated file?)");
  MAMCLIP_CHECK(cursor == buffer_size, io_error, w, ": the tensors cover ", cursor, " bytes but the data buffer holds ",
                buffer_size, "; expected no trailing bytes");

  names_.reserve(infos_.size());
  for (size_t i = 0; i < infos_.size(); ++i) {
    names_.push_back(infos_[i].name);
    index_.emplace(infos_[i].name, i);
  }
}

// Every tensor of a safetensors file, each in the type closest to its dtype.
inline TensorMap load_safetensors(const std::string& path) {
  SafetensorsFile f(path);
  TensorMap out;
  for (const auto& name : f.names()) out.emplace(name, f.get_any(name));
  return out;
}

namespace detail {

// Shard file -> the tensor names an index's weight_map puts in it, both in the
// index's order (HF's *.index.json of any weight format). Shard names must stay
// inside the index's directory, and every shard must exist: all are checked
// before any is read, so a missing file fails fast. `w` names the index in messages.
using ShardList = std::vector<std::pair<std::string, std::vector<std::string>>>;
inline ShardList read_shard_index(const std::string& index_path, const std::string& w) {
  namespace fs = std::filesystem;
  const auto bytes = FileBytes::map(index_path);
  MAMCLIP_CHECK(bytes->size() <= kMaxHeaderSize, io_error, w, " is ", bytes->size(), " bytes; expected at most ",
                kMaxHeaderSize);
  const auto j = parse_json_strict(std::string_view(reinterpret_cast<const char*>(bytes->data()), bytes->size()), w, 64);
  MAMCLIP_CHECK(j.is_object(), io_error, w, " is a JSON ", json_type_name(j), "; expected an object with a weight_map");
  MAMCLIP_CHECK(j.contains("weight_map") && j["weight_map"].is_object(), io_error, w,
                " has no 'weight_map' object; expected {\"weight_map\": {tensor name: shard file}}");
  ShardList shards;
  for (const auto& [name, file] : j["weight_map"].items()) {
    MAMCLIP_CHECK(file.is_string(), io_error, w, ": weight_map['", name, "'] is a JSON ", json_type_name(file),
                  "; expected a shard file name");
    const auto& f = file.get_ref<const std::string&>();
    const fs::path rel(f);
    bool escapes = f.empty() || rel.is_absolute() || rel.has_root_name();
    for (const auto& part : rel) escapes = escapes || part == "..";
    MAMCLIP_CHECK(!escapes, io_error, w, " maps tensor '", name, "' to '", f,
                  "'; expected a file name relative to the index's directory");
    auto it = std::find_if(shards.begin(), shards.end(), [&](const auto& s) { return s.first == f; });
    if (it == shards.end()) it = shards.emplace(shards.end(), f, std::vector<std::string>{});
    it->second.push_back(name);
  }
  const fs::path dir = fs::path(index_path).parent_path();
  std::error_code ec;
  for (const auto& [file, names] : shards)
    MAMCLIP_CHECK(fs::is_regular_file(dir / file, ec), io_error, w, " maps ", names.size(), " tensors (e.g. '",
                  names.front(), "') to shard '", file, "', which does not exist (looked for '", (dir / file).string(),
                  "')");
  return shards;
}

}  // namespace detail

// A checkpoint split over several files (HuggingFace layout). `path` is the
// index file ({"metadata": ..., "weight_map": {tensor: shard file}}) or a
// directory holding model.safetensors.index.json (or, unsharded,
// model.safetensors). Every shard must exist and hold every tensor the index
// maps to it; tensors a shard holds beyond those are not loaded.
inline TensorMap load_sharded(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path index = path;
  if (fs::is_directory(index, ec)) {
    const fs::path dir = index;
    index = dir / "model.safetensors.index.json";
    if (!fs::exists(index, ec)) {
      const fs::path single = dir / "model.safetensors";
      MAMCLIP_CHECK(fs::exists(single, ec), io_error, "load_sharded: directory '", path,
                    "' holds neither model.safetensors.index.json nor model.safetensors");
      return load_safetensors(single.string());
    }
  }
  const std::string iname = index.string();
  const std::string w = "safetensors index '" + iname + "'";
  const fs::path dir = index.parent_path();
  const auto shards = detail::read_shard_index(iname, w);
  TensorMap out;
  for (const auto& [file, names] : shards) {
    SafetensorsFile shard((dir / file).string());
    for (const auto& name : names) {
      MAMCLIP_CHECK(shard.contains(name), io_error, w, " maps tensor '", name, "' to shard '", file,
                    "', which has no such tensor (it holds ", shard.size(), ")");
      out.emplace(name, shard.get_any(name));
    }
  }
  return out;
}

// Orders tensors as the reference writer does: by dtype alignment, largest
// first, then by name. Every tensor then starts at an offset aligned to its
// element size (the header is padded to 8), and a file written in this order
// matches Python's save_file byte for byte.
inline void sort_like_safetensors(NamedTensors& tensors) {
  std::stable_sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) {
    const StDtype da = st_dtype_of(a.second), db = st_dtype_of(b.second);
    return da != db ? da > db : a.first < b.first;
  });
}

namespace detail {

// Checks names and tensors, and builds the padded header.
inline std::string safetensors_header(const NamedTensors& tensors, const Metadata& metadata, const std::string& what) {
  std::vector<std::string_view> seen;
  seen.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    MAMCLIP_CHECK(name != "__metadata__", value_error, what, ": '__metadata__' is reserved and cannot name a tensor");
    MAMCLIP_CHECK(valid_utf8(name), value_error, what, ": tensor name '", name, "' is not valid UTF-8");
    const bool defined = std::visit([](const auto& x) { return x.defined(); }, t);
    MAMCLIP_CHECK(defined, value_error, what, ": tensor '", name, "' is undefined");
    seen.push_back(name);
  }
  std::sort(seen.begin(), seen.end());
  const auto dup = std::adjacent_find(seen.begin(), seen.end());
  MAMCLIP_CHECK(dup == seen.end(), value_error, what, ": tensor name '", dup == seen.end() ? "" : *dup,
                "' appears twice");
  for (const auto& [k, v] : metadata)
    MAMCLIP_CHECK(valid_utf8(k) && valid_utf8(v), value_error, what, ": metadata entry '", k,
                  "' is not valid UTF-8");

  std::string h = "{";
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) h += ',';
      first = false;
      append_json_string(h, k);
      h += ':';
      append_json_string(h, v);
    }
    h += '}';
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    const StDtype d = st_dtype_of(t);
    const Shape& s = shape_of(t);
    const uint64_t nbytes = static_cast<uint64_t>(numel_of(s)) * (st_dtype_bits(d) / 8);
    if (h.size() > 1) h += ',';
    append_json_string(h, name);
    h += ":{\"dtype\":\"";
    h += st_dtype_name(d);
    h += "\",\"shape\":[";
    for (size_t k = 0; k < s.size(); ++k) h += (k ? "," : "") + std::to_string(s[k]);
    h += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + nbytes) + "]}";
    offset += nbytes;
  }
  h += '}';
  h.resize((h.size() + 7) / 8 * 8, ' ');  // the reference writer pads to 8 so the data start aligned
  MAMCLIP_CHECK(h.size() <= kMaxHeaderSize, value_error, what, ": the header would be ", h.size(),
                " bytes; safetensors readers refuse more than ", kMaxHeaderSize);
  return h;
}

// Hands the little-endian row-major bytes of `t` to sink(const uint8_t*, size_t).
template <class T, class Sink>
void emit_tensor_bytes(const Tensor<T>& t, Sink&& sink) {
  const size_t nbytes = static_cast<size_t>(t.numel()) * sizeof(T);
  if (nbytes == 0) return;
  if (t.device().is_cpu() && t.is_contiguous() && std::endian::native == std::endian::little) {
    sink(reinterpret_cast<const uint8_t*>(t.data_ptr()), nbytes);
    return;
  }
  const Tensor<T> c = t.is_contiguous() ? t : mamclip::detail::contiguous_copy(t);
  std::vector<uint8_t> host(nbytes);
  copy_bytes(host.data(), kCPU, c.data_ptr(), c.device(), nbytes);
  to_little_endian(host.data(), nbytes, sizeof(T));
  sink(host.data(), nbytes);
}

template <class Sink>
void emit_safetensors(const NamedTensors& tensors, const std::string& header, Sink&& sink) {
  uint8_t size_field[8];
  for (int i = 0; i < 8; ++i) size_field[i] = static_cast<uint8_t>(static_cast<uint64_t>(header.size()) >> (8 * i));
  sink(size_field, 8);
  sink(reinterpret_cast<const uint8_t*>(header.data()), header.size());
  for (const auto& [name, t] : tensors) std::visit([&](const auto& x) { emit_tensor_bytes(x, sink); }, t);
}

}  // namespace detail

// The bytes of a safetensors file holding `tensors` in the given order (use
// sort_like_safetensors first for the reference writer's order). Metadata are
// written only when non-empty.
inline std::vector<uint8_t> serialize_safetensors(const NamedTensors& tensors, const Metadata& metadata = {}) {
  std::vector<uint8_t> out;
  const std::string header = detail::safetensors_header(tensors, metadata, "serialize_safetensors");
  detail::emit_safetensors(tensors, header, [&](const uint8_t* p, size_t n) { out.insert(out.end(), p, p + n); });
  return out;
}

// Writes `tensors` (in the given order) to `path` atomically: through a
// temporary file in the same directory, fsync and rename, so a failed save
// leaves any previous file at `path` intact.
inline void save_safetensors(const std::string& path, const NamedTensors& tensors, const Metadata& metadata = {}) {
  const std::string what = "save_safetensors('" + path + "')";
  // Everything is validated (and the header built) before the file system is touched.
  const std::string header = detail::safetensors_header(tensors, metadata, what);
  AtomicFile file(path);
  detail::emit_safetensors(tensors, header, [&](const uint8_t* p, size_t n) { file.write(p, n); });
  file.commit();
}

// Writes a name-ordered map (the order Python's writer would choose within a
// dtype; call sort_like_safetensors on a NamedTensors for its full order).
inline void save_safetensors(const std::string& path, const TensorMap& tensors, const Metadata& metadata = {}) {
  save_safetensors(path, NamedTensors(tensors.begin(), tensors.end()), metadata);
}

}  // namespace mamclip::io
