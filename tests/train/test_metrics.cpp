// Classification metrics against scikit-learn (tests/fixtures/metrics/sklearn.json,
// tools/make_metrics_fixture.py): confusion matrix, accuracy, per-class
// precision / recall / F1 for each zero_division, macro-F1 over present or all
// classes, one-vs-rest ROC-AUC with ties and a class missing from y_true;
// batch accumulation; errors.
#include "support/test_support.hpp"

#include <cmath>
#include <limits>

#include "mamclip/train/metrics.hpp"

namespace test_metrics {
using namespace mamclip;
using namespace mamclip::test;
using namespace mamclip::train;

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();

double value_or_nan(const nlohmann::json& j) { return j.is_null() ? kNaN : j.get<double>(); }

// Equal within 1e-12, or both NaN.
void require_same(double actual, const nlohmann::json& expected, const std::string& what) {
  INFO(what << ": actual " << actual << ", expected " << expected.dump());
  if (expected.is_null()) {
    CHECK(std::isnan(actual));
  } else {
    CHECK(std::abs(actual - expected.get<double>()) <= 1e-12);
  }
}

Tensor<int64_t> labels(const nlohmann::json& j) { return from_vector<int64_t>(j.get<std::vector<int64_t>>()); }

}  // namespace

TEST_CASE("metrics match scikit-learn on random data with ties, missing and never-predicted classes") {
  const auto fx = load_json(fixture_path("metrics/sklearn.json"));
  REQUIRE(fx.at("cases").size() == 4);
  for (const auto& c : fx.at("cases")) {
    const std::string name = c.at("name");
    INFO("case " << name);
    const int64_t nc = c.at("num_classes");
    const Tensor<int64_t> y = labels(c.at("y_true")), p = labels(c.at("y_pred"));
    const Tensor<float> scores = tensor_from_json<float>(c.at("scores"));

    const ConfusionMatrix cm = confusion_matrix(y, p, nc);
    const auto expected_cm = c.at("confusion").get<std::vector<std::vector<int64_t>>>();
    for (int64_t t = 0; t < nc; ++t)
      for (int64_t q = 0; q < nc; ++q) CHECK(cm.count(t, q) == expected_cm[t][q]);
    const Tensor<int64_t> cmt = cm.to_tensor();
    CHECK(cmt.shape() == Shape{nc, nc});
    CHECK(cmt(nc - 1, 0) == expected_cm[nc - 1][0]);
    CHECK(cm.total() == y.numel());

    require_same(accuracy(cm), c.at("accuracy"), "accuracy from the matrix");
    require_same(accuracy(y, p), c.at("accuracy"), "accuracy from labels");

    for (const auto& [key, zd] : {std::pair<std::string, double>{"0", 0.0}, {"1", 1.0}, {"nan", kNaN}}) {
      INFO("zero_division " << key);
      const ClassScores s = precision_recall_f1(cm, zd);
      const auto& e = c.at("per_class").at(key);
      for (int64_t k = 0; k < nc; ++k) {
        require_same(s.precision[k], e.at("precision")[k], "precision of class " + std::to_string(k));
        require_same(s.recall[k], e.at("recall")[k], "recall of class " + std::to_string(k));
        require_same(s.f1[k], e.at("f1")[k], "f1 of class " + std::to_string(k));
        CHECK(s.support[k] == e.at("support")[k].get<int64_t>());
      }
      const auto& m = c.at("macro_f1").at(key);
      require_same(macro_f1(y, p, nc, {zd, F1Labels::present}), m.at("present"), "macro-F1, present labels");
      require_same(macro_f1(cm, {zd, F1Labels::all}), m.at("all"), "macro-F1, all labels");
    }

    const auto per_class = roc_auc_ovr_per_class(y, scores);
    REQUIRE(static_cast<int64_t>(per_class.size()) == nc);
    for (int64_t k = 0; k < nc; ++k) require_same(per_class[k], c.at("auc_per_class")[k], "AUC of class " + std::to_string(k));
    require_same(roc_auc_ovr(y, scores), c.at("auc_macro"), "macro AUC");
    // The same in double.
    require_same(roc_auc_ovr(y, scores.to<double>()), c.at("auc_macro"), "macro AUC from double scores");
    // skip_undefined: the mean of the defined classes.
    double s = 0;
    int n = 0;
    for (const auto& a : c.at("auc_per_class"))
      if (!a.is_null()) s += a.get<double>(), ++n;
    REQUIRE(n > 0);
    CHECK(std::abs(roc_auc_ovr(y, scores, {true, true}) - s / n) <= 1e-12);
  }
}

TEST_CASE("the missing-class case really exercises the differences between the label sets") {
  const auto fx = load_json(fixture_path("metrics/sklearn.json"));
  const auto& c = fx.at("cases").at(1);
  REQUIRE(c.at("name") == "missing_class");
  const double present = c.at("macro_f1").at("0").at("present"), all = c.at("macro_f1").at("0").at("all");
  CHECK(present != all);  // class 3 absent from both: left out vs counted as 0
  CHECK(c.at("auc_macro").is_null());
  CHECK(std::isnan(roc_auc_ovr(labels(c.at("y_true")), tensor_from_json<float>(c.at("scores")))));
}

