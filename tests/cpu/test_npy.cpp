#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nc/io/npy.hpp>

#include "support.hpp"

// Each test file is its own namespace, so the files also build as one program
// (unity build, NCML_UNITY_BUILD).
namespace test_npy {

namespace fs = std::filesystem;
using nct::Index;

namespace {

std::string tmp(const std::string& name) {
  const fs::path dir = fs::path(NCML_TEST_TMP_DIR) / "npy";
  fs::create_directories(dir);
  return (dir / name).string();
}

void put(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

std::string get(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// A .npy file with the given header text (used verbatim) and payload.
std::string npy_bytes(const std::string& header, const std::string& payload, int major = 1) {
  std::string s("\x93NUMPY", 6);
  s += char(major);
  s += char(0);
  const std::size_t n = header.size();
  s += char(n & 0xff);
  s += char((n >> 8) & 0xff);
  if (major > 1) {
    s += char((n >> 16) & 0xff);
    s += char((n >> 24) & 0xff);
  }
  return s + header + payload;
}

std::string f4_payload(std::initializer_list<float> v) {
  std::string s;
  for (float x : v) s.append(reinterpret_cast<const char*>(&x), sizeof(float));
  return s;
}

/// Files in the test directory whose name contains ".tmp-" (leftover temporaries).
int leftover_temps() {
  int n = 0;
  for (const auto& e : fs::directory_iterator(fs::path(NCML_TEST_TMP_DIR) / "npy"))
    if (e.path().filename().string().find(".tmp-") != std::string::npos) ++n;
  return n;
}

}  // namespace

TEST_CASE("npy: files written by numpy are read (known bytes, format 1.0, 2.0, 3.0)", "[npy]") {
  // np.save(np.arange(3, dtype='<i4')) and np.save(np.array([[1.5, -2], [0.25, 3]], '<f4')).
  const std::string pad1(60, ' '), pad2(58, ' ');
  put(tmp("np_i4.npy"), npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }" + pad1 + "\n",
                                  std::string("\0\0\0\0\1\0\0\0\2\0\0\0", 12)));
  put(tmp("np_f4.npy"), npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }" + pad2 + "\n",
                                  std::string("\0\0\xc0?\0\0\0\xc0\0\0\x80>\0\0@@", 16)));
  // np.lib.format.write_array(..., version=(2, 0)) and (3, 0).
  put(tmp("np_v2.npy"), npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }" + pad2 + "\n",
                                  std::string("\0\0\0\0\0\0\0\0\0\0\0\0\0\0\xf0?", 16), 2));
  put(tmp("np_v3.npy"), npy_bytes("{'descr': '|u1', 'fortran_order': False, 'shape': (2,), }" + pad2 + "\n",
                                  std::string("\0\1", 2), 3));

  CHECK(nc::read_npy_vector<int32_t>(tmp("np_i4.npy")) == std::vector<int32_t>{0, 1, 2});
  const nc::MatrixF f = nc::read_npy_matrix<float>(tmp("np_f4.npy"));
  CHECK(f.rows() == 2);
  CHECK(f.cols() == 2);
  CHECK(f(0, 0) == 1.5f);
  CHECK(f(0, 1) == -2.0f);
  CHECK(f(1, 0) == 0.25f);
  CHECK(f(1, 1) == 3.0f);
  const nc::NpyHeader h2 = nc::read_npy_header(tmp("np_v2.npy"));
  CHECK(h2.major == 2);
  CHECK(h2.dtype == nc::NpyDtype::float64);
  CHECK(h2.data_offset == 128);
  CHECK(nc::read_npy_vector<double>(tmp("np_v2.npy")) == std::vector<double>{0.0, 1.0});
  CHECK(nc::read_npy_header(tmp("np_v3.npy")).major == 3);
  CHECK(nc::read_npy_vector<uint8_t>(tmp("np_v3.npy")) == std::vector<uint8_t>{0, 1});
}

