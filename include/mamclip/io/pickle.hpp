#pragma once
// A Python pickle reader that executes nothing.
//
// Python's unpickler imports every global a pickle names and calls it: loading
// an untrusted pickle runs arbitrary code. This reader runs the pickle virtual
// machine over inert values instead. GLOBAL / STACK_GLOBAL / INST push a
// PyKind::global that only records "module.name"; REDUCE, NEWOBJ, NEWOBJ_EX,
// OBJ and INST make a PyKind::object that records the callable and its
// arguments; BUILD records the state on that object; APPEND / SETITEM /
// ADDITEMS on an object record the items. Persistent ids become
// PyKind::persistent_id. What such values mean (a tensor, an OrderedDict) is
// decided by the caller, against its own allow-list (see torch_checkpoint.hpp);
// everything else stays an inert placeholder, so a file that pickles foreign
// objects beside the data still loads.
//
// Every opcode of protocols 0 to 5 is understood. An unknown opcode, a
// truncated argument, a stack or mark underflow, a memo miss and everything
// Python itself would refuse (an unregistered extension code, out-of-band
// buffers) is an io_error naming the opcode and its byte offset. Hostile input
// is bounded by PickleLimits (stack size, MARK nesting, memo entries); every
// value is created by one opcode and owned by the Pickle's arena, so memory
// grows linearly with the input and cyclic structures (a list that holds
// itself) are freed without recursion. Code that walks the values must bound
// its own depth: the graph may be cyclic.
//
// defines:
//   PyKind, PyObject   the inert values (const PyObject* handles, owned by a Pickle)
//   PickleLimits       bounds for hostile input
//   Pickle, unpickle   runs the virtual machine over bytes
//   pickle_opcode_name names of opcodes, for messages

#include <charconv>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "mamclip/core/error.hpp"

namespace mamclip::io {

enum class PyKind : uint8_t {
  none, boolean, integer, big_integer, floating, str, bytes, tuple, list, dict, set, frozenset,
  global,         // module, name
  object,         // callable(args, kwargs), then state (BUILD) and items / entries appended to it
  persistent_id,  // args = the pid (for torch, a tuple)
};

constexpr std::string_view py_kind_name(PyKind k) {
  switch (k) {
    case PyKind::none: return "None";
    case PyKind::boolean: return "bool";
    case PyKind::integer: return "int";
    case PyKind::big_integer: return "int (beyond 64 bits)";
    case PyKind::floating: return "float";
    case PyKind::str: return "str";
    case PyKind::bytes: return "bytes";
    case PyKind::tuple: return "tuple";
    case PyKind::list: return "list";
    case PyKind::dict: return "dict";
    case PyKind::set: return "set";
    case PyKind::frozenset: return "frozenset";
    case PyKind::global: return "global";
    case PyKind::object: return "object";
    case PyKind::persistent_id: return "persistent id";
  }
  return "?";
}

// One inert value. Containers hold handles to values of the same Pickle.
struct PyObject {
  PyKind kind = PyKind::none;
  uint64_t offset = 0;  // byte offset of the opcode that made it
  bool boolean = false;
  int64_t integer = 0;
  double floating = 0;
  std::string text;    // str and bytes payload (UTF-8 as pickled); global: the module
  std::string name;    // global: the qualified name
  std::vector<const PyObject*> items;                                  // tuple, list, set; object: APPENDed items
  std::vector<std::pair<const PyObject*, const PyObject*>> entries;    // dict in insertion order (a key set twice
                                                                       // appears twice: the last wins, as in Python);
                                                                       // object: SETITEMs
  const PyObject* callable = nullptr;  // object: what was called (usually a global)
  const PyObject* args = nullptr;      // object: its arguments (usually a tuple); persistent_id: the pid
  const PyObject* kwargs = nullptr;    // object made by NEWOBJ_EX
  const PyObject* state = nullptr;     // object: the BUILD argument

