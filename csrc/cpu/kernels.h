// Entry points of the CPU kernels (one namespace per ISA built for this architecture; setup.py
// compiles kernels_<isa>.cpp to match); the problem is in common/problem.h.
#pragma once
#include "problem.h"

namespace sparsekit {

// y = X̂ · W_keptᵀ + bias; every element of y is written (bias may be null).
#define SPARSEKIT_DECLARE_KERNELS(ns)                                                        \
  namespace ns {                                                                             \
  void forward(const Problem& p, const Index& ix, const float* x, const float* w,           \
               const float* bias, float* y);                                                 \
  void grad_input(const Problem& p, const Index& ix, const float* dy, const float* w,       \
                  float* dx);                                                                \
  void grad_weight(const Problem& p, const Index& ix, const float* dy, const float* x,      \
                   float* dw);                                                               \
  }

#if defined(__x86_64__)
SPARSEKIT_DECLARE_KERNELS(avx512)
SPARSEKIT_DECLARE_KERNELS(avx2)
#endif
#if defined(__aarch64__)
SPARSEKIT_DECLARE_KERNELS(neon)
#endif
SPARSEKIT_DECLARE_KERNELS(generic)

}  // namespace sparsekit
