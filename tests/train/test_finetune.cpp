// Fine-tuning, evaluation and zero-shot / retrieval metrics: the class-weighted
// cross-entropy against a hand-computed value and PyTorch's formula (and its
// gradient), evaluate_logits against train/metrics.hpp, fine-tuning a tiny
// ConvNeXt classifier on the synthetic set (the loss falls, macro-F1 beats
// chance, the best epoch's weights come back, files are written, the same seed
// gives the same run), recall@K and zero-shot predictions on hand-made
// features, the text path of a tiny VLModel, and Grad-CAM against finite
// differences.
#include "support/test_support.hpp"

#include <cmath>
#include <filesystem>
#include <sstream>

#include "mamclip/data/synthetic.hpp"
#include "mamclip/train/finetune.hpp"
#include "mamclip/train/zeroshot.hpp"

namespace test_finetune {
using namespace mamclip;
using namespace mamclip::test;
using namespace mamclip::train;
using models::clip::ClassifierHead;
using models::clip::MamClipClassifier;

namespace {

models::ConvNeXtConfig tiny_convnext() {
  models::ConvNeXtConfig c;
  c.depths = {1, 1, 1, 1};
  c.dims = {8, 16, 16, 32};
  return c;
}

std::shared_ptr<MamClipClassifier> tiny_classifier(uint64_t seed) {
  Generator gen(seed);
  return std::make_shared<MamClipClassifier>(tiny_convnext(), 24,
                                             std::vector<ClassifierHead>{{"density_layer", 4}, {"birads_layer", 3}}, gen);
}

const std::vector<std::string> kClasses{"normal", "benign", "malignant"};

// The synthetic images, written once per process (64 x 48, seed 7).
const std::vector<data::Sample>& synthetic_samples() {
  static files::TempDir dir("finetune_data");
  static const std::vector<data::Sample> samples = data::make_synthetic_set(dir.path(), 72, 64, 48, 7);
  return samples;
}

FinetuneOptions tiny_options() {
  FinetuneOptions o;
  // A randomly initialised ConvNeXt sits on the class-prior plateau for a while: a warmup and
  // enough steps get it off (checked over several model seeds).
  o.epochs = 20;
  o.batch_size = 8;
  o.lr = 1e-3;
  o.warmup_steps = 12;
  o.weight_decay = 0.0;
  o.height = 64;
  o.width = 48;
  o.augmentation = "none";
  o.workers = 1;
  o.quiet = true;
  return o;
}

// The synthetic images in their order, without augmentation.
data::LoaderOptions in_order(int64_t batch_size) {
  data::LoaderOptions lo;
  lo.batch_size = batch_size;
  lo.height = 64;
  lo.width = 48;
  lo.shuffle = false;
  lo.workers = 1;
  return lo;
}

std::vector<double> weights_of(const nn::Module& m) {
  std::vector<double> out;
  for (const auto& [name, t] : m.state_dict())
    for (float v : t.to_vector()) out.push_back(v);
  return out;
}

}  // namespace

TEST_CASE("class_weights are n / (K n_c) over the classes present") {
  const auto w = class_weights({0, 0, 0, 1, 2, 2}, 4);
  REQUIRE(w.size() == 4);
  CHECK(w[0] == Approx(6.0 / (3 * 3)));
  CHECK(w[1] == Approx(6.0 / (3 * 1)));
  CHECK(w[2] == Approx(6.0 / (3 * 2)));
  CHECK(w[3] == 0.0);  // absent from the training labels
  MAMCLIP_REQUIRE_THROWS_WITH(class_weights({0, 3}, 3), value_error, "labels[1] = 3 is out of range");
  MAMCLIP_REQUIRE_THROWS_WITH(class_weights({}, 3), value_error, "class_weights: no labels");
}

TEST_CASE("weighted cross-entropy: a hand-computed case and PyTorch's weighted mean") {
  // Rows: (0, 0) label 0 -> nll ln 2; (ln 3, 0) label 0 -> nll ln(4/3); (0, 0) label 1 -> nll ln 2.
  const Tensor<float> logits = tensor<float>({0.f, 0.f, static_cast<float>(std::log(3.0)), 0.f, 0.f, 0.f}, {3, 2});
  const Tensor<int64_t> target = tensor<int64_t>({0, 0, 1});
  const double l2 = std::log(2.0), l43 = std::log(4.0 / 3.0);
  // Unweighted: the plain mean, and the same as cross_entropy.
  CHECK(weighted_cross_entropy(logits, target, {}).item() == Approx((2 * l2 + l43) / 3).epsilon(1e-6));
  // Balanced weights: class 0 (2 samples) 3 / (2 * 2) = 0.75, class 1 (1 sample) 3 / (2 * 1) = 1.5;
  // loss = (0.75 ln 2 + 0.75 ln 4/3 + 1.5 ln 2) / (0.75 + 0.75 + 1.5): the rare class's sample weighs double.
  const auto w = class_weights(target.to_vector(), 2);
  REQUIRE(w == std::vector<double>{0.75, 1.5});
  const double expected = (0.75 * l2 + 0.75 * l43 + 1.5 * l2) / 3.0;
  CHECK(weighted_cross_entropy(logits, target, w).item() == Approx(expected).epsilon(1e-6));
  CHECK(expected > (2 * l2 + l43) / 3);  // the poorly fitted minority sample counts more
  // Only the weights' ratios matter (PyTorch divides by the sum of the targets' weights).
  CHECK(weighted_cross_entropy(logits, target, {7.5, 15.0}).item() == Approx(expected).epsilon(1e-6));

  // Random logits: sum_i w_{y_i} (lse_i - x_{i, y_i}) / sum_i w_{y_i} computed by hand.
  const Tensor<double> x = uniform_random<double>({5, 3}, 11, -2, 2);
  const Tensor<int64_t> y = tensor<int64_t>({2, 0, 1, 2, 2});
  const std::vector<double> cw{0.5, 2.0, 1.25};
  double num = 0, den = 0;
  for (int64_t i = 0; i < 5; ++i) {
    double lse = 0;
    for (int64_t j = 0; j < 3; ++j) lse += std::exp(x(i, j));
    const int64_t t = y(i);
    num += cw[static_cast<size_t>(t)] * (std::log(lse) - x(i, t));
    den += cw[static_cast<size_t>(t)];
  }
  CHECK(weighted_cross_entropy(x, y, cw).item() == Approx(num / den).epsilon(1e-12));

  // Gradient (double, non-contiguous logits, sizes not multiples of 8).
  const Tensor<double> xs = noncontiguous(uniform_random<double>({7, 5}, 3, -1, 1));
  const Tensor<int64_t> ys = tensor<int64_t>({4, 0, 1, 1, 3, 2, 0});
  require_gradcheck([&](const std::vector<Tensor<double>>& in) { return weighted_cross_entropy(in[0], ys, {1, 2, 0.5, 3, 1}); },
                    {xs});

  MAMCLIP_REQUIRE_THROWS_WITH(weighted_cross_entropy(logits, target, {1.0, 2.0, 3.0}), shape_error,
                              "3 class weights for logits of shape [3, 2]");
  MAMCLIP_REQUIRE_THROWS_WITH(weighted_cross_entropy(logits, tensor<int64_t>({0, 5, 1}), w), value_error,
                              "target[1] = 5 is out of range");
  MAMCLIP_REQUIRE_THROWS_WITH(weighted_cross_entropy(logits, target, {0.0, 0.0}), value_error, "sum to 0");
}

TEST_CASE("evaluate_logits: the metrics of train/metrics.hpp on argmax and softmax") {
  // 6 samples, 3 classes: predictions 0, 1, 1, 2, 0, 2 against labels 0, 1, 2, 2, 1, 2.
  const Tensor<float> logits = tensor<float>({3, 1, 0,  0, 2, 1,  0, 1, 0.5f,  -1, 0, 4,  2, 1.5f, 0,  0, 0, 1}, {6, 3});
  const Tensor<int64_t> labels = tensor<int64_t>({0, 1, 2, 2, 1, 2});
  const EvalResult r = evaluate_logits(logits, labels, 3);
  CHECK(r.count == 6);
  CHECK(r.confusion.count(0, 0) == 1);
  CHECK(r.confusion.count(1, 1) == 1);
  CHECK(r.confusion.count(1, 0) == 1);
  CHECK(r.confusion.count(2, 1) == 1);
  CHECK(r.confusion.count(2, 2) == 2);
  CHECK(r.accuracy == Approx(4.0 / 6));
  // F1: class 0: tp 1, fp 1, fn 0 -> 2/3; class 1: tp 1, fp 1, fn 1 -> 1/2; class 2: tp 2, fp 0, fn 1 -> 4/5.
  REQUIRE(r.per_class_f1.size() == 3);
  CHECK(r.per_class_f1[0] == Approx(2.0 / 3));
  CHECK(r.per_class_f1[1] == Approx(0.5));
  CHECK(r.per_class_f1[2] == Approx(0.8));
  CHECK(r.macro_f1 == Approx((2.0 / 3 + 0.5 + 0.8) / 3));
  CHECK(r.loss == Approx(static_cast<double>(cross_entropy(logits, labels).item())));
  RocAucOptions auc;
  auc.check_probabilities = false;
  CHECK(r.roc_auc_ovr == Approx(roc_auc_ovr(labels, softmax(logits, 1), auc)));

  // A class missing from the labels leaves the AUC defined (averaged over the others).
  const EvalResult two = evaluate_logits(logits.narrow(0, 0, 2), labels.narrow(0, 0, 2), 3);
  CHECK(std::isfinite(two.roc_auc_ovr));
  const EvalResult none = evaluate_logits(zeros<float>({0, 3}), zeros<int64_t>({0}), 3);
  CHECK(none.count == 0);
  CHECK(std::isnan(none.macro_f1));
  MAMCLIP_REQUIRE_THROWS_WITH(evaluate_logits(logits, labels, 4), shape_error, "expected [N, 4]");
  MAMCLIP_REQUIRE_THROWS_WITH(evaluate_logits(logits, tensor<int64_t>({0, 1, -1, 2, 1, 2}), 3), value_error,
                              "label -1");
}

TEST_CASE("print_confusion writes an aligned table with names and support") {
  ConfusionMatrix cm(3);
  cm.update(std::vector<int64_t>{0, 0, 1, 2, 2, 2}, std::vector<int64_t>{0, 1, 1, 2, 2, 0});
  std::ostringstream os;
  print_confusion(os, cm, kClasses);
  const std::string expected =
      "true \\ pred     normal     benign  malignant    support\n"
      "normal               1          1          0          2\n"
      "benign               0          1          0          1\n"
      "malignant            1          0          2          3\n";
  CHECK(os.str() == expected);
}

TEST_CASE("head_index finds heads by name and reports the known ones") {
  auto model = tiny_classifier(1);
  CHECK(head_index(*model, "density_layer") == 0);
  CHECK(head_index(*model, "birads_layer") == 1);
  MAMCLIP_REQUIRE_THROWS_WITH(head_index(*model, "birads"), value_error,
                              "no head \"birads\"; its heads are \"density_layer\", \"birads_layer\"");
}

TEST_CASE("fine-tuning a tiny classifier on the synthetic set: loss falls, macro-F1 beats chance, deterministic") {
  const auto& all = synthetic_samples();
  const std::vector<data::Sample> train(all.begin(), all.begin() + 48), val(all.begin() + 48, all.begin() + 60),
      test(all.begin() + 60, all.end());
  files::TempDir out("finetune_out");
  FinetuneOptions o = tiny_options();
  o.output_dir = out.path();

  auto model = tiny_classifier(5);
  const data::LoaderOptions lo = in_order(8);
  data::Loader train_eval(train, lo);
  const EvalResult before = evaluate_classifier(*model, train_eval, 3, "birads_layer");
  const std::vector<double> density_before = [&] {
    std::vector<double> v;
    for (const auto& [name, t] : model->state_dict())
      if (name.rfind("density_layer.", 0) == 0)
        for (float x : t.to_vector()) v.push_back(x);
    return v;
  }();

  const FinetuneResult r = finetune_classifier(*model, train, val, test, o, kClasses);
  REQUIRE(r.history.size() == 20);
  REQUIRE(r.step_losses.size() == 20 * 6);
  REQUIRE(r.best_epoch >= 0);
  // Training loss: the last epoch's mean is well below the first's and the untrained model's.
  INFO("train loss per epoch: " << r.history[0].train_loss << " ... " << r.history.back().train_loss
                                << ", before: " << before.loss);
  CHECK(r.history.back().train_loss < 0.85 * r.history.front().train_loss);
  CHECK(r.history.back().train_loss < 0.9 * before.loss);
  // The kept epoch is the best on validation macro-F1, and its scores are that epoch's.
  for (const auto& e : r.history) CHECK(e.val.macro_f1 <= r.best_val.macro_f1);
  CHECK(r.best_val.macro_f1 == r.history[static_cast<size_t>(r.best_epoch)].val.macro_f1);
  // Above chance (1/3 for 3 balanced classes) on the training split and the held-out validation
  // split; 12 test images are too few for a stable bound at this model size, so they are only scored.
  const EvalResult fitted = evaluate_classifier(*model, train_eval, 3, "birads_layer");
  INFO("best epoch " << r.best_epoch << ", train macro-F1 " << fitted.macro_f1 << " (before " << before.macro_f1
                     << "), val macro-F1 " << r.best_val.macro_f1 << ", test macro-F1 " << r.test.macro_f1);
  CHECK(fitted.macro_f1 > 0.6);
  CHECK(r.best_val.macro_f1 > 0.45);
  CHECK(r.test.count == 12);
  CHECK(r.test.macro_f1 >= 0.0);
  // The best weights were restored: evaluating the validation split again gives its scores.
  data::Loader val_loader(val, lo);
  const EvalResult again = evaluate_classifier(*model, val_loader, 3, "birads_layer");
  CHECK(again.macro_f1 == r.best_val.macro_f1);
  CHECK(again.loss == Approx(r.best_val.loss).epsilon(1e-6));
  // The other head had no gradient, so AdamW left it alone (weight decay 0).
  std::vector<double> density_after;
  for (const auto& [name, t] : model->state_dict())
    if (name.rfind("density_layer.", 0) == 0)
      for (float x : t.to_vector()) density_after.push_back(x);
  CHECK(density_after == density_before);
  // Files.
  for (const char* f : {"metrics.csv", "metrics.jsonl", "best.safetensors", "confusion_matrix.png", "loss.png"})
    CHECK(std::filesystem::exists(out / f));
  {
    auto reloaded = tiny_classifier(99);
    models::clip::load_classifier_weights(*reloaded, out / "best.safetensors");
    CHECK(weights_of(*reloaded) == weights_of(*model));
  }
}

TEST_CASE("fine-tuning is deterministic in its seed, whatever the number of loader threads") {
  const auto& all = synthetic_samples();
  const std::vector<data::Sample> train(all.begin(), all.begin() + 24), val(all.begin() + 60, all.begin() + 66);
  FinetuneOptions o = tiny_options();
  o.epochs = 2;
  o.augmentation = "soft";  // seeded per (seed, epoch, sample)
  o.seed = 3;
  auto a = tiny_classifier(5), b = tiny_classifier(5), c = tiny_classifier(5);
  const FinetuneResult ra = finetune_classifier(*a, train, val, {}, o, kClasses);
  o.workers = 2;
  const FinetuneResult rb = finetune_classifier(*b, train, val, {}, o, kClasses);
  CHECK(rb.step_losses == ra.step_losses);
  CHECK(rb.best_epoch == ra.best_epoch);
  CHECK(rb.best_val.loss == ra.best_val.loss);
  CHECK(weights_of(*b) == weights_of(*a));
  // Another seed changes the data order and augmentation, so the run differs.
  o.seed = 4;
  const FinetuneResult rc = finetune_classifier(*c, train, val, {}, o, kClasses);
  CHECK(rc.step_losses != ra.step_losses);
}

TEST_CASE("class weighting changes the fine-tuning loss as the weights say") {
  // An imbalanced training set: 12 normal, 4 benign, 4 malignant.
  std::vector<data::Sample> train;
  int64_t n[3] = {0, 0, 0};
  const int64_t cap[3] = {12, 4, 4};
  for (const auto& s : synthetic_samples())
    if (n[s.label] < cap[s.label]) {
      train.push_back(s);
      ++n[s.label];
    }
  REQUIRE(train.size() == 20);
  FinetuneOptions o = tiny_options();
  o.epochs = 1;
  o.batch_size = 20;  // one step: the loss is that of the untrained model on the whole set
  o.lr = 0;
  auto plain_model = tiny_classifier(3), weighted_model = tiny_classifier(3);
  const FinetuneResult plain = finetune_classifier(*plain_model, train, {}, {}, o, kClasses);
  o.class_weighting = true;
  const FinetuneResult weighted = finetune_classifier(*weighted_model, train, {}, {}, o, kClasses);
  REQUIRE(plain.step_losses.size() == 1);
  REQUIRE(weighted.step_losses.size() == 1);

  // The same by hand from the untrained model's logits: weights 20 / (3 * 12), 20 / (3 * 4), 20 / (3 * 4).
  auto model = tiny_classifier(3);
  model->eval();  // no dropout in this config, so train and eval forward agree
  const data::LoaderOptions lo = in_order(20);
  data::Loader loader(train, lo);
  loader.start_epoch(0);
  const auto batch = loader.next();
  REQUIRE(batch);
  const Tensor<float> logp = log_softmax(model->forward(batch->images)[1], 1);
  const auto y = batch->labels.to_vector();
  const double w[3] = {20.0 / 36, 20.0 / 12, 20.0 / 12};
  double num = 0, den = 0, sum = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    const double nll = -static_cast<double>(logp(static_cast<int64_t>(i), y[i]));
    num += w[y[i]] * nll;
    den += w[y[i]];
    sum += nll;
  }
  CHECK(plain.step_losses[0] == Approx(sum / 20).epsilon(1e-5));
  CHECK(weighted.step_losses[0] == Approx(num / den).epsilon(1e-5));
  CHECK(std::abs(weighted.step_losses[0] - plain.step_losses[0]) > 1e-4);
  // Without a validation split the last epoch is kept; without a test split the test scores are empty.
  CHECK(plain.best_epoch == 0);
  CHECK(plain.test.count == 0);
}

