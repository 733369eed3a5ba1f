// ncml Python module: nc_directions, init_head, DriftTracker.
#include <cstdint>
#include <string>
#include <utility>

#include <pybind11/pybind11.h>

#include <nc/directions.hpp>
#include <nc/drift.hpp>
#include <nc/head.hpp>

#include "arrays.hpp"
#include "bindings.hpp"
#if NCML_PY_WITH_CUDA
#include "cuda_tensors.hpp"
#endif

namespace ncml_py {
namespace {

#if NCML_PY_WITH_CUDA
// The GPU path: directions computed on the CUDA tensors' device into a tensor there.

py::object gpu_nc_directions(const cuda::Device& dev, py::handle features, py::handle labels,
                             const nc::DirectionOptions& o) {
  const cuda::DeviceRows x = cuda::device_rows(features, "features");
  const cuda::DeviceLabels y = cuda::device_labels(labels, "labels", x.rows.rows);
  const Index c = cuda::resolve_num_classes(y, o.num_classes, "labels");
  py::object out = cuda::empty(dev, c, x.rows.cols, "float32");
  float* d_out = reinterpret_cast<float*>(cuda::data_ptr(out));
  {
    py::gil_scoped_release nogil;
    gpu::nc_directions(dev.stream, x.rows, y.labels, c, o.method, o.unweighted_global_mean, d_out);
  }
  // Computed in float32; given back in the features' dtype, as on the CPU.
  if (x.is_double) out = out.attr("to")(loaded_torch().attr("float64"));
  return out;
}

// init_head of CUDA tensors: the directions on the GPU, then the head assembled from them
// on the host exactly as nc::init_head does (ETF alignment, scale; [C, D] values), and
// copied to the device. The data-free methods only validate the data there.
py::object gpu_init_head(const cuda::Device& dev, py::handle features, py::handle labels, const nc::HeadOptions& o) {
  nc::detail::check_head_options(o);
  const cuda::DeviceRows x = cuda::device_rows(features, "features");
  const cuda::DeviceLabels y = cuda::device_labels(labels, "labels", x.rows.rows);
  const Index c = cuda::resolve_num_classes(y, o.num_classes, "labels");
  const Index d = x.rows.cols;
  nc::MatrixD w;
  if (nc::head_needs_data(o.method)) {
    if (o.method == nc::HeadInit::aligned_etf) nc::detail::check_etf_shape(c, d, o.method);
    const nc::Direction method = o.method == nc::HeadInit::class_mean      ? nc::Direction::mean
                                 : o.method == nc::HeadInit::centered_mean ? nc::Direction::centered_mean
                                                                           : nc::Direction::pc1;
    const py::object dirs = cuda::empty(dev, c, d, "float32");
    float* d_dirs = reinterpret_cast<float*>(cuda::data_ptr(dirs));
    {
      py::gil_scoped_release nogil;
      gpu::nc_directions(dev.stream, x.rows, y.labels, c, method, false, d_dirs);
    }
    const py::array host = dirs.attr("cpu")().attr("numpy")();
    w = Eigen::Map<const nc::MatrixF>(static_cast<const float*>(host.data()), c, d).cast<double>();
    if (o.method == nc::HeadInit::aligned_etf) w = nc::detail::align_etf(w, d);
  } else {
    {
      py::gil_scoped_release nogil;
      gpu::class_stats(dev.stream, x.rows, y.labels, c, false);  // the CPU's checks of the data
    }
    w = nc::detail::data_free_head(c, d, o);
  }
  return cuda::to_device(to_numpy(nc::detail::scaled_head(w, o.scale)), dev);
}
#endif

nc::HeadInit parse_head(const std::string& method) {
  static const std::pair<const char*, nc::HeadInit> names[] = {
      {"nc_pc1", nc::HeadInit::nc_pc1},           {"class_mean", nc::HeadInit::class_mean},
      {"centered_mean", nc::HeadInit::centered_mean}, {"simplex_etf", nc::HeadInit::simplex_etf},
      {"aligned_etf", nc::HeadInit::aligned_etf}, {"kaiming_normal", nc::HeadInit::kaiming_normal},
      {"xavier_uniform", nc::HeadInit::xavier_uniform}};
  return parse_enum(method, "method", names);
}

py::object nc_directions(py::handle features, py::handle labels, const std::string& method, py::object num_classes,
                         bool unweighted, int threads) {
  static const std::pair<const char*, nc::Direction> names[] = {
      {"pc1", nc::Direction::pc1}, {"mean", nc::Direction::mean}, {"centered_mean", nc::Direction::centered_mean}};
  nc::DirectionOptions o;
  o.method = parse_enum(method, "method", names);
  o.num_classes = optional_count(num_classes);
  o.unweighted_global_mean = unweighted;
  o.threads = threads;
#if NCML_PY_WITH_CUDA
  if (const auto dev = cuda::device_of({{features, "features"}, {labels, "labels"}}))
    return gpu_nc_directions(*dev, features, labels, o);
#endif
  const Rows x = as_rows(features, "features");
  const Labels y = as_labels(labels, "labels");
  return visit(x, [&](const auto& xm) {
    return visit(y, [&](auto yv) {
      auto dirs = [&] {
        py::gil_scoped_release nogil;
        return nc::nc_directions(xm, yv, o);
      }();
      return result(std::move(dirs), x.kind);
    });
  });
}

py::object init_head(py::handle features, py::handle labels, const std::string& method, double scale, uint64_t seed,
                     py::object num_classes, int threads) {
  nc::HeadOptions o;
  o.method = parse_head(method);
  o.scale = scale;
  o.seed = seed;
  o.num_classes = optional_count(num_classes);
  o.threads = threads;
#if NCML_PY_WITH_CUDA
  if (const auto dev = cuda::device_of({{features, "features"}, {labels, "labels"}}))
    return gpu_init_head(*dev, features, labels, o);
#endif
  const Rows x = as_rows(features, "features");
  const Labels y = as_labels(labels, "labels");
  nc::MatrixF w = visit(x, [&](const auto& xm) {
    return visit(y, [&](auto yv) {
      py::gil_scoped_release nogil;
      return nc::init_head(xm, yv, o);
    });
  });
  return result(std::move(w), x.kind);
}

py::object init_head_data_free(Index num_classes, Index dim, const std::string& method, double scale, uint64_t seed) {
  nc::HeadOptions o;
  o.method = parse_head(method);
  o.scale = scale;
  o.seed = seed;
  nc::MatrixF w = [&] {
    py::gil_scoped_release nogil;
    return nc::init_head(num_classes, dim, o);
  }();
  return to_numpy(std::move(w));
}

/// A copy of a 2-D real input as a float32 matrix (the DriftTracker's argument type).
nc::MatrixF matrix_f(py::handle obj, const std::string& name) {
  const CallName call("DriftTracker");
  const Rows x = as_rows(obj, name);
  return visit(x, [](const auto& m) { return nc::MatrixF(m.template cast<float>()); });
}

}  // namespace

void bind_head(py::module_& m) {
  m.def("nc_directions", &nc_directions, py::arg("features"), py::arg("labels"), py::arg("method") = "pc1",
        py::arg("num_classes") = py::none(), py::kw_only(), py::arg("unweighted_global_mean") = false,
        py::arg("threads") = 0,
        "NC directions [C, D] (unit rows, the features' dtype) of features [N, D] grouped by labels [N]:\n"
        "'pc1' (the paper's NC-Init: first principal direction of the uncentred class rows, signed\n"
        "towards the class mean), 'mean' or 'centered_mean'. Every class needs a sample.");

  m.def("init_head", &init_head_data_free, py::arg("num_classes"), py::arg("dim"), py::arg("method"),
        py::arg("scale") = 1.0, py::arg("seed") = 0,
        "init_head(num_classes, dim, method, scale=1.0, seed=0): a data-free head [C, D] (NumPy\n"
        "float32): 'simplex_etf', 'kaiming_normal' (N(0, 2/C), as torch's kaiming_normal_ with\n"
        "mode='fan_out'), 'xavier_uniform'.");
  m.def("init_head", &init_head, py::arg("features"), py::arg("labels"), py::arg("method") = "nc_pc1",
        py::arg("scale") = 1.0, py::arg("seed") = 0, py::arg("num_classes") = py::none(), py::kw_only(),
        py::arg("threads") = 0,
        "init_head(features, labels, method='nc_pc1', scale=1.0, seed=0, num_classes=None): a head\n"
        "[C, D] (float32, the kind of `features`) from features [N, D] and labels [N]. Methods:\n"
        "'nc_pc1' (NC-Init, default), 'class_mean', 'centered_mean', 'aligned_etf', and the data-free\n"
        "'simplex_etf', 'kaiming_normal', 'xavier_uniform'. Rows of unit-row methods have norm `scale`.");

  py::class_<nc::DriftTracker>(m, "DriftTracker", R"doc(
Distance of a head from reference directions (the paper's drift D).

    drift = ncml.DriftTracker(ncml.nc_directions(E0, y))   # reference [C, D]
    drift.update(W)                                        # after each step or epoch
    drift.mean_squared_distance()                          # (1/C) sum ||w_c/|w_c| - v_c||^2

Inputs are copied to float32 (the head is small); results are floats and NumPy arrays.)doc")
      .def(py::init([](py::handle reference) { return nc::DriftTracker(matrix_f(reference, "reference")); }),
           py::arg("reference"))
      .def("update", [](nc::DriftTracker& d, py::handle w) { d.update(matrix_f(w, "W")); }, py::arg("W"),
           "Records the head W [C, D].")
      .def("mean_squared_distance", &nc::DriftTracker::mean_squared_distance,
           "The paper's D for the latest head, in [0, 4].")
      .def("per_class", [](const nc::DriftTracker& d) { return to_numpy(d.per_class()); },
           "Squared distance per class [C].")
      .def("from_initial", &nc::DriftTracker::from_initial, "||W_t - W_0||_F / ||W_0||_F.")
      .def("path_length", &nc::DriftTracker::path_length, "sum_t ||W_{t+1} - W_t||_F.")
      .def_property_readonly("num_updates", &nc::DriftTracker::num_updates)
      .def("reference", [](const nc::DriftTracker& d) { return to_numpy(nc::MatrixD(d.reference())); },
           "The unit reference directions [C, D] (float64).");
}

}  // namespace ncml_py
