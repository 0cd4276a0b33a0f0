// dW = dYᵀ · X̂ at the kept blocks only (every block of the grid for a dense dW), one kernel for
// linear and conv.
//
// Work items over the LIVE blocks: the grid is a fixed 1-D list of `items` CTAs (shapes and
// capacity only: CUDA-graph safe, no host sync), and each CTA reads the live count on the device
// and takes work item w = (block w / S, pixel split w % S) with S = dw_splits(live, items,
// max_splits) — so at density 0.1 the pixels of the few live blocks are split ~10× finer than
// at density 1 and the GPU stays full; CTAs at or past live·S exit at once. A CTA of 256 threads
// computes one weight block's BNP × BKP tile (bn, bk padded to 16/32/64) over its split's output
// pixels: the threads form NG = 256 / (BNP·BKP/16) groups, each thread of a group a 4×4 register
// tile, and every group takes its own KCG pixels of each staged chunk — dy rows As[pixel][BNP]
// and the tap's input rows Bs[pixel][BKP] (zero where the tap reads padding) — so even a 16×16
// block keeps 256 threads busy. The groups' sums are then added in a fixed order through shared
// memory. That is the FFMA kernel (fp32); bf16/fp16 run on the tensor cores
// (grad_weight_mma_kernel below: 4 warps, the same split of pixels between warp groups).
//
// Reduction over splits: deterministic, no atomics. With S = 1 a CTA writes dW directly
// (converted to the element type); otherwise it writes fp32 partial sums to scratch
// [live·S][bn·bk] (live·S ≤ items) and a second kernel adds a block's S partials in split order
// and writes dW. Blocks not listed are left as the caller zeroed them.
#include "common.cuh"

