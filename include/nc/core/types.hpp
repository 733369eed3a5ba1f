// ncml: matrix aliases and input adapters.
//
// Features are any Eigen dense expression with samples as rows; labels are any contiguous
// integer vector (std::vector<int>, std::vector<int64_t>, an Eigen integer vector, or a
// LabelView over caller memory).
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace nc {

using Index = Eigen::Index;

/// Row-major dynamic matrix: rows are samples (or classes), columns are dimensions.
template <class T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixF = Matrix<float>;
using MatrixD = Matrix<double>;
template <class T>
using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;
using VectorI64 = Vector<int64_t>;

/// Read-only row-major view with an outer stride (binds to MatrixF/MatrixD and row blocks
/// of them without a copy; other expressions are evaluated into a temporary).
template <class T>
using ConstRowsRef = Eigen::Ref<const Matrix<T>, 0, Eigen::OuterStride<>>;

/// Non-owning view of contiguous integer labels.
template <class L>
struct LabelView {
  static_assert(std::is_integral<L>::value, "labels must be integers");
  const L* data = nullptr;
  Index size = 0;
  L operator[](Index i) const { return data[i]; }
};

/// Make a LabelView from any supported label container.
template <class L>
LabelView<L> label_view(const LabelView<L>& v) { return v; }
template <class L, class A>
LabelView<L> label_view(const std::vector<L, A>& v) {
  static_assert(std::is_integral<L>::value, "labels must be integers");
  return {v.data(), static_cast<Index>(v.size())};
}
template <class D>
auto label_view(const Eigen::DenseBase<D>& v)
    -> LabelView<typename D::Scalar> {
  using L = typename D::Scalar;
  static_assert(std::is_integral<L>::value, "labels must be integers");
  static_assert(D::IsVectorAtCompileTime || D::ColsAtCompileTime == Eigen::Dynamic,
                "labels must be a vector");
  // Only plain, contiguous vectors are accepted: take the storage directly.
  static_assert(bool(D::Flags & Eigen::DirectAccessBit), "labels must be a contiguous vector");
  return {v.derived().data(), static_cast<Index>(v.size())};
}

namespace detail {
template <class T>
struct is_supported_scalar : std::integral_constant<bool, std::is_same<T, float>::value ||
                                                              std::is_same<T, double>::value> {};
}  // namespace detail

}  // namespace nc
