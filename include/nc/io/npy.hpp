// ncml: reader and writer for NumPy .npy files (format versions 1.0, 2.0 and 3.0).
//
// Supported: little-endian float32 (<f4), float64 (<f8), int32 (<i4), int64 (<i8) and uint8
// (|u1), C order, 1-D and 2-D (the header of any rank is parsed). Everything else is rejected
// with a message that says what was found and what to do: big-endian and boolean dtypes,
// Fortran order, other ranks, structured dtypes.
//
// The reader survives arbitrary bytes: the header is read only up to a fixed bound
// (kNpyMaxHeader), parsed by a strict grammar for the Python dict numpy writes (no eval),
// the shape's product is checked for overflow, and the file size must equal the header's
// size plus exactly the payload the shape and dtype call for (a shorter file is truncated;
// a longer one holds something else after the array, e.g. several np.save calls into one
// file). The payload is allocated only after that check, so a forged shape cannot make the
// reader allocate more than the file holds. Only regular files are read (not pipes).
// Every failure throws nc::error whose message starts with the path.
//
// Writes are atomic: data goes to `<path>.tmp-<pid>`, which is renamed over `path` only when
// complete and removed on any error, so `path` either keeps its old content or gets the
// whole new array (POSIX rename semantics). AtomicFile exposes this for several outputs
// that must all be complete before any of them is moved into place.
//
//   nc::MatrixF x = nc::read_npy_matrix<float>("emb.npy");        // [N, D], from <f4 or <f8
//   std::vector<int64_t> y = nc::read_npy_vector<int64_t>("y.npy"); // [N], from <i4, <i8, |u1
//   nc::write_npy("W.npy", W);                                      // [C, D] -> <f4
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#ifdef _WIN32
#include <process.h>
#else
#include <unistd.h>
#endif

#include "../core/error.hpp"
#include "../core/types.hpp"

namespace nc {

/// The element types ncml reads and writes.
enum class NpyDtype { float32, float64, int32, int64, uint8 };

/// "float32", "float64", "int32", "int64", "uint8".
inline const char* to_string(NpyDtype t) {
  switch (t) {
    case NpyDtype::float32: return "float32";
    case NpyDtype::float64: return "float64";
    case NpyDtype::int32: return "int32";
    case NpyDtype::int64: return "int64";
    case NpyDtype::uint8: return "uint8";
  }
  return "unknown";
}

/// Bytes per element.
inline int npy_itemsize(NpyDtype t) {
  switch (t) {
    case NpyDtype::float32: return 4;
    case NpyDtype::float64: return 8;
    case NpyDtype::int32: return 4;
    case NpyDtype::int64: return 8;
    case NpyDtype::uint8: return 1;
  }
  return 0;
}

/// Headers longer than this are rejected: a header for the supported dtypes takes about 128
/// bytes (numpy pads to 64-byte alignment), so anything near the bound is not ours.
constexpr std::size_t kNpyMaxHeader = 65536;
/// More dimensions than numpy allows (NPY_MAXDIMS = 32, 64 since numpy 2) is corrupt.
constexpr std::size_t kNpyMaxDims = 64;

/// What the header of a .npy file says.
struct NpyHeader {
  NpyDtype dtype = NpyDtype::float32;
  std::vector<int64_t> shape;  ///< empty for a 0-D (scalar) array
  int major = 1, minor = 0;    ///< format version
  int64_t data_offset = 0;     ///< bytes before the payload (magic, version, length, header)
  /// Number of elements (1 for a 0-D array).
  int64_t count() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;  // checked against overflow when the header was parsed
    return n;
  }
  int64_t data_bytes() const { return count() * npy_itemsize(dtype); }
};

