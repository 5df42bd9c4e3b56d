#pragma once
// Datasets as lists of samples (image path, caption, patient, label), and
// seeded patient-level splits and stratified subsets.
//
//   Sample                    one image: path, caption, patient_id, label (-1 unlabelled), id
//   read_caption_records      image-caption pairs: a JSON list or JSONL of {"image", "caption"}
//                             (optional "patient_id", "label")
//   BiradsMapping             BI-RADS category -> class index (default_3class: ours, see below)
//   read_teknofest_metadata   TEKNOFEST / MammosighTR metadata_image_level.json
//   read_mias                 mini-MIAS (labels.csv + image_labels.csv): normal / benign / malignant
//   patient_split             train / val / test with no patient in two splits
//   stratified_subset         n labelled samples keeping the class proportions
//
// Readers return paths joined onto the image root (absolute paths in a file
// stay as they are) and never open the images: the Loader reports a missing
// or unreadable image, naming the sample. Malformed files throw io_error
// (cannot open or parse) or value_error (a missing key or a wrongly typed
// value), naming the file, the line (JSONL) or record index (JSON) and the key.
//
// Randomness: splits and subsets draw from Philox streams keyed by `seed`
// alone, so they are the same on every machine and for any thread count.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "mamclip/core/error.hpp"
#include "mamclip/core/random.hpp"

namespace mamclip::data {

struct Sample {
  std::filesystem::path image;
  std::string caption;
  std::string patient_id;  // empty: the sample is its own patient (splits use id)
  int64_t label = -1;      // class index after any mapping; -1 unlabelled
  std::string id;          // unique within its dataset (the image path as given, or the file stem)
};

namespace detail {

// splitmix64's finaliser: decorrelates seeds that differ in a few bits, so
// (seed, epoch, index) triples map to unrelated Philox keys.
inline uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
inline uint64_t mix_keys(uint64_t a, uint64_t b) { return mix64(mix64(a) ^ (b + 0x632BE59BD9B4E019ull)); }

// A uniform permutation of 0..n-1 (Fisher-Yates), element k of Philox stream
// (key, stream) choosing the swap for position n-1-k.
inline std::vector<int64_t> seeded_permutation(int64_t n, uint64_t key, uint64_t stream) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[static_cast<size_t>(i)] = i;
  for (int64_t i = n - 1, k = 0; i > 0; --i, ++k) {
    // uniform is in (0, 1]: u * (i + 1) may reach i + 1 exactly.
    const double u = Philox::uniform(key, stream, static_cast<uint64_t>(k));
    const int64_t j = std::min<int64_t>(i, static_cast<int64_t>(u * static_cast<double>(i + 1)));
    std::swap(p[static_cast<size_t>(i)], p[static_cast<size_t>(j)]);
  }
  return p;
}

inline std::string read_text_file(const std::filesystem::path& file, const char* op) {
  std::ifstream f(file, std::ios::binary);
  MAMCLIP_CHECK(f.good(), io_error, op, ": cannot open '", file.string(), "'");
  std::ostringstream os;
  os << f.rdbuf();
  MAMCLIP_CHECK(!f.bad(), io_error, op, ": cannot read '", file.string(), "'");
  return os.str();
}

inline std::filesystem::path join_image(const std::filesystem::path& root, const std::string& rel) {
  const std::filesystem::path p(rel);
  return p.is_absolute() ? p : root / p;
}

// Where a record sits, for messages: "'f.jsonl' line 3" or "'f.json' record 2".
inline std::string record_where(const std::filesystem::path& file, bool jsonl, size_t pos) {
  return ::mamclip::detail::str_cat("'", file.string(), "' ", jsonl ? "line " : "record ", pos);
}

// A JSON list, or JSONL (one object per non-blank line): (position, object)
// pairs, position = 1-based line for JSONL, 0-based index for a list.
inline std::vector<std::pair<size_t, nlohmann::json>> parse_records(const std::filesystem::path& file, const char* op,
                                                                    bool& jsonl) {
  const std::string text = read_text_file(file, op);
  const size_t first = text.find_first_not_of(" \t\r\n");
  std::vector<std::pair<size_t, nlohmann::json>> out;
  jsonl = first != std::string::npos && text[first] != '[';
  if (first == std::string::npos) return out;
  if (!jsonl) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
      throw io_error(::mamclip::detail::str_cat(op, ": '", file.string(), "' is not valid JSON: ", e.what()));
    }
    for (size_t i = 0; i < j.size(); ++i) out.emplace_back(i, std::move(j[i]));
    return out;
  }
  std::istringstream lines(text);
  std::string line;
  for (size_t n = 1; std::getline(lines, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      out.emplace_back(n, nlohmann::json::parse(line));
    } catch (const nlohmann::json::parse_error& e) {
      throw io_error(
          ::mamclip::detail::str_cat(op, ": ", record_where(file, true, n), " is not valid JSON: ", e.what()));
    }
  }
  return out;
}

