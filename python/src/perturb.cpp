// ncml Python module: Perturbation (the paper's Algorithm 2) as a context manager that
// perturbs a NumPy array or torch tensor in place, and the two proxy losses.
#include <algorithm>
#include <cstdint>
#include <string>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>

#include <pybind11/pybind11.h>

#include <nc/loss.hpp>
#include <nc/perturb.hpp>

#include "arrays.hpp"
#include "bindings.hpp"
#if NCML_PY_WITH_CUDA
#include "cuda_tensors.hpp"
#endif

namespace ncml_py {
namespace {

#if NCML_PY_WITH_CUDA
/// A CUDA weight tensor perturbed on its device (nc::cuda::DevicePerturbationGuard on
/// torch's current stream, through cuda_bridge).
using DeviceGuard = std::unique_ptr<gpu::PerturbationGuard>;
#else
struct DeviceGuard {};  // this build has no GPU path
#endif

/// A weight matrix to be modified in place: a NumPy view of its memory and, for a torch
/// tensor, the detached tensor (which shares the original's storage and version counter).
struct Writable {
  py::array array;
  py::object tensor;  // None for NumPy input
};

Writable writable(py::handle obj) {
  Writable w;
  py::object base;
  if (is_torch_tensor(obj)) {
    w.tensor = cpu_tensor(obj, "W");
    const py::object torch = loaded_torch(), dtype = w.tensor.attr("dtype");
    if (!dtype.equal(torch.attr("float32")) && !dtype.equal(torch.attr("float64")))
      fail("W must be float32 or float64 to be perturbed in place, got " + describe(dtype));
    w.array = py::reinterpret_borrow<py::array>(w.tensor.attr("numpy")());
  } else {
    w.tensor = py::none();
    if (!py::isinstance<py::array>(obj))
      fail("W must be a NumPy array or a torch tensor (it is perturbed in place), got " +
           text(py::type::of(obj)));
    w.array = py::reinterpret_borrow<py::array>(obj);
    const py::dtype dt = w.array.dtype();
    if (dt.kind() != 'f' || (dt.itemsize() != 4 && dt.itemsize() != 8) || !dt.attr("isnative").cast<bool>())
      fail("W must be float32 or float64 to be perturbed in place, got dtype " + text(dt));
    if (!w.array.writeable()) fail("W is read-only; it must be writable to be perturbed in place");
  }
  const py::array& a = w.array;
  if (a.ndim() != 2) fail("W must be 2-D [classes, dim], got shape " + shape_string(a));
  if (!aligned(a)) fail("W is not aligned to its element size; it cannot be perturbed in place");
  // Positive strides, and no two elements at the same address.
  const int small = a.strides(0) < a.strides(1) ? 0 : 1, large = 1 - small;
  for (int k = 0; k < 2; ++k)
    if (a.shape(k) > 1 && (a.strides(k) <= 0 || a.strides(k) % a.itemsize() != 0))
      fail("W has strides " + std::to_string(a.strides(0)) + ", " + std::to_string(a.strides(1)) +
           "; in-place perturbation needs positive strides (make it contiguous first)");
  if (a.shape(0) > 1 && a.shape(1) > 1 && a.strides(small) * a.shape(small) > a.strides(large))
    fail("W has overlapping elements (strides " + std::to_string(a.strides(0)) + ", " +
         std::to_string(a.strides(1)) + "); it cannot be perturbed in place");
  return w;
}

/// Adds the step's noise to a matrix of any positive strides (a transposed or column-major
/// W) and writes the clean values back on restore() or destruction: the same values as
/// nc::PerturbationGuard, for layouts an Eigen::Ref<Matrix<T>> cannot bind.
template <class T>
class StridedGuard {
 public:
  using View = Eigen::Map<nc::Matrix<T>, 0, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;
  StridedGuard(View w, const nc::Matrix<T>& noise) : view_(w), clean_(w), active_(true) { view_ += noise; }
  StridedGuard(const StridedGuard&) = delete;
  StridedGuard& operator=(const StridedGuard&) = delete;
  ~StridedGuard() { restore(); }
  void restore() noexcept {
    if (active_) view_ = clean_;
    active_ = false;
  }
  const nc::Matrix<T>& clean() const { return clean_; }

 private:
  View view_;
  nc::Matrix<T> clean_;
  bool active_;
};

/// `with pert.perturb(W, step):` W holds clean + noise inside the block (the forward and
/// backward pass see the perturbed values, so the gradient is taken there) and exactly the
/// clean values after it, also when the block raises.
class PerturbationScope {
 public:
  PerturbationScope(const nc::Perturbation& p, py::object w, int64_t step) : pert_(p), w_(std::move(w)), step_(step) {
    pert_.sigma_at(step);  // validates the step now
  }

