// The main unit of the mamclip::cuda library: the CUDA backend's
// implementation, which registers itself during static initialisation. The
// heaviest kernel families are compiled in units of their own
// (src/cuda_<family>.cu) and only registered from here.
#define MAMCLIP_CUDA_IMPLEMENTATION
#define MAMCLIP_CUDA_SEPARATE_UNITS
#include "mamclip/cuda.hpp"

// A static library member is linked only when something references it, and
// nothing references a self-registering unit. mamclip::cuda's users link with
// "-u mamclip_cuda_backend_link_anchor" (cmake/cuda_targets.cmake), which
// pulls this object, and so its static initialiser (and, through it, the
// other units), into every program.
extern "C" {
extern const int mamclip_cuda_backend_link_anchor;
const int mamclip_cuda_backend_link_anchor = 1;
}