// A required string (or, where numbers_ok, a number written as its decimal text).
inline std::string get_string(const nlohmann::json& rec, const char* key, const char* op, const std::string& where,
                              bool numbers_ok = false) {
  MAMCLIP_CHECK(rec.is_object(), value_error, op, ": ", where, " is a JSON ", rec.type_name(), "; expected an object");
  const auto it = rec.find(key);
  MAMCLIP_CHECK(it != rec.end(), value_error, op, ": ", where, " has no key \"", key, "\"");
  if (numbers_ok && it->is_number_integer()) return std::to_string(it->get<int64_t>());
  MAMCLIP_CHECK(it->is_string(), value_error, op, ": ", where, ": key \"", key, "\" is a JSON ", it->type_name(),
                "; expected a string", numbers_ok ? " or an integer" : "");
  return it->get<std::string>();
}

inline std::string optional_string(const nlohmann::json& rec, const char* key, const char* op,
                                   const std::string& where) {
  const auto it = rec.find(key);
  if (it == rec.end() || it->is_null()) return {};
  return get_string(rec, key, op, where, true);
}

}  // namespace detail

// Image-caption pairs. Keys: "image" (path relative to image_root, or
// absolute) and "caption" (strings, required); "patient_id" (string or
// integer) and "label" (integer >= 0) optional; other keys are ignored.
// id = the "image" string as written.
inline std::vector<Sample> read_caption_records(const std::filesystem::path& file,
                                                const std::filesystem::path& image_root) {
  constexpr const char* op = "read_caption_records";
  bool jsonl = false;
  const auto records = detail::parse_records(file, op, jsonl);
  std::vector<Sample> out;
  out.reserve(records.size());
  for (const auto& [pos, rec] : records) {
    const std::string where = detail::record_where(file, jsonl, pos);
    Sample s;
    s.id = detail::get_string(rec, "image", op, where);
    MAMCLIP_CHECK(!s.id.empty(), value_error, op, ": ", where, ": key \"image\" is empty; expected a path");
    s.image = detail::join_image(image_root, s.id);
    s.caption = detail::get_string(rec, "caption", op, where);
    s.patient_id = detail::optional_string(rec, "patient_id", op, where);
    const auto label = rec.find("label");
    if (label != rec.end() && !label->is_null()) {
      MAMCLIP_CHECK(label->is_number_integer() && label->get<int64_t>() >= 0, value_error, op, ": ", where,
                    ": key \"label\" is ", label->dump(), "; expected an integer >= 0");
      s.label = label->get<int64_t>();
    }
    out.push_back(std::move(s));
  }
  return out;
}

// BI-RADS category -> class index; categories absent from to_class are
// dropped by read_teknofest_metadata.
struct BiradsMapping {
  std::map<int, int> to_class;
  std::vector<std::string> class_names;

  // OUR default 3-class grouping. The MAM-CLIP paper reports "3-class"
  // BI-RADS scores but does not publish how the five TEKNOFEST categories
  // (0, 1, 2, 4, 5) were grouped; this grouping is our choice, not the
  // paper's: 1 -> normal (0), 2 -> benign (1), 4 and 5 -> suspicious /
  // malignant (2); 0 (incomplete, needs more imaging) has no class and is dropped.
  static BiradsMapping default_3class() {
    return {{{1, 0}, {2, 1}, {4, 2}, {5, 2}}, {"normal", "benign", "suspicious"}};
  }
};

