// C entry points of the CUDA kernels, shared by the .cu files that define them and the
// torch-free, CUDA-header-free bindings (module.cpp, compiled by the host compiler).
//
// Every launcher enqueues its kernels on `stream` (a cudaStream_t as void*) on `device`, never
// synchronises and never allocates: the caller allocates outputs and scratch. It returns nullptr
// on success, else a static message (a bad argument, or the CUDA runtime's error string).
// Element types: kFloat32, kBFloat16, kFloat16 (accumulation is always fp32).
#pragma once
#include <cstdint>

#include "problem.h"

namespace sparsekit {
namespace cuda {
enum DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };
}  // namespace cuda
}  // namespace sparsekit

extern "C" {

int sparsekit_cuda_device_count(int* count);
const char* sparsekit_cuda_error_string(int err);

// bf16/fp16 on the tensor cores (mma.sync, the default) or on the FFMA kernels (0): a process-
// wide switch, set between launches.
void sparsekit_cuda_set_tensor_cores(int enabled);
int sparsekit_cuda_tensor_cores();

// y = X̂ · W_keptᵀ + bias (bias may be null); writes every element of y.
const char* sparsekit_cuda_forward(const sparsekit::Problem* p, int dtype, int device,
                                   const int32_t* row_ptr, const int32_t* col_idx, const void* x,
                                   const void* w, const void* bias, void* y, void* stream);

// dX = dY · W_kept (transposed implicit GEMM through col_ptr/row_idx); writes every element of dx.
const char* sparsekit_cuda_grad_input(const sparsekit::Problem* p, int dtype, int device,
                                      const int32_t* col_ptr, const int32_t* row_idx,
                                      const void* dy, const void* w, void* dx, void* stream);

// dW at the blocks (block_row[i], col_idx[i]), i < *block_count ≤ capacity (the block grid) —
// or, with all three null, at every block of the grid (a dense dW); dw must be pre-zeroed
// elsewhere. `items` CTAs (capacity ≤ items) share the live blocks' pixels: each live block gets
// S = clamp(items / live, 1, max_splits) splits, read on the device. With max_splits > 1
// `scratch` holds items·bn·bk floats of partial sums, reduced in a fixed order by a second kernel.
const char* sparsekit_cuda_grad_weight(const sparsekit::Problem* p, int dtype, int device,
                                       const int32_t* block_row, const int32_t* col_idx,
                                       const int32_t* block_count, int64_t items,
                                       int64_t max_splits, const void* dy, const void* x, void* dw,
                                       float* scratch, void* stream);
}
