// Torch-free check of the CPU kernels of one ISA against scalar loops, for architectures this
// machine can only emulate (tests/test_cpu_isas.py cross-compiles it with kernels_<isa>.cpp for
// aarch64 and runs it under qemu). Random convs with odd sizes, strides, padding, dilation,
// upsampling, partial and narrow blocks, densities 0 to 1; prints one line per case and exits
// non-zero on the first mismatch.
//   build: g++ -std=c++17 -O2 -fopenmp -DISA=neon -Icsrc/common -Icsrc/cpu
//          tests/native/cpu_kernels_check.cpp csrc/cpu/kernels_neon.cpp
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "kernels.h"

#ifndef ISA
#error "define ISA (the kernels' namespace, e.g. neon)"
#endif

using sparsekit::Index;
using sparsekit::Problem;

namespace {

struct Case {
  int64_t batch, c_in, c_out, h, w, k, stride, pad, dil, up, bn, bk;
  double density;
};

int64_t in_coord(int64_t o, int64_t k, int64_t s, int64_t p, int64_t d, int64_t up, int64_t n) {
  const int64_t l = o * s - p + k * d;
  return (l < 0 || l >= up * n) ? -1 : l / up;
}

double max_rel_err(const std::vector<float>& ref, const std::vector<float>& got) {
  double scale = 1e-12, err = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    scale = std::fmax(scale, std::fabs(ref[i]));
    err = std::fmax(err, std::fabs(double(ref[i]) - got[i]));
  }
  return err / scale;
}

