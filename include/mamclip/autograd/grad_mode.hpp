#pragma once
// Whether ops record the graph. Off inside NoGradGuard and while backward runs.

namespace mamclip::autograd {

struct GradMode {
  static bool& enabled() {
    static thread_local bool on = true;
    return on;
  }
};

// Disables graph recording for its scope (optimizer steps, evaluation).
class NoGradGuard {
 public:
  NoGradGuard() : prev_(GradMode::enabled()) { GradMode::enabled() = false; }
  ~NoGradGuard() { GradMode::enabled() = prev_; }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

// Enables (or sets) graph recording for its scope; checkpoint's recompute uses it.
class GradModeGuard {
 public:
  explicit GradModeGuard(bool on) : prev_(GradMode::enabled()) { GradMode::enabled() = on; }
  ~GradModeGuard() { GradMode::enabled() = prev_; }
  GradModeGuard(const GradModeGuard&) = delete;
  GradModeGuard& operator=(const GradModeGuard&) = delete;

 private:
  bool prev_;
};

}  // namespace mamclip::autograd

namespace mamclip {
using autograd::NoGradGuard;
}
