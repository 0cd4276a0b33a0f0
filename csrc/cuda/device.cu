// Runtime queries for the bindings: the static CUDA runtime reports errors as values, so
// importing sparsekit._C_cuda works without a GPU or driver.
#include <cuda_runtime.h>

#include "common.cuh"

extern "C" int sparsekit_cuda_device_count(int* count) {
  cudaError_t err = cudaGetDeviceCount(count);
  if (err != cudaSuccess) {
    *count = 0;
    return static_cast<int>(err);
  }
  return 0;
}

extern "C" const char* sparsekit_cuda_error_string(int err) {
  return cudaGetErrorString(static_cast<cudaError_t>(err));
}

extern "C" void sparsekit_cuda_set_tensor_cores(int enabled) {
  sparsekit::cuda::tensor_cores_enabled() = enabled != 0;
}

extern "C" int sparsekit_cuda_tensor_cores() { return sparsekit::cuda::tensor_cores_enabled(); }
