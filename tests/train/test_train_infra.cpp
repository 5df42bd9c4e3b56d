// Training infrastructure: atomic writes, training-state checkpoints (exact
// resume, crash safety under SIGKILL, strict typed errors), metric logs,
// progress lines, and raster plots decoded back from their PNGs.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <set>
#include <sstream>
#include <thread>

#include "mamclip/train/checkpoint.hpp"
#include "mamclip/train/log.hpp"
#include "mamclip/train/plot.hpp"
#include "support/test_support.hpp"

namespace test_train_infra {
using namespace mamclip;
using namespace mamclip::test;
using namespace mamclip::train;
using files::TempDir;
namespace fs = std::filesystem;

namespace {

// Parameters in two children plus a persistent buffer, sizes not multiples of 8.
struct TinyNet : nn::Module {
  std::shared_ptr<nn::Linear> fc1, fc2;
  explicit TinyNet(uint64_t seed, int64_t in = 5, int64_t hidden = 7) {
    Generator gen(seed);
    fc1 = register_module("fc1", std::make_shared<nn::Linear>(in, hidden, true, gen));
    fc2 = register_module("fc2", std::make_shared<nn::Linear>(hidden, 3, false, gen));
    register_buffer("running", uniform_random<float>({3}, seed + 7, -1, 1));
  }
  std::string type_name() const override { return "TinyNet"; }
  Tensor<float> forward(const Tensor<float>& x) { return (*fc2)(tanh((*fc1)(x))); }
};

// fc1 in a plain group, fc2 in an amsgrad group, so both state layouts are saved.
std::unique_ptr<optim::AdamW> make_adamw(TinyNet& m, double lr = 1e-2, double wd = 0.05) {
  std::vector<optim::ParamGroup<optim::AdamWOptions>> groups(2);
  groups[0].params = m.fc1->parameters();
  groups[0].options.lr = lr;
  groups[0].options.weight_decay = wd;
  groups[1].params = m.fc2->parameters();
  groups[1].options.lr = lr / 2;
  groups[1].options.amsgrad = true;
  return std::make_unique<optim::AdamW>(std::move(groups));
}

// One step on a batch drawn from `data` (so the data stream is part of the state).
void train_step(TinyNet& m, optim::AdamW& opt, optim::LRScheduler& sched, Generator& data) {
  Tensor<float> x = empty<float>({4, 5});
  uniform_(x, -1.0, 1.0, data);
  Tensor<float> y = empty<float>({4, 3});
  uniform_(y, -1.0, 1.0, data);
  opt.zero_grad();
  mse_loss(m.forward(x), y).backward();
  opt.step();
  sched.step();
}

std::vector<std::vector<float>> snapshot(const TinyNet& m) {
  std::vector<std::vector<float>> out;
  for (const auto& [name, t] : m.state_dict()) out.push_back(t.to_vector());
  return out;
}

std::vector<std::string> tmp_leftovers(const fs::path& dir, const std::string& name) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string f = e.path().filename().string();
    if (f.rfind(name + ".tmp-", 0) == 0) out.push_back(f);
  }
  return out;
}

double lr_factor(int64_t s) { return 1.0 / (1.0 + 0.3 * static_cast<double>(s)); }

TrainingMeta sample_meta() {
  TrainingMeta meta;
  meta.epoch = 2;
  meta.batch_in_epoch = 17;
  meta.global_step = 123;
  meta.scheduler_step = 3;
  meta.best_metric = 0.8125;
  meta.generators["data"] = {0x8000000000000005ull, 42};
  meta.generators["dropout"] = {7, 0};
  meta.config = {{"lr", 1e-4}, {"model", {{"embed_dim", 64}}}};
  meta.extra = {{"note", "x"}};
  return meta;
}

}  // namespace