TEST_CASE("fine-tuning in bf16 autocast: a step's loss follows fp32's; other precisions are refused") {
  const auto& all = synthetic_samples();
  const std::vector<data::Sample> train(all.begin(), all.begin() + 20);
  FinetuneOptions o = tiny_options();
  o.epochs = 1;
  o.batch_size = 20;
  o.lr = 0;
  auto m32 = tiny_classifier(3), m16 = tiny_classifier(3);
  const FinetuneResult r32 = finetune_classifier(*m32, train, {}, {}, o, kClasses);
  o.precision = "bf16";
  const FinetuneResult r16 = finetune_classifier(*m16, train, {}, {}, o, kClasses);
  REQUIRE(r16.step_losses.size() == 1);
  CHECK(r16.step_losses[0] != r32.step_losses[0]);  // the convs and linears ran in bfloat16
  CHECK(r16.step_losses[0] == Approx(r32.step_losses[0]).epsilon(2e-2));
  o.precision = "fp16";
  MAMCLIP_REQUIRE_THROWS_WITH(finetune_classifier(*m16, train, {}, {}, o, kClasses), value_error,
                              "FinetuneOptions: precision is \"fp16\"; expected \"fp32\" or \"bf16\"");
}

TEST_CASE("finetune_classifier rejects bad options and labels") {
  auto model = tiny_classifier(2);
  const auto& all = synthetic_samples();
  const std::vector<data::Sample> train(all.begin(), all.begin() + 4);
  FinetuneOptions o = tiny_options();
  o.head = "birads";
  MAMCLIP_REQUIRE_THROWS_WITH(finetune_classifier(*model, train, {}, {}, o, kClasses), value_error, "no head \"birads\"");
  o = tiny_options();
  MAMCLIP_REQUIRE_THROWS_WITH(finetune_classifier(*model, train, {}, {}, o, {"a", "b"}), value_error,
                              "head \"birads_layer\" has 3 outputs and num_classes is 2");
  o.epochs = 0;
  MAMCLIP_REQUIRE_THROWS_WITH(finetune_classifier(*model, train, {}, {}, o, kClasses), value_error, "epochs is 0");
  o = tiny_options();
  std::vector<data::Sample> unlabelled = train;
  unlabelled[2].label = -1;
  MAMCLIP_REQUIRE_THROWS_WITH(finetune_classifier(*model, unlabelled, {}, {}, o, kClasses), value_error,
                              "has label -1");
  MAMCLIP_REQUIRE_THROWS_WITH(finetune_classifier(*model, {}, {}, {}, o, kClasses), value_error,
                              "the training split is empty");
}

