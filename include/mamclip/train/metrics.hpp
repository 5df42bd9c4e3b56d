#pragma once
// Classification metrics with scikit-learn's semantics: confusion matrix,
// accuracy, per-class precision / recall / F1, macro-F1 and one-vs-rest
// ROC-AUC, from int64 class labels in [0, num_classes) and float or double
// scores [N, num_classes]. Computed on the host in double.
//
// defines:
//   ConfusionMatrix                 counts [C, C] (rows: true class, columns: predicted), accumulates batches
//   confusion_matrix(y_true, y_pred, C)
//   accuracy(...)                   sklearn.metrics.accuracy_score
//   precision_recall_f1(...)        sklearn.metrics.precision_recall_fscore_support(labels=range(C), average=None)
//   macro_f1(...)                   sklearn.metrics.f1_score(average='macro')
//   binary_roc_auc(...)             sklearn.metrics.roc_auc_score for one binary problem
//   roc_auc_ovr_per_class(...)      the one-vs-rest AUC of each class
//   roc_auc_ovr(...)                sklearn.metrics.roc_auc_score(multi_class='ovr', average='macro', labels=range(C))
//
// Zero division (sklearn's zero_division, default 0 as with "warn"): a
// precision with no predicted samples of its class, a recall with no true
// samples, and an F1 with neither (2 tp + fp + fn = 0) take the value
// `zero_division` (0, 1 or NaN). F1 is 2 tp / (2 tp + fp + fn), sklearn's
// formula since 1.3: a class with true samples that is never predicted
// correctly has F1 = 0, not `zero_division`.
//
// Which classes macro-F1 averages over (F1Labels):
//   present (sklearn's labels=None, the default): the classes that occur in
//     y_true or y_pred. A class absent from both is left out, so it neither
//     lowers nor raises the average.
//   all (sklearn's labels=range(C)): every class in [0, C); one absent from
//     both has F1 = zero_division.
// With zero_division = NaN, NaN scores are left out of the average (sklearn's
// _nanaverage); the average of only NaNs is NaN.
//
// ROC-AUC: each class against the rest, with ties between a positive and a
// negative counted as one half (the trapezoidal ROC curve through tied
// thresholds that sklearn integrates, equal to the Mann-Whitney U statistic
// with mid-ranks). A class without positives or without negatives in y_true
// has an undefined AUC: NaN, and the macro average is NaN, as in
// scikit-learn 1.9 (which also warns); RocAucOptions::skip_undefined
// averages over the defined classes instead. As in sklearn, the scores must be
// probabilities (each row sums to 1 within |1 - sum| <= 1e-8 + 1e-5 |sum|)
// unless check_probabilities is off (AUC only ranks, so any monotone score
// works). For C = 2 and rows that sum to 1, both classes' AUCs equal the
// binary AUC of column 1 (sklearn's binary roc_auc_score(y, scores[:, 1])).
//
// Errors (value_error / shape_error) name the function, the argument, the
// offending index and value: length mismatches, labels outside
// [0, num_classes), non-finite scores, empty inputs where a ratio is needed.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "mamclip/core/error.hpp"
#include "mamclip/core/factory.hpp"
#include "mamclip/core/tensor.hpp"