TEST_CASE("atomic_write replaces the file whole, and a failed write leaves the old one and no temporary") {
  TempDir dir("atomic");
  const fs::path p = dir / "a.txt";
  atomic_write(p, [](std::ostream& os) { os << "first"; });
  REQUIRE(files::read_file(p) == "first");
  const std::string big(3u << 20, 'z');  // bigger than the stream's buffer
  atomic_write(p, [&](std::ostream& os) { os << big << "!"; });
  REQUIRE(files::read_file(p) == big + "!");
  REQUIRE_THROWS_AS(atomic_write(p,
                                 [](std::ostream& os) {
                                   os << "partial";
                                   throw std::runtime_error("boom");
                                 }),
                    std::runtime_error);
  REQUIRE(files::read_file(p) == big + "!");
  REQUIRE(tmp_leftovers(dir.path(), "a.txt").empty());
  const std::vector<uint8_t> bytes = {1, 2, 3, 0, 255};
  atomic_write(p, std::span<const uint8_t>(bytes));
  REQUIRE(files::read_bytes(p) == bytes);
  MAMCLIP_REQUIRE_THROWS_WITH(atomic_write(dir / "missing_dir" / "b.txt", [](std::ostream& os) { os << 1; }),
                              io_error, "cannot create a temporary file");
}

TEST_CASE("TrainingMeta round-trips through JSON, and from_json names missing and bad keys") {
  const TrainingMeta m = sample_meta();
  const TrainingMeta r = TrainingMeta::from_json(nlohmann::json::parse(m.to_json().dump()), "w");
  CHECK(r.epoch == 2);
  CHECK(r.batch_in_epoch == 17);
  CHECK(r.global_step == 123);
  CHECK(r.scheduler_step == 3);
  CHECK(r.best_metric == 0.8125);
  CHECK(r.generators == m.generators);
  CHECK(r.config == m.config);
  CHECK(r.extra == m.extra);
  TrainingMeta none;
  CHECK(std::isnan(TrainingMeta::from_json(none.to_json(), "w").best_metric));
  auto j = m.to_json();
  j.erase("global_step");
  MAMCLIP_REQUIRE_THROWS_WITH(TrainingMeta::from_json(j, "file.st"), io_error,
                              "file.st: the training meta has no key 'global_step'");
  j = m.to_json();
  j["generators"]["data"] = {{"seed", -1}, {"offset", 0}};
  MAMCLIP_REQUIRE_THROWS_WITH(TrainingMeta::from_json(j, "file.st"), io_error, "file.st: generator 'data' is");
  Generator g(5);
  g.next_offset();
  const GeneratorState s = GeneratorState::of(g);
  Generator h(99);
  s.apply_to(h);
  CHECK(h.seed() == 5);
  CHECK(h.offset() == 1);
}

TEST_CASE("save/load_training_state resumes bit for bit: parameters, AdamW state, scheduler and data stream") {
  TempDir dir("resume");
  const fs::path ckpt = dir / "state.safetensors";
  TinyNet a(1);
  auto opt_a = make_adamw(a);
  optim::LambdaLR sched_a(*opt_a, lr_factor);
  Generator data_a(42);
  for (int i = 0; i < 3; ++i) train_step(a, *opt_a, sched_a, data_a);
  TrainingMeta meta = sample_meta();
  meta.scheduler_step = sched_a.last_step();
  meta.global_step = 3;
  meta.generators = {{"data", GeneratorState::of(data_a)}};
  save_training_state(ckpt, a, *opt_a, meta);
  std::vector<std::vector<std::vector<float>>> expected;
  for (int i = 0; i < 3; ++i) {
    train_step(a, *opt_a, sched_a, data_a);
    expected.push_back(snapshot(a));
  }

  // A differently initialised model, an optimizer whose options differ from
  // the saved ones (restored by the load), a fresh data stream.
  TinyNet b(99);
  auto opt_b = make_adamw(b, 1e-2, 0.7);
  optim::LambdaLR sched_b(*opt_b, lr_factor);
  Generator data_b(0);
  const TrainingMeta got = load_training_state(ckpt, b, *opt_b);
  CHECK(got.global_step == 3);
  CHECK(got.config == meta.config);
  CHECK(opt_b->param_groups()[0].options.weight_decay == 0.05);
  CHECK(opt_b->param_groups()[1].options.amsgrad);
  got.generators.at("data").apply_to(data_b);
  sched_b.set_step(got.scheduler_step);
  CHECK(opt_b->lr(0) == 1e-2 * lr_factor(3));
  for (const auto& p : b.fc2->parameters()) {
    const auto* st = opt_b->state(p);
    REQUIRE(st != nullptr);
    CHECK(st->step == 3);
    CHECK(st->max_exp_avg_sq.defined());
  }
  for (int i = 0; i < 3; ++i) {
    train_step(b, *opt_b, sched_b, data_b);
    const auto now = snapshot(b);
    REQUIRE(now.size() == expected[i].size());
    for (size_t k = 0; k < now.size(); ++k) REQUIRE(now[k] == expected[i][k]);  // bitwise: no tolerance
  }
  // Loading drops state the file does not have (a parameter never updated).
  TinyNet c(3);
  auto opt_c = make_adamw(c);
  save_training_state(ckpt, c, *opt_c, {});
  load_training_state(ckpt, b, *opt_b);
  CHECK(opt_b->state(b.fc1->weight) == nullptr);
  CHECK(snapshot(b) == snapshot(c));
}

