#pragma once
// mamclip: a header-only C++20 deep-learning library with reverse-mode autograd.
// This is the CPU umbrella header; it never includes CUDA headers.
//
//   #include <mamclip/mamclip.hpp>
//   using namespace mamclip;
//   auto w = randn<float>({3, 4}).set_requires_grad();
//   auto x = randn<float>({8, 4});
//   auto loss = mean(pow(matmul(x, w.t()), 2.0));
//   loss.backward();          // w.grad() now holds d loss / d w
//
// defines:
//   core/      Tensor<T>, Shape, Device, DType, errors, Generator, factories, AutocastGuard
//   autograd/  Node, backward engine, NoGradGuard, checkpoint, gradcheck
//   ops/       elementwise, reduce, matmul, shape, indexing, softmax, attention, conv, pool, norm, loss
//   nn/        Module, Linear, Conv2d, LayerNorm, LayerNorm2d, Embedding, Dropout, DropPath, GELU, Sequential,
//              ModuleList, init
//   optim/     SGD, AdamW, LR schedules, clip_grad_norm_, GradScaler
//   io/        safetensors and PyTorch checkpoint reading, safetensors writing, load_state_dict(file)

#include "mamclip/core/autocast.hpp"
#include "mamclip/core/config.hpp"
#include "mamclip/core/device.hpp"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/core/dtype.hpp"
#include "mamclip/core/error.hpp"
#include "mamclip/core/factory.hpp"
#include "mamclip/core/random.hpp"
#include "mamclip/core/shape.hpp"
#include "mamclip/core/storage.hpp"
#include "mamclip/core/tensor.hpp"
#include "mamclip/core/tensor_data.hpp"

#include "mamclip/autograd/checkpoint.hpp"
#include "mamclip/autograd/engine.hpp"
#include "mamclip/autograd/function.hpp"
#include "mamclip/autograd/gradcheck.hpp"
#include "mamclip/autograd/grad_mode.hpp"
#include "mamclip/autograd/node.hpp"

#include "mamclip/ops/attention/attention.hpp"
#include "mamclip/ops/conv/conv.hpp"
#include "mamclip/ops/elementwise/elementwise.hpp"
#include "mamclip/ops/fwd.hpp"
#include "mamclip/ops/indexing/indexing.hpp"
#include "mamclip/ops/loss/loss.hpp"
#include "mamclip/ops/matmul/matmul.hpp"
#include "mamclip/ops/norm/norm.hpp"
#include "mamclip/ops/pool/pool.hpp"
#include "mamclip/ops/reduce/reduce.hpp"
#include "mamclip/ops/shape/shape.hpp"
#include "mamclip/ops/softmax/softmax.hpp"

#include "mamclip/nn/nn.hpp"
#include "mamclip/optim/optim.hpp"

#include "mamclip/io/io.hpp"
