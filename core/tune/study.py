"""Open the shared Optuna study: storage URL checks, the seeded TPE sampler and the reference pruner.

Any number of `tune` processes, on one machine or many, that name the same storage URL and study
share it: the study is created by whichever comes first and loaded by the others, trial numbers
come from the database, and each trial is recorded once.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from core.atomic import check_writable
from core.errors import UserError, format_problems

DEFAULT_SEED = 42
HEARTBEAT_SECONDS = 60  # a running trial writes a heartbeat this often; after 3 missed beats the next
                        # worker to start a trial marks it failed (its worker died without saying so)
SQLITE_LOCK_TIMEOUT_SECONDS = 60  # workers sharing one SQLite file wait this long for its write lock
SCHEMA_RACE_ATTEMPTS = 10  # tries to open a storage whose tables another worker is creating
SETTINGS_ATTR = "search_settings"


class TrialSeededTPESampler(optuna.samplers.TPESampler):
    """Multivariate TPE whose random draws for trial n come from seed + n.

    With one shared seed, every worker would otherwise repeat the same startup draws; seeding by
    trial number keeps workers apart and makes each trial's draw reproducible, whichever worker
    runs it. With one worker, trial 0 draws exactly what TPESampler(seed=seed) draws first.
    """

    def __init__(self, seed: int) -> None:
        with warnings.catch_warnings():
            # multivariate TPE is "experimental" in optuna, yet it is what the reference used
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(multivariate=True, seed=seed)
        self.base_seed = seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Reseed both random streams (TPE's and its startup random sampler's) for this trial."""
        trial_seed = (self.base_seed + trial.number) % 2 ** 32
        # TPESampler only offers reseed_rng() (a random reseed); its two RandomStates are reseeded
        # directly (optuna is pinned; test_trial_zero_with_seed_42_... guards this).
        self._rng.rng.seed(trial_seed)
        self._random_sampler._rng.rng.seed(trial_seed)
        super().before_trial(study, trial)


def make_pruner() -> optuna.pruners.PercentilePruner:
    """The reference pruner: below the median after fold >= 2, once 5 trials have completed."""
    return optuna.pruners.PercentilePruner(percentile=50.0, n_startup_trials=5, n_warmup_steps=2)


def default_storage_url(solution_dir: str | Path) -> str:
    """SQLite file `optuna.db` in the solution's folder (embedded: no server needed)."""
    return f"sqlite:///{(Path(solution_dir) / 'optuna.db').resolve()}"


def shown_url(url: str) -> str:
    """The URL with any password masked, for messages."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def make_storage(url: str, heartbeat_seconds: int = HEARTBEAT_SECONDS) -> optuna.storages.RDBStorage:
    """An RDB storage for `url` (sqlite:///FILE or postgresql://USER@HOST:PORT/DB), with heartbeats.

    The heartbeat lets any worker fail the trials of a worker that died without saying so.
    Workers that start together on a new database race to create its tables; the losers retry.
    """
    from sqlalchemy.exc import SQLAlchemyError

    engine_kwargs = _engine_kwargs(url)
    for attempt in range(1, SCHEMA_RACE_ATTEMPTS + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable in use
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                  heartbeat_interval=heartbeat_seconds,
                                                  grace_period=3 * heartbeat_seconds)
        except ImportError as error:
            raise UserError(f"storage {shown_url(url)}: the database driver is missing ({error}); "
                            "PostgreSQL needs psycopg2 (in requirements.txt)") from error
        except SQLAlchemyError as error:
            if attempt < SCHEMA_RACE_ATTEMPTS and _lost_schema_race(error):
                time.sleep(0.2 * attempt)
                continue
            cause = str(error).splitlines()[0]
            raise UserError(f"cannot open storage {shown_url(url)}: {cause}. Check that the database server "
                            "is running and reachable, and the user, password and database name.") from error
    raise AssertionError("unreachable: the last attempt returns or raises")


def _lost_schema_race(error: Exception) -> bool:
    # Another worker created the same table or version row first (or holds SQLite's write lock).
    message = str(error).lower()
    return any(sign in message for sign in ("already exists", "unique constraint", "duplicate key",
                                            "database is locked"))


def _engine_kwargs(url: str) -> dict[str, Any]:
    """Validate `url`; SQLite gets a lock timeout (and its folder), servers a connection check."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise UserError(f"--storage {url!r} is not a database URL ({error}). Examples: "
                        "sqlite:///solutions/NAME/optuna.db, postgresql://USER:PASSWORD@HOST:5432/DB") from error
    if parsed.get_backend_name() != "sqlite":
        return {"pool_pre_ping": True}
    after_scheme = url.partition("://")[2]
    if after_scheme and not after_scheme.startswith("/"):  # sqlite://x.db parses, but as host "x.db"
        raise UserError(f"--storage {url!r} is not a valid SQLite URL: a file needs three slashes, "
                        f"sqlite:///relative/path.db or sqlite:////absolute/path.db")
    database = parsed.database or ""
    if database in ("", ":memory:"):
        raise UserError(f"--storage {url!r} is an in-memory SQLite database, which other workers cannot "
                        "share and which is lost at exit; give a file: sqlite:///path/to/optuna.db")
    try:
        check_writable(Path(database).parent)
    except PermissionError as error:
        raise UserError(f"--storage {url!r}: {error}") from error
    return {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_SECONDS}}