TEST_CASE("load_training_state is strict and its typed errors name the file and the key") {
  TempDir dir("strict");
  const fs::path ckpt = dir / "s.st";
  const std::string f = ckpt.string();
  TinyNet a(1);
  auto opt = make_adamw(a);
  optim::ConstantLR sched(*opt);
  Generator data(1);
  train_step(a, *opt, sched, data);
  save_training_state(ckpt, a, *opt, sample_meta());

  SECTION("an optimizer parameter that is not the model's") {
    Tensor<float> stray = zeros<float>({2});
    stray.set_requires_grad(true);
    optim::AdamW foreign({a.fc1->weight, stray});
    MAMCLIP_REQUIRE_THROWS_WITH(save_training_state(dir / "x.st", a, foreign, {}), value_error,
                                "parameter 1 of optimizer group 0 (shape [2]) is not a parameter of the model (TinyNet)");
    MAMCLIP_REQUIRE_THROWS_WITH(load_training_state(ckpt, a, foreign), value_error, "is not a parameter of the model");
  }
  SECTION("a model tensor of another shape") {
    TinyNet b(1, 5, 6);
    auto ob = make_adamw(b);
    MAMCLIP_REQUIRE_THROWS_WITH(load_training_state(ckpt, b, *ob), shape_error,
                                "training state '" + f + "': tensor 'model.fc1.weight' has shape [7, 5]");
  }
  SECTION("missing and unexpected tensors") {
    struct Bigger : TinyNet {
      Bigger() : TinyNet(1) { register_parameter("extra", zeros<float>({2})); }
    } bigger;
    auto ob = make_adamw(bigger);
    MAMCLIP_REQUIRE_THROWS_WITH(load_training_state(ckpt, bigger, *ob), io_error,
                                "training state '" + f + "' has no tensor 'model.extra'");
    // A model without the buffer: the file's model.running is unexpected.
    struct NoBuffer : nn::Module {
      std::shared_ptr<nn::Linear> fc1, fc2;
      NoBuffer() {
        Generator g(1);
        fc1 = register_module("fc1", std::make_shared<nn::Linear>(5, 7, true, g));
        fc2 = register_module("fc2", std::make_shared<nn::Linear>(7, 3, false, g));
      }
    } nb;
    optim::AdamW on({nb.fc1->weight, nb.fc1->bias});
    // The groups differ first (one group against two) ...
    MAMCLIP_REQUIRE_THROWS_WITH(load_training_state(ckpt, nb, on), io_error, "has 2 optimizer parameter groups; the optimizer has 1");
    std::vector<optim::ParamGroup<optim::AdamWOptions>> gs(2);
    gs[0].params = nb.fc1->parameters();
    gs[1].params = nb.fc2->parameters();
    optim::AdamW on2(std::move(gs));
    // ... with the same groups, the extra tensor is named.
    MAMCLIP_REQUIRE_THROWS_WITH(load_training_state(ckpt, nb, on2), io_error,
                                "has an unexpected tensor 'model.running'");
  }
  SECTION("optimizer groups holding other parameters") {
    TinyNet b(1);
    std::vector<optim::ParamGroup<optim::AdamWOptions>> gs(2);
    gs[0].params = b.fc2->parameters();
    gs[1].params = b.fc1->parameters();
    optim::AdamW swapped(std::move(gs));
    MAMCLIP_REQUIRE_THROWS_WITH(load_training_state(ckpt, b, swapped), io_error,
                                "optimizer group 0 holds parameters [\"fc1.weight\",\"fc1.bias\"]");
  }
  SECTION("a truncated file, a file that is not a training state, bad meta") {
    const auto bytes = files::read_bytes(ckpt);
    files::write_bytes(dir / "cut.st", std::vector<uint8_t>(bytes.begin(), bytes.end() - 100));
    MAMCLIP_REQUIRE_THROWS_WITH(load_training_state(dir / "cut.st", a, *opt), io_error, "truncated file?");
    files::write_bytes(dir / "tiny.st", std::vector<uint8_t>(bytes.begin(), bytes.begin() + 5));
    MAMCLIP_REQUIRE_THROWS_WITH(load_training_state(dir / "tiny.st", a, *opt), io_error, "tiny.st' is 5 bytes long");
    MAMCLIP_REQUIRE_THROWS_WITH(load_training_state(dir / "none.st", a, *opt), io_error, "cannot open");
    io::save_safetensors((dir / "plain.st").string(), io::TensorMap{{"w", zeros<float>({2})}});
    MAMCLIP_REQUIRE_THROWS_WITH(load_training_state(dir / "plain.st", a, *opt), io_error,
                                "plain.st' is not a mamclip training state (__metadata__ 'format' is missing");
    io::SafetensorsFile good(ckpt.string());
    io::NamedTensors ts;
    for (const auto& n : good.names()) ts.emplace_back(n, good.get_any(n));
    io::Metadata md = good.metadata();
    md["meta"] = "{\"epoch\": 1}";
    io::save_safetensors((dir / "meta.st").string(), ts, md);
    MAMCLIP_REQUIRE_THROWS_WITH(load_training_state(dir / "meta.st", a, *opt), io_error,
                                "meta.st': the training meta has no key 'batch_in_epoch'");
    // Incomplete optimizer state.
    io::NamedTensors fewer;
    for (auto& [n, t] : ts)
      if (n != "optim.fc2.weight.max_exp_avg_sq") fewer.emplace_back(n, t);
    io::save_safetensors((dir / "fewer.st").string(), fewer, good.metadata());
    MAMCLIP_REQUIRE_THROWS_WITH(load_training_state(dir / "fewer.st", a, *opt), io_error,
                                "has no tensor 'optim.fc2.weight.max_exp_avg_sq'");
  }
  SECTION("a failed load modifies nothing") {
    TinyNet b(1, 5, 6);
    auto ob = make_adamw(b);
    const auto before = snapshot(b);
    REQUIRE_THROWS(load_training_state(ckpt, b, *ob));
    CHECK(snapshot(b) == before);
    CHECK(ob->state(b.fc1->weight) == nullptr);
  }
}

