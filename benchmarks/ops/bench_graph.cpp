// CUDA graphs (core/cuda/graph.cuh): a forward and backward pass replayed
// from one capture against the same pass launched op by op, in one process:
//
//   text tower  BERT's encoder, PubMedBERT's shape (BERT-base), batch 8 x 100
//               tokens (MAM-CLIP's text context) with a padding mask, bf16
//               autocast, eval mode (a capture takes no dropout), from the
//               embeddings' output (the embedding lookup checks its ids on the
//               host, which a capture does not allow), loss = mean of the
//               last hidden state
//   small       a 2-layer, 128-wide BERT at batch 8 x 32: launch-bound, where
//               the host's cost per kernel is most of the step
//
//   bench_graph
//
// Each case first checks that a replay gives the eager loss and gradients,
// then prints the best time of each (CUDA events around the whole pass, so
// the gaps the host leaves between kernels count) and the ratio eager /
// graph (above 1: the graph is faster). A case whose capture fails prints
// why (something in it synchronised with the host) and counts as a failure.
#include <cuda_runtime.h>

#include <cstdio>
#include <string>
#include <vector>

#include "mamclip/core/cuda/graph.cuh"
#include "mamclip/mamclip.hpp"
#include "mamclip/models/bert.hpp"
#include "ops/gpu_bench.hpp"

using namespace mamclip;

namespace {

struct Row {
  std::string what;
  double eager_ms = 0, graph_ms = 0, err = 0;
  bool ok = false;
  std::string failure;
};

Row run_bert(const std::string& what, const models::BertConfig& config, int64_t batch, int64_t length,
             const bench::L2Flush& flush) {
  const Device gpu = Device::cuda(0);
  Row row{what};
  manual_seed(0);
  models::BertModel model(config);
  model.to(gpu);
  model.eval();
  const Tensor<float> hidden = randn<float>({batch, length, config.hidden_size}).to(gpu);
  std::vector<bool> attend(static_cast<size_t>(batch * length), true);
  for (int64_t b = 0; b < batch; ++b)  // sample b has b padded positions at the end
    for (int64_t i = length - b; i < length; ++i) attend[static_cast<size_t>(b * length + i)] = false;
  const Tensor<bool> mask = from_vector<bool>(attend, {batch, length}, gpu);
  const auto params = model.encoder->parameters();
  auto pass = [&] {
    AutocastGuard amp(DeviceType::cuda);
    Tensor<float> loss = mean(model.encoder->forward(hidden, mask));
    loss.backward();
    return loss;
  };
  auto zero_grad = [&] {
    for (const auto& p : params) p.set_grad(Tensor<float>());
  };
  // Eager: the reference values, then the timing (gradients reset each time, as the graph's are).
  const Tensor<float> eager_loss = pass();
  const Tensor<float> eager_grad = params.front().grad().detach().clone();
  row.eager_ms = bench::best_ms([&] { zero_grad(); (void)pass(); }, flush);
  zero_grad();
  cuda::Graph graph;
  Tensor<float> loss;
  try {
    graph.capture([&] { loss = pass(); });
  } catch (const std::exception& e) {
    row.failure = e.what();
    return row;
  }
  graph.replay();
  bench::cuda_check(cudaDeviceSynchronize(), "replay");
  row.err = std::max(bench::rel_err(loss.detach(), eager_loss.detach()), bench::rel_err(params.front().grad(), eager_grad));
  row.ok = row.err < 2e-2;
  row.graph_ms = bench::best_ms([&] { graph.replay(); }, flush);
  return row;
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("bench_graph: no CUDA device; nothing to measure\n");
    return 2;
  }
  try {
    cudaDeviceProp prop{};
    bench::cuda_check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    const bench::L2Flush flush;
    std::printf("forward + backward on %s (sm_%d%d): one CUDA graph replay against eager launches; best of the timed "
                "runs\n", prop.name, prop.major, prop.minor);
    std::vector<Row> rows;
    models::BertConfig base;  // PubMedBERT's shape
    rows.push_back(run_bert("BERT-base 8x100 bf16", base, 8, 100, flush));
    models::BertConfig small = base;
    small.hidden_size = 128;
    small.num_hidden_layers = 2;
    small.num_attention_heads = 2;
    small.intermediate_size = 512;
    rows.push_back(run_bert("BERT 2x128 8x32 bf16", small, 8, 32, flush));
    std::printf("%-28s %10s %10s %12s %10s\n", "case", "eager ms", "graph ms", "eager/graph", "rel err");
    bool ok = true;
    for (const Row& r : rows) {
      if (!r.failure.empty()) {
        std::printf("%-28s capture FAILED: %s\n", r.what.c_str(), r.failure.c_str());
        ok = false;
        continue;
      }
      std::printf("%-28s %10.3f %10.3f %11.2fx %10.1e%s\n", r.what.c_str(), r.eager_ms, r.graph_ms,
                  r.eager_ms / r.graph_ms, r.err, r.ok ? "" : "  MISMATCH");
      ok = ok && r.ok;
    }
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_graph: %s\n", e.what());
    return 1;
  }
}
