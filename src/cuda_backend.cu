// The one translation unit of the mamclip::cuda library: the CUDA backend's
// implementation, which registers itself during static initialisation.
#define MAMCLIP_CUDA_IMPLEMENTATION
#include "mamclip/cuda.hpp"

// A static library member is linked only when something references it, and
// nothing references a self-registering unit. mamclip::cuda's users link with
// "-u mamclip_cuda_backend_link_anchor" (cmake/cuda_targets.cmake), which
// pulls this object, and so its static initialiser, into every program.
extern "C" {
extern const int mamclip_cuda_backend_link_anchor;
const int mamclip_cuda_backend_link_anchor = 1;
}
