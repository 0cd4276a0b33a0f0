// The forward/dX main loop: one cp.async pipeline over a block's reduction chunks, with the
// math (FFMA or tensor cores) as a policy. forward.cu and grad_input.cu supply only what differs:
// the walk over kept blocks (which global rows a chunk reads) and the epilogue.
//
// A CTA owns an output tile of TM pixels × NP channels (NP: the block side padded to 16/32/64)
// and reduces over a sequence of chunks of KC steps — a kept block's reduction axis (bk in the
// forward, bn in dX) cut into pieces of KC: 16 for FFMA, and for the tensor cores 32 where that
// axis is wider than 16, else 16 (two or one m16n8k16 steps). Per chunk two tiles are staged:
//   A [TM][KC]  pixel rows, K-contiguous (gathered input rows in the forward, dy rows in dX);
//   B [NP][KC]  (forward: W rows as stored, K-contiguous) or
//   B [KC][NP]  (dX: W rows as stored, channel-contiguous: the reduction axis runs across rows).
// Rows are padded by 16 bytes, which keeps every row 16-byte aligned for cp.async and ldmatrix
// and puts the 8 rows an ldmatrix reads in 8 distinct bank groups.
//
// Why a chunk per stage and not a whole kept block: a 64-deep block costs (TM + NP)·64 elements
// per stage — 24 KiB in bf16 (TM = 128, NP = 64), 32 KiB in fp32 (TM = 64, NP = 64) — so at
// most one or two stages in the 48 KiB of static shared memory, or opted-in dynamic shared
// memory and fewer CTAs per SM for more. Chunks keep STAGES (3-4) stages within 48 KiB at any
// block size. A chunk is a whole kept block, so the loop has its one barrier per kept block, up
// to 32-deep blocks on the tensor cores and 16-deep ones with FFMA; deeper blocks take one
// barrier per chunk (amortised over 256 FMAs per thread per chunk with FFMA).
//
// Pipeline (STAGES = S): chunk c lives in stage c % S and is copied by cp.async group c of every
// thread (a group may be empty past the end of the walk, so that group numbers stay chunk
// numbers). Before chunk c is read each thread waits for its group c (wait_group S - 2: the
// S - 2 newer groups may stay in flight) and one __syncthreads makes every thread's part of the
// stage visible; the same barrier also proves that every thread is done with chunk c - 1, whose
// stage (c - 1) % S = (c + S - 1) % S is refilled with chunk c + S - 1 right after it.
#pragma once
#include "common.cuh"

namespace sparsekit {
namespace cuda {

constexpr int SMEM_STATIC = 48 * 1024;  // static shared memory per CTA

// Stage elements: raw bits (16-bit types are only moved, never converted, by the copies).
template <typename T>
using Raw = typename std::conditional<sizeof(T) == 4, float, uint16_t>::type;

// One staged tile of ROWS × COLS elements of T, row pitch LD, copied in 16-byte pieces: piece
// q = tid + j·THREADS (j < PER_THREAD) is row q / PIECES, elements (q % PIECES)·VEC onwards, so a
// thread's rows are fixed for the whole loop and it can keep their gather offsets in registers.
template <typename T, int ROWS, int COLS, int THREADS>
struct Tile {
  static constexpr int VEC = 16 / sizeof(T);  // elements per piece
  static constexpr int LD = COLS + VEC;       // row pitch: 16 bytes of padding
  static constexpr int PIECES = COLS / VEC;   // per row
  static constexpr int PER_THREAD = (ROWS * PIECES + THREADS - 1) / THREADS;
  static constexpr int SIZE = ROWS * LD;      // elements
  static_assert(COLS % VEC == 0, "a row is whole pieces");

  __device__ static bool owns(int tid, int j) { return tid + j * THREADS < ROWS * PIECES; }
  __device__ static int row(int tid, int j) { return (tid + j * THREADS) / PIECES; }

  // Calls f(j, row) for this thread's pieces (to compute per-row gather offsets).
  template <class F>
  __device__ static void for_rows(int tid, F f) {
#pragma unroll
    for (int j = 0; j < PER_THREAD; ++j)
      if (owns(tid, j)) f(j, row(tid, j));
  }