  bool is(PyKind k) const { return kind == k; }
  bool is_global(std::string_view module, std::string_view qualname) const {
    return kind == PyKind::global && text == module && name == qualname;
  }
  // "module.name" of a global, or of the global an object was made by ("" otherwise).
  std::string qualified_name() const {
    if (kind == PyKind::global) return text + "." + name;
    if (kind == PyKind::object && callable && callable->kind == PyKind::global) return callable->qualified_name();
    return "";
  }
  // The value as a str key (the str itself; "" for non-str).
  const std::string& str() const { return text; }
};

// A short description for messages: "int 7", "str 'weight'", "tuple of 3", "object of 'a.B'".
inline std::string describe(const PyObject* o) {
  if (!o) return "nothing";
  switch (o->kind) {
    case PyKind::none: return "None";
    case PyKind::boolean: return o->boolean ? "True" : "False";
    case PyKind::integer: return "int " + std::to_string(o->integer);
    case PyKind::floating: return "float " + std::to_string(o->floating);
    case PyKind::str: return "str '" + (o->text.size() > 60 ? o->text.substr(0, 60) + "..." : o->text) + "'";
    case PyKind::bytes: return "bytes of length " + std::to_string(o->text.size());
    case PyKind::tuple: case PyKind::list: case PyKind::set: case PyKind::frozenset:
      return std::string(py_kind_name(o->kind)) + " of " + std::to_string(o->items.size());
    case PyKind::dict: return "dict of " + std::to_string(o->entries.size());
    case PyKind::global: return "global '" + o->qualified_name() + "'";
    case PyKind::object: {
      const std::string q = o->qualified_name();
      return q.empty() ? std::string("object") : "object of '" + q + "'";
    }
    default: return std::string(py_kind_name(o->kind));
  }
}

struct PickleLimits {
  size_t max_stack = size_t{1} << 20;  // values on the stack at once (torch batches SETITEMS by 1000)
  size_t max_marks = size_t{1} << 12;  // MARKs open at once (the nesting of tuple/list literals)
  size_t max_memo = size_t{1} << 22;   // memo entries (a state dict uses about 10 per tensor)
};

// The name of an opcode byte ("BINUNICODE"), or "" when it is none.
constexpr std::string_view pickle_opcode_name(uint8_t op) {
  switch (op) {
    case '(': return "MARK"; case ')': return "EMPTY_TUPLE"; case '.': return "STOP"; case '0': return "POP";
    case '1': return "POP_MARK"; case '2': return "DUP"; case 'B': return "BINBYTES"; case 'C': return "SHORT_BINBYTES";
    case 'F': return "FLOAT"; case 'G': return "BINFLOAT"; case 'I': return "INT"; case 'J': return "BININT";
    case 'K': return "BININT1"; case 'L': return "LONG"; case 'M': return "BININT2"; case 'N': return "NONE";
    case 'P': return "PERSID"; case 'Q': return "BINPERSID"; case 'R': return "REDUCE"; case 'S': return "STRING";
    case 'T': return "BINSTRING"; case 'U': return "SHORT_BINSTRING"; case 'V': return "UNICODE";
    case 'X': return "BINUNICODE"; case ']': return "EMPTY_LIST"; case 'a': return "APPEND"; case 'b': return "BUILD";
    case 'c': return "GLOBAL"; case 'd': return "DICT"; case 'e': return "APPENDS"; case 'g': return "GET";
    case 'h': return "BINGET"; case 'i': return "INST"; case 'j': return "LONG_BINGET"; case 'l': return "LIST";
    case 'o': return "OBJ"; case 'p': return "PUT"; case 'q': return "BINPUT"; case 'r': return "LONG_BINPUT";
    case 's': return "SETITEM"; case 't': return "TUPLE"; case 'u': return "SETITEMS"; case '}': return "EMPTY_DICT";
    case 0x80: return "PROTO"; case 0x81: return "NEWOBJ"; case 0x82: return "EXT1"; case 0x83: return "EXT2";
    case 0x84: return "EXT4"; case 0x85: return "TUPLE1"; case 0x86: return "TUPLE2"; case 0x87: return "TUPLE3";
    case 0x88: return "NEWTRUE"; case 0x89: return "NEWFALSE"; case 0x8a: return "LONG1"; case 0x8b: return "LONG4";
    case 0x8c: return "SHORT_BINUNICODE"; case 0x8d: return "BINUNICODE8"; case 0x8e: return "BINBYTES8";
    case 0x8f: return "EMPTY_SET"; case 0x90: return "ADDITEMS"; case 0x91: return "FROZENSET";
    case 0x92: return "NEWOBJ_EX"; case 0x93: return "STACK_GLOBAL"; case 0x94: return "MEMOIZE";
    case 0x95: return "FRAME"; case 0x96: return "BYTEARRAY8"; case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    default: return "";
  }
}

// The result of unpickling: the root value and the arena that owns every value.
class Pickle {
 public:
  Pickle() = default;
  Pickle(Pickle&&) = default;
  Pickle& operator=(Pickle&&) = default;

