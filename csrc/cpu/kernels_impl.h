// Block-sparse implicit-GEMM kernels for the CPU: forward, grad_input (dX), grad_weight (dW).
//
// Included once per ISA by kernels_<isa>.cpp with SPARSEKIT_ISA set to the namespace name,
// SPARSEKIT_VL to the floats per vector register (16 AVX-512, 8 AVX2, 4 NEON and the portable
// build) and SPARSEKIT_VREGS to the vector registers the tiles may fill (32 AVX-512 and NEON, 16
// AVX2 and SSE2); the file is compiled with that ISA's flags. It uses no std:: templates, so no
// inline function compiled for one ISA can be picked by the linker for another.
//
// Design (DESIGN.md §3, CPU kernels): register-blocked micro-kernels hold a tile of MR pixels ×
// (NV·VL) channels in vector registers and stream the reduction axis, broadcasting one scalar
// per pixel and loading NV vectors of the other operand per step. MR is the largest power of two
// whose MR·NV accumulators, NV operand vectors and one broadcast fit in VREGS registers.
//   forward : pixels × output channels of one block row; reduction over the kept blocks' K.
//             W's kept blocks are packed K-major once per call ([bk][NV·VL], zero padded).
//   dX      : input pixels × c_in of one channel block; reduction over the kept blocks of that
//             block column (all taps, and for stride s the taps of the pixel's phase only).
//   dW      : rows of one kept block × its c_in; reduction over the valid pixels of its tap.
// Every output element is produced by one work item in a fixed order, so results are
// bit-identical run to run and independent of the thread count's schedule.
#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kernels.h"

