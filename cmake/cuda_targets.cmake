# The CUDA backend: mamclip::cuda, a static library that registers the CUDA
# device and its kernels at start-up. Its main unit (src/cuda_backend.cu,
# which defines MAMCLIP_CUDA_IMPLEMENTATION) calls the registrations of the
# heaviest kernel families, each compiled in a unit of its own so that a
# parallel build shares them out (src/cuda_<family>.cu). Linking it is all a
# program does; its own sources stay plain C++ (no CUDA compiler needed for them).
#
# Included by the top-level CMakeLists.txt when MAMCLIP_WITH_CUDA is ON
# (cmake/cuda.cmake). The CUDA language is enabled here, not in project(), so
# that CPU-only builds never look for nvcc.

set(MAMCLIP_CUDA_ARCHITECTURES "80;90" CACHE STRING
    "CUDA architectures of mamclip::cuda (CMAKE_CUDA_ARCHITECTURES syntax, e.g. 90 or native)")

# enable_language checks the compiler with CMAKE_CUDA_ARCHITECTURES; without
# it, CMake may pick an architecture that nvcc 13 no longer supports.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES ${MAMCLIP_CUDA_ARCHITECTURES})
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)

# CMake before 3.26 does not know nvcc's C++20 flag (nvcc has it since 12.0).
if(NOT DEFINED CMAKE_CUDA20_STANDARD_COMPILE_OPTION AND CMAKE_CUDA_COMPILER_ID STREQUAL "NVIDIA"
   AND CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 12.0)
  set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
  set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
endif()

add_library(mamclip_cuda STATIC
  ${PROJECT_SOURCE_DIR}/src/cuda_backend.cu
  ${PROJECT_SOURCE_DIR}/src/cuda_attention.cu
  ${PROJECT_SOURCE_DIR}/src/cuda_clip_loss.cu
  ${PROJECT_SOURCE_DIR}/src/cuda_conv.cu
  ${PROJECT_SOURCE_DIR}/src/cuda_elementwise.cu)
add_library(mamclip::cuda ALIAS mamclip_cuda)
target_link_libraries(mamclip_cuda PUBLIC mamclip::mamclip CUDA::cudart CUDA::cublas CUDA::cublasLt)
target_compile_features(mamclip_cuda PUBLIC cxx_std_20)
# Eigen on the host only (as mamclip/cuda.hpp sets it), in the family units too.
target_compile_definitions(mamclip_cuda PRIVATE EIGEN_NO_CUDA)
set_target_properties(mamclip_cuda PROPERTIES
  CUDA_ARCHITECTURES "${MAMCLIP_CUDA_ARCHITECTURES}"
  CUDA_STANDARD 20
  CUDA_STANDARD_REQUIRED ON
  CUDA_EXTENSIONS OFF
  # The shared runtime, as CUDA::cudart above: one runtime per process.
  CUDA_RUNTIME_LIBRARY Shared
  POSITION_INDEPENDENT_CODE ON)

# The library's main member registers itself and is referenced by nothing, so
# a linker would drop it from the archive (the family units are then pulled
# in by its references). Forcing its anchor symbol undefined
# makes every program that links mamclip::cuda pull it in (and run its static
# initialiser); the option travels with the exported target too.
if(MSVC)
  target_link_options(mamclip_cuda INTERFACE "/INCLUDE:mamclip_cuda_backend_link_anchor")
elseif(APPLE)
  target_link_options(mamclip_cuda INTERFACE "LINKER:-u,_mamclip_cuda_backend_link_anchor")
else()
  target_link_options(mamclip_cuda INTERFACE "LINKER:-u,mamclip_cuda_backend_link_anchor")
endif()

# cuDNN for conv2d's general path (ops/conv/cudnn.cuh); without it, im2col +
# cuBLAS. MAMCLIP_WITH_CUDNN is public: a program's own .cu that includes
# the kernels takes the same path, and tests know which paths exist.
option(MAMCLIP_WITH_CUDNN "Use cuDNN for conv2d's general path on CUDA when cuDNN is found" ON)
if(MAMCLIP_WITH_CUDNN)
  include(${CMAKE_CURRENT_LIST_DIR}/cudnn.cmake)
  mamclip_find_cudnn()
  if(MAMCLIP_CUDNN_FOUND)
    target_link_libraries(mamclip_cuda PUBLIC mamclip::cudnn_library)
    target_compile_definitions(mamclip_cuda PUBLIC MAMCLIP_WITH_CUDNN)
    message(STATUS "cuDNN: ${MAMCLIP_CUDNN_LIBRARY} (conv2d's general path on CUDA)")
  else()
    message(STATUS "cuDNN not found (cudnn.h, libcudnn): conv2d's general path on CUDA is im2col + cuBLAS; set CUDNN_ROOT")
  endif()
endif()

# Installed into its own export set by cmake/install.cmake (mamclipCudaTargets),
# which finds this target through the mamclip::cuda alias.
