// ncml Python module: ClassStats, class_stats, nc1, nc1_detailed, nc_metrics, nc4.
#include <cstdint>
#include <string>
#include <utility>

#include <pybind11/pybind11.h>

#include <nc/metrics/nc.hpp>
#include <nc/stats.hpp>

#include "arrays.hpp"
#include "bindings.hpp"
#if NCML_PY_WITH_CUDA
#include "cuda_tensors.hpp"
#endif

namespace ncml_py {
namespace {

using nc::ClassStats;

#if NCML_PY_WITH_CUDA
// The GPU path: statistics of CUDA tensors computed on their device; the parts (counts,
// means, deviations and the D x D scatter, small next to the rows) are copied back and
// assembled into the same CPU ClassStats the CPU path returns.

ClassStats stats_from_gpu(const gpu::StatsParts& p, Index num_classes, Index dim, bool within_scatter, int threads) {
  using MapI = Eigen::Map<const nc::VectorI64>;
  using MapM = Eigen::Map<const nc::MatrixD>;
  using MapV = Eigen::Map<const Eigen::VectorXd>;
  return ClassStats::from_parts(MapI(p.counts.data(), num_classes), MapM(p.means.data(), num_classes, dim),
                                MapV(p.sq_dev.data(), num_classes),
                                within_scatter ? nc::MatrixD(MapM(p.scatter.data(), dim, dim)) : nc::MatrixD(),
                                nc::StatsOptions{within_scatter, threads});
}

ClassStats gpu_class_stats(const cuda::Device& dev, py::handle features, py::handle labels, Index num_classes,
                           bool within_scatter, int threads) {
  const cuda::DeviceRows x = cuda::device_rows(features, "features");
  const cuda::DeviceLabels y = cuda::device_labels(labels, "labels", x.rows.rows);
  const Index c = cuda::resolve_num_classes(y, num_classes, "labels");
  gpu::StatsParts p = [&] {
    py::gil_scoped_release nogil;
    return gpu::class_stats(dev.stream, x.rows, y.labels, c, within_scatter);
  }();
  return stats_from_gpu(p, c, x.rows.cols, within_scatter, threads);
}

// ClassStats.add of a CUDA batch: the batch's statistics on the GPU, merged on the host
// (exact); validated on the device first, so a failing batch changes nothing.
void gpu_add(const cuda::Device& dev, ClassStats& s, py::handle features, py::handle labels) {
  const cuda::DeviceRows x = cuda::device_rows(features, "features");
  NC_EXPECTS(x.rows.cols == s.dim(), "features has " << x.rows.cols << " columns, expected dim = " << s.dim());
  const cuda::DeviceLabels y = cuda::device_labels(labels, "labels", x.rows.rows);
  gpu::StatsParts p = [&] {
    py::gil_scoped_release nogil;
    return gpu::class_stats(dev.stream, x.rows, y.labels, s.num_classes(), s.has_scatter());
  }();
  s.merge(stats_from_gpu(p, s.num_classes(), s.dim(), s.has_scatter(), s.options().threads));
}

nc::NC1Result gpu_nc1(const cuda::Device& dev, py::handle features, py::handle labels, const ClassStats* stats,
                      Index num_classes, double rank_tol, bool unweighted) {
  const cuda::DeviceRows x = cuda::device_rows(features, "features");
  if (stats)
    NC_EXPECTS(x.rows.cols == stats->dim(),
               "features has " << x.rows.cols << " columns, expected dim = " << stats->dim());
  const cuda::DeviceLabels y = cuda::device_labels(labels, "labels", x.rows.rows);
  const Index c = stats ? stats->num_classes() : cuda::resolve_num_classes(y, num_classes, "labels");
  gpu::NC1Value v = [&] {
    py::gil_scoped_release nogil;
    // The given statistics are uploaded (C + C x D values) and their counts checked against
    // the labels on the device; without them, statistics of the rows are gathered first.
    return gpu::nc1(dev.stream, x.rows, y.labels, c, stats ? stats->counts().data() : nullptr,
                    stats ? stats->means().data() : nullptr, rank_tol, unweighted);
  }();
  nc::NC1Result r;
  r.value = v.value;
  r.rank = v.rank;
  r.num_classes_used = v.num_classes_used;
  r.tolerance = v.tolerance;
  r.path = nc::NC1Options::Path::projected;
  return r;
}
#endif

/// A copy of a 2-D real input as a float64 matrix (for small arguments stored by value).
nc::MatrixD matrix_d(py::handle obj, const std::string& name) {
  const Rows x = as_rows(obj, name);
  return visit(x, [](const auto& m) { return nc::MatrixD(m.template cast<double>()); });
}

Eigen::VectorXd vector_d(py::handle obj, const std::string& name) {
  py::array a = converted<double, py::array::c_style | py::array::forcecast>(py::array::ensure(obj), name);
  if (a.ndim() != 1) fail(name + " must be 1-D, got shape " + shape_string(a));
  return Eigen::Map<const Eigen::VectorXd>(static_cast<const double*>(a.data()), a.shape(0));
}

nc::VectorI64 vector_i64(py::handle obj, const std::string& name) {
  const Labels y = as_labels(obj, name);
  nc::VectorI64 v(y.size);
  visit(y, [&](auto view) {
    for (Index i = 0; i < view.size; ++i) v[i] = static_cast<int64_t>(view[i]);
  });
  return v;
}

void add(ClassStats& s, py::handle features, py::handle labels) {
#if NCML_PY_WITH_CUDA
  if (const auto dev = cuda::device_of({{features, "features"}, {labels, "labels"}}))
    return gpu_add(*dev, s, features, labels);
#endif
  const Rows x = as_rows(features, "features");
  const Labels y = as_labels(labels, "labels");
  visit(x, [&](const auto& xm) {
    visit(y, [&](auto yv) {
      py::gil_scoped_release nogil;
      s.add(xm, yv);
    });
  });
}

ClassStats class_stats(py::handle features, py::handle labels, py::object num_classes, bool within_scatter,
                       int threads) {
#if NCML_PY_WITH_CUDA
  if (const auto dev = cuda::device_of({{features, "features"}, {labels, "labels"}}))
    return gpu_class_stats(*dev, features, labels, optional_count(num_classes), within_scatter, threads);
#endif
  const Rows x = as_rows(features, "features");
  const Labels y = as_labels(labels, "labels");
  const Index c = optional_count(num_classes);
  return visit(x, [&](const auto& xm) {
    return visit(y, [&](auto yv) {
      py::gil_scoped_release nogil;
      return nc::class_stats(xm, yv, c, nc::StatsOptions{within_scatter, threads});
    });
  });
}

ClassStats from_parts(py::handle counts, py::handle means, py::handle sq_deviations, py::handle scatter,
                      int threads) {
  const CallName call("ClassStats.from_parts");
  const bool has_scatter = !scatter.is_none();
  return ClassStats::from_parts(vector_i64(counts, "counts"), matrix_d(means, "means"),
                                vector_d(sq_deviations, "sq_deviations"),
                                has_scatter ? matrix_d(scatter, "scatter") : nc::MatrixD(),
                                nc::StatsOptions{has_scatter, threads});
}

nc::NC1Options::Path parse_path(const std::string& path) {
  static const std::pair<const char*, nc::NC1Options::Path> names[] = {
      {"projected", nc::NC1Options::Path::projected}, {"exact", nc::NC1Options::Path::exact}};
  return parse_enum(path, "path", names);
}

py::dict nc1_dict(const nc::NC1Result& r) {
  py::dict d;
  d["value"] = r.value;
  d["rank"] = r.rank;
  d["num_classes_used"] = r.num_classes_used;
  d["tolerance"] = r.tolerance;
  d["path"] = r.path == nc::NC1Options::Path::exact ? "exact" : "projected";
  return d;
}

nc::NC1Result nc1_stats(const ClassStats& s, const std::string& path, double rank_tol, bool unweighted) {
  nc::NC1Options o;
  o.path = parse_path(path);
  o.rank_tol = rank_tol;
  o.unweighted_global_mean = unweighted;
  py::gil_scoped_release nogil;
  return nc::nc1_detailed(s, o);
}

// NC1 in one pass over the data (projected path): with `stats` given, they must be the
// statistics of these features; without, statistics without the scatter are gathered first.
nc::NC1Result nc1_data(py::handle features, py::handle labels, const ClassStats* stats, py::object num_classes,
                       double rank_tol, bool unweighted, int threads) {
#if NCML_PY_WITH_CUDA
  if (const auto dev = cuda::device_of({{features, "features"}, {labels, "labels"}}))
    return gpu_nc1(*dev, features, labels, stats, optional_count(num_classes), rank_tol, unweighted);
#endif
  const Rows x = as_rows(features, "features");
  const Labels y = as_labels(labels, "labels");
  nc::NC1Options o;
  o.rank_tol = rank_tol;
  o.unweighted_global_mean = unweighted;
  o.threads = threads;
  const Index c = optional_count(num_classes);
  return visit(x, [&](const auto& xm) {
    return visit(y, [&](auto yv) {
      py::gil_scoped_release nogil;
      if (stats) return nc::nc1_detailed(xm, yv, *stats, o);
      const ClassStats s = nc::class_stats(xm, yv, c, nc::StatsOptions{false, threads});
      return nc::nc1_detailed(xm, yv, s, o);
    });
  });
}

py::dict report_dict(const nc::NCReport& r) {
  py::dict d;
  d["nc1"] = r.nc1;
  d["trace_sw"] = r.trace_sw;
  d["trace_sb"] = r.trace_sb;
  d["trace_ratio"] = r.trace_ratio;
  d["cdnv"] = r.cdnv;
  d["nc2_etf_error"] = r.nc2_etf_error;
  d["nc2_equinorm"] = r.nc2_equinorm;
  d["nc2_equiangularity"] = r.nc2_equiangularity;
  d["nc2_max_angle"] = r.nc2_max_angle;
  d["nc3_self_duality"] = r.nc3_self_duality;
  d["nc3_etf_error"] = r.nc3_etf_error;
  d["rank"] = r.rank;
  d["num_classes_used"] = r.num_classes_used;
  d["num_empty_classes"] = r.num_empty_classes;
  d["num_samples"] = r.num_samples;
  return d;
}

py::dict nc_metrics(const ClassStats& s, py::handle w, const std::string& nc1_path, double rank_tol,
                    bool unweighted) {
  const CallName call("nc_metrics");
  nc::NCOptions o;
  o.nc1_path = parse_path(nc1_path);
  o.rank_tol = rank_tol;
  o.unweighted_global_mean = unweighted;
  nc::NCReport r;
  if (w.is_none()) {
    py::gil_scoped_release nogil;
    r = nc::nc_metrics(s, o);
  } else {
    const Rows wm = as_rows(w, "W");
    r = visit(wm, [&](const auto& m) {
      py::gil_scoped_release nogil;
      return nc::nc_metrics(s, m, o);
    });
  }
  return report_dict(r);
}

double nc4(py::handle features, py::handle labels, const ClassStats& s, py::handle w, py::handle bias,
           const std::string& rule, bool per_class_average, int threads) {
  const CallName call("nc4");
  static const std::pair<const char*, nc::NC4Options::Rule> rules[] = {
      {"euclidean", nc::NC4Options::Rule::euclidean}, {"cosine", nc::NC4Options::Rule::cosine}};
  nc::NC4Options o;
  o.rule = parse_enum(rule, "rule", rules);
  o.per_class_average = per_class_average;
  o.threads = threads;
  const Rows x = as_rows(features, "features");
  const Labels y = as_labels(labels, "labels");
  const Rows wm = as_rows(w, "W");
  const Eigen::VectorXd b = bias.is_none() ? Eigen::VectorXd() : vector_d(bias, "bias");
  return visit(x, [&](const auto& xm) {
    return visit(y, [&](auto yv) {
      return visit(wm, [&](const auto& wmap) {
        py::gil_scoped_release nogil;
        return nc::nc4(xm, yv, s, wmap, b, o);
      });
    });
  });
}

}  // namespace

void bind_stats(py::module_& m) {
  py::class_<ClassStats>(m, "ClassStats", R"doc(
Streaming, mergeable per-class statistics (counts, means, within-class scatter) in float64.

    stats = ncml.ClassStats(num_classes, dim)
    for x, y in loader:                 # x [n, D] float32/float64, y [n] int32/int64
        stats.add(x, y)
    stats.means()                       # [C, D] NumPy float64

Accessors return NumPy arrays whatever the inputs were (torch.from_numpy shares them).
Picklable (for multiprocessing and distributed gathers). One object must not be modified
from two threads at once.)doc")
      .def(py::init([](Index num_classes, Index dim, bool within_scatter, int threads) {
             return ClassStats(num_classes, dim, nc::StatsOptions{within_scatter, threads});
           }),
           py::arg("num_classes"), py::arg("dim"), py::kw_only(), py::arg("within_scatter") = true,
           py::arg("threads") = 0,
           "Empty statistics for `num_classes` classes of `dim`-dimensional features. "
           "within_scatter=False skips the D x D scatter (no nc1/within_covariance from the stats).")
      .def("add", &add, py::arg("features"), py::arg("labels"),
           "Adds a batch: features [n, D], labels [n] in [0, num_classes). Validated first; on error "
           "nothing changes.")
      .def("merge", &ClassStats::merge, py::arg("other"),
           "Combines the statistics of a disjoint set of samples into these (exact).")
      .def_static("from_parts", &from_parts, py::arg("counts"), py::arg("means"), py::arg("sq_deviations"),
                  py::arg("scatter") = py::none(), py::kw_only(), py::arg("threads") = 0,
                  "Rebuilds statistics from counts [C], means [C, D], class_sq_deviations [C] and, "
                  "optionally, within_scatter [D, D].")
      .def_property_readonly("num_classes", &ClassStats::num_classes)
      .def_property_readonly("dim", &ClassStats::dim)
      .def_property_readonly("total_count", &ClassStats::total_count)
      .def_property_readonly("num_nonempty_classes", &ClassStats::num_nonempty_classes)
      .def_property_readonly("has_scatter", &ClassStats::has_scatter)
      .def("counts", [](const ClassStats& s) { return to_numpy(nc::VectorI64(s.counts())); },
           "Samples per class [C] (int64).")
      .def("means", [](const ClassStats& s) { return to_numpy(nc::MatrixD(s.means())); },
           "Class means [C, D]; rows of empty classes are zero.")
      .def("class_sq_deviations", [](const ClassStats& s) { return to_numpy(Eigen::VectorXd(s.class_sq_deviations())); },
           "Per class, sum of ||h_i - mu_c||^2 [C].")
      .def("class_variances", [](const ClassStats& s) { return to_numpy(s.class_variances()); },
           "class_sq_deviations / counts [C] (NaN for empty classes).")
      .def("global_mean", [](const ClassStats& s) { return to_numpy(s.global_mean()); },
           "Sample-weighted global mean [D].")
      .def("mean_of_class_means", [](const ClassStats& s) { return to_numpy(s.mean_of_class_means()); },
           "Unweighted mean of the non-empty classes' means [D].")
      .def("within_scatter", [](const ClassStats& s) { return to_numpy(nc::MatrixD(s.within_scatter())); },
           "S_W = sum_i (h_i - mu_y)(h_i - mu_y)^T [D, D].")
      .def("within_covariance", [](const ClassStats& s) { return to_numpy(s.within_covariance()); },
           "Sigma_W = S_W / N [D, D].")
      .def("between_covariance", [](const ClassStats& s) { return to_numpy(s.between_covariance()); },
           "Sigma_B = (1/C') sum_c (mu_c - mu_G)(mu_c - mu_G)^T over non-empty classes [D, D].")
      .def("__repr__",
           [](const ClassStats& s) {
             return "ncml.ClassStats(num_classes=" + std::to_string(s.num_classes()) +
                    ", dim=" + std::to_string(s.dim()) + ", total_count=" + std::to_string(s.total_count()) +
                    (s.has_scatter() ? "" : ", within_scatter=False") + ")";
           })
      .def(py::pickle(
          [](const ClassStats& s) {
            return py::make_tuple(to_numpy(nc::VectorI64(s.counts())), to_numpy(nc::MatrixD(s.means())),
                                  to_numpy(Eigen::VectorXd(s.class_sq_deviations())),
                                  s.has_scatter() ? py::object(to_numpy(nc::MatrixD(s.within_scatter())))
                                                  : py::object(py::none()),
                                  s.options().threads);
          },
          [](const py::tuple& t) {
            if (t.size() != 5) fail("ClassStats: invalid pickled state");
            return from_parts(t[0], t[1], t[2], t[3], t[4].cast<int>());
          }));

  m.def("class_stats", &class_stats, py::arg("features"), py::arg("labels"), py::arg("num_classes") = py::none(),
        py::kw_only(), py::arg("within_scatter") = true, py::arg("threads") = 0,
        "ClassStats of features [N, D] with labels [N] in one call; num_classes None means max(label) + 1.");

  const char* nc1_doc =
      "NC1 = (1/C') tr(Sigma_W Sigma_B^+) over the C' classes with samples (Papyan et al. 2020).\n"
      "nc1(stats, path='projected'|'exact') uses the stored scatter; nc1(features, labels, stats=None)\n"
      "makes one projected pass over the data (O(N D r), no D x D matrix; stats, if given, must be\n"
      "those of the same data).";
  m.def(
      "nc1",
      [](const ClassStats& s, const std::string& path, double rank_tol, bool unweighted) {
        return nc1_stats(s, path, rank_tol, unweighted).value;
      },
      py::arg("stats"), py::kw_only(), py::arg("path") = "projected", py::arg("rank_tol") = -1.0,
      py::arg("unweighted_global_mean") = false, nc1_doc);
  m.def(
      "nc1",
      [](py::handle x, py::handle y, const ClassStats* s, py::object c, double rank_tol, bool unweighted, int threads) {
        return nc1_data(x, y, s, std::move(c), rank_tol, unweighted, threads).value;
      },
      py::arg("features"), py::arg("labels"), py::arg("stats") = py::none(), py::kw_only(),
      py::arg("num_classes") = py::none(), py::arg("rank_tol") = -1.0, py::arg("unweighted_global_mean") = false,
      py::arg("threads") = 0);
  const char* nc1d_doc = "Like nc1, as a dict: value, rank, num_classes_used, tolerance, path.";
  m.def(
      "nc1_detailed",
      [](const ClassStats& s, const std::string& path, double rank_tol, bool unweighted) {
        return nc1_dict(nc1_stats(s, path, rank_tol, unweighted));
      },
      py::arg("stats"), py::kw_only(), py::arg("path") = "projected", py::arg("rank_tol") = -1.0,
      py::arg("unweighted_global_mean") = false, nc1d_doc);
  m.def(
      "nc1_detailed",
      [](py::handle x, py::handle y, const ClassStats* s, py::object c, double rank_tol, bool unweighted, int threads) {
        return nc1_dict(nc1_data(x, y, s, std::move(c), rank_tol, unweighted, threads));
      },
      py::arg("features"), py::arg("labels"), py::arg("stats") = py::none(), py::kw_only(),
      py::arg("num_classes") = py::none(), py::arg("rank_tol") = -1.0, py::arg("unweighted_global_mean") = false,
      py::arg("threads") = 0);

  m.def("nc_metrics", &nc_metrics, py::arg("stats"), py::arg("W") = py::none(), py::kw_only(),
        py::arg("nc1_path") = "projected", py::arg("rank_tol") = -1.0, py::arg("unweighted_global_mean") = false,
        "Every NC metric of `stats` as a dict (nc1, trace_sw, trace_sb, trace_ratio, cdnv, nc2_*, nc3_*,\n"
        "rank, num_classes_used, num_empty_classes, num_samples); nc3_* against the head W [C, D]\n"
        "(NaN without W), nc1 NaN for statistics without the scatter.");

  m.def("nc4", &nc4, py::arg("features"), py::arg("labels"), py::arg("stats"), py::arg("W"),
        py::arg("bias") = py::none(), py::kw_only(), py::arg("rule") = "euclidean",
        py::arg("per_class_average") = false, py::arg("threads") = 0,
        "NC4: fraction of features [N, D] on which the classifier W [C, D] (+ bias [C]) and the\n"
        "nearest class mean of `stats` disagree; rule 'euclidean' or 'cosine'.");
}

}  // namespace ncml_py
