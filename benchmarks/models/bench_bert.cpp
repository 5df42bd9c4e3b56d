// BERT-base forward on the CPU (eval, no grad): mamclip's BertModel at
// PubMedBERT's shape (12 layers, hidden 768, 12 heads, vocab 30522) with
// random weights. Its baseline is transformers' BertModel under PyTorch, which
// runs in another process: bert_vs_torch.sh runs both at the same shapes and
// thread count and prints the ratio. Lines are in bert_torch.py's format.
//
//   bench_bert [--cases 1x128,8x128] [--iters 10] [--warmup 2]
//
// Threads: Eigen's GEMM uses OpenMP (OMP_NUM_THREADS), as PyTorch's
// intra-op pool does.

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "mamclip/models/bert.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace mamclip;

int main(int argc, char** argv) {
  std::string cases = "1x128,8x128";
  int iters = 10, warmup = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--cases") cases = argv[i + 1];
    else if (a == "--iters") iters = std::atoi(argv[i + 1]);
    else if (a == "--warmup") warmup = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "bench_bert: unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  int threads = 1;
#if defined(_OPENMP)
  threads = omp_get_max_threads();
#endif

  manual_seed(0);
  models::BertConfig config;  // BERT-base defaults = PubMedBERT's shape
  models::BertModel model(config);
  model.eval();
  NoGradGuard no_grad;

  size_t start = 0;
  while (start < cases.size()) {
    size_t end = cases.find(',', start);
    if (end == std::string::npos) end = cases.size();
    const std::string c = cases.substr(start, end - start);
    start = end + 1;
    const size_t x = c.find('x');
    if (x == std::string::npos) {
      std::fprintf(stderr, "bench_bert: case '%s' is not BATCHxSEQ\n", c.c_str());
      return 2;
    }
    const int64_t batch = std::atoll(c.substr(0, x).c_str()), seq = std::atoll(c.substr(x + 1).c_str());
    const Tensor<int64_t> ids = randint<int64_t>(5, config.vocab_size, {batch, seq});
    const Tensor<int64_t> mask = ones<int64_t>({batch, seq});
    std::vector<double> times;
    for (int i = 0; i < warmup + iters; ++i) {
      const double s = bench::seconds_of([&] { model.forward(ids, mask); });
      if (i >= warmup) times.push_back(s * 1e3);
    }
    const bench::Timing t = bench::summarize(times);
    std::printf("mamclip bert-base forward batch=%lld seq=%lld threads=%d: median %.2f ms min %.2f ms\n",
                static_cast<long long>(batch), static_cast<long long>(seq), threads, t.median_s, t.best_s);
  }
  return 0;
}