TEST_CASE("retrieval_recall on hand-made features, ties in favour of the pair") {
  // Images i0 (1, 0), i1 (0, 1), i2 (1, 1), i3 (1, -1); texts t0 (1, 0), t1 (1, 0.1), t2 (1, 1), t3 (0, -1).
  // Cosines S[i, j]:      t0     t1     t2     t3
  //                 i0   1      .995   .707   0        own caption first          -> rank 0
  //                 i1   0      .0995  .707   -1       t2 above                    -> rank 1
  //                 i2   .707   .774   1      -.707                                -> rank 0
  //                 i3   .707   .633   0      .707     t0 ties with t3: in favour  -> rank 0
  // Columns (text -> image): t1's own image i1 is below i0, i2, i3 -> rank 3; the others rank 0.
  const Tensor<float> images = tensor<float>({1, 0, 0, 1, 1, 1, 1, -1}, {4, 2}) * 3.0;  // scale does not matter
  const Tensor<float> texts = tensor<float>({1, 0, 1, 0.1f, 1, 1, 0, -1}, {4, 2});
  const RetrievalResult r = retrieval_recall(images, texts, {1, 3, 4, 10});
  CHECK(r.image_to_text.at(1) == 0.75);
  CHECK(r.image_to_text.at(3) == 1.0);
  CHECK(r.image_to_text.at(10) == 1.0);
  CHECK(r.text_to_image.at(1) == 0.75);
  CHECK(r.text_to_image.at(3) == 0.75);
  CHECK(r.text_to_image.at(4) == 1.0);
  CHECK(r.text_to_image.at(10) == 1.0);
  // Default K = 1, 5, 10; identical features everywhere: every pair ties, so every rank is 0.
  const RetrievalResult same = retrieval_recall(ones<float>({6, 3}), ones<float>({6, 3}));
  CHECK(same.image_to_text.size() == 3);
  CHECK(same.image_to_text.at(1) == 1.0);
  CHECK(same.text_to_image.at(5) == 1.0);
  MAMCLIP_REQUIRE_THROWS_WITH(retrieval_recall(images, texts.narrow(0, 0, 3)), shape_error,
                              "expected the same shape [N, E]");
  MAMCLIP_REQUIRE_THROWS_WITH(retrieval_recall(images, texts, {0}), value_error, "K = 0");
}

