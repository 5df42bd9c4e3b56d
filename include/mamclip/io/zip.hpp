#pragma once
// A strict reader for the zip container that torch.save writes (PyTorch >= 1.6):
// stored (uncompressed) entries, each aligned to 64 bytes through padding in
// its local header's extra field, zip64 end records (torch writes them even
// for small files), and data descriptors after each entry (flag bit 3), so the
// central directory is the only authority for sizes and CRCs.
//
// Why not libzip or minizip: entries are handed out as views into the file's
// memory map (a checkpoint of several GB is never copied through a zip
// library's buffers), and an untrusted file must be validated field by field
// with messages that name the file, the entry and the offset, which a library
// reports as a bare error code. Torch never compresses, so the reader needs
// no inflater: a compressed, encrypted or multi-disk archive is refused.
//
// Everything is checked before it is used: the end-of-central-directory
// record (searched within the last 64 KiB + 22 bytes), the zip64 locator and
// record, every central directory entry (bounds, sizes, the zip64 extra
// field, duplicate names), and every local header (signature, the same name,
// data inside the file and before the central directory, no two entries'
// data overlapping). Sums of offsets and sizes are overflow-checked.
//
// defines:
//   ZipEntry    one stored entry: name, data offset and size, CRC-32
//   ZipArchive  validated archive over FileBytes; entry(), find(), data()
//   crc32       the zip CRC-32 (slicing by 8)

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mamclip/core/error.hpp"
#include "mamclip/io/file.hpp"

namespace mamclip::io {

namespace detail {

inline uint16_t le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
inline uint32_t le32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}
inline uint64_t le64(const uint8_t* p) { return static_cast<uint64_t>(le32(p)) | (static_cast<uint64_t>(le32(p + 4)) << 32); }

// CRC-32 (polynomial 0xEDB88320) tables for slicing by 8: table[k][b] is the
// CRC of byte b followed by k zero bytes.
inline const std::array<std::array<uint32_t, 256>, 8>& crc32_tables() {
  static const auto tables = [] {
    std::array<std::array<uint32_t, 256>, 8> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int k = 1; k < 8; ++k) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xFF];
    return t;
  }();
  return tables;
}

}  // namespace detail

// The zip CRC-32 of n bytes (crc = the CRC of the bytes before, for chaining).
inline uint32_t crc32(const uint8_t* p, size_t n, uint32_t crc = 0) {
  const auto& t = detail::crc32_tables();
  uint32_t c = ~crc;
  for (; n >= 8; n -= 8, p += 8) {
    const uint32_t lo = c ^ detail::le32(p), hi = detail::le32(p + 4);
    c = t[7][lo & 0xFF] ^ t[6][(lo >> 8) & 0xFF] ^ t[5][(lo >> 16) & 0xFF] ^ t[4][lo >> 24] ^ t[3][hi & 0xFF] ^
        t[2][(hi >> 8) & 0xFF] ^ t[1][(hi >> 16) & 0xFF] ^ t[0][hi >> 24];
  }
  for (; n > 0; --n, ++p) c = t[0][(c ^ *p) & 0xFF] ^ (c >> 8);
  return ~c;
}

struct ZipEntry {
  std::string name;
  uint64_t header_offset = 0;  // of the local header
  uint64_t data_offset = 0;    // of the first data byte
  uint64_t size = 0;           // stored == uncompressed size
  uint32_t crc = 0;            // from the central directory
};

// A validated zip archive of stored entries. Copies share the bytes.
class ZipArchive {
 public:
  explicit ZipArchive(std::shared_ptr<const FileBytes> bytes) : bytes_(std::move(bytes)) { parse(); }

