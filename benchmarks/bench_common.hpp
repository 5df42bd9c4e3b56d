#pragma once
// Benchmark helpers. Every benchmark validates its results against the
// baseline before timing, warms up, then times ours and the baseline in
// alternating runs (so drift from other load hits both alike), and prints
// best-of and median rates with the ratio ours / baseline.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace mamclip::bench {

struct Timing {
  double best_s = 0, median_s = 0;
};

inline Timing summarize(std::vector<double> seconds) {
  std::sort(seconds.begin(), seconds.end());
  const size_t n = seconds.size();
  return {seconds.front(), n % 2 ? seconds[n / 2] : 0.5 * (seconds[n / 2 - 1] + seconds[n / 2])};
}

template <class F>
double seconds_of(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Runs `ours` and `base` `warmup` times each, then `reps` alternating timed runs.
template <class Ours, class Base>
std::pair<Timing, Timing> time_side_by_side(Ours&& ours, Base&& base, int warmup, int reps) {
  for (int i = 0; i < warmup; ++i) {
    ours();
    base();
  }
  std::vector<double> to, tb;
  for (int i = 0; i < reps; ++i) {
    to.push_back(seconds_of(ours));
    tb.push_back(seconds_of(base));
  }
  return {summarize(to), summarize(tb)};
}

inline double gflops(double flop, double seconds) { return flop / seconds * 1e-9; }

// Environment variables that change what a library runs, printed with the results.
inline void print_environment(const std::vector<const char*>& names) {
  for (const char* n : names) {
    const char* v = std::getenv(n);
    std::printf("  %-22s %s\n", n, v ? v : "(unset)");
  }
}

// One result line: rates of ours and the baseline and their ratio, best-of and median.
inline void print_header(const char* what, const char* ours, const char* base) {
  std::printf("%-28s | %-22s | %-22s | %s\n", what, ours, base, "ratio ours/base");
  std::printf("%-28s | %-22s | %-22s | %s\n", "", "GFLOP/s best (median)", "GFLOP/s best (median)", "best (median)");
  std::printf("%s\n", std::string(100, '-').c_str());
}
inline void print_row(const std::string& what, double flop, const Timing& ours, const Timing& base) {
  const double ob = gflops(flop, ours.best_s), om = gflops(flop, ours.median_s);
  const double bb = gflops(flop, base.best_s), bm = gflops(flop, base.median_s);
  std::printf("%-28s | %8.1f (%8.1f)    | %8.1f (%8.1f)    | %.2f (%.2f)\n", what.c_str(), ob, om, bb, bm, ob / bb, om / bm);
}

}  // namespace mamclip::bench
