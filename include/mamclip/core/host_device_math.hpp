#pragma once
// exp and log in float or double for the math CPU code and CUDA kernels
// share (MAMCLIP_HOST_DEVICE functions: the attention and CLIP-loss tiles):
// one name for both precisions, as std:: has on the host, calling CUDA's
// expf / exp on the device.
#include <cmath>

#include "mamclip/core/config.hpp"

namespace mamclip::hd {

MAMCLIP_HOST_DEVICE float exp(float x) { return ::expf(x); }
MAMCLIP_HOST_DEVICE double exp(double x) { return ::exp(x); }
MAMCLIP_HOST_DEVICE float log(float x) { return ::logf(x); }
MAMCLIP_HOST_DEVICE double log(double x) { return ::log(x); }

}  // namespace mamclip::hd
