// finetune_omniglot: the bundled images as torch tensors, the zero-shot alphabet split and
// the long-tailed subsample.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <torch/torch.h>

#include <nc/core/error.hpp>
#include <nc/io/idx.hpp>

namespace demo {

/// Images [N, 1, 28, 28] (float, normalized with the MNIST mean and deviation, the
/// "pretrained model's" input statistics, for both data sets) and labels in [0, C).
struct ImageSet {
  torch::Tensor x;
  std::vector<int64_t> y;
  int64_t num_classes = 0;
  int64_t size() const { return static_cast<int64_t>(y.size()); }
};

constexpr double kPixelMean = 0.1307, kPixelStd = 0.3081;

/// Reads an IDX file and checks its shape; every problem is an nc::error naming the file.
inline nc::IdxArray read_checked(const std::string& path, std::size_t rank, int64_t item_size) {
  nc::IdxArray a = nc::read_idx(path);
  if (a.shape.size() != rank || a.item_size() != item_size || a.items() == 0)
    throw nc::error(path + ": unexpected IDX shape (rank " + std::to_string(a.shape.size()) + ", " +
                    std::to_string(a.item_size()) + " values per item; expected rank " +
                    std::to_string(rank) + ", " + std::to_string(item_size) + ")");
  return a;
}

inline torch::Tensor to_image_tensor(const nc::IdxArray& a) {
  torch::Tensor bytes = torch::from_blob(const_cast<uint8_t*>(a.data.data()), {a.items(), 1, 28, 28}, torch::kUInt8);
  return ((bytes.to(torch::kFloat32) / 255.0 - kPixelMean) / kPixelStd).contiguous();
}

inline void check_same_count(const nc::IdxArray& a, const nc::IdxArray& b, const std::string& pa,
                             const std::string& pb) {
  if (a.items() != b.items())
    throw nc::error(pb + ": " + std::to_string(b.items()) + " items, but " + pa + " has " +
                    std::to_string(a.items()));
}

/// 64-bit FNV-1a of the bytes (names the pretraining data in the backbone cache key).
inline uint64_t fnv1a(const std::vector<uint8_t>& bytes, uint64_t h = 1469598103934665603ull) {
  for (uint8_t b : bytes) h = (h ^ b) * 1099511628211ull;
  return h;
}

/// A uniformly random permutation of [0, n) from a seed (Fisher-Yates on mt19937_64; the
/// same on every platform, unlike std::shuffle).
inline std::vector<int64_t> permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> p(static_cast<std::size_t>(n));
  std::iota(p.begin(), p.end(), int64_t(0));
  std::mt19937_64 g(seed);
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[g() % uint64_t(i + 1)]);
  return p;
}

struct Mnist {
  ImageSet train, heldout;  // the bundled 10k digits (ordered by digit): a fixed random 9000 / 1000 split
  uint64_t checksum = 0;
};

inline Mnist load_mnist(const std::string& dir) {
  const std::string pi = dir + "/mnist-images-idx3-ubyte.gz", pl = dir + "/mnist-labels-idx1-ubyte.gz";
  const nc::IdxArray img = read_checked(pi, 3, 784), lab = read_checked(pl, 1, 1);
  check_same_count(img, lab, pi, pl);
  for (uint8_t v : lab.data)
    if (v > 9) throw nc::error(pl + ": digit label " + std::to_string(v) + " outside 0-9");
  const torch::Tensor x = to_image_tensor(img);
  const int64_t n = img.items(), n_train = n * 9 / 10;
  const std::vector<int64_t> order = permutation(n, /*seed=*/20260101);
  Mnist m;
  for (int64_t i = 0; i < n; ++i) (i < n_train ? m.train.y : m.heldout.y).push_back(lab.data[order[i]]);
  const torch::Tensor rows = torch::tensor(order, torch::kInt64);
  m.train.x = x.index_select(0, rows.slice(0, 0, n_train)).contiguous();
  m.heldout.x = x.index_select(0, rows.slice(0, n_train, n)).contiguous();
  m.train.num_classes = m.heldout.num_classes = 10;
  m.checksum = fnv1a(lab.data, fnv1a(img.data));
  return m;
}

/// Omniglot characters with their alphabet.
struct Omniglot {
  torch::Tensor x;              // [4840, 1, 28, 28]
  std::vector<int64_t> label;   // character 0-241
  std::vector<int64_t> alphabet;
};

inline Omniglot load_omniglot(const std::string& dir) {
  const std::string pi = dir + "/omniglot-images28-idx3-ubyte.gz", pl = dir + "/omniglot-labels-idx1-ubyte.gz",
                    pa = dir + "/omniglot-alphabets-idx1-ubyte.gz";
  const nc::IdxArray img = read_checked(pi, 3, 784), lab = read_checked(pl, 1, 1), alp = read_checked(pa, 1, 1);
  check_same_count(img, lab, pi, pl);
  check_same_count(img, alp, pi, pa);
  Omniglot o;
  o.x = to_image_tensor(img);
  o.label.assign(lab.data.begin(), lab.data.end());
  o.alphabet.assign(alp.data.begin(), alp.data.end());
  return o;
}

/// The images of the given alphabets, labels renumbered 0.. in the order of the characters.
inline ImageSet select_alphabets(const Omniglot& o, const std::set<int64_t>& alphabets) {
  std::vector<int64_t> rows;
  std::map<int64_t, int64_t> relabel;
  for (std::size_t i = 0; i < o.label.size(); ++i)
    if (alphabets.count(o.alphabet[i])) {
      rows.push_back(static_cast<int64_t>(i));
      relabel.emplace(o.label[i], 0);
    }
  if (rows.empty()) throw nc::error("no Omniglot image belongs to the requested alphabets");
  int64_t next = 0;
  for (auto& kv : relabel) kv.second = next++;
  ImageSet s;
  s.x = o.x.index_select(0, torch::tensor(rows, torch::kInt64)).contiguous();
  for (int64_t r : rows) s.y.push_back(relabel[o.label[r]]);
  s.num_classes = next;
  return s;
}

/// Long-tailed subsample: the classes, in a seeded random order, keep
/// round(max_per_class * (r + 1)^-a) images for rank r (the first ones of the class), with a
/// chosen so that the last class keeps min_per_class: a Zipf-like profile, 20 down to 2.
inline ImageSet long_tailed(const ImageSet& s, int64_t max_per_class, int64_t min_per_class, uint64_t seed) {
  const int64_t C = s.num_classes;
  const double a = C > 1 ? std::log(double(max_per_class) / double(min_per_class)) / std::log(double(C)) : 0.0;
  const std::vector<int64_t> order = permutation(C, seed);
  std::vector<int64_t> keep(static_cast<std::size_t>(C));
  for (int64_t r = 0; r < C; ++r)
    keep[order[r]] = std::max<int64_t>(min_per_class, std::llround(double(max_per_class) * std::pow(double(r + 1), -a)));
  std::vector<int64_t> rows, seen(static_cast<std::size_t>(C), 0);
  ImageSet out;
  for (int64_t i = 0; i < s.size(); ++i)
    if (seen[s.y[i]]++ < keep[s.y[i]]) {
      rows.push_back(i);
      out.y.push_back(s.y[i]);
    }
  out.x = s.x.index_select(0, torch::tensor(rows, torch::kInt64)).contiguous();
  out.num_classes = C;
  return out;
}

}  // namespace demo
