// NcclCommunicator on one rank (an MPI singleton bootstraps it). Built with
// the host compiler against the CUDA runtime and NCCL; without a CUDA device
// it only proves that, and says so.

#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

#include "mamclip/dist/mpi.hpp"
#include "mamclip/dist/nccl.hpp"

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

void cuda(cudaError_t e) {
  if (e != cudaSuccess) throw std::runtime_error(cudaGetErrorString(e));
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("skipped: no CUDA device\n");
    return 0;
  }
  try {
    MpiCommunicator boot;
    NcclCommunicator comm(boot);
    expect(comm.backend() == "nccl", "backend is nccl");
    expect(comm.world_size() == boot.world_size() && comm.rank() == boot.rank(), "ranks follow the bootstrap");

    const int64_t n = 1000003;
    std::vector<float> host(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) host[static_cast<size_t>(i)] = static_cast<float>((i * 37) % 1001 - 500) / 8.0f;
    float* d = nullptr;
    cuda(cudaMalloc(&d, static_cast<size_t>(n) * sizeof(float)));
    cuda(cudaMemcpy(d, host.data(), static_cast<size_t>(n) * sizeof(float), cudaMemcpyHostToDevice));
    const int world = comm.world_size();

    comm.all_reduce(d, n, DType::f32, ReduceOp::sum);
    std::vector<float> back(static_cast<size_t>(n));
    cuda(cudaMemcpy(back.data(), d, static_cast<size_t>(n) * sizeof(float), cudaMemcpyDeviceToHost));
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
    cuda(cudaMalloc(&dh, 5 * sizeof(mamclip::half)));
    cuda(cudaMemcpy(dh, hh.data(), 5 * sizeof(mamclip::half), cudaMemcpyHostToDevice));
    comm.all_reduce(dh, 5, DType::f16, ReduceOp::sum);
    cuda(cudaMemcpy(hh.data(), dh, 5 * sizeof(mamclip::half), cudaMemcpyDeviceToHost));
    expect(static_cast<float>(hh[4]) == 1.5f * world, "float16 all_reduce");

    float* dg = nullptr;
    cuda(cudaMalloc(&dg, 3 * sizeof(float) * static_cast<size_t>(world)));
    comm.all_gather(d, dg, std::vector<int64_t>(static_cast<size_t>(world), 3), DType::f32);
    std::vector<float> g(3 * static_cast<size_t>(world));
    cuda(cudaMemcpy(g.data(), dg, g.size() * sizeof(float), cudaMemcpyDeviceToHost));
    expect(g[2] == back[2], "all_gather");

    std::unique_ptr<Communicator> dup = comm.duplicate();
    dup->broadcast(d, n, DType::f32, 0);
    dup->barrier();

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
