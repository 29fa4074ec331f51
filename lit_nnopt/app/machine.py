"""The machine a measurement ran on: processor, GPUs, driver and library versions, described in one place.

``machine_record`` is what a measurement record keeps (``benchmarks/gpu.py``),
``machine_line`` the same in one line for a results page (``compare``'s ``comparison.md``),
``cpu_name`` the processor alone (the title of ``bench``'s table). torch and Lightning are
imported only when asked, so importing this module costs nothing.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

_CPUINFO = Path("/proc/cpuinfo")  # Linux only


def cpu_name() -> str:
    """The processor's model name where Linux tells it, else its architecture."""
    try:
        lines = _CPUINFO.read_text().splitlines()
    except OSError:  # not Linux
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def machine_record(accelerator: str) -> dict[str, Any]:
    """The GPUs (with ``accelerator="gpu"``), driver, CUDA, library versions and CPU, as a record's fields."""
    import lightning
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if accelerator == "gpu" else []
    return {
        "gpus": gpus,
        "driver": _nvidia_smi("driver_version"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
    }


def machine_line() -> str:
    """The hardware, the thread setting and the library versions, in one line."""
    import lightning
    import torch

    cpu = f"{cpu_name()}, {os.cpu_count()} cores"
    device = f"{torch.cuda.get_device_name(0)}, {cpu}" if torch.cuda.is_available() else cpu
    threads = os.environ.get("OMP_NUM_THREADS")
    return (
        f"{platform.machine()} {platform.system()}, {device}"
        + (f", OMP_NUM_THREADS={threads}" if threads else "")
        + f"; Python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__}"
    )


def _nvidia_smi(field: str) -> str | None:
    """One field of ``nvidia-smi --query-gpu`` for the first GPU; None without the tool or an answer."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"]
    result = subprocess.run(query, capture_output=True, text=True, check=False)
    return result.stdout.splitlines()[0].strip() if result.returncode == 0 and result.stdout.strip() else None