namespace detail::npy {

constexpr char kMagic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

inline bool host_little_endian() {
  const uint16_t one = 1;
  unsigned char b;
  std::memcpy(&b, &one, 1);
  return b == 1;
}

template <class T>
T byteswap(T v) {
  unsigned char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  for (std::size_t i = 0; i < sizeof(T) / 2; ++i) std::swap(b[i], b[sizeof(T) - 1 - i]);
  std::memcpy(&v, b, sizeof(T));
  return v;
}

/// The dtype ncml writes for T (float, double, 32/64-bit signed integers, 8-bit unsigned).
template <class T>
constexpr NpyDtype dtype_of() {
  static_assert(std::is_floating_point<T>::value ? (sizeof(T) == 4 || sizeof(T) == 8)
                : std::is_integral<T>::value && std::is_signed<T>::value ? (sizeof(T) == 4 || sizeof(T) == 8)
                : std::is_integral<T>::value && !std::is_same<T, bool>::value && sizeof(T) == 1,
                "npy: supported element types are float, double, int32, int64 and uint8");
  return std::is_floating_point<T>::value ? (sizeof(T) == 4 ? NpyDtype::float32 : NpyDtype::float64)
         : std::is_signed<T>::value       ? (sizeof(T) == 4 ? NpyDtype::int32 : NpyDtype::int64)
                                          : NpyDtype::uint8;
}

inline const char* descr(NpyDtype t) {
  switch (t) {
    case NpyDtype::float32: return "<f4";
    case NpyDtype::float64: return "<f8";
    case NpyDtype::int32: return "<i4";
    case NpyDtype::int64: return "<i8";
    case NpyDtype::uint8: return "|u1";
  }
  return "";
}

inline bool is_floating(NpyDtype t) { return t == NpyDtype::float32 || t == NpyDtype::float64; }

/// "(4840, 784)", "(3,)", "()".
inline std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + (shape.size() == 1 ? ",)" : ")");
}

/// Strict parser of the header dict numpy writes: {'descr': '<f4', 'fortran_order': False,
/// 'shape': (3, 4), } with either quote style, any key order, optional trailing commas and
/// whitespace. Strings may hold printable ASCII only (so messages can quote them safely).
class HeaderParser {
 public:
  HeaderParser(const char* p, std::size_t n, const std::string& what) : p_(p), end_(p + n), begin_(p), what_(what) {}

  NpyHeader parse() {
    bool have_descr = false, have_order = false, have_shape = false;
    std::string dtype;
    bool fortran = false;
    NpyHeader h;
    skip_ws();
    expect('{', "the header dict to start with '{'");
    skip_ws();
    while (peek() != '}') {
      const std::string key = string_literal("a quoted key");
      skip_ws();
      expect(':', "':' after the key '" + key + "'");
      skip_ws();
      if (key == "descr") {
        NC_EXPECTS(!have_descr, what_ << ": malformed .npy header (key 'descr' appears twice)");
        have_descr = true;
        NC_EXPECTS(peek() == '\'' || peek() == '"',
                   what_ << ": structured or nested dtypes are not supported (descr is not a "
                            "plain dtype string such as '<f4')");
        dtype = string_literal("the dtype string");
      } else if (key == "fortran_order") {
        NC_EXPECTS(!have_order, what_ << ": malformed .npy header (key 'fortran_order' appears twice)");
        have_order = true;
        fortran = boolean();
      } else if (key == "shape") {
        NC_EXPECTS(!have_shape, what_ << ": malformed .npy header (key 'shape' appears twice)");
        have_shape = true;
        h.shape = shape_tuple();
      } else {
        fail("unknown key '" + key + "' (expected descr, fortran_order, shape)");
      }
      skip_ws();
      if (peek() == ',') {
        ++p_;
        skip_ws();
      } else if (peek() != '}') {
        fail("expected ',' or '}' after the value of '" + key + "'");
      }
    }
    ++p_;
    skip_ws();
    if (p_ != end_) fail("unexpected bytes after the closing '}'");
    if (!have_descr || !have_order || !have_shape)
      fail(std::string("missing key '") + (!have_descr ? "descr" : !have_order ? "fortran_order" : "shape") + "'");
    NC_EXPECTS(!fortran, what_ << ": Fortran-order (column-major) arrays are not supported; save a "
                               "C-order array (np.save(path, np.ascontiguousarray(a)))");
    h.dtype = parse_dtype(dtype);
    int64_t total = npy_itemsize(h.dtype);
    for (int64_t s : h.shape) {
      NC_EXPECTS(s == 0 || total <= std::numeric_limits<int64_t>::max() / s,
                 what_ << ": shape " << shape_string(h.shape) << " of " << to_string(h.dtype)
                       << " overflows 64-bit sizes (corrupt header)");
      total *= s;
    }
    return h;
  }

