// data/datasets.hpp, synthetic.hpp and loader.hpp: the readers on small
// temporary files (and their error messages), mini-MIAS when
// MAMCLIP_SHARED_DATA has it, the synthetic set, splits and subsets, and the
// loader's determinism across worker counts, exact resume and unreadable images.

#include <chrono>
#include <filesystem>
#include <map>
#include <set>

#include "mamclip/data/data.hpp"
#include "support/test_support.hpp"

namespace test_datasets {
using namespace mamclip;
using test::files::TempDir;
using test::files::write_file;
namespace fs = std::filesystem;

namespace {

std::vector<data::Sample> labelled(const std::vector<std::pair<std::string, int64_t>>& patient_label) {
  std::vector<data::Sample> out;
  for (size_t i = 0; i < patient_label.size(); ++i) {
    data::Sample s;
    s.id = "img" + std::to_string(i);
    s.image = s.id + ".png";
    s.patient_id = patient_label[i].first;
    s.label = patient_label[i].second;
    out.push_back(s);
  }
  return out;
}

data::LoaderOptions loader_options(int64_t batch_size, int64_t height, int64_t width) {
  data::LoaderOptions o;
  o.batch_size = batch_size;
  o.height = height;
  o.width = width;
  return o;
}

// Every batch of one epoch.
std::vector<data::Batch> epoch_batches(data::Loader& loader, int64_t epoch, int64_t skip = 0) {
  loader.start_epoch(epoch, skip);
  std::vector<data::Batch> out;
  while (auto b = loader.next()) out.push_back(std::move(*b));
  return out;
}

void require_same_batches(const std::vector<data::Batch>& a, const std::vector<data::Batch>& b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    INFO("batch " << i);
    REQUIRE(a[i].indices == b[i].indices);
    REQUIRE(a[i].captions == b[i].captions);
    REQUIRE(a[i].labels.to_vector() == b[i].labels.to_vector());
    REQUIRE(a[i].images.shape() == b[i].images.shape());
    REQUIRE(a[i].images.to_vector() == b[i].images.to_vector());  // bit-identical
  }
}

// next() throws io_error containing `part` (once: next() consumes the batch).
void require_next_throws(data::Loader& loader, const std::string& part) {
  try {
    loader.next();
  } catch (const io_error& e) {
    CHECK_THAT(e.what(), Catch::Matchers::Contains(part));
    return;
  }
  FAIL("next() did not throw io_error");
}

}  // namespace

TEST_CASE("read_caption_records: JSON list and JSONL, paths under the image root") {
  TempDir dir("captions");
  write_file(dir / "a.json",
             R"([{"image": "x/1.png", "caption": "dense breast", "patient_id": 7, "label": 2, "extra": true},
                 {"image": "/abs/2.png", "caption": "fatty"}])");
  write_file(dir / "b.jsonl",
             "{\"image\": \"1.png\", \"caption\": \"c1\", \"patient_id\": \"p1\"}\n\n{\"image\": \"2.png\", "
             "\"caption\": \"c2\", \"label\": 0}\n");
  const auto a = data::read_caption_records(dir / "a.json", "/root");
  REQUIRE(a.size() == 2);
  CHECK(a[0].image == fs::path("/root/x/1.png"));
  CHECK(a[0].caption == "dense breast");
  CHECK(a[0].patient_id == "7");
  CHECK(a[0].label == 2);
  CHECK(a[0].id == "x/1.png");
  CHECK(a[1].image == fs::path("/abs/2.png"));
  CHECK(a[1].label == -1);
  CHECK(a[1].patient_id.empty());
  const auto b = data::read_caption_records(dir / "b.jsonl", dir.path());
  REQUIRE(b.size() == 2);
  CHECK(b[0].image == dir / "1.png");
  CHECK(b[0].patient_id == "p1");
  CHECK(b[1].caption == "c2");
  CHECK(b[1].label == 0);
  write_file(dir / "empty.jsonl", "\n  \n");
  CHECK(data::read_caption_records(dir / "empty.jsonl", "/").empty());
}