TEST_CASE("a writer SIGKILLed mid-write leaves the previous checkpoint loadable; the next save clears its temporary") {
  TempDir dir("kill");
  const fs::path ckpt = dir / "ckpt.st";
  TinyNet a(1);
  auto opt_a = make_adamw(a);
  optim::ConstantLR sched(*opt_a);
  Generator data(3);
  train_step(a, *opt_a, sched, data);
  save_training_state(ckpt, a, *opt_a, sample_meta());
  const auto saved = snapshot(a);
  const auto saved_bytes = files::read_bytes(ckpt);

  // The child writes half of a different checkpoint over the same path, tells
  // the parent through a pipe and waits; the parent kills it there.
  TinyNet other(2);
  auto opt_o = make_adamw(other);
  save_training_state(dir / "other.st", other, *opt_o, {});
  const auto other_bytes = files::read_bytes(dir / "other.st");
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    try {
      atomic_write(ckpt, [&](std::ostream& os) {
        os.write(reinterpret_cast<const char*>(other_bytes.data()), static_cast<std::streamsize>(other_bytes.size() / 2));
        os.flush();
        const char c = 'w';
        (void)!::write(fds[1], &c, 1);
        for (;;) ::pause();
      });
    } catch (...) {
    }
    ::_exit(3);
  }
  ::close(fds[1]);
  char c = 0;
  REQUIRE(::read(fds[0], &c, 1) == 1);
  ::close(fds[0]);
  REQUIRE(::kill(pid, SIGKILL) == 0);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFSIGNALED(status));
  REQUIRE(WTERMSIG(status) == SIGKILL);

  CHECK(files::read_bytes(ckpt) == saved_bytes);
  const auto left = tmp_leftovers(dir.path(), "ckpt.st");
  REQUIRE(left.size() == 1);
  CHECK(fs::file_size(dir / left[0]) == other_bytes.size() / 2);
  TinyNet b(7);
  auto opt_b = make_adamw(b);
  CHECK(load_training_state(ckpt, b, *opt_b).global_step == 123);
  CHECK(snapshot(b) == saved);

  save_training_state(ckpt, b, *opt_b, sample_meta());
  CHECK(tmp_leftovers(dir.path(), "ckpt.st").empty());
  CHECK(files::read_bytes(ckpt) == saved_bytes);  // same state, same bytes: the writer is deterministic
}

