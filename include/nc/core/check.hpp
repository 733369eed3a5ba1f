// ncml: argument validation shared by the public entry points.
//
// Every check runs before any output is written and throws nc::error naming the argument,
// the row or class, and the value found.
#pragma once

#include <algorithm>

#include <cmath>
#include <cstdint>
#include <string>

#include "error.hpp"
#include "types.hpp"

namespace nc::detail {

/// Throws unless `x` has at least one row and one column and every entry is finite.
template <class D>
void check_features(const Eigen::MatrixBase<D>& x, const char* name) {
  NC_EXPECTS(x.rows() > 0 && x.cols() > 0,
             name << " is empty (" << x.rows() << " x " << x.cols() << ")");
  using T = typename D::Scalar;
  for (Index i = 0; i < x.rows(); ++i) {
    // 0 * v is 0 for finite v and NaN for NaN or +-Inf: one vectorized reduction per row.
    if (std::isfinite((x.row(i).array() * T(0)).sum())) continue;
    for (Index j = 0; j < x.cols(); ++j) {
      const auto v = x(i, j);
      NC_EXPECTS(std::isfinite(static_cast<double>(v)),
                 name << " has a non-finite value " << v << " at row " << i << ", column " << j);
    }
  }
}

/// Class counts up to this are always accepted when inferred from the labels; beyond it the
/// largest label may be at most 16 times the number of rows.
constexpr Index kMaxSparseClasses = Index(1) << 24;

/// Per-class memory is sized by the largest label: an inferred class count (max_label + 1) far
/// beyond the n rows (sparse ids such as hashes) is refused before anything is allocated.
inline void check_inferred_classes(Index max_label, Index n, const char* name) {
  NC_EXPECTS(max_label + 1 <= std::max<Index>(kMaxSparseClasses, 16 * n),
             name << " has label " << max_label << ", which implies " << max_label + 1
                  << " classes for " << n << " rows; relabel the classes to 0 .. C-1"
                  << " (or pass num_classes where the call takes it)");
}

/// Throws unless `labels` has `n` entries, all non-negative and below `num_classes`
/// (when num_classes >= 0). Returns max(label) + 1.
template <class L>
Index check_labels(LabelView<L> labels, Index n, Index num_classes, const char* name) {
  NC_EXPECTS(labels.size == n, name << " has " << labels.size << " entries, expected " << n
                                    << " (one per row)");
  Index max_label = -1;
  for (Index i = 0; i < labels.size; ++i) {
    const auto y = static_cast<int64_t>(labels[i]);
    NC_EXPECTS(y >= 0, name << " has a negative label " << y << " at row " << i);
    NC_EXPECTS(num_classes < 0 || y < num_classes,
               name << " has label " << y << " at row " << i << ", out of range [0, "
                    << num_classes << ")");
    if (y > max_label) max_label = static_cast<Index>(y);
  }
  if (num_classes < 0) check_inferred_classes(max_label, n, name);
  return max_label + 1;
}

/// Resolves num_classes (-1 means max(label) + 1) and validates the labels against it.
template <class L>
Index resolve_num_classes(LabelView<L> labels, Index n, Index num_classes, const char* name) {
  NC_EXPECTS(num_classes == -1 || num_classes > 0,
             "num_classes must be positive or -1 (infer), got " << num_classes);
  const Index inferred = check_labels(labels, n, num_classes, name);
  return num_classes == -1 ? inferred : num_classes;
}

/// "0, 3, 7" (at most `limit` entries, then "...").
template <class Container>
std::string join_indices(const Container& c, std::size_t limit = 20) {
  std::string s;
  std::size_t k = 0;
  for (const auto& v : c) {
    if (k == limit) {
      s += ", ...";
      break;
    }
    if (k++) s += ", ";
    s += std::to_string(v);
  }
  return s;
}

}  // namespace nc::detail
