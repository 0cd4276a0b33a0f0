// sparsekit._C: torch-free pybind11 bindings of the CPU kernels.
//
// Every entry point takes raw data pointers (ints), a list of problem sizes (see Problem in
// common/problem.h, in declaration order) and the index-array pointers; the caller
// (sparsekit/backends/cpu.py) allocates outputs and guarantees contiguous NHWC activations and
// K-contiguous weights.
// The ISA is chosen once at import: AVX-512 kernels where the CPU has AVX-512F, else portable.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels.h"

namespace py = pybind11;
using sparsekit::Index;
using sparsekit::kProblemFields;
using sparsekit::Problem;

namespace {

// SPARSEKIT_CPU_ISA=generic forces the portable kernels (to test them on an AVX-512 machine).
bool has_avx512() {
  const char* forced = std::getenv("SPARSEKIT_CPU_ISA");
  if (forced && std::string(forced) == "generic") return false;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

const bool kAvx512 = has_avx512();

Problem make_problem(const std::vector<int64_t>& d, int threads) {
  if (d.size() != static_cast<size_t>(kProblemFields))
    throw std::invalid_argument("sparsekit._C: problem must have " + std::to_string(kProblemFields) +
                                " sizes, got " + std::to_string(d.size()));
  Problem p{d[0],  d[1],  d[2],  d[3],  d[4],  d[5],  d[6],  d[7],  d[8],  d[9],  d[10],
            d[11], d[12], d[13], d[14], d[15], d[16], d[17], d[18], d[19], d[20], d[21],
            threads < 1 ? 1 : threads};
  if (p.bn < 1 || p.bk < 1 || p.bn > 64 || p.bk > 64)
    throw std::invalid_argument("sparsekit._C: block sides must be in [1, 64]");
  return p;
}

template <typename T>
const T* ptr(uintptr_t p) { return reinterpret_cast<const T*>(p); }

Index make_index(uintptr_t row_ptr, uintptr_t col_idx, uintptr_t col_ptr, uintptr_t row_idx,
                 uintptr_t block_row, uintptr_t block_count) {
  return Index{ptr<int32_t>(row_ptr), ptr<int32_t>(col_idx), ptr<int32_t>(col_ptr),
               ptr<int32_t>(row_idx), ptr<int32_t>(block_row), ptr<int32_t>(block_count)};
}

void forward(const std::vector<int64_t>& dims, int threads, uintptr_t x, uintptr_t w,
             uintptr_t bias, uintptr_t y, uintptr_t row_ptr, uintptr_t col_idx, uintptr_t block_row) {
  const Problem p = make_problem(dims, threads);
  const Index ix = make_index(row_ptr, col_idx, 0, 0, block_row, 0);
  py::gil_scoped_release release;
  (kAvx512 ? sparsekit::avx512::forward : sparsekit::generic::forward)(
      p, ix, ptr<float>(x), ptr<float>(w), ptr<float>(bias), reinterpret_cast<float*>(y));
}

void grad_input(const std::vector<int64_t>& dims, int threads, uintptr_t dy, uintptr_t w,
                uintptr_t dx, uintptr_t col_ptr, uintptr_t row_idx) {
  const Problem p = make_problem(dims, threads);
  const Index ix = make_index(0, 0, col_ptr, row_idx, 0, 0);
  py::gil_scoped_release release;
  (kAvx512 ? sparsekit::avx512::grad_input : sparsekit::generic::grad_input)(
      p, ix, ptr<float>(dy), ptr<float>(w), reinterpret_cast<float*>(dx));
}

void grad_weight(const std::vector<int64_t>& dims, int threads, uintptr_t dy, uintptr_t x,
                 uintptr_t dw, uintptr_t block_row, uintptr_t col_idx, uintptr_t block_count) {
  const Problem p = make_problem(dims, threads);
  const Index ix = make_index(0, col_idx, 0, 0, block_row, block_count);
  py::gil_scoped_release release;
  (kAvx512 ? sparsekit::avx512::grad_weight : sparsekit::generic::grad_weight)(
      p, ix, ptr<float>(dy), ptr<float>(x), reinterpret_cast<float*>(dw));
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "sparsekit CPU kernels (torch-free; pointers and sizes)";
  m.attr("PROBLEM_FIELDS") = kProblemFields;
  m.def("isa", []() { return std::string(kAvx512 ? "avx512" : "generic"); },
        "Instruction set the kernels run with.");
  m.def("openmp_max_threads", []() { return omp_get_max_threads(); });
  m.def("forward", &forward, "y = x̂ · W_keptᵀ + bias");
  m.def("grad_input", &grad_input, "dX = dY · W_kept");
  m.def("grad_weight", &grad_weight, "dW at the listed blocks");
}
