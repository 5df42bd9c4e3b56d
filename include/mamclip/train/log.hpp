#pragma once
// Metric logs and progress display for training loops.
//
// defines:
//   MetricLog         rows of named values -> <dir>/metrics.csv and <dir>/metrics.jsonl
//   format_progress   the text of one progress line (unit-testable)
//   format_duration   seconds -> "MM:SS" or "H:MM:SS"
//   Progress          a \r-updated bar on a terminal, a line every ~10 % otherwise
//
// MetricLog files:
//   metrics.jsonl  one JSON object per row: {"step", "phase", "time" (Unix
//                  seconds), then the row's keys}; non-finite values are null.
//                  Every key of every row is kept.
//   metrics.csv    columns "step,phase,<keys>"; the keys are the union of all
//                  rows' keys, sorted. A row with a key the header lacks makes
//                  the file be rewritten (atomically) with the union header,
//                  earlier rows getting empty cells in the new columns; cells a
//                  row has no value for are empty, non-finite values are "nan",
//                  "inf", "-inf". Fields holding , " or a newline are quoted
//                  (RFC 4180).
// Both files are opened for appending, so a resumed run continues them; each
// row is flushed as it is written. A last line without its newline (a process
// killed mid-write) is cut off when the log is reopened, so every line stays a
// whole row. Values are printed in the shortest form that reads back exactly.

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "mamclip/core/error.hpp"
#include "mamclip/train/checkpoint.hpp"

namespace mamclip::train {

namespace detail {

// Shortest text that parses back to v; "nan", "inf", "-inf" otherwise.
inline std::string format_double(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

inline std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + '"';
}

// Splits one CSV record (no embedded newlines: our writer quotes only keys,
// which are checked to hold none).
inline std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> out;
  std::string cur;
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') cur += '"', ++i;
      else if (c == '"') quoted = false;
      else cur += c;
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      out.push_back(std::move(cur));
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(std::move(cur));
  return out;
}

// Cuts a trailing partial line (no final '\n') off `path`, if the file exists.
inline void drop_partial_last_line(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec || size == 0) return;
  std::ifstream in(path, std::ios::binary);
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (content.back() == '\n') return;
  const auto nl = content.rfind('\n');
  std::filesystem::resize_file(path, nl == std::string::npos ? 0 : nl + 1, ec);
  MAMCLIP_CHECK(!ec, io_error, "MetricLog: cannot cut the partial last line of '", path.string(), "': ", ec.message());
}

}  // namespace detail

class MetricLog {
 public:
  // Creates `dir` if needed and opens (appends to) its metrics.csv and metrics.jsonl.
  explicit MetricLog(const std::filesystem::path& dir) : dir_(dir) {
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    MAMCLIP_CHECK(std::filesystem::is_directory(dir_), io_error, "MetricLog: cannot create the directory '",
                  dir_.string(), "'", ec ? ": " + ec.message() : std::string());
    detail::drop_partial_last_line(csv_path());
    detail::drop_partial_last_line(jsonl_path());
    read_csv_header();
    open_streams();
  }

  std::filesystem::path csv_path() const { return dir_ / "metrics.csv"; }
  std::filesystem::path jsonl_path() const { return dir_ / "metrics.jsonl"; }
  // The CSV's metric columns (after step and phase), sorted.
  const std::vector<std::string>& columns() const { return columns_; }

  // Appends one row to both files and flushes them. Keys must be non-empty,
  // hold no newline, and not be "step", "phase" or "time".
  void log(const std::map<std::string, double>& row, int64_t step, const std::string& phase) {
    for (const auto& [k, v] : row) {
      MAMCLIP_CHECK(!k.empty() && k.find_first_of("\n\r") == std::string::npos, value_error,
                    "MetricLog.log: metric name '", k, "' must be non-empty and hold no newline");
      MAMCLIP_CHECK(k != "step" && k != "phase" && k != "time", value_error, "MetricLog.log: metric name '", k,
                    "' is reserved (step, phase and time are written by the log itself)");
    }
    MAMCLIP_CHECK(phase.find_first_of("\n\r") == std::string::npos, value_error,
                  "MetricLog.log: phase '", phase, "' must hold no newline");

    nlohmann::json j;
    j["step"] = step;
    j["phase"] = phase;
    j["time"] = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    for (const auto& [k, v] : row) j[k] = std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
    jsonl_ << j.dump() << '\n';
    jsonl_.flush();
    MAMCLIP_CHECK(jsonl_.good(), io_error, "MetricLog: cannot write '", jsonl_path().string(), "'");

    bool widened = false;
    std::set<std::string> all(columns_.begin(), columns_.end());
    for (const auto& [k, v] : row) widened |= all.insert(k).second;
    if (widened || !have_header_) rewrite_csv(std::vector<std::string>(all.begin(), all.end()));

    std::string line = std::to_string(step) + "," + detail::csv_field(phase);
    for (const auto& c : columns_) {
      line += ',';
      const auto it = row.find(c);
      if (it != row.end()) line += detail::format_double(it->second);
    }
    csv_ << line << '\n';
    csv_.flush();
    MAMCLIP_CHECK(csv_.good(), io_error, "MetricLog: cannot write '", csv_path().string(), "'");
  }

