// Shared helpers for the libFuzzer targets in tests/fuzz (see tests/fuzz/README.md).
//
// A fuzz target catches nc::error (the documented outcome of bad input) and nothing else:
// any other exception escapes to libFuzzer, which reports it as a crash, and a broken
// invariant aborts through FUZZ_CHECK.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>

#include <unistd.h>

/// Aborts (a libFuzzer finding) with the condition and a message when `cond` is false.
#define FUZZ_CHECK(cond, msg)                                                        \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "FUZZ_CHECK failed: %s (%s:%d): %s\n", #cond, __FILE__, \
                   __LINE__, std::string(msg).c_str());                              \
      std::abort();                                                                  \
    }                                                                                \
  } while (0)

namespace ncfuzz {

/// A per-process scratch file (the readers under test take paths). Removed at exit.
class TempFile {
 public:
  explicit TempFile(const char* stem) {
    std::error_code ec;
    std::filesystem::path dir = std::filesystem::temp_directory_path(ec);
    if (ec) dir = "/tmp";
    path_ = (dir / (std::string(stem) + "-" + std::to_string(::getpid()))).string();
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile() { std::remove(path_.c_str()); }

  const std::string& path() const { return path_; }

  /// Replaces the file's content with `n` bytes.
  void write(const uint8_t* data, std::size_t n) const {
    std::FILE* f = std::fopen(path_.c_str(), "wb");
    FUZZ_CHECK(f != nullptr, "cannot create the scratch file " + path_);
    const bool ok = n == 0 || std::fwrite(data, 1, n, f) == n;
    FUZZ_CHECK(std::fclose(f) == 0 && ok, "cannot write the scratch file " + path_);
  }

 private:
  std::string path_;
};

/// Reads the fuzz input front to back; past the end every read returns 0.
class Reader {
 public:
  Reader(const uint8_t* data, std::size_t size) : p_(data), end_(data + size) {}
  uint8_t u8() { return p_ < end_ ? *p_++ : 0; }
  uint16_t u16() { return static_cast<uint16_t>(u8() | (u8() << 8)); }
  uint32_t u32() { return static_cast<uint32_t>(u16()) | (static_cast<uint32_t>(u16()) << 16); }
  bool empty() const { return p_ >= end_; }
  std::size_t left() const { return static_cast<std::size_t>(end_ - p_); }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

}  // namespace ncfuzz