 private:
  [[noreturn]] void fail(const std::string& problem) const {
    NC_FAIL(what_ << ": malformed .npy header: " << problem << " (at byte " << (p_ - begin_)
                  << " of the header)");
  }
  char peek() const { return p_ < end_ ? *p_ : '\0'; }
  void skip_ws() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }
  void expect(char c, const std::string& what) {
    if (peek() != c || p_ == end_) fail("expected " + what);
    ++p_;
  }
  std::string string_literal(const std::string& what) {
    const char q = peek();
    if (p_ == end_ || (q != '\'' && q != '"')) fail("expected " + what);
    ++p_;
    std::string s;
    while (p_ < end_ && *p_ != q) {
      const unsigned char c = static_cast<unsigned char>(*p_);
      if (c < 0x20 || c > 0x7e || c == '\\') fail("unsupported character in a string");
      if (s.size() >= 64) fail("string longer than 64 characters");
      s += *p_++;
    }
    if (p_ == end_) fail("unterminated string");
    ++p_;
    return s;
  }
  bool boolean() {
    auto word = [&](const char* w) {
      const std::size_t n = std::strlen(w);
      if (std::size_t(end_ - p_) >= n && std::memcmp(p_, w, n) == 0) {
        p_ += n;
        return true;
      }
      return false;
    };
    if (word("True")) return true;
    if (word("False")) return false;
    fail("expected True or False for 'fortran_order'");
  }
  int64_t integer() {
    if (!(peek() >= '0' && peek() <= '9') || p_ == end_) fail("expected a non-negative integer in 'shape'");
    if (*p_ == '0' && p_ + 1 < end_ && p_[1] >= '0' && p_[1] <= '9') fail("integer with a leading zero in 'shape'");
    int64_t v = 0;
    while (p_ < end_ && *p_ >= '0' && *p_ <= '9') {
      const int digit = *p_ - '0';
      NC_EXPECTS(v <= (std::numeric_limits<int64_t>::max() - digit) / 10,
                 what_ << ": shape dimension does not fit in 64 bits (corrupt header)");
      v = v * 10 + digit;
      ++p_;
    }
    if (peek() == 'L' && p_ < end_) ++p_;  // Python 2 long literal, as old numpy wrote
    return v;
  }
  std::vector<int64_t> shape_tuple() {
    expect('(', "a tuple '(...)' for 'shape'");
    std::vector<int64_t> shape;
    skip_ws();
    bool trailing_comma = false;
    while (peek() != ')') {
      if (shape.size() == kNpyMaxDims) fail("more than " + std::to_string(kNpyMaxDims) + " dimensions");
      shape.push_back(integer());
      skip_ws();
      trailing_comma = false;
      if (peek() == ',') {
        ++p_;
        trailing_comma = true;
        skip_ws();
      } else if (peek() != ')') {
        fail("expected ',' or ')' in 'shape'");
      }
    }
    // (3) is the integer 3 in Python, not a tuple.
    if (shape.size() == 1 && !trailing_comma) fail("a 1-element shape needs a trailing comma, as in (3,)");
    ++p_;
    return shape;
  }
  NpyDtype parse_dtype(const std::string& d) const {
    if (d == "<f4") return NpyDtype::float32;
    if (d == "<f8") return NpyDtype::float64;
    if (d == "<i4") return NpyDtype::int32;
    if (d == "<i8") return NpyDtype::int64;
    if (d == "|u1" || d == "<u1" || d == ">u1") return NpyDtype::uint8;
    if (d == "|b1") NC_FAIL(what_ << ": boolean dtype '|b1' is not supported; save labels as integers (a.astype(np.int64))");
    if (d.size() == 3 && d[0] == '>' && (d[1] == 'f' || d[1] == 'i' || d[1] == 'u'))
      NC_FAIL(what_ << ": big-endian dtype '" << d << "' is not supported; convert with a.astype('<" << d.substr(1)
                    << "') before saving");
    NC_FAIL(what_ << ": unsupported dtype '" << d
                  << "' (supported: <f4 float32, <f8 float64, <i4 int32, <i8 int64, |u1 uint8)");
  }

  const char* p_;
  const char* end_;
  const char* begin_;
  const std::string& what_;
};

