// NcclCommunicator on one rank (an MPI singleton bootstraps it) or, under
// mpirun, on every rank with the GPU of its local rank. Built with the host
// compiler against the CUDA runtime and NCCL; without a CUDA device (or with
// fewer GPUs than ranks) it only proves that, and says so. With the CUDA
// backend linked (MAMCLIP_TEST_DATA_PARALLEL) it also trains a small model
// through DataParallel, over NCCL and staged through MPI, each rank on its own
// data, against one process averaging the gradients of all ranks' data.

#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mamclip/dist/mpi.hpp"
#include "mamclip/dist/nccl.hpp"
#ifdef MAMCLIP_TEST_DATA_PARALLEL
#include "mamclip/mamclip.hpp"
#include "mamclip/dist/parallel.hpp"
#endif

using namespace mamclip;
using namespace mamclip::dist;

namespace {

int failures = 0;
void expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

void check_cuda(cudaError_t e) {
  if (e != cudaSuccess) throw std::runtime_error(cudaGetErrorString(e));
}

#ifdef MAMCLIP_TEST_DATA_PARALLEL
// The gradients of a two-layer MLP after two accumulated micro-batches of
// rank `rank`'s data on `device`, through DataParallel (nccl: its NCCL bucket
// communicator, else MPI through host memory: the mean over the ranks) or
// without it (this rank's data alone).
std::vector<std::vector<float>> mlp_gradients(Communicator* comm, bool nccl, int rank, Device device,
                                              std::string* bucket_backend) {
  Generator init(7), data(8 + static_cast<uint64_t>(rank));
  nn::Sequential mlp;
  mlp.push_back(std::make_shared<nn::Linear>(37, 19, init));
  mlp.push_back(std::make_shared<nn::GELU>());
  mlp.push_back(std::make_shared<nn::Linear>(19, 5, init));
  mlp.to(device);
  std::optional<DataParallel> dp;
  if (comm) {
    DataParallelOptions o;
    o.bucket_bytes = 512;  // several buckets, in flight during backward
    o.nccl = nccl;
    dp.emplace(mlp, *comm, o);
    *bucket_backend = dp->bucket_communicator().backend();
  }
  for (int micro = 0; micro < 2; ++micro) {
    if (dp) dp->set_sync(micro == 1);
    const Tensor<float> x = randn<float>({13, 37}, data).to(device);
    sum(mul(mlp.forward(x), mlp.forward(x))).backward();
  }
  if (dp) dp->finish_gradient_sync();
  std::vector<std::vector<float>> grads;
  for (auto& p : mlp.parameters()) grads.push_back(p.grad().to_vector());
  return grads;
}

void data_parallel_on_gpu(Communicator& boot, Device device) {
  // One process: the mean of the gradients of every rank's data.
  std::vector<std::vector<float>> reference;
  for (int r = 0; r < boot.world_size(); ++r) {
    const auto g = mlp_gradients(nullptr, false, r, device, nullptr);
    if (reference.empty()) reference.assign(g.size(), {});
    for (size_t i = 0; i < g.size(); ++i) {
      reference[i].resize(g[i].size());
      for (size_t j = 0; j < g[i].size(); ++j) reference[i][j] += g[i][j] / static_cast<float>(boot.world_size());
    }
  }
  for (bool nccl : {true, false}) {
    std::string backend;
    const auto got = mlp_gradients(&boot, nccl, boot.rank(), device, &backend);
    expect(backend == (nccl ? "nccl" : "mpi"), nccl ? "DataParallel on a GPU reduces over NCCL"
                                                   : "DataParallel with nccl off reduces over MPI");
    bool same = got.size() == reference.size();
    for (size_t i = 0; same && i < got.size(); ++i) {
      same = got[i].size() == reference[i].size();
      for (size_t j = 0; same && j < got[i].size(); ++j)
        same = std::fabs(got[i][j] - reference[i][j]) <= 1e-5f * (1.0f + std::fabs(reference[i][j]));
    }
    expect(same, nccl ? "DataParallel gradients over NCCL equal the single-process ones"
                      : "DataParallel gradients staged through MPI equal the single-process ones");
  }
}
#endif

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("skipped: no CUDA device\n");
    return 0;
  }
  try {
    MpiCommunicator boot;
    if (devices < boot.world_size()) {
      std::printf("skipped: %d ranks need %d GPUs (one per rank), this machine has %d\n", boot.world_size(),
                  boot.world_size(), devices);
      return 0;
    }
    NcclCommunicator comm(boot);  // the local rank's GPU
    check_cuda(cudaSetDevice(comm.device()));
    expect(comm.backend() == "nccl", "backend is nccl");
    expect(comm.world_size() == boot.world_size() && comm.rank() == boot.rank(), "ranks follow the bootstrap");

    const int64_t n = 1000003;
    std::vector<float> host(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) host[static_cast<size_t>(i)] = static_cast<float>((i * 37) % 1001 - 500) / 8.0f;
    float* d = nullptr;
    check_cuda(cudaMalloc(&d, static_cast<size_t>(n) * sizeof(float)));
    check_cuda(cudaMemcpy(d, host.data(), static_cast<size_t>(n) * sizeof(float), cudaMemcpyHostToDevice));
    const int world = comm.world_size();

    comm.all_reduce(d, n, DType::f32, ReduceOp::sum);
    std::vector<float> back(static_cast<size_t>(n));
    check_cuda(cudaMemcpy(back.data(), d, static_cast<size_t>(n) * sizeof(float), cudaMemcpyDeviceToHost));
    int64_t bad = 0;
    for (int64_t i = 0; i < n; ++i) bad += back[static_cast<size_t>(i)] != host[static_cast<size_t>(i)] * world;
    expect(bad == 0, "all_reduce sum of a device buffer");

    auto work = comm.all_reduce_async(d, 7, DType::f32, ReduceOp::max);
    comm.barrier();
    work->wait();
    expect(work->test(), "async all_reduce completes");

    // Half reductions are NCCL's to do (MPI refuses them).
    std::vector<mamclip::half> hh(5, mamclip::half(1.5f));
    mamclip::half* dh = nullptr;
    check_cuda(cudaMalloc(&dh, 5 * sizeof(mamclip::half)));
    check_cuda(cudaMemcpy(dh, hh.data(), 5 * sizeof(mamclip::half), cudaMemcpyHostToDevice));
    comm.all_reduce(dh, 5, DType::f16, ReduceOp::sum);
    check_cuda(cudaMemcpy(hh.data(), dh, 5 * sizeof(mamclip::half), cudaMemcpyDeviceToHost));
    expect(static_cast<float>(hh[4]) == 1.5f * world, "float16 all_reduce");

    float* dg = nullptr;
    check_cuda(cudaMalloc(&dg, 3 * sizeof(float) * static_cast<size_t>(world)));
    comm.all_gather(d, dg, std::vector<int64_t>(static_cast<size_t>(world), 3), DType::f32);
    std::vector<float> g(3 * static_cast<size_t>(world));
    check_cuda(cudaMemcpy(g.data(), dg, g.size() * sizeof(float), cudaMemcpyDeviceToHost));
    expect(g[2] == back[2], "all_gather");

    std::unique_ptr<Communicator> dup = comm.duplicate();
    dup->broadcast(d, n, DType::f32, 0);
    dup->barrier();
#ifdef MAMCLIP_TEST_DATA_PARALLEL
    data_parallel_on_gpu(boot, Device::cuda(comm.device()));
#endif

    cudaFree(dg);
    cudaFree(dh);
    cudaFree(d);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FAILED: %s\n", e.what());
    return 1;
  }
  std::printf(failures ? "%d check(s) failed\n" : "nccl: all checks passed\n", failures);
  return failures ? 1 : 0;
}