TEST_CASE("read_caption_records: errors name the file, the line or record, and the key") {
  TempDir dir("captions_err");
  const std::string jl = dir.file("bad.jsonl"), js = dir.file("bad.json");
  write_file(jl, "{\"image\": \"1.png\", \"caption\": \"c\"}\n\n{\"image\": \"2.png\"}\n");
  MAMCLIP_REQUIRE_THROWS_WITH(data::read_caption_records(jl, "/"), value_error,
                              "read_caption_records: '" + jl + "' line 3 has no key \"caption\"");
  write_file(js, R"([{"image": "1.png", "caption": "c"}, {"caption": "d"}])");
  MAMCLIP_REQUIRE_THROWS_WITH(data::read_caption_records(js, "/"), value_error,
                              "'" + js + "' record 1 has no key \"image\"");
  write_file(js, R"([{"image": 3, "caption": "c"}])");
  MAMCLIP_REQUIRE_THROWS_WITH(data::read_caption_records(js, "/"), value_error,
                              "record 0: key \"image\" is a JSON number; expected a string");
  write_file(js, R"([{"image": "a.png", "caption": "c", "label": -1}])");
  MAMCLIP_REQUIRE_THROWS_WITH(data::read_caption_records(js, "/"), value_error,
                              "key \"label\" is -1; expected an integer >= 0");
  write_file(js, R"([7])");
  MAMCLIP_REQUIRE_THROWS_WITH(data::read_caption_records(js, "/"), value_error,
                              "record 0 is a JSON number; expected an object");
  write_file(jl, "{\"image\": \"1.png\", \"caption\": \"c\"}\n{\"image\": \n");
  MAMCLIP_REQUIRE_THROWS_WITH(data::read_caption_records(jl, "/"), io_error, "'" + jl + "' line 2 is not valid JSON");
  write_file(js, "[{\"image\": ");
  MAMCLIP_REQUIRE_THROWS_WITH(data::read_caption_records(js, "/"), io_error, "'" + js + "' is not valid JSON");
  MAMCLIP_REQUIRE_THROWS_WITH(data::read_caption_records(dir / "missing.json", "/"), io_error,
                              "read_caption_records: cannot open '" + dir.file("missing.json") + "'");
}

TEST_CASE("read_teknofest_metadata: BI-RADS mapping, dropped records, paths and captions") {
  TempDir dir("tekno");
  write_file(dir / "metadata_image_level.json", R"([
    {"patient_id": "P1", "image_filename": "a.png", "relative_path": "P1/a.png", "view": "CC", "laterality": "L",
     "birads": 1, "breast_composition": "B"},
    {"patient_id": "P1", "image_filename": "b.png", "relative_path": "P1", "view": "MLO", "laterality": "R",
     "birads": 0, "breast_composition": "B"},
    {"patient_id": 2, "image_filename": "c.png", "relative_path": "P2", "view": "MLO", "laterality": "R",
     "birads": "2", "breast_composition": "D"},
    {"patient_id": "P3", "image_filename": "d.png", "view": "CC", "laterality": "L", "birads": 4},
    {"patient_id": "P3", "image_filename": "e.png", "relative_path": "P3/e.png", "birads": 5}
  ])");
  int64_t dropped = -1;
  const auto m = data::BiradsMapping::default_3class();
  CHECK(m.class_names == std::vector<std::string>{"normal", "benign", "suspicious"});
  const auto s = data::read_teknofest_metadata(dir / "metadata_image_level.json", "/img", m, &dropped);
  CHECK(dropped == 1);
  REQUIRE(s.size() == 4);
  CHECK(s[0].image == fs::path("/img/P1/a.png"));
  CHECK(s[1].image == fs::path("/img/P2/c.png"));
  CHECK(s[2].image == fs::path("/img/d.png"));
  CHECK(s[0].label == 0);
  CHECK(s[1].label == 1);
  CHECK(s[2].label == 2);
  CHECK(s[3].label == 2);
  CHECK(s[1].patient_id == "2");
  CHECK(s[0].caption ==
        "left CC mammogram. breast composition B: scattered areas of fibroglandular density. "
        "bi-rads 1: negative.");
  CHECK(s[1].caption.find("right MLO mammogram. breast composition D: extremely dense.") == 0);
  CHECK(s[3].caption == "mammogram. bi-rads 5: highly suggestive of malignancy.");
  // A custom mapping keeps BI-RADS 0 and drops the others.
  data::BiradsMapping only0{{{0, 0}}, {"incomplete"}};
  CHECK(data::read_teknofest_metadata(dir / "metadata_image_level.json", "/img", only0).size() == 1);

  const std::string bad = dir.file("bad.json");
  write_file(bad, R"([{"patient_id": "P", "image_filename": "a.png", "birads": "4a"}])");
  MAMCLIP_REQUIRE_THROWS_WITH(data::read_teknofest_metadata(bad, "/", m), value_error,
                              "'" + bad + "' record 0: key \"birads\" is \"4a\"; expected a BI-RADS category 0 to 6");
  write_file(bad, R"([{"patient_id": "P", "image_filename": "a.png", "birads": 1}, {"image_filename": "b.png"}])");
  MAMCLIP_REQUIRE_THROWS_WITH(data::read_teknofest_metadata(bad, "/", m), value_error,
                              "read_teknofest_metadata: '" + bad + "' record 1 has no key \"patient_id\"");
}