TEST_CASE("npy: every dtype round-trips, 1-D and 2-D, any Eigen expression", "[npy]") {
  std::mt19937_64 rng(7);
  std::normal_distribution<double> g;
  nc::MatrixD d(37, 5);
  for (Index i = 0; i < d.size(); ++i) d.data()[i] = g(rng);
  const nc::MatrixF f = d.cast<float>();
  nc::write_npy(tmp("f4.npy"), f);
  nc::write_npy(tmp("f8.npy"), d);
  CHECK(nc::read_npy_matrix<float>(tmp("f4.npy")) == f);
  CHECK(nc::read_npy_matrix<double>(tmp("f8.npy")) == d);
  // The header is padded so that the data starts at a multiple of 64 bytes.
  const nc::NpyHeader h = nc::read_npy_header(tmp("f4.npy"));
  CHECK(h.data_offset % 64 == 0);
  CHECK(h.dtype == nc::NpyDtype::float32);
  CHECK(h.shape == std::vector<int64_t>{37, 5});
  CHECK(int64_t(fs::file_size(tmp("f4.npy"))) == h.data_offset + 37 * 5 * 4);

  // Column-major matrices and blocks are written in C order.
  const Eigen::MatrixXd cm = d;
  nc::write_npy(tmp("cm.npy"), cm.block(3, 1, 10, 3));
  CHECK(nc::read_npy_matrix<double>(tmp("cm.npy")) == d.block(3, 1, 10, 3));

  nc::Matrix<int32_t> i4(3, 4);
  nc::Matrix<int64_t> i8(2, 3);
  nc::Matrix<uint8_t> u1(4, 2);
  for (Index i = 0; i < i4.size(); ++i) i4.data()[i] = int32_t(i * 1000003) - 7;
  for (Index i = 0; i < i8.size(); ++i) i8.data()[i] = (int64_t(1) << 40) * (i - 3);
  for (Index i = 0; i < u1.size(); ++i) u1.data()[i] = uint8_t(i * 37);
  nc::write_npy(tmp("i4.npy"), i4);
  nc::write_npy(tmp("i8.npy"), i8);
  nc::write_npy(tmp("u1.npy"), u1);
  CHECK(nc::read_npy_matrix<int32_t>(tmp("i4.npy")) == i4);
  CHECK(nc::read_npy_matrix<int64_t>(tmp("i8.npy")) == i8);
  CHECK(nc::read_npy_matrix<uint8_t>(tmp("u1.npy")) == u1);
  CHECK(nc::read_npy_header(tmp("u1.npy")).dtype == nc::NpyDtype::uint8);

  // Vectors (std::vector, Eigen column and row vectors) are 1-D.
  const std::vector<int> labels{3, 0, 2, 2, 1};
  nc::write_npy(tmp("y.npy"), labels);
  CHECK(nc::read_npy_header(tmp("y.npy")).shape == std::vector<int64_t>{5});
  CHECK(nc::read_npy_header(tmp("y.npy")).dtype == nc::NpyDtype::int32);
  CHECK(nc::read_npy_vector<int>(tmp("y.npy")) == labels);
  const Eigen::RowVectorXf rv = f.row(2);
  nc::write_npy(tmp("rv.npy"), rv);
  const std::vector<float> back = nc::read_npy_vector<float>(tmp("rv.npy"));
  CHECK(Eigen::Map<const Eigen::RowVectorXf>(back.data(), Index(back.size())) == rv);
  nc::write_npy(tmp("col.npy"), d.col(1));
  CHECK(nc::read_npy_header(tmp("col.npy")).shape == std::vector<int64_t>{37});

  // Empty arrays are valid files.
  nc::write_npy(tmp("empty.npy"), nc::MatrixF(0, 4));
  CHECK(nc::read_npy_matrix<float>(tmp("empty.npy")).rows() == 0);
  CHECK(nc::read_npy_matrix<float>(tmp("empty.npy")).cols() == 4);
  nc::write_npy(tmp("empty1.npy"), std::vector<int64_t>{});
  CHECK(nc::read_npy_vector<int64_t>(tmp("empty1.npy")).empty());
}