  const PyObject* root() const { return root_; }
  size_t num_objects() const { return arena_.size(); }
  int protocol() const { return protocol_; }

  // Runs the virtual machine over n bytes up to STOP (bytes after it are
  // ignored, as Python does). `where` names the source in messages.
  static Pickle parse(const uint8_t* data, size_t n, const std::string& where, const PickleLimits& limits = {});

 private:
  friend class PickleMachine;
  std::vector<std::unique_ptr<PyObject>> arena_;
  const PyObject* root_ = nullptr;
  int protocol_ = 0;
};

inline Pickle unpickle(const uint8_t* data, size_t n, const std::string& where, const PickleLimits& limits = {}) {
  return Pickle::parse(data, n, where, limits);
}
inline Pickle unpickle(std::string_view bytes, const std::string& where, const PickleLimits& limits = {}) {
  return Pickle::parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), where, limits);
}

class PickleMachine {
 public:
  PickleMachine(const uint8_t* data, size_t n, const std::string& where, const PickleLimits& limits)
      : p_(data), n_(n), where_(where), limits_(limits) {}

  Pickle run() {
    while (true) {
      MAMCLIP_CHECK(pos_ < n_, io_error, where_, ": the pickle ends at byte ", n_,
                    " without a STOP opcode (truncated?)");
      op_offset_ = pos_;
      op_ = p_[pos_++];
      if (step()) break;
    }
    return std::move(out_);
  }

 private:
  using Obj = PyObject*;

  [[noreturn]] void fail(const std::string& what) const {
    throw io_error(mamclip::detail::str_cat(where_, ": pickle opcode ", pickle_opcode_name(op_), " (0x", hex2(op_),
                                            ") at byte ", op_offset_, ": ", what));
  }
  static std::string hex2(uint8_t v) {
    static constexpr char kHex[] = "0123456789abcdef";
    return {kHex[v >> 4], kHex[v & 15]};
  }

  // ---- reading arguments
  const uint8_t* take(uint64_t k) {
    if (k > n_ - pos_)
      fail(mamclip::detail::str_cat("needs ", k, " argument bytes but only ", n_ - pos_, " remain (truncated?)"));
    const uint8_t* q = p_ + pos_;
    pos_ += static_cast<size_t>(k);
    return q;
  }
  uint64_t uint_le(int k) {
    const uint8_t* q = take(static_cast<uint64_t>(k));
    uint64_t v = 0;
    for (int i = k - 1; i >= 0; --i) v = (v << 8) | q[i];
    return v;
  }
  // A text argument up to (not including) the next '\n'.
  std::string_view line() {
    const void* nl = std::memchr(p_ + pos_, '\n', n_ - pos_);
    if (!nl) fail("its text argument has no terminating newline (truncated?)");
    const size_t len = static_cast<size_t>(static_cast<const uint8_t*>(nl) - (p_ + pos_));
    std::string_view s(reinterpret_cast<const char*>(p_ + pos_), len);
    pos_ += len + 1;
    if (!s.empty() && s.back() == '\r') s.remove_suffix(1);
    return s;
  }
  int64_t decimal(std::string_view s, const char* what) {
    if (!s.empty() && s.front() == '+') s.remove_prefix(1);
    int64_t v = 0;
    const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
    if (r.ec != std::errc() || r.ptr != s.data() + s.size() || s.empty())
      fail(mamclip::detail::str_cat("its argument '", s.substr(0, 40), "' is not a decimal ", what));
    return v;
  }

