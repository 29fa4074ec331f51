"""One worker's turn on a shared study: take a trial, keep it alive while it trains, tell how it ended.

``tune`` and ``compare --storage`` run their trials through :func:`run_trial` rather than
``Study.optimize``: a worker here must survive its trial being given up by the study (its
heartbeat was late, say on a paused machine, and another worker failed it and queued a copy).
``optimize`` then raises from its ``tell`` and would stop every worker of the machine; here
the late result is dropped with one line, and the worker goes on. The heartbeat thread also
outlives a database error (a restarting server) instead of dying at the first one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from lit_nnopt.app.studies import HEARTBEAT_SECONDS


class TrialGivenUp(Exception):
    """Raised by an objective whose trial failed (a crash, a run that failed): the trial fails, the worker goes on."""


def trial_id(storage: Any, study_name: str, number: int) -> int:
    """The storage's id of trial ``number`` of ``study_name``."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


@contextmanager
def heartbeat(storage: Any, trial: int) -> Iterator[None]:
    """Record a heartbeat for storage trial id ``trial`` now and every ``HEARTBEAT_SECONDS`` until the block ends."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial)
            except Exception:  # a database that is away a moment: the next beat tries again, within the grace period
                pass
            if stop.wait(HEARTBEAT_SECONDS):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_trial(study: Any, storage: Any, objective: Callable[[Any], float], trial: Any) -> str:
    """Run ``objective`` on ``trial`` (from ``study.ask()``) with a heartbeat; tell the study how it ended.

    Returns:
        The state the trial ends in: ``COMPLETE``, ``PRUNED``, ``FAIL``, or ``TAKEN OVER`` where the
        study had given the trial up while it ran (its result is dropped; a copy is queued).

    Raises:
        Whatever ``objective`` raises besides ``TrialPruned`` and :class:`TrialGivenUp`, once the
        trial is told as failed (Ctrl-C, SIGTERM, a bug).
    """
    import optuna
    from optuna.trial import TrialState

    with heartbeat(storage, trial_id(storage, study.study_name, trial.number)):
        try:
            value, state = objective(trial), TrialState.COMPLETE
        except optuna.TrialPruned:
            value, state = None, TrialState.PRUNED
        except TrialGivenUp:
            value, state = None, TrialState.FAIL
        except optuna.exceptions.UpdateFinishedTrialError:  # the objective wrote into a trial given up meanwhile
            return "TAKEN OVER"
        except BaseException:
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
    told = study.tell(trial, value, state=state, skip_if_finished=True)
    return state.name if told.state == state else "TAKEN OVER"
