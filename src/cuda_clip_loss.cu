// A unit of the mamclip::cuda library: the fused CLIP loss kernels, compiled apart
// from the rest of the backend (see mamclip/cuda.hpp); src/cuda_backend.cu
// calls the registration below.
#include "mamclip/ops/loss/cuda.cuh"

namespace mamclip::cuda::units {
void register_clip_loss() { register_clip_loss_kernels(); }
}  // namespace mamclip::cuda::units
