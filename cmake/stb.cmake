# stb_image / stb_image_write, for io/image.hpp (read_image, decode_image, write_png).
#
#   mamclip_find_stb()  defines the imported target mamclip::stb (the compiled
#                       stb library and its headers) when found and sets
#                       MAMCLIP_STB_FOUND. Tries pkg-config (`stb`, Debian's
#                       libstb-dev), then find_path/find_library. Hints: STB_ROOT,
#                       CMAKE_PREFIX_PATH.
#
# Including this file also defines the INTERFACE target mamclip::image
# (= mamclip::mamclip + stb) when stb is found.
#
# Why a compiled stb and not the implementation inside our header: io/image.hpp
# declares the few stb functions it calls and needs exactly one definition of
# them in the program. Compiling stb into every translation unit that includes
# the header (STB_IMAGE_STATIC) would give inline mamclip functions that call
# a different internal-linkage stb per translation unit (an ODR violation) and
# ~8000 lines of decoder per translation unit. A program without a compiled
# stb (most platforms ship only the headers) defines STB_IMAGE_IMPLEMENTATION
# and STB_IMAGE_WRITE_IMPLEMENTATION in one of its own .cpp files instead and
# links mamclip::mamclip; the header is the same either way.

function(mamclip_find_stb)
  if(TARGET mamclip::stb)
    set(MAMCLIP_STB_FOUND TRUE PARENT_SCOPE)
    return()
  endif()

  find_package(PkgConfig QUIET)
  if(PKG_CONFIG_FOUND)
    pkg_check_modules(MAMCLIP_PC_STB QUIET stb)
  endif()
  find_path(MAMCLIP_STB_INCLUDE_DIR stb_image.h
            HINTS ${STB_ROOT}/include ${MAMCLIP_PC_STB_INCLUDE_DIRS} PATH_SUFFIXES stb)
  find_library(MAMCLIP_STB_LIBRARY NAMES stb HINTS ${STB_ROOT}/lib ${MAMCLIP_PC_STB_LIBRARY_DIRS})
  mark_as_advanced(MAMCLIP_STB_INCLUDE_DIR MAMCLIP_STB_LIBRARY)
  if(MAMCLIP_STB_INCLUDE_DIR AND MAMCLIP_STB_LIBRARY AND EXISTS "${MAMCLIP_STB_INCLUDE_DIR}/stb_image_write.h")
    add_library(mamclip::stb UNKNOWN IMPORTED GLOBAL)
    set_target_properties(mamclip::stb PROPERTIES
      IMPORTED_LOCATION "${MAMCLIP_STB_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${MAMCLIP_STB_INCLUDE_DIR}")
    set(MAMCLIP_STB_FOUND TRUE PARENT_SCOPE)
  else()
    set(MAMCLIP_STB_FOUND FALSE PARENT_SCOPE)
  endif()
endfunction()

mamclip_find_stb()
if(MAMCLIP_STB_FOUND AND NOT TARGET mamclip::image)
  add_library(mamclip_image INTERFACE)
  add_library(mamclip::image ALIAS mamclip_image)
  target_link_libraries(mamclip_image INTERFACE mamclip::mamclip mamclip::stb)
elseif(NOT MAMCLIP_STB_FOUND)
  message(STATUS "mamclip: a compiled stb (Debian: libstb-dev) was not found; mamclip::image and its tests are disabled")
endif()
