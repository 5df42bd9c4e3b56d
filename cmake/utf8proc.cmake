# utf8proc, for the text/ headers (Unicode categories, case mapping, NFC/NFD).
#
#   mamclip_find_utf8proc()  defines the imported target mamclip::utf8proc when
#                            utf8proc is found and sets MAMCLIP_UTF8PROC_FOUND.
#                            Tries, in order: an installed CMake package
#                            (utf8proc::utf8proc), pkg-config (libutf8proc), then
#                            find_path/find_library (Debian's libutf8proc-dev ships
#                            no CMake config). Hints: UTF8PROC_ROOT, CMAKE_PREFIX_PATH.
#
# Including this file also defines the INTERFACE target mamclip::text
# (= mamclip::mamclip + utf8proc) when utf8proc is found. text/ is the only
# part of mamclip that needs utf8proc, so it gets its own target and
# mamclip::mamclip keeps no dependency beyond Eigen.

function(mamclip_find_utf8proc)
  if(TARGET mamclip::utf8proc)
    set(MAMCLIP_UTF8PROC_FOUND TRUE PARENT_SCOPE)
    return()
  endif()

  find_package(utf8proc CONFIG QUIET)
  if(TARGET utf8proc::utf8proc)
    add_library(mamclip::utf8proc INTERFACE IMPORTED GLOBAL)
    set_target_properties(mamclip::utf8proc PROPERTIES INTERFACE_LINK_LIBRARIES utf8proc::utf8proc)
    set(MAMCLIP_UTF8PROC_FOUND TRUE PARENT_SCOPE)
    return()
  endif()

  find_package(PkgConfig QUIET)
  if(PKG_CONFIG_FOUND)
    pkg_check_modules(MAMCLIP_PC_UTF8PROC QUIET libutf8proc)
  endif()
  find_path(MAMCLIP_UTF8PROC_INCLUDE_DIR utf8proc.h
            HINTS ${UTF8PROC_ROOT}/include ${MAMCLIP_PC_UTF8PROC_INCLUDE_DIRS})
  find_library(MAMCLIP_UTF8PROC_LIBRARY NAMES utf8proc libutf8proc utf8proc_static
               HINTS ${UTF8PROC_ROOT}/lib ${MAMCLIP_PC_UTF8PROC_LIBRARY_DIRS})
  mark_as_advanced(MAMCLIP_UTF8PROC_INCLUDE_DIR MAMCLIP_UTF8PROC_LIBRARY)
  if(MAMCLIP_UTF8PROC_INCLUDE_DIR AND MAMCLIP_UTF8PROC_LIBRARY)
    add_library(mamclip::utf8proc UNKNOWN IMPORTED GLOBAL)
    set_target_properties(mamclip::utf8proc PROPERTIES
      IMPORTED_LOCATION "${MAMCLIP_UTF8PROC_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${MAMCLIP_UTF8PROC_INCLUDE_DIR}")
    if(MAMCLIP_UTF8PROC_LIBRARY MATCHES "\\.(a|lib)$")
      # A static utf8proc must not mark its symbols dllimport on Windows.
      set_target_properties(mamclip::utf8proc PROPERTIES INTERFACE_COMPILE_DEFINITIONS UTF8PROC_STATIC)
    endif()
    set(MAMCLIP_UTF8PROC_FOUND TRUE PARENT_SCOPE)
  else()
    set(MAMCLIP_UTF8PROC_FOUND FALSE PARENT_SCOPE)
  endif()
endfunction()

mamclip_find_utf8proc()
if(MAMCLIP_UTF8PROC_FOUND AND NOT TARGET mamclip::text)
  add_library(mamclip_text INTERFACE)
  add_library(mamclip::text ALIAS mamclip_text)
  target_link_libraries(mamclip_text INTERFACE mamclip::mamclip mamclip::utf8proc)
elseif(NOT MAMCLIP_UTF8PROC_FOUND)
  message(STATUS "mamclip: utf8proc not found (Debian: libutf8proc-dev); mamclip::text and its tests are disabled")
endif()