TEST_CASE("zero-shot classification picks the nearest class embedding") {
  // Class embeddings along three directions of R^4; images near one of them with noise.
  const Tensor<float> classes = tensor<float>({1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1}, {3, 4});
  const Tensor<float> noise = uniform_random<float>({9, 4}, 5, -0.3, 0.3);
  const std::vector<int64_t> y{0, 1, 2, 2, 1, 0, 1, 2, 0};
  std::vector<float> base;
  for (int64_t c : y) {
    const auto row = classes.select(0, c).to_vector();
    for (float v : row) base.push_back(v * 2.0f);
  }
  const Tensor<float> images = from_vector<float>(base, {9, 4}) + noise;
  const Tensor<int64_t> labels = from_vector<int64_t>(y);
  const EvalResult r = zeroshot_evaluate(images, labels, classes, 50.0);
  CHECK(r.accuracy == 1.0);
  CHECK(r.macro_f1 == 1.0);
  CHECK(r.roc_auc_ovr == 1.0);
  // Logits: scale times the cosine.
  const Tensor<float> logits = zeroshot_logits(images, classes, 50.0);
  const double cos02 = static_cast<double>(
      sum(normalize(images.select(0, 2)) * normalize(classes.select(0, 2))).item());
  CHECK(static_cast<double>(logits(2, 2)) == Approx(50.0 * cos02).epsilon(1e-5));
  // A mislabelled image is scored as wrong.
  std::vector<int64_t> wrong = y;
  wrong[0] = 1;
  const EvalResult w = zeroshot_evaluate(images, from_vector<int64_t>(wrong), classes, 50.0);
  CHECK(w.accuracy == Approx(8.0 / 9));
  CHECK(w.confusion.count(1, 0) == 1);
  MAMCLIP_REQUIRE_THROWS_WITH(zeroshot_logits(images, classes.narrow(1, 0, 3), 1.0), shape_error,
                              "expected [N, E] and [C, E]");
  MAMCLIP_REQUIRE_THROWS_WITH(zeroshot_logits(images, classes, 0.0), value_error, "scale is 0");

  const auto prompts = default_zeroshot_prompts({"normal", "suspicious/malignant", "calcified"});
  REQUIRE(prompts.size() == 3);
  CHECK(prompts[0].size() >= 3);
  CHECK(prompts[1] == default_zeroshot_prompts({"malignant"})[0]);
  CHECK(prompts[2][0] == "mammogram showing calcified");
}

