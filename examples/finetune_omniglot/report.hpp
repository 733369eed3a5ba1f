// finetune_omniglot: CSV logs, the mean +- std summary over seeds and the markdown table.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "trainer.hpp"

namespace demo {

struct RunRecord {
  RunSpec spec;
  RunResult result;
};

inline std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), f, v);
  return buf;
}

/// sigma as written in the CSV files and labels ("0" for none).
inline std::string sigma_str(double s) { return fmt("%g", s); }

/// Mean and sample standard deviation (0 for one value).
struct MeanStd {
  double mean = 0, std = 0;
  int n = 0;
};
inline MeanStd mean_std(const std::vector<double>& v) {
  MeanStd m;
  m.n = static_cast<int>(v.size());
  if (v.empty()) return m;
  for (double x : v) m.mean += x;
  m.mean /= double(v.size());
  if (v.size() > 1) {
    for (double x : v) m.std += (x - m.mean) * (x - m.mean);
    m.std = std::sqrt(m.std / double(v.size() - 1));
  }
  return m;
}

/// The logged quantities, by name, of one epoch.
inline const std::vector<std::string>& metric_names() {
  static const std::vector<std::string> names = {"loss",      "r1",       "r2",       "r4",    "r8",
                                                 "map_at_r",  "nc1_train", "nc1_test", "drift", "drift_now", "proxy_cos"};
  return names;
}
inline std::vector<double> metric_values(const EpochLog& e) {
  return {e.loss, e.recall[0], e.recall[1], e.recall[2], e.recall[3], e.map_at_r, e.nc1_train, e.nc1_test, e.drift, e.drift_now, e.proxy_cos};
}

/// Every epoch of every run, one row each.
inline void write_epochs_csv(const std::string& path, const std::vector<RunRecord>& runs) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) throw std::runtime_error("cannot write " + path);
  std::fprintf(f, "config,arm,sigma,seed,epoch,phase,steps");
  for (const auto& n : metric_names()) std::fprintf(f, ",%s", n.c_str());
  std::fprintf(f, "\n");
  for (const auto& r : runs)
    for (const auto& e : r.result.epochs) {
      std::fprintf(f, "%s,%s,%s,%llu,%d,%s,%lld", r.spec.config.c_str(), to_string(r.spec.arm), sigma_str(r.spec.sigma).c_str(),
                   (unsigned long long)r.spec.seed, e.epoch, e.phase.c_str(), (long long)e.steps);
      for (double v : metric_values(e)) std::fprintf(f, ",%.8g", v);
      std::fprintf(f, "\n");
    }
  std::fclose(f);
}

/// Runs grouped by (config, arm, sigma), in the order they first appear.
struct Group {
  std::string config;
  Arm arm;
  double sigma;
  std::vector<const RunResult*> runs;
  std::vector<uint64_t> seeds;  // of each run
};
inline std::vector<Group> group_runs(const std::vector<RunRecord>& runs) {
  std::vector<Group> groups;
  for (const auto& r : runs) {
    Group* g = nullptr;
    for (auto& x : groups)
      if (x.config == r.spec.config && x.arm == r.spec.arm && x.sigma == r.spec.sigma) g = &x;
    if (!g) {
      groups.push_back({r.spec.config, r.spec.arm, r.spec.sigma, {}, {}});
      g = &groups.back();
    }
    g->runs.push_back(&r.result);
    g->seeds.push_back(r.spec.seed);
  }
  return groups;
}

/// Mean and std over the seeds of a group of metric `m` at `epoch` (-1: the last).
inline MeanStd group_stat(const Group& g, std::size_t m, int epoch = -1) {
  std::vector<double> v;
  for (const RunResult* r : g.runs) {
    const EpochLog& e = epoch < 0 ? r->epochs.back() : r->epochs.at(static_cast<std::size_t>(epoch));
    v.push_back(metric_values(e)[m]);
  }
  return mean_std(v);
}

/// Mean and std over seeds of the final Recall@1 difference to the same configuration's
/// baseline run with the same seed (same embedding initialization and batch order, so the
/// difference isolates the proxies). n = 0 when no seed has both.
inline MeanStd paired_r1_gain(const Group& g, const std::vector<Group>& groups) {
  std::vector<double> d;
  for (const auto& b : groups) {
    if (b.config != g.config || b.arm != Arm::baseline) continue;
    for (std::size_t i = 0; i < g.runs.size(); ++i)
      for (std::size_t j = 0; j < b.runs.size(); ++j)
        if (g.seeds[i] == b.seeds[j]) d.push_back(g.runs[i]->epochs.back().recall[0] - b.runs[j]->epochs.back().recall[0]);
  }
  return mean_std(d);
}

