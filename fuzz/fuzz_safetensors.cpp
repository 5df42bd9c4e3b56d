// libFuzzer target for the safetensors reader (and, on what it accepts, the
// writer): no input may crash, read out of bounds, overflow or leak; every
// rejection is a mamclip::error. A file that opens must also survive a write
// and re-read unchanged, and writing that again must give identical bytes.
//
// Built and run by fuzz/run_fuzzers.sh (clang++ -fsanitize=fuzzer,address,undefined).

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "mamclip/io/safetensors.hpp"

namespace {

[[noreturn]] void fail(const char* what, const char* detail = "") {
  std::fprintf(stderr, "fuzz_safetensors: property violated: %s %s\n", what, detail);
  std::abort();
}

// Reads every tensor in every type the reader may convert it to.
// Also checks the reader's invariant: names() in data order, tiling the
// buffer, which ends at the end of the file.
mamclip::io::NamedTensors read_all(const mamclip::io::SafetensorsFile& f, size_t file_size) {
  using namespace mamclip;
  io::NamedTensors out;
  uint64_t cursor = 0;
  for (const auto& name : f.names()) {
    const auto& info = f.info(name);
    if (info.name != name || info.begin != cursor || info.end < info.begin) fail("offsets do not tile", name.c_str());
    cursor = info.end;
    try {
      if (io::st_dtype_loadable(info.dtype) && info.dtype != io::StDtype::BOOL) {
        if (info.dtype == io::StDtype::F64 || info.dtype == io::StDtype::F32 || info.dtype == io::StDtype::F16 ||
            info.dtype == io::StDtype::BF16) {
          (void)f.get<double>(name);
          (void)f.get<half>(name);
        } else {
          (void)f.get<int64_t>(name);
        }
      }
      out.emplace_back(name, f.get_any(name));
    } catch (const mamclip::error&) {
      // Unloadable dtypes and BOOL bytes other than 0/1 are refused per tensor.
    }
  }
  if (f.data_offset() + cursor != file_size) fail("buffer not covered");
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mamclip;
  std::vector<uint8_t> bytes(data, data + size);
  io::NamedTensors tensors;
  io::Metadata metadata;
  try {
    const auto f = io::SafetensorsFile::from_bytes(std::move(bytes), "fuzz");
    if (f.names().size() != f.size()) fail("names/size mismatch");
    tensors = read_all(f, size);
    metadata = f.metadata();
  } catch (const mamclip::error&) {
    return 0;
  }
  // Accepted input: the writer must handle whatever the reader produced.
  try {
    const auto written = io::serialize_safetensors(tensors, metadata);
    const auto g = io::SafetensorsFile::from_bytes(written, "rewritten");
    if (g.metadata() != metadata) fail("metadata changed");
    if (g.size() != tensors.size()) fail("tensor count changed");
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (g.names()[i] != tensors[i].first) fail("order changed", tensors[i].first.c_str());
      const auto& info = g.info(tensors[i].first);
      if (info.dtype != io::st_dtype_of(tensors[i].second)) fail("dtype changed", tensors[i].first.c_str());
      if (info.shape != io::shape_of(tensors[i].second)) fail("shape changed", tensors[i].first.c_str());
    }
    const auto again = io::serialize_safetensors(read_all(g, written.size()), g.metadata());
    if (again != written) fail("write(read(write(x))) != write(x)");
  } catch (const mamclip::error& e) {
    fail("the writer refused what the reader accepted:", e.what());
  }
  return 0;
}
