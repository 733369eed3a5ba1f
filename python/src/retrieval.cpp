// ncml Python module: knn and evaluate_retrieval.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <nc/knn.hpp>
#include <nc/metrics/retrieval.hpp>

#include "arrays.hpp"
#include "bindings.hpp"
#if NCML_PY_WITH_CUDA
#include "cuda_tensors.hpp"
#endif

namespace ncml_py {
namespace {

nc::Similarity parse_similarity(const std::string& s) {
  static const std::pair<const char*, nc::Similarity> names[] = {{"cosine", nc::Similarity::cosine},
                                                                 {"inner_product", nc::Similarity::inner_product},
                                                                 {"neg_squared_l2", nc::Similarity::neg_squared_l2}};
  return parse_enum(s, "similarity", names);
}

#if NCML_PY_WITH_CUDA
// The GPU path: CUDA queries and gallery searched on their device, the lists written into
// tensors allocated there.
py::tuple gpu_knn(const cuda::Device& dev, py::handle queries, py::handle gallery, Index k, nc::Similarity similarity,
                  bool exclude_self) {
  const cuda::DeviceRows q = cuda::device_rows(queries, "queries");
  // gallery None: the same rows in memory, which takes the symmetric path.
  const cuda::DeviceRows g = gallery.is_none() ? q : cuda::device_rows(gallery, "gallery");
  NC_EXPECTS(g.rows.cols == q.rows.cols, "gallery has " << g.rows.cols << " columns but queries have "
                                                        << q.rows.cols << " (dimension mismatch)");
  NC_EXPECTS(k > 0, "k must be positive, got k = " << k);
  const py::object indices = cuda::empty(dev, q.rows.rows, k, "int64");
  const py::object scores = cuda::empty(dev, q.rows.rows, k, "float32");
  int64_t* d_indices = reinterpret_cast<int64_t*>(cuda::data_ptr(indices));
  float* d_scores = reinterpret_cast<float*>(cuda::data_ptr(scores));
  {
    py::gil_scoped_release nogil;
    gpu::knn(dev.stream, q.rows, g.rows, k, similarity, exclude_self, d_indices, d_scores);
  }
  return py::make_tuple(indices, scores);
}
#endif

py::tuple knn(py::handle queries, py::handle gallery, Index k, const std::string& similarity, bool exclude_self,
              int threads) {
  nc::KnnOptions o;
  o.similarity = parse_similarity(similarity);
  o.exclude_self = exclude_self;
  o.threads = threads;
#if NCML_PY_WITH_CUDA
  if (const auto dev = cuda::device_of({{queries, "queries"}, {gallery, "gallery"}}))
    return gpu_knn(*dev, queries, gallery, k, o.similarity, exclude_self);
#endif
  const Rows q = as_rows(queries, "queries");
  // The same rows in memory take the symmetric path (each pair of tiles computed once).
  const Rows g = gallery.is_none() ? q : as_rows(gallery, "gallery");
  nc::KnnResult r = visit(q, [&](const auto& qm) {
    return visit(g, [&](const auto& gm) {
      py::gil_scoped_release nogil;
      return nc::knn(qm, gm, k, o);
    });
  });
  return py::make_tuple(result(std::move(r.indices), q.kind), result(std::move(r.scores), q.kind));
}

py::array int64_array(const std::vector<int64_t>& v) {
  return to_numpy(nc::VectorI64(Eigen::Map<const nc::VectorI64>(v.data(), Index(v.size()))));
}

/// The report as a dict; per-class arrays of the input's kind, and on `device` (a torch
/// device, for CUDA input) when given.
py::dict report_dict(nc::RetrievalReport& r, bool per_class, Kind kind, const py::object& device = py::none()) {
  py::dict d;
  d["ks"] = r.ks;
  d["recall_at_k"] = r.recall_at_k;
  d["precision_at_k"] = r.precision_at_k;
  d["map_at_r"] = r.map_at_r;
  d["r_precision"] = r.r_precision;
  d["mrr"] = r.mrr;
  d["num_queries"] = r.num_queries;
  d["num_lone_queries"] = r.num_lone_queries;
  d["class_avg_recall_at_k"] = r.class_avg_recall_at_k;
  d["class_avg_precision_at_k"] = r.class_avg_precision_at_k;
  d["class_avg_map_at_r"] = r.class_avg_map_at_r;
  d["class_avg_r_precision"] = r.class_avg_r_precision;
  d["class_avg_mrr"] = r.class_avg_mrr;
  d["num_classes_evaluated"] = r.num_classes_evaluated;
  if (per_class) {
    auto as_kind = [&](py::array a, Kind k) -> py::object {
      py::object out = ncml_py::as_kind(std::move(a), k);
      return device.is_none() ? out : out.attr("to")(device);
    };
    auto result = [&](auto&& m, Kind k) { return as_kind(to_numpy(std::move(m)), k); };
    d["class_num_queries"] = as_kind(int64_array(r.class_num_queries), kind);
    d["class_num_lone_queries"] = as_kind(int64_array(r.class_num_lone_queries), kind);
    d["class_recall_at_k"] = result(std::move(r.class_recall_at_k), kind);
    d["class_precision_at_k"] = result(std::move(r.class_precision_at_k), kind);
    d["class_map_at_r"] = result(std::move(r.class_map_at_r), kind);
    d["class_r_precision"] = result(std::move(r.class_r_precision), kind);
    d["class_mrr"] = result(std::move(r.class_mrr), kind);
  }
  return d;
}

py::dict evaluate_retrieval(py::handle features, py::handle labels, py::handle gallery, py::handle gallery_labels,
                            const std::vector<int>& ks, const std::string& similarity, bool per_class, int threads) {
  nc::RetrievalOptions o;
  o.ks = ks;
  o.similarity = parse_similarity(similarity);
  o.per_class = per_class;
  o.threads = threads;
  if (gallery.is_none() != gallery_labels.is_none())
    fail("gallery and gallery_labels go together: give both (query vs gallery) or neither (leave-one-out)");
  const bool loo = gallery.is_none();
#if NCML_PY_WITH_CUDA
  if (const auto dev = cuda::device_of({{features, loo ? "features" : "queries"},
                                        {labels, loo ? "labels" : "query_labels"},
                                        {gallery, "gallery"},
                                        {gallery_labels, "gallery_labels"}})) {
    const cuda::DeviceRows q = cuda::device_rows(features, loo ? "features" : "queries");
    const cuda::DeviceLabels lq = cuda::device_labels(labels, loo ? "labels" : "query_labels", q.rows.rows);
    cuda::DeviceRows g;
    cuda::DeviceLabels lg;
    if (!loo) {
      g = cuda::device_rows(gallery, "gallery");
      NC_EXPECTS(g.rows.cols == q.rows.cols, "gallery has " << g.rows.cols << " columns but queries have "
                                                            << q.rows.cols << " (dimension mismatch)");
      lg = cuda::device_labels(gallery_labels, "gallery_labels", g.rows.rows);
    }
    nc::RetrievalReport r = [&] {
      py::gil_scoped_release nogil;
      return gpu::evaluate_retrieval(dev->stream, q.rows, lq.labels, loo ? nullptr : &g.rows,
                                     loo ? nullptr : &lg.labels, o.ks, o.similarity, o.per_class);
    }();
    return report_dict(r, per_class, Kind::torch, dev->device);
  }
#endif
  const Rows q = as_rows(features, loo ? "features" : "queries");
  const Labels lq = as_labels(labels, loo ? "labels" : "query_labels");
  nc::RetrievalReport r;
  if (loo) {
    r = visit(q, [&](const auto& qm) {
      return visit(lq, [&](auto yq) {
        py::gil_scoped_release nogil;
        return nc::evaluate_retrieval(qm, yq, o);
      });
    });
  } else {
    const Rows g = as_rows(gallery, "gallery");
    const Labels lg = as_labels(gallery_labels, "gallery_labels");
    r = visit(q, [&](const auto& qm) {
      return visit(g, [&](const auto& gm) {
        return visit(lq, [&](auto yq) {
          return visit(lg, [&](auto yg) {
            py::gil_scoped_release nogil;
            return nc::evaluate_retrieval(qm, yq, gm, yg, o);
          });
        });
      });
    });
  }
  return report_dict(r, per_class, q.kind);
}

}  // namespace

void bind_retrieval(py::module_& m) {
  m.def("knn", &knn, py::arg("queries"), py::arg("gallery"), py::arg("k"), py::kw_only(),
        py::arg("similarity") = "cosine", py::arg("exclude_self") = false, py::arg("threads") = 0,
        "Exact k nearest neighbours: (indices [Q, k] int64, scores [Q, k] float32), best first, ties\n"
        "by gallery index; the kind of `queries`. gallery None means the queries themselves;\n"
        "exclude_self drops gallery row i from query i's list (leave-one-out). similarity:\n"
        "'cosine', 'inner_product', 'neg_squared_l2'.");
  m.def("evaluate_retrieval", &evaluate_retrieval, py::arg("features"), py::arg("labels"),
        py::arg("gallery") = py::none(), py::arg("gallery_labels") = py::none(), py::kw_only(),
        py::arg("ks") = std::vector<int>{1, 2, 4, 8}, py::arg("similarity") = "cosine", py::arg("per_class") = false,
        py::arg("threads") = 0,
        "Exact retrieval metrics as a dict: ks, recall_at_k, precision_at_k (lists aligned with ks),\n"
        "map_at_r, r_precision, mrr, num_queries, num_lone_queries, class_avg_* and, with\n"
        "per_class=True, class_* arrays. Leave-one-out over features [N, D] / labels [N], or\n"
        "queries (features, labels) against (gallery, gallery_labels). The features are read in\n"
        "place (no copy) when float32/float64 with contiguous rows.");
}

}  // namespace ncml_py
