// The kernels compiled with AVX-512 flags (see setup.py); used only where the CPU has AVX-512F.
#define SPARSEKIT_ISA avx512
#include "kernels_impl.h"
