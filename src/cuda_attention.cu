// A unit of the mamclip::cuda library: the fused attention kernels, compiled apart
// from the rest of the backend (see mamclip/cuda.hpp); src/cuda_backend.cu
// calls the registration below.
#include "mamclip/ops/attention/cuda.cuh"

namespace mamclip::cuda::units {
void register_attention() { register_attention_kernels(); }
}  // namespace mamclip::cuda::units