/// Checks the magic and version in the first `n` bytes of a file of `file_size` bytes and
/// returns the preamble's length (magic, version, header length: 10 or 12 bytes).
inline std::size_t preamble_size(const unsigned char* p, std::size_t n, int64_t file_size, const std::string& what,
                                 int& major, int& minor, std::size_t& header_len) {
  const bool magic_prefix = n == 0 || std::memcmp(p, kMagic, std::min<std::size_t>(n, 6)) == 0;
  NC_EXPECTS(magic_prefix, what << ": not a .npy file (the first bytes are not the magic string \\x93NUMPY)");
  NC_EXPECTS(n >= 8, what << ": truncated .npy file (" << file_size << " bytes, ends inside the preamble)");
  major = p[6];
  minor = p[7];
  NC_EXPECTS((major == 1 || major == 2 || major == 3) && minor == 0,
             what << ": unsupported .npy format version " << major << "." << minor << " (1.0, 2.0, 3.0)");
  const std::size_t len_bytes = major == 1 ? 2 : 4;
  NC_EXPECTS(n >= 8 + len_bytes, what << ": truncated .npy file (" << file_size << " bytes, ends inside the preamble)");
  header_len = 0;
  for (std::size_t i = 0; i < len_bytes; ++i) header_len |= std::size_t(p[8 + i]) << (8 * i);
  NC_EXPECTS(header_len <= kNpyMaxHeader, what << ": .npy header length " << header_len << " exceeds the "
                                               << kNpyMaxHeader << "-byte limit (corrupt file)");
  return 8 + len_bytes;
}

inline NpyHeader parse_header(const unsigned char* p, std::size_t n, int64_t file_size, const std::string& what) {
  int major = 0, minor = 0;
  std::size_t header_len = 0;
  const std::size_t pre = preamble_size(p, n, file_size, what, major, minor, header_len);
  NC_EXPECTS(n >= pre + header_len, what << ": truncated .npy file (" << file_size << " bytes, the header says it is "
                                         << header_len << " bytes long after a " << pre << "-byte preamble)");
  const char* h = reinterpret_cast<const char*>(p + pre);
  for (std::size_t i = 0; i < header_len; ++i)
    NC_EXPECTS(static_cast<unsigned char>(h[i]) < 0x80, what << ": malformed .npy header (non-ASCII byte at byte "
                                                             << i << " of the header)");
  NpyHeader hdr = HeaderParser(h, header_len, what).parse();
  hdr.major = major;
  hdr.minor = minor;
  hdr.data_offset = static_cast<int64_t>(pre + header_len);
  return hdr;
}

