#pragma once
// io/: reading and writing tensors in files. Uses only core/.
//
// defines:
//   file.hpp         FileBytes (memory-mapped, read-only file bytes), AtomicFile (temp + fsync + rename)
//   safetensors.hpp  SafetensorsFile (validated reader), load_safetensors, load_sharded,
//                    save_safetensors, serialize_safetensors, sort_like_safetensors,
//                    AnyStoredTensor, NamedTensors, TensorMap, TensorInfo, StDtype

#include "mamclip/io/file.hpp"
#include "mamclip/io/safetensors.hpp"
