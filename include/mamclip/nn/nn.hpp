#pragma once
// nn: modules with PyTorch names and semantics.
//
// defines:
//   module.hpp      Module (parameters, buffers, submodules, state_dict, train/eval, to, zero_grad),
//                   UnaryModule (forward = checks + forward_impl), StateDict, state_dict_error, LoadResult
//   init.hpp        init::uniform_, normal_, trunc_normal_, constant_, zeros_, ones_, kaiming_uniform_,
//                   kaiming_normal_, xavier_uniform_, xavier_normal_, calculate_gain
//   linear.hpp      Linear
//   layer_norm.hpp  LayerNorm, LayerNorm2d
//   conv.hpp        Conv2d
//   embedding.hpp   Embedding
//   dropout.hpp     Dropout, DropPath
//   activation.hpp  GELU, ReLU, Tanh, Identity
//   attention.hpp   MultiheadAttention, multi_head_attention_forward
//   containers.hpp  Sequential, ModuleList, ModuleListOf<M>

#include "mamclip/nn/activation.hpp"
#include "mamclip/nn/attention.hpp"
#include "mamclip/nn/containers.hpp"
#include "mamclip/nn/conv.hpp"
#include "mamclip/nn/dropout.hpp"
#include "mamclip/nn/embedding.hpp"
#include "mamclip/nn/init.hpp"
#include "mamclip/nn/layer_norm.hpp"
#include "mamclip/nn/linear.hpp"
#include "mamclip/nn/module.hpp"
