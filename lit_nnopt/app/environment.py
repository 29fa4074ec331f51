"""The process's environment for training: fewer torch threads on a busy machine, no NVML probe without a GPU.

On two CPU cores shared with another job, an epoch of adam.yaml took 26 s with torch's two
default threads and 1.5 s with one. The CLI asks :func:`fit_threads_to_free_cpus` to lower
torch's intra-op threads to the CPUs that are free (this process's CPUs, as
``os.sched_getaffinity`` gives them, minus the one-minute load average), never below one.
It leaves the count alone where the user chose one (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``)
or turned this off with ``LIT_NNOPT_AUTO_THREADS=0``.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping

import torch

AUTO_THREADS_ENV = "LIT_NNOPT_AUTO_THREADS"
_USER_THREAD_SETTINGS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_OFF = ("0", "false", "no", "off")


def available_cpus() -> int:
    """The CPUs this process may run on (a container's or ``taskset``'s limit included)."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


def load_average() -> float:
    """Runnable processes over the last minute; 0 where the system does not say."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def free_cpus(cpus: int, load: float) -> int:
    """The CPUs left to this process: ``cpus`` minus the load, rounded to the nearest, at least one."""
    return max(1, min(cpus, math.floor(cpus - load + 0.5)))


def fit_threads_to_free_cpus(
    environ: Mapping[str, str] | None = None, cpus: int | None = None, load: float | None = None
) -> int | None:
    """Lower ``torch.get_num_threads()`` to the free CPUs; the new count, or None if unchanged.

    Args:
        environ: the environment to read the opt-outs from; ``os.environ`` if None.
        cpus: the CPUs available; :func:`available_cpus` if None.
        load: the load average; :func:`load_average` if None.
    """
    environ = os.environ if environ is None else environ
    if environ.get(AUTO_THREADS_ENV, "1").strip().lower() in _OFF:
        return None
    if any(environ.get(name) for name in _USER_THREAD_SETTINGS):
        return None
    cpus = available_cpus() if cpus is None else cpus
    load = load_average() if load is None else load
    current = torch.get_num_threads()
    wanted = free_cpus(cpus, load)
    if wanted >= current:
        return None
    torch.set_num_threads(wanted)
    sys.stderr.write(
        f"lit_nnopt: using {wanted} torch thread{'s' if wanted > 1 else ''} instead of {current}: "
        f"{cpus} CPUs, load {load:.1f}. Set {AUTO_THREADS_ENV}=0 or OMP_NUM_THREADS to choose yourself.\n"
    )
    return wanted


NVML_CHECK_ENV = "PYTORCH_NVML_BASED_CUDA_CHECK"


def skip_nvml_probe_without_gpu() -> None:
    """Turn off torch's NVML-based CUDA check (which Lightning turns on) where there is no GPU.

    Every optimizer step asks whether CUDA is available. With the NVML check on and no GPU
    present, torch answers by loading the NVML library again each time: 30 us per step on a
    CPU-only machine, where the check it exists for (not initializing CUDA before a fork)
    protects nothing.
    """
    if os.environ.get(NVML_CHECK_ENV) == "1" and torch.cuda.device_count() == 0:
        os.environ[NVML_CHECK_ENV] = "0"
