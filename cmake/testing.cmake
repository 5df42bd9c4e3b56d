# mamclip_add_test_executable(NAME source...): a Catch2 executable for the tests,
# with the test helpers (tests/support) and the fixture and data paths.
function(mamclip_add_test_executable name)
  add_executable(${name} ${ARGN})
  target_link_libraries(${name} PRIVATE mamclip::mamclip mamclip_test_main)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  target_compile_definitions(${name} PRIVATE MAMCLIP_TEST_FIXTURES="${PROJECT_SOURCE_DIR}/tests/fixtures"
                                             MAMCLIP_SHARED_DATA="${MAMCLIP_SHARED_DATA}")
endfunction()

# mamclip_add_test(NAME source...): one Catch2 executable, registered with CTest.
function(mamclip_add_test name)
  mamclip_add_test_executable(${name} ${ARGN})
  add_test(NAME ${name} COMMAND ${name})
endfunction()