namespace sparsekit {
namespace cuda {
namespace {

constexpr int DW_THREADS = 256;
constexpr int DW_SMEM = 5120;  // floats: the largest chunk (16×16 blocks: 128 × (20 + 20))

struct GradWeightTile {
  int bnp, bkp;  // padded block sides
  int group;     // threads per group: bnp·bkp/16
  int groups;    // DW_THREADS / group
  int kcg;       // pixels per group per chunk
  int chunk;     // pixels per chunk: groups·kcg
};

__host__ __device__ inline GradWeightTile dw_tile(int bnp, int bkp) {
  GradWeightTile t;
  t.bnp = bnp;
  t.bkp = bkp;
  t.group = bnp * bkp / 16;
  t.groups = DW_THREADS / t.group;
  t.kcg = t.groups == 1 ? 32 : (t.groups == 2 ? 16 : 8);
  t.chunk = t.groups * t.kcg;
  return t;
}

// Pixel splits per live block: as many as the item budget allows, at most max_splits.
__host__ __device__ inline int dw_splits(int live, int items, int max_splits) {
  return max(1, min(items / max(live, 1), max_splits));
}

// Work item w of the live blocks: its block (row, col), split and split count; false past them.
// Null lists mean every block of the grid (a dense dW): block w / S is (i / cols, i % cols).
struct DwItem {
  int blk, split, splits, row, col;
};
__device__ __forceinline__ bool dw_item(const Dims& d, const int32_t* block_row,
                                        const int32_t* col_idx, const int32_t* block_count,
                                        int items, int max_splits, int w, DwItem& it) {
  const int live = block_count ? *block_count : d.grid_rows * d.grid_cols;
  it.splits = dw_splits(live, items, max_splits);
  if (w >= live * it.splits) return false;  // uniform per CTA
  it.blk = w / it.splits;
  it.split = w % it.splits;
  it.row = block_row ? block_row[it.blk] : it.blk / d.grid_cols;
  it.col = col_idx ? col_idx[it.blk] : it.blk % d.grid_cols;
  return true;
}

template <typename T>
__global__ void __launch_bounds__(DW_THREADS, 3)  // 3 CTAs/SM: 80 registers, no spills (sm_90a)
grad_weight_kernel(const Dims d, const GradWeightTile t, const int32_t* __restrict__ block_row,
                   const int32_t* __restrict__ col_idx, const int32_t* __restrict__ block_count,
                   int items, int max_splits, const T* __restrict__ dy,
                   const T* __restrict__ x, T* __restrict__ dw, float* __restrict__ scratch) {
  __shared__ __align__(16) float smem[DW_SMEM];
  __shared__ int64_t s_xoff[128];  // per pixel of the chunk: x offset at the tap, or -1
  int blk, split, splits, row, col;
  {
    DwItem it;
    if (!dw_item(d, block_row, col_idx, block_count, items, max_splits, blockIdx.x, it)) return;
    blk = it.blk, split = it.split, splits = it.splits, row = it.row, col = it.col;
  }
  const int n0 = row * d.bn, rows = min(d.bn, d.c_out - n0);
  const int tap = col / d.blocks_per_tap, ky = tap / d.kw, kx = tap % d.kw;
  const int c0 = (col % d.blocks_per_tap) * d.bk, width = min(d.bk, d.c_in - c0);
  const int64_t k0 = (int64_t)tap * d.c_in + c0;

  const int tid = threadIdx.x, g = tid / t.group, lt = tid % t.group;
  const int tc = lt % (t.bkp / 4), tn = lt / (t.bkp / 4);
  const int as_stride = t.bnp + PAD, bs_stride = t.bkp + PAD;
  float* As = smem;                          // [chunk][bnp + PAD]
  float* Bs = smem + t.chunk * as_stride;    // [chunk][bkp + PAD]

  const int M = d.batch * d.out_h * d.out_w, split_len = cdiv(M, splits);
  const int p_begin = split * split_len, p_end = min(M, p_begin + split_len);
  float acc[4][4] = {};
  for (int p0 = p_begin; p0 < p_end; p0 += t.chunk) {
    for (int q = tid; q < t.chunk; q += DW_THREADS) {
      const int p = p0 + q;
      const int ox = p % d.out_w, oy = (p / d.out_w) % d.out_h, b = p / (d.out_w * d.out_h);
      const int iy = input_coord(oy * d.stride_h - d.pad_h + ky * d.dil_h, d.up, d.in_h);
      const int ix = input_coord(ox * d.stride_w - d.pad_w + kx * d.dil_w, d.up, d.in_w);
      s_xoff[q] = (p < p_end && iy >= 0 && ix >= 0)
                      ? (((int64_t)b * d.in_h + iy) * d.in_w + ix) * d.c_in + c0
                      : -1;
    }
    __syncthreads();
    for (int e = tid; e < t.chunk * t.bnp; e += DW_THREADS) {
      const int n = e % t.bnp, q = e / t.bnp;
      // dy is read only where x is: a pixel whose tap reads padding adds nothing.
      As[q * as_stride + n] = (n < rows && s_xoff[q] >= 0)
                                  ? to_float(dy[(int64_t)(p0 + q) * d.c_out + n0 + n])
                                  : 0.f;
    }
    for (int e = tid; e < t.chunk * t.bkp; e += DW_THREADS) {
      const int c = e % t.bkp, q = e / t.bkp;
      const int64_t off = s_xoff[q];
      Bs[q * bs_stride + c] = (c < width && off >= 0) ? to_float(x[off + c]) : 0.f;
    }
    __syncthreads();
    const float* a = As + g * t.kcg * as_stride + tn * 4;
    const float* bb = Bs + g * t.kcg * bs_stride + tc * 4;
#pragma unroll 8
    for (int k = 0; k < t.kcg; ++k)
      fma_4x4(acc, *reinterpret_cast<const float4*>(a + k * as_stride),
              *reinterpret_cast<const float4*>(bb + k * bs_stride));
    __syncthreads();
  }

  // Element (n, c) of the block -> its destination, dW directly or this split's partial sums.
  float* partial = splits > 1 ? scratch : nullptr;
  const int64_t part_base = ((int64_t)blk * splits + split) * d.bn * d.bk;
  auto store = [=](int n, int c, float v) {
    if (n >= rows || c >= width) return;
    if (partial == nullptr)
      dw[(int64_t)(n0 + n) * d.w_row_stride + k0 + c] = from_float<T>(v);
    else
      partial[part_base + n * d.bk + c] = v;
  };
  if (t.groups == 1) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) store(tn * 4 + i, tc * 4 + j, acc[i][j]);
    return;
  }
  // Add the groups' tiles in group order: red[g][lt·16 + i·4 + j].
  float* red = smem;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) red[(g * t.group + lt) * 16 + i * 4 + j] = acc[i][j];
  __syncthreads();
  for (int e = tid; e < t.group * 16; e += DW_THREADS) {
    float v = 0.f;
    for (int gg = 0; gg < t.groups; ++gg) v += red[gg * t.group * 16 + e];
    const int l = e / 16, i = (e / 4) % 4, j = e % 4;
    store((l / (t.bkp / 4)) * 4 + i, (l % (t.bkp / 4)) * 4 + j, v);
  }
}

