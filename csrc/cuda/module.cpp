// sparsekit._C_cuda: torch-free bindings of the CUDA kernels (device query only for now).
// Importing works without a GPU or driver; the static CUDA runtime reports errors as values.
#include <pybind11/pybind11.h>

#include <string>

extern "C" int sparsekit_cuda_device_count(int* count);
extern "C" const char* sparsekit_cuda_error_string(int err);

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "sparsekit CUDA kernels (torch-free)";
  m.def("device_count", []() {
    int count = 0;
    int err = sparsekit_cuda_device_count(&count);
    return pybind11::make_tuple(count, err == 0 ? std::string() : std::string(sparsekit_cuda_error_string(err)));
  }, "(number of CUDA devices the runtime sees, error message or '')");
}
