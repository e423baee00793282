#!/usr/bin/env python3
"""Build and install llama-cpp-python with CPU flags derived from this machine.

Why: llama-cpp-python's default build uses ``-march=native`` (``GGML_NATIVE=ON``). On CPUs that advertise AMX
inside VMs that fault on it, every quantized GGUF then crashes the process in ``ggml_backend_amx_mul_mat``.
Turning AMX off alone is not enough; a non-native build with the SIMD extensions listed explicitly works.

The wheel is built with ``--no-cache-dir`` into a cache folder keyed by version and flags, so pip's own wheel
cache (which ignores ``CMAKE_ARGS``) can never hand a native build to this project, and later installs reuse
our build instead of compiling again (about 6 minutes on 2 cores).

With ``--cuda`` (or ``EMBELLAMA_CUDA=1``) the wheel is built with ``-DGGML_CUDA=ON`` for the installed CUDA
toolkit (``nvcc`` on PATH, or ``CUDACXX``); the wheel cache key includes it, so CPU and CUDA builds never mix.

Usage: ``python scripts/build_llama_cpp.py [--python VENV_PYTHON] [--cuda] [--print-flags]``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"

# /proc/cpuinfo flag -> ggml CMake option. Order matters only for readability.
X86_FLAG_OPTIONS: tuple[tuple[str, str], ...] = (
    ("sse4_2", "GGML_SSE42"),
    ("avx", "GGML_AVX"),
    ("avx2", "GGML_AVX2"),
    ("bmi2", "GGML_BMI2"),
    ("fma", "GGML_FMA"),
    ("f16c", "GGML_F16C"),
    ("avx_vnni", "GGML_AVX_VNNI"),
    ("avx512f", "GGML_AVX512"),
    ("avx512vbmi", "GGML_AVX512_VBMI"),
    ("avx512_vnni", "GGML_AVX512_VNNI"),
    ("avx512_bf16", "GGML_AVX512_BF16"),
)


def cpu_flags() -> set[str]:
    """Return the CPU feature flags the kernel reports (empty off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cmake_args(flags: set[str] | None = None, machine: str | None = None, cuda: bool = False) -> list[str]:
    """CMake options for a portable build matching this CPU, never using AMX (plus CUDA when asked)."""
    machine = machine or platform.machine()
    gpu = ["-DGGML_CUDA=ON"] if cuda else []
    if machine not in ("x86_64", "AMD64"):
        return gpu  # the AMX fault is x86-only; keep llama.cpp's native default elsewhere
    flags = cpu_flags() if flags is None else flags
    args = ["-DGGML_NATIVE=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
    for flag, option in X86_FLAG_OPTIONS:
        args.append(f"-D{option}={'ON' if flag in flags else 'OFF'}")
    return args + gpu


def cache_dir() -> Path:
    """Folder holding our wheels, keyed by version and flags."""
    root = Path(os.environ.get("EMBELLAMA_CACHE", Path.home() / ".cache" / "embellama"))
    return root / "wheels"


def wheel_dir(cuda: bool = False) -> Path:
    """The cache folder of the wheel for this machine's flags (and CUDA or not)."""
    args = cmake_args(cuda=cuda)
    key = hashlib.sha256(" ".join([LLAMA_CPP_PYTHON_VERSION, *args]).encode()).hexdigest()[:12]
    return cache_dir() / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}-{key}"


def build(python: str, force: bool = False, cuda: bool = False) -> Path:
    """Build (or reuse) the wheel and install it into ``python``'s environment."""
    args = cmake_args(cuda=cuda)
    out = wheel_dir(cuda)
    wheels = sorted(out.glob("llama_cpp_python-*.whl"))
    if force or not wheels:
        out.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, CMAKE_ARGS=" ".join(args), CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
        print(f"building llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} with CMAKE_ARGS={env['CMAKE_ARGS']!r}", flush=True)
        print("(first build compiles llama.cpp: several minutes; later runs reuse the wheel)", flush=True)
        tmp = out / "partial"
        subprocess.run(
            [
                python,
                "-m",
                "pip",
                "wheel",
                "--no-cache-dir",
                "--no-deps",
                "-w",
                str(tmp),
                f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
            ],
            check=True,
            env=env,
        )
        for wheel in tmp.glob("*.whl"):
            wheel.rename(out / wheel.name)
        tmp.rmdir()
        wheels = sorted(out.glob("llama_cpp_python-*.whl"))
    wheel = wheels[-1]
    subprocess.run(
        [python, "-m", "pip", "install", "--no-cache-dir", "--force-reinstall", "--no-deps", str(wheel)], check=True
    )
    # its pure-Python dependencies come from the index as usual
    subprocess.run(
        [python, "-m", "pip", "install", "typing-extensions>=4.5", "numpy>=1.20", "diskcache>=5.6.1", "jinja2>=2.11.3"],
        check=True,
    )
    return wheel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter of the target environment")
    parser.add_argument("--print-flags", action="store_true", help="print the CMake options and exit")
    parser.add_argument("--force", action="store_true", help="rebuild even if a cached wheel exists")
    parser.add_argument(
        "--cuda",
        action="store_true",
        default=os.environ.get("EMBELLAMA_CUDA", "") not in ("", "0"),
        help="build with CUDA (-DGGML_CUDA=ON; default: $EMBELLAMA_CUDA)",
    )
    ns = parser.parse_args()
    if ns.print_flags:
        print(" ".join(cmake_args(cuda=ns.cuda)))
        return
    print(f"installed {build(ns.python, force=ns.force, cuda=ns.cuda).name}")


if __name__ == "__main__":
    main()
