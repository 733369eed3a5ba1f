// finetune_omniglot: one training run (an arm, a seed, a data configuration) of the LibTorch
// trainer with ncml: NC-Init of the proxies, perturbation injection around each step's
// forward and backward pass, and per-epoch retrieval, NC1 and drift evaluation.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include <nc/directions.hpp>
#include <nc/drift.hpp>
#include <nc/head.hpp>
#include <nc/loss.hpp>
#include <nc/metrics/nc.hpp>
#include <nc/metrics/retrieval.hpp>
#include <nc/perturb.hpp>
#include <nc/stats.hpp>

#include "data.hpp"
#include "model.hpp"

namespace demo {

// Eigen views of contiguous float CPU tensors (no copy): ncml reads and writes torch memory.
inline Eigen::Map<nc::MatrixF> eigen_view(torch::Tensor& t) {
  TORCH_CHECK(t.dim() == 2 && t.is_contiguous() && t.scalar_type() == torch::kFloat32 && t.device().is_cpu(),
              "eigen_view needs a contiguous 2-d float CPU tensor");
  return {t.data_ptr<float>(), t.size(0), t.size(1)};
}
inline Eigen::Map<const nc::MatrixF> eigen_cview(const torch::Tensor& t) {
  TORCH_CHECK(t.dim() == 2 && t.is_contiguous() && t.scalar_type() == torch::kFloat32 && t.device().is_cpu(),
              "eigen_cview needs a contiguous 2-d float CPU tensor");
  return {t.data_ptr<float>(), t.size(0), t.size(1)};
}
inline torch::Tensor to_tensor(const nc::MatrixF& m) {
  return torch::from_blob(const_cast<float*>(m.data()), {m.rows(), m.cols()}, torch::kFloat32).clone();
}

enum class LossKind { proxy_anchor, norm_softmax };

struct LossOptions {
  LossKind kind = LossKind::proxy_anchor;
  double alpha = 32, delta = 0.1;  // Proxy-Anchor
  double tau = 0.05;               // Norm-Softmax
};

/// Proxy-Anchor (Kim et al. 2020) as in the authors' reference code (losses.py): `x` [B, D]
/// unit embeddings, `y` [B] labels, `proxies` [C, D] (normalized here).
inline torch::Tensor proxy_anchor(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& proxies,
                                  double alpha, double delta) {
  const int64_t C = proxies.size(0);
  const torch::Tensor cos =
      torch::mm(x, torch::nn::functional::normalize(proxies, torch::nn::functional::NormalizeFuncOptions().dim(1)).t());
  const torch::Tensor pos = torch::one_hot(y, C).to(torch::kFloat32), neg = 1 - pos;
  const torch::Tensor pos_sum = (torch::exp(-alpha * (cos - delta)) * pos).sum(0);
  const torch::Tensor neg_sum = (torch::exp(alpha * (cos + delta)) * neg).sum(0);
  const torch::Tensor with_pos = (pos.sum(0) > 0).to(torch::kFloat32).sum();
  return torch::log1p(pos_sum).sum() / with_pos + torch::log1p(neg_sum).sum() / double(C);
}

/// Norm-Softmax (Zhai & Wu 2019): cross-entropy over cosine logits / tau.
inline torch::Tensor norm_softmax(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& w, double tau) {
  const torch::Tensor cos =
      torch::mm(x, torch::nn::functional::normalize(w, torch::nn::functional::NormalizeFuncOptions().dim(1)).t());
  return torch::nn::functional::cross_entropy(cos / tau, y);
}

inline torch::Tensor metric_loss(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& proxies,
                                 const LossOptions& o) {
  return o.kind == LossKind::proxy_anchor ? proxy_anchor(x, y, proxies, o.alpha, o.delta)
                                          : norm_softmax(x, y, proxies, o.tau);
}

/// Largest differences between this file's torch loss (autograd) and ncml's analytic one
/// (nc::proxy_anchor_loss / nc::norm_softmax_loss) on one batch.
struct LossAgreement {
  double loss_diff = 0, grad_diff = 0, grad_scale = 0;
};
inline LossAgreement compare_with_ncml(const torch::Tensor& x, const std::vector<int64_t>& y, const torch::Tensor& proxies,
                                       const LossOptions& o) {
  torch::Tensor p = proxies.detach().clone().set_requires_grad(true);
  const torch::Tensor xd = x.detach().contiguous();
  const torch::Tensor loss = metric_loss(xd, torch::tensor(y, torch::kInt64), p, o);
  const torch::Tensor grad = torch::autograd::grad({loss}, {p})[0].contiguous();
  const nc::MatrixF xm = eigen_cview(xd), pm = eigen_cview(p.detach());
  const nc::LossResult r = o.kind == LossKind::proxy_anchor ? nc::proxy_anchor_loss(xm, y, pm, o.alpha, o.delta)
                                                            : nc::norm_softmax_loss(xm, y, pm, o.tau);
  LossAgreement a;
  a.loss_diff = std::abs(loss.item<double>() - r.loss);
  a.grad_diff = (eigen_cview(grad) - r.grad_weights).cwiseAbs().maxCoeff();
  a.grad_scale = r.grad_weights.cwiseAbs().maxCoeff();
  return a;
}

enum class Arm { baseline, nc_init, nc_init_pi, class_mean, centered_mean };

inline const char* to_string(Arm a) {
  switch (a) {
    case Arm::baseline: return "baseline";
    case Arm::nc_init: return "nc_init";
    case Arm::nc_init_pi: return "nc_init_pi";
    case Arm::class_mean: return "class_mean";
    case Arm::centered_mean: return "centered_mean";
  }
  return "?";
}

struct TrainOptions {
  int64_t dim = 64;
  int64_t batch = 64;
  int warmup_epochs = 2;
  int epochs = 8;            // total, warm-up included
  double lr = 3e-4;          // backbone and embedding
  double proxy_lr_mult = 100;
  double weight_decay = 1e-4;
  bool pi_after_warmup = false;
  LossOptions loss;
  int threads = 2;           // ncml evaluation threads
  bool train_metrics = true; // NC1 on the training embeddings and drift from their current NC directions
};

struct RunSpec {
  std::string config;  // balanced, longtail, sweep
  Arm arm = Arm::baseline;
  double sigma = 0;    // perturbation noise (nc_init_pi only)
  uint64_t seed = 0;
};

/// Metrics after `epoch` epochs (epoch 0: the initialization, before any step).
struct EpochLog {
  int epoch = 0;
  std::string phase;   // init, warmup, finetune
  int64_t steps = 0;   // update steps so far
  double loss = std::nan("");  // mean training loss of the epoch
  double recall[4] = {0, 0, 0, 0};  // R@1, 2, 4, 8 on the evaluation classes
  double map_at_r = 0;
  double nc1_train = std::nan(""), nc1_test = std::nan("");
  double drift = 0;     // paper's D: proxies vs the NC directions of the initial embeddings
  double drift_now = std::nan("");  // proxies vs the NC directions of this epoch's training embeddings
  double proxy_cos = 0;  // mean cosine between two different proxies (1: all collinear)
};

struct RunResult {
  std::vector<EpochLog> epochs;
  std::optional<LossAgreement> agreement;
  double seconds = 0;
};

/// Evaluates the model: retrieval and NC1 on `test`; NC1 and current NC directions on `train`.
inline void evaluate(Embedder& model, const ImageSet& train, const ImageSet& test, const torch::Tensor& proxies,
                     nc::DriftTracker& drift, const TrainOptions& o, EpochLog& log) {
  const torch::Tensor te = embed_all(model, test.x);
  nc::RetrievalOptions ro;
  ro.ks = {1, 2, 4, 8};
  ro.threads = o.threads;
  const nc::RetrievalReport rep = nc::evaluate_retrieval(eigen_cview(te), test.y, ro);
  for (int k = 0; k < 4; ++k) log.recall[k] = rep.recall_at_k[k];
  log.map_at_r = rep.map_at_r;
  nc::StatsOptions so;
  so.threads = o.threads;
  log.nc1_test = nc::nc1(nc::class_stats(eigen_cview(te), test.y, test.num_classes, so));

  const nc::MatrixF w = eigen_cview(proxies.detach());
  drift.update(w);
  log.drift = drift.mean_squared_distance();
  const nc::MatrixD unit = w.cast<double>().rowwise().normalized();
  const double C = double(unit.rows());
  log.proxy_cos = (unit.colwise().sum().squaredNorm() - C) / (C * (C - 1));
  if (o.train_metrics) {
    const torch::Tensor tr = embed_all(model, train.x);
    log.nc1_train = nc::nc1(nc::class_stats(eigen_cview(tr), train.y, train.num_classes, so));
    nc::DirectionOptions dopt;
    dopt.threads = o.threads;
    nc::DriftTracker now(nc::nc_directions(eigen_cview(tr), train.y, dopt));
    now.update(w);
    log.drift_now = now.mean_squared_distance();
  }
}

/// One run: proxies initialized for the arm, warm-up (backbone frozen except batch norm),
/// then full finetuning; perturbation injection for nc_init_pi during warm-up (and after it
/// with pi_after_warmup).
inline RunResult train_run(const Pretrained& pretrained, const ImageSet& train, const ImageSet& test, const RunSpec& spec,
                           const TrainOptions& o, bool check_loss) {
  const auto t0 = std::chrono::steady_clock::now();
  torch::manual_seed(spec.seed);  // the new embedding layer: the same for every arm of a seed
  Embedder model(pretrained.load(), o.dim);
  const int64_t C = train.num_classes;

  // The embeddings the proxies live in, before any step (the paper's E_c).
  const torch::Tensor e0 = embed_all(model, train.x);
  nc::DirectionOptions dopt;
  dopt.threads = o.threads;
  const nc::MatrixF directions = nc::nc_directions(eigen_cview(e0), train.y, dopt);
  nc::HeadOptions head;
  head.seed = spec.seed;
  head.threads = o.threads;
  nc::MatrixF w0;
  switch (spec.arm) {
    case Arm::baseline:
      head.method = nc::HeadInit::kaiming_normal;
      w0 = nc::init_head(C, o.dim, head);
      break;
    case Arm::nc_init:
    case Arm::nc_init_pi:
      head.method = nc::HeadInit::nc_pc1;
      w0 = nc::init_head(eigen_cview(e0), train.y, head);
      break;
    case Arm::class_mean:
    case Arm::centered_mean:
      head.method = spec.arm == Arm::class_mean ? nc::HeadInit::class_mean : nc::HeadInit::centered_mean;
      w0 = nc::init_head(eigen_cview(e0), train.y, head);
      break;
  }
  torch::Tensor proxies = to_tensor(w0).set_requires_grad(true);
  nc::DriftTracker drift(directions);

  RunResult result;
  EpochLog init;
  init.phase = "init";
  evaluate(model, train, test, proxies, drift, o, init);
  result.epochs.push_back(init);

  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(model->backbone->parameters(), std::make_unique<torch::optim::AdamWOptions>(o.lr));
  groups.emplace_back(model->embedding->parameters(), std::make_unique<torch::optim::AdamWOptions>(o.lr));
  groups.emplace_back(std::vector<torch::Tensor>{proxies},
                      std::make_unique<torch::optim::AdamWOptions>(o.lr * o.proxy_lr_mult));
  for (auto& g : groups) static_cast<torch::optim::AdamWOptions&>(g.options()).weight_decay(o.weight_decay);
  torch::optim::AdamW opt(std::move(groups), torch::optim::AdamWOptions(o.lr).weight_decay(o.weight_decay));

  nc::PerturbOptions po;
  po.sigma = spec.arm == Arm::nc_init_pi ? spec.sigma : 0.0;
  po.seed = spec.seed;
  po.threads = 1;  // C x D noise: too small to share out
  const nc::Perturbation perturbation(po);
  const torch::Tensor labels = torch::tensor(train.y, torch::kInt64);

  int64_t step = 0;
  for (int epoch = 1; epoch <= o.epochs; ++epoch) {
    const bool warmup = epoch <= o.warmup_epochs;
    model->backbone->freeze_except_batch_norm(warmup);
    const bool perturb = po.sigma > 0 && (warmup || o.pi_after_warmup);
    model->train();
    const torch::Tensor order = torch::tensor(permutation(train.size(), spec.seed * 1000003 + uint64_t(epoch)), torch::kInt64);
    double loss_sum = 0;
    int64_t batches = 0;
    for (int64_t i = 0; i + 1 < train.size(); i += o.batch) {  // a last batch of one cannot train batch norm
      const torch::Tensor idx = order.slice(0, i, std::min(i + o.batch, train.size()));
      const torch::Tensor yb = labels.index_select(0, idx);
      torch::Tensor loss;
      {
        // Algorithm 2: the forward and backward pass see clean + noise; the guard writes the
        // clean proxies back before the optimizer step, which so updates the clean weights.
        std::optional<nc::PerturbationGuard<float>> guard;
        if (perturb) {
          torch::NoGradGuard no_grad;
          guard.emplace(perturbation.perturb(eigen_view(proxies), step));
        }
        const torch::Tensor emb = model->forward(train.x.index_select(0, idx));
        if (check_loss && step == 0) {
          std::vector<int64_t> yv(yb.data_ptr<int64_t>(), yb.data_ptr<int64_t>() + yb.numel());
          result.agreement = compare_with_ncml(emb, yv, proxies, o.loss);
        }
        loss = metric_loss(emb, yb, proxies, o.loss);
        opt.zero_grad();
        loss.backward();
      }
      opt.step();
      loss_sum += loss.item<double>();
      ++batches;
      ++step;
    }
    EpochLog log;
    log.epoch = epoch;
    log.phase = warmup ? "warmup" : "finetune";
    log.steps = step;
    log.loss = loss_sum / double(std::max<int64_t>(batches, 1));
    evaluate(model, train, test, proxies, drift, o, log);
    result.epochs.push_back(log);
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return result;
}

}  // namespace demo