/// An open regular file for reading; closes itself.
class InFile {
 public:
  explicit InFile(const std::string& path) : path_(path) {
    std::error_code ec;
    const auto st = std::filesystem::status(path, ec);
    NC_EXPECTS(!ec || st.type() == std::filesystem::file_type::not_found, path << ": cannot read (" << ec.message() << ")");
    NC_EXPECTS(st.type() != std::filesystem::file_type::not_found, path << ": no such file");
    NC_EXPECTS(st.type() != std::filesystem::file_type::directory, path << ": is a directory, not a .npy file");
    NC_EXPECTS(st.type() == std::filesystem::file_type::regular,
               path << ": not a regular file (ncml reads .npy files whose size it can check; save the array to a file)");
    f_ = std::fopen(path.c_str(), "rb");
    NC_EXPECTS(f_ != nullptr, path << ": cannot open (" << std::strerror(errno) << ")");
    const auto size = std::filesystem::file_size(path, ec);
    if (ec) {
      std::fclose(f_);
      NC_FAIL(path << ": cannot read the file size (" << ec.message() << ")");
    }
    size_ = static_cast<int64_t>(size);
  }
  InFile(const InFile&) = delete;
  InFile& operator=(const InFile&) = delete;
  ~InFile() { std::fclose(f_); }

  int64_t size() const { return size_; }
  /// Reads up to n bytes; fewer only at the end of the file.
  std::size_t read(void* dst, std::size_t n) {
    const std::size_t got = std::fread(dst, 1, n, f_);
    NC_EXPECTS(got == n || !std::ferror(f_), path_ << ": read error (" << std::strerror(errno) << ")");
    return got;
  }

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
  int64_t size_ = 0;
};

/// Reads and validates the header of `in` (named `path` in errors) against the file size and
/// leaves the file positioned at the payload.
inline NpyHeader open_and_check(InFile& in, const std::string& path) {
  std::vector<unsigned char> buf(static_cast<std::size_t>(std::min<int64_t>(in.size(), 12)));
  buf.resize(in.read(buf.data(), buf.size()));
  int major = 0, minor = 0;
  std::size_t header_len = 0;
  const std::size_t total = preamble_size(buf.data(), buf.size(), in.size(), path, major, minor, header_len) +
                            header_len;
  if (buf.size() > total) {
    NC_FAIL(path << ": malformed .npy header (header length " << header_len << " is too short)");
  } else if (int64_t(total) <= in.size()) {
    const std::size_t got = buf.size();
    buf.resize(total);
    buf.resize(got + in.read(buf.data() + got, total - got));
  }
  const NpyHeader h = parse_header(buf.data(), buf.size(), in.size(), path);
  const int64_t have = in.size() - h.data_offset;
  const int64_t need = h.data_bytes();
  NC_EXPECTS(have >= need, path << ": truncated .npy file: shape " << shape_string(h.shape) << " of "
                                << to_string(h.dtype) << " needs " << need << " bytes of data, the file has "
                                << have);
  NC_EXPECTS(have == need, path << ": " << (have - need) << " unexpected bytes after the array data (shape "
                                << shape_string(h.shape) << " of " << to_string(h.dtype)
                                << "); was more than one array saved into this file?");
  return h;
}

/// True when the integer v is representable in the integer type T.
template <class T, class S>
bool fits(S v) {
  if constexpr (std::is_signed<S>::value) {
    if (v < 0) return std::is_signed<T>::value && int64_t(v) >= int64_t(std::numeric_limits<T>::min());
  }
  return uint64_t(v) <= uint64_t(std::numeric_limits<T>::max());
}

