// The kernels compiled for the baseline ISA with no extra flags: the portable fallback (SSE2 on
// x86-64: 4 floats per vector, 16 registers). `auto` runs layers as dense torch where this is
// the best ISA the CPU has (sparsekit/backends/cpu.py): it cannot beat oneDNN there.
#define SPARSEKIT_ISA generic
#define SPARSEKIT_VL 4
#define SPARSEKIT_VREGS 16
#include "kernels_impl.h"
