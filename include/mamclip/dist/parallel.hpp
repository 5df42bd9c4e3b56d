#pragma once
// Data-parallel training over a Communicator.
//
//   gather_with_grad  all ranks' rows of a tensor, differentiable: the
//                     backward sums each row's gradient over ranks and hands
//                     the owner its rows (the contrastive loss's global
//                     negatives)
//   DataParallel      parameters broadcast from rank 0 at start; gradients
//                     averaged over ranks in buckets that are launched from
//                     autograd hooks while the rest of backward runs
//
// One step on every rank:
//   dp.set_sync(false) for all micro-batches but the last (accumulation
//   communicates once), backward, ..., dp.set_sync(true), last backward,
//   dp.finish_gradient_sync() — then .grad holds the mean over ranks.
//
// Parameters on a GPU: the buckets live where the bucket communicator works.
// Built with NCCL (mamclip::nccl defines MAMCLIP_WITH_NCCL), that is an
// NcclCommunicator over the same ranks on the parameters' GPU, so gradients
// never leave the device; without it, a duplicate of `comm`, and the buckets
// are staged through host memory (correct, but bound by PCIe).

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "mamclip/autograd/node.hpp"
#include "mamclip/autograd/grad_mode.hpp"
#include "mamclip/core/factory.hpp"
#include "mamclip/dist/communicator.hpp"
#include "mamclip/nn/module.hpp"
#include "mamclip/ops/elementwise/elementwise.hpp"  // detail::scale_in_place
#include "mamclip/ops/fwd.hpp"
#ifdef MAMCLIP_WITH_NCCL
#include "mamclip/dist/nccl.hpp"
#endif

namespace mamclip::dist {

// Row offset of this rank's rows in a gather whose ranks hold `rows` rows each.
inline int64_t row_offset(const std::vector<int64_t>& rows, int rank) {
  int64_t off = 0;
  for (int r = 0; r < rank; ++r) off += rows[static_cast<size_t>(r)];
  return off;
}

// All ranks' `t` concatenated along dim 0, with a gradient back to this
// rank's rows: the gradient of the output is summed over ranks (each rank's
// loss may use every row) and this rank's slice is kept. The communicator
// must outlive the graph. Every rank must run the backward.
// rows (optional): receives every rank's row count, in rank order.
template <class T>
Tensor<T> gather_with_grad(Communicator& comm, const Tensor<T>& t, std::vector<int64_t>* rows = nullptr) {
  std::vector<int64_t> counts;
  Tensor<T> out = all_gather(comm, t.detach(), &counts);
  const int64_t offset = row_offset(counts, comm.rank()), n = t.size(0);
  if (rows) *rows = counts;
  Communicator* c = &comm;
  return autograd::record<T>("GatherWithGradBackward", {t}, out, [c, offset, n](const Tensor<T>& g) {
    Tensor<T> summed = g.contiguous().clone();
    all_reduce(*c, summed, ReduceOp::sum);
    return std::vector<Tensor<T>>{summed.narrow(0, offset, n).contiguous()};
  });
}

struct DataParallelOptions {
  // Gradient bytes per bucket: small buckets start communicating earlier,
  // large ones cost fewer collectives.
  int64_t bucket_bytes = int64_t(25) << 20;
  bool broadcast_parameters = true;  // rank 0's parameters and buffers to all at construction
  // Parameters on a GPU, built with NCCL: reduce their gradients over NCCL
  // (off: over a duplicate of the communicator, staged through host memory).
  bool nccl = true;
};

class DataParallel {
 public:
  // Checks that every rank has the same parameter names and shapes (a
  // dist_error names the differing ranks), broadcasts rank 0's parameters and
  // buffers, and hooks every parameter. `module` and `comm` must outlive this.
  DataParallel(nn::Module& module, Communicator& comm, DataParallelOptions options = {})
      : comm_(&comm), options_(options) {
    MAMCLIP_CHECK(options_.bucket_bytes > 0, value_error, "DataParallel: bucket_bytes is ", options_.bucket_bytes,
                  "; expected > 0");
    std::string layout;
    for (auto& [name, p] : module.named_parameters()) {
      names_.push_back(name);
      params_.push_back(p);
      layout += name + shape_str(p.shape()) + (p.device().is_cpu() ? "@cpu;" : "@gpu;");
      MAMCLIP_CHECK(p.device() == params_[0].device(), value_error, "DataParallel: parameter ", name, " is on ",
                    p.device().str(), " but ", names_[0], " on ", params_[0].device().str(),
                    "; move the whole model to one device first");
    }
    // CPU or GPU is part of the layout: ranks that mix them stop here, named.
    check_same(comm, "model's parameter list (names, shapes, CPU or GPU)", layout);
    bucket_comm_ = make_bucket_communicator(comm);
    if (options_.broadcast_parameters) {
      for (auto& p : params_) broadcast(comm, p);
      for (auto& [name, b] : module.named_buffers()) broadcast(comm, b);
    }
    std::vector<size_t> order(params_.size());
    // Backward reaches the last parameters first: bucket in reverse order
    // until the first step has shown the real order.
    for (size_t i = 0; i < order.size(); ++i) order[i] = order.size() - 1 - i;
    build_buckets(order);
    for (size_t i = 0; i < params_.size(); ++i)
      if (params_[i].requires_grad())
        hooks_.emplace_back(i, params_[i].register_post_accumulate_grad_hook([this, i] { on_ready(i); }));
  }
  // Unhooks the parameters: the module outlives this and trains on its own.
  ~DataParallel() {
    for (const auto& [i, handle] : hooks_) params_[i].remove_post_accumulate_grad_hook(handle);
  }
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  Communicator& communicator() { return *comm_; }
  int world_size() const { return comm_->world_size(); }
  int rank() const { return comm_->rank(); }

