# Data-parallel training backends (include/mamclip/dist/):
#   mamclip::mpi   INTERFACE: mamclip::mamclip + MPI (dist/mpi.hpp), MAMCLIP_WITH_MPI
#   mamclip::nccl  INTERFACE: mamclip::mpi + the CUDA runtime + NCCL (dist/nccl.hpp),
#                  MAMCLIP_WITH_NCCL; only when the CUDA backend is built
# dist/communicator.hpp (LocalCommunicator) needs neither.
#
# Both are installed (cmake/install.cmake) in export sets of their own; the
# installed config finds MPI and NCCL again where its user has them.

# The CXX component of a C++-only project (the C one needs the C language
# enabled); only the C API is used, so the deprecated MPI C++ bindings are
# skipped (OMPI_SKIP_MPICXX / MPICH_SKIP_MPICXX, and no libmpi_cxx).
set(MPI_CXX_SKIP_MPICXX ON CACHE BOOL "Do not link the MPI C++ bindings")
find_package(MPI COMPONENTS CXX QUIET)
if(MPI_CXX_FOUND)
  option(MAMCLIP_WITH_MPI "Build the MPI communicator (mamclip::mpi) and its tests" ON)
else()
  set(MAMCLIP_WITH_MPI OFF)
  message(STATUS "Open MPI not found: distributed training builds without it; apt install libopenmpi-dev openmpi-bin")
endif()

if(MAMCLIP_WITH_MPI)
  add_library(mamclip_mpi INTERFACE)
  add_library(mamclip::mpi ALIAS mamclip_mpi)
  target_link_libraries(mamclip_mpi INTERFACE mamclip::mamclip MPI::MPI_CXX)
  target_compile_definitions(mamclip_mpi INTERFACE MAMCLIP_WITH_MPI)
endif()

if(MAMCLIP_WITH_MPI AND MAMCLIP_WITH_CUDA)
  find_package(CUDAToolkit QUIET)
  include(${CMAKE_CURRENT_LIST_DIR}/nccl.cmake)
  if(CUDAToolkit_FOUND)
    mamclip_find_nccl()
  endif()
  if(CUDAToolkit_FOUND AND MAMCLIP_NCCL_FOUND)
    add_library(mamclip_nccl INTERFACE)
    add_library(mamclip::nccl ALIAS mamclip_nccl)
    target_link_libraries(mamclip_nccl INTERFACE mamclip::mpi CUDA::cudart mamclip::nccl_library)
    target_compile_definitions(mamclip_nccl INTERFACE MAMCLIP_WITH_NCCL)
    message(STATUS "NCCL: ${MAMCLIP_NCCL_LIBRARY} (mamclip::nccl)")
  else()
    message(STATUS "NCCL not found (nccl.h, libnccl): the NCCL communicator is not built; set NCCL_ROOT")
  endif()
endif()
