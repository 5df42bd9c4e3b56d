# MAMCLIP_WITH_CUDA: ON by default when a CUDA compiler is found.
include(CheckLanguage)
check_language(CUDA)
if(CMAKE_CUDA_COMPILER)
  set(_mamclip_cuda_default ON)
else()
  set(_mamclip_cuda_default OFF)
endif()
option(MAMCLIP_WITH_CUDA "Build the CUDA backend (mamclip::cuda)" ${_mamclip_cuda_default})