namespace mamclip::train {

namespace detail {

inline void check_labels(const char* fn, const char* arg, std::span<const int64_t> y, int64_t num_classes) {
  for (size_t i = 0; i < y.size(); ++i)
    MAMCLIP_CHECK(y[i] >= 0 && y[i] < num_classes, value_error, fn, ": ", arg, "[", i, "] = ", y[i],
                  " is out of range for num_classes = ", num_classes, "; expected a label in [0, ", num_classes, ")");
}

inline void check_same_length(const char* fn, std::span<const int64_t> y_true, std::span<const int64_t> y_pred) {
  MAMCLIP_CHECK(y_true.size() == y_pred.size(), shape_error, fn, ": y_true has ", y_true.size(), " labels and y_pred has ",
                y_pred.size(), "; expected the same number");
}

inline std::vector<int64_t> labels_of(const char* fn, const char* arg, const Tensor<int64_t>& y) {
  MAMCLIP_CHECK(y.defined(), value_error, fn, ": ", arg, " is an undefined tensor");
  MAMCLIP_CHECK(y.dim() == 1, shape_error, fn, ": ", arg, " has shape ", shape_str(y.shape()),
                "; expected a 1-D tensor of class labels [N]");
  return y.to_vector();
}

inline double ratio(int64_t num, int64_t den, double zero_division) {
  return den == 0 ? zero_division : static_cast<double>(num) / static_cast<double>(den);
}

// The mean of the non-NaN values (NaN when there are none): sklearn's _nanaverage.
inline double nan_mean(const std::vector<double>& v) {
  double s = 0;
  int64_t n = 0;
  for (double x : v)
    if (!std::isnan(x)) s += x, ++n;
  return n == 0 ? std::numeric_limits<double>::quiet_NaN() : s / static_cast<double>(n);
}

}  // namespace detail

// Counts of (true class, predicted class) pairs. Accumulates over batches, so
// an evaluation loop can update it per batch and read the metrics at the end.
class ConfusionMatrix {
 public:
  explicit ConfusionMatrix(int64_t num_classes) : c_(num_classes) {
    MAMCLIP_CHECK(num_classes > 0, value_error, "ConfusionMatrix: num_classes must be positive, got ", num_classes);
    counts_.assign(static_cast<size_t>(c_ * c_), 0);
  }

  // Adds the pairs (y_true[i], y_pred[i]); on error nothing is added.
  void update(std::span<const int64_t> y_true, std::span<const int64_t> y_pred) {
    detail::check_same_length("ConfusionMatrix::update", y_true, y_pred);
    detail::check_labels("ConfusionMatrix::update", "y_true", y_true, c_);
    detail::check_labels("ConfusionMatrix::update", "y_pred", y_pred, c_);
    for (size_t i = 0; i < y_true.size(); ++i) ++counts_[static_cast<size_t>(y_true[i] * c_ + y_pred[i])];
  }
  void update(const Tensor<int64_t>& y_true, const Tensor<int64_t>& y_pred) {
    const auto t = detail::labels_of("ConfusionMatrix::update", "y_true", y_true);
    const auto p = detail::labels_of("ConfusionMatrix::update", "y_pred", y_pred);
    update(std::span<const int64_t>(t), std::span<const int64_t>(p));
  }
  void reset() { std::fill(counts_.begin(), counts_.end(), 0); }

  int64_t num_classes() const { return c_; }
  // Samples of true class t predicted as p.
  int64_t count(int64_t t, int64_t p) const {
    MAMCLIP_CHECK(t >= 0 && t < c_ && p >= 0 && p < c_, index_error, "ConfusionMatrix::count: (", t, ", ", p,
                  ") is out of range for ", c_, " classes");
    return counts_[static_cast<size_t>(t * c_ + p)];
  }
  int64_t total() const { return std::accumulate(counts_.begin(), counts_.end(), int64_t{0}); }
  int64_t true_positives(int64_t c) const { return count(c, c); }
  // Samples whose true class is c (sklearn's support).
  int64_t support(int64_t c) const {
    int64_t s = 0;
    for (int64_t p = 0; p < c_; ++p) s += count(c, p);
    return s;
  }
  // Samples predicted as c.
  int64_t predicted(int64_t c) const {
    int64_t s = 0;
    for (int64_t t = 0; t < c_; ++t) s += count(t, c);
    return s;
  }
  // int64 [C, C], rows: true class, columns: predicted class (sklearn's layout).
  Tensor<int64_t> to_tensor() const { return from_vector<int64_t>(counts_, Shape{c_, c_}); }