  // Off: backward accumulates locally and communicates nothing (all
  // micro-batches of an accumulated step but the last).
  void set_sync(bool on) { sync_ = on; }
  bool sync() const { return sync_; }

  // Launches the buckets not launched yet (parameters no backward reached,
  // or gradients accumulated while sync was off), waits for all of them and
  // writes the mean over ranks into .grad. A parameter keeps an undefined
  // .grad only when it has none on every rank (as in one process, where an
  // optimizer then skips it). Resets the step.
  void finish_gradient_sync() {
    for (auto& b : buckets_) b.complete = true;
    launch_ready();
    NoGradGuard no_grad;
    // All reductions, then all flags, then the writes: on a GPU the first flag
    // read waits for every reduction and the others find theirs done, so the
    // step has one host sync, not one per bucket between queued kernels.
    for (auto& b : buckets_) b.work->wait();
    std::vector<std::vector<float>> has_grad(buckets_.size());
    for (size_t i = 0; i < buckets_.size(); ++i) {
      const Bucket& b = buckets_[i];
      has_grad[i] = b.buffer.narrow(0, b.total, static_cast<int64_t>(b.params.size())).to_vector();
    }
    const double inv = 1.0 / comm_->world_size();
    for (size_t i = 0; i < buckets_.size(); ++i) {
      Bucket& b = buckets_[i];
      Tensor<float> mean = b.buffer.narrow(0, 0, b.total);  // the sum over ranks, until scaled
      if (comm_->world_size() > 1) mamclip::detail::scale_in_place(mean, inv);
      int64_t at = 0;
      for (size_t j = 0; j < b.params.size(); ++j) {
        Tensor<float>& p = params_[b.params[j]];
        const int64_t n = p.numel();
        if (has_grad[i][j] > 0) {
          Tensor<float> g = p.grad();
          if (!g.defined()) {
            g = Tensor<float>::empty(p.shape(), p.device());
            p.set_grad(g);
          }
          g.copy_(mean.narrow(0, at, n).view(p.shape()));
        }
        at += n;
      }
      b.work.reset();
    }
    last_launched_in_backward_ = launched_in_backward_;
    if (!order_learned_) learn_order();
    reset_step();
  }

  // The communicator the gradient buckets are reduced over ("nccl" or the
  // job communicator's backend).
  const Communicator& bucket_communicator() const { return *bucket_comm_; }

  // Gradient elements all-reduced per step (float32, plus one flag per parameter).
  int64_t reduced_bytes_per_step() const {
    int64_t n = 0;
    for (const auto& b : buckets_) n += b.buffer.numel() * 4;
    return n;
  }
  int64_t buckets() const { return static_cast<int64_t>(buckets_.size()); }
  // Buckets whose reduction started inside backward in the last step (the
  // rest started in finish_gradient_sync).
  int64_t buckets_launched_in_backward() const { return last_launched_in_backward_; }

 private:
  struct Bucket {
    std::vector<size_t> params;  // indices into params_
    int64_t total = 0;           // gradient elements; one has-gradient flag per parameter follows them
    Tensor<float> buffer;        // on the bucket communicator's memory
    int64_t pending = 0;         // parameters whose gradient has not arrived this step
    bool complete = false;
    std::unique_ptr<Work> work;  // in flight or done, this step
  };

  void build_buckets(const std::vector<size_t>& order) {
    buckets_.clear();
    bucket_of_.assign(params_.size(), 0);
    Bucket cur;
    int64_t bytes = 0;
    auto close = [&] {
      if (cur.params.empty()) return;
      cur.buffer = Tensor<float>::empty({cur.total + static_cast<int64_t>(cur.params.size())}, bucket_comm_->memory());
      buckets_.push_back(std::move(cur));
      cur = Bucket{};
      bytes = 0;
    };
    for (size_t i : order) {
      if (!params_[i].requires_grad()) continue;
      bucket_of_[i] = buckets_.size();
      cur.params.push_back(i);
      cur.total += params_[i].numel();
      bytes += params_[i].numel() * 4;
      if (bytes >= options_.bucket_bytes) close();
    }
    close();
    reset_step();
  }

