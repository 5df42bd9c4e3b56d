# cuDNN, for conv2d's general path on CUDA (ops/conv/cudnn.cuh).
#
#   mamclip_find_cudnn()  defines the imported target mamclip::cudnn_library
#                         (cudnn.h and libcudnn) when cuDNN is found and sets
#                         MAMCLIP_CUDNN_FOUND. Looks beside the CUDA toolkit
#                         (call find_package(CUDAToolkit) first) and under
#                         CUDNN_ROOT (e.g. a Python wheel's nvidia/cudnn);
#                         cuDNN ships no CMake config of its own.
#
# Used by cmake/cuda_targets.cmake and, installed as mamclipCudnn.cmake, by
# the installed package config, so an install finds cuDNN where its user has it.

function(mamclip_find_cudnn)
  if(TARGET mamclip::cudnn_library)
    set(MAMCLIP_CUDNN_FOUND TRUE PARENT_SCOPE)
    return()
  endif()
  find_path(MAMCLIP_CUDNN_INCLUDE_DIR cudnn.h HINTS ${CUDNN_ROOT}/include ${CUDAToolkit_INCLUDE_DIRS})
  # libcudnn.so.9: the Python wheels (nvidia-cudnn-cu*) ship no unversioned name.
  find_library(MAMCLIP_CUDNN_LIBRARY NAMES cudnn libcudnn.so.9 NAMES_PER_DIR
               HINTS ${CUDNN_ROOT}/lib ${CUDNN_ROOT}/lib64 ${CUDAToolkit_LIBRARY_DIR} ${CUDAToolkit_LIBRARY_ROOT}/lib)
  mark_as_advanced(MAMCLIP_CUDNN_INCLUDE_DIR MAMCLIP_CUDNN_LIBRARY)
  if(MAMCLIP_CUDNN_INCLUDE_DIR AND MAMCLIP_CUDNN_LIBRARY)
    add_library(mamclip::cudnn_library UNKNOWN IMPORTED GLOBAL)
    set_target_properties(mamclip::cudnn_library PROPERTIES
      IMPORTED_LOCATION "${MAMCLIP_CUDNN_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${MAMCLIP_CUDNN_INCLUDE_DIR}")
    set(MAMCLIP_CUDNN_FOUND TRUE PARENT_SCOPE)
  else()
    set(MAMCLIP_CUDNN_FOUND FALSE PARENT_SCOPE)
  endif()
endfunction()
