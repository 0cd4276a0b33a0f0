// sparsekit._C_cuda: torch-free bindings of the CUDA kernels (launchers.h).
//
// Mirrors sparsekit._C: every entry point takes raw device pointers (ints), a list of problem
// sizes (Problem in common/problem.h, in declaration order), an element-type code (DTYPES) and
// the device index and CUDA stream (torch.cuda.current_stream().cuda_stream) as ints. Launches
// are asynchronous on that stream; an entry point returns '' or the error message (a bad
// argument or the launch's CUDA error), which sparsekit/backends/cuda.py raises.
// Compiled by the host compiler: no CUDA headers here. Importing works without a GPU or driver
// (the static CUDA runtime reports errors as values).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "launchers.h"

namespace py = pybind11;
using sparsekit::kProblemFields;
using sparsekit::Problem;

namespace {

Problem make_problem(const std::vector<int64_t>& d) {
  if (d.size() != static_cast<size_t>(kProblemFields))
    throw std::invalid_argument("sparsekit._C_cuda: problem must have " +
                                std::to_string(kProblemFields) + " sizes, got " +
                                std::to_string(d.size()));
  return Problem{d[0],  d[1],  d[2],  d[3],  d[4],  d[5],  d[6],  d[7],  d[8],  d[9],  d[10],
                 d[11], d[12], d[13], d[14], d[15], d[16], d[17], d[18], d[19], d[20], d[21], 1};
}

template <typename T>
T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

std::string message(const char* err) { return err ? std::string(err) : std::string(); }

std::string forward(const std::vector<int64_t>& dims, int dtype, int device, uintptr_t x,
                    uintptr_t w, uintptr_t bias, uintptr_t y, uintptr_t row_ptr,
                    uintptr_t col_idx, uintptr_t stream) {
  const Problem p = make_problem(dims);
  py::gil_scoped_release release;
  return message(sparsekit_cuda_forward(&p, dtype, device, ptr<const int32_t>(row_ptr),
                                        ptr<const int32_t>(col_idx), ptr<const void>(x),
                                        ptr<const void>(w), ptr<const void>(bias),
                                        ptr<void>(y), ptr<void>(stream)));
}

std::string grad_input(const std::vector<int64_t>& dims, int dtype, int device, uintptr_t dy,
                       uintptr_t w, uintptr_t dx, uintptr_t col_ptr, uintptr_t row_idx,
                       uintptr_t stream) {
  const Problem p = make_problem(dims);
  py::gil_scoped_release release;
  return message(sparsekit_cuda_grad_input(&p, dtype, device, ptr<const int32_t>(col_ptr),
                                           ptr<const int32_t>(row_idx), ptr<const void>(dy),
                                           ptr<const void>(w), ptr<void>(dx), ptr<void>(stream)));
}

std::string grad_weight(const std::vector<int64_t>& dims, int dtype, int device, uintptr_t dy,
                        uintptr_t x, uintptr_t dw, uintptr_t block_row, uintptr_t col_idx,
                        uintptr_t block_count, int64_t items, int64_t max_splits,
                        uintptr_t scratch, uintptr_t stream) {
  const Problem p = make_problem(dims);
  py::gil_scoped_release release;
  return message(sparsekit_cuda_grad_weight(
      &p, dtype, device, ptr<const int32_t>(block_row), ptr<const int32_t>(col_idx),
      ptr<const int32_t>(block_count), items, max_splits, ptr<const void>(dy), ptr<const void>(x),
      ptr<void>(dw), ptr<float>(scratch), ptr<void>(stream)));
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "sparsekit CUDA kernels (torch-free; pointers, sizes and stream as ints)";
  m.attr("PROBLEM_FIELDS") = kProblemFields;
  py::dict dtypes;
  dtypes["float32"] = static_cast<int>(sparsekit::cuda::kFloat32);
  dtypes["bfloat16"] = static_cast<int>(sparsekit::cuda::kBFloat16);
  dtypes["float16"] = static_cast<int>(sparsekit::cuda::kFloat16);
  m.attr("DTYPES") = dtypes;
  m.def("device_count", []() {
    int count = 0;
    int err = sparsekit_cuda_device_count(&count);
    return py::make_tuple(count, err == 0 ? std::string() : sparsekit_cuda_error_string(err));
  }, "(number of CUDA devices the runtime sees, error message or '')");
  m.def("set_tensor_cores", [](bool enabled) { sparsekit_cuda_set_tensor_cores(enabled); },
        "bf16/fp16 on the tensor cores (True, default) or the FFMA kernels (False)");
  m.def("tensor_cores", []() { return sparsekit_cuda_tensor_cores() != 0; });
  m.def("forward", &forward, "y = x̂ · W_keptᵀ + bias; returns '' or the error");
  m.def("grad_input", &grad_input, "dX = dY · W_kept; returns '' or the error");
  m.def("grad_weight", &grad_weight,
        "dW at the listed blocks, or every block when the lists are 0 (dw pre-zeroed; items CTAs "
        "share the live blocks' pixels; scratch of items·bn·bk floats when max_splits > 1); "
        "returns '' or the error");
}