  // Issues this thread's pieces into `tile`: src(j, row, col, avail) returns the element offset
  // in `base` of (row, col) and sets avail to how many elements from there are valid (<= 0:
  // none, and the offset is not used).
  template <class Src>
  __device__ static void copy(Raw<T>* tile, const Raw<T>* base, int tid, Src src) {
#pragma unroll
    for (int j = 0; j < PER_THREAD; ++j) {
      if (!owns(tid, j)) continue;
      const int r = row(tid, j), c = ((tid + j * THREADS) % PIECES) * VEC;
      int avail;
      const int64_t at = src(j, r, c, avail);
      copy_piece(tile + r * LD + c, base, at, avail);
    }
  }

  // VEC elements from base[at] (the first `avail`; zeros for the rest) into dst.
  __device__ static void copy_piece(Raw<T>* dst, const Raw<T>* base, int64_t at, int avail) {
    // Zero-fill reads nothing, but its source must be a valid, aligned address: base's 16-byte
    // line lies in base's allocation.
    const auto* line = reinterpret_cast<const Raw<T>*>(reinterpret_cast<uintptr_t>(base) & ~15ull);
    if (avail <= 0) return cp_async<16>(dst, line, 0);
    const Raw<T>* src = base + at;
    if (avail >= VEC && (reinterpret_cast<uintptr_t>(src) & 15) == 0)
      return cp_async<16>(dst, src, 16);
    if constexpr (sizeof(T) == 4) {  // an edge or unaligned row: per element, zero-filled
#pragma unroll
      for (int e = 0; e < VEC; ++e)
        cp_async<4>(dst + e, e < avail ? src + e : line, e < avail ? 4 : 0);
    } else {
      // 16-bit elements at an odd offset or an edge: cp.async moves 4 bytes at least, aligned,
      // so these pieces are loaded and stored synchronously. The stage being filled is one no
      // thread reads before the next barrier, which also publishes these stores.
      uint16_t v[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) v[e] = e < avail ? src[e] : uint16_t(0);
      uint4 packed;
      packed.x = v[0] | uint32_t(v[1]) << 16;
      packed.y = v[2] | uint32_t(v[3]) << 16;
      packed.z = v[4] | uint32_t(v[5]) << 16;
      packed.w = v[6] | uint32_t(v[7]) << 16;
      *reinterpret_cast<uint4*>(dst) = packed;
    }
  }
};

// The stages of a math policy M: STAGES × (A tile, B tile).
template <class M>
struct Stages {
  __align__(16) Raw<typename M::T> a[M::STAGES][M::A::SIZE];
  __align__(16) Raw<typename M::T> b[M::STAGES][M::B::SIZE];
};

// As many stages (at most 4) as fit in static shared memory next to `reserve` bytes.
constexpr int stages_for(int stage_bytes, int reserve) {
  return (SMEM_STATIC - reserve) / stage_bytes >= 4 ? 4 : (SMEM_STATIC - reserve) / stage_bytes;
}
constexpr int RESERVE = 2048;  // the kernels' other shared arrays (3 ints per pixel, TM ≤ 128)

// 4 consecutive elements at p (8- or 16-byte aligned) as floats.
template <typename T>
__device__ __forceinline__ void load4(const Raw<T>* p, float (&f)[4]) {
  if constexpr (sizeof(T) == 4) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    f[0] = v.x, f[1] = v.y, f[2] = v.z, f[3] = v.w;
  } else {
    const uint2 v = *reinterpret_cast<const uint2*>(p);
    const T* h = reinterpret_cast<const T*>(&v);
#pragma unroll
    for (int e = 0; e < 4; ++e) f[e] = to_float(h[e]);
  }
}

// FFMA math (fp32; bf16/fp16 with tensor cores off): a thread owns a 4×4 register tile of fp32
// accumulators, pixels tm·4 + i and channels tn·4 + j, and adds the chunk's steps in order.
// B_KMAJOR: B staged [KC][NP] (dX) rather than [NP][KC] (forward).
template <typename T_, int NP, bool B_KMAJOR>
struct Ffma {
  using T = T_;
  static constexpr int KC = 16;  // a deeper fp32 stage would not fit 3 stages at TM = 128
  static constexpr int TM = NP == 64 ? 64 : 128;
  static constexpr int THREADS = TM * NP / 16;
  using A = Tile<T, TM, KC, THREADS>;
  using B = typename std::conditional<B_KMAJOR, Tile<T, KC, NP, THREADS>,
                                      Tile<T, NP, KC, THREADS>>::type;
  static constexpr int STAGES = stages_for((A::SIZE + B::SIZE) * sizeof(T), RESERVE);
  static_assert(STAGES >= 3, "fewer stages than the pipeline is meant to have");

