#pragma once
// A threaded batch loader with prefetch.
//
//   LoaderOptions   batch size, output size, shuffle, drop_last, seed, workers,
//                   prefetch (batches in flight per worker), augmentation
//                   ("none" | "soft" | "heavy"), skip_unreadable
//   Batch           images [B, 3, H, W] in [0, 1], captions, labels [B], dataset indices
//   Loader          start_epoch(epoch, skip_batches) then next() until it returns nullopt
//
// Each image: read_image (gray; RGB files through stb's luma), then
// preprocess_mammogram: resize to height x width, the augmentation, gray ->
// 3 channels, min-max to [0, 1] (a constant image is an error naming the sample).
//
// Determinism: the epoch's order is a permutation drawn from (seed, epoch)
// alone, and sample i's augmentation from a Generator seeded with
// (seed, epoch, i), so the batches are bit-identical for any number of
// workers (0 loads in the calling thread) and start_epoch(e, k) yields
// exactly batches k, k+1, ... of the uninterrupted epoch e (exact resume).
//
// Threads: workers claim batch numbers in order and may run at most
// workers x prefetch batches ahead of next(); next() hands batches out in
// order. An exception while building a batch is rethrown by the next() that
// reaches that batch (in the caller's thread); that batch is then consumed.
// start_epoch and the destructor stop and join the workers (a worker finishes
// the image it is decoding first), so destroying a Loader mid-epoch neither
// hangs nor leaks.
//
// Unreadable images: an io_error for sample i (missing file, corrupt or
// unsupported image) is rethrown as io_error "Loader: sample i ('path'): ...".
// With skip_unreadable the sample is left out of its batch (which is then
// shorter; a batch with no readable sample is skipped entirely) and counted
// in skipped(), the total over the Loader's life of samples left out in
// batches next() returned. Other errors (e.g. a constant image) are never skipped.

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "mamclip/core/error.hpp"
#include "mamclip/core/factory.hpp"
#include "mamclip/core/random.hpp"
#include "mamclip/core/tensor.hpp"
#include "mamclip/data/datasets.hpp"
#include "mamclip/data/transforms.hpp"
#include "mamclip/io/image.hpp"

namespace mamclip::data {

struct LoaderOptions {
  int64_t batch_size = 8;
  int64_t height = 1024, width = 768;
  bool shuffle = true;
  bool drop_last = false;
  uint64_t seed = 0;
  int workers = 2;
  int prefetch = 2;
  std::string augmentation = "none";  // none | soft | heavy
  bool skip_unreadable = false;
  // Data-parallel sharding: with world_size W, batch i of the epoch is the
  // i-th global batch of W * batch_size samples of the shared seeded order,
  // and rank r gets its r-th slice, so the ranks' batches together are the
  // batch one process would draw with batch_size * W. A last global batch
  // with fewer than W samples is dropped (a rank would get none).
  int rank = 0, world_size = 1;
};

struct Batch {
  Tensor<float> images;               // [B, 3, H, W] in [0, 1]
  std::vector<std::string> captions;  // B
  Tensor<int64_t> labels;             // [B]
  std::vector<int64_t> indices;       // B positions in the Loader's sample list
};

class Loader {
 public:
  Loader(std::vector<Sample> samples, LoaderOptions options)
      : samples_(std::move(samples)), options_(std::move(options)) {
    MAMCLIP_CHECK(options_.batch_size > 0, value_error, "Loader: batch_size is ", options_.batch_size,
                  "; expected > 0");
    MAMCLIP_CHECK(options_.height > 0 && options_.width > 0, value_error, "Loader: output size ", options_.height,
                  " x ", options_.width, "; expected positive height and width");
    MAMCLIP_CHECK(options_.workers >= 0, value_error, "Loader: workers is ", options_.workers,
                  "; expected >= 0 (0 loads in the calling thread)");
    MAMCLIP_CHECK(options_.world_size >= 1 && options_.rank >= 0 && options_.rank < options_.world_size, value_error,
                  "Loader: rank ", options_.rank, " of world size ", options_.world_size,
                  "; expected 0 <= rank < world_size");
    MAMCLIP_CHECK(options_.prefetch >= 1, value_error, "Loader: prefetch is ", options_.prefetch, "; expected >= 1");
    if (options_.augmentation == "none")
      augmentation_ = Augmentation::none;
    else if (options_.augmentation == "soft")
      augmentation_ = Augmentation::soft;
    else if (options_.augmentation == "heavy")
      augmentation_ = Augmentation::heavy;
    else
      throw value_error(::mamclip::detail::str_cat("Loader: augmentation is \"", options_.augmentation,
                                                   "\"; expected \"none\", \"soft\" or \"heavy\""));
  }
  ~Loader() { stop_workers(); }
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  int64_t size() const { return static_cast<int64_t>(samples_.size()); }
  const LoaderOptions& options() const { return options_; }

