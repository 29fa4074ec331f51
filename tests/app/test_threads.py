"""The CLI lowers torch's thread count on a busy machine, unless told not to."""

from __future__ import annotations

import pytest
import torch

from lit_nnopt.app.environment import AUTO_THREADS_ENV, fit_threads_to_free_cpus, free_cpus


@pytest.fixture(autouse=True)
def _keep_thread_count():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("cpus, load, expected", [(2, 0.0, 2), (2, 1.0, 1), (2, 3.7, 1), (8, 2.4, 6), (8, 2.6, 5)])
def test_free_cpus_are_the_cpus_minus_the_load_and_at_least_one(cpus, load, expected):
    assert free_cpus(cpus, load) == expected


def test_a_busy_machine_gets_fewer_threads_and_is_told(capfd):
    torch.set_num_threads(4)
    assert fit_threads_to_free_cpus(environ={}, cpus=4, load=2.9) == 1
    assert torch.get_num_threads() == 1
    err = capfd.readouterr().err
    assert "using 1 torch thread instead of 4: 4 CPUs, load 2.9" in err and f"{AUTO_THREADS_ENV}=0" in err


def test_an_idle_machine_keeps_torchs_count(capfd):
    torch.set_num_threads(2)
    assert fit_threads_to_free_cpus(environ={}, cpus=4, load=0.3) is None
    assert torch.get_num_threads() == 2 and capfd.readouterr().err == ""


@pytest.mark.parametrize(
    "environ", [{AUTO_THREADS_ENV: "0"}, {AUTO_THREADS_ENV: "off"}, {"OMP_NUM_THREADS": "2"}, {"MKL_NUM_THREADS": "4"}]
)
def test_the_user_s_choice_wins(environ):
    torch.set_num_threads(4)
    assert fit_threads_to_free_cpus(environ=environ, cpus=4, load=3.5) is None
    assert torch.get_num_threads() == 4
