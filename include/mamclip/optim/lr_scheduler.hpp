#pragma once
// Learning-rate schedules with torch.optim.lr_scheduler.LambdaLR semantics:
// each group's lr is its base lr (the lr it had when the scheduler was made)
// times factor(s). Construction sets s = 0 and applies factor(0); each step()
// advances s by one and applies factor(s). The loop is PyTorch's:
//
//   optimizer.step(); scheduler.step();
//
// so the k-th optimizer step (k from 0) uses base_lr * factor(k).

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "mamclip/optim/optimizer.hpp"

namespace mamclip::optim {

class LRScheduler {
 public:
  using Factor = std::function<double(int64_t step)>;

  // The optimizer must outlive the scheduler.
  LRScheduler(Optimizer& optimizer, Factor factor) : optimizer_(&optimizer), factor_(std::move(factor)) {
    MAMCLIP_CHECK(factor_ != nullptr, value_error, "LRScheduler: the factor function is empty");
    for (size_t g = 0; g < optimizer.num_param_groups(); ++g) base_lrs_.push_back(optimizer.lr(g));
    apply();
  }
  virtual ~LRScheduler() = default;

  void step() {
    ++step_;
    apply();
  }
  // Jumps to step s (resuming from a checkpoint) and applies its lr.
  void set_step(int64_t s) {
    MAMCLIP_CHECK(s >= 0, value_error, "LRScheduler.set_step: step must be non-negative, got ", s);
    step_ = s;
    apply();
  }
  int64_t last_step() const { return step_; }
  double factor(int64_t s) const { return factor_(s); }
  const std::vector<double>& base_lrs() const { return base_lrs_; }
  // The lr of each group as last set (PyTorch's get_last_lr()).
  std::vector<double> last_lr() const {
    std::vector<double> out;
    for (size_t g = 0; g < base_lrs_.size(); ++g) out.push_back(optimizer_->lr(g));
    return out;
  }

 private:
  void apply() {
    MAMCLIP_CHECK(optimizer_->num_param_groups() == base_lrs_.size(), value_error, "LRScheduler: the optimizer had ",
                  base_lrs_.size(), " parameter groups when the scheduler was made and has ",
                  optimizer_->num_param_groups(), " now");
    const double f = factor_(step_);
    MAMCLIP_CHECK(std::isfinite(f) && f >= 0, value_error, "LRScheduler: factor(", step_, ") = ", f,
                  " is not a finite non-negative number");
    for (size_t g = 0; g < base_lrs_.size(); ++g) optimizer_->set_lr(g, base_lrs_[g] * f);
  }

  Optimizer* optimizer_;
  Factor factor_;
  std::vector<double> base_lrs_;
  int64_t step_ = 0;
};

// torch.optim.lr_scheduler.LambdaLR with one function for all groups.
class LambdaLR : public LRScheduler {
 public:
  LambdaLR(Optimizer& optimizer, Factor factor) : LRScheduler(optimizer, std::move(factor)) {}
};

// factor(s) = 1 (HF get_constant_schedule).
class ConstantLR : public LRScheduler {
 public:
  explicit ConstantLR(Optimizer& optimizer) : LRScheduler(optimizer, [](int64_t) { return 1.0; }) {}
};

// factor(s) = gamma ^ floor(s / step_size) (torch StepLR, closed form).
class StepLR : public LRScheduler {
 public:
  StepLR(Optimizer& optimizer, int64_t step_size, double gamma = 0.1)
      : LRScheduler(optimizer, make(step_size, gamma)) {}

 private:
  static Factor make(int64_t step_size, double gamma) {
    MAMCLIP_CHECK(step_size > 0, value_error, "StepLR: step_size must be positive, got ", step_size);
    MAMCLIP_CHECK(gamma >= 0, value_error, "StepLR: gamma must be non-negative, got ", gamma);
    return [step_size, gamma](int64_t s) { return std::pow(gamma, static_cast<double>(s / step_size)); };
  }
};

// Linear warmup then cosine decay: HF transformers get_cosine_schedule_with_warmup.
//   s < warmup:  s / max(1, warmup)
//   otherwise:   max(0, 0.5 * (1 + cos(pi * 2 * num_cycles * (s - warmup) / max(1, total - warmup))))
// With num_cycles = 0.5 the factor falls from 1 at s = warmup to 0 at s = total.
class CosineWithWarmup : public LRScheduler {
  static constexpr double kPi = 3.141592653589793;

 public:
  CosineWithWarmup(Optimizer& optimizer, int64_t warmup_steps, int64_t total_steps, double num_cycles = 0.5)
      : LRScheduler(optimizer, make(warmup_steps, total_steps, num_cycles)) {}

  // Same operation order as the HF code, so factors match its doubles exactly.
  static double factor_at(int64_t s, int64_t warmup, int64_t total, double num_cycles = 0.5) {
    if (s < warmup) return static_cast<double>(s) / static_cast<double>(std::max<int64_t>(1, warmup));
    const double progress =
        static_cast<double>(s - warmup) / static_cast<double>(std::max<int64_t>(1, total - warmup));
    return std::max(0.0, 0.5 * (1.0 + std::cos(kPi * num_cycles * 2.0 * progress)));
  }

 private:
  static Factor make(int64_t warmup, int64_t total, double num_cycles) {
    MAMCLIP_CHECK(warmup >= 0, value_error, "CosineWithWarmup: warmup_steps must be non-negative, got ", warmup);
    MAMCLIP_CHECK(total >= warmup, value_error, "CosineWithWarmup: total_steps ", total,
                  " must be at least warmup_steps ", warmup);
    return [=](int64_t s) { return factor_at(s, warmup, total, num_cycles); };
  }
};

}  // namespace mamclip::optim
