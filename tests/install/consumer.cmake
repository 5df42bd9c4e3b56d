# The consumer program, linked the way a user links mamclip. Each consumer
# project includes this after it has made mamclip's targets available.
# With MAMCLIP_CONSUMER_TEXT it also links mamclip::text and checks that
# utf8proc is reached through it; with MAMCLIP_CONSUMER_MPI, mamclip::mpi and
# an all-reduce on a one-process MPI communicator.
option(MAMCLIP_CONSUMER_TEXT "Also build against mamclip::text" OFF)
option(MAMCLIP_CONSUMER_MPI "Also build against mamclip::mpi" OFF)
add_executable(consumer ${CMAKE_CURRENT_LIST_DIR}/consumer.cpp)
target_link_libraries(consumer PRIVATE mamclip::mamclip)
if(MAMCLIP_CONSUMER_TEXT)
  target_link_libraries(consumer PRIVATE mamclip::text)
  target_compile_definitions(consumer PRIVATE MAMCLIP_CONSUMER_TEXT)
endif()
if(MAMCLIP_CONSUMER_MPI)
  target_link_libraries(consumer PRIVATE mamclip::mpi)
  target_compile_definitions(consumer PRIVATE MAMCLIP_CONSUMER_MPI)
endif()