namespace detail {

inline std::string composition_words(const std::string& c) {
  static const std::map<std::string, std::string> words = {{"A", "almost entirely fatty"},
                                                           {"B", "scattered areas of fibroglandular density"},
                                                           {"C", "heterogeneously dense"},
                                                           {"D", "extremely dense"}};
  const auto it = words.find(c);
  return it == words.end() ? std::string() : it->second;
}

inline std::string laterality_word(const std::string& l) {
  if (l == "L" || l == "l" || l == "left" || l == "Left" || l == "LEFT") return "left";
  if (l == "R" || l == "r" || l == "right" || l == "Right" || l == "RIGHT") return "right";
  return {};
}

inline const char* birads_words(int b) {
  switch (b) {
    case 0:
      return "incomplete, needs additional imaging";
    case 1:
      return "negative";
    case 2:
      return "benign finding";
    case 3:
      return "probably benign";
    case 4:
      return "suspicious abnormality";
    case 5:
      return "highly suggestive of malignancy";
    case 6:
      return "known biopsy-proven malignancy";
    default:
      return "";
  }
}

}  // namespace detail

// TEKNOFEST metadata_image_level.json: a list of objects with patient_id,
// image_filename, relative_path, view, laterality, birads (integer or its
// decimal string), breast_composition, ... The image is
// image_root / relative_path when relative_path ends with image_filename,
// else image_root / relative_path / image_filename (relative_path missing:
// image_root / image_filename). Records whose BI-RADS category the mapping
// does not list are dropped and counted in *dropped (when given). The
// caption is composed from view, laterality, breast composition and BI-RADS.
inline std::vector<Sample> read_teknofest_metadata(const std::filesystem::path& json,
                                                   const std::filesystem::path& image_root, const BiradsMapping& m,
                                                   int64_t* dropped = nullptr) {
  constexpr const char* op = "read_teknofest_metadata";
  bool jsonl = false;
  const auto records = detail::parse_records(json, op, jsonl);
  std::vector<Sample> out;
  int64_t n_dropped = 0;
  for (const auto& [pos, rec] : records) {
    const std::string where = detail::record_where(json, jsonl, pos);
    Sample s;
    s.patient_id = detail::get_string(rec, "patient_id", op, where, true);
    const std::string filename = detail::get_string(rec, "image_filename", op, where);
    const std::string rel = detail::optional_string(rec, "relative_path", op, where);
    const std::string birads_text = detail::get_string(rec, "birads", op, where, true);
    int birads = -1;
    try {
      size_t used = 0;
      birads = std::stoi(birads_text, &used);
      if (used != birads_text.size()) birads = -1;
    } catch (const std::exception&) {
      birads = -1;
    }
    MAMCLIP_CHECK(birads >= 0 && birads <= 6, value_error, op, ": ", where, ": key \"birads\" is \"", birads_text,
                  "\"; expected a BI-RADS category 0 to 6");
    const auto cls = m.to_class.find(birads);
    if (cls == m.to_class.end()) {
      ++n_dropped;
      continue;
    }
    s.label = cls->second;
    const std::filesystem::path relp(rel);
    s.image = rel.empty()                   ? detail::join_image(image_root, filename)
              : relp.filename() == filename ? detail::join_image(image_root, rel)
                                            : detail::join_image(image_root, (relp / filename).string());
    s.id = rel.empty() ? filename : (relp.filename() == filename ? relp : relp / filename).generic_string();
    const std::string view = detail::optional_string(rec, "view", op, where);
    const std::string side = detail::laterality_word(detail::optional_string(rec, "laterality", op, where));
    const std::string comp = detail::optional_string(rec, "breast_composition", op, where);
    std::string c =
        (side.empty() ? std::string() : side + " ") + (view.empty() ? std::string() : view + " ") + "mammogram.";
    if (const std::string w = detail::composition_words(comp); !w.empty())
      c += " breast composition " + comp + ": " + w + ".";
    else if (!comp.empty())
      c += " breast composition " + comp + ".";
    c += " bi-rads " + std::to_string(birads) + ": " + detail::birads_words(birads) + ".";
    s.caption = std::move(c);
    out.push_back(std::move(s));
  }
  if (dropped) *dropped = n_dropped;
  return out;
}

