// ncml: reader for IDX files (the MNIST distribution format), plain or gzip-compressed.
//
// Needs zlib (link ZLIB::ZLIB). Every malformed input (bad magic, unsupported type, sizes
// that overflow or disagree with the payload, truncated or corrupt gzip) throws nc::error
// naming the file; nothing is returned partially.
//
//   nc::IdxArray a = nc::read_idx("data/omniglot-images28-idx3-ubyte.gz");
//   // a.shape == {4840, 28, 28}; a.data holds 4840 * 784 bytes
#pragma once

#include <algorithm>
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

/// Checks an IDX header (`p` holds at least its first n bytes) and returns the shape, the
/// header length and the payload size it announces. Every partial product of the dimensions
/// is bounded, so the sizes (and IdxArray::item_size) cannot overflow.
struct IdxHeader {
  std::vector<int64_t> shape;
  std::size_t header_bytes = 0;
  int64_t payload_bytes = 0;
};
inline IdxHeader parse_idx_header(const uint8_t* p, std::size_t n, const std::string& what) {
  NC_EXPECTS(n >= 4, what << ": not an IDX file (" << n << " bytes, shorter than the 4-byte magic)");
  NC_EXPECTS(p[0] == 0 && p[1] == 0, what << ": not an IDX file (magic bytes " << int(p[0]) << ", "
                                          << int(p[1]) << " instead of 0, 0)");
  NC_EXPECTS(p[2] == 0x08, what << ": unsupported IDX element type 0x" << std::hex << int(p[2])
                                << " (only unsigned bytes, 0x08)");
  const int dims = p[3];
  NC_EXPECTS(dims >= 1 && dims <= 8, what << ": unsupported IDX rank " << dims << " (1 to 8)");
  IdxHeader h;
  h.header_bytes = 4 + 4 * std::size_t(dims);
  NC_EXPECTS(n >= h.header_bytes, what << ": truncated IDX header");
  int64_t item = 1;  // product of the dimensions after the first
  for (int i = 0; i < dims; ++i) {
    const uint8_t* q = p + 4 + 4 * i;
    const int64_t s = (int64_t(q[0]) << 24) | (int64_t(q[1]) << 16) | (int64_t(q[2]) << 8) | int64_t(q[3]);
    h.shape.push_back(s);
    if (i > 0) {
      NC_EXPECTS(s == 0 || item <= kIdxMaxBytes / s, what << ": IDX sizes overflow (dimension " << i << " = " << s << ")");
      item *= s;
    }
  }
  NC_EXPECTS(h.shape[0] == 0 || item <= kIdxMaxBytes / h.shape[0],
             what << ": IDX sizes overflow (" << h.shape[0] << " items of " << item << " bytes)");
  h.payload_bytes = h.shape[0] * item;
  return h;
}

/// Parses an IDX byte buffer (already decompressed). `what` names the source in errors.
inline IdxArray parse_idx(const uint8_t* p, std::size_t n, const std::string& what) {
  IdxHeader h = parse_idx_header(p, n, what);
  NC_EXPECTS(n - h.header_bytes == std::size_t(h.payload_bytes),
             what << ": IDX payload has " << (n - h.header_bytes) << " bytes, the header says " << h.payload_bytes);
  IdxArray a;
  a.shape = std::move(h.shape);
  a.data.assign(p + h.header_bytes, p + n);
  return a;
}

/// gzread until `n` bytes or the end of the data; returns the bytes read. Throws for a read
/// error (corrupt or truncated gzip stream).
inline std::size_t gz_read_up_to(gzFile f, uint8_t* dst, std::size_t n, const std::string& path) {
  std::size_t done = 0;
  while (done < n) {
    const unsigned ask = static_cast<unsigned>(std::min<std::size_t>(n - done, std::size_t(1) << 30));
    const int got = gzread(f, dst + done, ask);
    if (got < 0) {
      int errnum = 0;
      const char* msg = gzerror(f, &errnum);
      const std::string err = msg ? msg : "read error";
      gzclose(f);
      NC_FAIL(path << ": corrupt or truncated file (" << err << ")");
    }
    if (got == 0) break;
    done += static_cast<std::size_t>(got);
  }
  return done;
}
}  // namespace detail

/// Reads an IDX file, gzip-compressed or not (zlib detects which). The header is read first
/// and exactly the payload it announces after it, so a corrupt file never makes this
/// allocate or decompress more than its header claims (at most 16 GiB).
inline IdxArray read_idx(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  NC_EXPECTS(f != nullptr, path << ": cannot open");
  std::vector<uint8_t> buf(4 + 4 * 8);
  std::size_t n = detail::gz_read_up_to(f, buf.data(), 4, path);
  if (n == 4 && buf[3] >= 1 && buf[3] <= 8) n += detail::gz_read_up_to(f, buf.data() + 4, 4 * std::size_t(buf[3]), path);
  detail::IdxHeader h;
  try {
    h = detail::parse_idx_header(buf.data(), n, path);
  } catch (...) {
    gzclose(f);
    throw;
  }
  const std::size_t payload = static_cast<std::size_t>(h.payload_bytes);
  IdxArray a;
  a.shape = std::move(h.shape);
  // Grown as the data arrive (1 MiB steps), so a header that overstates the payload costs
  // no more memory than the file holds.
  std::size_t got = 0;
  while (got < payload) {
    const std::size_t step = std::min<std::size_t>(payload - got, std::size_t(1) << 20);
    a.data.resize(got + step);
    const std::size_t r = detail::gz_read_up_to(f, a.data.data() + got, step, path);
    got += r;
    if (r < step) break;
  }
  a.data.resize(got);
  uint8_t extra = 0;
  const std::size_t more = got == payload ? detail::gz_read_up_to(f, &extra, 1, path) : 0;
  int errnum = 0;
  const char* msg = gzerror(f, &errnum);
  const std::string err = errnum != Z_OK && errnum != Z_STREAM_END ? std::string(msg ? msg : "read error") : "";
  gzclose(f);
  NC_EXPECTS(err.empty(), path << ": corrupt or truncated file (" << err << ")");
  NC_EXPECTS(got == payload && more == 0,
             path << ": IDX payload has " << (more ? "more than " + std::to_string(payload) : std::to_string(got))
                  << " bytes, the header says " << payload);
  return a;
}

}  // namespace nc