 private:
  int64_t c_;
  std::vector<int64_t> counts_;  // row-major [true, predicted]
};

inline ConfusionMatrix confusion_matrix(const Tensor<int64_t>& y_true, const Tensor<int64_t>& y_pred,
                                        int64_t num_classes) {
  ConfusionMatrix cm(num_classes);
  cm.update(y_true, y_pred);
  return cm;
}

// The fraction of samples predicted correctly; value_error on an empty matrix.
inline double accuracy(const ConfusionMatrix& cm) {
  const int64_t n = cm.total();
  MAMCLIP_CHECK(n > 0, value_error, "accuracy: no samples (the confusion matrix is empty)");
  int64_t correct = 0;
  for (int64_t c = 0; c < cm.num_classes(); ++c) correct += cm.true_positives(c);
  return static_cast<double>(correct) / static_cast<double>(n);
}

// Labels need no class count: any int64 values, compared for equality.
inline double accuracy(const Tensor<int64_t>& y_true, const Tensor<int64_t>& y_pred) {
  const auto t = detail::labels_of("accuracy", "y_true", y_true), p = detail::labels_of("accuracy", "y_pred", y_pred);
  detail::check_same_length("accuracy", t, p);
  MAMCLIP_CHECK(!t.empty(), value_error, "accuracy: no samples (y_true and y_pred are empty)");
  int64_t correct = 0;
  for (size_t i = 0; i < t.size(); ++i) correct += t[i] == p[i];
  return static_cast<double>(correct) / static_cast<double>(t.size());
}

// Per class c in [0, C).
struct ClassScores {
  std::vector<double> precision;  // tp / (tp + fp)
  std::vector<double> recall;     // tp / (tp + fn)
  std::vector<double> f1;         // 2 tp / (2 tp + fp + fn)
  std::vector<int64_t> support;   // tp + fn
};

inline ClassScores precision_recall_f1(const ConfusionMatrix& cm, double zero_division = 0.0) {
  ClassScores s;
  for (int64_t c = 0; c < cm.num_classes(); ++c) {
    const int64_t tp = cm.true_positives(c), sup = cm.support(c), pred = cm.predicted(c);
    s.precision.push_back(detail::ratio(tp, pred, zero_division));
    s.recall.push_back(detail::ratio(tp, sup, zero_division));
    s.f1.push_back(detail::ratio(2 * tp, sup + pred, zero_division));
    s.support.push_back(sup);
  }
  return s;
}

enum class F1Labels { present, all };

struct F1Options {
  double zero_division = 0.0;  // 0, 1 or NaN (see the header comment)
  F1Labels labels = F1Labels::present;
};

inline double macro_f1(const ConfusionMatrix& cm, const F1Options& options = {}) {
  MAMCLIP_CHECK(options.zero_division == 0.0 || options.zero_division == 1.0 || std::isnan(options.zero_division),
                value_error, "macro_f1: zero_division must be 0, 1 or NaN, got ", options.zero_division);
  const ClassScores s = precision_recall_f1(cm, options.zero_division);
  std::vector<double> f1;
  for (int64_t c = 0; c < cm.num_classes(); ++c)
    if (options.labels == F1Labels::all || cm.support(c) > 0 || cm.predicted(c) > 0) f1.push_back(s.f1[static_cast<size_t>(c)]);
  MAMCLIP_CHECK(!f1.empty(), value_error, "macro_f1: no samples, so no class is present (use F1Labels::all to ",
                "average zero_division over every class)");
  return detail::nan_mean(f1);
}

inline double macro_f1(const Tensor<int64_t>& y_true, const Tensor<int64_t>& y_pred, int64_t num_classes,
                       const F1Options& options = {}) {
  return macro_f1(confusion_matrix(y_true, y_pred, num_classes), options);
}

// AUC of `score` separating positive[i] from the rest; NaN without positives or negatives.
// Mid-ranks over ties: sum of the positives' ranks minus P (P + 1) / 2, over P N.
template <class S>
double binary_roc_auc(const std::vector<bool>& positive, const std::vector<S>& score) {
  MAMCLIP_CHECK(positive.size() == score.size(), shape_error, "binary_roc_auc: ", positive.size(), " labels and ",
                score.size(), " scores; expected the same number");
  const size_t n = score.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  for (size_t i = 0; i < n; ++i)
    MAMCLIP_CHECK(std::isfinite(static_cast<double>(score[i])), value_error, "binary_roc_auc: score[", i, "] = ",
                  static_cast<double>(score[i]), " is not finite");
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return score[a] < score[b]; });
  double rank_sum = 0;  // ranks of the positives, 1-based, ties get the mean of their ranks
  int64_t pos = 0;
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j < n && score[order[j]] == score[order[i]]) ++j;
    const double mid = (static_cast<double>(i + 1) + static_cast<double>(j)) / 2;
    for (size_t k = i; k < j; ++k)
      if (positive[order[k]]) rank_sum += mid, ++pos;
    i = j;
  }
  const int64_t neg = static_cast<int64_t>(n) - pos;
  if (pos == 0 || neg == 0) return std::numeric_limits<double>::quiet_NaN();
  const double p = static_cast<double>(pos);
  return (rank_sum - p * (p + 1) / 2) / (p * static_cast<double>(neg));
}

