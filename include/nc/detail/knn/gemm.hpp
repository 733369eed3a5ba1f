// ncml: tile products for the exact kNN engine, with scores that do not depend on the tiling.
//
// The similarity of a pair (i, j) must be bitwise the same whichever tile, tile size, thread
// or pass computes it, so that ties are exact and results do not depend on the options. A
// product through Eigen's public API does not give that: its blocking, its threading and the
// micro-kernel path of an element (full register panels accumulate over the depth in one
// chain of FMAs; edge rows use split accumulators) depend on the product's shape and on the
// element's position. This layer drives Eigen's GEBP micro-kernel itself:
//
//   - every operand is packed once, in depth slabs of a fixed size kc that depends on the
//     dimension only (Eigen's own choice for a large product of that depth);
//   - every tile has a row count that is a multiple of the kernel's register panel height
//     (Traits::mr) and a column count that is a multiple of its width (Traits::nr), so every
//     element goes through the same full-panel path: one FMA chain over each slab, slabs added
//     into the result in order.
//
// The score of (i, j) is then a fixed function of the two rows, and symmetric as well
// (fma(a, b, c) = fma(b, a, c)), so a leave-one-out pass may compute each pair of tiles once.
// Eigen's GEMM is the engine; there is no BLAS dependency (EIGEN_USE_BLAS does not reach
// these internal kernels).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include <Eigen/Core>

#include "../../core/types.hpp"

namespace nc::detail::knn {

using GebpTraits = Eigen::internal::gebp_traits<float, float>;
/// Tile rows are a multiple of this (the micro-kernel's register panel height).
constexpr Index kRowAlign = GebpTraits::mr;
// nvcc's device pass sees Eigen without SIMD (other constants); the kernels here are host-only.
#if !defined(__CUDA_ARCH__)
static_assert(GebpTraits::mr % GebpTraits::nr == 0, "tile rows double as tile columns");
#endif

inline Index round_up(Index x, Index m) { return (x + m - 1) / m * m; }

/// Depth of the packed slabs for vectors of dimension `dim`: Eigen's blocking for a large
/// product of that depth (a function of the depth and the cache sizes only).
inline Index depth_block(Index dim) {
  Index kc = dim, mc = 4096, nc = 4096;
  Eigen::internal::computeProductBlockingSizes<float, float, 1, Index>(kc, mc, nc, 1);
  return std::max<Index>(1, std::min(kc, dim));
}

/// Rows of a row-major float matrix packed for the GEBP kernel, slab by slab, as left operand
/// (row panels of mr) and/or as right operand (column panels of nr). `rows` must be a
/// multiple of kRowAlign; row r of slab s starts at offset(s) + r * slab_depth(s).
class PackedRows {
 public:
  PackedRows() = default;
  PackedRows(const float* x, Index rows, Index dim, Index kc, bool as_lhs, bool as_rhs) {
    allocate(rows, dim, kc, as_lhs, as_rhs);
    pack(x, 0, rows);
  }

  /// Sizes the buffers for `rows` rows (a multiple of kRowAlign; capacity is kept for reuse).
  void allocate(Index rows, Index dim, Index kc, bool as_lhs, bool as_rhs) {
    rows_ = rows;
    dim_ = dim;
    kc_ = kc;
    const std::size_t total = static_cast<std::size_t>(rows) * static_cast<std::size_t>(dim);
    lhs_.resize(as_lhs ? total : 0);
    rhs_.resize(as_rhs ? total : 0);
  }

  /// Packs rows [r0, r0 + m) from `x` (m rows, row-major, leading dimension dim): r0 and m are
  /// multiples of kRowAlign. Register panels are packed independently, so packing a matrix
  /// in pieces gives the same bytes as packing it whole.
  void pack(const float* x, Index r0, Index m) {
    using LhsMapper = Eigen::internal::const_blas_data_mapper<float, Index, Eigen::RowMajor>;
    using RhsMapper = Eigen::internal::const_blas_data_mapper<float, Index, Eigen::ColMajor>;
// The packet type (__m512 and friends) carries alignment attributes that GCC reports as
// ignored when it is a template argument; Eigen itself uses it the same way.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif
    Eigen::internal::gemm_pack_lhs<float, Index, LhsMapper, GebpTraits::mr, GebpTraits::LhsProgress,
                                   GebpTraits::LhsPacket4Packing, Eigen::RowMajor>
        pack_lhs;
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
    Eigen::internal::gemm_pack_rhs<float, Index, RhsMapper, GebpTraits::nr, Eigen::ColMajor> pack_rhs;
    for (Index k0 = 0; k0 < dim_; k0 += kc_) {
      const Index s = k0 / kc_, depth = slab_depth(s);
      // The left operand is X itself (row i, depth k); the right operand is X^T, read as a
      // column-major matrix whose column j is row j of X.
      if (!lhs_.empty()) pack_lhs(lhs_.data() + offset(s) + static_cast<std::size_t>(r0 * depth), LhsMapper(x + k0, dim_), depth, m);
      if (!rhs_.empty()) pack_rhs(rhs_.data() + offset(s) + static_cast<std::size_t>(r0 * depth), RhsMapper(x + k0, dim_), depth, m);
    }
  }

  Index rows() const { return rows_; }
  Index dim() const { return dim_; }
  Index num_slabs() const { return (dim_ + kc_ - 1) / kc_; }
  Index slab_depth(Index s) const { return std::min(kc_, dim_ - s * kc_); }
  std::size_t offset(Index s) const {
    return static_cast<std::size_t>(rows_) * static_cast<std::size_t>(s * kc_);
  }
  const float* lhs(Index s, Index row0) const {
    return lhs_.data() + offset(s) + static_cast<std::size_t>(row0 * slab_depth(s));
  }
  const float* rhs(Index s, Index row0) const {
    return rhs_.data() + offset(s) + static_cast<std::size_t>(row0 * slab_depth(s));
  }
  std::size_t bytes() const { return (lhs_.size() + rhs_.size()) * sizeof(float); }

 private:
  using Buffer = std::vector<float, Eigen::aligned_allocator<float>>;
  Index rows_ = 0, dim_ = 0, kc_ = 1;
  Buffer lhs_, rhs_;
};

/// C[a + b * ldc] = dot(row a0 + a of `a`, row b0 + b of `b`) for a < m, b < n, where m is a
/// multiple of kRowAlign, n a multiple of GebpTraits::nr, and a0, b0 multiples of kRowAlign.
/// `a` must be packed as left operand and `b` as right operand, with the same slab depth.
inline void tile_product(const PackedRows& a, Index a0, Index m, const PackedRows& b, Index b0,
                         Index n, float* c, Index ldc) {
  using ResMapper =
      Eigen::internal::blas_data_mapper<float, Index, Eigen::ColMajor, Eigen::Unaligned, 1>;
  Eigen::internal::gebp_kernel<float, float, Index, ResMapper, GebpTraits::mr, GebpTraits::nr,
                               false, false>
      gebp;
  for (Index j = 0; j < n; ++j) std::fill_n(c + j * ldc, m, 0.0f);
  const ResMapper res(c, ldc);
  for (Index s = 0; s < a.num_slabs(); ++s)
    gebp(res, a.lhs(s, a0), b.rhs(s, b0), m, a.slab_depth(s), n, 1.0f);
}

}  // namespace nc::detail::knn
