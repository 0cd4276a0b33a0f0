// The kernels compiled with AVX-512 flags (see setup.py; x86-64 only): 16 floats per vector,
// 32 vector registers. Used only where the CPU has AVX-512F/VL/BW/DQ.
#define SPARSEKIT_ISA avx512
#define SPARSEKIT_VL 16
#define SPARSEKIT_VREGS 32
#include "kernels_impl.h"