  struct Acc {
    float v[4][4];
  };
  __device__ static void zero(Acc& acc) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc.v[i][j] = 0.f;
  }

  __device__ static void step(Acc& acc, const Raw<T>* as, const Raw<T>* bs) {
    const int tn = threadIdx.x % (NP / 4), tm = threadIdx.x / (NP / 4);
#pragma unroll
    for (int k4 = 0; k4 < KC; k4 += 4) {
      float a[4][4];  // a[i][kk]: pixel tm·4 + i, step k4 + kk
#pragma unroll
      for (int i = 0; i < 4; ++i) load4<T>(as + (tm * 4 + i) * A::LD + k4, a[i]);
      if constexpr (B_KMAJOR) {
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          float b[4];  // channels tn·4 .. tn·4 + 3 at step k4 + kk
          load4<T>(bs + (k4 + kk) * B::LD + tn * 4, b);
#pragma unroll
          for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc.v[i][j] = fmaf(a[i][kk], b[j], acc.v[i][j]);
        }
      } else {
        float b[4][4];  // b[j][kk]: channel tn·4 + j, step k4 + kk
#pragma unroll
        for (int j = 0; j < 4; ++j) load4<T>(bs + (tn * 4 + j) * B::LD + k4, b[j]);
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
#pragma unroll
          for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc.v[i][j] = fmaf(a[i][kk], b[j][kk], acc.v[i][j]);
      }
    }
  }

  // f(pixel, channel, value) for every accumulator of this thread (tile coordinates).
  template <class F>
  __device__ static void for_each(const Acc& acc, F f) {
    const int tn = threadIdx.x % (NP / 4), tm = threadIdx.x / (NP / 4);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) f(tm * 4 + i, tn * 4 + j, acc.v[i][j]);
  }
};

// Tensor-core math (bf16/fp16, fp32 accumulation): warps tile the CTA 4 (pixels) × NP/WN
// (channels), each warp WM = 32 × WN = min(32, NP) outputs as m16n8k16 tiles, fragments read
// with ldmatrix.x4 (A: one 16×16 tile; B: two 8-channel tiles, .trans when staged [KC][NP]),
// KC / 16 k-steps per chunk.
template <typename T_, int NP, bool B_KMAJOR, int KC_>
struct Mma {
  using T = T_;
  static constexpr int KC = KC_;
  static constexpr int TM = 128, WM = 32, WN = NP < 32 ? NP : 32;
  static constexpr int WARPS_M = TM / WM, WARPS_N = NP / WN;
  static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
  static constexpr int MT = WM / 16, NT = WN / 8;
  using A = Tile<T, TM, KC, THREADS>;
  using B = typename std::conditional<B_KMAJOR, Tile<T, KC, NP, THREADS>,
                                      Tile<T, NP, KC, THREADS>>::type;
  static constexpr int STAGES = stages_for((A::SIZE + B::SIZE) * sizeof(T), RESERVE);
  static_assert(STAGES >= 3 && NT % 2 == 0, "stages, or B fragments in pairs of 8-channel tiles");

  struct Acc {
    float v[MT][NT][4];
  };
  __device__ static void zero(Acc& acc) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc.v[mt][nt][e] = 0.f;
  }

  __device__ static void step(Acc& acc, const Raw<T>* as, const Raw<T>* bs) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int wm = warp % WARPS_M, wn = warp / WARPS_M;
    const int mi = lane / 8, r8 = lane % 8;  // the matrix and row this lane addresses
