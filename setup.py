"""Build script for sparsekit's native kernels.

Always builds ``sparsekit._C`` (csrc/cpu: C++17 + OpenMP, torch-free pybind11). The AVX-512
translation units (``*_avx512.cpp``) get AVX-512 flags; the rest are portable, and the module
picks the AVX-512 kernels at run time only where the CPU has them.

Where ``nvcc`` is found (and ``SPARSEKIT_NO_CUDA`` is not set) it also builds
``sparsekit._C_cuda`` from csrc/cuda, linked against the static CUDA runtime so that importing it
needs no GPU and no CUDA shared libraries.

Compilation runs in parallel (``MAX_JOBS``, default: all cores) and is incremental: an object is
rebuilt only when its source or a header in its directory is newer.
"""

import glob
import os
import shutil
import subprocess

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
AVX512_FLAGS = ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx2", "-mfma"]
CUDA_ARCHS = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a"]


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
    """Adds per-source flags: AVX-512 for ``*_avx512.cpp``, nvcc for ``*.cu``."""

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
            extra = list(extra_postargs)
            if src.endswith("_avx512.cpp"):
                extra += AVX512_FLAGS
            default_compile(obj, src, ext, cc_args, extra, pp_opts)

        self.compiler._compile = _compile
        super().build_extensions()


def _extensions():
    common = dict(cxx_std=17, include_dirs=[os.path.join("csrc", "common")])
    exts = [
        Pybind11Extension(
            "sparsekit._C",
            _sources("cpu", "*.cpp"),
            extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno",
                                "-Wno-psabi"],
            # Link the soname torch ships (libgomp.so.1) so only one OpenMP runtime is mapped.
            extra_link_args=["-fopenmp"],
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
                cxx_std=17,
            )
        )
    return exts


ParallelCompile("MAX_JOBS", needs_recompile=_needs_recompile).install()

setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
