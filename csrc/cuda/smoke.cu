// Placeholder CUDA translation unit until the CUDA backend lands (issue: CUDA kernels): proves
// the toolkit builds for sm_80 and sm_90a and that the module can report the runtime's view.
#include <cuda_runtime.h>

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