TEST_CASE("a checkpoint loop SIGKILLed at arbitrary moments always leaves a whole checkpoint") {
  TempDir dir("killloop");
  const fs::path ckpt = dir / "big.st";
  // ~0.8 MB of parameters (+ twice that of AdamW state) per save.
  TinyNet a(1, 211, 317), b(2, 211, 317);
  auto opt_a = make_adamw(a), opt_b = make_adamw(b);
  Tensor<float> x = uniform_random<float>({2, 211}, 5, -1, 1), y = uniform_random<float>({2, 3}, 6, -1, 1);
  for (auto* p : {&a, &b}) {
    auto& o = p == &a ? *opt_a : *opt_b;
    o.zero_grad();
    mse_loss(p->forward(x), y).backward();
    o.step();
  }
  save_training_state(ckpt, a, *opt_a, sample_meta());
  const auto sa_snap = snapshot(a), sb_snap = snapshot(b);
  int killed_mid_write = 0;
  for (int delay_ms : {3, 11, 23}) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      try {
        for (;;) save_training_state(ckpt, b, *opt_b, sample_meta());
      } catch (...) {
      }
      ::_exit(3);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    REQUIRE(::kill(pid, SIGKILL) == 0);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFSIGNALED(status));
    killed_mid_write += !tmp_leftovers(dir.path(), "big.st").empty();
    TinyNet c(9, 211, 317);
    auto opt_c = make_adamw(c);
    REQUIRE_NOTHROW(load_training_state(ckpt, c, *opt_c));
    const auto got = snapshot(c);
    CHECK((got == sa_snap || got == sb_snap));
    // Back to a's checkpoint for the next round (this also clears leftovers).
    save_training_state(ckpt, a, *opt_a, sample_meta());
    CHECK(tmp_leftovers(dir.path(), "big.st").empty());
  }
  INFO("rounds killed during a write: " << killed_mid_write);
  CHECK(true);
}

