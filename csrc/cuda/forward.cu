// Forward: y[M, N] = X̂[M, K] · W_keptᵀ + bias, one kernel for linear and conv.
//
// Grid: x = tiles of TM output pixels, y = block rows. A block of TM·BNP/16 threads owns TM
// pixels × the block row's BNP (bn padded to 16/32/64) output channels, each thread a 4×4
// register tile. It walks the row's kept blocks from row_ptr (read on the device, so the grid
// depends on shapes only) and streams each block's K columns in chunks of KC: the input tile
// As[KC][TM] (gathered through the tap's pixel offsets, zero where the tap reads padding) and
// the weight tile Bs[KC][BNP] (transposed from W's K-contiguous rows) in shared memory.
// That is the FFMA kernel (fp32); bf16/fp16 take the same walk on the tensor cores
// (forward_mma_kernel below) unless switched off.
#include "common.cuh"

namespace sparsekit {
namespace cuda {
namespace {

// Per output pixel m0 + m of a tile (m < TM): its image (-1 past the M pixels) and the logical
// (upsampled, padded) input origin of its window, staged once in shared memory.
template <int TM, int THREADS>
__device__ __forceinline__ void stage_pixel_origins(const Dims& d, int m0, int M, int tid,
                                                    int* s_b, int* s_ly, int* s_lx) {
  for (int m = tid; m < TM; m += THREADS) {
    const int p = m0 + m;
    const int ox = p % d.out_w, oy = (p / d.out_w) % d.out_h;
    s_b[m] = p < M ? p / (d.out_w * d.out_h) : -1;
    s_ly[m] = oy * d.stride_h - d.pad_h;
    s_lx[m] = ox * d.stride_w - d.pad_w;
  }
}

template <int BNP>
struct ForwardTile {
  static constexpr int TM = BNP == 64 ? 64 : 128;  // output pixels per block
  static constexpr int THREADS = TM * BNP / 16;
};

template <typename T, int BNP>
__global__ void __launch_bounds__(ForwardTile<BNP>::THREADS)
forward_kernel(const Dims d, const int32_t* __restrict__ row_ptr,
               const int32_t* __restrict__ col_idx, const T* __restrict__ x,
               const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y) {
  constexpr int TM = ForwardTile<BNP>::TM, THREADS = ForwardTile<BNP>::THREADS;
  constexpr int TN4 = BNP / 4;          // threads along the channels
  constexpr int STEP = THREADS / KC;    // staging: a thread takes one k, rows tid/KC + j·STEP
  constexpr int NA = TM / STEP, NB = BNP / STEP;
  __shared__ __align__(16) float As[2][KC][TM + PAD];  // double-buffered chunks
  __shared__ __align__(16) float Bs[2][KC][BNP + PAD];
  __shared__ int s_b[TM], s_ly[TM], s_lx[TM];  // per pixel: image (-1 past M), logical origin

  const int tid = threadIdx.x, tn = tid % TN4, tm = tid / TN4;
  const int kk = tid % KC, row0 = tid / KC;
  const int M = d.batch * d.out_h * d.out_w;
  const int m0 = blockIdx.x * TM, r = blockIdx.y;
  const int n0 = r * d.bn, rows = min(d.bn, d.c_out - n0);

  stage_pixel_origins<TM, THREADS>(d, m0, M, tid, s_b, s_ly, s_lx);
  __syncthreads();

  // Software pipeline: chunk (i, kc) — kept block i, its columns [kc, kc + KC) — is loaded
  // into registers while the previous chunk is multiplied, then stored to the other buffer.
  int64_t off[NA];  // x rows of this thread's pixels at tap off_tap (-1: padding or past M)
  int off_tap = -1;
  float ra[NA], rb[NB];
  auto gather = [&](int i, int kc) {  // returns the width of kept block i
    const int col = col_idx[i];
    const int tap = col / d.blocks_per_tap;
    const int c0 = (col % d.blocks_per_tap) * d.bk;
    const int width = min(d.bk, d.c_in - c0);
    if (tap != off_tap) {
      const int ky = tap / d.kw, kx = tap % d.kw;
#pragma unroll
      for (int j = 0; j < NA; ++j) {
        const int m = row0 + j * STEP;
        const int iy = input_coord(s_ly[m] + ky * d.dil_h, d.up, d.in_h);
        const int ix = input_coord(s_lx[m] + kx * d.dil_w, d.up, d.in_w);
        off[j] = (s_b[m] >= 0 && iy >= 0 && ix >= 0)
                     ? (((int64_t)s_b[m] * d.in_h + iy) * d.in_w + ix) * d.c_in
                     : -1;
      }
      off_tap = tap;
    }
    const bool k_in = kc + kk < width;
#pragma unroll
    for (int j = 0; j < NA; ++j)
      ra[j] = (k_in && off[j] >= 0) ? to_float(x[off[j] + c0 + kc + kk]) : 0.f;
    const int64_t k0 = (int64_t)tap * d.c_in + c0;
#pragma unroll
    for (int j = 0; j < NB; ++j) {
      const int n = row0 + j * STEP;
      rb[j] = (k_in && n < rows)
                  ? to_float(w[(int64_t)(n0 + n) * d.w_row_stride + k0 + kc + kk])
                  : 0.f;
    }
    return width;
  };
  auto stage = [&](int buf) {
#pragma unroll
    for (int j = 0; j < NA; ++j) As[buf][kk][row0 + j * STEP] = ra[j];
#pragma unroll
    for (int j = 0; j < NB; ++j) Bs[buf][kk][row0 + j * STEP] = rb[j];
  };

  float acc[4][4] = {};
  const int end = row_ptr[r + 1];
  int i = row_ptr[r], kc = 0, width = 0, buf = 0;
  if (i < end) {
    width = gather(i, kc);
    stage(0);
  }
  __syncthreads();
  while (i < end) {  // uniform: every thread walks the same chunks
    int ni = i, nkc = kc + KC, nwidth = width;
    if (nkc >= width) {
      ++ni;
      nkc = 0;
    }
    if (ni < end) nwidth = gather(ni, nkc);  // loads in flight during the multiply below
#pragma unroll
    for (int k = 0; k < KC; ++k)
      fma_4x4(acc, *reinterpret_cast<const float4*>(&As[buf][k][tm * 4]),
              *reinterpret_cast<const float4*>(&Bs[buf][k][tn * 4]));
    if (ni < end) stage(buf ^ 1);
    __syncthreads();
    i = ni;
    kc = nkc;
    width = nwidth;
    buf ^= 1;
  }

  float b[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int n = tn * 4 + j;
    b[j] = (bias != nullptr && n < rows) ? to_float(bias[n0 + n]) : 0.f;
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int p = m0 + tm * 4 + i;
    if (p >= M) continue;
    T* dst = y + (int64_t)p * d.c_out + n0;
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (tn * 4 + j < rows) dst[tn * 4 + j] = from_float<T>(acc[i][j] + b[j]);
  }
}

// bf16/fp16 on the tensor cores: the same walk with 16-bit tiles As[TM][K] (pixels) and
// Bs[BNP][K] (W rows as they are), K-contiguous, one mma.m16n8k16 step per staged chunk.
// Warps tile the block 4 (pixels) × BNP/WN (channels), each warp WM=32 × WN=min(32, BNP).
template <int BNP>
struct ForwardMmaTile {
  static constexpr int TM = 128, WM = 32, WN = BNP < 32 ? BNP : 32;
  static constexpr int WARPS_M = TM / WM, WARPS_N = BNP / WN;
  static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
  static constexpr int KROW = MMA_K + 8;  // staged row, in halves
};

template <typename T, int BNP>
__global__ void __launch_bounds__(ForwardMmaTile<BNP>::THREADS)
forward_mma_kernel(const Dims d, const int32_t* __restrict__ row_ptr,
                   const int32_t* __restrict__ col_idx, const T* __restrict__ x_,
                   const T* __restrict__ w_, const T* __restrict__ bias, T* __restrict__ y) {
  using Tile = ForwardMmaTile<BNP>;
  constexpr int TM = Tile::TM, THREADS = Tile::THREADS, KROW = Tile::KROW;
  constexpr int MT = Tile::WM / 16, NT = Tile::WN / 8;
  constexpr int NA = TM * 2 / THREADS;  // A vectors (8 halves) a thread stages per chunk
  __shared__ __align__(16) uint16_t As[2][TM * KROW];  // double-buffered chunks
  __shared__ __align__(16) uint16_t Bs[2][BNP * KROW];
  __shared__ int s_b[TM], s_ly[TM], s_lx[TM];
  const uint16_t* x = reinterpret_cast<const uint16_t*>(x_);
  const uint16_t* w = reinterpret_cast<const uint16_t*>(w_);

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = warp % Tile::WARPS_M, wn = warp / Tile::WARPS_M;
  const int h = (tid % 2) * 8;  // staging: a thread takes half h of rows tid/2 + j·THREADS/2
  const int M = d.batch * d.out_h * d.out_w;
  const int m0 = blockIdx.x * TM, r = blockIdx.y;
  const int n0 = r * d.bn, rows = min(d.bn, d.c_out - n0);

  stage_pixel_origins<TM, THREADS>(d, m0, M, tid, s_b, s_ly, s_lx);
  __syncthreads();

  // Software pipeline as in forward_kernel: the next chunk is loaded into registers while the
  // current one is multiplied, then stored to the other buffer.
  int64_t off[NA];  // x rows of this thread's pixels at tap off_tap (-1: padding or past M)
  int off_tap = -1;
  uint4 ra[NA], rb = {};
  const bool loads_b = tid < BNP * 2;
  auto gather = [&](int i, int kc) {  // returns the width of kept block i
    const int col = col_idx[i];
    const int tap = col / d.blocks_per_tap;
    const int c0 = (col % d.blocks_per_tap) * d.bk;
    const int width = min(d.bk, d.c_in - c0);
    if (tap != off_tap) {
      const int ky = tap / d.kw, kx = tap % d.kw;
#pragma unroll
      for (int j = 0; j < NA; ++j) {
        const int m = tid / 2 + j * (THREADS / 2);
        const int iy = input_coord(s_ly[m] + ky * d.dil_h, d.up, d.in_h);
        const int ix = input_coord(s_lx[m] + kx * d.dil_w, d.up, d.in_w);
        off[j] = (s_b[m] >= 0 && iy >= 0 && ix >= 0)
                     ? (((int64_t)s_b[m] * d.in_h + iy) * d.in_w + ix) * d.c_in
                     : -1;
      }
      off_tap = tap;
    }
#pragma unroll
    for (int j = 0; j < NA; ++j)
      ra[j] = load8(x + off[j] + c0 + kc + h, off[j] >= 0 ? width - kc - h : 0);
    if (loads_b) {
      const int n = tid / 2;
      rb = load8(w + (int64_t)(n0 + n) * d.w_row_stride + (int64_t)tap * d.c_in + c0 + kc + h,
                 n < rows ? width - kc - h : 0);
    }
    return width;
  };
  auto stage = [&](int buf) {
#pragma unroll
    for (int j = 0; j < NA; ++j)
      *reinterpret_cast<uint4*>(&As[buf][(tid / 2 + j * (THREADS / 2)) * KROW + h]) = ra[j];
    if (loads_b) *reinterpret_cast<uint4*>(&Bs[buf][(tid / 2) * KROW + h]) = rb;
  };

  float acc[MT][NT][4] = {};
  const int end = row_ptr[r + 1];
  int i = row_ptr[r], kc = 0, width = 0, buf = 0;
  if (i < end) {
    width = gather(i, kc);
    stage(0);
  }
  __syncthreads();
  while (i < end) {  // uniform: every thread walks the same chunks
    int ni = i, nkc = kc + MMA_K, nwidth = width;
    if (nkc >= width) {
      ++ni;
      nkc = 0;
    }
    if (ni < end) nwidth = gather(ni, nkc);  // loads in flight during the multiply below
    uint32_t a[MT][4], b[NT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
      load_a_frag<KROW>(a[mt], &As[buf][(wm * Tile::WM + mt * 16) * KROW], lane);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
      load_b_frag<KROW>(b[nt], &Bs[buf][(wn * Tile::WN + nt * 8) * KROW], lane);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) mma_16816<T>(acc[mt][nt], a[mt], b[nt]);
    if (ni < end) stage(buf ^ 1);
    __syncthreads();
    i = ni;
    kc = nkc;
    width = nwidth;
    buf ^= 1;
  }

  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int n = wn * Tile::WN + nt * 8 + 2 * t + e;
      if (n >= rows) continue;
      const float b = bias != nullptr ? to_float(bias[n0 + n]) : 0.f;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int hi = 0; hi < 2; ++hi) {
          const int p = m0 + wm * Tile::WM + mt * 16 + g + hi * 8;
          if (p < M) y[(int64_t)p * d.c_out + n0 + n] = from_float<T>(acc[mt][nt][hi * 2 + e] + b);
        }
    }
}

template <typename T, int BNP>
void launch_forward_mma(const Dims& d, const int32_t* row_ptr, const int32_t* col_idx,
                        const void* x, const void* w, const void* bias, void* y,
                        cudaStream_t stream) {
  using Tile = ForwardMmaTile<BNP>;
  const dim3 grid(cdiv(d.batch * d.out_h * d.out_w, Tile::TM), d.grid_rows);
  forward_mma_kernel<T, BNP><<<grid, Tile::THREADS, 0, stream>>>(
      d, row_ptr, col_idx, static_cast<const T*>(x), static_cast<const T*>(w),
      static_cast<const T*>(bias), static_cast<T*>(y));
}

template <typename T, int BNP>
void launch_forward(const Dims& d, const int32_t* row_ptr, const int32_t* col_idx, const void* x,
                    const void* w, const void* bias, void* y, cudaStream_t stream) {
  using Tile = ForwardTile<BNP>;
  const dim3 grid(cdiv(d.batch * d.out_h * d.out_w, Tile::TM), d.grid_rows);
  forward_kernel<T, BNP><<<grid, Tile::THREADS, 0, stream>>>(
      d, row_ptr, col_idx, static_cast<const T*>(x), static_cast<const T*>(w),
      static_cast<const T*>(bias), static_cast<T*>(y));
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
  if (d.grid_rows > 65535) return "sparsekit._C_cuda: more than 65535 block rows";
  const auto s = static_cast<cudaStream_t>(stream);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same<T, float>::value) {
      if (tensor_cores_enabled()) {
        switch (padded_side(d.bn)) {
          case 16: launch_forward_mma<T, 16>(d, row_ptr, col_idx, x, w, bias, y, s); break;
          case 32: launch_forward_mma<T, 32>(d, row_ptr, col_idx, x, w, bias, y, s); break;
          default: launch_forward_mma<T, 64>(d, row_ptr, col_idx, x, w, bias, y, s); break;
        }
        return;
      }
    }
    switch (padded_side(d.bn)) {
      case 16: launch_forward<T, 16>(d, row_ptr, col_idx, x, w, bias, y, s); break;
      case 32: launch_forward<T, 32>(d, row_ptr, col_idx, x, w, bias, y, s); break;
      default: launch_forward<T, 64>(d, row_ptr, col_idx, x, w, bias, y, s); break;
    }
  });
  return launch_error();
}
