# mamclip_add_cli(): the mamclip program (examples/mamclip_cli.cpp) as target
# mamclip_cli, output name mamclip (`mamclip` names the library). examples/
# defines it; tests/cli/ does when the examples are off (the sanitizer build).
# It needs the tokenizer (mamclip::text); images (encode-image and the training
# commands) need stb (mamclip::image); YAML config files need yaml-cpp
# (libyaml-cpp-dev), JSON configs work without it.
function(mamclip_add_cli)
  if(TARGET mamclip_cli OR NOT TARGET mamclip::text)
    return()
  endif()
  add_executable(mamclip_cli ${PROJECT_SOURCE_DIR}/examples/mamclip_cli.cpp)
  # One place whichever directory defines it: build/bin/mamclip, the path the docs give.
  set_target_properties(mamclip_cli PROPERTIES OUTPUT_NAME mamclip RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)
  target_link_libraries(mamclip_cli PRIVATE mamclip::text)
  if(TARGET mamclip::image)
    target_link_libraries(mamclip_cli PRIVATE mamclip::image)
    target_compile_definitions(mamclip_cli PRIVATE MAMCLIP_CLI_IMAGES=1)
  endif()
  if(TARGET mamclip::cuda)  # `mamclip finetune --device cuda` (cmake/cuda_targets.cmake)
    target_link_libraries(mamclip_cli PRIVATE mamclip::cuda)
  endif()
  if(TARGET mamclip::mpi)  # `mpirun -np N mamclip pretrain` (cmake/dist.cmake)
    target_link_libraries(mamclip_cli PRIVATE mamclip::mpi)
  endif()
  if(TARGET mamclip::nccl AND TARGET mamclip::cuda)  # data-parallel GPU gradients over NCCL
    target_link_libraries(mamclip_cli PRIVATE mamclip::nccl)
  endif()
  find_package(OpenMP QUIET)  # the CPU kernels (GEMM, conv, attention, elementwise) use every core
  if(OpenMP_CXX_FOUND)
    target_link_libraries(mamclip_cli PRIVATE OpenMP::OpenMP_CXX)
  endif()
  find_package(yaml-cpp QUIET)
  if(yaml-cpp_FOUND)
    target_link_libraries(mamclip_cli PRIVATE yaml-cpp)
    target_compile_definitions(mamclip_cli PRIVATE MAMCLIP_CLI_YAML=1)
  else()
    message(STATUS "mamclip: yaml-cpp not found; the mamclip program reads JSON config files only")
  endif()
endfunction()
