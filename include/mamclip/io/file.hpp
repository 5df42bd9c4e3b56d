#pragma once
// Files for importers and exporters: read-only bytes of a whole file (memory
// mapped where the platform allows) and an atomic writer.
//
//   FileBytes    immutable bytes of a file or of a buffer; shared by readers so
//                the mapping lives as long as anything reads from it
//   AtomicFile   writes `path` through a temporary file in the same directory,
//                fsync, rename: a failed or interrupted save leaves the previous
//                file untouched, and readers that mapped the old file keep
//                seeing its bytes (the rename replaces the name, not the inode)
//
// A file mapped here must not be truncated in place by another program while
// it is read: that is SIGBUS on POSIX. Writers of checkpoints (this one,
// Python safetensors, torch.save through a temporary) replace files by rename.

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "mamclip/core/error.hpp"

#if defined(__unix__) || defined(__APPLE__)
#define MAMCLIP_IO_POSIX 1
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#else
#define MAMCLIP_IO_POSIX 0
#endif

namespace mamclip::io {

namespace detail {
inline std::string errno_text(int err) { return std::error_code(err, std::generic_category()).message(); }
}  // namespace detail

// The bytes of a file (mapped read-only) or of an owned buffer. Not copyable:
// share it through std::shared_ptr<const FileBytes>.
class FileBytes {
 public:
  FileBytes(const FileBytes&) = delete;
  FileBytes& operator=(const FileBytes&) = delete;
  ~FileBytes() {
#if MAMCLIP_IO_POSIX
    if (mapped_) ::munmap(const_cast<uint8_t*>(data_), size_);
#endif
  }

  // Maps `path` read-only. Throws io_error when it is missing, not a regular
  // file, or cannot be read.
  static std::shared_ptr<const FileBytes> map(const std::string& path) {
    std::shared_ptr<FileBytes> out(new FileBytes());
    out->name_ = path;
#if MAMCLIP_IO_POSIX
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    MAMCLIP_CHECK(fd >= 0, io_error, "cannot open '", path, "': ", detail::errno_text(errno));
    struct FdCloser {
      int fd;
      ~FdCloser() { ::close(fd); }
    } closer{fd};
    struct stat st {};
    MAMCLIP_CHECK(::fstat(fd, &st) == 0, io_error, "cannot stat '", path, "': ", detail::errno_text(errno));
    MAMCLIP_CHECK(S_ISREG(st.st_mode), io_error, "'", path, "' is not a regular file");
    out->size_ = static_cast<size_t>(st.st_size);
    if (out->size_ == 0) return out;  // mmap refuses length 0; an empty file has no bytes to map
    void* p = ::mmap(nullptr, out->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    MAMCLIP_CHECK(p != MAP_FAILED, io_error, "cannot map '", path, "' (", out->size_, " bytes): ",
                  detail::errno_text(errno));
    out->data_ = static_cast<const uint8_t*>(p);
    out->mapped_ = true;
#else
    std::ifstream f(path, std::ios::binary);
    MAMCLIP_CHECK(f.good(), io_error, "cannot open '", path, "'");
    f.seekg(0, std::ios::end);
    const auto n = f.tellg();
    MAMCLIP_CHECK(n >= 0, io_error, "cannot read the size of '", path, "'");
    f.seekg(0);
    out->owned_.resize(static_cast<size_t>(n));
    f.read(reinterpret_cast<char*>(out->owned_.data()), n);
    MAMCLIP_CHECK(f.good() || out->owned_.empty(), io_error, "cannot read '", path, "'");
    out->data_ = out->owned_.data();
    out->size_ = out->owned_.size();
#endif
    return out;
  }

  // Owns `bytes`; `name` stands for the file name in messages.
  static std::shared_ptr<const FileBytes> from_vector(std::vector<uint8_t> bytes, std::string name) {
    std::shared_ptr<FileBytes> out(new FileBytes());
    out->owned_ = std::move(bytes);
    out->data_ = out->owned_.data();
    out->size_ = out->owned_.size();
    out->name_ = std::move(name);
    return out;
  }

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  // The path, or the name given to from_vector.
  const std::string& name() const { return name_; }
  bool is_mapped() const { return mapped_; }

 private:
  FileBytes() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
  std::vector<uint8_t> owned_;
  std::string name_;
};

// Writes a file atomically: bytes go to "<path>.tmp-XXXXXX" in the target's
// directory; commit() fsyncs it and renames it over `path`. Destroying an
// uncommitted AtomicFile (an exception during the write) removes the temporary
// and leaves `path` as it was.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path) : path_(std::move(path)) {
#if MAMCLIP_IO_POSIX
    const std::string pattern = path_ + ".tmp-XXXXXX";
    std::string tmpl = pattern;  // mkstemp fills in the Xs
    fd_ = ::mkstemp(tmpl.data());
    MAMCLIP_CHECK(fd_ >= 0, io_error, "cannot create a temporary file '", pattern, "' to write '", path_,
                  "': ", detail::errno_text(errno));
    tmp_ = tmpl;
    // mkstemp creates mode 0600; a replaced file keeps its mode, a new one
    // gets the usual 0644.
    struct stat st {};
    const mode_t mode = ::stat(path_.c_str(), &st) == 0 ? (st.st_mode & 07777) : 0644;
    ::fchmod(fd_, mode);
#else
    tmp_ = path_ + ".tmp-mamclip";
    out_.open(tmp_, std::ios::binary | std::ios::trunc);
    MAMCLIP_CHECK(out_.good(), io_error, "cannot create a temporary file '", tmp_, "' to write '", path_, "'");
#endif
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() {
    if (committed_) return;
#if MAMCLIP_IO_POSIX
    if (fd_ >= 0) ::close(fd_);
    ::unlink(tmp_.c_str());
#else
    out_.close();
    std::error_code ec;
    std::filesystem::remove(tmp_, ec);
#endif
  }

