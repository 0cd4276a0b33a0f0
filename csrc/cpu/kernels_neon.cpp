// The kernels for aarch64 (see setup.py; built on aarch64 only): Advanced SIMD (NEON) is part
// of every ARMv8-A CPU, so no flag is needed: 4 floats per vector, 32 vector registers.
#define SPARSEKIT_ISA neon
#define SPARSEKIT_VL 4
#define SPARSEKIT_VREGS 32
#include "kernels_impl.h"