  py::object enter() {
    if (active()) fail("this perturbation scope is already active (nested 'with' on the same scope)");
#if NCML_PY_WITH_CUDA
    if (const auto dev = cuda::device_of({{w_, "W"}})) return enter_device(*dev);
#endif
    Writable w = writable(w_);
    const py::array& a = w.array;
    const Index rows = a.shape(0), cols = a.shape(1);
    const auto b = a.itemsize();
    const bool row_major = (cols <= 1 || a.strides(1) == b) && (rows <= 1 || a.strides(0) >= cols * b);
    const Index outer = rows > 1 ? a.strides(0) / b : cols;
    const Index s0 = a.strides(0) / b, s1 = a.strides(1) / b;
    auto apply = [&](auto tag) {
      using T = decltype(tag);
      T* data = static_cast<T*>(w.array.mutable_data());
      py::gil_scoped_release nogil;
      if (row_major) {
        Eigen::Map<nc::Matrix<T>, 0, Eigen::OuterStride<>> view(data, rows, cols, Eigen::OuterStride<>(outer));
        guard_.template emplace<nc::PerturbationGuard<T>>(pert_.perturb(view, step_));
      } else {
        const nc::Matrix<T> noise = pert_.template noise<T>(rows, cols, step_);  // validates first
        typename StridedGuard<T>::View view(data, rows, cols, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(s0, s1));
        guard_.template emplace<StridedGuard<T>>(view, noise);
      }
    };
    if (b == 8) apply(double());
    else apply(float());
    array_ = std::move(w.array);
    tensor_ = std::move(w.tensor);
    bump_version();
    return w_;
  }

  void restore() {
    if (!active()) return;
    guard_.emplace<std::monostate>();  // the guard's destructor writes the clean values back
    bump_version();
    array_ = py::array();
    tensor_ = py::none();
  }

  bool active() const { return !std::holds_alternative<std::monostate>(guard_); }

  /// The clean values saved on entry (a copy), while active: NumPy, or for a CUDA W a
  /// tensor on its device.
  py::object clean() const {
    if (!active()) fail("the perturbation scope is not active; W holds its clean values");
    return std::visit(
        [&](const auto& g) -> py::object {
          using G = std::decay_t<decltype(g)>;
          if constexpr (std::is_same<G, std::monostate>::value) {
            return py::none();
          } else if constexpr (std::is_same<G, DeviceGuard>::value) {
#if NCML_PY_WITH_CUDA
            const py::object out = tensor_.attr("new_empty")(tensor_.attr("shape"));  // contiguous
            g->copy_clean(reinterpret_cast<float*>(cuda::data_ptr(out)));
            return out;
#else
            return py::none();
#endif
          } else {
            return to_numpy(std::decay_t<decltype(g.clean())>(g.clean()));
          }
        },
        guard_);
  }

  const py::object& target() const { return w_; }
  int64_t step() const { return step_; }

 private:
#if NCML_PY_WITH_CUDA
  // A CUDA W: float32 with contiguous, evenly spaced rows (a Parameter, a row or column
  // block of one), perturbed in place on its device and on torch's current stream there,
  // without a host copy. The noise is the CPU's float32 noise (to one float ulp, see
  // nc/cuda/perturb.cuh); the clean values are restored bitwise, in stream order.
  py::object enter_device(const cuda::Device& dev) {
    py::object t = cuda::dense_tensor(w_, "W");
    const py::object dtype = t.attr("dtype");
    if (!dtype.equal(loaded_torch().attr("float32")))
      fail("W is a CUDA tensor of " + describe(dtype) +
           "; the GPU perturbation is float32 (keep the weights in float32, or perturb a CPU tensor)");
    if (t.attr("dim")().cast<int>() != 2) fail("W must be 2-D [classes, dim], got shape " + cuda::shape_of(t));
    const Index rows = cuda::size_of(t, 0), cols = cuda::size_of(t, 1);
    const Index s0 = cuda::stride_of(t, 0), s1 = cuda::stride_of(t, 1);
    const Index ld = rows > 1 ? s0 : cols;
    if ((cols > 1 && s1 != 1) || ld < cols)
      fail("W is a CUDA tensor with strides " + std::to_string(s0) + ", " + std::to_string(s1) +
           "; the GPU perturbation needs contiguous rows at a constant stride (W.contiguous(), or a "
           "row-major parameter)");
    float* data = reinterpret_cast<float*>(cuda::data_ptr(t));
    guard_.template emplace<DeviceGuard>(
        std::make_unique<gpu::PerturbationGuard>(dev.stream, data, ld, rows, cols, pert_, step_));
    tensor_ = std::move(t);
    bump_version();
    return w_;
  }
#endif