  void write(const void* data, size_t n) {
    MAMCLIP_CHECK(!committed_, io_error, "write to '", path_, "' after it was committed");
#if MAMCLIP_IO_POSIX
    const auto* p = static_cast<const uint8_t*>(data);
    while (n > 0) {
      // Large writes go in chunks: Linux writes at most ~2 GiB per call.
      const ssize_t w = ::write(fd_, p, n < (size_t{1} << 30) ? n : (size_t{1} << 30));
      if (w < 0 && errno == EINTR) continue;
      MAMCLIP_CHECK(w > 0, io_error, "cannot write '", tmp_, "' (the temporary for '", path_, "'): ",
                    w < 0 ? detail::errno_text(errno) : std::string("no progress"), "; '", path_,
                    "' is unchanged");
      p += w;
      n -= static_cast<size_t>(w);
    }
#else
    out_.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
    MAMCLIP_CHECK(out_.good(), io_error, "cannot write '", tmp_, "'; '", path_, "' is unchanged");
#endif
  }

  // Makes the written bytes durable, then replaces `path` with them.
  void commit() {
    MAMCLIP_CHECK(!committed_, io_error, "'", path_, "' was already committed");
#if MAMCLIP_IO_POSIX
    MAMCLIP_CHECK(::fsync(fd_) == 0, io_error, "cannot fsync '", tmp_, "': ", detail::errno_text(errno), "; '",
                  path_, "' is unchanged");
    const int fd = fd_;
    fd_ = -1;
    MAMCLIP_CHECK(::close(fd) == 0, io_error, "cannot close '", tmp_, "': ", detail::errno_text(errno), "; '",
                  path_, "' is unchanged");
    MAMCLIP_CHECK(::rename(tmp_.c_str(), path_.c_str()) == 0, io_error, "cannot rename '", tmp_, "' to '", path_,
                  "': ", detail::errno_text(errno), "; '", path_, "' is unchanged");
    committed_ = true;
    // The rename itself is durable once the directory is synced; failing to
    // sync it is not an error for the data already in place.
    std::string dir = std::filesystem::path(path_).parent_path().string();
    if (dir.empty()) dir = ".";
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
#else
    out_.close();
    MAMCLIP_CHECK(!out_.fail(), io_error, "cannot close '", tmp_, "'; '", path_, "' is unchanged");
    std::error_code ec;
    std::filesystem::rename(tmp_, path_, ec);
    MAMCLIP_CHECK(!ec, io_error, "cannot rename '", tmp_, "' to '", path_, "': ", ec.message());
    committed_ = true;
#endif
  }

  const std::string& temp_path() const { return tmp_; }

 private:
  std::string path_;
  std::string tmp_;
  bool committed_ = false;
#if MAMCLIP_IO_POSIX
  int fd_ = -1;
#else
  std::ofstream out_;
#endif
};

}  // namespace mamclip::io