namespace detail {

inline std::vector<std::string> split_csv_line(std::string line) {
  if (!line.empty() && line.back() == '\r') line.pop_back();
  std::vector<std::string> f;
  std::string cur;
  for (char ch : line) {
    if (ch == ',') {
      f.push_back(cur);
      cur.clear();
    } else {
      cur += ch;
    }
  }
  f.push_back(cur);
  return f;
}

// Rows of a headed CSV without quoting (the MIAS files have none), checked
// against the expected header.
inline std::vector<std::vector<std::string>> read_plain_csv(const std::filesystem::path& file,
                                                            const std::vector<std::string>& header, const char* op) {
  std::istringstream in(read_text_file(file, op));
  std::string line;
  MAMCLIP_CHECK(std::getline(in, line), io_error, op, ": '", file.string(), "' is empty; expected a CSV header");
  const auto got = split_csv_line(line);
  MAMCLIP_CHECK(
      got == header, io_error, op, ": '", file.string(), "' line 1 is '", line, "'; expected the header '",
      [&] {
        std::string h;
        for (size_t i = 0; i < header.size(); ++i) h += (i ? "," : "") + header[i];
        return h;
      }(),
      "'");
  std::vector<std::vector<std::string>> rows;
  for (size_t n = 2; std::getline(in, line); ++n) {
    if (line.empty() || line == "\r") continue;
    auto f = split_csv_line(line);
    MAMCLIP_CHECK(f.size() == header.size(), io_error, op, ": '", file.string(), "' line ", n, " has ", f.size(),
                  " fields; expected ", header.size());
    rows.push_back(std::move(f));
  }
  return rows;
}

// MIAS image number from "mdbNNN.png".
inline int mias_number(const std::string& file, const std::filesystem::path& csv, const char* op) {
  int n = -1;
  if (file.size() == 10 && file.rfind("mdb", 0) == 0 && file.substr(6) == ".png") {
    try {
      n = std::stoi(file.substr(3, 3));
    } catch (const std::exception&) {
      n = -1;
    }
  }
  MAMCLIP_CHECK(n >= 1, value_error, op, ": '", csv.string(), "': file name '", file, "'; expected mdbNNN.png");
  return n;
}

struct MiasFinding {
  std::string abnormality, severity, x, y, radius;
};

// One finding in words. Coordinates are in the 1024 x 1024 originals with
// the origin at the bottom-left (Info.txt note 3). The chest wall is on the
// image's left for left breasts and on its right for right breasts (as the
// images show), so x measures depth from the chest wall; y gives upper /
// lower. Inner / outer quadrants cannot be told from an MLO view, so they
// are not named.
inline std::string mias_finding_words(const MiasFinding& f, bool left_breast, const std::filesystem::path& csv,
                                      const char* op) {
  static const std::map<std::string, std::string> kind = {
      {"CALC", "calcification cluster"}, {"CIRC", "well-defined circumscribed mass"}, {"SPIC", "spiculated mass"},
      {"MISC", "ill-defined mass"},      {"ARCH", "architectural distortion"},        {"ASYM", "asymmetry"}};
  const auto k = kind.find(f.abnormality);
  MAMCLIP_CHECK(k != kind.end(), value_error, op, ": '", csv.string(), "': abnormality '", f.abnormality,
                "'; expected CALC, CIRC, SPIC, MISC, ARCH, ASYM or NORM");
  MAMCLIP_CHECK(f.severity == "B" || f.severity == "M", value_error, op, ": '", csv.string(), "': severity '",
                f.severity, "' for ", f.abnormality, "; expected B or M");
  std::string s = std::string(f.severity == "B" ? "a benign " : "a malignant ") + k->second;
  if (f.x.empty() || f.y.empty()) {
    if (f.abnormality == "CALC")
      s = std::string(f.severity == "B" ? "benign" : "malignant") +
          " calcifications widely distributed through the breast";
    return s;
  }
  double x = 0, y = 0, r = 0;
  try {
    x = std::stod(f.x), y = std::stod(f.y), r = f.radius.empty() ? 0.0 : std::stod(f.radius);
  } catch (const std::exception&) {
    throw value_error(::mamclip::detail::str_cat(op, ": '", csv.string(), "': coordinates '", f.x, "', '", f.y, "', '",
                                                 f.radius, "'; expected numbers"));
  }
  const double depth = left_breast ? x : 1024.0 - x;  // from the chest wall
  const char* vertical = y >= 1024.0 * 2 / 3 ? "upper" : (y < 1024.0 / 3 ? "lower" : "central");
  const char* where =
      depth < 1024.0 / 3 ? "near the chest wall" : (depth < 1024.0 * 2 / 3 ? "in the middle depth" : "near the nipple");
  s += std::string(" in the ") + vertical + " breast " + where;
  // 200 micron pixels in the 1024 x 1024 images.
  if (r > 0) s += ", about " + std::to_string(static_cast<int>(std::lround(r * 0.2 * 2))) + " mm across";
  return s;
}

}  // namespace detail

