// Bitwise snapshots of library objects, for the checks that a call which throws leaves its
// object unchanged (tests/cpu/test_bad_inputs.cpp, tests/fuzz/fuzz_inputs.cpp).
#pragma once

#include <cstddef>
#include <string>

#include <nc/drift.hpp>
#include <nc/stats.hpp>

namespace nct {

/// The bytes of a dense Eigen object's storage.
template <class M>
std::string bytes_of(const M& m) {
  return std::string(reinterpret_cast<const char*>(m.data()), sizeof(typename M::Scalar) * std::size_t(m.size()));
}

/// Everything a ClassStats holds, bitwise.
inline std::string snapshot(const nc::ClassStats& s) {
  std::string b = bytes_of(s.counts()) + bytes_of(s.means()) + bytes_of(s.class_sq_deviations());
  if (s.has_scatter()) b += bytes_of(s.within_scatter());
  return b;
}

/// Everything a DriftTracker reports, bitwise.
inline std::string snapshot(const nc::DriftTracker& t) {
  std::string b = std::to_string(t.num_updates()) + bytes_of(t.reference());
  if (t.num_updates() > 0) {
    const double v[3] = {t.mean_squared_distance(), t.from_initial(), t.path_length()};
    b += std::string(reinterpret_cast<const char*>(v), sizeof v) + bytes_of(t.per_class());
  }
  return b;
}

}  // namespace nct
