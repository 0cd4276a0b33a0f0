"""This CPU's fp32 FMA peak: the roofline the CPU kernels are measured against.

    python -m benchmarks.fma_peak                  # AVX-512 where the CPU has it, else AVX2
    python -m benchmarks.fma_peak --isa avx2 --threads 1

Compiles (with the C compiler ``CC``, default ``cc``) and runs a loop of independent
register-resident FMAs — 12 accumulator chains per thread, more than latency × issue width on
current x86 cores — on ``--threads`` OpenMP threads, and prints GFLOP/s. Zen 4 issues one
512-bit FMA per cycle per core (AVX-512 runs on 256-bit units: 32 fp32 FLOP/cycle), Zen 5 two
(64 FLOP/cycle), so the same "AVX-512" flag means 2× the peak there.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile

SOURCE = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#if defined(__AVX512F__)
typedef __m512 V;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
static float sum(V v) { return _mm512_reduce_add_ps(v); }
#else
typedef __m256 V;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
static float sum(V v) { float f[8]; _mm256_storeu_ps(f, v); float s = 0; for (int i = 0; i < 8; i++) s += f[i]; return s; }
#endif
int main(int argc, char** argv) {
  const long iters = atol(argv[1]);
  const int threads = atoi(argv[2]);
  float out = 0;
  int ran = 0;
  double t0 = omp_get_wtime();
#pragma omp parallel num_threads(threads) reduction(+ : out)
  {
#pragma omp single
    ran = omp_get_num_threads();
    V a[12], b = SET1(1.0000001f), c = SET1(1e-7f);
    for (int i = 0; i < 12; i++) a[i] = SET1((float)i);
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 12
      for (int j = 0; j < 12; j++) a[j] = FMA(a[j], b, c);
    }
    for (int i = 0; i < 12; i++) out += sum(a[i]);
  }
  double t = omp_get_wtime() - t0;
  printf("%.1f %d %g\n", 2.0 * ran * iters * 12 * LANES / t / 1e9, ran, out);
  return 0;
}
"""

FLAGS = {"avx512": ["-mavx512f"], "avx2": ["-mavx2", "-mfma"]}


def cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fma_peak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--isa", choices=sorted(FLAGS), help="vector ISA (default: the widest the "
                    "CPU has)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="OpenMP threads (default: the CPUs this process may run on)")
    ap.add_argument("--iterations", type=int, default=100_000_000,
                    help="loop trips per thread (12 FMAs each)")
    args = ap.parse_args(argv)
    if os.uname().machine != "x86_64":
        ap.error("the FMA loop is written for x86-64 (AVX-512 / AVX2)")
    flags = cpu_flags()
    isa = args.isa or ("avx512" if "avx512f" in flags else "avx2")
    if isa == "avx512" and "avx512f" not in flags or isa == "avx2" and "fma" not in flags:
        ap.error(f"this CPU cannot run --isa {isa}")
    if args.threads < 1 or args.iterations < 1:
        ap.error("--threads and --iterations must be positive")
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "peak.c"), os.path.join(tmp, "peak")
        with open(src, "w") as f:
            f.write(SOURCE)
        cc = os.environ.get("CC", "cc")
        subprocess.run([cc, "-O2", "-fopenmp", *FLAGS[isa], src, "-o", exe], check=True)
        result = subprocess.run([exe, str(args.iterations), str(args.threads)], check=True,
                                capture_output=True, text=True)
    gflops, threads = float(result.stdout.split()[0]), int(result.stdout.split()[1])
    print(f"{isa} FMA peak: {gflops:.0f} GFLOP/s on {threads} thread(s) "
          f"({gflops / threads:.0f} per thread)")


if __name__ == "__main__":
    main()
