// Host emulation of the CUDA subset sparsekit's kernels use, for testing them without a GPU
// (tests/test_cuda_backend.py). Put this folder first on the include path and compile the .cu
// files as C++20 with every `kernel<<<grid, block, smem, stream>>>(args)` rewritten to
// `emu_launch(kernel, emu_cfg(grid, block, smem, stream), args)`. Blocks run one after another,
// each on blockDim.x OS threads, so __syncthreads is a real barrier and __shared__ (a function
// static) is shared by the block's threads; mma.sync and ldmatrix are modelled warp-wide from the
// PTX ISA's fragment layouts, and cp.async strictly: a thread's copies land only when its
// cp.async.wait_group retires their group (SPARSEKIT_CUDA_EMULATION selects these models in
// common.cuh). It checks indexing, masking, fragment placement, barrier and cp.async group logic
// — not speed, the GPU's memory model beyond that, or anything specific to nvcc and setup.py.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <thread>
#include <vector>

#define SPARSEKIT_CUDA_EMULATION 1

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct float4 {
  float x, y, z, w;
};
struct uint2 {
  unsigned x, y;
};
struct uint4 {
  unsigned x, y, z, w;
};
typedef int cudaError_t;
enum { cudaSuccess = 0, cudaErrorInvalidConfiguration = 9 };
typedef void* cudaStream_t;

inline cudaError_t& emu_last_error() {
  static cudaError_t err = cudaSuccess;
  return err;
}
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
inline cudaError_t cudaGetLastError() {
  const cudaError_t err = emu_last_error();
  emu_last_error() = cudaSuccess;
  return err;
}
inline const char* cudaGetErrorString(cudaError_t err) {
  return err == cudaSuccess ? "no error" : "invalid configuration argument (emulated)";
}

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
using std::max;
using std::min;

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline std::barrier<>* emu_block_barrier = nullptr;
inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

// Warp-wide mma.sync.m16n8k16 (row.col, fp32 accumulate): lanes publish their fragments, meet
// at a warp barrier, and each computes its own accumulators from the PTX ISA's fragment layout.
struct EmuWarp {
  std::barrier<> barrier{32};
  uint32_t a[32][4], b[32][2];
  const uint16_t* rows[32];  // ldmatrix: the row each lane points at
};
inline std::vector<std::unique_ptr<EmuWarp>> emu_warps;

inline float emu_16bit_to_float(uint32_t bits, bool fp16) {
  if (fp16) {
    const uint16_t h16 = static_cast<uint16_t>(bits);
    _Float16 h;
    std::memcpy(&h, &h16, sizeof h);
    return static_cast<float>(h);
  }
  const uint32_t u = bits << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline void emu_mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                          bool fp16) {
  const unsigned lane = threadIdx.x % 32;
  EmuWarp& w = *emu_warps[threadIdx.x / 32];
  for (int r = 0; r < 4; ++r) w.a[lane][r] = a[r];
  for (int r = 0; r < 2; ++r) w.b[lane][r] = b[r];
  w.barrier.arrive_and_wait();
  auto half = [&](uint32_t word, int k) {
    return emu_16bit_to_float(k % 2 ? word >> 16 : word & 0xffffu, fp16);
  };
  // A[row][k]: lane 4·(row % 8) + (k % 8) / 2, register (row >= 8) + 2·(k >= 8).
  auto A = [&](int row, int k) {
    return half(w.a[(row % 8) * 4 + (k % 8) / 2][(row >= 8) + 2 * (k >= 8)], k);
  };
  // B[k][n]: lane 4·n + (k % 8) / 2, register (k >= 8).
  auto B = [&](int k, int n) { return half(w.b[n * 4 + (k % 8) / 2][k >= 8], k); };
  const int g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i % 2);
    float sum = d[i];
    for (int k = 0; k < 16; ++k) sum += A(row, k) * B(k, col);
    d[i] = sum;
  }
  w.barrier.arrive_and_wait();  // fragments may be overwritten by the next call
}

// A misuse the hardware would fault on or silently get wrong (misaligned addresses, a partial
// warp): loud, so that a test cannot pass over it.
[[noreturn]] inline void emu_fault(const char* what) {
  std::fprintf(stderr, "sparsekit CUDA emulation: %s\n", what);
  std::abort();
}

