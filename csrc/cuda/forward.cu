// Forward: y[M, N] = X̂[M, K] · W_keptᵀ + bias, one kernel for linear and conv.
//
// Grid (tile_grid): x = block rows, y/z = tiles of TM output pixels. A CTA owns TM pixels × the
// block row's NP (bn padded to 16/32/64) output channels, walks the row's kept blocks from
// row_ptr/col_idx (read on the device, so the grid depends on shapes only) and runs the main
// loop (mainloop.cuh) over each block's K columns in chunks: A = the input rows of its
// pixels at the block's tap (gathered through the pixel's window origin; zero-filled where the
// tap reads padding or the pixel is past M), B = the block's W rows as stored (K-contiguous).
// The math is FFMA (fp32; bf16/fp16 with tensor cores off) or mma.sync (bf16/fp16).
#include "mainloop.cuh"

namespace sparsekit {
namespace cuda {
namespace {

// At least 2 CTAs per SM: a budget ptxas fills without spilling (left to itself it chose 64
// registers for Ffma<float, 32> and spilled).
template <class Math>
__global__ void __launch_bounds__(Math::THREADS, 2)
forward_kernel(const Dims d, const int tiles, const int32_t* __restrict__ row_ptr,
               const int32_t* __restrict__ col_idx, const typename Math::T* __restrict__ x,
               const typename Math::T* __restrict__ w, const typename Math::T* __restrict__ bias,
               typename Math::T* __restrict__ y) {
  using T = typename Math::T;
  using A = typename Math::A;
  using B = typename Math::B;
  constexpr int TM = Math::TM;
  __shared__ Stages<Math> st;
  __shared__ int s_b[TM], s_ly[TM], s_lx[TM];  // per pixel: image (-1 past M), logical origin

  const int tile = tile_index();
  if (tile >= tiles) return;  // uniform: the z fold rounds up
  const int tid = threadIdx.x, r = blockIdx.x;
  const int npix = d.batch * d.out_h * d.out_w, m0 = tile * TM;
  const int n0 = r * d.bn, rows = min(d.bn, d.c_out - n0);
  for (int m = tid; m < TM; m += Math::THREADS) {
    const int p = m0 + m;
    s_b[m] = p < npix ? p / (d.out_w * d.out_h) : -1;
    s_ly[m] = ((p / d.out_w) % d.out_h) * d.stride_h - d.pad_h;
    s_lx[m] = (p % d.out_w) * d.stride_w - d.pad_w;
  }
  __syncthreads();  // the origins are read by other threads' gathers

  const Raw<T>* xr = reinterpret_cast<const Raw<T>*>(x);
  const Raw<T>* wr = reinterpret_cast<const Raw<T>*>(w);
  // The walk: the next chunk to copy is kept block i, its columns [kc, kc + Math::KC).
  int i = row_ptr[r], kc = 0;
  const int end = row_ptr[r + 1];
  int64_t off[A::PER_THREAD];  // x row of each of this thread's pixels at tap off_tap (-1: none)
  int off_tap = -1;
  auto issue = [&](Raw<T>* as, Raw<T>* bs) {
    if (i >= end) return false;
    const int col = col_idx[i], tap = col / d.blocks_per_tap;
    const int c0 = (col % d.blocks_per_tap) * d.bk, width = min(d.bk, d.c_in - c0);
    if (tap != off_tap) {
      const int ky = tap / d.kw, kx = tap % d.kw;
      A::for_rows(tid, [&](int j, int m) {
        const int iy = input_coord(s_ly[m] + ky * d.dil_h, d.up, d.in_h);
        const int ix = input_coord(s_lx[m] + kx * d.dil_w, d.up, d.in_w);
        off[j] = (s_b[m] >= 0 && iy >= 0 && ix >= 0)
                     ? (((int64_t)s_b[m] * d.in_h + iy) * d.in_w + ix) * d.c_in
                     : -1;
      });
      off_tap = tap;
    }
    A::copy(as, xr, tid, [&](int j, int, int c, int& avail) {
      avail = off[j] >= 0 ? width - kc - c : 0;
      return off[j] + c0 + kc + c;
    });
    const int64_t k0 = (int64_t)tap * d.c_in + c0 + kc;
    B::copy(bs, wr, tid, [&](int, int n, int c, int& avail) {
      avail = n < rows ? width - kc - c : 0;
      return (int64_t)(n0 + n) * d.w_row_stride + k0 + c;
    });
    kc += Math::KC;
    if (kc >= width) {
      ++i;
      kc = 0;
    }
    return true;
  };

  typename Math::Acc acc;
  Math::zero(acc);
  main_loop<Math>(st, acc, issue);

  Math::for_each(acc, [&](int m, int n, float v) {
    const int p = m0 + m;
    if (p < npix && n < rows)
      y[(int64_t)p * d.c_out + n0 + n] =
          from_float<T>(v + (bias != nullptr ? to_float(bias[n0 + n]) : 0.f));
  });
}

template <typename T, int NP, bool TENSOR_CORES, bool DEEP>
void launch_forward(const Dims& d, const int32_t* row_ptr, const int32_t* col_idx, const void* x,
                    const void* w, const void* bias, void* y, cudaStream_t stream) {
  using Math = MathFor<T, NP, /*B_KMAJOR=*/false, TENSOR_CORES, DEEP>;
  const int tiles = cdiv(d.batch * d.out_h * d.out_w, Math::TM);
  forward_kernel<Math><<<tile_grid(d.grid_rows, tiles), Math::THREADS, 0, stream>>>(
      d, tiles, row_ptr, col_idx, static_cast<const T*>(x), static_cast<const T*>(w),
      static_cast<const T*>(bias), static_cast<T*>(y));
}

template <typename T, int NP>
void launch_forward(bool tensor_cores, const Dims& d, const int32_t* row_ptr,
                    const int32_t* col_idx, const void* x, const void* w, const void* bias,
                    void* y, cudaStream_t stream) {
  if (!tensor_cores)
    launch_forward<T, NP, false, false>(d, row_ptr, col_idx, x, w, bias, y, stream);
  else if (d.bk > 16)  // the reduction runs along bk
    launch_forward<T, NP, true, true>(d, row_ptr, col_idx, x, w, bias, y, stream);
  else
    launch_forward<T, NP, true, false>(d, row_ptr, col_idx, x, w, bias, y, stream);
}

}  // namespace
}  // namespace cuda
}  // namespace sparsekit

extern "C" const char* sparsekit_cuda_forward(const sparsekit::Problem* p, int dtype, int device,
                                              const int32_t* row_ptr, const int32_t* col_idx,
                                              const void* x, const void* w, const void* bias,
                                              void* y, void* stream) {
  using namespace sparsekit::cuda;
  Dims d;
  if (const char* err = make_dims(*p, &d)) return err;
  if (const char* err = prepare(device, dtype)) return err;
  if (d.batch * d.out_h * d.out_w == 0 || d.grid_rows == 0) return nullptr;  // nothing to write
  const auto s = static_cast<cudaStream_t>(stream);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool tc = !std::is_same<T, float>::value && tensor_cores_enabled();
    switch (padded_side(d.bn)) {
      case 16: launch_forward<T, 16>(tc, d, row_ptr, col_idx, x, w, bias, y, s); break;
      case 32: launch_forward<T, 32>(tc, d, row_ptr, col_idx, x, w, bias, y, s); break;
      default: launch_forward<T, 64>(tc, d, row_ptr, col_idx, x, w, bias, y, s); break;
    }
  });
  return launch_error();
}