TEST_CASE("read_mias: the real mini-MIAS labels, patients and composed captions") {
  const fs::path dir = fs::path(MAMCLIP_SHARED_DATA) / "mias";
  if (!fs::exists(dir / "image_labels.csv")) {
    WARN("SKIPPED: " << dir.string() << " is absent (set MAMCLIP_SHARED_DATA to the shared data folder)");
    return;
  }
  const auto s = data::read_mias(dir);
  REQUIRE(s.size() == 322);
  std::map<int64_t, int> count;
  std::set<std::string> patients;
  for (const auto& x : s) {
    ++count[x.label];
    patients.insert(x.patient_id);
    REQUIRE(fs::exists(x.image));
  }
  CHECK(count[0] == 207);
  CHECK(count[1] == 63);
  CHECK(count[2] == 52);
  CHECK(patients.size() == 161);
  CHECK(s[0].id == "mdb001");
  CHECK(s[0].patient_id == s[1].patient_id);
  CHECK(s[1].patient_id != s[2].patient_id);
  // mdb001: G, CIRC B at x 535, y 425 (bottom-left origin), radius 197; odd = right breast.
  CHECK(s[0].caption ==
        "mammogram of the right breast with fatty-glandular background tissue. there is a benign well-defined "
        "circumscribed mass in the central breast in the middle depth, about 79 mm across.");
  CHECK(s[3].caption == "mammogram of the left breast with dense-glandular background tissue. no abnormality is seen.");
  const auto find = [&](const std::string& id) {
    for (const auto& x : s)
      if (x.id == id) return x;
    FAIL("no " << id);
    return data::Sample{};
  };
  // mdb216: D CALC M without coordinates.
  CHECK(find("mdb216").caption.find("malignant calcifications widely distributed through the breast") !=
        std::string::npos);
  CHECK(find("mdb216").label == 2);
  // mdb005: two findings.
  CHECK(find("mdb005").caption.find("; and a benign well-defined circumscribed mass") != std::string::npos);

  MAMCLIP_REQUIRE_THROWS_WITH(data::read_mias(dir / "nowhere"), io_error, "is not a directory");
  TempDir tmp("mias_bad");
  write_file(tmp / "labels.csv", "file,tissue,abnormality,severity,x,y,radius\n");
  write_file(tmp / "image_labels.csv", "file,tissue,label\n");
  MAMCLIP_REQUIRE_THROWS_WITH(data::read_mias(tmp.path()), io_error,
                              "image_labels.csv' line 1 is 'file,tissue,label'; expected the header "
                              "'file,tissue,label,abnormalities,n_findings'");
}

