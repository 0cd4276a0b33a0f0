// Device-side helpers shared by the CUDA kernels: sizes as 32-bit ints, element conversion,
// the implicit-GEMM coordinate maps, the launch preamble (device, error string), the tensor-core
// fragments and the asynchronous-copy / ldmatrix wrappers (PTX on the device, the host model in
// csrc/cuda/emulation under SPARSEKIT_CUDA_EMULATION). The forward/dX main loop built on them is
// in mainloop.cuh; dW (grad_weight.cu) stages through registers with load8 and the *_frag loads.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <type_traits>

#include "launchers.h"
#include "problem.h"

namespace sparsekit {
namespace cuda {

constexpr int PAD = 4;   // floats of padding per staged row (dW)

// Problem sizes as ints (every size fits; checked on the host), passed to kernels by value.
struct Dims {
  int batch, in_h, in_w, c_in;
  int out_h, out_w, c_out;
  int kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, up;
  int64_t w_row_stride;
  int bn, bk, grid_rows, grid_cols, blocks_per_tap;
};

// nullptr and `d` filled when every size fits in an int and is sane, else a message.
inline const char* make_dims(const Problem& p, Dims* d) {
  const int64_t v[] = {p.batch, p.in_h,  p.in_w,  p.c_in,  p.out_h,    p.out_w,    p.c_out,
                       p.kh,    p.kw,    p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.dil_h,
                       p.dil_w, p.upsample, p.bn, p.bk, p.grid_rows, p.grid_cols,
                       p.blocks_per_tap};
  for (int64_t s : v)
    if (s < 0 || s > INT_MAX) return "sparsekit._C_cuda: a problem size is negative or above 2^31";
  if (p.bn < 1 || p.bk < 1 || p.bn > 64 || p.bk > 64)
    return "sparsekit._C_cuda: block sides must be in [1, 64]";
  if (p.stride_h < 1 || p.stride_w < 1 || p.dil_h < 1 || p.dil_w < 1 || p.upsample < 1 ||
      p.kh < 1 || p.kw < 1 || p.blocks_per_tap < 1)
    return "sparsekit._C_cuda: stride, dilation, upsample, kernel and blocks per tap must be >= 1";
  if (p.batch * p.out_h * p.out_w > INT_MAX || p.batch * p.in_h * p.in_w > INT_MAX)
    return "sparsekit._C_cuda: more than 2^31 pixels";
  *d = Dims{(int)p.batch,    (int)p.in_h,     (int)p.in_w,  (int)p.c_in,  (int)p.out_h,
            (int)p.out_w,    (int)p.c_out,    (int)p.kh,    (int)p.kw,    (int)p.stride_h,
            (int)p.stride_w, (int)p.pad_h,    (int)p.pad_w, (int)p.dil_h, (int)p.dil_w,
            (int)p.upsample, p.w_row_stride,  (int)p.bn,    (int)p.bk,    (int)p.grid_rows,
            (int)p.grid_cols, (int)p.blocks_per_tap};
  return nullptr;
}

// Padded tile side for a block side: 16, 32 or 64.
inline int padded_side(int side) { return side <= 16 ? 16 : (side <= 32 ? 32 : 64); }

__host__ __device__ inline int cdiv(int a, int b) { return (a + b - 1) / b; }

// Selects the device and checks the dtype code; nullptr when the launch may go ahead.
inline const char* prepare(int device, int dtype) {
  if (dtype != kFloat32 && dtype != kBFloat16 && dtype != kFloat16)
    return "sparsekit._C_cuda: dtype must be float32, bfloat16 or float16";
  cudaError_t err = cudaSetDevice(device);
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

// The launch's error (nullptr if none): a bad configuration shows up here, asynchronously.
inline const char* launch_error() {
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half(v); }

// Physical input coordinate that logical (upsampled) coordinate `l` reads, or -1 outside.
__device__ __forceinline__ int input_coord(int l, int up, int size) {
  return (l >= 0 && l < up * size) ? l / up : -1;
}

// acc[i][j] += a[i] · b[j] for one reduction step of a 4×4 register tile.
__device__ __forceinline__ void fma_4x4(float (&acc)[4][4], const float4 a, const float4 b) {
  const float av[4] = {a.x, a.y, a.z, a.w};
  const float bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
}

// ---------------------------------------------------------------- tensor cores (bf16, fp16)
// Staged tiles hold raw 16-bit elements, rows K-contiguous and padded to KROW halves so that
// the fragment loads below (one 32-bit word per register) hit 32 distinct banks.
constexpr int MMA_K = 16;  // reduction steps of one mma.sync.m16n8k16

// 8 consecutive 16-bit elements from src, those at or past `avail` as zero (nothing is read
// when avail <= 0): one 16-byte load when src is 16-byte aligned and all 8 are in range.
__device__ __forceinline__ uint4 load8(const uint16_t* src, int avail) {
  if (avail >= 8 && (reinterpret_cast<uintptr_t>(src) & 15) == 0)
    return *reinterpret_cast<const uint4*>(src);
  uint32_t v[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = j < avail ? src[j] : 0u;
  uint4 r;
  r.x = v[0] | (v[1] << 16);
  r.y = v[2] | (v[3] << 16);
  r.z = v[4] | (v[5] << 16);
  r.w = v[6] | (v[7] << 16);
  return r;
}

// The j-th 16-bit element of 8 packed in a uint4 (j a compile-time constant after unrolling).
__device__ __forceinline__ uint16_t element8(const uint4& v, int j) {
  const uint32_t word = j < 2 ? v.x : (j < 4 ? v.y : (j < 6 ? v.z : v.w));
  return static_cast<uint16_t>(j % 2 ? word >> 16 : word & 0xffffu);
}

// Fragments of one m16n8k16 step from K-contiguous staged tiles (PTX ISA, mma.m16n8k16):
// lane = 4·g + t holds A rows g and g + 8, columns 2t, 2t + 1 and 2t + 8, 2t + 9; B (stored as
// [n][k]) column g, rows 2t, 2t + 1 and 2t + 8, 2t + 9; C rows g and g + 8, columns 2t, 2t + 1.
template <int KROW>
__device__ __forceinline__ void load_a_frag(uint32_t (&a)[4], const uint16_t* tile, int lane) {
  const uint16_t* p = tile + (lane / 4) * KROW + (lane % 4) * 2;
  a[0] = *reinterpret_cast<const uint32_t*>(p);
  a[1] = *reinterpret_cast<const uint32_t*>(p + 8 * KROW);
  a[2] = *reinterpret_cast<const uint32_t*>(p + 8);
  a[3] = *reinterpret_cast<const uint32_t*>(p + 8 * KROW + 8);
}
template <int KROW>
__device__ __forceinline__ void load_b_frag(uint32_t (&b)[2], const uint16_t* tile, int lane) {
  const uint16_t* p = tile + (lane / 4) * KROW + (lane % 4) * 2;
  b[0] = *reinterpret_cast<const uint32_t*>(p);
  b[1] = *reinterpret_cast<const uint32_t*>(p + 8);
}

// d += a · b on the tensor cores, fp32 accumulation.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4],
                                          const uint32_t (&b)[2]) {
#if defined(SPARSEKIT_CUDA_EMULATION)  // csrc/cuda/emulation models the warp-wide instruction
  emu_mma_16816(d, a, b, std::is_same<T, __half>::value);
#else
  if constexpr (std::is_same<T, __half>::value)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// ldmatrix.sync.aligned.m8n8.x{N}{.trans}.shared.b16: lanes 8i .. 8i + 7 give the 16-byte-aligned
// rows of matrix i (lanes past 8N are ignored); lane 4·g + t gets in r[i] elements (g, 2t),
// (g, 2t + 1) of matrix i, or (2t, g), (2t + 1, g) with TRANS — an mma.m16n8k16 fragment either
// way, TRANS for an operand staged with the reduction axis across rows.
template <int N, bool TRANS>
__device__ __forceinline__ void ldmatrix(uint32_t (&r)[N], const void* row) {
#if defined(SPARSEKIT_CUDA_EMULATION)
  emu_ldmatrix(r, row, TRANS);
#else
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (N == 4 && TRANS)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
  else if constexpr (N == 4)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
  else if constexpr (N == 2 && TRANS)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(a));
  else if constexpr (N == 2)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(a));
  else if constexpr (TRANS)
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0]) : "r"(a));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(a));
#endif
}

