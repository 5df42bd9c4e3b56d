// Trains a small classifier end to end with mamclip on the CPU and checks it
// learns: three interleaved spirals in 2-D (not linearly separable), an MLP with
// LayerNorm and GELU, cross-entropy, AdamW with warmup + cosine decay and
// gradient clipping, mini-batches reshuffled each epoch. Deterministic under
// --seed. Exit status 0 only when held-out accuracy reaches --target.
//
//   mamclip_train_demo [--epochs N] [--seed S] [--target ACC]

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>

#include "mamclip/mamclip.hpp"

using namespace mamclip;

namespace {

struct Dataset {
  Tensor<float> x;         // [N, 2]
  Tensor<int64_t> labels;  // [N]
};

// n points per class on `classes` spiral arms with Gaussian noise.
Dataset make_spirals(int64_t n, int64_t classes, double noise, Generator& gen) {
  auto radius_noise = randn<double>({n * classes, 2}, gen).to_vector();
  std::vector<float> xs;
  std::vector<int64_t> ys;
  for (int64_t c = 0; c < classes; ++c)
    for (int64_t i = 0; i < n; ++i) {
      const double r = static_cast<double>(i) / n;  // 0..1 along the arm
      const double theta = 4.0 * r + 2.0 * M_PI * c / classes;
      const int64_t k = c * n + i;
      xs.push_back(static_cast<float>(r * std::cos(theta) + noise * radius_noise[2 * k]));
      xs.push_back(static_cast<float>(r * std::sin(theta) + noise * radius_noise[2 * k + 1]));
      ys.push_back(c);
    }
  return {from_vector<float>(xs, {n * classes, 2}), from_vector<int64_t>(ys)};
}

class Classifier : public nn::Module {
 public:
  Classifier(int64_t hidden, int64_t classes, Generator& gen) {
    fc1 = register_module("fc1", std::make_shared<nn::Linear>(2, hidden, gen));
    norm = register_module("norm", std::make_shared<nn::LayerNorm>(hidden));
    fc2 = register_module("fc2", std::make_shared<nn::Linear>(hidden, hidden, gen));
    head = register_module("head", std::make_shared<nn::Linear>(hidden, classes, gen));
  }
  std::string type_name() const override { return "Classifier"; }
  Tensor<float> forward(const Tensor<float>& x) {
    auto h = gelu(norm->forward(fc1->forward(x)));
    h = h + gelu(fc2->forward(h));  // residual
    return head->forward(h);
  }
  std::shared_ptr<nn::Linear> fc1, fc2, head;
  std::shared_ptr<nn::LayerNorm> norm;
};

double accuracy(Classifier& model, const Dataset& d) {
  NoGradGuard no_grad;
  auto [_, pred] = max(model.forward(d.x), 1);
  const auto p = pred.to_vector(), y = d.labels.to_vector();
  int64_t right = 0;
  for (size_t i = 0; i < p.size(); ++i) right += p[i] == y[i];
  return static_cast<double>(right) / static_cast<double>(p.size());
}

}  // namespace

int main(int argc, char** argv) {
  int epochs = 60;
  uint64_t seed = 0;
  double target = 0.95;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--epochs")) epochs = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--seed")) seed = std::strtoull(argv[i + 1], nullptr, 10);
    else if (!std::strcmp(argv[i], "--target")) target = std::atof(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown option %s\nusage: %s [--epochs N] [--seed S] [--target ACC]\n", argv[i], argv[0]);
      return 2;
    }
  }
  try {
    Generator gen(seed);
    const int64_t classes = 3, batch = 64;
    Dataset train = make_spirals(600, classes, 0.04, gen);
    Dataset test = make_spirals(200, classes, 0.04, gen);
    Classifier model(64, classes, gen);

    optim::AdamWOptions opts;
    opts.lr = 1e-2;
    opts.weight_decay = 1e-4;
    optim::AdamW opt(model.parameters(), opts);
    const int64_t n = train.x.size(0), steps_per_epoch = (n + batch - 1) / batch;
    optim::CosineWithWarmup schedule(opt, steps_per_epoch * 2, steps_per_epoch * epochs);

    std::printf("spirals: %lld train / %lld test points, %lld classes; model: %lld parameters\n",
                static_cast<long long>(n), static_cast<long long>(test.x.size(0)), static_cast<long long>(classes),
                static_cast<long long>(model.num_parameters()));
    std::vector<int64_t> order(static_cast<size_t>(n));
    for (int epoch = 1; epoch <= epochs; ++epoch) {
      // Seeded shuffle: a permutation from the ranks of random keys.
      auto keys = rand<double>({n}, gen).to_vector();
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return keys[a] < keys[b]; });
      double total = 0;
      for (int64_t s = 0; s < steps_per_epoch; ++s) {
        const int64_t lo = s * batch, hi = std::min(n, lo + batch);
        auto idx = from_vector<int64_t>(std::vector<int64_t>(order.begin() + lo, order.begin() + hi));
        opt.zero_grad();
        auto loss = cross_entropy(model.forward(index_select(train.x, 0, idx)), index_select(train.labels, 0, idx));
        loss.backward();
        optim::clip_grad_norm_(model.parameters(), 1.0);
        opt.step();
        schedule.step();
        total += loss.item() * static_cast<double>(hi - lo);
      }
      if (epoch % 10 == 0 || epoch == 1)
        std::printf("epoch %3d  loss %.4f  train acc %.3f  test acc %.3f\n", epoch, total / static_cast<double>(n),
                    accuracy(model, train), accuracy(model, test));
    }
    const double acc = accuracy(model, test);
    std::printf("final test accuracy %.3f (target %.2f): %s\n", acc, target, acc >= target ? "reached" : "NOT reached");
    return acc >= target ? 0 : 1;
  } catch (const mamclip::error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}