/// Reads `count` elements stored as S into dst, converted to T; integer values must fit in T.
/// `cols` > 0 names positions as (row, column) in errors.
template <class S, class T>
void read_elements(InFile& in, const std::string& path, T* dst, int64_t count, int64_t cols) {
  constexpr std::size_t kChunk = std::size_t(1) << 16;
  const bool swap = !host_little_endian();
  if constexpr (std::is_same<S, T>::value) {
    const std::size_t bytes = std::size_t(count) * sizeof(T);
    NC_EXPECTS(in.read(dst, bytes) == bytes, path << ": truncated .npy file (the file shrank while it was read)");
    if (swap)
      for (int64_t i = 0; i < count; ++i) dst[i] = byteswap(dst[i]);
  } else {
    std::vector<S> buf(std::min<std::size_t>(kChunk, std::size_t(count)));
    for (int64_t i0 = 0; i0 < count; i0 += int64_t(kChunk)) {
      const std::size_t m = std::size_t(std::min<int64_t>(int64_t(kChunk), count - i0));
      NC_EXPECTS(in.read(buf.data(), m * sizeof(S)) == m * sizeof(S),
                 path << ": truncated .npy file (the file shrank while it was read)");
      for (std::size_t j = 0; j < m; ++j) {
        const S v = swap ? byteswap(buf[j]) : buf[j];
        if constexpr (std::is_integral<S>::value) {
          if (!fits<T>(v)) {
            const int64_t i = i0 + int64_t(j);
            NC_FAIL(path << ": value " << int64_t(v) << " at "
                         << (cols > 0 ? "row " + std::to_string(i / cols) + ", column " + std::to_string(i % cols)
                                      : "index " + std::to_string(i))
                         << " does not fit in " << to_string(dtype_of<T>()));
          }
        }
        dst[i0 + int64_t(j)] = static_cast<T>(v);
      }
    }
  }
}

template <class T>
void check_dtype_for(const NpyHeader& h, const std::string& path) {
  static_assert(std::is_arithmetic<T>::value, "npy: T must be arithmetic");
  const bool want_float = std::is_floating_point<T>::value;
  NC_EXPECTS(is_floating(h.dtype) == want_float,
             path << ": dtype " << to_string(h.dtype) << " where "
                  << (want_float ? "floating-point data (float32 or float64) is expected; convert with "
                                   "a.astype(np.float32)"
                                 : "integers (int32, int64 or uint8) are expected; convert with "
                                   "a.astype(np.int64)"));
}

/// Reads the payload into `dst` (the dtype was checked with check_dtype_for<T>).
template <class T>
void read_payload(InFile& in, const NpyHeader& h, const std::string& path, T* dst, int64_t cols) {
  switch (h.dtype) {
    case NpyDtype::float32:
      if constexpr (std::is_floating_point<T>::value) read_elements<float>(in, path, dst, h.count(), cols);
      break;
    case NpyDtype::float64:
      if constexpr (std::is_floating_point<T>::value) read_elements<double>(in, path, dst, h.count(), cols);
      break;
    case NpyDtype::int32:
      if constexpr (std::is_integral<T>::value) read_elements<int32_t>(in, path, dst, h.count(), cols);
      break;
    case NpyDtype::int64:
      if constexpr (std::is_integral<T>::value) read_elements<int64_t>(in, path, dst, h.count(), cols);
      break;
    case NpyDtype::uint8:
      if constexpr (std::is_integral<T>::value) read_elements<uint8_t>(in, path, dst, h.count(), cols);
      break;
  }
}

inline std::string rank_problem(const NpyHeader& h, int expected) {
  return std::to_string(h.shape.size()) + "-D array of shape " + shape_string(h.shape) + ", expected " +
         std::to_string(expected) + "-D";
}

inline std::string temp_path_for(const std::string& path) {
#ifdef _WIN32
  const long pid = static_cast<long>(_getpid());
#else
  const long pid = static_cast<long>(getpid());
#endif
  return path + ".tmp-" + std::to_string(pid);
}

inline std::string header_text(NpyDtype dtype, const std::vector<int64_t>& shape) {
  std::string h = std::string("{'descr': '") + descr(dtype) + "', 'fortran_order': False, 'shape': " +
                  shape_string(shape) + ", }";
  // numpy pads magic + version + length + header to a multiple of 64 bytes, ending in '\n'.
  const std::size_t unpadded = 10 + h.size() + 1;
  h.append((64 - unpadded % 64) % 64, ' ');
  h += '\n';
  return h;
}

}  // namespace detail::npy

