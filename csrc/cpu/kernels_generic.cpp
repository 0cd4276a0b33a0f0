// The kernels compiled for the baseline ISA: the portable fallback.
#define SPARSEKIT_ISA generic
#include "kernels_impl.h"