TEST_CASE("ConfusionMatrix accumulates batches and equals one pass over everything") {
  const Tensor<int64_t> y = tensor<int64_t>({0, 1, 2, 2, 1, 0, 2}), p = tensor<int64_t>({0, 2, 2, 1, 1, 0, 0});
  ConfusionMatrix acc(3);
  acc.update(y.narrow(0, 0, 3), p.narrow(0, 0, 3));
  acc.update(y.narrow(0, 3, 4), p.narrow(0, 3, 4));
  const ConfusionMatrix all = confusion_matrix(y, p, 3);
  for (int64_t t = 0; t < 3; ++t)
    for (int64_t q = 0; q < 3; ++q) CHECK(acc.count(t, q) == all.count(t, q));
  CHECK(acc.count(2, 0) == 1);
  CHECK(acc.support(2) == 3);
  CHECK(acc.predicted(0) == 3);
  CHECK(std::abs(accuracy(acc) - 4.0 / 7.0) < 1e-15);
  acc.reset();
  CHECK(acc.total() == 0);
  // A failed update adds nothing.
  CHECK_THROWS(acc.update(tensor<int64_t>({0, 5}), tensor<int64_t>({0, 0})));
  CHECK(acc.total() == 0);
}

TEST_CASE("ROC-AUC: ties count one half; the probability check; binary_roc_auc") {
  // Positives {0.5, 0.9}, negatives {0.5, 0.1}: pairs (0.5,0.5) tie = 1/2, the rest ordered: (1/2 + 1 + 1 + 1) / 4.
  CHECK(binary_roc_auc<double>({true, true, false, false}, {0.5, 0.9, 0.5, 0.1}) == 0.875);
  CHECK(binary_roc_auc<double>({true, false}, {0.3, 0.3}) == 0.5);
  CHECK(std::isnan(binary_roc_auc<double>({true, true}, {0.3, 0.4})));
  const Tensor<int64_t> y = tensor<int64_t>({0, 1, 2});
  const Tensor<float> raw = tensor<float>({2, 1, 0, 0, 3, 1, 1, 1, 5}, {3, 3});
  MAMCLIP_REQUIRE_THROWS_WITH(roc_auc_ovr(y, raw), value_error,
                              "roc_auc_ovr: row 0 of scores sums to 3; expected probabilities that sum to 1 over the "
                              "classes (or turn check_probabilities off)");
  CHECK(roc_auc_ovr(y, raw, {false, false}) == 1.0);  // each class scores highest on its own sample
}

TEST_CASE("metrics: errors name the function, the argument and the offending value") {
  const Tensor<int64_t> y = tensor<int64_t>({0, 1, 2}), p = tensor<int64_t>({0, 1});
  MAMCLIP_REQUIRE_THROWS_WITH(confusion_matrix(y, p, 3), shape_error,
                              "ConfusionMatrix::update: y_true has 3 labels and y_pred has 2; expected the same number");
  MAMCLIP_REQUIRE_THROWS_WITH(confusion_matrix(y, tensor<int64_t>({0, 3, 1}), 3), value_error,
                              "ConfusionMatrix::update: y_pred[1] = 3 is out of range for num_classes = 3; expected a "
                              "label in [0, 3)");
  MAMCLIP_REQUIRE_THROWS_WITH(confusion_matrix(tensor<int64_t>({-1, 0, 0}), y, 3), value_error,
                              "y_true[0] = -1 is out of range");
  MAMCLIP_REQUIRE_THROWS_WITH(confusion_matrix(y.unsqueeze(0), y.unsqueeze(0), 3), shape_error,
                              "y_true has shape [1, 3]; expected a 1-D tensor of class labels [N]");
  MAMCLIP_REQUIRE_THROWS_WITH(ConfusionMatrix(0), value_error, "num_classes must be positive, got 0");
  MAMCLIP_REQUIRE_THROWS_WITH(accuracy(y, p), shape_error, "accuracy: y_true has 3 labels and y_pred has 2");
  MAMCLIP_REQUIRE_THROWS_WITH(accuracy(ConfusionMatrix(2)), value_error, "accuracy: no samples");
  MAMCLIP_REQUIRE_THROWS_WITH(macro_f1(ConfusionMatrix(2)), value_error, "macro_f1: no samples");
  MAMCLIP_REQUIRE_THROWS_WITH(macro_f1(y, y, 3, {0.5, F1Labels::all}), value_error,
                              "macro_f1: zero_division must be 0, 1 or NaN, got 0.5");
  const Tensor<float> s = tensor<float>({0.5f, 0.5f, 1.0f, 0.0f}, {2, 2});
  MAMCLIP_REQUIRE_THROWS_WITH(roc_auc_ovr(y, s), shape_error,
                              "roc_auc_ovr: y_true has 3 labels and scores has shape [2, 2]; expected one row of "
                              "scores per label");
  MAMCLIP_REQUIRE_THROWS_WITH(roc_auc_ovr(tensor<int64_t>({0, 2}), s), value_error,
                              "roc_auc_ovr: y_true[1] = 2 is out of range for num_classes = 2");
  MAMCLIP_REQUIRE_THROWS_WITH(roc_auc_ovr(tensor<int64_t>({0, 1}), tensor<float>({NAN, 1.0f, 1.0f, 0.0f}, {2, 2})),
                              value_error, "roc_auc_ovr: scores[0, 0] = nan is not finite");
  MAMCLIP_REQUIRE_THROWS_WITH(roc_auc_ovr(tensor<int64_t>({0, 1}), tensor<float>({1.0f, 1.0f})), shape_error,
                              "roc_auc_ovr: scores has shape [2]; expected [N, num_classes]");
}

}  // namespace test_metrics