  const std::string& path() const { return bytes_->name(); }
  const std::shared_ptr<const FileBytes>& bytes() const { return bytes_; }
  // Entries in central directory order.
  const std::vector<ZipEntry>& entries() const { return entries_; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const ZipEntry* find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &entries_[it->second];
  }
  const ZipEntry& entry(const std::string& name) const {
    const ZipEntry* e = find(name);
    MAMCLIP_CHECK(e != nullptr, io_error, where(), " has no entry '", name, "' (", entries_.size(), " entries)");
    return *e;
  }
  // The entry's bytes, a view into the file (valid while bytes() lives).
  // With verify_crc the CRC-32 is checked first (one pass over the data).
  std::string_view data(const ZipEntry& e, bool verify_crc = true) const {
    const uint8_t* p = bytes_->data() + e.data_offset;
    if (verify_crc) {
      const uint32_t c = crc32(p, static_cast<size_t>(e.size));
      MAMCLIP_CHECK(c == e.crc, io_error, where(), ": entry '", e.name, "' (", e.size, " bytes at offset ",
                    e.data_offset, ") has CRC-32 ", hex32(c), " but the central directory says ", hex32(e.crc),
                    " (corrupt file)");
    }
    return {reinterpret_cast<const char*>(p), static_cast<size_t>(e.size)};
  }
  std::string_view data(const std::string& name, bool verify_crc = true) const {
    return data(entry(name), verify_crc);
  }

  static constexpr uint32_t kLocalSig = 0x04034b50, kCentralSig = 0x02014b50, kEndSig = 0x06054b50,
                            kEnd64Sig = 0x06064b50, kLocator64Sig = 0x07064b50;
  // Archives with more entries are refused: a checkpoint holds one per storage.
  static constexpr uint64_t kMaxEntries = uint64_t{1} << 24;

 private:
  std::string where() const { return "zip archive '" + bytes_->name() + "'"; }
  static std::string hex32(uint32_t v) {
    static constexpr char kHex[] = "0123456789abcdef";
    std::string s = "0x";
    for (int i = 7; i >= 0; --i) s += kHex[(v >> (4 * i)) & 15];
    return s;
  }
  // [off, off + n) lies within the file.
  bool in_file(uint64_t off, uint64_t n) const { return off <= bytes_->size() && n <= bytes_->size() - off; }

  void parse();

  std::shared_ptr<const FileBytes> bytes_;
  std::vector<ZipEntry> entries_;
  std::map<std::string, size_t> index_;
};