TEST_CASE("npy: conversions between dtypes", "[npy]") {
  nc::MatrixD d(2, 2);
  d << 0.1, -1e300, 3.0, 1.0 / 3.0;
  nc::write_npy(tmp("conv_f8.npy"), d);
  CHECK(nc::read_npy_matrix<float>(tmp("conv_f8.npy")) == d.cast<float>());
  nc::write_npy(tmp("conv_f4.npy"), d.cast<float>().eval());
  CHECK(nc::read_npy_matrix<double>(tmp("conv_f4.npy")) == d.cast<float>().cast<double>());

  nc::write_npy(tmp("conv_u1.npy"), std::vector<uint8_t>{0, 200, 255});
  CHECK(nc::read_npy_vector<int64_t>(tmp("conv_u1.npy")) == std::vector<int64_t>{0, 200, 255});
  nc::write_npy(tmp("conv_i4.npy"), std::vector<int32_t>{5, -1});
  CHECK(nc::read_npy_vector<int64_t>(tmp("conv_i4.npy")) == std::vector<int64_t>{5, -1});
  CHECK_THROWS_WITH(nc::read_npy_vector<uint8_t>(tmp("conv_i4.npy")),
                    Catch::Contains("conv_i4.npy: value -1 at index 1 does not fit in uint8"));
  nc::Matrix<int64_t> big(2, 2);
  big << 1, 2, 3, int64_t(1) << 40;
  nc::write_npy(tmp("conv_i8.npy"), big);
  CHECK_THROWS_WITH(nc::read_npy_matrix<int32_t>(tmp("conv_i8.npy")),
                    Catch::Contains("value 1099511627776 at row 1, column 1 does not fit in int32"));

  // Integers are never read as floating point, nor floating point as integers.
  CHECK_THROWS_WITH(nc::read_npy_vector<float>(tmp("conv_i4.npy")),
                    Catch::Contains("dtype int32 where floating-point data"));
  CHECK_THROWS_WITH(nc::read_npy_matrix<int64_t>(tmp("conv_f8.npy")),
                    Catch::Contains("dtype float64 where integers"));
}

TEST_CASE("npy: the header grammar accepts what numpy and other writers produce", "[npy]") {
  const std::string data = f4_payload({1, 2, 3, 4, 5, 6});
  const std::vector<std::string> accepted = {
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n",
      "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2, 3)}",
      "{'shape': (2,3,), 'fortran_order': False, 'descr': '<f4'}    \n",
      " {\t'descr' : '<f4' ,\n'fortran_order':False,'shape':( 2 , 3 )}  ",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3L), }\n",
  };
  for (const auto& header : accepted) {
    INFO(header);
    for (int major : {1, 2, 3}) {
      put(tmp("hdr.npy"), npy_bytes(header, data, major));
      const nc::MatrixF m = nc::read_npy_matrix<float>(tmp("hdr.npy"));
      REQUIRE(m.rows() == 2);
      CHECK(m(1, 2) == 6.0f);
    }
  }
}

TEST_CASE("npy: malformed headers are rejected with the problem named", "[npy]") {
  const std::string data = f4_payload({1, 2, 3, 4, 5, 6});
  const std::vector<std::pair<std::string, std::string>> rejected = {
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}", "unknown key 'x'"},
      {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}", "'descr' appears twice"},
      {"{'descr': '<f4', 'shape': (2, 3)}", "missing key 'fortran_order'"},
      {"{'descr': '<f4', 'fortran_order': False}", "missing key 'shape'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (6)}", "needs a trailing comma"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 3)}", "non-negative integer"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (02, 3)}", "leading zero"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3]}", "expected a tuple"},
      {"{'descr': '<f4', 'fortran_order': 0, 'shape': (2, 3)}", "expected True or False"},
      {"{'descr' '<f4', 'fortran_order': False, 'shape': (2, 3)}", "expected ':' after the key 'descr'"},
      {"{'descr': '<f4, 'fortran_order': False, 'shape': (2, 3)}", "expected ',' or '}' after the value of 'descr'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)", "expected ',' or '}'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)} x", "unexpected bytes after the closing"},
      {"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2, 3)}", "structured or nested dtypes"},
      {"{'descr': '<f4\\n', 'fortran_order': False, 'shape': (2, 3)}", "unsupported character"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}\xff", "non-ASCII byte"},
      {"['descr', '<f4']", "expected the header dict to start with '{'"},
      {"{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3)}", "Fortran-order"},
      {"{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3)}", "big-endian dtype '>f4'"},
      {"{'descr': '|b1', 'fortran_order': False, 'shape': (2, 3)}", "boolean dtype"},
      {"{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3)}", "unsupported dtype '<f2'"},
      {"{'descr': '<c8', 'fortran_order': False, 'shape': (2, 3)}", "unsupported dtype '<c8'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999, 3)}", "does not fit in 64 bits"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904, 4)}", "overflows 64-bit sizes"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (200000000, 200000000)}", "truncated .npy file: shape (200000000, 200000000) of float32 needs"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2)}", "8 unexpected bytes after the array data"},
      {"", "header length 0 is too short"},
  };
  for (const auto& [header, problem] : rejected) {
    INFO(header);
    put(tmp("bad.npy"), npy_bytes(header, data));
    CHECK_THROWS_AS(nc::read_npy_header(tmp("bad.npy")), nc::error);
    CHECK_THROWS_WITH(nc::read_npy_header(tmp("bad.npy")), Catch::Contains(tmp("bad.npy") + ": ") &&
                                                               Catch::Contains(problem));
  }
  std::string many = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  for (int i = 0; i < 70; ++i) many += "1, ";
  put(tmp("bad.npy"), npy_bytes(many + ")}", data));
  CHECK_THROWS_WITH(nc::read_npy_header(tmp("bad.npy")), Catch::Contains("more than 64 dimensions"));
}

