// ncml Python module: torch CUDA tensors as the device pointers of the GPU path
// (cuda_bridge.hpp). Only in CUDA builds of the module (NCML_PY_WITH_CUDA=1).
//
// A call whose array arguments include a CUDA tensor runs on that tensor's device and on
// torch's current stream there; every other array argument must be a CUDA tensor on the
// same device. Features are read in place when they are float32 with contiguous, evenly
// spaced rows (the layouts read in place on the CPU); other real dtypes are converted with
// tensor.to(torch.float32) and other layouts with tensor.contiguous(), on the device (the GPU
// path computes in float32). Labels are read in place when int32/int64 with unit stride.
// Results are torch tensors allocated on the same device, written there by the GPU.
#pragma once

#if !NCML_PY_WITH_CUDA
#error "cuda_tensors.hpp is for CUDA builds of the module (NCML_PY_WITH_CUDA=1)"
#endif

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>

#include <pybind11/pybind11.h>

#include <nc/core/check.hpp>
#include <nc/core/error.hpp>

#include "arrays.hpp"
#include "cuda_bridge.hpp"

namespace ncml_py::cuda {

inline bool is_cuda_tensor(py::handle obj) {
  return is_torch_tensor(obj) && text(obj.attr("device").attr("type")) == "cuda";
}

/// The device a call runs on: torch's device object, and its index with torch's current
/// stream there (torch.cuda.current_stream(device).cuda_stream).
struct Device {
  py::object device;
  gpu::Stream stream;
};

/// "cpu", "cuda:1", or "the CPU (a numpy.ndarray)", for messages about mixed devices.
inline std::string placement(py::handle obj) {
  if (is_torch_tensor(obj)) return text(obj.attr("device"));
  const py::handle type = py::type::of(obj);
  const std::string module = py::str(type.attr("__module__")).cast<std::string>();
  const std::string name = py::str(type.attr("__qualname__")).cast<std::string>();
  return "the CPU (a " + (module == "builtins" ? name : module + "." + name) + ")";
}

/// The CUDA device of a call's array arguments ({object, argument name}, None skipped), or
/// nothing when none of them is a CUDA tensor (the call takes the CPU path). A CUDA tensor
/// next to a CPU array, or tensors on two CUDA devices, raise ValueError naming both.
inline std::optional<Device> device_of(std::initializer_list<std::pair<py::handle, const char*>> args) {
  const std::pair<py::handle, const char*>* first = nullptr;
  for (const auto& a : args)
    if (!a.first.is_none() && is_cuda_tensor(a.first)) {
      first = &a;
      break;
    }
  if (!first) return std::nullopt;
  const py::object device = first->first.attr("device");
  const std::string where = text(device);
  for (const auto& a : args) {
    if (&a == first || a.first.is_none()) continue;
    if (!is_cuda_tensor(a.first) || !py::object(a.first.attr("device")).equal(device))
      fail(std::string(a.second) + " is on " + placement(a.first) + " but " + first->second + " is on " + where +
           "; pass both on one device (" + a.second + ".to(" + first->second + ".device))");
  }
  const py::object torch_cuda = loaded_torch().attr("cuda");
  if (!torch_cuda.attr("is_available")().cast<bool>())
    fail(std::string(first->second) + " is a CUDA tensor (" + where +
         ") but torch.cuda.is_available() is False; pass " + first->second + ".cpu()");
  Device d;
  d.device = device;
  d.stream.device = device.attr("index").cast<int>();
  d.stream.handle = torch_cuda.attr("current_stream")(device).attr("cuda_stream").cast<std::uintptr_t>();
  return d;
}

inline std::string shape_of(const py::object& t) {
  const py::tuple shape(t.attr("shape"));
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + text(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

inline Index size_of(const py::object& t, int dim) { return t.attr("size")(dim).cast<Index>(); }
inline Index stride_of(const py::object& t, int dim) { return t.attr("stride")(dim).cast<Index>(); }
inline std::uintptr_t data_ptr(const py::object& t) { return t.attr("data_ptr")().cast<std::uintptr_t>(); }

/// The detached tensor behind `obj`, checked to be dense and real.
inline py::object dense_tensor(py::handle obj, const std::string& name) {
  py::object t = obj.attr("detach")();
  if (!t.attr("layout").equal(loaded_torch().attr("strided")))
    fail(name + " is a " + text(t.attr("layout")) + " tensor; pass a dense one (" + name + ".to_dense())");
  if (t.attr("is_complex")().cast<bool>())
    fail(name + " is complex (" + describe(t.attr("dtype")) + "); ncml needs real numbers");
  return t;
}

/// A features argument [N, D] on the device as float32 rows at a constant stride.
struct DeviceRows {
  py::object tensor;  // the input, or its float32 / contiguous copy on the device (kept alive)
  gpu::Rows rows;
  bool is_double = false;  // the input was float64 (results given back in float64)
};

inline DeviceRows device_rows(py::handle obj, const std::string& name) {
  const py::object torch = loaded_torch();
  py::object t = dense_tensor(obj, name);
  DeviceRows r;
  const py::object dtype = t.attr("dtype");
  r.is_double = dtype.equal(torch.attr("float64"));
  if (!dtype.equal(torch.attr("float32"))) t = t.attr("to")(torch.attr("float32"));
  if (t.attr("dim")().cast<int>() != 2) fail(name + " must be 2-D [rows, dim], got shape " + shape_of(t));
  const Index rows = size_of(t, 0), cols = size_of(t, 1);
  if (rows == 0 || cols == 0)
    fail(name + " is empty (" + std::to_string(rows) + " x " + std::to_string(cols) + ")");
  Index ld = rows > 1 ? stride_of(t, 0) : cols;
  if ((cols > 1 && stride_of(t, 1) != 1) || ld < cols) {
    t = t.attr("contiguous")();
    ld = cols;
  }
  r.rows.data = reinterpret_cast<const float*>(data_ptr(t));
  r.rows.rows = rows;
  r.rows.cols = cols;
  r.rows.ld = ld;
  r.tensor = std::move(t);
  return r;
}

/// A labels argument [N] on the device: int32/int64 with unit stride. `rows` (>= 0) is the
/// number of feature rows the labels must match.
struct DeviceLabels {
  py::object tensor;
  gpu::Labels labels;
};

inline DeviceLabels device_labels(py::handle obj, const std::string& name, Index rows) {
  const py::object torch = loaded_torch();
  py::object t = dense_tensor(obj, name);
  const py::object dtype = t.attr("dtype");
  if (t.attr("is_floating_point")().cast<bool>())
    fail(name + " must hold integer class labels, got " + describe(dtype));
  const bool i32 = dtype.equal(torch.attr("int32"));
  if (!i32 && !dtype.equal(torch.attr("int64"))) t = t.attr("to")(torch.attr("int64"));
  const int dim = t.attr("dim")().cast<int>();
  if (dim != 1)
    fail(name + " must be 1-D [rows], got shape " + shape_of(t) +
         (dim == 2 ? " (flatten it with .ravel() / .reshape(-1))" : ""));
  const Index n = size_of(t, 0);
  if (rows >= 0 && n != rows)
    fail(name + " has " + std::to_string(n) + " entries, expected " + std::to_string(rows) + " (one per row)");
  if (n > 1 && stride_of(t, 0) != 1) t = t.attr("contiguous")();
  DeviceLabels l;
  l.labels.data = reinterpret_cast<const void*>(data_ptr(t));
  l.labels.is_int64 = !i32;
  l.labels.size = n;
  l.tensor = std::move(t);
  return l;
}

/// num_classes, or max(label) + 1 for -1 (one value read back from the device), with the
/// CPU's checks; negative and out-of-range labels are reported by the device checks.
inline Index resolve_num_classes(const DeviceLabels& y, Index num_classes, const char* name) {
  NC_EXPECTS(num_classes == -1 || num_classes > 0, "num_classes must be positive or -1 (infer), got " << num_classes);
  if (num_classes != -1) return num_classes;
  const Index max_label = y.tensor.attr("max")().attr("item")().cast<Index>();
  nc::detail::check_inferred_classes(max_label, y.labels.size, name);
  return std::max<Index>(1, max_label + 1);
}

/// An uninitialized tensor [rows, cols] of torch dtype `dtype` ("float32", ...) on the device.
inline py::object empty(const Device& d, Index rows, Index cols, const char* dtype) {
  const py::object torch = loaded_torch();
  return torch.attr("empty")(py::make_tuple(rows, cols), py::arg("dtype") = torch.attr(dtype),
                             py::arg("device") = d.device);
}

/// A host array as a tensor on the device (one small copy: heads, per-class reports).
inline py::object to_device(py::array a, const Device& d) {
  return loaded_torch().attr("from_numpy")(std::move(a)).attr("to")(d.device);
}

}  // namespace ncml_py::cuda