// mini-MIAS (the ../shared/data/mias layout: images/mdbNNN.png, labels.csv,
// image_labels.csv). Labels from image_labels.csv: normal 0, benign 1,
// malignant 2. Captions are composed from labels.csv: background tissue
// (F fatty, G fatty-glandular, D dense-glandular), each finding's class,
// severity and position, and the side. Info.txt note 1: films come in pairs
// of one patient, even numbers the left breast and odd numbers the right
// (mdb001 right + mdb002 left = one patient), which the images confirm (the
// breast lies on the side of its chest wall). So patient_id = "mias-" + the
// pair number (1..161) and the side is named. id = "mdbNNN".
inline std::vector<Sample> read_mias(const std::filesystem::path& mias_dir) {
  constexpr const char* op = "read_mias";
  MAMCLIP_CHECK(std::filesystem::is_directory(mias_dir), io_error, op, ": '", mias_dir.string(),
                "' is not a directory (expected the mini-MIAS folder with labels.csv, image_labels.csv, images/)");
  const auto labels_csv = mias_dir / "labels.csv", images_csv = mias_dir / "image_labels.csv";
  const auto findings =
      detail::read_plain_csv(labels_csv, {"file", "tissue", "abnormality", "severity", "x", "y", "radius"}, op);
  const auto images =
      detail::read_plain_csv(images_csv, {"file", "tissue", "label", "abnormalities", "n_findings"}, op);
  std::unordered_map<std::string, std::vector<detail::MiasFinding>> by_file;
  for (const auto& f : findings)
    if (f[2] != "NORM") by_file[f[0]].push_back({f[2], f[3], f[4], f[5], f[6]});
  static const std::map<std::string, std::string> tissue = {
      {"F", "fatty"}, {"G", "fatty-glandular"}, {"D", "dense-glandular"}};
  static const std::map<std::string, int64_t> label_of = {{"normal", 0}, {"benign", 1}, {"malignant", 2}};
  std::vector<Sample> out;
  out.reserve(images.size());
  for (const auto& row : images) {
    const int n = detail::mias_number(row[0], images_csv, op);
    const auto t = tissue.find(row[1]);
    MAMCLIP_CHECK(t != tissue.end(), value_error, op, ": '", images_csv.string(), "': tissue '", row[1], "' for ",
                  row[0], "; expected F, G or D");
    const auto l = label_of.find(row[2]);
    MAMCLIP_CHECK(l != label_of.end(), value_error, op, ": '", images_csv.string(), "': label '", row[2], "' for ",
                  row[0], "; expected normal, benign or malignant");
    const bool left = n % 2 == 0;
    Sample s;
    s.id = row[0].substr(0, 6);
    s.image = mias_dir / "images" / row[0];
    s.label = l->second;
    s.patient_id = "mias-" + std::to_string((n + 1) / 2);
    std::string c = std::string("mammogram of the ") + (left ? "left" : "right") + " breast with " + t->second +
                    " background tissue";
    const auto it = by_file.find(row[0]);
    MAMCLIP_CHECK((it == by_file.end()) == (l->second == 0), value_error, op, ": '", images_csv.string(), "': ", row[0],
                  " is labelled ", row[2], " but labels.csv lists ",
                  it == by_file.end() ? std::size_t{0} : it->second.size(), " abnormal findings for it");
    if (it == by_file.end()) {
      c += ". no abnormality is seen.";
    } else {
      for (size_t i = 0; i < it->second.size(); ++i)
        c += (i == 0 ? ". there is " : "; and ") + detail::mias_finding_words(it->second[i], left, labels_csv, op);
      c += ".";
    }
    s.caption = std::move(c);
    out.push_back(std::move(s));
  }
  return out;
}

struct Split {
  std::vector<Sample> train, val, test;
};