  int64_t batches_per_epoch() const {
    const int64_t n = size(), b = options_.batch_size * options_.world_size;
    if (options_.drop_last) return n / b;
    const int64_t rest = n % b;
    return n / b + (rest >= options_.world_size ? 1 : 0);
  }

  // Positions in the sample list of this rank's part of batch `batch` of the
  // current epoch (before skipping unreadable images).
  std::vector<int64_t> batch_indices(int64_t batch) const {
    MAMCLIP_CHECK(started_, value_error, "Loader::batch_indices: call start_epoch first");
    MAMCLIP_CHECK(batch >= 0 && batch < batches_per_epoch(), index_error, "Loader::batch_indices: batch ", batch,
                  " of an epoch of ", batches_per_epoch(), " batches");
    const auto [begin, end] = rows_of(batch);
    return std::vector<int64_t>(order_.begin() + begin, order_.begin() + end);
  }

  // Starts epoch `epoch` at batch `skip_batches` (0 <= skip <= batches_per_epoch).
  void start_epoch(int64_t epoch, int64_t skip_batches = 0) {
    MAMCLIP_CHECK(epoch >= 0, value_error, "Loader::start_epoch: epoch is ", epoch, "; expected >= 0");
    MAMCLIP_CHECK(skip_batches >= 0 && skip_batches <= batches_per_epoch(), value_error,
                  "Loader::start_epoch: skip_batches is ", skip_batches, "; expected 0 to ", batches_per_epoch(),
                  " (batches per epoch)");
    stop_workers();
    epoch_ = epoch;
    order_ = options_.shuffle ? detail::seeded_permutation(size(), detail::mix_keys(options_.seed, 0x4F52444552ull),
                                                           static_cast<uint64_t>(epoch))
                              : identity_order();
    next_batch_ = skip_batches;
    claimed_ = skip_batches;
    ready_.clear();
    stopping_ = false;
    started_ = true;
    for (int i = 0; i < options_.workers; ++i) threads_.emplace_back([this] { worker_loop(); });
  }

  // The next batch of the epoch, or nullopt at its end. Before any
  // start_epoch, starts epoch 0.
  std::optional<Batch> next() {
    if (!started_) start_epoch(0);
    while (true) {
      if (next_batch_ >= batches_per_epoch()) return std::nullopt;
      const int64_t b = next_batch_;
      Built built;
      if (options_.workers == 0) {
        built = build(b);
      } else {
        std::unique_lock<std::mutex> lock(mutex_);
        ready_cv_.wait(lock, [&] { return ready_.count(b) != 0; });
        built = std::move(ready_.at(b));
        ready_.erase(b);
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        ++next_batch_;
      }
      claim_cv_.notify_all();
      skipped_ += built.skipped;
      if (built.error) std::rethrow_exception(built.error);
      if (built.batch) return std::move(built.batch);
      // Every sample of the batch was unreadable and skipped: go on.
    }
  }

  int64_t skipped() const { return skipped_; }

 private:
  struct Built {
    std::optional<Batch> batch;
    std::exception_ptr error;
    int64_t skipped = 0;
  };

  std::vector<int64_t> identity_order() const {
    std::vector<int64_t> o(samples_.size());
    for (size_t i = 0; i < o.size(); ++i) o[i] = static_cast<int64_t>(i);
    return o;
  }