TEST_CASE("zero-shot and retrieval through a tiny VLModel's towers") {
  const std::string vocab = std::string(MAMCLIP_SHARED_DATA) + "/vocab/pubmedbert-base-uncased-abstract-fulltext/vocab.txt";
  REQUIRE(std::filesystem::exists(vocab));
  const auto tokenizer = text::BertTokenizer::from_file(vocab);
  models::clip::VLModelConfig cfg = models::clip::VLModelConfig::small();
  cfg.vision = tiny_convnext();
  cfg.context_length = 24;
  Generator gen(4);
  models::clip::VLModel model(cfg, gen);

  // A class embedding is the normalised mean of its prompts' normalised features.
  const std::vector<std::vector<std::string>> prompts{{"no mass", "normal breast"}, {"spiculated mass"}};
  const Tensor<float> classes = class_text_features(model, tokenizer, prompts);
  REQUIRE(classes.shape() == Shape{2, cfg.embed_dim});
  const Tensor<float> f0 = encode_texts(model, tokenizer, prompts[0]);
  require_allclose(classes.select(0, 0), normalize(f0.select(0, 0) + f0.select(0, 1), 2.0, 0), 1e-5, 1e-5);
  require_allclose(classes.select(0, 1), encode_texts(model, tokenizer, prompts[1]).select(0, 0), 1e-5, 1e-5);
  CHECK(model.is_training());  // restored

  // Paired features of the synthetic images and captions: normalised rows; recall@K is a fraction
  // that grows with K and is 1 once K covers every candidate.
  const std::vector<data::Sample> samples(synthetic_samples().begin(), synthetic_samples().begin() + 10);
  const data::LoaderOptions lo = in_order(4);
  data::Loader loader(samples, lo);
  const PairedFeatures pf = encode_pairs(model, tokenizer, loader);
  REQUIRE(pf.image.shape() == Shape{10, cfg.embed_dim});
  REQUIRE(pf.text.shape() == Shape{10, cfg.embed_dim});
  require_allclose(sum(pf.image * pf.image, {1}), ones<float>({10}), 1e-5, 1e-5);
  require_allclose(pf.text.select(0, 3), encode_texts(model, tokenizer, {samples[3].caption}).select(0, 0), 1e-5, 1e-5);
  CHECK(pf.labels.to_vector() == std::vector<int64_t>{samples[0].label, samples[1].label, samples[2].label,
                                                      samples[3].label, samples[4].label, samples[5].label,
                                                      samples[6].label, samples[7].label, samples[8].label,
                                                      samples[9].label});
  const RetrievalResult rr = retrieval_recall(pf.image, pf.text, {1, 5, 10});
  CHECK(rr.image_to_text.at(1) <= rr.image_to_text.at(5));
  CHECK(rr.image_to_text.at(10) == 1.0);
  CHECK(rr.text_to_image.at(10) == 1.0);

  // zeroshot_classify is zeroshot_evaluate on these features with the model's scale exp(log(1/0.07)).
  const auto names_prompts = default_zeroshot_prompts(kClasses);
  const EvalResult zs = zeroshot_classify(model, tokenizer, loader, names_prompts);
  const EvalResult direct =
      zeroshot_evaluate(pf.image, pf.labels, class_text_features(model, tokenizer, names_prompts), 1.0 / 0.07);
  CHECK(zs.count == 10);
  CHECK(zs.accuracy == direct.accuracy);
  CHECK(zs.loss == Approx(direct.loss).epsilon(1e-5));
}

