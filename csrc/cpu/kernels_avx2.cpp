// The kernels compiled with AVX2 + FMA flags (see setup.py; x86-64 only): 8 floats per vector,
// 16 vector registers, so tiles are sized for 16 ymm registers. Used where the CPU has AVX2 and
// FMA but not AVX-512.
#define SPARSEKIT_ISA avx2
#define SPARSEKIT_VL 8
#define SPARSEKIT_VREGS 16
#include "kernels_impl.h"
