// ncml quickstart: NC-Init a head from embeddings, perturb it for a step, track its drift.
#include <cstdio>
#include <vector>

#include <nc/nc.hpp>

int main() {
  // Toy "pretrained embeddings": 3 classes in 8 dimensions, 50 samples each.
  const nc::Index C = 3, D = 8, per_class = 50;
  nc::MatrixF features(C * per_class, D);
  std::vector<int> labels(C * per_class);
  for (nc::Index i = 0; i < features.rows(); ++i) {
    const int c = static_cast<int>(i % C);
    labels[i] = c;
    for (nc::Index j = 0; j < D; ++j)
      features(i, j) = (j == c ? 3.0f : 0.0f) + 0.3f * float(nc::gaussian(42, 0, uint64_t(i), uint64_t(j)));
  }

  nc::MatrixF W = nc::init_head(features, labels);  // [C, D], unit rows along each class's PC1
  nc::DriftTracker drift(W);
  drift.update(W);
  std::printf("NC-Init head: %ld x %ld, drift %.3f\n", long(W.rows()), long(W.cols()),
              drift.mean_squared_distance());

  nc::MatrixF random = nc::init_head(C, D, {nc::HeadInit::kaiming_normal, 1.0, /*seed=*/7});
  nc::DriftTracker random_drift(W);
  random_drift.update(random);
  std::printf("Kaiming-normal head drift from the NC directions: %.3f\n",
              random_drift.mean_squared_distance());

  nc::Perturbation pert({/*sigma=*/1e-2});
  {
    auto guard = pert.perturb(W, /*step=*/0);
    drift.update(W);
    std::printf("perturbed head drift %.5f\n", drift.mean_squared_distance());
  }
  drift.update(W);
  std::printf("restored head drift %.3f\n", drift.mean_squared_distance());

  nc::ClassStats stats(C, D);
  stats.add(features, labels);
  std::printf("samples %ld, trace of Sigma_W %.4f, trace of Sigma_B %.4f\n", long(stats.total_count()),
              stats.within_covariance().trace(), stats.between_covariance().trace());
  return 0;
}
