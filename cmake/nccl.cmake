# NCCL, for dist/nccl.hpp (GPU collectives).
#
#   mamclip_find_nccl()  defines the imported target mamclip::nccl_library
#                        (nccl.h and libnccl) when NCCL is found and sets
#                        MAMCLIP_NCCL_FOUND. Looks beside the CUDA toolkit
#                        (call find_package(CUDAToolkit) first) and under
#                        NCCL_ROOT; NCCL ships no CMake config of its own.
#
# Used by cmake/dist.cmake and, installed as mamclipNccl.cmake, by the
# installed package config, so an install finds NCCL where its user has it.

function(mamclip_find_nccl)
  if(TARGET mamclip::nccl_library)
    set(MAMCLIP_NCCL_FOUND TRUE PARENT_SCOPE)
    return()
  endif()
  find_path(MAMCLIP_NCCL_INCLUDE_DIR nccl.h HINTS ${NCCL_ROOT}/include ${CUDAToolkit_INCLUDE_DIRS})
  # libnccl.so.2: the Python wheels (nvidia-nccl-cu*) ship no unversioned name.
  find_library(MAMCLIP_NCCL_LIBRARY NAMES nccl libnccl.so.2 NAMES_PER_DIR
               HINTS ${NCCL_ROOT}/lib ${NCCL_ROOT}/lib64 ${CUDAToolkit_LIBRARY_DIR} ${CUDAToolkit_LIBRARY_ROOT}/lib)
  mark_as_advanced(MAMCLIP_NCCL_INCLUDE_DIR MAMCLIP_NCCL_LIBRARY)
  if(MAMCLIP_NCCL_INCLUDE_DIR AND MAMCLIP_NCCL_LIBRARY)
    add_library(mamclip::nccl_library UNKNOWN IMPORTED GLOBAL)
    set_target_properties(mamclip::nccl_library PROPERTIES
      IMPORTED_LOCATION "${MAMCLIP_NCCL_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${MAMCLIP_NCCL_INCLUDE_DIR}")
    set(MAMCLIP_NCCL_FOUND TRUE PARENT_SCOPE)
  else()
    set(MAMCLIP_NCCL_FOUND FALSE PARENT_SCOPE)
  endif()
endfunction()