TEST_CASE("npy: bad files (magic, version, truncation, size bounds, rank) are rejected", "[npy]") {
  nc::MatrixF m(3, 4);
  m.setConstant(1.0f);
  nc::write_npy(tmp("good.npy"), m);
  const std::string good = get(tmp("good.npy"));

  std::string bad = good;
  bad[1] = 'X';
  put(tmp("bad.npy"), bad);
  CHECK_THROWS_WITH(nc::read_npy_matrix<float>(tmp("bad.npy")), Catch::Contains("not a .npy file"));
  put(tmp("bad.npy"), "PK\x03\x04 this is a zip (an .npz) file");
  CHECK_THROWS_WITH(nc::read_npy_matrix<float>(tmp("bad.npy")), Catch::Contains("not a .npy file"));
  bad = good;
  bad[6] = 4;
  put(tmp("bad.npy"), bad);
  CHECK_THROWS_WITH(nc::read_npy_matrix<float>(tmp("bad.npy")), Catch::Contains("unsupported .npy format version 4.0"));
  bad = good;
  bad[7] = 1;
  put(tmp("bad.npy"), bad);
  CHECK_THROWS_WITH(nc::read_npy_matrix<float>(tmp("bad.npy")), Catch::Contains("version 1.1"));
  // A 2.0 header length of 4 GiB - 1 is refused before anything is read.
  put(tmp("bad.npy"), std::string("\x93NUMPY\x02\x00\xff\xff\xff\xff{}", 14));
  CHECK_THROWS_WITH(nc::read_npy_matrix<float>(tmp("bad.npy")), Catch::Contains("exceeds the 65536-byte limit"));

  // Every proper prefix of a valid file is an error, never a crash or a partial array.
  for (std::size_t n = 0; n < good.size(); ++n) {
    INFO(n);
    put(tmp("cut.npy"), good.substr(0, n));
    CHECK_THROWS_WITH(nc::read_npy_matrix<float>(tmp("cut.npy")), Catch::Contains("truncated") ||
                                                                      Catch::Contains("malformed .npy header"));
  }
  put(tmp("long.npy"), good + "x");
  CHECK_THROWS_WITH(nc::read_npy_matrix<float>(tmp("long.npy")), Catch::Contains("1 unexpected bytes"));

  CHECK_THROWS_WITH(nc::read_npy_vector<float>(tmp("good.npy")),
                    Catch::Contains("2-D array of shape (3, 4), expected 1-D (flatten it"));
  nc::write_npy(tmp("vec.npy"), std::vector<float>{1, 2});
  CHECK_THROWS_WITH(nc::read_npy_matrix<float>(tmp("vec.npy")), Catch::Contains("1-D array of shape (2,), expected 2-D"));
  put(tmp("scalar.npy"), npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': ()}", f4_payload({1})));
  CHECK(nc::read_npy_header(tmp("scalar.npy")).count() == 1);
  CHECK_THROWS_WITH(nc::read_npy_matrix<float>(tmp("scalar.npy")), Catch::Contains("0-D array of shape ()"));
  put(tmp("3d.npy"), npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3)}",
                               f4_payload({1, 2, 3, 4, 5, 6})));
  CHECK_THROWS_WITH(nc::read_npy_matrix<float>(tmp("3d.npy")), Catch::Contains("3-D array of shape (1, 2, 3)"));

  CHECK_THROWS_WITH(nc::read_npy_matrix<float>(tmp("missing.npy")), Catch::Contains("missing.npy: no such file"));
  CHECK_THROWS_WITH(nc::read_npy_matrix<float>(NCML_TEST_TMP_DIR), Catch::Contains("is a directory"));
  if (fs::exists("/dev/null"))
    CHECK_THROWS_WITH(nc::read_npy_matrix<float>("/dev/null"), Catch::Contains("not a regular file"));
}

