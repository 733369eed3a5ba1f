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

namespace ncml_py {
namespace {

nc::Similarity parse_similarity(const std::string& s) {
  static const std::pair<const char*, nc::Similarity> names[] = {{"cosine", nc::Similarity::cosine},
                                                                 {"inner_product", nc::Similarity::inner_product},
                                                                 {"neg_squared_l2", nc::Similarity::neg_squared_l2}};
  return parse_enum(s, "similarity", names);
}

py::tuple knn(py::handle queries, py::handle gallery, Index k, const std::string& similarity, bool exclude_self,
              int threads) {
  nc::KnnOptions o;
  o.similarity = parse_similarity(similarity);
  o.exclude_self = exclude_self;
  o.threads = threads;
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

py::dict report_dict(nc::RetrievalReport& r, bool per_class, Kind kind) {
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
