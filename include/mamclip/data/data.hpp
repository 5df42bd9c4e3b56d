#pragma once
// mamclip data: datasets, synthetic data, the threaded loader and transforms.
// Decoding and writing images needs stb at link time (CMake: mamclip::image).
//
//   std::vector<data::Sample> s = data::read_mias("../shared/data/mias");
//   data::Split split = data::patient_split(s, 0.1, 0.1, /*seed=*/0);
//   data::Loader loader(split.train, {.batch_size = 8, .height = 256, .width = 192});
//   loader.start_epoch(0);
//   while (auto batch = loader.next()) { /* batch->images [B, 3, 256, 192] */ }
//
// defines:
//   datasets.hpp    Sample, read_caption_records, BiradsMapping, read_teknofest_metadata, read_mias,
//                   Split, patient_split, stratified_subset
//   synthetic.hpp   make_synthetic_set (procedural, clearly synthetic mammogram-like images)
//   loader.hpp      LoaderOptions, Batch, Loader (threads, prefetch, seeded order and augmentation)
//   transforms.hpp  resize, flips, downscale, grid distortion, min-max, preprocess_mammogram

#include "mamclip/data/datasets.hpp"
#include "mamclip/data/loader.hpp"
#include "mamclip/data/synthetic.hpp"
#include "mamclip/data/transforms.hpp"
