// ncml Python module: NumPy arrays and torch tensors as Eigen views, results as arrays.
//
// Inputs are read in place when their dtype and layout allow it: float32/float64 features
// whose rows are contiguous (C order, or rows at a constant stride: a column slice, a row
// slice, a torch view) and int32/int64 labels with unit stride. A CPU torch tensor is read
// through tensor.detach().numpy(), which shares its memory. Anything else is converted once
// (documented in docs/python.md): other real dtypes to float64 (float16 and bfloat16 to
// float32), other integer label dtypes to int64, other layouts to C order.
//
// Results follow the kind of the main input: NumPy in, NumPy out; torch in, torch out
// (torch.from_numpy over the result, no copy). CUDA tensors take the GPU path in CUDA builds
// (cuda_tensors.hpp) before anything here reads them; without CUDA they raise.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <nc/core/types.hpp>

namespace ncml_py {

namespace py = pybind11;
using nc::Index;

/// Raises ValueError("ncml: <msg>"), the form of nc::error messages.
[[noreturn]] inline void fail(const std::string& msg) { throw py::value_error("ncml: " + msg); }

/// Where an input came from, and so what kind of array a result is returned as.
enum class Kind { numpy, torch };

/// The torch module when the program has imported it (no tensor can exist otherwise).
inline py::object loaded_torch() {
  py::dict modules = py::module_::import("sys").attr("modules");
  if (!modules.contains("torch")) return py::none();
  return modules["torch"];
}

inline bool is_torch_tensor(py::handle obj) {
  const py::object torch = loaded_torch();
  return !torch.is_none() && py::isinstance(obj, torch.attr("Tensor"));
}

/// str(obj) and repr(obj) as C++ strings.
inline std::string text(py::handle obj) { return py::str(obj).cast<std::string>(); }
inline std::string describe(py::handle obj) { return py::repr(obj).cast<std::string>(); }

inline std::string shape_string(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

/// The binding being run, named in the error a CUDA tensor gets from a call without a GPU
/// path (CUDA builds route the other calls to the GPU before reading any array).
inline const char*& current_call() {
  thread_local const char* name = nullptr;
  return name;
}

/// Names the binding for the scope of one call: `const CallName call("nc4");`.
class CallName {
 public:
  explicit CallName(const char* name) : previous_(current_call()) { current_call() = name; }
  CallName(const CallName&) = delete;
  CallName& operator=(const CallName&) = delete;
  ~CallName() { current_call() = previous_; }

 private:
  const char* previous_;
};

/// The detached CPU tensor behind `obj`, checked to be a dense CPU tensor.
inline py::object cpu_tensor(py::handle obj, const std::string& name) {
  py::object t = obj.attr("detach")();
  const std::string device = text(t.attr("device"));
  const std::string type = text(t.attr("device").attr("type"));
#if NCML_PY_WITH_CUDA
  if (type == "cuda") {
    const char* call = current_call();
    fail(name + " is a CUDA tensor (" + device + ") but " + (call ? "ncml." + std::string(call) : "this call") +
         " has no GPU path; pass " + name + ".cpu()");
  }
#else
  if (type == "cuda")
    fail(name + " is a CUDA tensor (" + device +
         ") but this ncml module was built without CUDA; pass " + name + ".cpu()");
#endif
  if (type != "cpu") fail(name + " is a tensor on device " + device + "; ncml reads CPU tensors");
  if (!t.attr("layout").equal(loaded_torch().attr("strided")))
    fail(name + " is a " + text(t.attr("layout")) +
         " tensor; pass a dense one (" + name + ".to_dense())");
  return t;
}

/// Raw view of a NumPy array's memory (kept alive by `array`).
struct Buffer {
  py::array array;
  Kind kind = Kind::numpy;
};

enum class Role { features, labels };

/// `a` converted to T (native byte order) with the given layout flags: one copy.
template <class T, int Flags = py::array::forcecast>
py::array converted(const py::array& a, const std::string& name) {
  py::array out = py::array_t<T, Flags>::ensure(a);
  if (!out) fail(name + " cannot be converted to " + text(py::dtype::of<T>()));
  return out;
}

/// `obj` as a NumPy array (sharing memory where possible) of a dtype the C++ side reads
/// directly: float32/float64 for features, int32/int64 for labels. Converts other dtypes.
inline Buffer as_buffer(py::handle obj, const std::string& name, Role role) {
  Buffer b;
  if (is_torch_tensor(obj)) {
    b.kind = Kind::torch;
    py::object torch = loaded_torch();
    py::object t = cpu_tensor(obj, name);
    const py::object dtype = t.attr("dtype");
    if (t.attr("is_complex")().cast<bool>()) fail(name + " is complex (" + describe(dtype) + "); ncml needs real numbers");
    const bool floating = t.attr("is_floating_point")().cast<bool>();
    if (role == Role::features) {
      if (!dtype.equal(torch.attr("float32")) && !dtype.equal(torch.attr("float64")))
        t = t.attr("to")(floating ? torch.attr("float32") : torch.attr("float64"));
    } else {
      if (floating) fail(name + " must hold integer class labels, got " + describe(dtype));
      if (!dtype.equal(torch.attr("int32")) && !dtype.equal(torch.attr("int64"))) t = t.attr("to")(torch.attr("int64"));
    }
    b.array = py::reinterpret_borrow<py::array>(t.attr("numpy")());
    return b;
  }
  if (obj.is_none()) fail(name + " is None; expected a NumPy array or a torch tensor");
  b.array = py::array::ensure(obj);
  if (!b.array) fail(name + " cannot be read as an array: " + describe(obj));
  const py::dtype dt = b.array.dtype();
  const char kind = dt.kind();
  const auto size = b.array.itemsize();
  const bool native = dt.attr("isnative").cast<bool>();
  const std::string dtype_name = text(dt);
  if (role == Role::features) {
    if (kind == 'f' && size == 4) {
      if (!native) b.array = converted<float>(b.array, name);
    } else if (kind == 'f' && size == 2) {
      b.array = converted<float>(b.array, name);  // float16: exact in float32
    } else if (kind == 'f' || kind == 'b' || kind == 'i' || kind == 'u') {
      if (!(kind == 'f' && size == 8 && native)) b.array = converted<double>(b.array, name);
    } else {
      fail(name + " must hold real numbers (float32 or float64), got dtype " + dtype_name);
    }
  } else {
    if (kind == 'i' && size == 4) {
      if (!native) b.array = converted<int32_t>(b.array, name);
    } else if (kind == 'b' || kind == 'i' || kind == 'u') {
      if (!(kind == 'i' && size == 8 && native)) b.array = converted<int64_t>(b.array, name);
    } else {
      fail(name + " must hold integer class labels, got dtype " + dtype_name);
    }
  }
  return b;
}

inline bool aligned(const py::array& a) {
  return reinterpret_cast<std::uintptr_t>(a.data()) % static_cast<std::uintptr_t>(a.itemsize()) == 0;
}

/// A 2-D float32 or float64 input as the C++ side reads it: rows at a constant stride.
struct Rows {
  py::array array;  // keeps the memory alive
  Kind kind = Kind::numpy;
  bool is_double = false;
  const void* data = nullptr;
  Index rows = 0, cols = 0, stride = 0;  // stride in elements

  template <class T>
  Eigen::Map<const nc::Matrix<T>, 0, Eigen::OuterStride<>> map() const {
    return {static_cast<const T*>(data), rows, cols, Eigen::OuterStride<>(stride)};
  }
};

/// True when the 2-D array's rows are contiguous and evenly spaced (readable in place).
inline bool row_strided(const py::array& a) {
  const auto b = a.itemsize();
  const auto rows = a.shape(0), cols = a.shape(1);
  if (!aligned(a)) return false;
  if (cols > 1 && a.strides(1) != b) return false;
  if (rows > 1 && (a.strides(0) % b != 0 || a.strides(0) < cols * b)) return false;
  return true;
}

template <class T>
Rows make_rows(py::array a, Kind kind) {
  Rows r;
  r.kind = kind;
  r.is_double = std::is_same<T, double>::value;
  r.rows = a.shape(0);
  r.cols = a.shape(1);
  r.stride = r.rows > 1 ? a.strides(0) / a.itemsize() : r.cols;
  r.data = a.data();
  r.array = std::move(a);
  return r;
}

/// A features argument [N, D]: float32/float64, read in place when its rows are contiguous.
inline Rows as_rows(py::handle obj, const std::string& name) {
  Buffer b = as_buffer(obj, name, Role::features);
  if (b.array.ndim() != 2)
    fail(name + " must be 2-D [rows, dim], got shape " + shape_string(b.array));
  const bool f64 = b.array.itemsize() == 8;
  constexpr int c_order = py::array::c_style | py::array::forcecast;
  if (!row_strided(b.array))
    b.array = f64 ? converted<double, c_order>(b.array, name) : converted<float, c_order>(b.array, name);
  return f64 ? make_rows<double>(std::move(b.array), b.kind) : make_rows<float>(std::move(b.array), b.kind);
}

/// A labels argument [N]: int32/int64, read in place when contiguous.
struct Labels {
  py::array array;
  Kind kind = Kind::numpy;
  bool is_int64 = false;
  const void* data = nullptr;
  Index size = 0;

  template <class L>
  nc::LabelView<L> view() const {
    return {static_cast<const L*>(data), size};
  }
};

inline Labels as_labels(py::handle obj, const std::string& name) {
  Buffer b = as_buffer(obj, name, Role::labels);
  if (b.array.ndim() != 1)
    fail(name + " must be 1-D [rows], got shape " + shape_string(b.array) +
         (b.array.ndim() == 2 ? " (flatten it with .ravel() / .reshape(-1))" : ""));
  const bool i64 = b.array.itemsize() == 8;
  constexpr int c_order = py::array::c_style | py::array::forcecast;
  if (!aligned(b.array) || (b.array.shape(0) > 1 && b.array.strides(0) != b.array.itemsize()))
    b.array = i64 ? converted<int64_t, c_order>(b.array, name) : converted<int32_t, c_order>(b.array, name);
  Labels l;
  l.kind = b.kind;
  l.is_int64 = i64;
  l.size = b.array.shape(0);
  l.data = b.array.data();
  l.array = std::move(b.array);
  return l;
}

/// Calls f with the features as an Eigen map of their scalar type.
template <class F>
decltype(auto) visit(const Rows& x, F&& f) {
  if (x.is_double) return f(x.map<double>());
  return f(x.map<float>());
}

/// Calls f with the labels as a LabelView of their integer type.
template <class F>
decltype(auto) visit(const Labels& y, F&& f) {
  if (y.is_int64) return f(y.view<int64_t>());
  return f(y.view<int32_t>());
}

/// A NumPy array that owns `m` (an Eigen matrix, row-major or a vector), without a copy.
template <class M>
py::array to_numpy(M&& m) {
  using Plain = std::decay_t<M>;
  using T = typename Plain::Scalar;
  auto owned = std::make_unique<Plain>(std::forward<M>(m));
  const Plain& ref = *owned;
  py::capsule owner(owned.get(), [](void* p) { delete static_cast<Plain*>(p); });
  owned.release();
  constexpr auto s = static_cast<py::ssize_t>(sizeof(T));
  if constexpr (Plain::IsVectorAtCompileTime) {
    return py::array(py::dtype::of<T>(), {ref.size()}, {s}, ref.data(), owner);
  } else {
    static_assert(Plain::IsRowMajor, "results are row-major matrices");
    return py::array(py::dtype::of<T>(), {ref.rows(), ref.cols()}, {ref.cols() * s, s}, ref.data(), owner);
  }
}

/// `a` as the kind of array the caller passed in (a torch tensor sharing `a`'s memory).
inline py::object as_kind(py::array a, Kind kind) {
  if (kind == Kind::torch) return loaded_torch().attr("from_numpy")(a);
  return std::move(a);
}

template <class M>
py::object result(M&& m, Kind kind) {
  return as_kind(to_numpy(std::forward<M>(m)), kind);
}

/// -1 for None (infer), else the value.
inline Index optional_count(const py::object& v) { return v.is_none() ? -1 : v.cast<Index>(); }

}  // namespace ncml_py
