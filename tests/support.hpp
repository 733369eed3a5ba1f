// Shared helpers for the ncml tests: seeded data generators, float64 brute-force references
// that do not reuse library code paths, and loaders for the bundled real data.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <nc/core/types.hpp>
#include <nc/io/idx.hpp>

namespace nct {

using nc::Index;
using nc::MatrixD;
using nc::MatrixF;

/// Gaussian mixture with planted class structure: class c has a random mean of norm
/// `separation` and isotropic noise of standard deviation `noise`; labels cycle or follow
/// the given per-class counts.
inline MatrixD mixture(Index n, Index d, Index C, std::vector<int>& labels, uint64_t seed,
                       double separation = 4.0, double noise = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  MatrixD centers(C, d);
  for (Index c = 0; c < C; ++c) {
    for (Index j = 0; j < d; ++j) centers(c, j) = g(rng);
    centers.row(c) *= separation / centers.row(c).norm();
  }
  std::uniform_int_distribution<Index> pick(0, C - 1);
  labels.resize(n);
  MatrixD x(n, d);
  for (Index i = 0; i < n; ++i) {
    const Index c = i < C ? i : pick(rng);  // every class gets at least one sample when n >= C
    labels[i] = static_cast<int>(c);
    for (Index j = 0; j < d; ++j) x(i, j) = centers(c, j) + noise * g(rng);
  }
  return x;
}

/// Relative Frobenius error ||a - b|| / max(||b||, tiny).
template <class A, class B>
double rel_err(const A& a, const B& b) {
  const double den = std::max(double(b.norm()), 1e-300);
  return double((a - b).norm()) / den;
}

inline double rel_err(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-300); }

/// Omniglot 28x28 pixels as [4840, 784] doubles in [0, 1] with character labels (0-241),
/// from the bundled data.
struct RealData {
  MatrixD x;
  std::vector<int> labels;
  std::vector<int> groups;  // alphabet for Omniglot, empty for MNIST
};

inline RealData load_omniglot() {
  const std::string dir = NCML_DATA_DIR;
  const auto img = nc::read_idx(dir + "/omniglot-images28-idx3-ubyte.gz");
  const auto lab = nc::read_idx(dir + "/omniglot-labels-idx1-ubyte.gz");
  const auto alp = nc::read_idx(dir + "/omniglot-alphabets-idx1-ubyte.gz");
  RealData r;
  r.x.resize(img.items(), img.item_size());
  for (Index i = 0; i < r.x.size(); ++i) r.x.data()[i] = img.data[i] / 255.0;
  r.labels.assign(lab.data.begin(), lab.data.end());
  r.groups.assign(alp.data.begin(), alp.data.end());
  return r;
}

/// `n` MNIST test digits as [n, 784] doubles in [0, 1] with digit labels: a fixed random
/// subset (the bundled file is sorted by digit, so its first rows are all zeros), in file order.
inline RealData load_mnist(Index n = 10000) {
  const std::string dir = NCML_DATA_DIR;
  const auto img = nc::read_idx(dir + "/mnist-images-idx3-ubyte.gz");
  const auto lab = nc::read_idx(dir + "/mnist-labels-idx1-ubyte.gz");
  n = std::min<Index>(n, img.items());
  std::vector<Index> rows(static_cast<size_t>(img.items()));
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<Index>(i);
  std::mt19937_64 rng(20261128);
  for (size_t i = rows.size() - 1; i > 0; --i) {  // Fisher-Yates with a portable draw
    std::swap(rows[i], rows[static_cast<size_t>(rng() % (i + 1))]);
  }
  rows.resize(static_cast<size_t>(n));
  std::sort(rows.begin(), rows.end());
  RealData r;
  const Index d = img.item_size();
  r.x.resize(n, d);
  r.labels.resize(static_cast<size_t>(n));
  for (Index i = 0; i < n; ++i) {
    const Index src = rows[static_cast<size_t>(i)];
    for (Index j = 0; j < d; ++j) r.x(i, j) = img.data[static_cast<size_t>(src * d + j)] / 255.0;
    r.labels[static_cast<size_t>(i)] = lab.data[static_cast<size_t>(src)];
  }
  return r;
}

}  // namespace nct