TEST_CASE("grad_cam: [h, w] in [0, 1], weights = mean gradients (finite differences), PNG overlay") {
  auto model = tiny_classifier(8);
  // A gray 128 x 96 noise image on 3 channels: map [1, 32, 4, 3] that varies over the locations.
  const Tensor<float> gray = uniform_random<float>({1, 1, 128, 96}, 21, 0.0, 1.0);
  const Tensor<float> image = cat(std::vector<Tensor<float>>{gray, gray, gray}, 1).contiguous();
  const Tensor<float> cam = grad_cam(*model, image, 2, 1);
  REQUIRE(cam.shape() == Shape{4, 3});
  CHECK(static_cast<double>(amin(cam).item()) >= 0.0);
  CHECK(static_cast<double>(amax(cam).item()) == Approx(1.0));
  for (const auto& p : model->parameters()) CHECK_FALSE(p.grad().defined());  // no gradient left behind
  CHECK(model->is_training());

  // Reference: the map's gradient is d logit / d pooled_c / (h w) at every location (mean pooling), so
  // alpha_c is that, and cam = relu(sum_c alpha_c A_c) / max. d logit / d pooled from autograd on the
  // pooled features as a leaf (forward_head of a [1, C, 1, 1] map pools nothing), checked against
  // central differences.
  model->eval();
  Tensor<float> map, pooled;
  {
    NoGradGuard no_grad;
    map = model->encoder->forward_features(image);  // [1, C, 4, 3]
    pooled = mean(map, {2, 3}, true).contiguous();
  }
  const int64_t c = map.size(1);
  auto logit = [&](const Tensor<float>& p) { return model->head_layers[1]->forward(model->encoder->forward_head(p)); };
  Tensor<float> leaf = pooled.clone().detach();
  leaf.set_requires_grad(true);
  sum(logit(leaf).select(1, 2)).backward();
  const Tensor<float> alpha = leaf.grad() * (1.0 / 12);
  model->zero_grad();
  NoGradGuard no_grad;
  const double eps = 1e-2;
  for (int64_t k = 0; k < c; ++k) {
    Tensor<float> up = pooled.clone(), down = pooled.clone();
    up.at({0, k, 0, 0}) += static_cast<float>(eps);
    down.at({0, k, 0, 0}) -= static_cast<float>(eps);
    const double fd = (static_cast<double>(logit(up)(0, 2)) - static_cast<double>(logit(down)(0, 2))) / (2 * eps);
    CHECK(static_cast<double>(alpha(0, k, 0, 0)) * 12 == Approx(fd).margin(5e-3).epsilon(2e-2));
  }
  const Tensor<float> raw = relu(sum(map * alpha, {1})).select(0, 0);
  const double peak = static_cast<double>(amax(raw).item());
  // sum_c alpha_c A_c averages to 0 over the locations (head.norm is scale invariant, so the gradient
  // is orthogonal to the pooled features), so float rounding of the terms sets the tolerance: 1e-5 of
  // the largest sum of |alpha_c A_c|, which the peak must clearly exceed for the check to mean anything.
  const double terms = static_cast<double>(amax(sum(abs(map * alpha), {1})).item());
  INFO("peak " << peak << ", largest sum of |terms| " << terms);
  REQUIRE(peak > 1e-2 * terms);
  require_allclose(cam, raw * (1.0 / peak), 1e-5 * terms / peak, 0.0, "Grad-CAM vs reference");
  CHECK(static_cast<double>(amin(cam).item()) == 0.0);  // the negative half is cut by the ReLU
  model->train();

  files::TempDir out("gradcam");
  const Tensor<float> written = write_grad_cam(out / "cam.png", *model, image, 2, 1);
  require_allclose(written, cam, 0.0, 0.0);
  const io::Image png = io::read_image((out / "cam.png").string());
  CHECK(png.pixels.shape() == Shape{3, 128, 96});
  MAMCLIP_REQUIRE_THROWS_WITH(grad_cam(*model, image, 3, 1), index_error, "target_class 3 is out of range");
  MAMCLIP_REQUIRE_THROWS_WITH(grad_cam(*model, image.narrow(1, 0, 1), 0, 5), index_error, "head 5 is out of range");
  MAMCLIP_REQUIRE_THROWS_WITH(grad_cam(*model, cat(std::vector<Tensor<float>>{image, image}, 0), 0), shape_error,
                              "expected [1, 3, H, W]");
}

}  // namespace test_finetune