namespace sparsekit {
namespace SPARSEKIT_ISA {
namespace {

constexpr int VL = SPARSEKIT_VL;        // floats per vector
constexpr int VREGS = SPARSEKIT_VREGS;  // vector registers a micro-kernel tile may use
constexpr int MAX_NV = 64 / VL;         // vectors across the widest (64) block
typedef float vf __attribute__((vector_size(VL * 4)));
typedef float vfu __attribute__((vector_size(VL * 4), aligned(4)));

template <int N>
struct Int {
  static constexpr int value = N;
};  // a compile-time int for the dispatchers below

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline vf loadu(const float* p) { return *reinterpret_cast<const vfu*>(p); }
inline void storeu(float* p, vf v) { *reinterpret_cast<vfu*>(p) = v; }

// Max pixels (rows) per dW tile for NV vectors across: the largest power of two ≤ 16 with MR·NV
// accumulators + NV operand vectors + 1 broadcast ≤ VREGS (at least 1).
constexpr int max_tile_for(int nv) {
  int mr = 16;
  while (mr > 1 && mr * nv + nv + 1 > VREGS) mr /= 2;
  return mr;
}

// Register tile of the forward and dX micro-kernels for a block NV vectors wide: MR pixels ×
// NVT vectors, the block's width covered in NV / NVT passes over the reduction. Every packed
// operand vector loaded feeds MR FMAs and every broadcast NVT, so the shape maximises FMAs per
// load, MR·NVT / (MR + NVT), with MR·NVT accumulators + NVT operand vectors + 1 broadcast ≤
// VREGS and MR in {16, 8, 6, 4, 3, 2, 1} (≤ 8 pixel pointers + 2 counters fit x86-64's 16
// general registers; 16 only where NVT = 1). It matters where the packed weights stream from L2
// (a block row's kept blocks exceed L1 at d ≳ 0.2): loaded bytes per FMA fall as 1/MR. 32-wide
// blocks: AVX-512 8 × 2 (one pass); AVX2 6 × 2 (two passes) rather than 2 × 4, which loaded a
// weight vector per 2 FMAs and ran at ~35 % of the FMA peak; NEON 6 × 4.
struct TileShape {
  int mr, nvt;
};
constexpr TileShape tile_shape(int nv) {
  constexpr int heights[] = {16, 8, 6, 4, 3, 2, 1};
  TileShape best{0, 0};
  for (int nvt = 1; nvt <= nv; ++nvt) {
    if (nv % nvt != 0) continue;
    for (int mr : heights) {
      if ((mr == 16 && nvt > 1) || mr * nvt + nvt + 1 > VREGS) continue;
      // more FMAs per load wins; a tie goes to the wider tile (fewer passes)
      if (best.mr == 0 || mr * nvt * (best.mr + best.nvt) >= best.mr * best.nvt * (mr + nvt))
        best = TileShape{mr, nvt};
      break;  // the tallest height that fits this width
    }
  }
  return best;
}

// Vectors across a width: the kernels are instantiated for NV = 1, 2, 3, 4, 8, 16 (those ≤
// MAX_NV), so other counts round up; packed and padded rows are zero beyond the width.
inline int vec_count(int64_t width) {
  const int nv = (int)((width + VL - 1) / VL);
  return nv <= 4 ? nv : (nv <= 8 ? 8 : 16);
}

// Calls f(Int<NV>{}) for a vector count from vec_count.
template <typename F>
void with_nv(int nv, F&& f) {
  if (nv == 1) return f(Int<1>{});
  if (nv == 2) return f(Int<2>{});
  if (nv == 3) return f(Int<3>{});
  if (nv == 4) return f(Int<4>{});
  if constexpr (MAX_NV >= 8)
    if (nv == 8) return f(Int<8>{});
  if constexpr (MAX_NV >= 16) return f(Int<16>{});
}

constexpr int pow2_below(int n) {  // the largest power of two < n (0 for n ≤ 1)
  int p = 1;
  while (2 * p < n) p *= 2;
  return n > 1 ? p : 0;
}

// Calls f(Int<M>{}) for the smallest M ≥ mr among TOP and the powers of two below it (the tile
// heights instantiated: a partial tile of mr pixels runs with M - mr zero rows).
template <int TOP, typename F>
void with_mr(int64_t mr, F&& f) {
  constexpr int below = pow2_below(TOP);
  if constexpr (below == 0) {
    return f(Int<TOP>{});
  } else {
    if (mr > below) return f(Int<TOP>{});
    return with_mr<below>(mr, f);
  }
}

struct Buffer {  // 64-byte aligned scratch, freed on scope exit
  void* ptr = nullptr;
  explicit Buffer(int64_t bytes) {
    int64_t n = (bytes + 63) / 64 * 64;
    ptr = std::aligned_alloc(64, n > 0 ? n : 64);
  }
  ~Buffer() { std::free(ptr); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  template <typename T>
  T* as() const { return static_cast<T*>(ptr); }
};

// Columns [k0, k0 + width) of W covered by block column `col` (tap `tap`, channels from c0).
struct BlockCols {
  int64_t tap, c0, width, k0;
};
inline BlockCols block_cols(const Problem& p, int64_t col) {
  BlockCols b;
  b.tap = col / p.blocks_per_tap;
  b.c0 = (col % p.blocks_per_tap) * p.bk;
  b.width = imin(p.bk, p.c_in - b.c0);
  b.k0 = b.tap * p.c_in + b.c0;
  return b;
}
inline int64_t block_height(const Problem& p, int64_t row) { return imin(p.bn, p.c_out - row * p.bn); }

// Logical (upsampled) input coordinate of output coordinate `o` at kernel offset `k`; valid
// iff in [0, upsample·size). Returns the physical input coordinate or -1.
inline int64_t input_coord(int64_t o, int64_t k, int64_t stride, int64_t pad, int64_t dil,
                           int64_t up, int64_t size) {
  const int64_t l = o * stride - pad + k * dil;
  if (l < 0 || l >= up * size) return -1;
  return up == 1 ? l : l / up;  // skip the 64-bit division in the common case
}

// Store `v` (lanes beyond `count` dropped) at dst.
inline void store_partial(float* dst, vf v, int64_t count) {
  if (count >= VL) {
    storeu(dst, v);
  } else {
    for (int64_t j = 0; j < count; ++j) dst[j] = v[j];
  }
}

// ------------------------------------------------------------------------------------ forward
// Where kept block i reads its input: tap and channel range (precomputed: no division in the
// micro-kernel loop).
struct KeptBlock {
  int32_t tap, c0, width, pad_;
};

// Kept block i (row-major order) packed as [bk][nv·16]: packed[k][n] = W[n0 + n, k0 + k].
void pack_forward(const Problem& p, const Index& ix, int64_t nnz, int nv, const float* w,
                  float* packed, KeptBlock* meta) {
  const int64_t width_pad = nv * VL;
#pragma omp parallel for num_threads(p.threads) schedule(static)
  for (int64_t i = 0; i < nnz; ++i) {
    const int64_t row = ix.block_row[i];
    const BlockCols bc = block_cols(p, ix.col_idx[i]);
    meta[i] = KeptBlock{(int32_t)bc.tap, (int32_t)bc.c0, (int32_t)bc.width, 0};
    const int64_t n0 = row * p.bn, rows = block_height(p, row);
    float* dst = packed + i * p.bk * width_pad;
    std::memset(dst, 0, sizeof(float) * p.bk * width_pad);
    for (int64_t n = 0; n < rows; ++n) {
      const float* src = w + (n0 + n) * p.w_row_stride + bc.k0;
      for (int64_t k = 0; k < bc.width; ++k) dst[k * width_pad + n] = src[k];
    }
  }
}

// One tile of MR output pixels (consecutive in N·H·W order, so a tile may span image rows) ×
// block rows [r0, r1). `a` holds, per tap, MR pointers to the input pixel rows (channel 0) the
// tile's pixels read at that tap (a zero row where the tap reads padding or the pixel is past
// the end); taps with tap_ok false are skipped. y_tile: the tile's first output pixel; the
// first mr ≤ MR pixels are real.
struct ForwardArgs {
  const KeptBlock* meta;
  const float* const* a;
  const bool* tap_ok;
  const float* packed;
  const float* bias_pad;
  int64_t r0, r1;
  float* y_tile;
  int64_t mr;
};

// Output channels [n0 + h·NVT·VL, + NVT·VL) of the tile's pixels (pass h of tile_shape).
template <int MR, int NVT, int NV>
void forward_pass(const Problem& p, const Index& ix, const ForwardArgs& f, int64_t r, int h) {
  constexpr int64_t WP = NV * VL;
  vf acc[MR][NVT];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NVT; ++v) acc[m][v] = vf{};
  for (int64_t i = ix.row_ptr[r], end = ix.row_ptr[r + 1]; i < end; ++i) {
    const KeptBlock kb = f.meta[i];
    if (!f.tap_ok[kb.tap]) continue;
    const float* am[MR];
    for (int m = 0; m < MR; ++m) am[m] = f.a[kb.tap * MR + m] + kb.c0;
    const float* b = f.packed + i * p.bk * WP + h * NVT * VL;
    for (int64_t k = 0; k < kb.width; ++k) {
      vf bv[NVT];
      for (int v = 0; v < NVT; ++v) bv[v] = loadu(b + k * WP + v * VL);
      for (int m = 0; m < MR; ++m) {
        const float s = am[m][k];
        for (int v = 0; v < NVT; ++v) acc[m][v] += s * bv[v];
      }
    }
  }
  const int64_t n0 = r * p.bn + h * NVT * VL, rows = block_height(p, r) - h * NVT * VL;
  for (int64_t m = 0; m < f.mr; ++m) {
    float* dst = f.y_tile + m * p.c_out + n0;
    for (int v = 0; v < NVT; ++v)
      store_partial(dst + v * VL, acc[m][v] + loadu(f.bias_pad + n0 + v * VL), rows - v * VL);
  }
}

template <int MR, int NV>
void forward_tile(const Problem& p, const Index& ix, const ForwardArgs& f) {
  constexpr int NVT = tile_shape(NV).nvt;
  for (int64_t r = f.r0; r < f.r1; ++r)
    for (int h = 0; h < NV / NVT; ++h) forward_pass<MR, NVT, NV>(p, ix, f, r, h);
}

void forward_tile_any(int nv, int64_t mr, const Problem& p, const Index& ix,
                      const ForwardArgs& f) {
  with_nv(nv, [&](auto nv_) {
    constexpr int NV = decltype(nv_)::value;
    with_mr<tile_shape(NV).mr>(mr, [&](auto mr_) {
      forward_tile<decltype(mr_)::value, NV>(p, ix, f);
    });
  });
}

// The tile height the forward and dX kernels run for a block nv vectors wide when `want`
// pixels are available: the smallest instantiated height (with_mr) ≥ min(want, the shape's MR).
inline int tile_height(int nv, int64_t want) {
  int mr = 1;
  with_nv(nv, [&](auto nv_) {
    constexpr int TOP = tile_shape(decltype(nv_)::value).mr;
    with_mr<TOP>(imin(want, TOP), [&](auto m_) { mr = decltype(m_)::value; });
  });
  return mr;
}

// Splits `count` units into groups so that tiles × groups gives every thread several items.
inline int64_t split_groups(int64_t tiles, int64_t count, int threads) {
  int64_t want = cdiv(4 * (int64_t)threads, tiles > 0 ? tiles : 1);
  return want < 1 ? 1 : imin(want, count > 0 ? count : 1);
}

}  // namespace

void forward(const Problem& p, const Index& ix, const float* x, const float* w, const float* bias,
             float* y) {
  const int nv = vec_count(p.bn);
  const int64_t nnz = ix.row_ptr[p.grid_rows];
  const int64_t taps = p.kh * p.kw;
  Buffer packed(sizeof(float) * (nnz > 0 ? nnz : 1) * p.bk * nv * VL);
  Buffer meta(sizeof(KeptBlock) * (nnz > 0 ? nnz : 1));
  pack_forward(p, ix, nnz, nv, w, packed.as<float>(), meta.as<KeptBlock>());
  // Taps some kept block reads: the tiles set up input pointers for these only (at SNGAN's
  // densities a layer keeps blocks at a few of its 9 taps, and the setup is per tile).
  Buffer live_buf(sizeof(bool) * taps);
  bool* tap_live = live_buf.as<bool>();
  for (int64_t tap = 0; tap < taps; ++tap) tap_live[tap] = false;
  for (int64_t i = 0; i < nnz; ++i) tap_live[meta.as<KeptBlock>()[i].tap] = true;

  const int64_t padded_n = p.grid_rows * p.bn + VL * MAX_NV;
  Buffer bias_buf(sizeof(float) * padded_n);
  float* bias_pad = bias_buf.as<float>();
  for (int64_t n = 0; n < padded_n; ++n) bias_pad[n] = (bias && n < p.c_out) ? bias[n] : 0.f;
  Buffer zero_buf(sizeof(float) * (p.c_in + VL * MAX_NV));
  const float* zeros = zero_buf.as<float>();
  std::memset(zero_buf.ptr, 0, sizeof(float) * (p.c_in + VL * MAX_NV));

  // Tiles are runs of `tile` consecutive output pixels in N·H·W order (only the last one partial).
  const int64_t pixels = p.batch * p.out_h * p.out_w;
  const int64_t tile = tile_height(nv, pixels);
  const int64_t tiles = cdiv(pixels, tile);
  const int64_t groups = split_groups(tiles, p.grid_rows, p.threads);
  const int64_t rows_per_group = cdiv(p.grid_rows, groups);

#pragma omp parallel num_threads(p.threads)
  {
    Buffer ptr_buf(sizeof(const float*) * taps * tile);
    Buffer ok_buf(sizeof(bool) * taps);
    const float** a = ptr_buf.as<const float*>();
    bool* tap_ok = ok_buf.as<bool>();
#pragma omp for schedule(static)
    for (int64_t item = 0; item < tiles * groups; ++item) {
      const int64_t t = item / groups, g = item % groups;
      const int64_t q0 = t * tile, mr = imin(tile, pixels - q0);
      for (int64_t tap = 0; tap < taps; ++tap) tap_ok[tap] = false;
      int64_t ox = q0 % p.out_w, oy = (q0 / p.out_w) % p.out_h, b = q0 / (p.out_w * p.out_h);
      for (int64_t m = 0; m < tile; ++m) {
        for (int64_t ky = 0; ky < p.kh; ++ky) {
          const int64_t iy =
              m < mr ? input_coord(oy, ky, p.stride_h, p.pad_h, p.dil_h, p.upsample, p.in_h) : -1;
          const float* x_row = iy >= 0 ? x + (b * p.in_h + iy) * p.in_w * p.c_in : nullptr;
          for (int64_t kx = 0; kx < p.kw; ++kx) {
            const int64_t tap = ky * p.kw + kx;
            if (!tap_live[tap]) continue;  // stays tap_ok false: no kept block reads it
            const int64_t ixc =
                iy >= 0 ? input_coord(ox, kx, p.stride_w, p.pad_w, p.dil_w, p.upsample, p.in_w)
                        : -1;
            a[tap * tile + m] = ixc >= 0 ? x_row + ixc * p.c_in : zeros;
            tap_ok[tap] |= ixc >= 0;
          }
        }
        if (++ox == p.out_w) {  // the next pixel in N·H·W order
          ox = 0;
          if (++oy == p.out_h) oy = 0, ++b;
        }
      }
      const int64_t r0 = g * rows_per_group, r1 = imin(p.grid_rows, r0 + rows_per_group);
      forward_tile_any(nv, tile, p, ix,
                       ForwardArgs{meta.as<KeptBlock>(), a, tap_ok, packed.as<float>(), bias_pad,
                                   r0, r1, y + q0 * p.c_out, mr});
    }
  }
}

// ------------------------------------------------------------------------------------ dX
namespace {

// Kept block i (column-major order) packed as [bn][nv·16]: packed[n][k] = W[n0 + n, k0 + k].
void pack_transpose(const Problem& p, const Index& ix, int nv, const float* w, float* packed) {
  const int64_t width_pad = nv * VL;
#pragma omp parallel for num_threads(p.threads) schedule(static)
  for (int64_t col = 0; col < p.grid_cols; ++col) {
    const BlockCols bc = block_cols(p, col);
    for (int64_t i = ix.col_ptr[col], end = ix.col_ptr[col + 1]; i < end; ++i) {
      const int64_t row = ix.row_idx[i];
      const int64_t n0 = row * p.bn, rows = block_height(p, row);
      float* dst = packed + i * p.bn * width_pad;
      std::memset(dst, 0, sizeof(float) * p.bn * width_pad);
      for (int64_t n = 0; n < rows; ++n)
        std::memcpy(dst + n * width_pad, w + (n0 + n) * p.w_row_stride + bc.k0,
                    sizeof(float) * bc.width);
    }
  }
}

// Input channels [cb·bk + h·NVT·VL, + NVT·VL) of the tile's pixels (pass h of tile_shape).
template <int MR, int NVT, int NV>
void grad_input_pass(const Problem& p, const Index& ix, const float* const* a,
                     const int64_t* term_tap, const bool* term_ok, int64_t terms,
                     const float* packed, int64_t cb, int h, float* dx_tile,
                     int64_t pixel_stride, int64_t mr) {
  constexpr int64_t WP = NV * VL;
  vf acc[MR][NVT];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NVT; ++v) acc[m][v] = vf{};
  for (int64_t term = 0; term < terms; ++term) {
    if (!term_ok[term]) continue;
    const int64_t col = term_tap[term] * p.blocks_per_tap + cb;
    for (int64_t i = ix.col_ptr[col], end = ix.col_ptr[col + 1]; i < end; ++i) {
      const int64_t row = ix.row_idx[i];
      const int64_t rows = block_height(p, row);
      const float* am[MR];
      for (int m = 0; m < MR; ++m) am[m] = a[term * MR + m] + row * p.bn;
      const float* b = packed + i * p.bn * WP + h * NVT * VL;
      for (int64_t n = 0; n < rows; ++n) {
        vf bv[NVT];
        for (int v = 0; v < NVT; ++v) bv[v] = loadu(b + n * WP + v * VL);
        for (int m = 0; m < MR; ++m) {
          const float s = am[m][n];
          for (int v = 0; v < NVT; ++v) acc[m][v] += s * bv[v];
        }
      }
    }
  }
  const int64_t c0 = cb * p.bk + h * NVT * VL;
  const int64_t width = imin(p.bk, p.c_in - cb * p.bk) - h * NVT * VL;
  for (int64_t m = 0; m < mr; ++m)
    for (int v = 0; v < NVT; ++v)
      store_partial(dx_tile + m * pixel_stride + c0 + v * VL, acc[m][v], width - v * VL);
}

// One tile of MR input pixels × channel blocks [cb_begin, cb_end). For each term (a tap, and
// with upsampling a sub-pixel) `a` holds MR pointers to the dy rows the pixels receive from
// (a zero row where none), term_tap its tap, term_ok whether any pixel receives.
template <int MR, int NV>
void grad_input_tile(const Problem& p, const Index& ix, const float* const* a,
                     const int64_t* term_tap, const bool* term_ok, int64_t terms,
                     const float* packed, int64_t cb_begin, int64_t cb_end, float* dx_tile,
                     int64_t pixel_stride, int64_t mr) {
  constexpr int NVT = tile_shape(NV).nvt;
  for (int64_t cb = cb_begin; cb < cb_end; ++cb)
    for (int h = 0; h < NV / NVT; ++h)
      grad_input_pass<MR, NVT, NV>(p, ix, a, term_tap, term_ok, terms, packed, cb, h, dx_tile,
                                      pixel_stride, mr);
}

void grad_input_tile_any(int nv, int MR, const Problem& p, const Index& ix, const float* const* a,
                         const int64_t* tt, const bool* ok, int64_t terms, const float* packed,
                         int64_t c0, int64_t c1, float* dx, int64_t ps, int64_t mr) {
  with_nv(nv, [&](auto nv_) {
    constexpr int NV = decltype(nv_)::value;
    with_mr<tile_shape(NV).mr>(MR, [&](auto mr_) {
      grad_input_tile<decltype(mr_)::value, NV>(p, ix, a, tt, ok, terms, packed, c0, c1, dx, ps,
                                                mr);
    });
  });
}

inline int64_t gcd(int64_t a, int64_t b) {
  while (b) {
    int64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

// Output coordinate that reads input coordinate `i` (sub-pixel `sub` of the upsampled input)
// at kernel offset `k`, or -1 if none does.
inline int64_t output_coord(int64_t i, int64_t sub, int64_t k, int64_t stride, int64_t pad,
                            int64_t dil, int64_t up, int64_t out_size) {
  const int64_t num = up * i + sub + pad - k * dil;
  if (num < 0) return -1;
  int64_t o = num;
  if (stride != 1) {  // skip the 64-bit divisions in the common case
    if (num % stride != 0) return -1;
    o = num / stride;
  }
  return o < out_size ? o : -1;
}

}  // namespace

// Input pixels are tiled by row and by phase along x: pixels ix ≡ φ (mod step) share which
// taps reach them (step = stride / gcd(stride, upsample)), so a stride-2 dX runs as phase
// sub-problems over their own taps; pixels no window reaches get exact zeros.
void grad_input(const Problem& p, const Index& ix, const float* dy, const float* w, float* dx) {
  const int nv = vec_count(p.bk);
  const int64_t nnz = ix.col_ptr[p.grid_cols];
  Buffer packed(sizeof(float) * (nnz > 0 ? nnz : 1) * p.bn * nv * VL);
  pack_transpose(p, ix, nv, w, packed.as<float>());
  Buffer zero_buf(sizeof(float) * (p.grid_rows * p.bn + VL * MAX_NV));
  std::memset(zero_buf.ptr, 0, sizeof(float) * (p.grid_rows * p.bn + VL * MAX_NV));
  const float* zeros = zero_buf.as<float>();

  // Taps whose block columns keep a block: the tiles set up dy pointers for these only.
  const int64_t taps = p.kh * p.kw;
  Buffer live_buf(sizeof(bool) * taps);
  bool* tap_live = live_buf.as<bool>();
  for (int64_t tap = 0; tap < taps; ++tap)
    tap_live[tap] = ix.col_ptr[(tap + 1) * p.blocks_per_tap] > ix.col_ptr[tap * p.blocks_per_tap];

  const int64_t up = p.upsample;
  const int64_t step = p.stride_w / gcd(p.stride_w, up);
  const int64_t terms = up * up * p.kh * p.kw;
  const int64_t per_phase = cdiv(p.in_w, step);
  const int64_t top = tile_height(nv, per_phase);  // even tiles: 8 pixels as 4 + 4, not 6 + 2
  const int tile = tile_height(nv, cdiv(per_phase, cdiv(per_phase, top)));
  const int64_t tiles_per_phase = cdiv(per_phase, tile);
  const int64_t tiles = p.batch * p.in_h * step * tiles_per_phase;
  const int64_t groups = split_groups(tiles, p.blocks_per_tap, p.threads);
  const int64_t cbs_per_group = cdiv(p.blocks_per_tap, groups);

#pragma omp parallel num_threads(p.threads)
  {
    Buffer ptr_buf(sizeof(const float*) * terms * tile);
    Buffer tap_buf(sizeof(int64_t) * terms);
    Buffer ok_buf(sizeof(bool) * terms);
    const float** a = ptr_buf.as<const float*>();
    int64_t* term_tap = tap_buf.as<int64_t>();
    bool* term_ok = ok_buf.as<bool>();
#pragma omp for schedule(static)
    for (int64_t item = 0; item < tiles * groups; ++item) {
      const int64_t t = item / groups, g = item % groups;
      const int64_t j0 = (t % tiles_per_phase) * tile;
      const int64_t phase = (t / tiles_per_phase) % step;
      const int64_t iy = (t / (tiles_per_phase * step)) % p.in_h;
      const int64_t b = t / (tiles_per_phase * step * p.in_h);
      const int64_t count = cdiv(p.in_w - phase, step);  // pixels in this phase
      const int64_t mr = imin(tile, count - j0);
      if (mr <= 0) continue;
      const int MR = tile_height(nv, mr);
      int64_t term = 0;
      for (int64_t sy = 0; sy < up; ++sy)
        for (int64_t sx = 0; sx < up; ++sx)
          for (int64_t ky = 0; ky < p.kh; ++ky) {
            const int64_t oy = output_coord(iy, sy, ky, p.stride_h, p.pad_h, p.dil_h, up, p.out_h);
            for (int64_t kx = 0; kx < p.kw; ++kx, ++term) {
              term_tap[term] = ky * p.kw + kx;
              term_ok[term] = false;
              if (!tap_live[term_tap[term]]) continue;  // no kept block: its pointers unread
              bool any = false;
              for (int64_t m = 0; m < MR; ++m) {
                const int64_t ixc = phase + (j0 + m) * step;
                const int64_t ox = m < mr ? output_coord(ixc, sx, kx, p.stride_w, p.pad_w,
                                                         p.dil_w, up, p.out_w) : -1;
                const bool ok = oy >= 0 && ox >= 0;
                a[term * MR + m] = ok ? dy + ((b * p.out_h + oy) * p.out_w + ox) * p.c_out : zeros;
                any |= ok;
              }
              term_ok[term] = any;
            }
          }
      const int64_t c0 = g * cbs_per_group, c1 = imin(p.blocks_per_tap, c0 + cbs_per_group);
      float* dx_tile = dx + ((b * p.in_h + iy) * p.in_w + phase + j0 * step) * p.c_in;
      grad_input_tile_any(nv, MR, p, ix, a, term_tap, term_ok, terms, packed.as<float>(), c0, c1,
                          dx_tile, step * p.c_in, mr);
    }
  }
}

// ------------------------------------------------------------------------------------ dW
namespace {

constexpr int64_t DW_CHUNK = 128;  // pixels per chunk: the chunk's x and dy rows stay in L1/L2

// acc[RN][NVK] += Σ_q dy[yo[q] + row0 + r] · x[xo[q] : + NVK·VL] over one chunk of pixel pairs.
template <int RN, int NVK>
void grad_weight_rows(const float* dy, const int64_t* yo, const float* x, const int64_t* xo,
                      int64_t count, int64_t row0, float* acc_mem) {
  constexpr int64_t stride = NVK * VL;
  vf acc[RN][NVK];
  for (int r = 0; r < RN; ++r)
    for (int v = 0; v < NVK; ++v) acc[r][v] = loadu(acc_mem + (row0 + r) * stride + v * VL);
  for (int64_t q = 0; q < count; ++q) {
    vf xv[NVK];
    const float* xq = x + xo[q];
    for (int v = 0; v < NVK; ++v) xv[v] = loadu(xq + v * VL);
    const float* d = dy + yo[q] + row0;
    for (int r = 0; r < RN; ++r) {
      const float s = d[r];
      for (int v = 0; v < NVK; ++v) acc[r][v] += s * xv[v];
    }
  }
  for (int r = 0; r < RN; ++r)
    for (int v = 0; v < NVK; ++v) storeu(acc_mem + (row0 + r) * stride + v * VL, acc[r][v]);
}

// Rows [r, rows) in tiles of RN, RN/2, ..., 1 rows.
template <int RN, int NVK>
void grad_weight_rows_from(const float* dy, const int64_t* yo, const float* x, const int64_t* xo,
                           int64_t count, int64_t r, int64_t rows, float* acc_mem) {
  for (; r + RN <= rows; r += RN) grad_weight_rows<RN, NVK>(dy, yo, x, xo, count, r, acc_mem);
  if constexpr (RN > 1)
    grad_weight_rows_from<RN / 2, NVK>(dy, yo, x, xo, count, r, rows, acc_mem);
}

void grad_weight_chunk_any(int nvk, const float* dy, const int64_t* yo, const float* x,
                           const int64_t* xo, int64_t count, int64_t rows, float* acc_mem) {
  with_nv(nvk, [&](auto nv_) {
    constexpr int NVK = decltype(nv_)::value;
    grad_weight_rows_from<max_tile_for(NVK), NVK>(dy, yo, x, xo, count, 0, rows, acc_mem);
  });
}

// The valid (output pixel, input pixel) pairs of each tap, as element offsets of their dy and
// x rows: pairs[t] lists count[t] pairs (yo[t·M + q], xo[t·M + q]). Shared by every block of
// the tap, so the per-pixel address arithmetic runs once per call, not once per block; taps
// no listed block reads (tap_start[t] == tap_start[t + 1]) get none.
void tap_pixel_pairs(const Problem& p, const int64_t* tap_start, int64_t* count, int64_t* yo,
                     int64_t* xo) {
  const int64_t taps = p.kh * p.kw, M = p.batch * p.out_h * p.out_w;
#pragma omp parallel for num_threads(p.threads) schedule(static)
  for (int64_t tap = 0; tap < taps; ++tap) {
    const int64_t ky = tap / p.kw, kx = tap % p.kw;
    int64_t n = 0;
    count[tap] = 0;
    if (tap_start[tap] == tap_start[tap + 1]) continue;
    for (int64_t b = 0; b < p.batch; ++b)
      for (int64_t oy = 0; oy < p.out_h; ++oy) {
        const int64_t iy = input_coord(oy, ky, p.stride_h, p.pad_h, p.dil_h, p.upsample, p.in_h);
        if (iy < 0) continue;
        for (int64_t ox = 0; ox < p.out_w; ++ox) {
          const int64_t ixc = input_coord(ox, kx, p.stride_w, p.pad_w, p.dil_w, p.upsample, p.in_w);
          if (ixc < 0) continue;
          yo[tap * M + n] = ((b * p.out_h + oy) * p.out_w + ox) * p.c_out;
          xo[tap * M + n] = ((b * p.in_h + iy) * p.in_w + ixc) * p.c_in;
          ++n;
        }
      }
    count[tap] = n;
  }
}

}  // namespace

// Pixel chunks outside, blocks inside: each thread owns a fixed share of every tap's pixel pairs
// and, chunk by chunk, feeds that chunk (its x and dy rows, hot in L2) to every listed block of
// the tap, accumulating into its own partial dW; the partials are then summed in thread order.
// Streaming the activations once per tap rather than once per block is what keeps dW off the
// memory-bandwidth limit. Deterministic for a given thread count (static split, fixed-order sum).
// Blocks narrower than a whole number of vectors read x through a zero-padded copy.
void grad_weight(const Problem& p, const Index& ix, const float* dy, const float* x, float* dw) {
  const int64_t count = *ix.block_count;
  const int64_t taps = p.kh * p.kw, M = p.batch * p.out_h * p.out_w;
  const int64_t acc_size = p.bn * vec_count(p.bk) * VL;  // one block's accumulator, padded
  const int threads = p.threads;
  if (count == 0) return;
  // The listed blocks grouped by tap (a stable counting sort): by_tap[tap_start[t] ...].
  Buffer tap_start_buf(sizeof(int64_t) * (taps + 1));
  Buffer by_tap_buf(sizeof(int64_t) * count);
  int64_t* tap_start = tap_start_buf.as<int64_t>();
  int64_t* by_tap = by_tap_buf.as<int64_t>();
  for (int64_t t = 0; t <= taps; ++t) tap_start[t] = 0;
  for (int64_t i = 0; i < count; ++i) ++tap_start[ix.col_idx[i] / p.blocks_per_tap + 1];
  for (int64_t t = 0; t < taps; ++t) tap_start[t + 1] += tap_start[t];
  {
    Buffer fill_buf(sizeof(int64_t) * taps);
    int64_t* fill = fill_buf.as<int64_t>();
    for (int64_t t = 0; t < taps; ++t) fill[t] = tap_start[t];
    for (int64_t i = 0; i < count; ++i) by_tap[fill[ix.col_idx[i] / p.blocks_per_tap]++] = i;
  }
  Buffer pair_count(sizeof(int64_t) * taps);
  Buffer pair_y(sizeof(int64_t) * taps * (M > 0 ? M : 1));
  Buffer pair_x(sizeof(int64_t) * taps * (M > 0 ? M : 1));
  tap_pixel_pairs(p, tap_start, pair_count.as<int64_t>(), pair_y.as<int64_t>(),
                  pair_x.as<int64_t>());

  Buffer partial_buf(sizeof(float) * threads * count * acc_size);
  float* partial = partial_buf.as<float>();
#pragma omp parallel num_threads(threads)
  {
    const int th = omp_get_thread_num(), nth = omp_get_num_threads();
    float* mine = partial + th * count * acc_size;
    std::memset(mine, 0, sizeof(float) * count * acc_size);
    Buffer xpad_buf(sizeof(float) * DW_CHUNK * vec_count(p.bk) * VL);
    Buffer pad_off_buf(sizeof(int64_t) * DW_CHUNK);
    float* xpad = xpad_buf.as<float>();
    int64_t* pad_off = pad_off_buf.as<int64_t>();
    for (int64_t tap = 0; tap < taps; ++tap) {
      const int64_t pairs = pair_count.as<int64_t>()[tap];
      const int64_t lo = pairs * th / nth, hi = pairs * (th + 1) / nth;
      const int64_t* yo = pair_y.as<int64_t>() + tap * M;
      const int64_t* xo = pair_x.as<int64_t>() + tap * M;
      for (int64_t start = lo; start < hi; start += DW_CHUNK) {
        const int64_t q_end = imin(DW_CHUNK, hi - start);
        for (int64_t j = tap_start[tap]; j < tap_start[tap + 1]; ++j) {
          const int64_t i = by_tap[j];
          const int64_t row = ix.block_row[i];
          const BlockCols bc = block_cols(p, ix.col_idx[i]);
          const int nvk = vec_count(bc.width);
          const float* dy_block = dy + row * p.bn;
          float* acc = mine + i * acc_size;
          if (bc.width == nvk * VL) {  // whole vectors: read x in place
            grad_weight_chunk_any(nvk, dy_block, yo + start, x + bc.c0, xo + start, q_end,
                                  block_height(p, row), acc);
            continue;
          }
          for (int64_t q = 0; q < q_end; ++q) {  // narrow block: zero-padded copy of the chunk
            float* dst = xpad + q * nvk * VL;
            std::memset(dst, 0, sizeof(float) * nvk * VL);
            std::memcpy(dst, x + bc.c0 + xo[start + q], sizeof(float) * bc.width);
            pad_off[q] = q * nvk * VL;
          }
          grad_weight_chunk_any(nvk, dy_block, yo + start, xpad, pad_off, q_end,
                                block_height(p, row), acc);
        }
      }
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t i = 0; i < count; ++i) {
      const int64_t row = ix.block_row[i];
      const BlockCols bc = block_cols(p, ix.col_idx[i]);
      const int64_t n0 = row * p.bn, rows = block_height(p, row);
      const int64_t stride = vec_count(bc.width) * VL;
      float* total = partial + i * acc_size;  // thread 0's partial collects the sum
      for (int t = 1; t < nth; ++t) {
        const float* part = partial + (t * count + i) * acc_size;
        for (int64_t e = 0; e < rows * stride; ++e) total[e] += part[e];
      }
      for (int64_t n = 0; n < rows; ++n)
        std::memcpy(dw + (n0 + n) * p.w_row_stride + bc.k0, total + n * stride,
                    sizeof(float) * bc.width);
    }
  }
}

}  // namespace SPARSEKIT_ISA
}  // namespace sparsekit
