// eigen_trainer: NC-Init and perturbation injection in a hand-written Eigen training loop, no
// deep-learning framework.
//
// Frozen features: Omniglot pixels through a fixed random ReLU layer (784 -> 512). Trained: a
// linear embedding A [512, D] and the class proxies P [C, D], with the analytic gradients of
// nc::proxy_anchor_loss (or nc::norm_softmax_loss) chained through the linear layer by hand:
//
//   X = F A                      embeddings of a batch [B, D] (the loss normalizes them)
//   r = loss(X, y, P + noise)    r.grad_embeddings = dL/dX [B, D], r.grad_weights = dL/dP [C, D]
//   dL/dA = F^T dL/dX            [512, D]
//
// Train on alphabets {0, 2, 4, 6}, evaluate Recall@1 on the unseen alphabets {1, 3, 5, 7}
// before and after, for Kaiming-normal proxies, NC-Init and NC-Init + PI. Runs in seconds.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <nc/io/idx.hpp>
#include <nc/metrics/retrieval.hpp>
#include <nc/nc.hpp>

namespace {

struct Split {
  nc::MatrixF features;  // [N, F] frozen features
  std::vector<int> labels;
  int num_classes = 0;
};

struct Options {
  std::string data_dir = NCML_DATA_DIR;
  bool norm_softmax = false;
  double sigma = 1e-2;
  int epochs = 5;
  int batch = 64;
  double lr = 1e-3;       // embedding
  double proxy_lr = 1e-2;
  nc::Index dim = 64;
  uint64_t seed = 1;
};

/// The images of the given alphabets through the fixed random layer relu(x R), labels renumbered.
Split load_split(const nc::IdxArray& img, const nc::IdxArray& lab, const nc::IdxArray& alp,
                 const std::set<int>& alphabets, const nc::MatrixF& projection) {
  std::vector<int64_t> rows;
  std::map<int, int> relabel;
  for (int64_t i = 0; i < img.items(); ++i)
    if (alphabets.count(alp.data[i])) {
      rows.push_back(i);
      relabel.emplace(lab.data[i], 0);
    }
  int next = 0;
  for (auto& kv : relabel) kv.second = next++;
  nc::MatrixF pixels(static_cast<nc::Index>(rows.size()), img.item_size());
  Split s;
  for (std::size_t r = 0; r < rows.size(); ++r) {
    for (nc::Index j = 0; j < pixels.cols(); ++j) pixels(r, j) = img.data[rows[r] * img.item_size() + j] / 255.0f;
    s.labels.push_back(relabel[lab.data[rows[r]]]);
  }
  s.features = (pixels * projection).cwiseMax(0.0f);
  s.num_classes = next;
  return s;
}

/// Adam (Kingma & Ba) on one matrix.
struct Adam {
  double lr, b1 = 0.9, b2 = 0.999, eps = 1e-8;
  nc::MatrixF m, v;
  int64_t t = 0;
  void step(nc::MatrixF& w, const nc::MatrixF& g) {
    if (m.size() == 0) m = v = nc::MatrixF::Zero(w.rows(), w.cols());
    ++t;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g.cwiseProduct(g);
    const float c1 = float(1 - std::pow(b1, t)), c2 = float(1 - std::pow(b2, t));
    w.array() -= float(lr) * (m.array() / c1) / ((v.array() / c2).sqrt() + float(eps));
  }
};

double recall_at_1(const Split& s, const nc::MatrixF& a) {
  const nc::MatrixF e = s.features * a;
  return nc::evaluate_retrieval(e, s.labels, nc::RetrievalOptions{{1}}).recall_at_k[0];
}

struct ArmResult {
  double r1_before, r1_after, drift_before, drift_after, loss_first, loss_last;
};

ArmResult train_arm(const Split& train, const Split& test, bool nc_init, double sigma, const Options& o) {
  const nc::Index F = train.features.cols(), C = train.num_classes;
  nc::MatrixF a(F, o.dim);  // the same initial embedding for both arms
  for (nc::Index i = 0; i < F; ++i)
    for (nc::Index j = 0; j < o.dim; ++j) a(i, j) = float(nc::gaussian(o.seed, 0, uint64_t(i), uint64_t(j)) / std::sqrt(double(F)));

  const nc::MatrixF e0 = train.features * a;  // the embeddings the proxies live in
  nc::MatrixF p = nc_init ? nc::init_head(e0, train.labels)  // Algorithm 1
                          : nc::init_head(C, o.dim, {nc::HeadInit::kaiming_normal, 1.0, o.seed});
  nc::DriftTracker drift(nc::nc_directions(e0, train.labels));
  drift.update(p);

  ArmResult res{recall_at_1(test, a), 0, drift.mean_squared_distance(), 0, 0, 0};
  const nc::Perturbation pert({sigma, nc::Schedule::constant, 0, o.seed});
  Adam opt_a{o.lr}, opt_p{o.proxy_lr};
  std::mt19937_64 rng(o.seed);
  std::vector<int> order(train.labels.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = int(i);
  int64_t step = 0;
  for (int epoch = 0; epoch < o.epochs; ++epoch) {
    for (std::size_t i = order.size() - 1; i > 0; --i) std::swap(order[i], order[rng() % (i + 1)]);
    double loss_sum = 0;
    int batches = 0;
    for (std::size_t b = 0; b < order.size(); b += o.batch) {
      const std::size_t n = std::min<std::size_t>(o.batch, order.size() - b);
      nc::MatrixF fb(n, F);
      std::vector<int> yb(n);
      for (std::size_t k = 0; k < n; ++k) {
        fb.row(k) = train.features.row(order[b + k]);
        yb[k] = train.labels[order[b + k]];
      }
      const nc::MatrixF x = fb * a;
      nc::LossResult r;
      {
        auto guard = pert.perturb(p, step);  // Algorithm 2: loss and gradient at the perturbed proxies
        r = o.norm_softmax ? nc::norm_softmax_loss(x, yb, p) : nc::proxy_anchor_loss(x, yb, p);
      }                                      // p holds the clean proxies again
      opt_p.step(p, r.grad_weights);         // the clean proxies take the step
      opt_a.step(a, fb.transpose() * r.grad_embeddings);
      loss_sum += r.loss;
      ++batches;
      ++step;
    }
    const double mean_loss = loss_sum / batches;
    if (epoch == 0) res.loss_first = mean_loss;
    res.loss_last = mean_loss;
  }
  drift.update(p);
  res.drift_after = drift.mean_squared_distance();
  res.r1_after = recall_at_1(test, a);
  return res;
}

[[noreturn]] void usage(int code) {
  std::fprintf(code ? stderr : stdout,
               "usage: eigen_trainer [--data DIR] [--loss proxy_anchor|norm_softmax] [--sigma S] [--epochs N]\n"
               "                     [--seed N]\n");
  std::exit(code);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") usage(0);
    if (i + 1 >= argc) usage(2);
    const std::string v = argv[++i];
    if (arg == "--data") o.data_dir = v;
    else if (arg == "--loss" && (v == "proxy_anchor" || v == "norm_softmax")) o.norm_softmax = v == "norm_softmax";
    else if (arg == "--sigma") o.sigma = std::atof(v.c_str());
    else if (arg == "--epochs") o.epochs = std::atoi(v.c_str());
    else if (arg == "--seed") o.seed = std::strtoull(v.c_str(), nullptr, 10);
    else usage(2);
  }
  if (o.norm_softmax) o.proxy_lr = o.lr;  // Norm-Softmax: one learning rate for the classifier
  Eigen::setNbThreads(1);  // small products: threads would only wait on each other
  try {
    const nc::IdxArray img = nc::read_idx(o.data_dir + "/omniglot-images28-idx3-ubyte.gz");
    const nc::IdxArray lab = nc::read_idx(o.data_dir + "/omniglot-labels-idx1-ubyte.gz");
    const nc::IdxArray alp = nc::read_idx(o.data_dir + "/omniglot-alphabets-idx1-ubyte.gz");
    NC_EXPECTS(img.item_size() == 784 && lab.items() == img.items() && alp.items() == img.items(),
               o.data_dir << ": Omniglot images, labels and alphabets disagree in shape");

    nc::MatrixF projection(784, 512);  // the fixed random layer (frozen "backbone")
    for (nc::Index i = 0; i < projection.rows(); ++i)
      for (nc::Index j = 0; j < projection.cols(); ++j) projection(i, j) = float(nc::gaussian(7, 1, uint64_t(i), uint64_t(j)) / 28.0);
    const Split train = load_split(img, lab, alp, {0, 2, 4, 6}, projection);
    const Split test = load_split(img, lab, alp, {1, 3, 5, 7}, projection);
    std::printf("eigen_trainer: %s, %d epochs; train %zu images / %d classes, test %zu / %d\n",
                o.norm_softmax ? "Norm-Softmax" : "Proxy-Anchor", o.epochs, train.labels.size(), train.num_classes,
                test.labels.size(), test.num_classes);

    const ArmResult base = train_arm(train, test, /*nc_init=*/false, /*sigma=*/0, o);
    const ArmResult init = train_arm(train, test, /*nc_init=*/true, /*sigma=*/0, o);
    const ArmResult ours = train_arm(train, test, /*nc_init=*/true, o.sigma, o);
    for (const auto& [name, r] : {std::pair<const char*, ArmResult>{"Kaiming-normal proxies", base},
                                  {"NC-Init", init},
                                  {"NC-Init + PI", ours}})
      std::printf("  %-24s R@1 %5.1f%% -> %5.1f%%   drift %.3f -> %.3f   loss %.3f -> %.3f\n", name,
                  100 * r.r1_before, 100 * r.r1_after, r.drift_before, r.drift_after, r.loss_first, r.loss_last);
    if (!(ours.r1_after > ours.r1_before && init.r1_after > init.r1_before && base.r1_after > base.r1_before)) {
      std::fprintf(stderr, "eigen_trainer: training did not improve Recall@1\n");
      return 1;
    }
    return 0;
  } catch (const nc::error& e) {  // a missing or corrupt data file, named in the message
    std::fprintf(stderr, "eigen_trainer: %s\n", e.what());
    return 2;
  }
}