// Patients (patient_id, or id when patient_id is empty) are shuffled with
// `seed`; the first round(test_fraction * P) go to test, the next
// round(val_fraction * P) to val, the rest to train. Fractions count
// patients, not images. Each split keeps the input order of its samples.
inline Split patient_split(const std::vector<Sample>& samples, double val_fraction, double test_fraction,
                           uint64_t seed) {
  MAMCLIP_CHECK(val_fraction >= 0 && test_fraction >= 0 && val_fraction + test_fraction <= 1, value_error,
                "patient_split: val_fraction ", val_fraction, " and test_fraction ", test_fraction,
                "; expected both >= 0 with a sum <= 1");
  std::unordered_map<std::string, int64_t> patient_index;
  std::vector<int64_t> patient_of(samples.size());
  for (size_t i = 0; i < samples.size(); ++i) {
    const std::string& key = samples[i].patient_id.empty() ? samples[i].id : samples[i].patient_id;
    const auto [it, fresh] = patient_index.emplace(key, static_cast<int64_t>(patient_index.size()));
    patient_of[i] = it->second;
  }
  const int64_t p = static_cast<int64_t>(patient_index.size());
  const int64_t n_test = std::llround(test_fraction * static_cast<double>(p));
  const int64_t n_val = std::min(p - n_test, static_cast<int64_t>(std::llround(val_fraction * static_cast<double>(p))));
  const std::vector<int64_t> perm = detail::seeded_permutation(p, detail::mix_keys(seed, 0x53504C4954ull), 0);
  std::vector<int> where(static_cast<size_t>(p));  // 0 train, 1 val, 2 test
  for (int64_t k = 0; k < p; ++k)
    where[static_cast<size_t>(perm[static_cast<size_t>(k)])] = k < n_test ? 2 : (k < n_test + n_val ? 1 : 0);
  Split s;
  for (size_t i = 0; i < samples.size(); ++i) {
    const int w = where[static_cast<size_t>(patient_of[i])];
    (w == 0 ? s.train : (w == 1 ? s.val : s.test)).push_back(samples[i]);
  }
  return s;
}

// n of the labelled samples (label >= 0), drawn with `seed`, with per-class
// counts proportional to the labelled set's (largest remainders, ties to the
// smaller class index). Unlabelled samples are never chosen. The result keeps
// the input order.
inline std::vector<Sample> stratified_subset(const std::vector<Sample>& samples, int64_t n, uint64_t seed) {
  std::map<int64_t, std::vector<size_t>> by_class;
  for (size_t i = 0; i < samples.size(); ++i)
    if (samples[i].label >= 0) by_class[samples[i].label].push_back(i);
  int64_t labelled = 0;
  for (const auto& [c, v] : by_class) labelled += static_cast<int64_t>(v.size());
  MAMCLIP_CHECK(n >= 0 && n <= labelled, value_error, "stratified_subset: n is ", n, " but there are ", labelled,
                " labelled samples (of ", samples.size(), "); expected 0 <= n <= ", labelled);
  // Quota per class: floor(n * count / labelled), then the remaining units to
  // the largest fractional parts.
  std::vector<std::pair<int64_t, std::vector<size_t>*>> classes;
  for (auto& [c, v] : by_class) classes.emplace_back(c, &v);
  std::vector<int64_t> quota(classes.size());
  std::vector<std::pair<int64_t, size_t>> remainder;  // (-(n * count mod labelled), class position)
  int64_t given = 0;
  for (size_t k = 0; k < classes.size(); ++k) {
    const int64_t count = static_cast<int64_t>(classes[k].second->size());
    quota[k] = n * count / labelled;
    given += quota[k];
    remainder.emplace_back(-(n * count % labelled), k);
  }
  std::sort(remainder.begin(), remainder.end());
  for (size_t r = 0; given < n; ++r, ++given) ++quota[remainder[r].second];
  std::vector<char> chosen(samples.size(), 0);
  const uint64_t key = detail::mix_keys(seed, 0x5354524154ull);
  for (size_t k = 0; k < classes.size(); ++k) {
    const auto& members = *classes[k].second;
    const auto perm =
        detail::seeded_permutation(static_cast<int64_t>(members.size()), key, static_cast<uint64_t>(classes[k].first));
    for (int64_t j = 0; j < quota[k]; ++j) chosen[members[static_cast<size_t>(perm[static_cast<size_t>(j)])]] = 1;
  }
  std::vector<Sample> out;
  out.reserve(static_cast<size_t>(n));
  for (size_t i = 0; i < samples.size(); ++i)
    if (chosen[i]) out.push_back(samples[i]);
  return out;
}

}  // namespace mamclip::data