/// Final-epoch mean and std per group, and per-epoch means (the plotted curves).
inline void write_summary_csv(const std::string& summary_path, const std::string& curves_path,
                              const std::vector<RunRecord>& runs) {
  const auto groups = group_runs(runs);
  FILE* f = std::fopen(summary_path.c_str(), "w");
  if (!f) throw std::runtime_error("cannot write " + summary_path);
  std::fprintf(f, "config,arm,sigma,seeds,epochs");
  for (const auto& n : metric_names()) std::fprintf(f, ",%s_mean,%s_std", n.c_str(), n.c_str());
  std::fprintf(f, "\n");
  for (const auto& g : groups) {
    std::fprintf(f, "%s,%s,%s,%zu,%d", g.config.c_str(), to_string(g.arm), sigma_str(g.sigma).c_str(), g.runs.size(),
                 g.runs.front()->epochs.back().epoch);
    for (std::size_t m = 0; m < metric_names().size(); ++m) {
      const MeanStd s = group_stat(g, m);
      std::fprintf(f, ",%.8g,%.8g", s.mean, s.std);
    }
    std::fprintf(f, "\n");
  }
  std::fclose(f);

  f = std::fopen(curves_path.c_str(), "w");
  if (!f) throw std::runtime_error("cannot write " + curves_path);
  std::fprintf(f, "config,arm,sigma,epoch");
  for (const auto& n : metric_names()) std::fprintf(f, ",%s_mean,%s_std", n.c_str(), n.c_str());
  std::fprintf(f, "\n");
  for (const auto& g : groups) {
    for (std::size_t e = 0; e < g.runs.front()->epochs.size(); ++e) {
      std::fprintf(f, "%s,%s,%s,%zu", g.config.c_str(), to_string(g.arm), sigma_str(g.sigma).c_str(), e);
      for (std::size_t m = 0; m < metric_names().size(); ++m) {
        const MeanStd s = group_stat(g, m, static_cast<int>(e));
        std::fprintf(f, ",%.8g,%.8g", s.mean, s.std);
      }
      std::fprintf(f, "\n");
    }
    std::fprintf(f, "\n\n");  // gnuplot: one data block per group
  }
  std::fclose(f);
}

inline std::string arm_label(Arm a, double sigma) {
  switch (a) {
    case Arm::baseline: return "baseline (Kaiming-normal proxies)";
    case Arm::nc_init: return "NC-Init";
    case Arm::nc_init_pi: return "NC-Init + PI (sigma = " + sigma_str(sigma) + ")";
    case Arm::class_mean: return "class-mean init";
    case Arm::centered_mean: return "centred-mean init";
  }
  return "?";
}

inline std::string pm(const MeanStd& s, const char* f, double scale = 1) {
  return fmt(f, s.mean * scale) + " ± " + fmt(f, s.std * scale);
}

/// The final table (markdown): per configuration, one row per arm, mean ± std over seeds of
/// the last epoch, plus the pretrained model before finetuning (epoch 0, proxies irrelevant),
/// and the paired Recall@1 difference to the baseline (percentage points).
inline std::string results_table(const std::vector<RunRecord>& runs, const std::vector<std::string>& configs) {
  const auto groups = group_runs(runs);
  std::string out;
  for (const auto& config : configs) {
    bool any = false;
    for (const auto& g : groups) any |= g.config == config;
    if (!any) continue;
    out += "\n**" + config + "**\n\n";
    out += "| arm | seeds | R@1 | R@2 | R@4 | R@8 | MAP@R | NC1 test | drift | R@1 - baseline, paired |\n";
    out += "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
    for (const auto& g : groups) {
      if (g.config != config || g.arm != Arm::baseline) continue;
      out += "| pretrained, before finetuning | " + std::to_string(g.runs.size());
      for (std::size_t m : {1, 2, 3, 4, 5}) out += " | " + pm(group_stat(g, m, 0), "%.1f", 100);
      out += " | " + pm(group_stat(g, 7, 0), "%.2f") + " | | |\n";
    }
    for (const auto& g : groups) {
      if (g.config != config) continue;
      out += "| " + arm_label(g.arm, g.sigma) + " | " + std::to_string(g.runs.size());
      for (std::size_t m : {1, 2, 3, 4, 5}) out += " | " + pm(group_stat(g, m), "%.1f", 100);
      out += " | " + pm(group_stat(g, 7), "%.2f") + " | " + pm(group_stat(g, 8), "%.3f") + " | ";
      const MeanStd gain = paired_r1_gain(g, groups);
      if (g.arm != Arm::baseline && gain.n > 0) out += fmt("%+.1f", 100 * gain.mean) + " ± " + fmt("%.1f", 100 * gain.std);
      out += " |\n";
    }
  }
  return out;
}

/// The sigma sweep (validation split) as a markdown table.
inline std::string sweep_table(const std::vector<RunRecord>& runs, double chosen) {
  std::string out = "| sigma | seeds | R@1 (val) | MAP@R (val) | drift |\n| --- | --- | --- | --- | --- |\n";
  for (const auto& g : group_runs(runs)) {
    if (g.config != "sweep") continue;
    out += "| " + sigma_str(g.sigma) + (g.sigma == chosen ? " (chosen)" : "") + " | " + std::to_string(g.runs.size()) +
           " | " + pm(group_stat(g, 1), "%.1f", 100) + " | " + pm(group_stat(g, 5), "%.1f", 100) + " | " +
           pm(group_stat(g, 8), "%.3f") + " |\n";
  }
  return out;
}

}  // namespace demo
