// A unit of the mamclip::cuda library: every elementwise op's kernels, compiled apart
// from the rest of the backend (see mamclip/cuda.hpp); src/cuda_backend.cu
// calls the registration below.
#include "mamclip/ops/elementwise/cuda.cuh"

namespace mamclip::cuda::units {
void register_elementwise() { register_elementwise_kernels(); }
}  // namespace mamclip::cuda::units