  // ---- values
  Obj make(PyKind k) {
    out_.arena_.push_back(std::make_unique<PyObject>());
    Obj o = out_.arena_.back().get();
    o->kind = k;
    o->offset = op_offset_;
    return o;
  }
  Obj make_int(int64_t v) {
    Obj o = make(PyKind::integer);
    o->integer = v;
    return o;
  }
  Obj make_text(PyKind k, const uint8_t* q, uint64_t len) {
    Obj o = make(k);
    o->text.assign(reinterpret_cast<const char*>(q), static_cast<size_t>(len));
    return o;
  }
  // Two's complement little-endian bytes (LONG1/LONG4); beyond 64 bits is big_integer.
  Obj make_long(const uint8_t* q, uint64_t len) {
    if (len > 8) {
      // Still exact when the extra bytes only repeat the sign.
      const uint8_t sign = (q[len - 1] & 0x80) ? 0xFF : 0x00;
      bool fits = (q[7] & 0x80) == (sign & 0x80);
      for (uint64_t i = 8; i < len && fits; ++i) fits = q[i] == sign;
      if (!fits) return make(PyKind::big_integer);
      len = 8;
    }
    uint64_t v = 0;
    for (uint64_t i = len; i-- > 0;) v = (v << 8) | q[i];
    if (len > 0 && len < 8 && (q[len - 1] & 0x80)) v |= ~uint64_t{0} << (8 * len);  // sign-extend
    return make_int(static_cast<int64_t>(v));
  }