  // Writes through the NumPy view are invisible to autograd; an empty in-place op on the
  // tensor advances its version counter (shared with the original), so a graph built on the
  // other side of the change fails in backward() instead of using stale saved values.
  void bump_version() {
    if (tensor_.is_none()) return;
    tensor_.attr("__getitem__")(py::slice(0, 0, 1)).attr("mul_")(1);
  }

  nc::Perturbation pert_;
  py::object w_;
  int64_t step_;
  py::array array_;               // keeps W's memory alive while the guard holds it
  py::object tensor_ = py::none();
  std::variant<std::monostate, nc::PerturbationGuard<float>, nc::PerturbationGuard<double>, StridedGuard<float>,
               StridedGuard<double>, DeviceGuard>
      guard_;
};

nc::Schedule parse_schedule(const std::string& s) {
  static const std::pair<const char*, nc::Schedule> names[] = {
      {"constant", nc::Schedule::constant}, {"linear", nc::Schedule::linear}, {"cosine", nc::Schedule::cosine}};
  return parse_enum(s, "schedule", names);
}

const char* schedule_name(nc::Schedule s) {
  switch (s) {
    case nc::Schedule::constant: return "constant";
    case nc::Schedule::linear: return "linear";
    case nc::Schedule::cosine: return "cosine";
  }
  return "unknown";
}

py::array noise(const nc::Perturbation& p, Index rows, Index cols, int64_t step, const py::object& dtype) {
  const py::dtype dt = py::dtype::from_args(dtype);
  if (dt.kind() != 'f' || (dt.itemsize() != 4 && dt.itemsize() != 8))
    fail("dtype must be float32 or float64, got " + text(dt));
  if (dt.itemsize() == 8) {
    nc::MatrixD e = [&] {
      py::gil_scoped_release nogil;
      return p.noise<double>(rows, cols, step);
    }();
    return to_numpy(std::move(e));
  }
  nc::MatrixF e = [&] {
    py::gil_scoped_release nogil;
    return p.noise<float>(rows, cols, step);
  }();
  return to_numpy(std::move(e));
}

/// (loss, grad_embeddings, grad_weights) of a loss on embeddings [B, D], labels [B], W [C, D];
/// W is converted to the embeddings' dtype when they differ.
template <class F>
py::tuple loss(py::handle embeddings, py::handle labels, py::handle w, const char* w_name, F&& f) {
  const Rows x = as_rows(embeddings, "embeddings");
  const Labels y = as_labels(labels, "labels");
  const Rows wr = as_rows(w, w_name);
  return visit(x, [&](const auto& xm) {
    using T = typename std::decay_t<decltype(xm)>::Scalar;
    return visit(y, [&](auto yv) {
      return visit(wr, [&](const auto& wm) {
        nc::LossResultT<T> r = [&] {
          py::gil_scoped_release nogil;
          return f(xm, yv, wm.template cast<T>());
        }();
        return py::make_tuple(r.loss, result(std::move(r.grad_embeddings), x.kind),
                              result(std::move(r.grad_weights), x.kind));
      });
    });
  });
}

}  // namespace

void bind_perturb(py::module_& m) {
  py::class_<PerturbationScope>(m, "PerturbationScope",
                                "Returned by Perturbation.perturb(W, step); use it in a 'with' statement.")
      .def("__enter__", &PerturbationScope::enter,
           "Adds the step's noise to W in place and returns W.")
      .def(
          "__exit__",
          [](PerturbationScope& s, const py::args&) {
            s.restore();
            return false;
          },
          "Writes W's clean values back (bitwise).")
      .def("restore", &PerturbationScope::restore, "Writes the clean values back now (idempotent).")
      .def_property_readonly("active", &PerturbationScope::active)
      .def_property_readonly("step", &PerturbationScope::step)
      .def_property_readonly("W", &PerturbationScope::target)
      .def("clean", &PerturbationScope::clean,
           "A copy of the clean values saved on entry, while active (NumPy; a tensor on W's device for a\n"
           "CUDA W).");

  py::class_<nc::Perturbation>(m, "Perturbation", R"doc(
Perturbation injection (the paper's Algorithm 2): fresh Gaussian noise on the proxies at
every step, the loss and gradient taken at the perturbed point, the clean weights updated.

    pert = ncml.Perturbation(sigma=1e-2, seed=0)
    for step, (x, y) in enumerate(loader):
        with pert.perturb(proxies, step):      # proxies: torch Parameter / NumPy array, in place
            loss = criterion(model(x), y, proxies)
            optimizer.zero_grad()
            loss.backward()                    # gradient at clean + noise
        optimizer.step()                       # updates the clean values

The noise is a pure function of (seed, step, row, column): noise(rows, cols, step) returns it.
Call backward() inside the block: a backward() after it raises torch's in-place
modification error (the version counter is advanced on entry and exit).)doc")
      .def(py::init([](double sigma, const std::string& schedule, int64_t total_steps, uint64_t seed, int threads) {
             nc::PerturbOptions o;
             o.sigma = sigma;
             o.schedule = parse_schedule(schedule);
             o.total_steps = total_steps;
             o.seed = seed;
             o.threads = threads;
             return nc::Perturbation(o);
           }),
           py::arg("sigma") = 0.0, py::kw_only(), py::arg("schedule") = "constant", py::arg("total_steps") = 0,
           py::arg("seed") = 0, py::arg("threads") = 0,
           "sigma: noise standard deviation; schedule 'constant', 'linear' (sigma (1 - t/T)) or 'cosine'\n"
           "(sigma (1 + cos(pi t/T)) / 2), zero after total_steps T.")
      .def("sigma_at", &nc::Perturbation::sigma_at, py::arg("step"), "Noise standard deviation at `step`.")
      .def("noise", &noise, py::arg("rows"), py::arg("cols"), py::arg("step"), py::arg("dtype") = "float32",
           "The noise [rows, cols] that perturb() adds at `step` (NumPy, float32 or float64).")
      .def(
          "perturb",
          [](const nc::Perturbation& p, py::object w, int64_t step) {
            return std::make_unique<PerturbationScope>(p, std::move(w), step);
          },
          py::arg("W"), py::arg("step"),
          "A context manager that perturbs W [C, D] (float32/float64 NumPy array or CPU tensor, any\n"
          "positive strides; or, when ncml is built with CUDA, a float32 CUDA tensor with contiguous\n"
          "rows, on its device) in place for the duration of the 'with' block.")
      .def_property_readonly("sigma", [](const nc::Perturbation& p) { return p.options().sigma; })
      .def_property_readonly("schedule", [](const nc::Perturbation& p) { return schedule_name(p.options().schedule); })
      .def_property_readonly("total_steps", [](const nc::Perturbation& p) { return p.options().total_steps; })
      .def_property_readonly("seed", [](const nc::Perturbation& p) { return p.options().seed; })
      .def("__repr__", [](const nc::Perturbation& p) {
        return "ncml.Perturbation(sigma=" + text(py::float_(p.options().sigma)) + ", schedule='" +
               schedule_name(p.options().schedule) + "', total_steps=" + std::to_string(p.options().total_steps) +
               ", seed=" + std::to_string(p.options().seed) + ")";
      });

  m.def(
      "proxy_anchor_loss",
      [](py::handle x, py::handle y, py::handle p, double alpha, double delta) {
        const CallName call("proxy_anchor_loss");
        return loss(x, y, p, "P", [&](const auto& xm, auto yv, const auto& pm) {
          return nc::proxy_anchor_loss(xm, yv, pm, alpha, delta);
        });
      },
      py::arg("embeddings"), py::arg("labels"), py::arg("P"), py::arg("alpha") = 32.0, py::arg("delta") = 0.1,
      "Proxy-Anchor loss (Kim et al. 2020, the reference code's normalization) and its analytic\n"
      "gradients: (loss, grad_embeddings [B, D], grad_P [C, D]).");
  m.def(
      "norm_softmax_loss",
      [](py::handle x, py::handle y, py::handle w, double tau) {
        const CallName call("norm_softmax_loss");
        return loss(x, y, w, "W", [&](const auto& xm, auto yv, const auto& wm) {
          return nc::norm_softmax_loss(xm, yv, wm, tau);
        });
      },
      py::arg("embeddings"), py::arg("labels"), py::arg("W"), py::arg("tau") = 0.05,
      "Norm-Softmax loss (Zhai & Wu 2019) and its analytic gradients: (loss, grad_embeddings,\n"
      "grad_W).");
}

}  // namespace ncml_py
