// ncml Python module: the binding functions of each component, and option parsing.
#pragma once

#include <string>
#include <utility>

#include <pybind11/pybind11.h>

#include "arrays.hpp"

namespace ncml_py {

void bind_stats(py::module_& m);      // ClassStats, class_stats, nc1, nc1_detailed, nc_metrics, nc4
void bind_head(py::module_& m);       // nc_directions, init_head, DriftTracker
void bind_perturb(py::module_& m);    // Perturbation and its context manager, the two losses
void bind_retrieval(py::module_& m);  // knn, evaluate_retrieval

/// The enum value named `value` among `names` ({"name", value}, ...); ValueError listing
/// the valid names otherwise.
template <class E, std::size_t N>
E parse_enum(const std::string& value, const char* arg, const std::pair<const char*, E> (&names)[N]) {
  std::string valid;
  for (std::size_t i = 0; i < N; ++i) {
    if (value == names[i].first) return names[i].second;
    valid += std::string(i ? ", " : "") + "'" + names[i].first + "'";
  }
  fail(std::string(arg) + " must be one of " + valid + ", got '" + value + "'");
}

}  // namespace ncml_py
