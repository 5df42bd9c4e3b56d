#pragma once
// (being written)
#include "mamclip/ops/fwd.hpp"
