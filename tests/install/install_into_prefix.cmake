# cmake -DBUILD_DIR=<mamclip build> -DPREFIX=<dir> [-DCONFIG=<config>] -P install_into_prefix.cmake
# Installs mamclip into an empty PREFIX, so that files deleted from the source
# tree cannot linger from an earlier run.
file(REMOVE_RECURSE "${PREFIX}")
set(_config)
if(CONFIG)
  set(_config --config "${CONFIG}")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}" ${_config}
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install ${BUILD_DIR} --prefix ${PREFIX} failed (${rc})")
endif()
if(NOT EXISTS "${PREFIX}/include/mamclip/mamclip.hpp")
  message(FATAL_ERROR "the install put no include/mamclip/mamclip.hpp under ${PREFIX}")
endif()