def open_study(storage_url: str, study_name: str, settings: dict[str, Any], seed: int = DEFAULT_SEED,
               heartbeat_seconds: int = HEARTBEAT_SECONDS) -> optuna.Study:
    """Create the study, or join it if it exists (another worker, or an earlier interrupted run).

    `settings` (solution, epochs, folds, search space, ...) are recorded by the first worker;
    a worker whose settings differ is refused, since its trials would not be comparable.
    """
    storage = make_storage(storage_url, heartbeat_seconds)
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                                sampler=TrialSeededTPESampler(seed), pruner=make_pruner(),
                                load_if_exists=True)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise UserError(f"study {study_name!r} in {shown_url(storage_url)} minimises its objective; "
                        "tune maximises the composite score. Choose another --study name.")
    _check_settings(study, settings, storage_url)
    return study


def _check_settings(study: optuna.Study, settings: dict[str, Any], storage_url: str) -> None:
    wanted = json.loads(json.dumps(settings))  # as stored: tuples become lists
    recorded = study.user_attrs.get(SETTINGS_ATTR)
    if recorded is None:
        study.set_user_attr(SETTINGS_ATTR, wanted)
        return
    differences = [f"{key}: study has {recorded.get(key)!r}, this run has {wanted.get(key)!r}"
                   for key in sorted(set(recorded) | set(wanted)) if recorded.get(key) != wanted.get(key)]
    if differences:
        raise UserError(format_problems(
            f"study {study.study_name!r} in {shown_url(storage_url)} was started with other settings; "
            "rerun with the same options, or choose a new --study name:", differences))


def load_existing_study(storage_url: str, study_name: str) -> optuna.Study:
    """Load a study for reading (report, export); a clear error naming the studies that exist."""
    _require_sqlite_file(storage_url)
    storage = make_storage(storage_url)
    names = optuna.get_all_study_names(storage)
    if study_name not in names:
        known = ", ".join(names) if names else "none"
        raise UserError(f"no study {study_name!r} in {shown_url(storage_url)} (studies there: {known}). "
                        "Run a search first, or pass --storage/--study of an existing one.")
    return optuna.load_study(study_name=study_name, storage=storage)


def _require_sqlite_file(storage_url: str) -> None:
    # Reading must not create an empty database (or its folder) where the user expected their study.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(storage_url)
    except ArgumentError:
        return  # make_storage explains a malformed URL
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:" \
            and not Path(parsed.database).is_file():
        raise UserError(f"no study database at {parsed.database}; run `tune SOLUTION --trials N` first, "
                        "or pass the --storage URL the search used")
