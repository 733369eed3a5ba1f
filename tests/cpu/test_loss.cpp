#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <nc/loss.hpp>
#include <nc/perturb.hpp>

#include "support.hpp"

// Each test file is its own namespace, so the files also build as one program
// (unity build, NCML_UNITY_BUILD).
namespace test_loss {

using namespace nct;

namespace {

// Rows of N(0, I) with norms spread over [0.3, 3], so the gradient through the normalization
// is exercised away from unit length.
MatrixD random_rows(Index n, Index d, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  std::uniform_real_distribution<double> scale(0.3, 3.0);
  MatrixD m(n, d);
  for (Index i = 0; i < n; ++i) {
    for (Index j = 0; j < d; ++j) m(i, j) = g(rng);
    m.row(i) *= scale(rng) / m.row(i).norm();
  }
  return m;
}

// Cosine of two rows, by loops.
double cosine(const MatrixD& a, Index i, const MatrixD& b, Index c) {
  double dot = 0, na = 0, nb = 0;
  for (Index j = 0; j < a.cols(); ++j) {
    dot += a(i, j) * b(c, j);
    na += a(i, j) * a(i, j);
    nb += b(c, j) * b(c, j);
  }
  return dot / std::sqrt(na * nb);
}

// Direct float64 Norm-Softmax: no shifts, no library code.
double naive_norm_softmax(const MatrixD& x, const std::vector<int>& y, const MatrixD& w, double tau) {
  double loss = 0;
  for (Index i = 0; i < x.rows(); ++i) {
    double sum = 0;
    for (Index c = 0; c < w.rows(); ++c) sum += std::exp(cosine(x, i, w, c) / tau);
    loss += -std::log(std::exp(cosine(x, i, w, y[i]) / tau) / sum);
  }
  return loss / double(x.rows());
}

// Direct float64 Proxy-Anchor, transcribed from Kim et al. 2020 and their reference code:
// positive term over proxies with a positive in the batch, negative term divided by C.
double naive_proxy_anchor(const MatrixD& x, const std::vector<int>& y, const MatrixD& p, double alpha,
                          double delta) {
  const Index C = p.rows();
  double pos = 0, neg = 0;
  int num_pos = 0;
  for (Index c = 0; c < C; ++c) {
    double psum = 0, nsum = 0;
    bool any = false;
    for (Index i = 0; i < x.rows(); ++i) {
      const double s = cosine(x, i, p, c);
      if (y[i] == c) {
        any = true;
        psum += std::exp(-alpha * (s - delta));
      } else {
        nsum += std::exp(alpha * (s + delta));
      }
    }
    if (any) {
      pos += std::log(1 + psum);
      ++num_pos;
    }
    neg += std::log(1 + nsum);
  }
  return pos / num_pos + neg / double(C);
}

// Central differences of f over every entry of m.
template <class F>
MatrixD numeric_gradient(F f, MatrixD m, double h = 1e-6) {
  MatrixD g(m.rows(), m.cols());
  for (Index r = 0; r < m.rows(); ++r) {
    for (Index c = 0; c < m.cols(); ++c) {
      const double v = m(r, c);
      m(r, c) = v + h;
      const double fp = f(m);
      m(r, c) = v - h;
      const double fm = f(m);
      m(r, c) = v;
      g(r, c) = (fp - fm) / (2 * h);
    }
  }
  return g;
}

struct Batch {
  MatrixD x, w;
  std::vector<int> y;
  const char* name;
};

// One batch with every class present, one where classes 3 and 5 have no sample.
std::vector<Batch> batches() {
  const Index B = 14, C = 6, D = 9;
  Batch all{random_rows(B, D, 11), random_rows(C, D, 12), {}, "every class present"};
  for (Index i = 0; i < B; ++i) all.y.push_back(int(i % C));
  Batch gaps{random_rows(B, D, 21), random_rows(C, D, 22), {}, "classes 3 and 5 absent"};
  const int present[] = {0, 1, 2, 4};
  for (Index i = 0; i < B; ++i) gaps.y.push_back(present[(i * 7) % 4]);
  return {all, gaps};
}

}  // namespace

TEST_CASE("norm_softmax_loss: value matches a direct float64 loop, gradients match central differences",
          "[loss]") {
  for (const Batch& b : batches()) {
    for (double tau : {0.05, 0.3, 2.0}) {
      INFO(b.name << ", tau = " << tau);
      const nc::LossResultD r = nc::norm_softmax_loss(b.x, b.y, b.w, tau);
      CHECK(rel_err(r.loss, naive_norm_softmax(b.x, b.y, b.w, tau)) < 1e-12);
      REQUIRE(r.grad_embeddings.rows() == b.x.rows());
      REQUIRE(r.grad_embeddings.cols() == b.x.cols());
      REQUIRE(r.grad_weights.rows() == b.w.rows());
      REQUIRE(r.grad_weights.cols() == b.w.cols());
      const MatrixD gx = numeric_gradient([&](const MatrixD& x) { return naive_norm_softmax(x, b.y, b.w, tau); }, b.x);
      const MatrixD gw = numeric_gradient([&](const MatrixD& w) { return naive_norm_softmax(b.x, b.y, w, tau); }, b.w);
      CHECK(rel_err(r.grad_embeddings, gx) < 1e-6);
      CHECK(rel_err(r.grad_weights, gw) < 1e-6);
    }
  }
}

TEST_CASE("proxy_anchor_loss: value matches a direct float64 loop, gradients match central differences",
          "[loss]") {
  struct Params {
    double alpha, delta;
  };
  for (const Batch& b : batches()) {
    for (Params p : {Params{32, 0.1}, Params{4, 0.3}, Params{10, -0.2}}) {
      INFO(b.name << ", alpha = " << p.alpha << ", delta = " << p.delta);
      const nc::LossResultD r = nc::proxy_anchor_loss(b.x, b.y, b.w, p.alpha, p.delta);
      CHECK(rel_err(r.loss, naive_proxy_anchor(b.x, b.y, b.w, p.alpha, p.delta)) < 1e-12);
      REQUIRE(r.grad_embeddings.rows() == b.x.rows());
      REQUIRE(r.grad_weights.rows() == b.w.rows());
      const MatrixD gx = numeric_gradient(
          [&](const MatrixD& x) { return naive_proxy_anchor(x, b.y, b.w, p.alpha, p.delta); }, b.x);
      const MatrixD gw = numeric_gradient(
          [&](const MatrixD& w) { return naive_proxy_anchor(b.x, b.y, w, p.alpha, p.delta); }, b.w);
      CHECK(rel_err(r.grad_embeddings, gx) < 1e-6);
      CHECK(rel_err(r.grad_weights, gw) < 1e-6);
    }
  }
}

TEST_CASE("proxy_anchor_loss: a proxy with no positive gets only the negative pull", "[loss]") {
  const Batch b = batches()[1];
  const double alpha = 32, delta = 0.1;
  const nc::LossResultD r = nc::proxy_anchor_loss(b.x, b.y, b.w, alpha, delta);
  // Proxy 3 has no positive: its gradient is the negative term's alone, (1/C) alpha sum_i
  // softmax-like weights times d s(x_i, p)/dp. Check it against the negative term by itself.
  const auto neg_only = [&](const MatrixD& w) {
    double sum = 0;
    for (Index i = 0; i < b.x.rows(); ++i) sum += std::exp(alpha * (cosine(b.x, i, w, 3) + delta));
    return std::log(1 + sum) / double(w.rows());
  };
  const MatrixD g = numeric_gradient(neg_only, b.w);
  CHECK(rel_err(MatrixD(r.grad_weights.row(3)), MatrixD(g.row(3))) < 1e-6);
}

TEST_CASE("losses: rescaling a row leaves the loss and scales its gradient by the inverse", "[loss]") {
  const Batch b = batches()[0];
  MatrixD x2 = b.x, w2 = b.w;
  x2.row(2) *= 7.5;
  w2.row(4) *= 0.125;
  for (int which = 0; which < 2; ++which) {
    const auto run = [&](const MatrixD& x, const MatrixD& w) {
      return which == 0 ? nc::norm_softmax_loss(x, b.y, w) : nc::proxy_anchor_loss(x, b.y, w);
    };
    INFO((which == 0 ? "norm_softmax" : "proxy_anchor"));
    const nc::LossResultD a = run(b.x, b.w), s = run(x2, w2);
    CHECK(rel_err(s.loss, a.loss) < 1e-13);
    CHECK(rel_err(MatrixD(s.grad_embeddings.row(2) * 7.5), MatrixD(a.grad_embeddings.row(2))) < 1e-12);
    CHECK(rel_err(MatrixD(s.grad_weights.row(4) * 0.125), MatrixD(a.grad_weights.row(4))) < 1e-12);
    // The gradient of a scale-invariant loss is orthogonal to the row.
    CHECK(std::abs(a.grad_embeddings.row(2).dot(b.x.row(2))) < 1e-12 * a.grad_embeddings.row(2).norm() * b.x.row(2).norm() + 1e-15);
  }
}

TEST_CASE("losses: float inputs agree with double inputs", "[loss]") {
  const Batch b = batches()[1];
  const MatrixF xf = b.x.cast<float>(), wf = b.w.cast<float>();
  const MatrixD xd = xf.cast<double>(), wd = wf.cast<double>();
  nc::VectorI64 y64(Index(b.y.size()));
  for (Index i = 0; i < y64.size(); ++i) y64[i] = b.y[i];

  const nc::LossResult f1 = nc::norm_softmax_loss(xf, y64, wf);
  const nc::LossResultD d1 = nc::norm_softmax_loss(xd, b.y, wd);
  CHECK(rel_err(f1.loss, d1.loss) < 1e-5);
  CHECK(rel_err(f1.grad_embeddings.cast<double>(), d1.grad_embeddings) < 1e-5);
  CHECK(rel_err(f1.grad_weights.cast<double>(), d1.grad_weights) < 1e-5);

  const nc::LossResult f2 = nc::proxy_anchor_loss(xf, y64, wf);
  const nc::LossResultD d2 = nc::proxy_anchor_loss(xd, b.y, wd);
  CHECK(rel_err(f2.loss, d2.loss) < 1e-5);
  CHECK(rel_err(f2.grad_embeddings.cast<double>(), d2.grad_embeddings) < 1e-5);
  CHECK(rel_err(f2.grad_weights.cast<double>(), d2.grad_weights) < 1e-5);

  // Expressions and blocks are accepted too.
  const nc::LossResult f3 = nc::norm_softmax_loss(xf.topRows(5), std::vector<int>(b.y.begin(), b.y.begin() + 5),
                                                  2.0f * wf);
  CHECK(std::isfinite(f3.loss));
}

TEST_CASE("losses: extreme alpha and tau stay finite and exact", "[loss]") {
  const Batch b = batches()[0];
  // tau = 1e-4 puts logits near 1e4 and alpha = 2000 exponents near 2e3: exp overflows
  // without the shifts. The loss then reduces to its hinge-like limit, checked loosely.
  const nc::LossResultD ns = nc::norm_softmax_loss(b.x, b.y, b.w, 1e-4);
  CHECK(std::isfinite(ns.loss));
  CHECK(ns.grad_embeddings.allFinite());
  CHECK(ns.grad_weights.allFinite());
  double hinge = 0;
  for (Index i = 0; i < b.x.rows(); ++i) {
    double best = -2;
    for (Index c = 0; c < b.w.rows(); ++c) best = std::max(best, cosine(b.x, i, b.w, c));
    hinge += (best - cosine(b.x, i, b.w, b.y[i])) / 1e-4;
  }
  hinge /= double(b.x.rows());
  CHECK(ns.loss >= hinge - 1e-9);
  CHECK(ns.loss <= hinge + std::log(double(b.w.rows())) + 1e-9);

  const nc::LossResultD pa = nc::proxy_anchor_loss(b.x, b.y, b.w, 2000, 0.1);
  CHECK(std::isfinite(pa.loss));
  CHECK(pa.grad_embeddings.allFinite());
  CHECK(pa.grad_weights.allFinite());
}

TEST_CASE("losses under Perturbation: the gradient is taken at W + noise and W is restored bitwise",
          "[loss][perturb]") {
  const Batch b = batches()[1];
  const MatrixF x = b.x.cast<float>();
  MatrixF w = b.w.cast<float>();
  const MatrixF clean = w;
  nc::PerturbOptions o;
  o.sigma = 1e-2;
  o.seed = 5;
  const nc::Perturbation pert(o);
  const int64_t step = 17;
  const MatrixF shifted = clean + pert.noise<float>(w.rows(), w.cols(), step);

  for (int which = 0; which < 2; ++which) {
    INFO((which == 0 ? "norm_softmax" : "proxy_anchor"));
    const auto run = [&](const MatrixF& weights) {
      return which == 0 ? nc::norm_softmax_loss(x, b.y, weights) : nc::proxy_anchor_loss(x, b.y, weights);
    };
    nc::LossResult r;
    {
      auto guard = pert.perturb(w, step);
      r = run(w);
    }
    CHECK(std::memcmp(w.data(), clean.data(), sizeof(float) * std::size_t(w.size())) == 0);

    const nc::LossResult direct = run(shifted);
    CHECK(r.loss == Approx(direct.loss).epsilon(1e-12));
    CHECK(rel_err(r.grad_embeddings.cast<double>(), direct.grad_embeddings.cast<double>()) < 1e-12);
    CHECK(rel_err(r.grad_weights.cast<double>(), direct.grad_weights.cast<double>()) < 1e-12);
    // The noise matters: the clean point gives another gradient.
    CHECK(rel_err(run(clean).grad_weights.cast<double>(), direct.grad_weights.cast<double>()) > 1e-4);
  }
}

TEST_CASE("losses: gradient steps on the clean weights lower the loss", "[loss]") {
  const Batch b = batches()[0];
  const MatrixF x = b.x.cast<float>();
  MatrixF w = b.w.cast<float>();
  const double start = nc::proxy_anchor_loss(x, b.y, w).loss;
  for (int t = 0; t < 20; ++t) w -= 0.05f * nc::proxy_anchor_loss(x, b.y, w).grad_weights;
  CHECK(nc::proxy_anchor_loss(x, b.y, w).loss < start);

  MatrixF w2 = b.w.cast<float>();
  const double start2 = nc::norm_softmax_loss(x, b.y, w2).loss;
  for (int t = 0; t < 20; ++t) w2 -= 0.002f * nc::norm_softmax_loss(x, b.y, w2).grad_weights;
  CHECK(nc::norm_softmax_loss(x, b.y, w2).loss < start2);
}

TEST_CASE("losses: invalid input throws nc::error naming the problem", "[loss][errors]") {
  const Batch b = batches()[0];
  const MatrixD& x = b.x;
  const MatrixD& w = b.w;  // C = 6
  const std::vector<int>& y = b.y;

  std::vector<int> bad = y;
  bad[4] = 6;
  CHECK_THROWS_AS(nc::norm_softmax_loss(x, bad, w), nc::error);
  CHECK_THROWS_WITH(nc::norm_softmax_loss(x, bad, w), Catch::Contains("label 6 at row 4"));
  CHECK_THROWS_WITH(nc::proxy_anchor_loss(x, bad, w), Catch::Contains("label 6 at row 4"));
  bad[4] = -1;
  CHECK_THROWS_WITH(nc::proxy_anchor_loss(x, bad, w), Catch::Contains("negative label -1 at row 4"));
  const std::vector<int> shorter(y.begin(), y.end() - 1);
  CHECK_THROWS_WITH(nc::norm_softmax_loss(x, shorter, w), Catch::Contains("13 entries"));

  const MatrixD narrow = w.leftCols(8);
  CHECK_THROWS_AS(nc::norm_softmax_loss(x, y, narrow), nc::error);
  CHECK_THROWS_WITH(nc::norm_softmax_loss(x, y, narrow), Catch::Contains("dimension mismatch") && Catch::Contains("9") && Catch::Contains("8"));
  CHECK_THROWS_WITH(nc::proxy_anchor_loss(x, y, narrow), Catch::Contains("dimension mismatch"));

  MatrixD xn = x;
  xn(3, 2) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH(nc::norm_softmax_loss(xn, y, w), Catch::Contains("embeddings") && Catch::Contains("row 3"));
  MatrixD wi = w;
  wi(5, 0) = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(nc::norm_softmax_loss(x, y, wi), Catch::Contains("W has a non-finite value") && Catch::Contains("row 5"));
  CHECK_THROWS_WITH(nc::proxy_anchor_loss(x, y, wi), Catch::Contains("P has a non-finite value") && Catch::Contains("row 5"));

  MatrixD xz = x;
  xz.row(7).setZero();
  CHECK_THROWS_WITH(nc::proxy_anchor_loss(xz, y, w), Catch::Contains("embeddings has zero row(s) 7"));
  MatrixD wz = w;
  wz.row(1).setZero();
  wz.row(2).setZero();
  CHECK_THROWS_WITH(nc::norm_softmax_loss(x, y, wz), Catch::Contains("W has zero row(s) 1, 2"));

  CHECK_THROWS_WITH(nc::norm_softmax_loss(x, y, w, 0.0), Catch::Contains("tau") && Catch::Contains("0"));
  CHECK_THROWS_WITH(nc::norm_softmax_loss(x, y, w, -0.5), Catch::Contains("tau = -0.5"));
  CHECK_THROWS_AS(nc::norm_softmax_loss(x, y, w, std::numeric_limits<double>::quiet_NaN()), nc::error);
  CHECK_THROWS_WITH(nc::proxy_anchor_loss(x, y, w, 0.0), Catch::Contains("alpha = 0"));
  CHECK_THROWS_WITH(nc::proxy_anchor_loss(x, y, w, 32, std::numeric_limits<double>::infinity()),
                    Catch::Contains("delta = inf"));
  CHECK_THROWS_WITH(nc::norm_softmax_loss(MatrixD(0, 9), std::vector<int>{}, w), Catch::Contains("embeddings is empty"));
}

}  // namespace test_loss