TEST_CASE("MetricLog appends flushed rows to CSV and JSONL, widens the CSV header, and resumes") {
  TempDir dir("metrics");
  const fs::path logdir = dir / "run" / "logs";
  {
    MetricLog log(logdir);
    log.log({{"loss", 0.5}, {"lr", 1e-4}}, 1, "train");
    // Flushed: visible before the log is closed.
    CHECK(files::read_file(logdir / "metrics.csv") == "step,phase,loss,lr\n1,train,0.5,1e-04\n");
    log.log({{"loss", 0.25}, {"acc", std::nan("")}}, 2, "val,holdout");
    CHECK(log.columns() == std::vector<std::string>{"acc", "loss", "lr"});
    MAMCLIP_REQUIRE_THROWS_WITH(log.log({{"step", 1.0}}, 3, "train"), value_error,
                                "MetricLog.log: metric name 'step' is reserved");
  }
  CHECK(files::read_file(logdir / "metrics.csv") ==
        "step,phase,acc,loss,lr\n1,train,,0.5,1e-04\n2,\"val,holdout\",nan,0.25,\n");
  {
    // A killed writer's partial last line is cut when the log is reopened.
    std::ofstream(logdir / "metrics.jsonl", std::ios::app) << "{\"step\": 3, \"lo";
    std::ofstream(logdir / "metrics.csv", std::ios::app) << "3,tr";
    MetricLog log(logdir);
    CHECK(log.columns() == std::vector<std::string>{"acc", "loss", "lr"});
    log.log({{"loss", 0.125}}, 3, "train");
  }
  CHECK(files::read_file(logdir / "metrics.csv") ==
        "step,phase,acc,loss,lr\n1,train,,0.5,1e-04\n2,\"val,holdout\",nan,0.25,\n3,train,,0.125,\n");
  std::ifstream in(logdir / "metrics.jsonl");
  std::vector<nlohmann::json> rows;
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  REQUIRE(rows.size() == 3);
  CHECK(rows[0]["loss"] == 0.5);
  CHECK(rows[0]["lr"] == 1e-4);
  CHECK(rows[1]["phase"] == "val,holdout");
  CHECK(rows[1]["acc"].is_null());
  CHECK(rows[2]["step"] == 3);
  CHECK(rows[2]["time"].get<double>() > 1.6e9);
}

TEST_CASE("format_progress: percentage, bar, counts, elapsed, ETA, rate and postfix") {
  CHECK(format_progress(50, 200, 10.0, "loss=0.5") == " 25%|#####               | 50/200 [00:10<00:30, 5.00 it/s] loss=0.5");
  CHECK(format_progress(0, 10, 0.0, "") == "  0%|                    | 0/10 [00:00<?, ? it/s]");
  CHECK(format_progress(1, 10, 4.0, "") == " 10%|##                  | 1/10 [00:04<00:36, 4.00 s/it]");
  CHECK(format_progress(10, 10, 2.0, "") == "100%|####################| 10/10 [00:02<00:00, 5.00 it/s]");
  CHECK(format_progress(7, 0, 2.0, "x") == "7 [00:02, 3.50 it/s] x");
  CHECK(format_duration(3725) == "1:02:05");
  CHECK(format_duration(59.6) == "01:00");
  CHECK(format_duration(std::nan("")) == "?");
}

TEST_CASE("Progress prints a line per 10 % without a terminal and redraws one line with \\r on a terminal") {
  std::ostringstream plain;
  {
    Progress p("epoch 1", 100, plain, false);
    for (int i = 1; i <= 100; ++i) p.update(i, "loss=1");
    p.finish();
  }
  const std::string s = plain.str();
  CHECK(std::count(s.begin(), s.end(), '\n') == 10);
  CHECK(s.find('\r') == std::string::npos);
  CHECK(s.find("epoch 1:  10%|##                  | 10/100 [") == 0);
  CHECK(s.find("epoch 1: 100%|####################| 100/100 [") != std::string::npos);

  std::ostringstream tty;
  {
    Progress p("eval", 3, tty, true);
    p.update(1);
    p.update(3);
  }  // the destructor finishes
  const std::string t = tty.str();
  CHECK(t.find("\reval: ") == 0);
  CHECK(t.find("3/3") != std::string::npos);
  CHECK(t.back() == '\n');
  CHECK(std::count(t.begin(), t.end(), '\n') == 1);
}