// ldmatrix.sync.aligned.m8n8.x{1,2,4}{.trans}.shared.b16: lanes 8i .. 8i + 7 point at the rows of
// matrix i (16 bytes each, 16-byte aligned); lane 4·g + t receives, in register i, elements
// (g, 2t) and (g, 2t + 1) of matrix i — with .trans, elements (2t, g) and (2t + 1, g).
template <int N>
void emu_ldmatrix(uint32_t (&r)[N], const void* row, bool trans) {
  static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
  const unsigned lane = threadIdx.x % 32;
  if (reinterpret_cast<uintptr_t>(row) % 16 != 0) emu_fault("ldmatrix row not 16-byte aligned");
  EmuWarp& w = *emu_warps[threadIdx.x / 32];
  w.rows[lane] = static_cast<const uint16_t*>(row);  // lanes >= 8·N: ignored, as on the GPU
  w.barrier.arrive_and_wait();
  const int g = lane / 4, t = lane % 4;
  for (int i = 0; i < N; ++i) {
    auto at = [&](int rr, int cc) { return uint32_t(w.rows[8 * i + rr][cc]); };
    r[i] = trans ? at(2 * t, g) | at(2 * t + 1, g) << 16 : at(g, 2 * t) | at(g, 2 * t + 1) << 16;
  }
  w.barrier.arrive_and_wait();  // rows may be overwritten by the next call
}

// cp.async.{ca,cg}.shared.global [dst], [src], size, src_size: queued per thread, one queue per
// commit group, and performed (src_size bytes copied, the rest of `size` zero-filled) only when
// the thread's cp.async.wait_group retires the group; until then dst holds all-ones bytes (NaN in
// fp32, bf16 and fp16), as undefined as on the GPU. So a kernel that reads a stage before waiting
// for it, lets another thread read it before a barrier, or refills a stage another thread may
// still be reading, reads NaN or stale data.
struct EmuCopy {
  void* dst;
  const void* src;
  int size, src_size;
};
struct EmuAsyncCopies {
  std::vector<EmuCopy> open;               // issued since the last commit
  std::deque<std::vector<EmuCopy>> groups;  // committed, oldest first
};
inline thread_local EmuAsyncCopies emu_async;

inline void emu_cp_async(void* dst, const void* src, int size, int src_size) {
  const bool reads = src_size > 0;
  if (reinterpret_cast<uintptr_t>(dst) % size || (reads && reinterpret_cast<uintptr_t>(src) % size))
    emu_fault("cp.async address not aligned to the copy size");
  if (src_size < 0 || src_size > size) emu_fault("cp.async src-size outside [0, size]");
  std::memset(dst, 0xff, size);
  emu_async.open.push_back(EmuCopy{dst, src, size, src_size});
}
inline void emu_cp_async_commit() {
  emu_async.groups.push_back(std::move(emu_async.open));
  emu_async.open.clear();
}
// cp.async.wait_group n: every committed group but the newest n has landed.
inline void emu_cp_async_wait(int n) {
  while (static_cast<int>(emu_async.groups.size()) > n) {
    for (const EmuCopy& c : emu_async.groups.front()) {
      if (c.src_size > 0) std::memcpy(c.dst, c.src, c.src_size);
      std::memset(static_cast<char*>(c.dst) + c.src_size, 0, c.size - c.src_size);
    }
    emu_async.groups.pop_front();
  }
}

struct EmuConfig {
  dim3 grid, block;
};
inline EmuConfig emu_cfg(dim3 grid, dim3 block, size_t = 0, cudaStream_t = nullptr) {
  return EmuConfig{grid, block};
}

template <typename... Params, typename... Args>
void emu_launch(void (*kernel)(Params...), EmuConfig cfg, Args... args) {
  const unsigned threads = cfg.block.x * cfg.block.y * cfg.block.z;
  if (threads == 0 || threads > 1024 || cfg.grid.x == 0 || cfg.grid.y == 0 || cfg.grid.z == 0 ||
      cfg.grid.y > 65535 || cfg.grid.z > 65535) {
    emu_last_error() = cudaErrorInvalidConfiguration;
    return;
  }
  std::barrier<> barrier(threads);
  emu_block_barrier = &barrier;
  emu_warps.clear();
  for (unsigned w = 0; w < (threads + 31) / 32; ++w)
    emu_warps.push_back(std::make_unique<EmuWarp>());
  blockDim = cfg.block;
  gridDim = cfg.grid;
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t)
    pool.emplace_back([&, t]() {
      threadIdx = dim3(t % cfg.block.x, (t / cfg.block.x) % cfg.block.y,
                       t / (cfg.block.x * cfg.block.y));
      for (unsigned bz = 0; bz < cfg.grid.z; ++bz)
        for (unsigned by = 0; by < cfg.grid.y; ++by)
          for (unsigned bx = 0; bx < cfg.grid.x; ++bx) {
            blockIdx = dim3(bx, by, bz);
            emu_async = EmuAsyncCopies{};  // copies a block left pending die with it
            kernel(args...);
            barrier.arrive_and_wait();  // the next block may reuse the shared statics
          }
    });
  for (std::thread& t : pool) t.join();
}