TEST_CASE("make_synthetic_set: deterministic, balanced, captioned, clearly synthetic") {
  TempDir a("synth_a"), b("synth_b"), c("synth_c");
  const auto t0 = std::chrono::steady_clock::now();
  const auto s = data::make_synthetic_set(a.path(), 150, 128, 96, 11);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  INFO("150 images of 128 x 96 in " << seconds << " s");
  CHECK(seconds < 10.0);  // well under 1 s in a Release build; sanitizer builds are slower
  REQUIRE(s.size() == 150);
  std::map<int64_t, int> count;
  std::set<std::string> patients;
  for (const auto& x : s) {
    ++count[x.label];
    patients.insert(x.patient_id);
    CHECK(x.caption.rfind("synthetic ", 0) == 0);
    CHECK(x.caption.find("densit") != std::string::npos);
    if (x.label == 0)
      CHECK((x.caption.find("circumscribed") == std::string::npos && x.caption.find("spicul") == std::string::npos));
    if (x.label == 1) CHECK(x.caption.find("circumscribed mass") != std::string::npos);
    if (x.label == 2)
      CHECK((x.caption.find("spiculated") != std::string::npos ||
             x.caption.find("microcalcifications") != std::string::npos));
  }
  CHECK(count == std::map<int64_t, int>{{0, 50}, {1, 50}, {2, 50}});
  CHECK(patients.size() == 75);
  // Classes are not simply i % 3.
  bool cyclic = true;
  for (size_t i = 0; i < s.size(); ++i) cyclic = cyclic && s[i].label == static_cast<int64_t>(i % 3);
  CHECK_FALSE(cyclic);
  const auto img = io::read_image(s[0].image);
  CHECK(img.pixels.shape() == Shape{1, 128, 96});
  CHECK(test::files::read_file(a / "README.txt").find("SYNTHETIC DATA -- NOT REAL MAMMOGRAMS") == 0);
  // captions.jsonl reads back through read_caption_records.
  const auto back = data::read_caption_records(a / "captions.jsonl", a.path());
  REQUIRE(back.size() == s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    CHECK(back[i].image == s[i].image);
    CHECK(back[i].caption == s[i].caption);
    CHECK(back[i].label == s[i].label);
    CHECK(back[i].patient_id == s[i].patient_id);
  }
  // Same seed: the same bytes; another seed: other images.
  const auto s2 = data::make_synthetic_set(b.path(), 12, 128, 96, 11);
  const auto s3 = data::make_synthetic_set(c.path(), 12, 128, 96, 12);
  const auto s4 = data::make_synthetic_set(c / "again", 12, 128, 96, 11);
  int differ = 0;
  for (size_t i = 0; i < 12; ++i) {
    CHECK(test::files::read_bytes(s2[i].image) == test::files::read_bytes(s4[i].image));
    CHECK(s2[i].caption == s4[i].caption);
    differ += test::files::read_bytes(s2[i].image) != test::files::read_bytes(s3[i].image);
  }
  CHECK(differ == 12);
  MAMCLIP_REQUIRE_THROWS_WITH(data::make_synthetic_set(a.path(), 3, 16, 96, 0), value_error,
                              "make_synthetic_set: image size 16 x 96; expected at least 32 x 32");
}

TEST_CASE("patient_split: no patient in two splits, seeded, fractions of patients") {
  std::vector<std::pair<std::string, int64_t>> pl;
  for (int p = 0; p < 40; ++p)
    for (int k = 0; k < 1 + p % 3; ++k) pl.emplace_back("p" + std::to_string(p), p % 3);
  pl.emplace_back("", 0);  // its own patient (by id)
  pl.emplace_back("", 1);
  const auto samples = labelled(pl);
  const auto split = data::patient_split(samples, 0.2, 0.1, 5);
  auto patients = [](const std::vector<data::Sample>& v) {
    std::set<std::string> out;
    for (const auto& s : v) out.insert(s.patient_id.empty() ? s.id : s.patient_id);
    return out;
  };
  const auto tr = patients(split.train), va = patients(split.val), te = patients(split.test);
  CHECK(split.train.size() + split.val.size() + split.test.size() == samples.size());
  for (const auto& p : va) CHECK((tr.count(p) == 0 && te.count(p) == 0));
  for (const auto& p : te) CHECK(tr.count(p) == 0);
  CHECK(te.size() == 4);  // round(0.1 * 42)
  CHECK(va.size() == 8);  // round(0.2 * 42)
  CHECK(tr.size() == 30);
  const auto again = data::patient_split(samples, 0.2, 0.1, 5);
  CHECK(patients(again.test) == te);
  CHECK(patients(again.val) == va);
  const auto other = data::patient_split(samples, 0.2, 0.1, 6);
  CHECK(patients(other.test) != te);
  const auto all_train = data::patient_split(samples, 0, 0, 1);
  CHECK(all_train.train.size() == samples.size());
  MAMCLIP_REQUIRE_THROWS_WITH(
      data::patient_split(samples, 0.6, 0.5, 0), value_error,
      "patient_split: val_fraction 0.6 and test_fraction 0.5; expected both >= 0 with a sum <= 1");
}