bool run(const Case& c, std::mt19937& rng) {
  const int64_t oh = (c.up * c.h + 2 * c.pad - c.dil * (c.k - 1) - 1) / c.stride + 1;
  const int64_t ow = (c.up * c.w + 2 * c.pad - c.dil * (c.k - 1) - 1) / c.stride + 1;
  const int64_t taps = c.k * c.k, K = taps * c.c_in;
  const int64_t bpt = (c.c_in + c.bk - 1) / c.bk, rows = (c.c_out + c.bn - 1) / c.bn;
  const int64_t cols = taps * bpt;
  std::uniform_real_distribution<float> uni(-1.f, 1.f);
  std::bernoulli_distribution keep(c.density);
  std::vector<uint8_t> bitmap(rows * cols);
  for (auto& b : bitmap) b = keep(rng);
  // Index arrays as sparsekit/layout.py builds them: CSR (row-major), CSC, kept-block list.
  std::vector<int32_t> row_ptr(rows + 1, 0), col_idx, block_row, col_ptr(cols + 1, 0), row_idx;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t q = 0; q < cols; ++q)
      if (bitmap[r * cols + q]) col_idx.push_back((int32_t)q), block_row.push_back((int32_t)r);
    row_ptr[r + 1] = (int32_t)col_idx.size();
  }
  for (int64_t q = 0; q < cols; ++q) {
    for (int64_t r = 0; r < rows; ++r)
      if (bitmap[r * cols + q]) row_idx.push_back((int32_t)r);
    col_ptr[q + 1] = (int32_t)row_idx.size();
  }
  const int32_t count = (int32_t)col_idx.size();
  col_idx.push_back(0), block_row.push_back(0), row_idx.push_back(0);  // never empty
  Index ix{row_ptr.data(), col_idx.data(), col_ptr.data(), row_idx.data(), block_row.data(),
           &count};
  Problem p{c.batch, c.h, c.w, c.c_in, oh, ow, c.c_out, c.k, c.k, c.stride, c.stride, c.pad,
            c.pad, c.dil, c.dil, c.up, K, c.bn, c.bk, rows, cols, bpt, 2};

  std::vector<float> x(c.batch * c.h * c.w * c.c_in), w(c.c_out * K), bias(c.c_out);
  std::vector<float> dy(c.batch * oh * ow * c.c_out);
  for (auto* v : {&x, &w, &bias, &dy})
    for (auto& e : *v) e = uni(rng);
  auto kept = [&](int64_t n, int64_t kk) {
    const int64_t tap = kk / c.c_in, ci = kk % c.c_in;
    return bitmap[(n / c.bn) * cols + tap * bpt + ci / c.bk] != 0;
  };
  std::vector<float> y_ref(dy.size()), dx_ref(x.size(), 0.f), dw_ref(w.size(), 0.f);
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t oy = 0; oy < oh; ++oy)
      for (int64_t ox = 0; ox < ow; ++ox)
        for (int64_t n = 0; n < c.c_out; ++n) {
          const int64_t o = ((b * oh + oy) * ow + ox) * c.c_out + n;
          double acc = bias[n];
          for (int64_t kk = 0; kk < K; ++kk) {
            const int64_t tap = kk / c.c_in, ci = kk % c.c_in;
            const int64_t iy = in_coord(oy, tap / c.k, c.stride, c.pad, c.dil, c.up, c.h);
            const int64_t ix_ = in_coord(ox, tap % c.k, c.stride, c.pad, c.dil, c.up, c.w);
            if (iy < 0 || ix_ < 0 || !kept(n, kk)) continue;
            const int64_t xi = ((b * c.h + iy) * c.w + ix_) * c.c_in + ci;
            acc += double(x[xi]) * w[n * K + kk];
            dx_ref[xi] += dy[o] * w[n * K + kk];
            dw_ref[n * K + kk] += dy[o] * x[xi];
          }
          y_ref[o] = (float)acc;
        }
  std::vector<float> y(y_ref.size(), NAN), dx(dx_ref.size(), NAN), dw(w.size(), 0.f);
  sparsekit::ISA::forward(p, ix, x.data(), w.data(), bias.data(), y.data());
  sparsekit::ISA::grad_input(p, ix, dy.data(), w.data(), dx.data());
  sparsekit::ISA::grad_weight(p, ix, dy.data(), x.data(), dw.data());
  const double ey = max_rel_err(y_ref, y), edx = max_rel_err(dx_ref, dx);
  const double edw = max_rel_err(dw_ref, dw);
  const bool ok = ey < 1e-4 && edx < 1e-4 && edw < 1e-4;
  std::printf("%s c_in %ld c_out %ld %ldx%ld k%ld s%ld p%ld d%ld up%ld block %ldx%ld density "
              "%.2f: y %.1e dx %.1e dw %.1e\n", ok ? "ok  " : "FAIL", (long)c.c_in,
              (long)c.c_out, (long)c.h, (long)c.w, (long)c.k, (long)c.stride, (long)c.pad,
              (long)c.dil, (long)c.up, (long)c.bn, (long)c.bk, c.density, ey, edx, edw);
  return ok;
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  const Case cases[] = {
      {2, 64, 64, 8, 8, 3, 1, 1, 1, 1, 32, 32, 0.4},   {2, 40, 50, 9, 7, 3, 1, 1, 1, 1, 32, 32, 0.5},
      {2, 20, 33, 8, 9, 3, 2, 1, 1, 1, 16, 16, 0.5},   {1, 17, 40, 11, 10, 3, 2, 0, 1, 1, 32, 16, 0.5},
      {2, 3, 64, 8, 8, 3, 1, 1, 1, 1, 16, 16, 0.7},    {1, 3, 64, 16, 16, 4, 2, 1, 1, 1, 16, 64, 0.6},
      {2, 64, 64, 5, 5, 1, 1, 0, 1, 2, 32, 32, 0.5},   {2, 70, 65, 4, 6, 3, 1, 1, 1, 2, 64, 64, 0.5},
      {1, 16, 16, 6, 6, 3, 1, 2, 2, 1, 16, 16, 0.5},   {2, 32, 48, 6, 6, 3, 1, 1, 1, 1, 16, 16, 1.0},
      {2, 32, 48, 6, 6, 3, 1, 1, 1, 1, 16, 16, 0.0},   {2, 50, 96, 6, 5, 3, 1, 1, 1, 1, 48, 24, 0.5},
  };
  for (const Case& c : cases)
    if (!run(c, rng)) return 1;
  return 0;
}
