// libFuzzer target for the pickle machine and the torch checkpoint reader on
// top of it: no input may crash, read out of bounds, overflow, leak or hang;
// every rejection is a mamclip::error. Each tensor a state dict yields must lie
// inside its storage, and every element is read.
//
// An input that is a zip archive with <archive>/data.pkl (the seeds: torch.save
// fixtures) is read as a whole checkpoint, CRCs unchecked so mutations of the
// pickle reach the pickle machine. Any other input is a pickle: it runs raw,
// then as data.pkl of an archive that also holds storages "0".."3" (64 bytes
// each), so persistent ids and tensor views built by mutation meet real data.
//
// Built and run by fuzz/run_fuzzers.sh (clang++ -fsanitize=fuzzer,address,undefined).

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "mamclip/io/torch_checkpoint.hpp"

namespace {

[[noreturn]] void fail(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "fuzz_pickle: property violated: %s %s\n", what, detail.c_str());
  std::abort();
}

void put16(std::string& s, uint32_t v) { s += char(v & 0xFF), s += char((v >> 8) & 0xFF); }
void put32(std::string& s, uint32_t v) { put16(s, v & 0xFFFF), put16(s, v >> 16); }

// A stored zip of (name, data) entries with valid CRCs.
std::vector<uint8_t> make_zip(const std::vector<std::pair<std::string, std::string>>& entries) {
  std::string out, cd;
  for (const auto& [name, data] : entries) {
    const uint32_t crc = mamclip::io::crc32(reinterpret_cast<const uint8_t*>(data.data()), data.size());
    const uint32_t local = uint32_t(out.size());
    put32(out, 0x04034b50), put16(out, 20), put16(out, 0), put16(out, 0), put32(out, 0), put32(out, crc);
    put32(out, uint32_t(data.size())), put32(out, uint32_t(data.size())), put16(out, uint32_t(name.size()));
    put16(out, 0);
    out += name + data;
    put32(cd, 0x02014b50), put16(cd, 20), put16(cd, 20), put16(cd, 0), put16(cd, 0), put32(cd, 0), put32(cd, crc);
    put32(cd, uint32_t(data.size())), put32(cd, uint32_t(data.size())), put16(cd, uint32_t(name.size()));
    put16(cd, 0), put16(cd, 0), put16(cd, 0), put16(cd, 0), put32(cd, 0), put32(cd, local);
    cd += name;
  }
  const uint32_t cd_offset = uint32_t(out.size());
  out += cd;
  put32(out, 0x06054b50), put16(out, 0), put16(out, 0), put16(out, uint32_t(entries.size()));
  put16(out, uint32_t(entries.size())), put32(out, uint32_t(cd.size())), put32(out, cd_offset), put16(out, 0);
  return {out.begin(), out.end()};
}

// Checks a tensor's view against its storage and reads every element.
template <class T>
void touch(const mamclip::Tensor<T>& t, const std::string& name) {
  const auto& storage = t.storage();
  if (!storage) fail("tensor without storage", name);
  const int64_t elems = static_cast<int64_t>(storage->nbytes() / sizeof(T));
  if (t.storage_offset() < 0 || t.storage_offset() > elems) fail("offset outside its storage", name);
  if (t.numel() == 0) return;
  int64_t last = t.storage_offset();
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.stride(d) < 0) fail("negative stride", name);
    last += (t.size(d) - 1) * t.stride(d);
  }
  if (last >= elems) fail("view reaches past its storage", name);
  volatile double sink = 0;
  const T* p = static_cast<const T*>(storage->data());
  mamclip::detail::for_each_offset<1>(t.shape(), {t.strides()}, [&](const std::array<int64_t, 1>& o) {
    sink = sink + static_cast<double>(p[t.storage_offset() + o[0]]);
  });
}

void load_all(const mamclip::io::TorchCheckpoint& c) {
  try {
    const auto sd = c.state_dict();
    for (const auto& entry : sd) std::visit([&](const auto& x) { touch(x, entry.first); }, entry.second);
  } catch (const mamclip::error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mamclip;
  io::TorchLoadOptions options;
  options.verify_crc = false;
  if (io::TorchCheckpoint::is_zip(data, size)) {
    try {
      load_all(io::TorchCheckpoint::from_bytes(std::vector<uint8_t>(data, data + size), "fuzz.pt", options));
    } catch (const mamclip::error&) {
    }
    return 0;
  }
  try {
    const auto pk = io::unpickle(data, size, "fuzz");
    if (!pk.root()) fail("no root after STOP");
    (void)io::describe(pk.root());
  } catch (const mamclip::error&) {
    return 0;  // the wrapped run would fail the same way
  }
  std::string storage(64, '\0');
  for (size_t i = 0; i < storage.size(); ++i) storage[i] = char(i % 2);  // valid bool bytes too
  const std::string pickle(reinterpret_cast<const char*>(data), size);
  const auto zip = make_zip({{"archive/data.pkl", pickle}, {"archive/byteorder", "little"},
                             {"archive/data/0", storage}, {"archive/data/1", storage},
                             {"archive/data/2", storage}, {"archive/data/3", storage}});
  try {
    load_all(io::TorchCheckpoint::from_bytes(zip, "fuzz.pt"));
  } catch (const mamclip::error& e) {
    fail("a pickle that parsed alone failed to open in an archive:", e.what());
  }
  return 0;
}