  void push(Obj o) {
    if (stack_.size() >= limits_.max_stack)
      fail(mamclip::detail::str_cat("the stack would exceed ", limits_.max_stack, " values"));
    stack_.push_back(o);
  }
  size_t fence() const { return marks_.empty() ? 0 : marks_.back(); }
  Obj pop() {
    if (stack_.size() <= fence()) fail("the stack is empty (stack underflow)");
    Obj o = stack_.back();
    stack_.pop_back();
    return o;
  }
  Obj& top() {
    if (stack_.size() <= fence()) fail("the stack is empty (stack underflow)");
    return stack_.back();
  }
  // Pops the values above the last MARK, and the MARK.
  std::vector<const PyObject*> pop_mark() {
    if (marks_.empty()) fail("there is no MARK to pop to");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<const PyObject*> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  Obj tuple_of(std::vector<const PyObject*> items) {
    Obj t = make(PyKind::tuple);
    t->items = std::move(items);
    return t;
  }

  void memo_put(uint64_t key, Obj o) {
    auto it = memo_.find(key);
    if (it != memo_.end()) {
      it->second = o;
      return;
    }
    if (memo_.size() >= limits_.max_memo)
      fail(mamclip::detail::str_cat("the memo would exceed ", limits_.max_memo, " entries"));
    memo_.emplace(key, o);
  }
  Obj memo_get(uint64_t key) {
    auto it = memo_.find(key);
    if (it == memo_.end()) fail(mamclip::detail::str_cat("memo entry ", key, " was never stored"));
    return it->second;
  }

  void append_to(Obj target, const std::vector<const PyObject*>& items) {
    if (target->kind != PyKind::list && target->kind != PyKind::object)
      fail("appends to a " + std::string(py_kind_name(target->kind)) + "; expected a list");
    target->items.insert(target->items.end(), items.begin(), items.end());
  }
  void set_items(Obj target, const std::vector<const PyObject*>& kv) {
    if (target->kind != PyKind::dict && target->kind != PyKind::object)
      fail("sets items on a " + std::string(py_kind_name(target->kind)) + "; expected a dict");
    if (kv.size() % 2) fail(mamclip::detail::str_cat("has ", kv.size(), " values after the MARK; expected key-value pairs"));
    for (size_t i = 0; i < kv.size(); i += 2) target->entries.emplace_back(kv[i], kv[i + 1]);
  }
  Obj make_global(std::string module, std::string name) {
    Obj g = make(PyKind::global);
    g->text = std::move(module);
    g->name = std::move(name);
    return g;
  }
  Obj make_call(const PyObject* callable, const PyObject* args, const PyObject* kwargs = nullptr) {
    Obj o = make(PyKind::object);
    o->callable = callable;
    o->args = args;
    o->kwargs = kwargs;
    return o;
  }

  static void put_utf8(std::string& s, uint32_t cp) {
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else if (cp < 0x800) {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      s += static_cast<char>(0xE0 | (cp >> 12));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      s += static_cast<char>(0xF0 | (cp >> 18));
      s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  // UNICODE's raw-unicode-escape: \uXXXX and \UXXXXXXXX, other bytes are Latin-1.
  std::string raw_unicode_escape(std::string_view s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
      const char c = s[i];
      if (c == '\\' && i + 1 < s.size() && (s[i + 1] == 'u' || s[i + 1] == 'U')) {
        const size_t k = s[i + 1] == 'u' ? 4 : 8;
        if (i + 2 + k > s.size()) fail("truncated \\u escape");
        uint32_t cp = 0;
        for (size_t j = 0; j < k; ++j) {
          const int h = hexval(s[i + 2 + j]);
          if (h < 0) fail("bad \\u escape");
          cp = cp * 16 + static_cast<uint32_t>(h);
        }
        if (cp > 0x10FFFF) fail("\\U escape beyond U+10FFFF");
        put_utf8(out, cp);
        i += 1 + k;
      } else {
        put_utf8(out, static_cast<unsigned char>(c));
      }
    }
    return out;
  }
  // STRING's argument: a quoted Python 2 str literal.
  std::string quoted_string(std::string_view s) {
    if (s.size() < 2 || (s.front() != '\'' && s.front() != '"') || s.back() != s.front())
      fail("its argument is not a quoted string");
    s = s.substr(1, s.size() - 2);
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] != '\\' || i + 1 == s.size()) {
        out += s[i];
        continue;
      }
      const char e = s[++i];
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'v': out += '\v'; break;
        case '\\': case '\'': case '"': out += e; break;
        case '\n': break;
        case 'x': {
          const int h1 = i + 1 < s.size() ? hexval(s[i + 1]) : -1, h2 = i + 2 < s.size() ? hexval(s[i + 2]) : -1;
          if (h1 < 0 || h2 < 0) fail("bad \\x escape in its string");
          out += static_cast<char>(h1 * 16 + h2);
          i += 2;
          break;
        }
        default:
          if (e >= '0' && e <= '7') {
            int v = e - '0';
            for (int k = 0; k < 2 && i + 1 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '7'; ++k) v = v * 8 + (s[++i] - '0');
            out += static_cast<char>(v & 0xFF);
          } else {
            out += '\\';  // Python keeps unknown escapes
            out += e;
          }
      }
    }
    return out;
  }

  // Executes op_; true at STOP.
  bool step() {
    switch (op_) {
      // ---- framing and protocol
      case 0x80: {  // PROTO
        const uint64_t v = uint_le(1);
        if (v > 5) fail(mamclip::detail::str_cat("protocol ", v, " is newer than 5, the highest this reader knows"));
        out_.protocol_ = static_cast<int>(v);
        return false;
      }
      case 0x95: {  // FRAME: a length hint; the opcodes follow inline
        const uint64_t len = uint_le(8);
        if (len > n_ - pos_) fail(mamclip::detail::str_cat("frames ", len, " bytes but only ", n_ - pos_, " remain"));
        return false;
      }
      case '.': {  // STOP
        out_.root_ = pop();
        return true;
      }

      // ---- stack and marks
      case '(':
        if (marks_.size() >= limits_.max_marks)
          fail(mamclip::detail::str_cat("MARKs nest deeper than ", limits_.max_marks));
        marks_.push_back(stack_.size());
        return false;
      case '0':  // POP: like CPython, pops a MARK when it is on top
        if (!marks_.empty() && marks_.back() == stack_.size()) marks_.pop_back();
        else pop();
        return false;
      case '1': pop_mark(); return false;  // POP_MARK
      case '2': push(top()); return false;  // DUP

      // ---- scalars
      case 'N': push(make(PyKind::none)); return false;
      case 0x88: case 0x89: {  // NEWTRUE / NEWFALSE
        Obj b = make(PyKind::boolean);
        b->boolean = op_ == 0x88;
        push(b);
        return false;
      }
      case 'J': push(make_int(static_cast<int32_t>(static_cast<uint32_t>(uint_le(4))))); return false;  // BININT
      case 'K': push(make_int(static_cast<int64_t>(uint_le(1)))); return false;                       // BININT1
      case 'M': push(make_int(static_cast<int64_t>(uint_le(2)))); return false;                       // BININT2
      case 'I': {  // INT, with protocol 0's booleans "01" / "00"
        const std::string_view s = line();
        if (s == "01" || s == "00") {
          Obj b = make(PyKind::boolean);
          b->boolean = s == "01";
          push(b);
        } else {
          push(make_int(decimal(s, "integer")));
        }
        return false;
      }
      case 'L': {  // LONG: decimal with an optional trailing L
        std::string_view s = line();
        if (!s.empty() && s.back() == 'L') s.remove_suffix(1);
        if (!s.empty() && s.front() == '+') s.remove_prefix(1);
        int64_t v = 0;
        const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
        if (s.empty() || r.ptr != s.data() + s.size() ||
            (r.ec != std::errc() && r.ec != std::errc::result_out_of_range))
          fail(mamclip::detail::str_cat("its argument '", s.substr(0, 40), "' is not a decimal integer"));
        push(r.ec == std::errc::result_out_of_range ? make(PyKind::big_integer) : make_int(v));
        return false;
      }
      case 0x8a: {  // LONG1
        const uint64_t len = uint_le(1);
        push(make_long(take(len), len));
        return false;
      }
      case 0x8b: {  // LONG4
        const uint64_t len = uint_le(4);
        if (len & 0x80000000u) fail("its length is negative");
        push(make_long(take(len), len));
        return false;
      }
      case 'G': {  // BINFLOAT: big-endian IEEE double
        const uint8_t* q = take(8);
        uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | q[i];
        Obj f = make(PyKind::floating);
        std::memcpy(&f->floating, &bits, 8);
        push(f);
        return false;
      }
      case 'F': {  // FLOAT: repr text
        const std::string_view s = line();
        Obj f = make(PyKind::floating);
        const auto r = std::from_chars(s.data(), s.data() + s.size(), f->floating);
        if (r.ec != std::errc() || r.ptr != s.data() + s.size() || s.empty())
          fail(mamclip::detail::str_cat("its argument '", s.substr(0, 40), "' is not a float"));
        push(f);
        return false;
      }

      // ---- strings and bytes (Python 2 str decodes to str, as torch.load asks)
      case 'X': { const uint64_t len = uint_le(4); push(make_text(PyKind::str, take(len), len)); return false; }
      case 0x8c: { const uint64_t len = uint_le(1); push(make_text(PyKind::str, take(len), len)); return false; }
      case 0x8d: { const uint64_t len = uint_le(8); push(make_text(PyKind::str, take(len), len)); return false; }
      case 'T': {
        const uint64_t len = uint_le(4);
        if (len & 0x80000000u) fail("its length is negative");
        push(make_text(PyKind::str, take(len), len));
        return false;
      }
      case 'U': { const uint64_t len = uint_le(1); push(make_text(PyKind::str, take(len), len)); return false; }
      case 'B': { const uint64_t len = uint_le(4); push(make_text(PyKind::bytes, take(len), len)); return false; }
      case 'C': { const uint64_t len = uint_le(1); push(make_text(PyKind::bytes, take(len), len)); return false; }
      case 0x8e: case 0x96: {  // BINBYTES8, BYTEARRAY8
        const uint64_t len = uint_le(8);
        push(make_text(PyKind::bytes, take(len), len));
        return false;
      }
      case 'S': {
        const std::string s = quoted_string(line());
        push(make_text(PyKind::str, reinterpret_cast<const uint8_t*>(s.data()), s.size()));
        return false;
      }
      case 'V': {
        const std::string s = raw_unicode_escape(line());
        push(make_text(PyKind::str, reinterpret_cast<const uint8_t*>(s.data()), s.size()));
        return false;
      }
      case 0x97: fail("refers to out-of-band buffer data, which a file cannot supply");
      case 0x98: top(); return false;  // READONLY_BUFFER: the buffer stays as it is

      // ---- containers
      case ')': push(tuple_of({})); return false;
      case 0x85: { Obj a = pop(); push(tuple_of({a})); return false; }
      case 0x86: { Obj b = pop(); Obj a = pop(); push(tuple_of({a, b})); return false; }
      case 0x87: { Obj c = pop(); Obj b = pop(); Obj a = pop(); push(tuple_of({a, b, c})); return false; }
      case 't': push(tuple_of(pop_mark())); return false;
      case ']': push(make(PyKind::list)); return false;
      case 'l': { auto items = pop_mark(); Obj l = make(PyKind::list); l->items = std::move(items); push(l); return false; }
      case '}': push(make(PyKind::dict)); return false;
      case 'd': {
        auto kv = pop_mark();
        Obj d = make(PyKind::dict);
        set_items(d, kv);
        push(d);
        return false;
      }
      case 0x8f: push(make(PyKind::set)); return false;
      case 0x91: { auto items = pop_mark(); Obj s = make(PyKind::frozenset); s->items = std::move(items); push(s); return false; }
      case 'a': { Obj v = pop(); append_to(top(), {v}); return false; }
      case 'e': { auto items = pop_mark(); append_to(top(), items); return false; }
      case 's': { Obj v = pop(); Obj k = pop(); set_items(top(), {k, v}); return false; }
      case 'u': { auto kv = pop_mark(); set_items(top(), kv); return false; }
      case 0x90: {  // ADDITEMS
        auto items = pop_mark();
        Obj s = top();
        if (s->kind != PyKind::set && s->kind != PyKind::object)
          fail("adds items to a " + std::string(py_kind_name(s->kind)) + "; expected a set");
        s->items.insert(s->items.end(), items.begin(), items.end());
        return false;
      }

      // ---- memo
      case 'p': memo_put(static_cast<uint64_t>(decimal(line(), "memo index")), top()); return false;
      case 'q': { const uint64_t k = uint_le(1); memo_put(k, top()); return false; }
      case 'r': { const uint64_t k = uint_le(4); memo_put(k, top()); return false; }
      case 0x94: memo_put(memo_.size(), top()); return false;  // MEMOIZE
      case 'g': push(memo_get(static_cast<uint64_t>(decimal(line(), "memo index")))); return false;
      case 'h': push(memo_get(uint_le(1))); return false;
      case 'j': push(memo_get(uint_le(4))); return false;

      // ---- globals and calls: recorded, never resolved or run
      case 'c': {  // GLOBAL
        std::string module(line());
        std::string name(line());
        push(make_global(std::move(module), std::move(name)));
        return false;
      }
      case 0x93: {  // STACK_GLOBAL
        Obj name = pop();
        Obj module = pop();
        if (module->kind != PyKind::str || name->kind != PyKind::str)
          fail("expects two str (module, name), got " + describe(module) + " and " + describe(name));
        push(make_global(module->text, name->text));
        return false;
      }
      case 'i': {  // INST module\nname\n: class called with the values above the MARK
        std::string module(line());
        std::string name(line());
        auto args = pop_mark();
        Obj cls = make_global(std::move(module), std::move(name));
        push(make_call(cls, tuple_of(std::move(args))));
        return false;
      }
      case 'o': {  // OBJ: the first value above the MARK is the class
        auto items = pop_mark();
        if (items.empty()) fail("has no class above its MARK");
        const PyObject* cls = items.front();
        items.erase(items.begin());
        push(make_call(cls, tuple_of(std::move(items))));
        return false;
      }
      case 'R': { Obj args = pop(); Obj fn = pop(); push(make_call(fn, args)); return false; }   // REDUCE
      case 0x81: { Obj args = pop(); Obj cls = pop(); push(make_call(cls, args)); return false; }  // NEWOBJ
      case 0x92: {  // NEWOBJ_EX
        Obj kwargs = pop();
        Obj args = pop();
        Obj cls = pop();
        push(make_call(cls, args, kwargs));
        return false;
      }
      case 'b': {  // BUILD
        Obj state = pop();
        Obj target = top();
        if (target->kind != PyKind::object)
          fail("sets state on a " + std::string(py_kind_name(target->kind)) + "; expected an object");
        target->state = state;
        return false;
      }
      case 'P': {  // PERSID
        const std::string_view s = line();
        Obj pid = make_text(PyKind::str, reinterpret_cast<const uint8_t*>(s.data()), s.size());
        Obj o = make(PyKind::persistent_id);
        o->args = pid;
        push(o);
        return false;
      }
      case 'Q': {  // BINPERSID
        Obj pid = pop();
        Obj o = make(PyKind::persistent_id);
        o->args = pid;
        push(o);
        return false;
      }
      case 0x82: case 0x83: case 0x84: {  // EXT1/2/4: the copyreg registry is empty outside the writer's process
        const uint64_t code = uint_le(op_ == 0x82 ? 1 : op_ == 0x83 ? 2 : 4);
        fail(mamclip::detail::str_cat("refers to extension code ", code, ", which is not registered"));
      }
      default:
        throw io_error(mamclip::detail::str_cat(where_, ": unknown pickle opcode 0x", hex2(op_), " at byte ", op_offset_,
                                                "; expected an opcode of pickle protocols 0 to 5 (corrupt data?)"));
    }
  }

  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  size_t op_offset_ = 0;
  uint8_t op_ = 0;
  const std::string& where_;
  PickleLimits limits_;
  std::vector<Obj> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Obj> memo_;
  Pickle out_;
};

inline Pickle Pickle::parse(const uint8_t* data, size_t n, const std::string& where, const PickleLimits& limits) {
  return PickleMachine(data, n, where, limits).run();
}

}  // namespace mamclip::io