/// An output file that appears at `path` complete or not at all. The constructor creates
/// `<path>.tmp-<pid>` (exclusively: an existing temporary is an error, never overwritten);
/// write() appends to it; commit() closes it and renames it over `path`. Destroying an
/// uncommitted AtomicFile, or any failure, removes the temporary. `path` must not be a
/// directory or another non-regular file (a device, a pipe), which a rename would replace.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path) : path_(std::move(path)), temp_(detail::npy::temp_path_for(path_)) {
    std::error_code ec;
    const auto st = std::filesystem::status(path_, ec);
    NC_EXPECTS(st.type() != std::filesystem::file_type::directory, path_ << ": is a directory");
    NC_EXPECTS(st.type() == std::filesystem::file_type::not_found || st.type() == std::filesystem::file_type::regular ||
                   st.type() == std::filesystem::file_type::none,
               path_ << ": exists and is not a regular file (outputs are written to a temporary file "
                        "and renamed over the target)");
    f_ = std::fopen(temp_.c_str(), "wbx");
    if (!f_) {
      const int err = errno;
      NC_EXPECTS(err != EEXIST, path_ << ": cannot write: the temporary file " << temp_
                                      << " already exists (left by an interrupted run?); remove it");
      NC_FAIL(path_ << ": cannot write (" << std::strerror(err) << ")");
    }
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() { discard(); }

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_; }

  /// Appends n bytes to the temporary file.
  void write(const void* data, std::size_t n) {
    NC_EXPECTS(f_ != nullptr, path_ << ": write after commit or discard");
    if (n && std::fwrite(data, 1, n, f_) != n) {
      const int err = errno;
      discard();
      NC_FAIL(path_ << ": write failed (" << std::strerror(err) << ")");
    }
  }

  /// Closes the temporary file and renames it over `path`.
  void commit() {
    NC_EXPECTS(f_ != nullptr, path_ << ": commit after commit or discard");
    const bool flushed = std::fflush(f_) == 0 && !std::ferror(f_);
    int err = errno;
    const bool closed = std::fclose(f_) == 0;
    if (!closed && flushed) err = errno;
    f_ = nullptr;
    if (!flushed || !closed) {
      std::remove(temp_.c_str());
      NC_FAIL(path_ << ": write failed (" << std::strerror(err) << ")");
    }
    if (std::rename(temp_.c_str(), path_.c_str()) != 0) {
      err = errno;
      std::remove(temp_.c_str());
      NC_FAIL(path_ << ": cannot move the finished temporary file into place (" << std::strerror(err) << ")");
    }
    committed_ = true;
  }

  /// Closes and removes the temporary file (no-op after commit).
  void discard() noexcept {
    if (f_) {
      std::fclose(f_);
      f_ = nullptr;
    }
    if (!committed_ && !discarded_) {
      std::remove(temp_.c_str());
      discarded_ = true;
    }
  }

 private:
  std::string path_, temp_;
  std::FILE* f_ = nullptr;
  bool committed_ = false, discarded_ = false;
};

/// Reads and validates the header of the .npy file at `path` (any rank), including that the
/// file holds exactly the payload the header describes.
inline NpyHeader read_npy_header(const std::string& path) {
  detail::npy::InFile in(path);
  return detail::npy::open_and_check(in, path);
}

