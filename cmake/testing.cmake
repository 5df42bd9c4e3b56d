# mamclip_add_test(NAME source...): one Catch2 executable, registered with CTest.
function(mamclip_add_test name)
  add_executable(${name} ${ARGN})
  target_link_libraries(${name} PRIVATE mamclip::mamclip mamclip_test_main)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  target_compile_definitions(${name} PRIVATE MAMCLIP_TEST_FIXTURES="${PROJECT_SOURCE_DIR}/tests/fixtures"
                                             MAMCLIP_SHARED_DATA="${MAMCLIP_SHARED_DATA}")
  add_test(NAME ${name} COMMAND ${name})
endfunction()
