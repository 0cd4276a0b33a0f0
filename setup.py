"""Build script for sparsekit's native kernels.

Always builds ``sparsekit._C`` (csrc/cpu: C++17 + OpenMP, torch-free pybind11) with the kernels
compiled once per instruction set of the target architecture (``cpu_sources``): on x86-64
``kernels_avx512.cpp`` and ``kernels_avx2.cpp`` get their ISA's flags (per translation unit
only), on aarch64 ``kernels_neon.cpp`` needs none; ``kernels_generic.cpp`` (portable) is built
everywhere. The module picks the best ISA the CPU supports at run time. No x86 flag is ever
handed to a compiler for another architecture.

Where ``nvcc`` is found (and ``SPARSEKIT_NO_CUDA`` is not set) it also builds
``sparsekit._C_cuda`` from csrc/cuda (sm_80 and sm_90a code, compute_90 PTX for newer GPUs),
linked against the static CUDA runtime so that importing it
needs no GPU and no CUDA shared libraries.

Compilation runs in parallel (``MAX_JOBS``, default: all cores) and is incremental: an object is
rebuilt only when its source or a header in its directory is newer.
"""

import glob
import os
import platform
import shutil
import subprocess

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
# Flags per ISA translation unit (kernels_<isa>.cpp), and the ISAs built per architecture.
ISA_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx2", "-mfma"],
    "avx2": ["-mavx2", "-mfma"],
    "neon": [],
    "generic": [],
}
ARCH_ISAS = {"x86_64": ("avx512", "avx2"), "aarch64": ("neon",)}
ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}
# Machine code for sm_80 and sm_90a, plus compute_90 PTX that the driver JIT-compiles on newer
# GPUs (the kernels use no sm_90a-only instruction, so the portable PTX is the same code).
CUDA_ARCHS = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a",
              "-gencode=arch=compute_90,code=compute_90"]


def target_arch():
    """The architecture the extension is built for (``SPARSEKIT_TARGET_ARCH`` overrides)."""
    arch = os.environ.get("SPARSEKIT_TARGET_ARCH") or platform.machine()
    return ARCH_ALIASES.get(arch.lower(), arch.lower())


def cpu_sources(arch):
    """csrc/cpu sources for ``arch``: the bindings, the portable kernels, and the ISA kernels
    that architecture has (none for one not in ARCH_ISAS)."""
    isas = ARCH_ISAS.get(arch, ())
    keep = []
    for src in _sources("cpu", "*.cpp"):
        name = os.path.basename(src)
        if name.startswith("kernels_"):
            isa = name[len("kernels_"):-len(".cpp")]
            if isa != "generic" and isa not in isas:
                continue
        keep.append(src)
    return keep


def isa_flags(src):
    """Compiler flags for one CPU source: its ISA's, if it is an ISA translation unit."""
    name = os.path.basename(src)
    if name.startswith("kernels_") and name.endswith(".cpp"):
        return list(ISA_FLAGS[name[len("kernels_"):-len(".cpp")]])
    return []


def _sources(subdir, *patterns):
    files = []
    for pattern in patterns:
        files += glob.glob(os.path.join("csrc", subdir, pattern))
    return sorted(files)


def _headers_newer_than(obj, src):
    """True if any header next to ``src`` (or in csrc/common) is newer than ``obj``."""
    obj_time = os.path.getmtime(obj)
    dirs = {os.path.dirname(src), os.path.join(HERE, "csrc", "common")}
    for d in dirs:
        for h in glob.glob(os.path.join(d, "*.h")) + glob.glob(os.path.join(d, "*.cuh")):
            if os.path.getmtime(h) > obj_time:
                return True
    return False


def _needs_recompile(obj, src):
    if not os.path.exists(obj):
        return True
    return os.path.getmtime(src) > os.path.getmtime(obj) or _headers_newer_than(obj, src)


def _find_nvcc():
    if os.environ.get("SPARSEKIT_NO_CUDA", "0") not in ("", "0"):
        return None
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if root and os.path.exists(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    return shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


def _cuda_root(nvcc):
    """The toolkit root as nvcc itself reports it (nvcc may be a wrapper script)."""
    dry = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                         capture_output=True, text=True).stderr
    for line in dry.splitlines():
        if "TOP=" in line:
            return os.path.normpath(line.split("TOP=", 1)[1].strip())
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


class BuildExt(build_ext):
    """Adds per-source flags: the ISA's for ``kernels_<isa>.cpp``, nvcc for ``*.cu``."""

    def finalize_options(self):
        super().finalize_options()
        # A fixed object directory (not pip's temporary one) makes rebuilds incremental.
        self.build_temp = os.path.join(HERE, "build", "temp")

    def build_extensions(self):
        self.compiler.src_extensions.append(".cu")
        default_compile = self.compiler._compile
        nvcc = _find_nvcc()

        def _compile(obj, src, ext, cc_args, extra_postargs, pp_opts):
            if src.endswith(".cu"):
                cmd = [nvcc, "-c", src, "-o", obj, "-O3", "-std=c++17", "-Xcompiler", "-fPIC",
                       *CUDA_ARCHS, *[a for a in pp_opts if a.startswith(("-I", "-D"))]]
                self.spawn(cmd)
                return
            extra = list(extra_postargs) + isa_flags(src)
            default_compile(obj, src, ext, cc_args, extra, pp_opts)

        self.compiler._compile = _compile
        super().build_extensions()


def _headers(subdir):
    """Headers an extension's objects depend on: setuptools rebuilds the extension only when a
    source or one of these is newer than it (_needs_recompile then picks the objects)."""
    return _sources(subdir, "*.h", "*.cuh") + _sources("common", "*.h")


def _extensions():
    common = dict(cxx_std=17, include_dirs=[os.path.join("csrc", "common")])
    exts = [
        Pybind11Extension(
            "sparsekit._C",
            cpu_sources(target_arch()),
            extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno",
                                "-Wno-psabi"],
            # Link the soname torch ships (libgomp.so.1) so only one OpenMP runtime is mapped.
            extra_link_args=["-fopenmp"],
            depends=_headers("cpu"),
            **common,
        )
    ]
    nvcc = _find_nvcc()
    if nvcc is not None:
        root = _cuda_root(nvcc)
        lib_dirs = [d for d in (os.path.join(root, "lib64"),
                                *glob.glob(os.path.join(root, "targets", "*", "lib")))
                    if os.path.isdir(d)]
        exts.append(
            Pybind11Extension(
                "sparsekit._C_cuda",
                _sources("cuda", "*.cpp", "*.cu"),
                include_dirs=[os.path.join("csrc", "common")],
                library_dirs=lib_dirs,
                libraries=["cudart_static", "rt", "dl", "pthread"],
                extra_compile_args=["-O3"],
                depends=_headers("cuda"),
                cxx_std=17,
            )
        )
    return exts


if __name__ == "__main__":
    ParallelCompile("MAX_JOBS", needs_recompile=_needs_recompile).install()
    setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