  // Preprocessed [3, H, W] image of sample `index`, or nullopt when it is
  // unreadable and skip_unreadable is set.
  std::optional<Tensor<float>> load(int64_t index) const {
    const Sample& s = samples_[static_cast<size_t>(index)];
    const std::string who = ::mamclip::detail::str_cat("Loader: sample ", index, " ('", s.image.string(), "')");
    io::Image image;
    try {
      io::ImageReadOptions read;
      read.channels = 1;
      image = io::read_image(s.image, read);
    } catch (const io_error& e) {
      if (options_.skip_unreadable) return std::nullopt;
      throw io_error(who + ": " + e.what());
    }
    Generator gen(
        detail::mix_keys(detail::mix_keys(options_.seed, static_cast<uint64_t>(epoch_)), static_cast<uint64_t>(index)));
    MammogramTransformOptions t;
    t.height = options_.height;
    t.width = options_.width;
    t.augmentation = augmentation_;
    return preprocess_mammogram(image.pixels, t, gen, who);
  }

  // This rank's [begin, end) in order_ of batch b.
  std::pair<int64_t, int64_t> rows_of(int64_t b) const {
    const int64_t w = options_.world_size, global = options_.batch_size * w;
    const int64_t begin = b * global, m = std::min(size(), begin + global) - begin;
    return {begin + options_.rank * m / w, begin + (options_.rank + 1) * m / w};
  }

  Built build(int64_t b) const {
    Built out;
    try {
      const auto [begin, end] = rows_of(b);
      std::vector<Tensor<float>> images;
      Batch batch;
      std::vector<int64_t> labels;
      for (int64_t k = begin; k < end; ++k) {
        const int64_t index = order_[static_cast<size_t>(k)];
        std::optional<Tensor<float>> img = load(index);
        if (!img) {
          ++out.skipped;
          continue;
        }
        images.push_back(std::move(*img));
        batch.captions.push_back(samples_[static_cast<size_t>(index)].caption);
        labels.push_back(samples_[static_cast<size_t>(index)].label);
        batch.indices.push_back(index);
      }
      if (images.empty()) return out;
      const int64_t plane = 3 * options_.height * options_.width;
      batch.images = empty<float>({static_cast<int64_t>(images.size()), 3, options_.height, options_.width});
      for (size_t i = 0; i < images.size(); ++i)
        std::memcpy(batch.images.data_ptr() + static_cast<int64_t>(i) * plane, images[i].data_ptr(),
                    sizeof(float) * static_cast<size_t>(plane));
      batch.labels = from_vector<int64_t>(labels);
      out.batch = std::move(batch);
    } catch (...) {
      out.error = std::current_exception();
      out.batch.reset();
    }
    return out;
  }

  void worker_loop() {
    const int64_t window = static_cast<int64_t>(options_.workers) * options_.prefetch;
    while (true) {
      int64_t b;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        claim_cv_.wait(lock,
                       [&] { return stopping_ || claimed_ < std::min(batches_per_epoch(), next_batch_ + window); });
        if (stopping_) return;
        b = claimed_++;
      }
      Built built = build(b);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopping_) return;
        ready_.emplace(b, std::move(built));
      }
      ready_cv_.notify_all();
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    claim_cv_.notify_all();
    for (std::thread& t : threads_) t.join();
    threads_.clear();
    ready_.clear();
  }

  std::vector<Sample> samples_;
  LoaderOptions options_;
  Augmentation augmentation_ = Augmentation::none;

  // Set by start_epoch while no worker runs; read-only for the workers.
  int64_t epoch_ = 0;
  std::vector<int64_t> order_;
  bool started_ = false;

  std::mutex mutex_;
  std::condition_variable claim_cv_, ready_cv_;
  int64_t next_batch_ = 0;  // the batch next() hands out next (guarded by mutex_ while workers run)
  int64_t claimed_ = 0;     // the next batch number a worker may claim
  bool stopping_ = false;
  std::map<int64_t, Built> ready_;
  std::vector<std::thread> threads_;
  int64_t skipped_ = 0;
};

}  // namespace mamclip::data
