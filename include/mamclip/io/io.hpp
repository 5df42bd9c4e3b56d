#pragma once
// io/: reading and writing tensors in files. Uses only core/.
//
// defines:
//   file.hpp         FileBytes (memory-mapped, read-only file bytes), AtomicFile (temp + fsync + rename)
//   safetensors.hpp  SafetensorsFile (validated reader), load_safetensors, load_sharded,
//                    save_safetensors, serialize_safetensors, sort_like_safetensors,
//                    AnyStoredTensor, NamedTensors, TensorMap, TensorInfo, StDtype
//   zip.hpp          ZipArchive (strict reader of stored zip archives), crc32
//   pickle.hpp       Pickle, unpickle, PyObject (a pickle machine that executes nothing)
//   torch_checkpoint.hpp  TorchCheckpoint, load_torch_state_dict (torch.save zip files)
//   checkpoint.hpp   load_state_dict (any format, picked from the bytes), KeyMapping, map_keys

#include "mamclip/io/file.hpp"
#include "mamclip/io/safetensors.hpp"
#include "mamclip/io/zip.hpp"
#include "mamclip/io/pickle.hpp"
#include "mamclip/io/torch_checkpoint.hpp"
#include "mamclip/io/checkpoint.hpp"