#pragma unroll
    for (int k0 = 0; k0 < KC; k0 += 16) {
      uint32_t a[MT][4], b[NT][2];
      // A matrices 0..3: (rows 0-7, k 0-7), (8-15, k 0-7), (0-7, k 8-15), (8-15, k 8-15).
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
        ldmatrix<4, false>(a[mt],
                           as + (wm * WM + mt * 16 + lane % 16) * A::LD + k0 + (lane / 16) * 8);
      // B matrices 0..3: (tile 2p, k 0-7), (2p, k 8-15), (2p + 1, k 0-7), (2p + 1, k 8-15).
#pragma unroll
      for (int p = 0; p < NT / 2; ++p) {
        const int n = wn * WN + (2 * p + mi / 2) * 8, k = k0 + (mi % 2) * 8;
        uint32_t r[4];
        if constexpr (B_KMAJOR)
          ldmatrix<4, true>(r, bs + (k + r8) * B::LD + n);
        else
          ldmatrix<4, false>(r, bs + (n + r8) * B::LD + k);
        b[2 * p][0] = r[0], b[2 * p][1] = r[1], b[2 * p + 1][0] = r[2], b[2 * p + 1][1] = r[3];
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mma_16816<T>(acc.v[mt][nt], a[mt], b[nt]);
    }
  }

  // Accumulator e of tile (mt, nt) is row g + 8·(e / 2), column 2t + e % 2 (lane = 4g + t).
  template <class F>
  __device__ static void for_each(const Acc& acc, F f) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int wm = warp % WARPS_M, wn = warp / WARPS_M, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          f(wm * WM + mt * 16 + g + 8 * (e / 2), wn * WN + nt * 8 + 2 * t + e % 2,
            acc.v[mt][nt][e]);
  }
};

// The math for element type T, padded side NP and reduction depth `deep` (padded reduction side
// above 16): tensor cores for 16-bit types unless off, 32-step chunks where the blocks are deep.
// Kernels are instantiated for each; the launcher picks.
template <typename T, int NP, bool B_KMAJOR, bool TENSOR_CORES, bool DEEP>
using MathFor =
    typename std::conditional<TENSOR_CORES && !std::is_same<T, float>::value,
                              Mma<T, NP, B_KMAJOR, DEEP ? 32 : 16>, Ffma<T, NP, B_KMAJOR>>::type;

// Runs the pipeline described at the top: issue(a, b) copies the walk's next chunk into stage
// (a, b) and returns true, or returns false once the walk is done (uniformly across the CTA).
template <class M, class Issue>
__device__ __forceinline__ void main_loop(Stages<M>& st, typename M::Acc& acc, Issue issue) {
  constexpr int S = M::STAGES;
  int issued = 0;
#pragma unroll
  for (int s = 0; s < S - 1; ++s) {
    if (issue(st.a[s], st.b[s])) ++issued;
    cp_async_commit();  // possibly empty: group s is chunk s
  }
  for (int c = 0; c < issued; ++c) {
    cp_async_wait<S - 2>();  // this thread's copies of chunk c have landed
    __syncthreads();         // everyone's have; everyone is done with chunk c - 1's stage
    const int refill = (c + S - 1) % S;
    if (issue(st.a[refill], st.b[refill])) ++issued;
    cp_async_commit();
    M::step(acc, st.a[c % S], st.b[c % S]);
  }
}

// Grid of `fast` CTAs on x by `tiles` pixel tiles on y (folded into z past gridDim.y's limit,
// 65535; tests lower it to reach the fold). x is the fastest axis in launch order, so the CTAs
// that share a pixel tile (the forward's block rows, dX's channel blocks) run together and the
// gathered pixel rows they all stage come from L2.
#ifndef SPARSEKIT_GRID_Y_MAX
#define SPARSEKIT_GRID_Y_MAX 65535
#endif
inline dim3 tile_grid(int fast, int tiles) {
  const int y = tiles < SPARSEKIT_GRID_Y_MAX ? tiles : SPARSEKIT_GRID_Y_MAX;
  return dim3(fast, y, cdiv(tiles, y));
}
// This CTA's pixel tile under tile_grid (may be past the last one: the z fold rounds up).
__device__ __forceinline__ int tile_index() { return blockIdx.z * gridDim.y + blockIdx.y; }

}  // namespace cuda
}  // namespace sparsekit