inline void ZipArchive::parse() {
  const std::string w = where();
  const uint8_t* b = bytes_->data();
  const uint64_t size = bytes_->size();
  MAMCLIP_CHECK(size >= 22, io_error, w, " is ", size,
                " bytes long; expected at least 22 (the end-of-central-directory record)");

  // The end record is the last 22 bytes plus a comment of at most 65535 bytes.
  uint64_t eocd = size - 22;
  const uint64_t lowest = size - 22 > 65535 ? size - 22 - 65535 : 0;
  for (;; --eocd) {
    if (detail::le32(b + eocd) == kEndSig && eocd + 22 + detail::le16(b + eocd + 20) <= size) break;
    MAMCLIP_CHECK(eocd > lowest, io_error, w,
                  ": no end-of-central-directory record (signature PK\\5\\6) in the last ", size - lowest,
                  " bytes; not a zip file, or truncated");
  }
  const uint8_t* e = b + eocd;
  uint64_t disk = detail::le16(e + 4), cd_disk = detail::le16(e + 6);
  uint64_t n_disk = detail::le16(e + 8), n_total = detail::le16(e + 10);
  uint64_t cd_size = detail::le32(e + 12), cd_offset = detail::le32(e + 16);
  uint64_t cd_limit = eocd;  // the central directory ends before the end records

  // A zip64 locator, when present, sits right before the end record.
  if (eocd >= 20 && detail::le32(b + eocd - 20) == kLocator64Sig) {
    const uint8_t* loc = b + eocd - 20;
    const uint64_t rec = detail::le64(loc + 8);
    MAMCLIP_CHECK(detail::le32(loc + 4) == 0 && detail::le32(loc + 16) <= 1, io_error, w,
                  ": the zip64 locator at offset ", eocd - 20, " names disk ", detail::le32(loc + 4), " of ",
                  detail::le32(loc + 16), "; multi-disk archives are not supported");
    MAMCLIP_CHECK(rec <= eocd - 20 && eocd - 20 - rec >= 56, io_error, w, ": the zip64 locator at offset ", eocd - 20,
                  " points to a zip64 end record at offset ", rec, "; expected one that ends before offset ", eocd - 20);
    const uint8_t* z = b + rec;
    MAMCLIP_CHECK(detail::le32(z) == kEnd64Sig, io_error, w, ": no zip64 end record (signature PK\\6\\6) at offset ",
                  rec, ", where the zip64 locator points");
    disk = detail::le32(z + 16);
    cd_disk = detail::le32(z + 20);
    n_disk = detail::le64(z + 24);
    n_total = detail::le64(z + 32);
    cd_size = detail::le64(z + 40);
    cd_offset = detail::le64(z + 48);
    cd_limit = rec;
  } else {
    MAMCLIP_CHECK(n_total != 0xFFFF && cd_size != 0xFFFFFFFF && cd_offset != 0xFFFFFFFF, io_error, w,
                  ": the end record at offset ", eocd, " defers to zip64 fields but there is no zip64 locator");
  }
  MAMCLIP_CHECK(disk == 0 && cd_disk == 0 && n_disk == n_total, io_error, w, ": the end record describes disk ", disk,
                " (central directory on disk ", cd_disk, ", ", n_disk, " of ", n_total,
                " entries here); multi-disk archives are not supported");
  MAMCLIP_CHECK(cd_offset <= cd_limit && cd_size <= cd_limit - cd_offset, io_error, w, ": the central directory [",
                cd_offset, ", +", cd_size, ") does not end before the end records at offset ", cd_limit,
                " (truncated file?)");
  // Each central entry takes at least 46 bytes: the count is bounded before reserving.
  MAMCLIP_CHECK(n_total <= cd_size / 46 && n_total <= kMaxEntries, io_error, w, ": the end record claims ", n_total,
                " entries in a central directory of ", cd_size, " bytes; expected at most ",
                std::min<uint64_t>(cd_size / 46, kMaxEntries));
  entries_.reserve(static_cast<size_t>(n_total));

  uint64_t p = cd_offset;
  const uint64_t cd_end = cd_offset + cd_size;
  for (uint64_t i = 0; i < n_total; ++i) {
    MAMCLIP_CHECK(cd_end - p >= 46 && detail::le32(b + p) == kCentralSig, io_error, w, ": central directory entry ", i,
                  " at offset ", p, " is missing or has a bad signature; expected PK\\1\\2");
    const uint8_t* c = b + p;
    const uint16_t flags = detail::le16(c + 8), method = detail::le16(c + 10);
    const uint32_t crc = detail::le32(c + 16);
    uint64_t csize = detail::le32(c + 20), usize = detail::le32(c + 24);
    const uint16_t name_len = detail::le16(c + 28), extra_len = detail::le16(c + 30), comment_len = detail::le16(c + 32);
    uint64_t entry_disk = detail::le16(c + 34), local = detail::le32(c + 42);
    const uint64_t var = uint64_t{name_len} + extra_len + comment_len;
    MAMCLIP_CHECK(var <= cd_end - p - 46, io_error, w, ": central directory entry ", i, " at offset ", p,
                  " has a name, extra field and comment of ", var, " bytes, past the end of the central directory");
    std::string name(reinterpret_cast<const char*>(c + 46), name_len);
    const std::string ew = w + ": entry '" + name + "'";

    // The zip64 extended information field holds, in this order, the fields
    // whose 32-bit (16-bit) values are saturated.
    const uint8_t* x = c + 46 + name_len;
    for (uint64_t k = 0; k < extra_len;) {
      MAMCLIP_CHECK(extra_len - k >= 4, io_error, ew, ": extra field at offset ", p + 46 + name_len + k,
                    " is cut short");
      const uint16_t id = detail::le16(x + k), len = detail::le16(x + k + 2);
      MAMCLIP_CHECK(len <= extra_len - k - 4, io_error, ew, ": extra field 0x", hex32(id).substr(6), " of ", len,
                    " bytes overruns the ", extra_len, "-byte extra area");
      if (id == 0x0001) {
        const uint8_t* z = x + k + 4;
        uint16_t used = 0;
        auto take64 = [&](uint64_t& field, const char* what) {
          MAMCLIP_CHECK(len - used >= 8, io_error, ew, ": the zip64 extra field (", len, " bytes) lacks the ", what);
          field = detail::le64(z + used);
          used = static_cast<uint16_t>(used + 8);
        };
        if (usize == 0xFFFFFFFF) take64(usize, "uncompressed size");
        if (csize == 0xFFFFFFFF) take64(csize, "compressed size");
        if (local == 0xFFFFFFFF) take64(local, "local header offset");
        if (entry_disk == 0xFFFF) {
          MAMCLIP_CHECK(len - used >= 4, io_error, ew, ": the zip64 extra field lacks the disk number");
          entry_disk = detail::le32(z + used);
        }
      }
      k += 4u + len;
    }
    p += 46 + var;

    MAMCLIP_CHECK(!(flags & 1), io_error, ew, " is encrypted; torch.save never encrypts");
    MAMCLIP_CHECK(method == 0, io_error, ew, " is compressed (method ", method, method == 8 ? ", deflate" : "",
                  "); torch.save stores entries uncompressed (method 0), so this file was repacked by another tool");
    MAMCLIP_CHECK(csize == usize, io_error, ew, " is stored but its compressed size ", csize,
                  " differs from its size ", usize);
    MAMCLIP_CHECK(entry_disk == 0, io_error, ew, " is on disk ", entry_disk, "; multi-disk archives are not supported");
    MAMCLIP_CHECK(local <= cd_offset && cd_offset - local >= 30, io_error, ew, " has its local header at offset ", local,
                  "; expected one that ends before the central directory at offset ", cd_offset);
    const uint8_t* l = b + local;
    MAMCLIP_CHECK(detail::le32(l) == kLocalSig, io_error, ew, ": no local header signature (PK\\3\\4) at offset ",
                  local);
    const uint16_t lmethod = detail::le16(l + 8), lname = detail::le16(l + 26), lextra = detail::le16(l + 28);
    const uint64_t data = local + 30 + lname + lextra;  // no overflow: local < 2^64 - 2^17 since it is in the file
    MAMCLIP_CHECK(data <= cd_offset && usize <= cd_offset - data, io_error, ew, ": its data [", data, ", +", usize,
                  ") does not end before the central directory at offset ", cd_offset, " (truncated file?)");
    MAMCLIP_CHECK(lname == name_len && std::memcmp(l + 30, name.data(), name_len) == 0 && lmethod == method, io_error,
                  ew, ": the local header at offset ", local,
                  " names another entry or method; expected the central directory's name and method");
    MAMCLIP_CHECK(index_.emplace(name, entries_.size()).second, io_error, w, ": entry '", name, "' appears twice");
    entries_.push_back(ZipEntry{std::move(name), local, data, usize, crc});
  }

  // Stored data must not overlap (a hostile archive could alias one entry's
  // bytes into another's).
  std::vector<const ZipEntry*> order;
  order.reserve(entries_.size());
  for (const auto& en : entries_) order.push_back(&en);
  std::sort(order.begin(), order.end(), [](const ZipEntry* x, const ZipEntry* y) {
    return x->header_offset < y->header_offset;
  });
  for (size_t i = 1; i < order.size(); ++i)
    MAMCLIP_CHECK(order[i - 1]->data_offset + order[i - 1]->size <= order[i]->header_offset, io_error, w,
                  ": entry '", order[i - 1]->name, "' (data [", order[i - 1]->data_offset, ", +", order[i - 1]->size,
                  ")) overlaps entry '", order[i]->name, "' whose local header is at offset ",
                  order[i]->header_offset);
}

}  // namespace mamclip::io