// bf16/fp16 on the tensor cores: 4 warps; the block tile BNP × BKP is cut into warp tiles
// WM × WN (WM = min(32, BNP), WN = min(32, BKP)) and the NG = 4 / (warp tiles) warp groups take
// P / NG pixels each of every staged chunk of P. Both operands are transposed while staged so
// that the reduction axis (pixels) is contiguous: As[BNP][P] from dy rows, Bs[BKP][P] from x.
template <int BNP, int BKP>
struct GradWeightMmaTile {
  static constexpr int WM = BNP < 32 ? BNP : 32, WN = BKP < 32 ? BKP : 32;
  static constexpr int TILE_WARPS = (BNP / WM) * (BKP / WN);
  static constexpr int NG = 4 / TILE_WARPS;  // warp groups splitting the pixels
  static constexpr int P = 64;               // pixels per staged chunk
  static constexpr int KG = P / NG;          // pixels per warp group per chunk
  static constexpr int KROW = P + 8;         // staged row, in halves
  static constexpr int THREADS = 128;
};

template <typename T, int BNP, int BKP>
__global__ void __launch_bounds__(128)
grad_weight_mma_kernel(const Dims d, const int32_t* __restrict__ block_row,
                       const int32_t* __restrict__ col_idx, const int32_t* __restrict__ block_count,
                       int items, int max_splits, const T* __restrict__ dy_,
                       const T* __restrict__ x_, T* __restrict__ dw, float* __restrict__ scratch) {
  using Tile = GradWeightMmaTile<BNP, BKP>;
  constexpr int P = Tile::P, KROW = Tile::KROW, NG = Tile::NG;
  constexpr int MT = Tile::WM / 16, NT = Tile::WN / 8;
  __shared__ __align__(16) uint16_t As[BNP * KROW];
  __shared__ __align__(16) uint16_t Bs[BKP * KROW];
  __shared__ float red[NG > 1 ? NG * BNP * BKP : 1];
  __shared__ int64_t s_xoff[P];
  int blk, split, splits, row, col;
  {
    DwItem it;
    if (!dw_item(d, block_row, col_idx, block_count, items, max_splits, blockIdx.x, it)) return;
    blk = it.blk, split = it.split, splits = it.splits, row = it.row, col = it.col;
  }
  const uint16_t* dy = reinterpret_cast<const uint16_t*>(dy_);
  const uint16_t* x = reinterpret_cast<const uint16_t*>(x_);

  const int n0 = row * d.bn, rows = min(d.bn, d.c_out - n0);
  const int tap = col / d.blocks_per_tap, ky = tap / d.kw, kx = tap % d.kw;
  const int c0 = (col % d.blocks_per_tap) * d.bk, width = min(d.bk, d.c_in - c0);
  const int64_t k0 = (int64_t)tap * d.c_in + c0;

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int grp = warp / Tile::TILE_WARPS, tw = warp % Tile::TILE_WARPS;
  const int wm = tw % (BNP / Tile::WM), wn = tw / (BNP / Tile::WM);
  const int M = d.batch * d.out_h * d.out_w, split_len = cdiv(M, splits);
  const int p_begin = split * split_len, p_end = min(M, p_begin + split_len);
  float acc[MT][NT][4] = {};
  for (int p0 = p_begin; p0 < p_end; p0 += P) {
    for (int q = tid; q < P; q += Tile::THREADS) {
      const int p = p0 + q;
      const int ox = p % d.out_w, oy = (p / d.out_w) % d.out_h, b = p / (d.out_w * d.out_h);
      const int iy = input_coord(oy * d.stride_h - d.pad_h + ky * d.dil_h, d.up, d.in_h);
      const int ix = input_coord(ox * d.stride_w - d.pad_w + kx * d.dil_w, d.up, d.in_w);
      s_xoff[q] = (p < p_end && iy >= 0 && ix >= 0)
                      ? (((int64_t)b * d.in_h + iy) * d.in_w + ix) * d.c_in + c0
                      : -1;
    }
    __syncthreads();
    for (int v = tid; v < P * (BNP / 8); v += Tile::THREADS) {  // pixel q, 8 channels of dy
      const int q = v / (BNP / 8), n = (v % (BNP / 8)) * 8;
      const uint4 vals = load8(dy + (int64_t)(p0 + q) * d.c_out + n0 + n,
                               s_xoff[q] >= 0 ? rows - n : 0);
#pragma unroll
      for (int j = 0; j < 8; ++j) As[(n + j) * KROW + q] = element8(vals, j);
    }
    for (int v = tid; v < P * (BKP / 8); v += Tile::THREADS) {  // pixel q, 8 channels of x
      const int q = v / (BKP / 8), c = (v % (BKP / 8)) * 8;
      const int64_t off = s_xoff[q];
      const uint4 vals = load8(x + off + c, off >= 0 ? width - c : 0);
#pragma unroll
      for (int j = 0; j < 8; ++j) Bs[(c + j) * KROW + q] = element8(vals, j);
    }
    __syncthreads();
#pragma unroll
    for (int k = grp * Tile::KG; k < (grp + 1) * Tile::KG; k += MMA_K) {
      uint32_t a[MT][4], b[NT][2];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
        load_a_frag<KROW>(a[mt], &As[(wm * Tile::WM + mt * 16) * KROW + k], lane);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
        load_b_frag<KROW>(b[nt], &Bs[(wn * Tile::WN + nt * 8) * KROW + k], lane);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mma_16816<T>(acc[mt][nt], a[mt], b[nt]);
    }
    __syncthreads();
  }

  float* partial = splits > 1 ? scratch : nullptr;
  const int64_t part_base = ((int64_t)blk * splits + split) * d.bn * d.bk;
  auto store = [=](int n, int c, float v) {
    if (n >= rows || c >= width) return;
    if (partial == nullptr)
      dw[(int64_t)(n0 + n) * d.w_row_stride + k0 + c] = from_float<T>(v);
    else
      partial[part_base + n * d.bk + c] = v;
  };
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int n = wm * Tile::WM + mt * 16 + g + (i / 2) * 8;
        const int c = wn * Tile::WN + nt * 8 + 2 * t + i % 2;
        if (NG == 1)
          store(n, c, acc[mt][nt][i]);
        else
          red[(grp * BNP + n) * BKP + c] = acc[mt][nt][i];
      }
  if (NG == 1) return;
  __syncthreads();
  for (int e = tid; e < BNP * BKP; e += Tile::THREADS) {  // the groups' sums in group order
    float v = 0.f;
#pragma unroll
    for (int gg = 0; gg < NG; ++gg) v += red[gg * BNP * BKP + e];
    store(e / BKP, e % BKP, v);
  }
}

