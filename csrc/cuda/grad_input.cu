// dX = dY · W_kept: the transposed implicit GEMM, one kernel for linear and conv.
//
// Input pixels are split into phases: with step = stride / gcd(stride, upsample) per axis,
// pixels (iy, ix) ≡ (φy, φx) mod step are reached by the same taps (and sub-pixels of the
// upsampled input), so each block serves one phase and skips every term that cannot reach it —
// stride-s dX runs as s² phase sub-problems with no atomics; pixels no window reaches get exact
// zeros. Grid: x = phases × tiles of TM pixels of a phase (tiles sized for the largest phase;
// blocks past a phase's pixels exit at once), y = channel blocks of a tap (c_in / bk).
// A block of TM·BKP/16 threads owns TM input pixels × BKP (bk padded to 16/32/64) channels, each
// thread a 4×4 register tile, and for each term walks the kept blocks of the column (tap, cb)
// from col_ptr/row_idx, streaming the block's output channels in chunks of KC: the dy tile
// As[KC][TM] (gathered at the output pixels the term maps to) and the weight tile Bs[KC][BKP]
// (W rows, already contiguous along c_in). That is the FFMA kernel (fp32); bf16/fp16 take the
// same walk on the tensor cores (grad_input_mma_kernel below) unless switched off.
#include "common.cuh"