// cp.async of SIZE (16 or 4) bytes global -> shared: src_bytes (< SIZE) are read and the rest
// zero-filled, so src_bytes = 0 zero-fills without reading (src must still be a valid address).
// 16-byte copies bypass L1 (.cg): the gathered rows are reused through L2 by the CTAs beside
// this one, not by this CTA; 4-byte copies can only go through L1 (.ca).
template <int SIZE>
__device__ __forceinline__ void cp_async(void* dst, const void* src, int src_bytes) {
  static_assert(SIZE == 16 || SIZE == 4, "cp.async copies 4, 8 or 16 bytes; we use 16 and 4");
#if defined(SPARSEKIT_CUDA_EMULATION)
  emu_cp_async(dst, src, SIZE, src_bytes);
#else
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  if constexpr (SIZE == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(d), "l"(src), "r"(src_bytes) : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n"
                 :: "r"(d), "l"(src), "r"(src_bytes) : "memory");
#endif
}

// Closes this thread's group of cp.async issued since the last commit (possibly empty).
__device__ __forceinline__ void cp_async_commit() {
#if defined(SPARSEKIT_CUDA_EMULATION)
  emu_cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most N of this thread's committed groups are in flight. Other threads' copies
// are theirs to wait for: a barrier after this makes a whole stage visible.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(SPARSEKIT_CUDA_EMULATION)
  emu_cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
#endif
}

// Whether bf16/fp16 run on the tensor cores (default) or on the FFMA kernels, a fallback and a
// cross-check (sparsekit_cuda_set_tensor_cores; Python: SPARSEKIT_CUDA_MMA=0).
inline bool& tensor_cores_enabled() {
  static bool enabled = true;
  return enabled;
}

// Runs `launch(tag)` with tag a value of the C++ element type for `dtype`.
template <typename F>
void dispatch_dtype(int dtype, F&& launch) {
  switch (dtype) {
    case kBFloat16: launch(__nv_bfloat16{}); break;
    case kFloat16: launch(__half{}); break;
    default: launch(float{}); break;
  }
}

}  // namespace cuda
}  // namespace sparsekit
