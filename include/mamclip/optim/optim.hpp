#pragma once
// optim: optimizers and schedules with PyTorch semantics.
//
// defines:
//   optimizer.hpp     Optimizer (groups, lr, step, zero_grad), OptimizerBase<Options, State>, ParamGroup<Options>
//   sgd.hpp           SGD, SGDOptions (momentum, dampening, nesterov, coupled weight decay)
//   adamw.hpp         AdamW, AdamWOptions (torch.optim.AdamW single-tensor semantics, amsgrad)
//   lr_scheduler.hpp  LRScheduler, LambdaLR, ConstantLR, StepLR, CosineWithWarmup
//   grad_clip.hpp     clip_grad_norm_
//   grad_scaler.hpp   GradScaler (dynamic loss scaling for float16, torch.amp.GradScaler semantics)

#include "mamclip/optim/adamw.hpp"
#include "mamclip/optim/grad_clip.hpp"
#include "mamclip/optim/grad_scaler.hpp"
#include "mamclip/optim/lr_scheduler.hpp"
#include "mamclip/optim/optimizer.hpp"
#include "mamclip/optim/sgd.hpp"
