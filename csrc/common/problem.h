// The block-sparse implicit-GEMM problem every native backend solves (CPU and CUDA alike).
//
//   Y[M, N] = X̂[M, K] · W[N, K]ᵀ (+ bias)     M = batch·H_out·W_out, N = C_out, K = kh·kw·C_in
//
// Activations are NHWC and contiguous: x [batch, in_h, in_w, c_in], y/dy [batch, out_h, out_w,
// c_out]. W rows are K-contiguous with K ordered (kh, kw, c_in) (a channels_last conv weight);
// rows are w_row_stride apart. A linear layer is the 1×1 conv of a [1, 1, M, K] image.
// The block grid is [ceil(N/bn), kh·kw·ceil(c_in/bk)]; index arrays follow sparsekit/layout.py.
// Torch-free: plain pointers and sizes only; the caller allocates every output.
#pragma once
#include <cstdint>

namespace sparsekit {

// Sizes as the Python side passes them (Problem.native_sizes, sparsekit/backends/problem.py),
// in this order.
struct Problem {
  int64_t batch, in_h, in_w, c_in;
  int64_t out_h, out_w, c_out;
  int64_t kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, upsample;
  int64_t w_row_stride;
  int64_t bn, bk;
  int64_t grid_rows, grid_cols, blocks_per_tap;
  int threads;  // CPU worker threads (unused by the CUDA kernels)
};

constexpr int kProblemFields = 22;  // the int64 fields above

struct Index {
  const int32_t* row_ptr;    // [grid_rows + 1]
  const int32_t* col_idx;    // [capacity]
  const int32_t* col_ptr;    // [grid_cols + 1]
  const int32_t* row_idx;    // [capacity]
  const int32_t* block_row;  // [capacity]; (block_row[i], col_idx[i]) for i < *block_count
  const int32_t* block_count;  // number of blocks the dW pass computes
};

}  // namespace sparsekit