namespace sparsekit {
namespace cuda {
namespace {

template <int BKP>
struct GradInputTile {
  static constexpr int TM = BKP == 64 ? 64 : 128;  // input pixels per block
  static constexpr int THREADS = TM * BKP / 16;
};

struct Phases {
  int step_h, step_w;  // phase period per axis
  int tiles;           // tiles per phase (for the largest phase)
};

// The reduction sequence of one block, walked chunk by chunk: the terms t = ((sy·kh + ky)·up +
// sx)·kw + kx that reach the block's phase and whose column (tap, cb) has kept blocks, each
// term's kept blocks, and each block's output channels in chunks. Output row o reads input row
// iy at (ky, sy) iff up·iy + sy + pad - ky·dil = o·stride: ry (rx) is sy + pad - ky·dil.
struct Walk {
  int term;         // current term, or `terms` past the end
  int ry, rx, tap;  // the term's offsets and tap
  int i, end;       // kept block i of the term's column, the column's end
  int n0, rows;     // block i's first output channel and height
  int nc;           // chunk start within the block's rows
};

struct WalkSpace {
  int fy, fx, cb, terms;
  const int32_t* col_ptr;
  const int32_t* row_idx;
};

__device__ __forceinline__ void walk_block(const Dims& d, const WalkSpace& ws, Walk& s) {
  s.n0 = ws.row_idx[s.i] * d.bn;
  s.rows = min(d.bn, d.c_out - s.n0);
  s.nc = 0;
}

// Moves s to the first term at or after t that reaches the phase and has kept blocks.
__device__ void walk_term(const Dims& d, const WalkSpace& ws, int t, Walk& s) {
  for (; t < ws.terms; ++t) {
    const int kx = t % d.kw, sx = (t / d.kw) % d.up;
    const int ky = (t / (d.kw * d.up)) % d.kh, sy = t / (d.kw * d.up * d.kh);
    const int ry = sy + d.pad_h - ky * d.dil_h, rx = sx + d.pad_w - kx * d.dil_w;
    if ((d.up * ws.fy + ry) % d.stride_h != 0 || (d.up * ws.fx + rx) % d.stride_w != 0)
      continue;  // no pixel of this phase is reached
    const int tap = ky * d.kw + kx, col = tap * d.blocks_per_tap + ws.cb;
    const int begin = ws.col_ptr[col], end = ws.col_ptr[col + 1];
    if (begin == end) continue;
    s.term = t;
    s.ry = ry;
    s.rx = rx;
    s.tap = tap;
    s.i = begin;
    s.end = end;
    walk_block(d, ws, s);
    return;
  }
  s.term = ws.terms;
}

__device__ __forceinline__ void walk_next(const Dims& d, const WalkSpace& ws, int chunk,
                                          Walk& s) {
  s.nc += chunk;
  if (s.nc < s.rows) return;
  if (++s.i < s.end) return walk_block(d, ws, s);
  walk_term(d, ws, s.term + 1, s);
}

// The block's phase, pixel tile and channel block; false when the tile is past the phase.
__device__ __forceinline__ bool setup_tile(const Dims& d, const Phases& ph, int tm, int threads,
                                           WalkSpace& ws, int* s_b, int* s_iy, int* s_ix,
                                           const int32_t* col_ptr, const int32_t* row_idx) {
  const int phase = blockIdx.x / ph.tiles, tile = blockIdx.x % ph.tiles;
  ws.fy = phase / ph.step_w;
  ws.fx = phase % ph.step_w;
  const int ny = ws.fy < d.in_h ? cdiv(d.in_h - ws.fy, ph.step_h) : 0;
  const int nx = ws.fx < d.in_w ? cdiv(d.in_w - ws.fx, ph.step_w) : 0;
  const int count = d.batch * ny * nx, q0 = tile * tm;
  if (q0 >= count) return false;  // uniform: this phase has fewer pixels than the tiles cover
  ws.cb = blockIdx.y;
  ws.terms = d.up * d.up * d.kh * d.kw;
  ws.col_ptr = col_ptr;
  ws.row_idx = row_idx;
  for (int m = threadIdx.x; m < tm; m += threads) {
    const int q = q0 + m;
    s_b[m] = q < count ? q / (ny * nx) : -1;
    s_iy[m] = ws.fy + ((q / nx) % ny) * ph.step_h;
    s_ix[m] = ws.fx + (q % nx) * ph.step_w;
  }
  return true;
}

// dy offset (row start) of pixel m for the walk's current term, or -1 if no output reads it.
__device__ __forceinline__ int64_t dy_row(const Dims& d, const Walk& s, const int* s_b,
                                          const int* s_iy, const int* s_ix, int m) {
  const int num_y = d.up * s_iy[m] + s.ry, num_x = d.up * s_ix[m] + s.rx;
  const int oy = num_y / d.stride_h, ox = num_x / d.stride_w;
  return (s_b[m] >= 0 && num_y >= 0 && num_x >= 0 && oy < d.out_h && ox < d.out_w)
             ? (((int64_t)s_b[m] * d.out_h + oy) * d.out_w + ox) * d.c_out
             : -1;
}

template <typename T, int BKP>
__global__ void __launch_bounds__(GradInputTile<BKP>::THREADS)
grad_input_kernel(const Dims d, const Phases ph, const int32_t* __restrict__ col_ptr,
                  const int32_t* __restrict__ row_idx, const T* __restrict__ dy,
                  const T* __restrict__ w, T* __restrict__ dx) {
  constexpr int TM = GradInputTile<BKP>::TM, THREADS = GradInputTile<BKP>::THREADS;
  constexpr int TC4 = BKP / 4;                       // threads along the channels
  constexpr int STEP = THREADS / KC, NA = TM / STEP;  // dy staging: one k, pixels tid/KC + j·STEP
  constexpr int BSTEP = THREADS / BKP, NB = KC / BSTEP;  // W staging: channel tid % BKP
  __shared__ __align__(16) float As[2][KC][TM + PAD];  // double-buffered chunks
  __shared__ __align__(16) float Bs[2][KC][BKP + PAD];
  __shared__ int s_b[TM], s_iy[TM], s_ix[TM];  // per pixel: image (-1 past the phase), coords

  WalkSpace ws;
  if (!setup_tile(d, ph, TM, THREADS, ws, s_b, s_iy, s_ix, col_ptr, row_idx)) return;
  const int tid = threadIdx.x, tc = tid % TC4, tm = tid / TC4;
  const int kk = tid % KC, row0 = tid / KC, cw = tid % BKP, kw0 = tid / BKP;
  const int c0 = ws.cb * d.bk, width = min(d.bk, d.c_in - c0);
  __syncthreads();

  // Software pipeline as in forward_kernel, over the walk's chunks.
  int64_t off[NA];  // dy rows of this thread's pixels for term off_term (-1: none)
  int off_term = -1;
  float ra[NA], rb[NB];
  auto gather = [&](const Walk& s) {
    if (s.term != off_term) {
#pragma unroll
      for (int j = 0; j < NA; ++j) off[j] = dy_row(d, s, s_b, s_iy, s_ix, row0 + j * STEP);
      off_term = s.term;
    }
    const bool n_in = s.nc + kk < s.rows;
#pragma unroll
    for (int j = 0; j < NA; ++j)
      ra[j] = (n_in && off[j] >= 0) ? to_float(dy[off[j] + s.n0 + s.nc + kk]) : 0.f;
    const int64_t k0 = (int64_t)s.tap * d.c_in + c0;
#pragma unroll
    for (int j = 0; j < NB; ++j) {
      const int n = s.nc + kw0 + j * BSTEP;
      rb[j] = (cw < width && n < s.rows)
                  ? to_float(w[(int64_t)(s.n0 + n) * d.w_row_stride + k0 + cw])
                  : 0.f;
    }
  };
  auto stage = [&](int buf) {
#pragma unroll
    for (int j = 0; j < NA; ++j) As[buf][kk][row0 + j * STEP] = ra[j];
#pragma unroll
    for (int j = 0; j < NB; ++j) Bs[buf][kw0 + j * BSTEP][cw] = rb[j];
  };

  float acc[4][4] = {};
  Walk cur;
  walk_term(d, ws, 0, cur);
  if (cur.term < ws.terms) {
    gather(cur);
    stage(0);
  }
  __syncthreads();
  for (int buf = 0; cur.term < ws.terms; buf ^= 1) {  // uniform walk
    Walk next = cur;
    walk_next(d, ws, KC, next);
    const bool more = next.term < ws.terms;
    if (more) gather(next);  // loads in flight during the multiply below
#pragma unroll
    for (int k = 0; k < KC; ++k)
      fma_4x4(acc, *reinterpret_cast<const float4*>(&As[buf][k][tm * 4]),
              *reinterpret_cast<const float4*>(&Bs[buf][k][tc * 4]));
    if (more) stage(buf ^ 1);
    __syncthreads();
    cur = next;
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int m = tm * 4 + i;
    if (s_b[m] < 0) continue;
    T* dst = dx + (((int64_t)s_b[m] * d.in_h + s_iy[m]) * d.in_w + s_ix[m]) * d.c_in + c0;
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (tc * 4 + j < width) dst[tc * 4 + j] = from_float<T>(acc[i][j]);
  }
}

// bf16/fp16 on the tensor cores: the same walk with 16-bit tiles As[TM][K] (dy rows, as they
// are) and Bs[BKP][K] (W transposed while staged: K = output channels), one mma.m16n8k16 step
// per staged chunk. Warps tile the block 4 (pixels) × BKP/WN (channels), each WM=32 × WN.
template <int BKP>
struct GradInputMmaTile {
  static constexpr int TM = 128, WM = 32, WN = BKP < 32 ? BKP : 32;
  static constexpr int WARPS_M = TM / WM, WARPS_N = BKP / WN;
  static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
  static constexpr int KROW = MMA_K + 8;  // staged row, in halves
};

template <typename T, int BKP>
__global__ void __launch_bounds__(GradInputMmaTile<BKP>::THREADS)
grad_input_mma_kernel(const Dims d, const Phases ph, const int32_t* __restrict__ col_ptr,
                      const int32_t* __restrict__ row_idx, const T* __restrict__ dy_,
                      const T* __restrict__ w_, T* __restrict__ dx) {
  using Tile = GradInputMmaTile<BKP>;
  constexpr int TM = Tile::TM, THREADS = Tile::THREADS, KROW = Tile::KROW;
  constexpr int MT = Tile::WM / 16, NT = Tile::WN / 8;
  constexpr int NA = TM * 2 / THREADS;  // dy vectors (8 halves) a thread stages per chunk
  __shared__ __align__(16) uint16_t As[2][TM * KROW];  // double-buffered chunks
  __shared__ __align__(16) uint16_t Bs[2][BKP * KROW];
  __shared__ int s_b[TM], s_iy[TM], s_ix[TM];
  const uint16_t* dy = reinterpret_cast<const uint16_t*>(dy_);
  const uint16_t* w = reinterpret_cast<const uint16_t*>(w_);

  WalkSpace ws;
  if (!setup_tile(d, ph, TM, THREADS, ws, s_b, s_iy, s_ix, col_ptr, row_idx)) return;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = warp % Tile::WARPS_M, wn = warp / Tile::WARPS_M;
  const int h = (tid % 2) * 8;  // dy staging: half h of rows tid/2 + j·THREADS/2
  const bool loads_b = tid < 2 * BKP;  // W staging: row kb, channels cb8 .. cb8 + 7
  const int kb = tid / (BKP / 8), cb8 = (tid % (BKP / 8)) * 8;
  const int c0 = ws.cb * d.bk, width = min(d.bk, d.c_in - c0);
  __syncthreads();

  int64_t off[NA];  // dy rows of this thread's pixels for term off_term (-1: none)
  int off_term = -1;
  uint4 ra[NA], rb = {};
  auto gather = [&](const Walk& s) {
    if (s.term != off_term) {
#pragma unroll
      for (int j = 0; j < NA; ++j)
        off[j] = dy_row(d, s, s_b, s_iy, s_ix, tid / 2 + j * (THREADS / 2));
      off_term = s.term;
    }
#pragma unroll
    for (int j = 0; j < NA; ++j)
      ra[j] = load8(dy + off[j] + s.n0 + s.nc + h, off[j] >= 0 ? s.rows - s.nc - h : 0);
    if (loads_b)
      rb = load8(w + (int64_t)(s.n0 + s.nc + kb) * d.w_row_stride + (int64_t)s.tap * d.c_in +
                     c0 + cb8,
                 s.nc + kb < s.rows ? width - cb8 : 0);
  };
  auto stage = [&](int buf) {
#pragma unroll
    for (int j = 0; j < NA; ++j)
      *reinterpret_cast<uint4*>(&As[buf][(tid / 2 + j * (THREADS / 2)) * KROW + h]) = ra[j];
    if (loads_b) {
#pragma unroll
      for (int j = 0; j < 8; ++j) Bs[buf][(cb8 + j) * KROW + kb] = element8(rb, j);
    }
  };

  float acc[MT][NT][4] = {};
  Walk cur;
  walk_term(d, ws, 0, cur);
  if (cur.term < ws.terms) {
    gather(cur);
    stage(0);
  }
  __syncthreads();
  for (int buf = 0; cur.term < ws.terms; buf ^= 1) {  // uniform walk
    Walk next = cur;
    walk_next(d, ws, MMA_K, next);
    const bool more = next.term < ws.terms;
    if (more) gather(next);  // loads in flight during the multiply below
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
    if (more) stage(buf ^ 1);
    __syncthreads();
    cur = next;
  }

  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      const int m = wm * Tile::WM + mt * 16 + g + hi * 8;
      if (s_b[m] < 0) continue;
      T* dst = dx + (((int64_t)s_b[m] * d.in_h + s_iy[m]) * d.in_w + s_ix[m]) * d.c_in + c0;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int c = wn * Tile::WN + nt * 8 + 2 * t + e;
          if (c < width) dst[c] = from_float<T>(acc[mt][nt][hi * 2 + e]);
        }
    }
}

int gcd(int a, int b) {
  while (b) {
    const int t = a % b;
    a = b;
    b = t;
  }
  return a;
}

Phases phases(const Dims& d, int tm) {
  Phases ph;
  ph.step_h = d.stride_h / gcd(d.stride_h, d.up);
  ph.step_w = d.stride_w / gcd(d.stride_w, d.up);
  ph.tiles = cdiv(d.batch * cdiv(d.in_h, ph.step_h) * cdiv(d.in_w, ph.step_w), tm);
  return ph;
}

template <typename T, int BKP>
void launch_grad_input(const Dims& d, const int32_t* col_ptr, const int32_t* row_idx,
                       const void* dy, const void* w, void* dx, cudaStream_t stream) {
  using Tile = GradInputTile<BKP>;
  const Phases ph = phases(d, Tile::TM);
  const dim3 grid(ph.step_h * ph.step_w * ph.tiles, d.blocks_per_tap);
  grad_input_kernel<T, BKP><<<grid, Tile::THREADS, 0, stream>>>(
      d, ph, col_ptr, row_idx, static_cast<const T*>(dy), static_cast<const T*>(w),
      static_cast<T*>(dx));
}

template <typename T, int BKP>
void launch_grad_input_mma(const Dims& d, const int32_t* col_ptr, const int32_t* row_idx,
                           const void* dy, const void* w, void* dx, cudaStream_t stream) {
  using Tile = GradInputMmaTile<BKP>;
  const Phases ph = phases(d, Tile::TM);
  const dim3 grid(ph.step_h * ph.step_w * ph.tiles, d.blocks_per_tap);
  grad_input_mma_kernel<T, BKP><<<grid, Tile::THREADS, 0, stream>>>(
      d, ph, col_ptr, row_idx, static_cast<const T*>(dy), static_cast<const T*>(w),
      static_cast<T*>(dx));
}

}  // namespace
}  // namespace cuda
}  // namespace sparsekit