// dW[block i] = Σ_s scratch[i·S + s] in split order; nothing to do when S = 1 (written directly).
template <typename T>
__global__ void __launch_bounds__(DW_THREADS)
reduce_splits_kernel(const Dims d, const int32_t* __restrict__ block_row,
                     const int32_t* __restrict__ col_idx, const int32_t* __restrict__ block_count,
                     int items, int max_splits, const float* __restrict__ scratch,
                     T* __restrict__ dw) {
  const int live = block_count ? *block_count : d.grid_rows * d.grid_cols;
  const int splits = dw_splits(live, items, max_splits);
  DwItem it;  // the block's first work item
  if ((int)blockIdx.x >= live || splits == 1 ||
      !dw_item(d, block_row, col_idx, block_count, items, max_splits, blockIdx.x * splits, it))
    return;
  const int n0 = it.row * d.bn, rows = min(d.bn, d.c_out - n0);
  const int tap = it.col / d.blocks_per_tap;
  const int c0 = (it.col % d.blocks_per_tap) * d.bk, width = min(d.bk, d.c_in - c0);
  const int64_t k0 = (int64_t)tap * d.c_in + c0;
  const int64_t block_elems = (int64_t)d.bn * d.bk;
  const float* part = scratch + (int64_t)it.blk * it.splits * block_elems;
  for (int e = threadIdx.x; e < d.bn * d.bk; e += DW_THREADS) {
    const int n = e / d.bk, c = e % d.bk;
    if (n >= rows || c >= width) continue;
    float v = 0.f;
    for (int s = 0; s < it.splits; ++s) v += part[s * block_elems + e];
    dw[(int64_t)(n0 + n) * d.w_row_stride + k0 + c] = from_float<T>(v);
  }
}