  void reset_step() {
    for (auto& b : buckets_) {
      b.pending = static_cast<int64_t>(b.params.size());
      b.complete = false;
      b.work.reset();
    }
    next_launch_ = 0;
    launched_in_backward_ = 0;
  }

  void on_ready(size_t i) {
    if (!sync_) return;
    if (!order_learned_) ready_order_.push_back(i);
    Bucket& b = buckets_[bucket_of_[i]];
    MAMCLIP_CHECK(!b.work, dist_error, "DataParallel: parameter ", names_[i],
                  " received a gradient after its bucket was reduced; with sync on, run one backward per step "
                  "(set_sync(false) for the micro-batches before the last)");
    if (--b.pending == 0) b.complete = true;
    const size_t before = next_launch_;
    launch_ready();
    launched_in_backward_ += static_cast<int64_t>(next_launch_ - before);
    for (auto& other : buckets_)  // drive the progress of those in flight
      if (other.work) other.work->test();
  }

  // Buckets start in index order on every rank, so the collectives match.
  void launch_ready() {
    while (next_launch_ < buckets_.size() && buckets_[next_launch_].complete) {
      Bucket& b = buckets_[next_launch_++];
      NoGradGuard no_grad;
      // The has-gradient flags are filled on the buffer's device, not uploaded:
      // a copy from pageable host memory would wait for every kernel queued so
      // far, once per bucket, in the middle of backward.
      Tensor<float> has_grad = b.buffer.narrow(0, b.total, static_cast<int64_t>(b.params.size()));
      has_grad.fill_(1.0f);
      int64_t at = 0;
      for (size_t j = 0; j < b.params.size(); ++j) {
        const Tensor<float>& p = params_[b.params[j]];
        const Tensor<float> g = p.grad();
        Tensor<float> slot = b.buffer.narrow(0, at, p.numel());
        if (g.defined()) {
          slot.copy_(g.reshape({p.numel()}));
        } else {
          slot.zero_();
          has_grad.narrow(0, static_cast<int64_t>(j), 1).zero_();
        }
        at += p.numel();
      }
      b.work = bucket_comm_->all_reduce_async(b.buffer.data_ptr(), b.buffer.numel(), DType::f32, ReduceOp::sum);
    }
  }

  std::unique_ptr<Communicator> make_bucket_communicator(Communicator& comm) const {
    const Device device = params_.empty() ? kCPU : params_[0].device();
#ifdef MAMCLIP_WITH_NCCL
    if (options_.nccl && device.type == DeviceType::cuda && comm.memory() != device)
      return std::make_unique<NcclCommunicator>(comm, device.index);
#endif
    // The TCP rendezvous of a torchrun-style launch carries control messages
    // through rank 0; gradients need a real transport.
    MAMCLIP_CHECK(comm.backend() != "tcp", dist_error, "DataParallel: the parameters are on ", device.str(),
                  " and this job was launched torchrun-style (", comm.world_size(),
                  " ranks, TCP rendezvous), which reduces gradients only over NCCL on GPUs",
                  device.type == DeviceType::cuda ? " (this program was built without NCCL, or options.nccl is off)"
                                                  : "",
                  "; launch with `mpirun -np ", comm.world_size(), " <program> ...` (Open MPI) instead");
    return comm.duplicate();
  }

  // After the first step: re-bucket in the order gradients arrived (rank 0's
  // order, so all ranks agree), parameters that got none last.
  void learn_order() {
    order_learned_ = true;
    const int64_t n = static_cast<int64_t>(params_.size());
    std::vector<int64_t> order(static_cast<size_t>(n), -1);
    std::vector<bool> seen(params_.size(), false);
    size_t k = 0;
    for (size_t i : ready_order_)
      if (!seen[i]) {
        seen[i] = true;
        order[k++] = static_cast<int64_t>(i);
      }
    for (size_t i = params_.size(); i-- > 0;)
      if (!seen[i]) order[k++] = static_cast<int64_t>(i);
    comm_->broadcast(order.data(), n, DType::i64, 0);
    std::vector<size_t> o(order.begin(), order.end());
    build_buckets(o);
    ready_order_.clear();
  }

  Communicator* comm_;
  std::unique_ptr<Communicator> bucket_comm_;
  DataParallelOptions options_;
  std::vector<std::string> names_;
  std::vector<Tensor<float>> params_;
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_;
  std::vector<std::pair<size_t, uint64_t>> hooks_;  // (parameter, hook handle)
  std::vector<size_t> ready_order_;
  size_t next_launch_ = 0;
  int64_t launched_in_backward_ = 0, last_launched_in_backward_ = 0;
  bool sync_ = true;
  bool order_learned_ = false;
};

}  // namespace mamclip::dist
