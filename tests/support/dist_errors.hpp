#pragma once
// For the tests that kill a rank (tests/dist/kill_rank.sh): runs `body` and,
// when a dist_error leaves it, prints the message on one line (Catch2 wraps
// it at 80 columns) before passing it on, so the script can match it whole.
#include <cstdio>

#include "mamclip/dist/communicator.hpp"

namespace mamclip::test {

template <class F>
void print_dist_error(int rank, F&& body) {
  try {
    body();
  } catch (const dist::dist_error& e) {
    std::printf("rank %d stopped: %s\n", rank, e.what());
    std::fflush(stdout);
    throw;
  }
}

}  // namespace mamclip::test