 private:
  void open_streams() {
    csv_.close();
    jsonl_.close();
    csv_.clear();
    jsonl_.clear();
    csv_.open(csv_path(), std::ios::binary | std::ios::app);
    jsonl_.open(jsonl_path(), std::ios::binary | std::ios::app);
    MAMCLIP_CHECK(csv_.good(), io_error, "MetricLog: cannot open '", csv_path().string(), "' for appending");
    MAMCLIP_CHECK(jsonl_.good(), io_error, "MetricLog: cannot open '", jsonl_path().string(), "' for appending");
  }

  void read_csv_header() {
    std::ifstream in(csv_path(), std::ios::binary);
    std::string line;
    if (!in || !std::getline(in, line)) return;
    auto fields = detail::split_csv_line(line);
    MAMCLIP_CHECK(fields.size() >= 2 && fields[0] == "step" && fields[1] == "phase", io_error, "MetricLog: '",
                  csv_path().string(), "' starts with '", line, "'; expected a header 'step,phase,...'");
    columns_.assign(fields.begin() + 2, fields.end());
    have_header_ = true;
  }

  // Rewrites the CSV with `columns` as its header, old rows widened with empty
  // cells (old columns are a subset of the new sorted set).
  void rewrite_csv(std::vector<std::string> columns) {
    std::vector<std::vector<std::string>> rows;
    if (have_header_) {
      std::ifstream in(csv_path(), std::ios::binary);
      std::string line;
      std::getline(in, line);  // the old header
      while (std::getline(in, line)) rows.push_back(detail::split_csv_line(line));
    }
    std::map<std::string, size_t> old_index;
    for (size_t i = 0; i < columns_.size(); ++i) old_index[columns_[i]] = i + 2;
    csv_.close();
    atomic_write(csv_path(), [&](std::ostream& os) {
      os << "step,phase";
      for (const auto& c : columns) os << ',' << detail::csv_field(c);
      os << '\n';
      for (const auto& r : rows) {
        os << (r.size() > 0 ? r[0] : "") << ',' << detail::csv_field(r.size() > 1 ? r[1] : "");
        for (const auto& c : columns) {
          os << ',';
          const auto it = old_index.find(c);
          if (it != old_index.end() && it->second < r.size()) os << r[it->second];
        }
        os << '\n';
      }
    });
    columns_ = std::move(columns);
    have_header_ = true;
    open_streams();
  }

  std::filesystem::path dir_;
  std::vector<std::string> columns_;
  bool have_header_ = false;
  std::ofstream csv_, jsonl_;
};

