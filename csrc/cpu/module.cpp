// sparsekit._C: torch-free pybind11 bindings of the CPU kernels.
//
// Every entry point takes raw data pointers (ints), a list of problem sizes (see Problem in
// common/problem.h, in declaration order) and the index-array pointers; the caller
// (sparsekit/backends/cpu.py) allocates outputs and guarantees contiguous NHWC activations and
// K-contiguous weights.
// ISA: the kernels are built once per instruction set this architecture has (kernels.h); the
// best one the CPU supports runs unless select_isa() picks another (SPARSEKIT_CPU_ISA, applied by
// sparsekit/backends/cpu.py at import).
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

struct Isa {
  const char* name;
  bool (*supported)();
  decltype(&sparsekit::generic::forward) forward;
  decltype(&sparsekit::generic::grad_input) grad_input;
  decltype(&sparsekit::generic::grad_weight) grad_weight;
};

#if defined(__x86_64__)
bool cpu_has(const char* feature_set) {
  __builtin_cpu_init();
  if (std::string(feature_set) == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif
bool always() { return true; }

#define SPARSEKIT_ISA_ENTRY(ns, supported) \
  Isa { #ns, supported, sparsekit::ns::forward, sparsekit::ns::grad_input, sparsekit::ns::grad_weight }

// Best first: the default is the first one the CPU supports.
const Isa kIsas[] = {
#if defined(__x86_64__)
    SPARSEKIT_ISA_ENTRY(avx512, [] { return cpu_has("avx512"); }),
    SPARSEKIT_ISA_ENTRY(avx2, [] { return cpu_has("avx2"); }),
#endif
#if defined(__aarch64__)
    SPARSEKIT_ISA_ENTRY(neon, always),
#endif
    SPARSEKIT_ISA_ENTRY(generic, always),
};

const Isa* best_isa() {
  for (const Isa& isa : kIsas)
    if (isa.supported()) return &isa;
  return &kIsas[sizeof(kIsas) / sizeof(kIsas[0]) - 1];
}

const Isa* g_isa = best_isa();

std::vector<std::string> isas_built() {
  std::vector<std::string> names;
  for (const Isa& isa : kIsas) names.emplace_back(isa.name);
  return names;
}

std::vector<std::string> isas_supported() {
  std::vector<std::string> names;
  for (const Isa& isa : kIsas)
    if (isa.supported()) names.emplace_back(isa.name);
  return names;
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const std::string& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

// Runs the kernels with ISA `name` ("" = the best the CPU supports); '' or why it cannot.
std::string select_isa(const std::string& name) {
  if (name.empty()) {
    g_isa = best_isa();
    return "";
  }
  for (const Isa& isa : kIsas) {
    if (name != isa.name) continue;
    if (!isa.supported())
      return "this CPU cannot run the " + name + " kernels (it supports: " +
             join(isas_supported()) + ")";
    g_isa = &isa;
    return "";
  }
  return "no " + name + " kernels are built for this architecture (built: " + join(isas_built()) +
         ")";
}

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
  g_isa->forward(
      p, ix, ptr<float>(x), ptr<float>(w), ptr<float>(bias), reinterpret_cast<float*>(y));
}

void grad_input(const std::vector<int64_t>& dims, int threads, uintptr_t dy, uintptr_t w,
                uintptr_t dx, uintptr_t col_ptr, uintptr_t row_idx) {
  const Problem p = make_problem(dims, threads);
  const Index ix = make_index(0, 0, col_ptr, row_idx, 0, 0);
  py::gil_scoped_release release;
  g_isa->grad_input(
      p, ix, ptr<float>(dy), ptr<float>(w), reinterpret_cast<float*>(dx));
}

void grad_weight(const std::vector<int64_t>& dims, int threads, uintptr_t dy, uintptr_t x,
                 uintptr_t dw, uintptr_t block_row, uintptr_t col_idx, uintptr_t block_count) {
  const Problem p = make_problem(dims, threads);
  const Index ix = make_index(0, col_idx, 0, 0, block_row, block_count);
  py::gil_scoped_release release;
  g_isa->grad_weight(
      p, ix, ptr<float>(dy), ptr<float>(x), reinterpret_cast<float*>(dw));
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "sparsekit CPU kernels (torch-free; pointers and sizes)";
  m.attr("PROBLEM_FIELDS") = kProblemFields;
  m.def("isa", []() { return std::string(g_isa->name); }, "Instruction set the kernels run with.");
  m.def("isas_built", &isas_built, "Instruction sets built for this architecture, best first.");
  m.def("isas_supported", &isas_supported, "The built instruction sets this CPU can run.");
  m.def("select_isa", &select_isa,
        "Run the kernels with this instruction set ('' = the best supported); returns '' or why "
        "not.");
  m.def("openmp_max_threads", []() { return omp_get_max_threads(); });
  m.def("forward", &forward, "y = x̂ · W_keptᵀ + bias");
  m.def("grad_input", &grad_input, "dX = dY · W_kept");
  m.def("grad_weight", &grad_weight, "dW at the listed blocks");
}
