# Install rules: headers, the mamclip::mamclip export, and a package config so
# that users can find_package(mamclip) from the install prefix.
#
#   <prefix>/include/mamclip/...                       headers (CUDA .cuh headers too)
#   <prefix>/<libdir>/cmake/mamclip/mamclipConfig.cmake
#                                  mamclipConfigVersion.cmake
#                                  mamclipTargets.cmake       mamclip::mamclip
#                                  mamclipTextTargets.cmake   mamclip::text (when utf8proc was found)
#                                  mamclipUtf8proc.cmake      finds utf8proc for mamclip::text
#                                  mamclipImageTargets.cmake  mamclip::image (when stb was found)
#                                  mamclipStb.cmake           finds stb for mamclip::image
#                                  mamclipCudaTargets.cmake   mamclip::cuda (builds with the CUDA backend only)
#                                  mamclipCudnn.cmake         finds cuDNN for mamclip::cuda (when built with it)
#                                  mamclipMpiTargets.cmake    mamclip::mpi (when MPI was found)
#                                  mamclipNcclTargets.cmake   mamclip::nccl (when NCCL was found)
#                                  mamclipNccl.cmake          finds NCCL for mamclip::nccl
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(MAMCLIP_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/mamclip CACHE STRING
    "Where mamclipConfig.cmake is installed, relative to the prefix")

install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS mamclip EXPORT mamclipTargets)
install(EXPORT mamclipTargets NAMESPACE mamclip:: DESTINATION ${MAMCLIP_INSTALL_CMAKEDIR})

# mamclip::text links the imported mamclip::utf8proc, which the installed
# config recreates with the same cmake/utf8proc.cmake that made it here.
if(TARGET mamclip_text)
  set_target_properties(mamclip_text PROPERTIES EXPORT_NAME text)
  install(TARGETS mamclip_text EXPORT mamclipTextTargets)
  install(EXPORT mamclipTextTargets NAMESPACE mamclip:: DESTINATION ${MAMCLIP_INSTALL_CMAKEDIR})
  install(FILES ${PROJECT_SOURCE_DIR}/cmake/utf8proc.cmake DESTINATION ${MAMCLIP_INSTALL_CMAKEDIR}
          RENAME mamclipUtf8proc.cmake)
endif()

# mamclip::image links the imported mamclip::stb, recreated the same way.
if(TARGET mamclip_image)
  set_target_properties(mamclip_image PROPERTIES EXPORT_NAME image)
  install(TARGETS mamclip_image EXPORT mamclipImageTargets)
  install(EXPORT mamclipImageTargets NAMESPACE mamclip:: DESTINATION ${MAMCLIP_INSTALL_CMAKEDIR})
  install(FILES ${PROJECT_SOURCE_DIR}/cmake/stb.cmake DESTINATION ${MAMCLIP_INSTALL_CMAKEDIR} RENAME mamclipStb.cmake)
endif()

# The CUDA backend gets an export set of its own, so that a CPU-only install
# never asks its users for the CUDA toolkit; mamclipConfig.cmake loads it only
# when the file is there. cmake/cuda_targets.cmake (included before this file)
# defines mamclip::cuda; a target it links that is not imported must also be
# installed into mamclipCudaTargets there.
if(TARGET mamclip::cuda)
  get_target_property(_mamclip_cuda_target mamclip::cuda ALIASED_TARGET)
  if(NOT _mamclip_cuda_target)
    message(FATAL_ERROR "mamclip::cuda must be an ALIAS of a target built here, so that it can be installed")
  endif()
  set_target_properties(${_mamclip_cuda_target} PROPERTIES EXPORT_NAME cuda)
  install(TARGETS ${_mamclip_cuda_target} EXPORT mamclipCudaTargets)
  install(EXPORT mamclipCudaTargets NAMESPACE mamclip:: DESTINATION ${MAMCLIP_INSTALL_CMAKEDIR})
  if(TARGET mamclip::cudnn_library)  # the config finds cuDNN again before loading mamclip::cuda
    install(FILES ${PROJECT_SOURCE_DIR}/cmake/cudnn.cmake DESTINATION ${MAMCLIP_INSTALL_CMAKEDIR} RENAME mamclipCudnn.cmake)
  endif()
endif()

# The data-parallel communicators (cmake/dist.cmake): export sets of their
# own, loaded by the config only where MPI (and the CUDA toolkit and NCCL)
# are found, so that a user without them still gets the rest.
if(TARGET mamclip_mpi)
  set_target_properties(mamclip_mpi PROPERTIES EXPORT_NAME mpi)
  install(TARGETS mamclip_mpi EXPORT mamclipMpiTargets)
  install(EXPORT mamclipMpiTargets NAMESPACE mamclip:: DESTINATION ${MAMCLIP_INSTALL_CMAKEDIR})
endif()
if(TARGET mamclip_nccl)
  set_target_properties(mamclip_nccl PROPERTIES EXPORT_NAME nccl)
  install(TARGETS mamclip_nccl EXPORT mamclipNcclTargets)
  install(EXPORT mamclipNcclTargets NAMESPACE mamclip:: DESTINATION ${MAMCLIP_INSTALL_CMAKEDIR})
  install(FILES ${PROJECT_SOURCE_DIR}/cmake/nccl.cmake DESTINATION ${MAMCLIP_INSTALL_CMAKEDIR} RENAME mamclipNccl.cmake)
endif()

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/mamclipConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/mamclipConfig.cmake
                              INSTALL_DESTINATION ${MAMCLIP_INSTALL_CMAKEDIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/mamclipConfigVersion.cmake
                                 VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/mamclipConfig.cmake ${PROJECT_BINARY_DIR}/mamclipConfigVersion.cmake
        DESTINATION ${MAMCLIP_INSTALL_CMAKEDIR})