TEST_CASE("stratified_subset: class proportions, seeded, only labelled samples") {
  std::vector<std::pair<std::string, int64_t>> pl;
  for (int i = 0; i < 60; ++i) pl.emplace_back("", 0);
  for (int i = 0; i < 30; ++i) pl.emplace_back("", 1);
  for (int i = 0; i < 10; ++i) pl.emplace_back("", 2);
  for (int i = 0; i < 7; ++i) pl.emplace_back("", -1);
  const auto samples = labelled(pl);
  const auto sub = data::stratified_subset(samples, 20, 3);
  REQUIRE(sub.size() == 20);
  std::map<int64_t, int> count;
  for (const auto& s : sub) ++count[s.label];
  CHECK(count == std::map<int64_t, int>{{0, 12}, {1, 6}, {2, 2}});
  // 7 of 100: quotas 4.2, 2.1, 0.7 -> 4, 2, 1.
  count.clear();
  for (const auto& s : data::stratified_subset(samples, 7, 3)) ++count[s.label];
  CHECK(count == std::map<int64_t, int>{{0, 4}, {1, 2}, {2, 1}});
  auto ids = [](const std::vector<data::Sample>& v) {
    std::vector<std::string> out;
    for (const auto& s : v) out.push_back(s.id);
    return out;
  };
  CHECK(ids(data::stratified_subset(samples, 20, 3)) == ids(sub));
  CHECK(ids(data::stratified_subset(samples, 20, 4)) != ids(sub));
  CHECK(data::stratified_subset(samples, 100, 0).size() == 100);
  MAMCLIP_REQUIRE_THROWS_WITH(data::stratified_subset(samples, 101, 0), value_error,
                              "stratified_subset: n is 101 but there are 100 labelled samples (of 107); expected 0 "
                              "<= n <= 100");
}