/// Reads a 2-D .npy file as a row-major [rows, cols] matrix. Floating T (float, double)
/// accepts float32 and float64 files (converted by static_cast); integer T accepts int32,
/// int64 and uint8 files whose values fit in T.
template <class T>
Matrix<T> read_npy_matrix(const std::string& path) {
  detail::npy::InFile in(path);
  const NpyHeader h = detail::npy::open_and_check(in, path);
  NC_EXPECTS(h.shape.size() == 2, path << ": " << detail::npy::rank_problem(h, 2));
  NC_EXPECTS(h.shape[0] <= std::numeric_limits<Index>::max() && h.shape[1] <= std::numeric_limits<Index>::max(),
             path << ": shape " << detail::npy::shape_string(h.shape) << " too large for this platform");
  detail::npy::check_dtype_for<T>(h, path);  // also for an empty array
  Matrix<T> m(static_cast<Index>(h.shape[0]), static_cast<Index>(h.shape[1]));
  if (m.size()) detail::npy::read_payload<T>(in, h, path, m.data(), h.shape[1]);
  return m;
}

/// Reads a 1-D .npy file; the same dtype rules as read_npy_matrix.
template <class T>
std::vector<T> read_npy_vector(const std::string& path) {
  detail::npy::InFile in(path);
  const NpyHeader h = detail::npy::open_and_check(in, path);
  NC_EXPECTS(h.shape.size() == 1, path << ": " << detail::npy::rank_problem(h, 1)
                                       << (h.shape.size() == 2 ? " (flatten it with a.ravel())" : ""));
  NC_EXPECTS(uint64_t(h.shape[0]) <= uint64_t(std::numeric_limits<std::size_t>::max() / sizeof(T)),
             path << ": shape " << detail::npy::shape_string(h.shape) << " too large for this platform");
  detail::npy::check_dtype_for<T>(h, path);  // also for an empty array
  std::vector<T> v(static_cast<std::size_t>(h.shape[0]));
  if (!v.empty()) detail::npy::read_payload<T>(in, h, path, v.data(), 0);
  return v;
}

/// Writes `a` to an open AtomicFile as a C-order .npy array (format 1.0): a vector expression
/// (one compile-time row or column) as 1-D, anything else as 2-D [rows, cols]. The dtype
/// follows the scalar: float <f4, double <f8, int32 <i4, int64 <i8, uint8 |u1.
template <class D>
void write_npy(AtomicFile& out, const Eigen::MatrixBase<D>& a) {
  using T = typename D::Scalar;
  constexpr NpyDtype dtype = detail::npy::dtype_of<T>();
  const std::vector<int64_t> shape =
      D::IsVectorAtCompileTime ? std::vector<int64_t>{int64_t(a.size())}
                               : std::vector<int64_t>{int64_t(a.rows()), int64_t(a.cols())};
  const std::string header = detail::npy::header_text(dtype, shape);
  unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
  pre[8] = static_cast<unsigned char>(header.size() & 0xff);
  pre[9] = static_cast<unsigned char>(header.size() >> 8);
  out.write(pre, sizeof(pre));
  out.write(header.data(), header.size());
  const bool swap = !detail::npy::host_little_endian();
  if (D::IsVectorAtCompileTime) {
    // One row or one column: the plain copy's storage is the elements in order either way.
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> v = a;
    if (swap) v = v.unaryExpr([](T x) { return detail::npy::byteswap(x); });
    out.write(v.data(), sizeof(T) * std::size_t(v.size()));
    return;
  }
  if (a.rows() == 0 || a.cols() == 0) return;  // no payload (and no row buffer to allocate)
  Eigen::Matrix<T, 1, Eigen::Dynamic> row(a.cols());
  for (Index i = 0; i < a.rows(); ++i) {
    row = a.row(i);
    if (swap) row = row.unaryExpr([](T x) { return detail::npy::byteswap(x); });
    out.write(row.data(), sizeof(T) * std::size_t(row.size()));
  }
}

/// Writes a 1-D array.
template <class T, class A>
void write_npy(AtomicFile& out, const std::vector<T, A>& v) {
  write_npy(out, Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(v.data(), Index(v.size())));
}

/// Writes `a` (an Eigen expression or a std::vector) to `path` atomically.
template <class A>
void write_npy(const std::string& path, const A& a) {
  AtomicFile out(path);
  write_npy(out, a);
  out.commit();
}

}  // namespace nc
