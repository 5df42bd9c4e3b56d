// A unit of the mamclip::cuda library: the convolution kernels, compiled apart
// from the rest of the backend (see mamclip/cuda.hpp); src/cuda_backend.cu
// calls the registration below.
#include "mamclip/ops/conv/cuda.cuh"

namespace mamclip::cuda::units {
void register_conv() { register_conv_kernels(); }
}  // namespace mamclip::cuda::units
