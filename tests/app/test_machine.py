"""The one description of the machine that compare's page, the benchmark and benchmarks/gpu.py all print."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import lightning
import pytest
import torch

from lit_nnopt.app import machine


def test_the_cpu_is_named_by_the_model_name_linux_gives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9654 96-Core Processor\n\nprocessor\t: 1\n")
    monkeypatch.setattr(machine, "_CPUINFO", cpuinfo)
    assert machine.cpu_name() == "AMD EPYC 9654 96-Core Processor"


@pytest.mark.parametrize("cpuinfo_text", [None, "processor\t: 0\nBogoMIPS\t: 50.00\n"], ids=["not Linux", "no name"])
def test_without_a_model_name_the_cpu_is_named_by_its_architecture(
    cpuinfo_text: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    cpuinfo = tmp_path / "cpuinfo"
    if cpuinfo_text is not None:  # an ARM Linux names no model
        cpuinfo.write_text(cpuinfo_text)
    monkeypatch.setattr(machine, "_CPUINFO", cpuinfo)
    assert machine.cpu_name() == (platform.processor() or platform.machine())


def test_the_record_and_the_line_describe_the_same_machine(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    record = machine.machine_record("cpu")
    assert record["gpus"] == [], "no GPUs are listed for a run on the CPU"
    assert (record["torch"], record["lightning"]) == (torch.__version__, lightning.__version__)
    assert (record["cpu"], record["cpu_count"]) == (machine.cpu_name(), os.cpu_count())
    line = machine.machine_line()
    assert f"{record['cpu']}, {record['cpu_count']} cores" in line and ", OMP_NUM_THREADS=3;" in line
    assert line.endswith(f"; Python {record['python']}, torch {record['torch']}, lightning {record['lightning']}")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert "OMP_NUM_THREADS" not in machine.machine_line()