namespace {

Rgb pixel(const io::Image& im, int x, int y) {
  const int64_t H = im.pixels.size(1), W = im.pixels.size(2);
  const float* d = im.pixels.contiguous().data_ptr();
  auto ch = [&](int c) { return static_cast<uint8_t>(d[(c * H + y) * W + x]); };
  return {ch(0), ch(1), ch(2)};
}

std::set<std::tuple<int, int, int>> colors_of(const io::Image& im) {
  std::set<std::tuple<int, int, int>> out;
  const auto H = static_cast<int>(im.pixels.size(1)), W = static_cast<int>(im.pixels.size(2));
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x) {
      const Rgb p = pixel(im, x, y);
      out.insert({p.r, p.g, p.b});
    }
  return out;
}

io::Image decode_png(const fs::path& p) {
  const auto bytes = files::read_bytes(p);
  return io::decode_image(bytes.data(), bytes.size(), p.string());
}

}  // namespace

TEST_CASE("plot_lines: axes, title, legend and one colour per series; NaN breaks the line, constants are drawn") {
  TempDir dir("plot");
  std::vector<Series> series(3);
  series[0].first = "train loss";
  series[1].first = "val loss";
  series[2].first = "lr (const)";
  for (int i = 0; i <= 20; ++i) {
    series[0].second.push_back({i, 3.0 - 0.1 * i});
    series[1].second.push_back({i, i == 10 ? std::nan("") : 1.0 + 0.05 * i});
    series[2].second.push_back({i, 2.5});
  }
  const auto L = plot_lines(dir / "lines.png", "loss curves", series);
  const io::Image im = decode_png(dir / "lines.png");
  REQUIRE(im.pixels.shape() == Shape{3, 400, 640});
  const auto cs = colors_of(im);
  for (size_t i = 0; i < 3; ++i) {
    const Rgb c = series_color(i);
    CHECK(cs.count({c.r, c.g, c.b}) == 1);
  }
  CHECK(L.y_min < 1.0);
  CHECK(L.y_max > 3.0);
  // Points are drawn where the layout puts them.
  CHECK(pixel(im, L.px(4), L.py(2.6)) == series_color(0));
  CHECK(pixel(im, L.px(3), L.py(1.15)) == series_color(1));
  CHECK(pixel(im, L.px(17), L.py(2.5)) == series_color(2));
  // No segment across the NaN at x = 10 (the line would pass through (10, 1.5)).
  CHECK(!(pixel(im, L.px(10), L.py(1.5)) == series_color(1)));
  CHECK(pixel(im, L.px(8), L.py(1.4)) == series_color(1));
  // Frame and text: black pixels exist; the title row holds dark text pixels.
  CHECK(pixel(im, L.left, (L.top + L.bottom) / 2) == Rgb{0, 0, 0});
  int title_px = 0;
  for (int y = 8; y < 22; ++y)
    for (int x = 0; x < 640; ++x) title_px += pixel(im, x, y) == Rgb{0, 0, 0};
  CHECK(title_px > 100);

  // A constant single series and an all-NaN series still make an image.
  const auto L2 = plot_lines(dir / "const.png", "c", {{"flat", {{0, 7}, {1, 7}}}, {"nan", {{0, std::nan("")}}}});
  CHECK(L2.y_min < 7.0);
  CHECK(L2.y_max > 7.0);
  const io::Image im2 = decode_png(dir / "const.png");
  CHECK(pixel(im2, L2.px(0.5), L2.py(7)) == series_color(0));
  // Many series get distinct colours.
  std::set<std::tuple<int, int, int>> distinct;
  for (size_t i = 0; i < 24; ++i) {
    const Rgb c = series_color(i);
    distinct.insert({c.r, c.g, c.b});
  }
  CHECK(distinct.size() == 24);
}

