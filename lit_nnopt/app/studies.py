"""Where ``tune`` and ``compare --storage`` keep their Optuna studies, and how workers share one.

A study lives in an Optuna storage: by default a SQLite file in the command's output folder
(nothing to start, and a second run of the same command picks the study up where it stopped),
or a database server that every machine of a search reaches (``--storage
postgresql://user:password@host/db``). Each worker writes a heartbeat for the trial it runs; a
trial whose heartbeat stops for ``GRACE_SECONDS`` (its worker was killed, its machine lost) is
failed and queued again by whichever worker notices first, so that it is taken again, once.
"""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEFAULT_STORAGE_FILE = "study.db"
HEARTBEAT_SECONDS = 5
# Longer than any pause of a live worker's heartbeat thread (a busy machine, a slow database).
GRACE_SECONDS = 30
# Tries at opening a database whose tables another worker may be creating at the same moment.
_OPENING_ATTEMPTS = 3
# How long a SQLite writer waits for another process's lock before giving up.
_SQLITE_LOCK_TIMEOUT_SECONDS = 60
_SERVER_HELP = (
    "Start the server, or point --storage at one that runs: for PostgreSQL on Debian or Ubuntu, "
    "`sudo apt-get install postgresql && sudo service postgresql start`, then "
    "`sudo -u postgres createuser --pwprompt USER && sudo -u postgres createdb --owner USER DB` and "
    "`--storage postgresql://USER:PASSWORD@HOST/DB` (see docs/multi-machine.md). Without --storage the study "
    "is a SQLite file in the output folder, with nothing to start."
)


class StorageError(RuntimeError):
    """A study storage that cannot be opened: exit status 1, with what to do about it."""


def storage_url(given: str | None, out: Path) -> str:
    """``given``, or the SQLite file ``out/study.db`` (``out`` is created)."""
    if given:
        return given
    out.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(out / DEFAULT_STORAGE_FILE).resolve()}"


