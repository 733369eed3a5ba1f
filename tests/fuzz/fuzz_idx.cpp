// libFuzzer target: the IDX reader (include/nc/io/idx.hpp), plain and gzip-compressed.
//
// The first byte chooses how the rest of the input reaches the reader:
//   0  the in-memory parser, detail::parse_idx;
//   1  read_idx on a scratch file holding the bytes as they are (plain IDX, or gzip data,
//      possibly corrupt: zlib decides by the magic bytes);
//   2  read_idx on a scratch file holding the bytes gzip-compressed (a valid gzip stream, so
//      the fuzzer explores the IDX parser behind the decompressor).
// nc::error is the expected outcome of bad input. A crash, a sanitizer report, any other
// exception, a hang or an allocation beyond -malloc_limit_mb is a finding. Whenever the file
// holds the bytes themselves (mode 2, and mode 1 unless they start like gzip), read_idx must
// agree with parse_idx on the same bytes: both fail, or both return the same array.
#include <cstdint>
#include <string>
#include <vector>

#include <zlib.h>

#include <nc/io/idx.hpp>

#include "fuzz_common.hpp"

// Library defects this harness found, all fixed; their checks are on (building with
// -DNCML_FUZZ_KNOWN_BUGS=1 steps around them again, to bisect); docs/errors.md, "Fixed defects":
//   BUG-9  parse_idx accepts a shape with a zero dimension followed by dimensions whose
//          product overflows int64 (its overflow check multiplies into a total that is
//          already 0), e.g. (0, 2197815547, 4294967040); IdxArray::item_size() then overflows
//          (signed, undefined behaviour).
#ifndef NCML_FUZZ_KNOWN_BUGS
#define NCML_FUZZ_KNOWN_BUGS 0
#endif

namespace {

const ncfuzz::TempFile& scratch() {
  static const ncfuzz::TempFile f("ncml-fuzz-idx");
  return f;
}

void check_array(const nc::IdxArray& a) {
  FUZZ_CHECK(!a.shape.empty() && a.shape.size() <= 8, "rank");
  bool any_zero = false;
  for (int64_t s : a.shape) {
    FUZZ_CHECK(s >= 0 && s <= 0xffffffffLL, "dimension");
    any_zero = any_zero || s == 0;
  }
  // With a zero dimension the others may be anything (their product is not formed).
  int64_t total = 1;
  for (int64_t s : a.shape) total = any_zero ? 0 : total * s;  // bounded by the payload checks
  FUZZ_CHECK(total == int64_t(a.data.size()), "payload size");
  if (NCML_FUZZ_KNOWN_BUGS && total == 0) return;  // BUG-9
  FUZZ_CHECK(a.items() * a.item_size() == int64_t(a.data.size()), "items * item_size");
}

/// parse_idx on the bytes: true and `out` set on success, false on nc::error.
bool parse(const uint8_t* p, std::size_t n, nc::IdxArray& out) {
  try {
    out = nc::detail::parse_idx(p, n, "memory");
  } catch (const nc::error&) {
    return false;
  }
  check_array(out);
  return true;
}

bool read(const std::string& path, nc::IdxArray& out) {
  try {
    out = nc::read_idx(path);
  } catch (const nc::error&) {
    return false;
  }
  check_array(out);
  return true;
}

void write_gzip(const std::string& path, const uint8_t* p, std::size_t n) {
  gzFile f = gzopen(path.c_str(), "wb");
  FUZZ_CHECK(f != nullptr, "gzopen for writing");
  FUZZ_CHECK(n == 0 || gzwrite(f, p, static_cast<unsigned>(n)) == int(n), "gzwrite");
  FUZZ_CHECK(gzclose(f) == Z_OK, "gzclose");
}

void agree(const uint8_t* p, std::size_t n, const std::string& path) {
  nc::IdxArray a, b;
  const bool pa = parse(p, n, a);
  const bool rb = read(path, b);
  FUZZ_CHECK(pa == rb, std::string("parse_idx ") + (pa ? "accepted" : "refused") + " what read_idx " +
                           (rb ? "accepted" : "refused"));
  if (pa) FUZZ_CHECK(a.shape == b.shape && a.data == b.data, "parse_idx and read_idx disagree");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const int mode = data[0] % 3;
  const uint8_t* p = data + 1;
  const std::size_t n = size - 1;
  if (mode == 0) {
    nc::IdxArray a;
    parse(p, n, a);
  } else if (mode == 1) {
    scratch().write(p, n);
    if (n == 0 || p[0] != 0x1f) {
      agree(p, n, scratch().path());  // not gzip: zlib reads the bytes as they are
    } else {
      nc::IdxArray a;
      read(scratch().path(), a);
    }
  } else {
    write_gzip(scratch().path(), p, n);
    agree(p, n, scratch().path());
  }
  return 0;
}
