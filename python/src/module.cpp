// ncml Python module: `import ncml`. The components are bound in stats.cpp, head.cpp,
// perturb.cpp and retrieval.cpp; this file defines the module, its error translation and
// the debugging helper _data_pointer.
#include <cstdint>
#include <exception>
#include <string>

#include <pybind11/pybind11.h>

#include <nc/core/error.hpp>

#include "arrays.hpp"
#include "bindings.hpp"
#if NCML_PY_WITH_CUDA
#include "cuda_tensors.hpp"
#endif

#ifndef NCML_VERSION
#error "NCML_VERSION must be defined by the build (python/CMakeLists.txt)"
#endif

namespace py = pybind11;

PYBIND11_MODULE(ncml, m) {
  m.doc() =
      "Neural-Collapse-informed metric learning (ncml): NC-Init heads, perturbation injection,\n"
      "NC metrics and exact retrieval evaluation on NumPy arrays and torch tensors (CUDA tensors\n"
      "on the GPU when with_cuda is True). Inputs are read without a copy when their dtype and\n"
      "layout allow; results follow the kind of the main input (NumPy in, NumPy out; torch in,\n"
      "torch out on the same device). Invalid input raises ValueError with the library's\n"
      "message. See docs/python.md.";
  m.attr("__version__") = NCML_VERSION;
#if NCML_PY_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
#if defined(_OPENMP)
  m.attr("with_openmp") = true;
#else
  m.attr("with_openmp") = false;
#endif

  // nc::error derives from std::invalid_argument (ValueError already); the translator makes
  // the mapping explicit and independent of pybind11's defaults.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const nc::error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const nc::cuda_error& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });

  ncml_py::bind_stats(m);
  ncml_py::bind_head(m);
  ncml_py::bind_perturb(m);
  ncml_py::bind_retrieval(m);

  m.def(
      "_data_pointer",
      [](py::handle obj, const std::string& role) -> std::uintptr_t {
#if NCML_PY_WITH_CUDA
        // A CUDA tensor: the device address the GPU path reads (data_ptr() unless converted).
        if (ncml_py::cuda::is_cuda_tensor(obj)) {
          namespace cuda = ncml_py::cuda;
          if (role == "features") return reinterpret_cast<std::uintptr_t>(cuda::device_rows(obj, "features").rows.data);
          if (role == "labels")
            return reinterpret_cast<std::uintptr_t>(cuda::device_labels(obj, "labels", -1).labels.data);
        }
#endif
        if (role == "features") return reinterpret_cast<std::uintptr_t>(ncml_py::as_rows(obj, "features").data);
        if (role == "labels") return reinterpret_cast<std::uintptr_t>(ncml_py::as_labels(obj, "labels").data);
        ncml_py::fail("role must be 'features' or 'labels', got '" + role + "'");
      },
      py::arg("array"), py::arg("role") = "features",
      "Debugging aid: the address of the memory the C++ side reads for `array` passed as\n"
      "features (or labels). Equal to the input's own address (tensor.data_ptr(),\n"
      "array.ctypes.data) exactly when the call makes no copy of it; for a CUDA tensor, the\n"
      "device address the GPU path reads.");
}