extern "C" const char* sparsekit_cuda_grad_input(const sparsekit::Problem* p, int dtype,
                                                 int device, const int32_t* col_ptr,
                                                 const int32_t* row_idx, const void* dy,
                                                 const void* w, void* dx, void* stream) {
  using namespace sparsekit::cuda;
  Dims d;
  if (const char* err = make_dims(*p, &d)) return err;
  if (const char* err = prepare(device, dtype)) return err;
  if (d.batch * d.in_h * d.in_w == 0 || d.c_in == 0) return nullptr;  // nothing to write
  if (d.blocks_per_tap > 65535) return "sparsekit._C_cuda: more than 65535 channel blocks";
  const auto s = static_cast<cudaStream_t>(stream);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same<T, float>::value) {
      if (tensor_cores_enabled()) {
        switch (padded_side(d.bk)) {
          case 16: launch_grad_input_mma<T, 16>(d, col_ptr, row_idx, dy, w, dx, s); break;
          case 32: launch_grad_input_mma<T, 32>(d, col_ptr, row_idx, dy, w, dx, s); break;
          default: launch_grad_input_mma<T, 64>(d, col_ptr, row_idx, dy, w, dx, s); break;
        }
        return;
      }
    }
    switch (padded_side(d.bk)) {
      case 16: launch_grad_input<T, 16>(d, col_ptr, row_idx, dy, w, dx, s); break;
      case 32: launch_grad_input<T, 32>(d, col_ptr, row_idx, dy, w, dx, s); break;
      default: launch_grad_input<T, 64>(d, col_ptr, row_idx, dy, w, dx, s); break;
    }
  });
  return launch_error();
}
