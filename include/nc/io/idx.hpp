// ncml: reader for IDX files (the MNIST distribution format), plain or gzip-compressed.
//
// Needs zlib (link ZLIB::ZLIB). Every malformed input (bad magic, unsupported type, sizes
// that overflow or disagree with the payload, truncated or corrupt gzip) throws nc::error
// naming the file; nothing is returned partially.
//
//   nc::IdxArray a = nc::read_idx("data/omniglot-images28-idx3-ubyte.gz");
//   // a.shape == {4840, 28, 28}; a.data holds 4840 * 784 bytes
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <zlib.h>

#include "../core/error.hpp"

namespace nc {

/// An unsigned-byte IDX array: shape (first dimension = items) and row-major payload.
struct IdxArray {
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;
  /// Number of items (the first dimension).
  int64_t items() const { return shape.empty() ? 0 : shape[0]; }
  /// Bytes per item (the product of the other dimensions).
  int64_t item_size() const {
    int64_t s = 1;
    for (std::size_t i = 1; i < shape.size(); ++i) s *= shape[i];
    return s;
  }
};

namespace detail {
constexpr int64_t kIdxMaxBytes = int64_t(1) << 34;  // 16 GiB: anything larger is corrupt here

/// Parses an IDX byte buffer (already decompressed). `what` names the source in errors.
inline IdxArray parse_idx(const uint8_t* p, std::size_t n, const std::string& what) {
  NC_EXPECTS(n >= 4, what << ": not an IDX file (" << n << " bytes, shorter than the 4-byte magic)");
  NC_EXPECTS(p[0] == 0 && p[1] == 0, what << ": not an IDX file (magic bytes " << int(p[0]) << ", "
                                          << int(p[1]) << " instead of 0, 0)");
  NC_EXPECTS(p[2] == 0x08, what << ": unsupported IDX element type 0x" << std::hex << int(p[2])
                                << " (only unsigned bytes, 0x08)");
  const int dims = p[3];
  NC_EXPECTS(dims >= 1 && dims <= 8, what << ": unsupported IDX rank " << dims << " (1 to 8)");
  NC_EXPECTS(n >= 4 + 4 * std::size_t(dims), what << ": truncated IDX header");
  IdxArray a;
  int64_t total = 1;
  for (int i = 0; i < dims; ++i) {
    const uint8_t* q = p + 4 + 4 * i;
    const int64_t s = (int64_t(q[0]) << 24) | (int64_t(q[1]) << 16) | (int64_t(q[2]) << 8) | int64_t(q[3]);
    a.shape.push_back(s);
    NC_EXPECTS(s == 0 || total <= kIdxMaxBytes / s, what << ": IDX sizes overflow");
    total *= s;
  }
  const std::size_t header = 4 + 4 * std::size_t(dims);
  NC_EXPECTS(n - header == std::size_t(total), what << ": IDX payload has " << (n - header)
                                                    << " bytes, the header says " << total);
  a.data.assign(p + header, p + n);
  return a;
}
}  // namespace detail

/// Reads an IDX file, gzip-compressed or not (zlib detects which).
inline IdxArray read_idx(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  NC_EXPECTS(f != nullptr, path << ": cannot open");
  std::vector<uint8_t> buf;
  uint8_t chunk[1 << 16];
  int got = 0;
  while ((got = gzread(f, chunk, sizeof(chunk))) > 0) {
    buf.insert(buf.end(), chunk, chunk + got);
    if (int64_t(buf.size()) > detail::kIdxMaxBytes) break;
  }
  int errnum = 0;
  const char* msg = gzerror(f, &errnum);
  const std::string err = (got < 0 || errnum != Z_OK) ? std::string(msg ? msg : "read error") : "";
  gzclose(f);
  NC_EXPECTS(err.empty(), path << ": corrupt or truncated file (" << err << ")");
  NC_EXPECTS(int64_t(buf.size()) <= detail::kIdxMaxBytes, path << ": larger than 16 GiB, not an IDX file here");
  return detail::parse_idx(buf.data(), buf.size(), path);
}

}  // namespace nc
