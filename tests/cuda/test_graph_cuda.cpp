// CUDA graphs (core/cuda/graph.cuh): a captured forward and backward replays
// the eager values on new inputs, from its own memory and without raw
// allocations; what a capture refuses (host synchronisation, random draws,
// optimizer steps) is a device_error after which the thread's stream, the
// allocator and eager work are as before.
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "cuda/gpu_support.hpp"
#include "mamclip/core/cuda/graph.cuh"
#include "mamclip/models/bert.hpp"
#include "mamclip/models/convnext.hpp"

namespace test_graph_cuda {
using namespace mamclip;
using namespace mamclip::test;

namespace {

// A transformer-like step on parameters p: linear -> GELU -> layer norm ->
// linear -> softmax -> mean squared error against fixed targets.
struct Step {
  std::vector<Tensor<float>> p;  // w1 [40, 13], b1, gamma, beta [40], w2 [7, 40], b2 [7]
  Tensor<float> target;          // [N, 7]

  Step(Device d, int64_t n) {
    const std::vector<Shape> shapes{{40, 13}, {40}, {40}, {40}, {7, 40}, {7}};
    for (size_t i = 0; i < shapes.size(); ++i)
      p.push_back(rnd<float>(shapes[i], 100 + i, -0.5, 0.5).to(d).set_requires_grad());
    target = rnd<float>({n, 7}, 99, 0, 0.3).to(d);
  }
  Tensor<float> loss(const Tensor<float>& x) const {
    Tensor<float> h = gelu(linear(x, p[0], p[1]));
    h = layer_norm(h, Shape{40}, p[2], p[3], 1e-5);
    const Tensor<float> d = softmax(linear(h, p[4], p[5]), -1) - target;
    return mean(d * d);
  }
  void zero_grad() {
    for (auto& t : p) t.set_grad(Tensor<float>());
  }
};

void require_close(const Tensor<float>& gpu, const Tensor<float>& cpu, const std::string& what) {
  const auto want = cpu.to<double>();
  const double scale = want.numel() ? amax(abs(want)).item() : 0.0;
  require_allclose(gpu.to(kCPU).to<double>(), want, 1e-5 * std::max(1.0, scale), 0.0, what);
}

// Captures pass() (a forward and backward of `module`, gradients undefined
// before) after an eager run, replays it, and requires the replay's output
// and every gradient to equal the eager run's on the same device.
template <class Pass>
void require_replay_matches_eager(nn::Module& module, Pass pass, const std::string& what) {
  INFO(what);
  auto params = module.parameters();
  auto zero_grad = [&] {
    for (auto& p : params) p.set_grad(Tensor<float>());
  };
  zero_grad();
  Tensor<float> eager_out = pass();
  eager_out.backward();
  const Tensor<float> eager = eager_out.detach().clone();
  std::vector<Tensor<float>> eager_grads;
  for (const auto& p : params) eager_grads.push_back(p.grad().detach().clone());
  zero_grad();
  cuda::Graph graph;
  Tensor<float> out;
  graph.capture([&] {
    out = pass();
    out.backward();
  });
  graph.replay();
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  require_close(out.detach(), eager.to(kCPU), "output");
  for (size_t i = 0; i < params.size(); ++i) require_close(params[i].grad(), eager_grads[i].to(kCPU), "grad");
}

}  // namespace

TEST_CASE("capturing_device_graph is off outside a capture; a Generator draws freely") {
  CHECK_FALSE(capturing_device_graph());
  Generator g(3);
  CHECK(g.next_offset() == 0);
}

TEST_CASE("a captured forward and backward replays the eager values on new inputs, without raw allocations",
          "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  constexpr int64_t n = 37;
  Step gpu(kGPU, n), cpu(kCPU, n);
  Tensor<float> x = rnd<float>({n, 13}, 1).to(kGPU);  // the captured input: new data goes into it
  gpu.loss(x).backward();                             // warm-up
  gpu.zero_grad();
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);

  cuda::Graph graph;
  Tensor<float> loss;
  graph.capture([&] {
    CHECK(capturing_device_graph());
    loss = gpu.loss(x);
    loss.backward();
  });
  CHECK_FALSE(capturing_device_graph());
  REQUIRE(graph.captured());
  for (const auto& t : gpu.p) REQUIRE(t.grad().defined());  // made inside the capture, from its pool

  std::vector<Tensor<float>> inputs, inputs_gpu;
  for (uint64_t round = 0; round < 3; ++round) {
    inputs.push_back(rnd<float>({n, 13}, 10 + round));
    inputs_gpu.push_back(inputs.back().to(kGPU));
  }
  const cuda::MemoryStats before = cuda::memory_stats(0);
  for (size_t round = 0; round < inputs.size(); ++round) {
    INFO("replay " << round);
    const Tensor<float>& xc = inputs[round];
    x.copy_(inputs_gpu[round]);  // device to device, same layout: no allocation
    graph.replay();
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    cpu.zero_grad();
    const Tensor<float> want = cpu.loss(xc);
    want.backward();
    require_close(loss.detach(), want.detach(), "loss");
    for (size_t i = 0; i < gpu.p.size(); ++i) require_close(gpu.p[i].grad(), cpu.p[i].grad(), "grad " + std::to_string(i));
  }
  const cuda::MemoryStats after = cuda::memory_stats(0);
  CHECK(after.cache_misses == before.cache_misses);  // replays take no new memory
  CHECK(after.allocated_bytes == before.allocated_bytes);

