// dX = dY · W_kept: the transposed implicit GEMM, one kernel for linear and conv.
//
// Input pixels are split into phases: with step = stride / gcd(stride, upsample) per axis,
// pixels (iy, ix) ≡ (φy, φx) mod step are reached by the same taps (and sub-pixels of the
// upsampled input), so each CTA serves one phase and skips every term that cannot reach it —
// stride-s dX runs as s² phase sub-problems with no atomics; pixels no window reaches get exact
// zeros. Grid (tile_grid): x = channel blocks of a tap (c_in / bk), y/z = phases × tiles of TM
// pixels of a phase (tiles sized for the largest phase; CTAs past a phase's pixels exit at once).
// A CTA owns TM input pixels × BKP (bk padded to 16/32/64) channels and, for each term, walks the
// kept blocks of the column (tap, cb) from col_ptr/row_idx through the main loop (mainloop.cuh),
// each block's output channels in chunks: A = the dy rows of the output pixels the term
// maps its pixels to (zero-filled where none), B = the block's W rows as stored ([chunk][BKP]:
// channel-contiguous, the reduction axis across rows). FFMA or mma.sync as in the forward.
#include "mainloop.cuh"

namespace sparsekit {
namespace cuda {
namespace {

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
  const int index = tile_index();
  if (index >= ph.step_h * ph.step_w * ph.tiles) return false;  // the z fold rounds up
  const int phase = index / ph.tiles, tile = index % ph.tiles;
  ws.fy = phase / ph.step_w;
  ws.fx = phase % ph.step_w;
  const int ny = ws.fy < d.in_h ? cdiv(d.in_h - ws.fy, ph.step_h) : 0;
  const int nx = ws.fx < d.in_w ? cdiv(d.in_w - ws.fx, ph.step_w) : 0;
  const int count = d.batch * ny * nx, q0 = tile * tm;
  if (q0 >= count) return false;  // uniform: this phase has fewer pixels than the tiles cover
  ws.cb = blockIdx.x;
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

// At least 2 CTAs per SM, as in the forward.
template <class Math>
__global__ void __launch_bounds__(Math::THREADS, 2)
grad_input_kernel(const Dims d, const Phases ph, const int32_t* __restrict__ col_ptr,
                  const int32_t* __restrict__ row_idx, const typename Math::T* __restrict__ dy,
                  const typename Math::T* __restrict__ w, typename Math::T* __restrict__ dx) {
  using T = typename Math::T;
  using A = typename Math::A;
  using B = typename Math::B;
  constexpr int TM = Math::TM;
  __shared__ Stages<Math> st;
  __shared__ int s_b[TM], s_iy[TM], s_ix[TM];  // per pixel: image (-1 past the phase), coords

  WalkSpace ws;
  if (!setup_tile(d, ph, TM, Math::THREADS, ws, s_b, s_iy, s_ix, col_ptr, row_idx)) return;
  const int tid = threadIdx.x;
  const int c0 = ws.cb * d.bk, width = min(d.bk, d.c_in - c0);
  __syncthreads();  // the pixel coordinates are read by other threads' gathers

  const Raw<T>* dyr = reinterpret_cast<const Raw<T>*>(dy);
  const Raw<T>* wr = reinterpret_cast<const Raw<T>*>(w);
  Walk s;  // the next chunk to copy
  walk_term(d, ws, 0, s);
  int64_t off[A::PER_THREAD];  // dy row of each of this thread's pixels for term off_term
  int off_term = -1;
  auto issue = [&](Raw<T>* as, Raw<T>* bs) {
    if (s.term >= ws.terms) return false;
    if (s.term != off_term) {
      A::for_rows(tid, [&](int j, int m) { off[j] = dy_row(d, s, s_b, s_iy, s_ix, m); });
      off_term = s.term;
    }
    A::copy(as, dyr, tid, [&](int j, int, int c, int& avail) {
      avail = off[j] >= 0 ? s.rows - s.nc - c : 0;
      return off[j] + s.n0 + s.nc + c;
    });
    const int64_t k0 = (int64_t)s.tap * d.c_in + c0;
    B::copy(bs, wr, tid, [&](int, int k, int c, int& avail) {
      avail = s.nc + k < s.rows ? width - c : 0;
      return (int64_t)(s.n0 + s.nc + k) * d.w_row_stride + k0 + c;
    });
    walk_next(d, ws, Math::KC, s);
    return true;
  };

  typename Math::Acc acc;
  Math::zero(acc);
  main_loop<Math>(st, acc, issue);

  Math::for_each(acc, [&](int m, int c, float v) {
    if (s_b[m] >= 0 && c < width)
      dx[(((int64_t)s_b[m] * d.in_h + s_iy[m]) * d.in_w + s_ix[m]) * d.c_in + c0 + c] =
          from_float<T>(v);
  });
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

template <typename T, int NP, bool TENSOR_CORES, bool DEEP>
void launch_grad_input(const Dims& d, const int32_t* col_ptr, const int32_t* row_idx,
                       const void* dy, const void* w, void* dx, cudaStream_t stream) {
  using Math = MathFor<T, NP, /*B_KMAJOR=*/true, TENSOR_CORES, DEEP>;
  const Phases ph = phases(d, Math::TM);
  const dim3 grid = tile_grid(d.blocks_per_tap, ph.step_h * ph.step_w * ph.tiles);
  grad_input_kernel<Math><<<grid, Math::THREADS, 0, stream>>>(
      d, ph, col_ptr, row_idx, static_cast<const T*>(dy), static_cast<const T*>(w),
      static_cast<T*>(dx));
}

template <typename T, int NP>
void launch_grad_input(bool tensor_cores, const Dims& d, const int32_t* col_ptr,
                       const int32_t* row_idx, const void* dy, const void* w, void* dx,
                       cudaStream_t stream) {
  if (!tensor_cores)
    launch_grad_input<T, NP, false, false>(d, col_ptr, row_idx, dy, w, dx, stream);
  else if (d.bn > 16)  // the reduction runs along bn
    launch_grad_input<T, NP, true, true>(d, col_ptr, row_idx, dy, w, dx, stream);
  else
    launch_grad_input<T, NP, true, false>(d, col_ptr, row_idx, dy, w, dx, stream);
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
  const auto s = static_cast<cudaStream_t>(stream);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool tc = !std::is_same<T, float>::value && tensor_cores_enabled();
    switch (padded_side(d.bk)) {
      case 16: launch_grad_input<T, 16>(tc, d, col_ptr, row_idx, dy, w, dx, s); break;
      case 32: launch_grad_input<T, 32>(tc, d, col_ptr, row_idx, dy, w, dx, s); break;
      default: launch_grad_input<T, 64>(tc, d, col_ptr, row_idx, dy, w, dx, s); break;
    }
  });
  return launch_error();
}