TEST_CASE("Loader: batches are bit-identical for 0, 1 and 3 workers; epochs differ; exact resume") {
  TempDir dir("loader");
  const auto samples = data::make_synthetic_set(dir.path(), 14, 40, 36, 2);
  data::LoaderOptions o = loader_options(4, 34, 30);
  o.seed = 9;
  o.augmentation = "heavy";
  o.workers = 1;
  data::Loader one(samples, o);
  CHECK(one.batches_per_epoch() == 4);
  const auto ref = epoch_batches(one, 0);
  REQUIRE(ref.size() == 4);
  CHECK(ref[3].images.shape() == Shape{2, 3, 34, 30});
  std::vector<int64_t> seen;
  for (const auto& b : ref) {
    seen.insert(seen.end(), b.indices.begin(), b.indices.end());
    const auto v = b.images.to_vector();
    CHECK(*std::min_element(v.begin(), v.end()) == 0.f);
    CHECK(*std::max_element(v.begin(), v.end()) <= 1.f);
    for (size_t i = 0; i < b.indices.size(); ++i) {
      CHECK(b.labels.to_vector()[i] == samples[static_cast<size_t>(b.indices[i])].label);
      CHECK(b.captions[i] == samples[static_cast<size_t>(b.indices[i])].caption);
    }
  }
  std::vector<int64_t> sorted = seen;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 14; ++i) CHECK(sorted[static_cast<size_t>(i)] == i);
  CHECK(seen != sorted);  // shuffled

  o.workers = 3;
  o.prefetch = 1;
  data::Loader three(samples, o);
  require_same_batches(epoch_batches(three, 0), ref);
  o.workers = 0;
  data::Loader inline_loader(samples, o);
  require_same_batches(epoch_batches(inline_loader, 0), ref);

  // Another epoch: another order and other augmentations.
  const auto e1 = epoch_batches(three, 1);
  CHECK(e1[0].indices != ref[0].indices);
  // Resume inside epoch 1 at batch 2 == batches 2, 3 of the uninterrupted epoch.
  const auto resumed = epoch_batches(one, 1, 2);
  require_same_batches(resumed, {e1[2], e1[3]});
  CHECK(epoch_batches(one, 1, 4).empty());
  MAMCLIP_REQUIRE_THROWS_WITH(one.start_epoch(1, 5), value_error,
                              "Loader::start_epoch: skip_batches is 5; expected 0 to 4 (batches per epoch)");

  // No shuffle, drop_last; next() before start_epoch runs epoch 0.
  o.shuffle = false;
  o.drop_last = true;
  o.augmentation = "none";
  data::Loader plain(samples, o);
  CHECK(plain.batches_per_epoch() == 3);
  auto first = plain.next();
  REQUIRE(first);
  CHECK(first->indices == std::vector<int64_t>{0, 1, 2, 3});
  o.augmentation = "strong";
  MAMCLIP_REQUIRE_THROWS_WITH(data::Loader(samples, o), value_error,
                              "Loader: augmentation is \"strong\"; expected \"none\", \"soft\" or \"heavy\"");
}

TEST_CASE("Loader: an unreadable image is an error naming the sample, or skipped and counted") {
  TempDir dir("loader_bad");
  auto samples = data::make_synthetic_set(dir.path(), 9, 32, 32, 4);
  samples[4].image = dir / "missing.png";
  write_file(dir / "garbage.png", "not an image at all");
  samples[7].image = dir / "garbage.png";
  data::LoaderOptions o = loader_options(3, 32, 32);
  o.shuffle = false;
  for (int workers : {0, 2}) {
    INFO("workers " << workers);
    o.workers = workers;
    o.skip_unreadable = false;
    data::Loader strict(samples, o);
    strict.start_epoch(0);
    REQUIRE(strict.next());
    require_next_throws(strict, "Loader: sample 4 ('" + (dir / "missing.png").string() + "'): ");
    // The failed batch is consumed; the next one fails on the garbage file.
    require_next_throws(strict, "Loader: sample 7 ('" + (dir / "garbage.png").string() + "'): decode_image:");
    CHECK_FALSE(strict.next());

    o.skip_unreadable = true;
    data::Loader lenient(samples, o);
    const auto batches = epoch_batches(lenient, 0);
    REQUIRE(batches.size() == 3);
    CHECK(batches[1].indices == std::vector<int64_t>{3, 5});
    CHECK(batches[1].images.shape() == Shape{2, 3, 32, 32});
    CHECK(batches[2].indices == std::vector<int64_t>{6, 8});
    CHECK(lenient.skipped() == 2);
  }
}

TEST_CASE("Loader: destroyed mid-epoch or before starting, it stops its workers") {
  TempDir dir("loader_stop");
  const auto samples = data::make_synthetic_set(dir.path(), 24, 48, 40, 1);
  data::LoaderOptions o = loader_options(2, 48, 40);
  o.workers = 3;
  o.prefetch = 2;
  o.augmentation = "heavy";
  {
    data::Loader l(samples, o);
    l.start_epoch(0);
    REQUIRE(l.next());
  }
  {
    data::Loader l(samples, o);
    l.start_epoch(0);
    l.start_epoch(2, 3);  // restarts while workers are busy
    auto b = l.next();
    REQUIRE(b);
  }
  { data::Loader l(samples, o); }
  data::Loader empty_loader({}, o);
  CHECK(empty_loader.batches_per_epoch() == 0);
  CHECK_FALSE(empty_loader.next());
}

}  // namespace test_datasets