  // Eager work after the replays, and a new capture replacing the old one.
  require_close(sum(x), sum(x.to(kCPU)), "eager sum");
  graph.capture([&] { loss = gpu.loss(x) * 2.0; });
  graph.replay();
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  require_close(loss.detach(), cpu.loss(x.to(kCPU)).detach() * 2.0, "second capture");
}

TEST_CASE("what a capture refuses is a device_error; the stream, the allocator and eager work are as before",
          "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  const Tensor<float> x = rnd<float>({19, 13}, 2).to(kGPU);
  (void)sum(x).to(kCPU);  // warm-up
  cuda::Graph graph;
  const cuda::MemoryStats before = cuda::memory_stats(0);

  SECTION("a host synchronisation") {
    MAMCLIP_REQUIRE_THROWS_WITH(graph.capture([&] { (void)sum(x).to(kCPU); }), device_error,
                                "cuda::Graph::capture on cuda:0");
  }
  SECTION("an op that reads its indices on the host (cross_entropy validates its targets there)") {
    const Tensor<int64_t> target = from_vector<int64_t>(std::vector<int64_t>(19, 3), {19}, kGPU);
    (void)cross_entropy(x, target);  // runs eagerly
    MAMCLIP_REQUIRE_THROWS_WITH(graph.capture([&] { (void)cross_entropy(x, target); }), device_error,
                                "cuda::Graph::capture on cuda:0");
  }
  SECTION("a random draw (dropout)") {
    MAMCLIP_REQUIRE_THROWS_WITH(graph.capture([&] { (void)dropout(x, 0.1, true); }), device_error,
                                "a random draw while this thread captures a CUDA graph");
  }
  SECTION("an optimizer step") {
    Tensor<float> w = x.detach().clone().set_requires_grad();
    w.set_grad(x.detach().clone());
    optim::AdamW opt({w});
    MAMCLIP_REQUIRE_THROWS_WITH(graph.capture([&] { opt.step(); }), device_error,
                                "AdamW.step inside a CUDA graph capture");
  }
  SECTION("another exception from the region passes through unchanged") {
    CHECK_THROWS_AS(graph.capture([&] { throw shape_error("from the region"); }), shape_error);
  }
  CHECK_FALSE(graph.captured());
  CHECK_FALSE(capturing_device_graph());
  MAMCLIP_REQUIRE_THROWS_WITH(graph.replay(), device_error, "nothing captured");
  REQUIRE(cudaGetLastError() == cudaSuccess);
  require_close(sum(x * 3.0), sum(x.to(kCPU) * 3.0), "eager work after the failed capture");
  CHECK(cuda::memory_stats(0).allocated_bytes == before.allocated_bytes);
}

TEST_CASE("a ConvNeXt block (channels last) and a BERT layer capture and replay their eager forward and backward",
          "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  {
    models::ConvNeXtBlock block(24, 96, 7, 0.5, 0.0, 1e-6);
    block.to(kGPU);
    block.eval();
    const Tensor<float> x = contiguous_channels_last(rnd<float>({2, 24, 13, 11}, 51).to(kGPU));
    Generator gen(1);
    require_replay_matches_eager(block, [&] { return mean(block.forward(x, gen) * x); }, "ConvNeXt block, float");
    require_replay_matches_eager(
        block,
        [&] {
          AutocastGuard amp(DeviceType::cuda);
          return mean(block.forward(x, gen) * x);
        },
        "ConvNeXt block, bf16 autocast");
  }
  {
    models::BertConfig c;
    c.hidden_size = 64;
    c.num_attention_heads = 2;
    c.intermediate_size = 128;
    models::BertLayer layer(c);
    layer.to(kGPU);
    layer.eval();  // a capture takes no dropout
    const Tensor<float> h = rnd<float>({3, 17, 64}, 52).to(kGPU);
    std::vector<bool> attend(3 * 17, true);
    for (int64_t i = 12; i < 17; ++i) attend[static_cast<size_t>(2 * 17 + i)] = false;
    const Tensor<bool> mask = from_vector<bool>(attend, {3, 17}, kGPU);
    require_replay_matches_eager(
        layer,
        [&] {
          AutocastGuard amp(DeviceType::cuda);
          return mean(layer.forward(h, mask) * h);
        },
        "BERT layer, bf16 autocast, padding mask");
  }
}

}  // namespace test_graph_cuda
