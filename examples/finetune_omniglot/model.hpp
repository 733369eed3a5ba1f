// finetune_omniglot: the small CNN backbone, its MNIST "pretraining" (cached on disk) and the
// metric-learning model (backbone -> new linear embedding -> L2 normalization).
#pragma once

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>

#include <torch/torch.h>

#include "data.hpp"

namespace demo {

/// Three conv-BN-ReLU-maxpool stages (16, 32, 64 channels; 28 -> 14 -> 7 -> 3) and a
/// fully connected BN-ReLU layer: 128 features, nonnegative like a ResNet's pooled features.
struct BackboneImpl : torch::nn::Module {
  static constexpr int64_t kFeatures = 128;
  torch::nn::Sequential net{nullptr};

  BackboneImpl() {
    namespace nn = torch::nn;
    nn::Sequential seq;
    int64_t in = 1;
    for (int64_t out : {16, 32, 64}) {
      seq->push_back(nn::Conv2d(nn::Conv2dOptions(in, out, 3).padding(1).bias(false)));
      seq->push_back(nn::BatchNorm2d(out));
      seq->push_back(nn::ReLU());
      seq->push_back(nn::MaxPool2d(2));
      in = out;
    }
    seq->push_back(nn::Flatten());
    seq->push_back(nn::Linear(nn::LinearOptions(64 * 3 * 3, kFeatures).bias(false)));
    seq->push_back(nn::BatchNorm1d(kFeatures));
    seq->push_back(nn::ReLU());
    net = register_module("net", seq);
  }
  torch::Tensor forward(const torch::Tensor& x) { return net->forward(x); }

  /// Freezes (or unfreezes) every parameter except the batch-norm affine parameters.
  void freeze_except_batch_norm(bool frozen) {
    for (const auto& m : modules(/*include_self=*/false)) {
      const bool bn = m->as<torch::nn::BatchNorm2d>() != nullptr || m->as<torch::nn::BatchNorm1d>() != nullptr;
      for (auto& p : m->parameters(/*recurse=*/false)) p.set_requires_grad(bn || !frozen);
    }
  }
};
TORCH_MODULE(Backbone);

/// Embeddings [N, D] of `model` on `x` in evaluation mode, in batches.
template <class Model>
torch::Tensor embed_all(Model& model, const torch::Tensor& x, int64_t batch = 500) {
  torch::NoGradGuard no_grad;
  model->eval();
  std::vector<torch::Tensor> parts;
  for (int64_t i = 0; i < x.size(0); i += batch) parts.push_back(model->forward(x.slice(0, i, std::min(i + batch, x.size(0)))));
  return torch::cat(parts).contiguous();
}

struct PretrainOptions {
  uint64_t seed = 0;
  int epochs = 2;
  int64_t batch = 64;
  double lr = 1e-3;
};

/// The backbone plus a 10-way digit classifier.
struct DigitClassifierImpl : torch::nn::Module {
  Backbone backbone;
  torch::nn::Linear head{nullptr};
  explicit DigitClassifierImpl(Backbone b) : backbone(register_module("backbone", b)) {
    head = register_module("head", torch::nn::Linear(BackboneImpl::kFeatures, 10));
  }
  torch::Tensor forward(const torch::Tensor& x) { return head->forward(backbone->forward(x)); }
};
TORCH_MODULE(DigitClassifier);

/// A backbone trained from the seed as a digit classifier on the MNIST training part, and
/// its held-out accuracy.
inline std::pair<Backbone, double> pretrain_on_mnist(const Mnist& mnist, const PretrainOptions& o) {
  torch::manual_seed(o.seed);  // before the first layer draws its initial weights
  Backbone backbone;
  DigitClassifier model(backbone);
  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(o.lr).weight_decay(1e-4));
  const torch::Tensor y = torch::tensor(mnist.train.y, torch::kInt64);
  for (int e = 0; e < o.epochs; ++e) {
    model->train();
    const torch::Tensor order = torch::tensor(permutation(mnist.train.size(), o.seed * 7919 + uint64_t(e)), torch::kInt64);
    for (int64_t i = 0; i + 1 < mnist.train.size(); i += o.batch) {
      const torch::Tensor idx = order.slice(0, i, std::min(i + o.batch, mnist.train.size()));
      const torch::Tensor loss =
          torch::nn::functional::cross_entropy(model->forward(mnist.train.x.index_select(0, idx)), y.index_select(0, idx));
      opt.zero_grad();
      loss.backward();
      opt.step();
    }
  }
  const torch::Tensor pred = embed_all(model, mnist.heldout.x).argmax(1);
  return {backbone, pred.eq(torch::tensor(mnist.heldout.y, torch::kInt64)).to(torch::kFloat64).mean().item<double>()};
}

/// The pretrained backbone, serialized (every arm and seed starts from a copy of it).
struct Pretrained {
  std::string bytes;
  std::string cache_file;
  bool from_cache = false;
  double heldout_accuracy = -1;  // only when trained in this run
  double seconds = 0;

  Backbone load() const {
    Backbone b;
    std::istringstream in(bytes);
    torch::load(b, in);
    return b;
  }
};

/// Loads the backbone from `cache_dir`, or pretrains and caches it. The file name holds
/// every input of the pretraining (seed, epochs, batch, learning rate, data checksum), so a
/// stale cache is never used; an unreadable cache file is retrained and overwritten.
inline Pretrained pretrained_backbone(const std::string& data_dir, const std::string& cache_dir,
                                      const PretrainOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  const Mnist mnist = load_mnist(data_dir);
  char name[256];
  std::snprintf(name, sizeof(name), "/mnist_backbone_v3_s%llu_e%d_b%lld_lr%g_%016llx.pt", (unsigned long long)o.seed,
                o.epochs, (long long)o.batch, o.lr, (unsigned long long)mnist.checksum);
  Pretrained p;
  p.cache_file = cache_dir + name;
  {
    std::ifstream f(p.cache_file, std::ios::binary);
    if (f) {
      std::ostringstream s;
      s << f.rdbuf();
      p.bytes = s.str();
      try {
        p.load();
        p.from_cache = true;
      } catch (const c10::Error&) {
        std::fprintf(stderr, "warning: %s is not a readable backbone; pretraining again\n", p.cache_file.c_str());
      }
    }
  }
  if (!p.from_cache) {
    const auto [backbone, accuracy] = pretrain_on_mnist(mnist, o);
    p.heldout_accuracy = accuracy;
    std::ostringstream s;
    torch::save(backbone, s);
    p.bytes = s.str();
    std::ofstream f(p.cache_file, std::ios::binary);
    f << p.bytes;
    if (!f) std::fprintf(stderr, "warning: cannot write the backbone cache %s\n", p.cache_file.c_str());
  }
  p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return p;
}

/// backbone -> new linear embedding [128 -> D] -> L2 normalization.
struct EmbedderImpl : torch::nn::Module {
  Backbone backbone;
  torch::nn::Linear embedding{nullptr};
  EmbedderImpl(Backbone b, int64_t dim) : backbone(register_module("backbone", b)) {
    embedding = register_module("embedding", torch::nn::Linear(BackboneImpl::kFeatures, dim));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return torch::nn::functional::normalize(embedding->forward(backbone->forward(x)),
                                            torch::nn::functional::NormalizeFuncOptions().dim(1));
  }
};
TORCH_MODULE(Embedder);

}  // namespace demo