def shown(url: str) -> str:
    """``url`` with its password replaced by ``***``, to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def shown_command(words: list[str]) -> str:
    """A command line to print or record, with the password of any URL in it replaced by ``***``."""
    return " ".join(_shown_word(word) for word in words)


def _shown_word(word: str) -> str:
    option, equals, value = word.partition("=")
    if equals and "://" in value:
        return f"{option}={shown(value)}"
    return shown(word) if "://" in word else word


def _with_driver(url: str) -> str:
    """``url``, naming psycopg2 (what the ``postgres`` extra installs) where a PostgreSQL URL names no driver.

    SQLAlchemy 2.0 reads ``postgresql://`` as psycopg2 but 2.1 as psycopg 3, which is not installed;
    a URL that names its driver (``postgresql+psycopg://``) is left as it is.
    """
    scheme, separator, rest = url.partition("://")
    return f"postgresql+psycopg2://{rest}" if separator and scheme == "postgresql" else url


def open_storage(url: str, heartbeat: bool = True) -> Any:
    """An Optuna ``RDBStorage`` on ``url``; with ``heartbeat``, stale trials are failed and queued again.

    Raises:
        StorageError: if the URL is not a database URL, its driver is not installed or its
            server cannot be reached; the message says which URL and how to start a server.
    """
    import optuna
    from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

    optuna.logging.set_verbosity(logging.WARNING)  # a line per trial would bury lit_nnopt's own progress lines
    # The heartbeat's stale-trial check and the plots are marked experimental; they are what lit_nnopt uses them for.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # `ask` says so to a study with a heartbeat; lit_nnopt's workers beat themselves (study_trials.run_trial).
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    sqlite = url.startswith("sqlite")
    engine_kwargs: dict[str, Any] = {}
    if sqlite:
        # pysqlite's own BEGIN is turned off: _read_under_the_write_lock begins every transaction instead.
        engine_kwargs = {"connect_args": {"timeout": _SQLITE_LOCK_TIMEOUT_SECONDS, "isolation_level": None}}
    liveness: dict[str, Any] = {}
    if heartbeat:
        liveness = {
            "heartbeat_interval": HEARTBEAT_SECONDS,
            "grace_period": GRACE_SECONDS,
            "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(),
        }
    try:
        storage = _first_opening(url, engine_kwargs, liveness)
    except ImportError as error:  # Optuna re-raises the driver's ModuleNotFoundError as a plain ImportError
        missing = error.name or getattr(error.__cause__, "name", None)
        driver = f"`{missing}`" if missing else "of its URL"
        raise StorageError(
            f"the study storage {shown(url)} needs the database driver {driver}, which is not installed. "
            'For PostgreSQL install `pip install "lit_nnopt[postgres]"`; for another database, its SQLAlchemy driver.'
        ) from None
    except ArgumentError:
        raise StorageError(
            f"`--storage {shown(url)}` is not a database URL: write it as SQLAlchemy does, e.g. "
            "`postgresql://USER:PASSWORD@HOST:5432/DB` or `sqlite:////absolute/path/study.db`."
        ) from None
    except OperationalError as error:
        reason = _first_line(error)
        if any(word in reason.lower() for word in ("password", "authentication")):
            raise StorageError(
                f"the study storage {shown(url)} refused the login: {reason}. Check the user and password in the "
                "URL (or in ~/.pgpass, with `postgresql://USER@HOST/DB`): see docs/multi-machine.md."
            ) from None
        raise StorageError(f"cannot reach the study storage {shown(url)}: {reason}. {_SERVER_HELP}") from None
    except SQLAlchemyError as error:
        raise StorageError(f"the study storage {shown(url)} refused Optuna's tables: {_first_line(error)}.") from None
    if sqlite:
        _read_under_the_write_lock(storage.engine)
    return storage


def _first_line(error: Exception) -> str:
    return str(getattr(error, "orig", None) or error).strip().splitlines()[0]


def _first_opening(url: str, engine_kwargs: dict[str, Any], liveness: dict[str, Any]) -> Any:
    """``RDBStorage(url)``, tried again where another worker was creating the same new database's tables.

    Optuna creates the tables one by one; two machines that start on an empty server database at
    once collide on one of them (an IntegrityError or ProgrammingError), and a second try finds them made.
    """
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    attempt = 1
    while True:
        try:
            with _one_opener_at_a_time(url):
                return optuna.storages.RDBStorage(_with_driver(url), engine_kwargs=engine_kwargs, **liveness)
        except (IntegrityError, ProgrammingError):
            if attempt == _OPENING_ATTEMPTS:
                raise
            time.sleep(attempt)
            attempt += 1


def _one_opener_at_a_time(url: str) -> AbstractContextManager[Any]:
    """A lock file beside a SQLite database, held while Optuna opens it; no lock for another database.

    Optuna creates a new database's tables one by one, each where it finds none: of two workers that
    open a new SQLite file at once, one can find a table the other has just made ("table studies
    already exists") and fail. Processes that share a SQLite file share its folder, and the lock.
    """
    from filelock import FileLock
    from sqlalchemy.engine import make_url

    database = make_url(url).database if url.startswith("sqlite") else None
    if not database or database == ":memory:" or not Path(database).parent.is_dir():
        return nullcontext()
    return FileLock(f"{database}.lock")


def _read_under_the_write_lock(engine: Any) -> None:
    """Begin each transaction of ``engine`` (SQLite) with the database's write lock, ``BEGIN IMMEDIATE``.

    Optuna takes a waiting trial by reading its state and writing RUNNING in one transaction, with
    ``SELECT ... FOR UPDATE``, which SQLite ignores; pysqlite begins a transaction only at its
    first write. Two workers could then both read the same trial as waiting and both take it.
    """
    from sqlalchemy import event

    event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))