struct RocAucOptions {
  bool check_probabilities = true;  // sklearn: each row of scores must sum to 1
  bool skip_undefined = false;      // average over the classes whose AUC is defined (sklearn: NaN)
};

// AUC of class c against the rest for each c in [0, C): scores [N, C], y_true [N] in [0, C).
template <class S>
std::vector<double> roc_auc_ovr_per_class(const Tensor<int64_t>& y_true, const Tensor<S>& scores,
                                          bool check_probabilities = true) {
  static_assert(std::is_floating_point_v<S>, "roc_auc_ovr: scores must be float or double");
  const auto y = detail::labels_of("roc_auc_ovr", "y_true", y_true);
  MAMCLIP_CHECK(scores.defined() && scores.dim() == 2, shape_error, "roc_auc_ovr: scores has shape ",
                scores.defined() ? shape_str(scores.shape()) : std::string("(undefined)"),
                "; expected [N, num_classes]");
  const int64_t n = scores.size(0), c = scores.size(1);
  MAMCLIP_CHECK(static_cast<int64_t>(y.size()) == n, shape_error, "roc_auc_ovr: y_true has ", y.size(),
                " labels and scores has shape ", shape_str(scores.shape()), "; expected one row of scores per label");
  MAMCLIP_CHECK(c >= 2, shape_error, "roc_auc_ovr: scores has shape ", shape_str(scores.shape()),
                "; expected at least 2 classes");
  detail::check_labels("roc_auc_ovr", "y_true", y, c);
  const std::vector<S> v = scores.to_vector();
  for (int64_t i = 0; i < n; ++i) {
    double row = 0;
    for (int64_t j = 0; j < c; ++j) {
      const double x = static_cast<double>(v[static_cast<size_t>(i * c + j)]);
      MAMCLIP_CHECK(std::isfinite(x), value_error, "roc_auc_ovr: scores[", i, ", ", j, "] = ", x, " is not finite");
      row += x;
    }
    MAMCLIP_CHECK(!check_probabilities || std::abs(1 - row) <= 1e-8 + 1e-5 * std::abs(row), value_error,
                  "roc_auc_ovr: row ", i, " of scores sums to ", row,
                  "; expected probabilities that sum to 1 over the classes (or turn check_probabilities off)");
  }
  std::vector<double> auc;
  std::vector<bool> positive(static_cast<size_t>(n));
  std::vector<S> column(static_cast<size_t>(n));
  for (int64_t j = 0; j < c; ++j) {
    for (int64_t i = 0; i < n; ++i) {
      positive[static_cast<size_t>(i)] = y[static_cast<size_t>(i)] == j;
      column[static_cast<size_t>(i)] = v[static_cast<size_t>(i * c + j)];
    }
    auc.push_back(binary_roc_auc(positive, column));
  }
  return auc;
}

// Macro average of the one-vs-rest AUCs (see the header comment for undefined classes).
template <class S>
double roc_auc_ovr(const Tensor<int64_t>& y_true, const Tensor<S>& scores, const RocAucOptions& options = {}) {
  const std::vector<double> auc = roc_auc_ovr_per_class(y_true, scores, options.check_probabilities);
  if (options.skip_undefined) return detail::nan_mean(auc);
  double s = 0;
  for (double a : auc) s += a;  // NaN when any class is undefined
  return s / static_cast<double>(auc.size());
}

}  // namespace mamclip::train