TEST_CASE("plot_confusion_matrix: a cell per pair filled by its row fraction, with its count written in it") {
  TempDir dir("cm");
  ConfusionMatrix cm(3);
  // Row fractions all different, so the nine fills are distinct.
  const std::vector<std::vector<int64_t>> counts = {{50, 3, 1}, {4, 20, 9}, {0, 7, 1234}};
  for (int64_t t = 0; t < 3; ++t)
    for (int64_t p = 0; p < 3; ++p)
      for (int64_t k = 0; k < counts[t][p]; ++k) cm.update(std::vector<int64_t>{t}, std::vector<int64_t>{p});
  const auto L = plot_confusion_matrix(dir / "cm.png", cm, {"normal", "benign", "malignant"});
  const io::Image im = decode_png(dir / "cm.png");
  REQUIRE(im.pixels.size(1) == L.height);
  REQUIRE(im.pixels.size(2) == L.width);
  std::set<std::tuple<int, int, int>> fills;
  for (int t = 0; t < 3; ++t) {
    int64_t row = 0;
    for (auto v : counts[t]) row += v;
    for (int p = 0; p < 3; ++p) {
      const int x0 = L.left + p * L.cell, y0 = L.top + t * L.cell;
      const Rgb fill = confusion_cell_color(static_cast<double>(counts[t][p]) / row);
      CHECK(pixel(im, x0 + 2, y0 + 2) == fill);
      fills.insert({fill.r, fill.g, fill.b});
      // The count's digits: pixels of another colour in the cell's middle band.
      int ink = 0;
      for (int y = y0 + L.cell / 2 - 4; y < y0 + L.cell / 2 + 4; ++y)
        for (int x = x0 + 2; x < x0 + L.cell - 2; ++x) ink += !(pixel(im, x, y) == fill);
      CHECK(ink > 5);
    }
  }
  CHECK(fills.size() == 9);
  MAMCLIP_REQUIRE_THROWS_WITH(plot_confusion_matrix(dir / "x.png", counts, {"a", "b"}), value_error,
                              "2 class names for 3 classes");
  MAMCLIP_REQUIRE_THROWS_WITH(plot_confusion_matrix(dir / "x.png", {{1, 2}, {3}}, {"a", "b"}), value_error,
                              "row 1 of counts has 1 entries; expected 2");
}

TEST_CASE("heatmap_overlay: bilinear resize (half-pixel centres), jet colours, alpha blend; overlay_heatmap writes it") {
  // heat [1, 2] = {0, 1} resized to width 4 samples 0, 0.25, 0.75, 1.
  const Tensor<float> out = heatmap_overlay(zeros<float>({1, 4}), from_vector<float>({0.0f, 1.0f}, {1, 2}), 1.0);
  REQUIRE(out.shape() == Shape{3, 1, 4});
  const auto v = out.to_vector();
  const float hs[4] = {0.0f, 0.25f, 0.75f, 1.0f};
  for (int x = 0; x < 4; ++x) {
    const auto j = jet(hs[x]);
    for (int c = 0; c < 3; ++c) CHECK(v[c * 4 + x] == Approx(j[c]).margin(1e-6));
  }
  CHECK(jet(0.0f)[2] > 0.4f);  // cold is blue
  CHECK(jet(1.0f)[0] > 0.4f);  // hot is red
  // alpha blends with the gray image.
  const Tensor<float> half = heatmap_overlay(full<float>({2, 3}, 0.5f), full<float>({1, 1}, 0.5f), 0.25);
  const auto j = jet(0.5f);
  CHECK(half.to_vector()[0] == Approx(0.75 * 0.5 + 0.25 * j[0]));

  TempDir dir("overlay");
  Tensor<float> heat = zeros<float>({3, 4});
  heat.data_ptr()[0] = 1.0f;  // hot top-left corner
  overlay_heatmap(dir / "o.png", full<float>({20, 30}, 0.5f), heat);
  const io::Image im = decode_png(dir / "o.png");
  REQUIRE(im.pixels.shape() == Shape{3, 20, 30});
  const Rgb tl = pixel(im, 0, 0), br = pixel(im, 29, 19);
  CHECK(tl.r > tl.b);
  CHECK(br.b > br.r);
  MAMCLIP_REQUIRE_THROWS_WITH(heatmap_overlay(zeros<float>({2, 2, 2}), heat), shape_error,
                              "heatmap_overlay: gray has shape [2, 2, 2]; expected [H, W] or [1, H, W]");
  MAMCLIP_REQUIRE_THROWS_WITH(heatmap_overlay(zeros<float>({2, 2}), full<float>({1, 1}, std::nanf(""))), value_error,
                              "heat holds NaN");
}

}  // namespace test_train_infra