// Runs `f(std::integral_constant<int, side>{})` for a padded block side (16, 32 or 64).
template <typename F>
void dispatch_side(int side, F&& f) {
  switch (side) {
    case 16: f(std::integral_constant<int, 16>{}); break;
    case 32: f(std::integral_constant<int, 32>{}); break;
    default: f(std::integral_constant<int, 64>{}); break;
  }
}

}  // namespace
}  // namespace cuda
}  // namespace sparsekit

extern "C" const char* sparsekit_cuda_grad_weight(const sparsekit::Problem* p, int dtype,
                                                  int device, const int32_t* block_row,
                                                  const int32_t* col_idx,
                                                  const int32_t* block_count, int64_t items,
                                                  int64_t max_splits, const void* dy,
                                                  const void* x, void* dw, float* scratch,
                                                  void* stream) {
  using namespace sparsekit::cuda;
  Dims d;
  if (const char* err = make_dims(*p, &d)) return err;
  if ((block_row == nullptr) != (col_idx == nullptr) ||
      (block_row == nullptr) != (block_count == nullptr))
    return "sparsekit._C_cuda: block_row, col_idx and block_count must all be given or all null";
  const int64_t capacity = (int64_t)d.grid_rows * d.grid_cols;
  if (items < 0 || items > INT_MAX || (capacity > 0 && items < capacity))
    return "sparsekit._C_cuda: items must be in [capacity, 2^31)";
  if (max_splits < 1 || max_splits > INT_MAX) return "sparsekit._C_cuda: max_splits must be >= 1";
  if (max_splits > 1 && scratch == nullptr)
    return "sparsekit._C_cuda: max_splits > 1 needs scratch of items·bn·bk floats";
  if (const char* err = prepare(device, dtype)) return err;
  const int M = d.batch * d.out_h * d.out_w;
  if (capacity == 0 || M == 0) return nullptr;  // dW stays as the caller zeroed it
  const GradWeightTile t = dw_tile(padded_side(d.bn), padded_side(d.bk));
  const auto s = static_cast<cudaStream_t>(stream);
  const int n_items = (int)items, n_splits = (int)max_splits;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    bool launched = false;
    if constexpr (!std::is_same<T, float>::value) {
      if (tensor_cores_enabled()) {
        auto mma = [&](auto bnp, auto bkp) {
          constexpr int BNP = decltype(bnp)::value, BKP = decltype(bkp)::value;
          grad_weight_mma_kernel<T, BNP, BKP><<<(unsigned)n_items, 128, 0, s>>>(
              d, block_row, col_idx, block_count, n_items, n_splits,
              static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<T*>(dw), scratch);
        };
        dispatch_side(t.bnp, [&](auto bnp) {
          dispatch_side(t.bkp, [&](auto bkp) { mma(bnp, bkp); });
        });
        launched = true;
      }
    }
    if (!launched)
      grad_weight_kernel<T><<<(unsigned)n_items, DW_THREADS, 0, s>>>(
          d, t, block_row, col_idx, block_count, n_items, n_splits, static_cast<const T*>(dy),
          static_cast<const T*>(x), static_cast<T*>(dw), scratch);
    if (n_splits > 1)
      reduce_splits_kernel<T><<<(unsigned)capacity, DW_THREADS, 0, s>>>(
          d, block_row, col_idx, block_count, n_items, n_splits, scratch, static_cast<T*>(dw));
  });
  return launch_error();
}