TEST_CASE("npy: random corruption never crashes the reader", "[npy]") {
  nc::MatrixF m(5, 3);
  m.setConstant(2.0f);
  nc::write_npy(tmp("fuzz_src.npy"), m);
  const std::string good = get(tmp("fuzz_src.npy"));
  std::mt19937_64 rng(11);
  int parsed = 0, rejected = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string b = good;
    const int edits = 1 + int(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      // Mostly the preamble and header, where the parser works; sometimes anywhere.
      const std::size_t limit = (rng() % 4) ? std::size_t(80) : b.size();
      const std::size_t pos = rng() % limit;
      switch (rng() % 4) {
        case 0: b[pos] = char(rng() % 256); break;
        case 1: b[pos] = "0123456789(),:' {}\n"[rng() % 19]; break;
        case 2: b.erase(pos, 1); break;
        default: b.insert(pos, 1, char(rng() % 256)); break;
      }
    }
    if (trial % 100 == 0) b.resize(rng() % b.size());
    put(tmp("fuzz.npy"), b);
    try {
      const nc::MatrixF r = nc::read_npy_matrix<float>(tmp("fuzz.npy"));
      CHECK(int64_t(r.size()) * 4 <= int64_t(b.size()));
      ++parsed;
    } catch (const nc::error& e) {
      CHECK(std::string(e.what()).find('\n') == std::string::npos);
      ++rejected;
    }
  }
  CHECK(parsed > 0);
  CHECK(rejected > 0);
}

TEST_CASE("npy: writes are atomic and leave nothing behind on error", "[npy]") {
  nc::MatrixF a(2, 2), b(3, 3);
  a.setConstant(1.0f);
  b.setConstant(2.0f);
  const std::string path = tmp("atomic.npy");
  nc::write_npy(path, a);
  nc::write_npy(path, b);  // replaces the old file
  CHECK(nc::read_npy_matrix<float>(path) == b);

  {
    // Abandoned before commit (e.g. an exception while computing the rest): the old file stays.
    nc::AtomicFile out(path);
    CHECK(out.temp_path() == path + ".tmp-" + std::to_string(getpid()));
    CHECK(fs::exists(out.temp_path()));
    nc::write_npy(out, a);
  }
  CHECK(nc::read_npy_matrix<float>(path) == b);
  CHECK(leftover_temps() == 0);

  {
    // Two outputs appear together: both are complete before either is moved into place.
    fs::remove(tmp("pair1.npy"));
    nc::AtomicFile o1(tmp("pair1.npy")), o2(tmp("pair2.npy"));
    nc::write_npy(o1, a);
    nc::write_npy(o2, b);
    CHECK_FALSE(fs::exists(tmp("pair1.npy")));
    o1.commit();
    o2.commit();
  }
  CHECK(nc::read_npy_matrix<float>(tmp("pair1.npy")) == a);
  CHECK(nc::read_npy_matrix<float>(tmp("pair2.npy")) == b);

  CHECK_THROWS_WITH(nc::write_npy(tmp("no/such/dir/x.npy"), a),
                    Catch::Contains("x.npy: cannot write (No such file or directory)"));
  CHECK_FALSE(fs::exists(tmp("no")));
  CHECK_THROWS_WITH(nc::write_npy(NCML_TEST_TMP_DIR, a), Catch::Contains("is a directory"));
  if (fs::exists("/dev/null")) CHECK_THROWS_WITH(nc::write_npy("/dev/null", a), Catch::Contains("not a regular file"));
  CHECK(leftover_temps() == 0);

  // A temporary of the same name is never overwritten or removed: it is not ours.
  put(path + ".tmp-" + std::to_string(getpid()), "someone else's");
  CHECK_THROWS_WITH(nc::write_npy(path, a), Catch::Contains("already exists"));
  CHECK(get(path + ".tmp-" + std::to_string(getpid())) == "someone else's");
  fs::remove(path + ".tmp-" + std::to_string(getpid()));
  CHECK(nc::read_npy_matrix<float>(path) == b);
}

}  // namespace test_npy