// Seconds as "MM:SS" (under an hour) or "H:MM:SS"; "?" when not finite or negative.
inline std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<int64_t>(std::llround(seconds));
  char buf[48];
  if (s >= 3600)
    std::snprintf(buf, sizeof(buf), "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  else
    std::snprintf(buf, sizeof(buf), "%02lld:%02lld", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  return buf;
}

// One progress line, e.g. with total = 200:
//   " 45%|#########           | 90/200 [00:12<00:15,  7.50 it/s] loss=0.31"
// and without a total (total <= 0): "90 [00:12, 7.50 it/s] loss=0.31". The rate
// is done / elapsed ("s/it" when below one per second, "?" before any time has
// passed); the ETA is (total - done) / rate.
inline std::string format_progress(int64_t done, int64_t total, double elapsed_s, const std::string& postfix = "") {
  constexpr int kBar = 20;
  const double rate = elapsed_s > 0 && done > 0 ? static_cast<double>(done) / elapsed_s : 0.0;
  char rbuf[48];
  if (rate <= 0) std::snprintf(rbuf, sizeof(rbuf), "? it/s");
  else if (rate >= 1) std::snprintf(rbuf, sizeof(rbuf), "%.2f it/s", rate);
  else std::snprintf(rbuf, sizeof(rbuf), "%.2f s/it", 1.0 / rate);
  std::string out;
  if (total > 0) {
    const double frac = std::clamp(static_cast<double>(done) / static_cast<double>(total), 0.0, 1.0);
    const int filled = static_cast<int>(frac * kBar);
    char pbuf[16];
    std::snprintf(pbuf, sizeof(pbuf), "%3d%%", static_cast<int>(frac * 100));
    const double eta = rate > 0 ? static_cast<double>(std::max<int64_t>(total - done, 0)) / rate
                                : (done >= total ? 0.0 : -1.0);
    out = std::string(pbuf) + "|" + std::string(filled, '#') + std::string(kBar - filled, ' ') + "| " +
          std::to_string(done) + "/" + std::to_string(total) + " [" + format_duration(elapsed_s) + "<" +
          format_duration(eta) + ", " + rbuf + "]";
  } else {
    out = std::to_string(done) + " [" + format_duration(elapsed_s) + ", " + rbuf + "]";
  }
  if (!postfix.empty()) out += " " + postfix;
  return out;
}

// Progress of a loop of `total` items (total <= 0: unknown). On a terminal
// (stderr is a TTY) the line is redrawn with \r, at most every 0.1 s and at
// the end; otherwise (logs, pipes) a whole line is printed each time another
// ~10 % is done, and at finish(). Lines are "<label>: <format_progress>".
class Progress {
 public:
  Progress(std::string label, int64_t total)
      : Progress(std::move(label), total, std::cerr, ::isatty(::fileno(stderr)) == 1) {}
  // Writes to `out`, as on a terminal when `tty`.
  Progress(std::string label, int64_t total, std::ostream& out, bool tty)
      : label_(std::move(label)), total_(total), out_(&out), tty_(tty), start_(Clock::now()) {}
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  ~Progress() {
    try {
      finish();
    } catch (...) {  // a destructor must not throw; the display is best effort
    }
  }

  void update(int64_t done, const std::string& postfix = "") {
    done_ = done;
    postfix_ = postfix;
    const double t = elapsed();
    if (tty_) {
      if (t - last_draw_ >= 0.1 || (total_ > 0 && done >= total_) || !drawn_) draw(t);
      return;
    }
    // Plain output: one line per crossed decile (or every 10^k items without a total).
    const int64_t bucket = total_ > 0 ? done * 10 / total_ : static_cast<int64_t>(std::floor(std::log10(done + 1.0)));
    if (bucket > last_bucket_) {
      last_bucket_ = bucket;
      draw(t);
    }
  }

  // Draws the final state (and ends the terminal line). Idempotent.
  void finish() {
    if (finished_) return;
    finished_ = true;
    const double t = elapsed();
    if (tty_) {
      draw(t);
      *out_ << '\n';
    } else if (last_printed_done_ != done_) {
      draw(t);
    }
    out_->flush();
  }

  double elapsed() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

 private:
  using Clock = std::chrono::steady_clock;

  void draw(double t) {
    const std::string line = label_ + ": " + format_progress(done_, total_, t, postfix_);
    if (tty_) {
      // Pad over the remains of a longer previous line.
      *out_ << '\r' << line << std::string(line.size() < last_len_ ? last_len_ - line.size() : 0, ' ');
      last_len_ = line.size();
    } else {
      *out_ << line << '\n';
    }
    out_->flush();
    last_draw_ = t;
    drawn_ = true;
    last_printed_done_ = done_;
  }

  std::string label_;
  int64_t total_;
  std::ostream* out_;
  bool tty_;
  Clock::time_point start_;
  int64_t done_ = 0;
  std::string postfix_;
  double last_draw_ = 0;
  bool drawn_ = false;
  bool finished_ = false;
  int64_t last_bucket_ = 0;
  int64_t last_printed_done_ = -1;
  size_t last_len_ = 0;
};

}  // namespace mamclip::train
