"""Several `tune` workers sharing one study on a real PostgreSQL server (started and stopped here).

Run with `pytest -m postgres tests/test_tune_postgres.py`; the server is installed from the
distribution's packages if missing (see postgres_fixture.py).
"""
from __future__ import annotations

import pytest
from postgres_fixture import postgres_url  # noqa: F401  (the fixture)
from test_tune import check_two_workers_share_one_study

pytestmark = pytest.mark.postgres


def test_two_worker_processes_share_one_postgres_study(postgres_url, tiny_data, tmp_path):  # noqa: F811
    check_two_workers_share_one_study(postgres_url, tiny_data, tmp_path)


def test_a_postgres_study_is_joined_not_duplicated(postgres_url):  # noqa: F811
    from test_tune import StubFolds, stub_plan

    from core.tune.objective import make_objective
    from core.tune.search import Budget, run_search
    from core.tune.study import open_study

    first = open_study(postgres_url, "joined", {"solution": "x"}, seed=3)
    second = open_study(postgres_url, "joined", {"solution": "x"}, seed=3)
    run_search(first, make_objective(stub_plan((1, 2)), StubFolds(), worker="a"), Budget(trials=2))
    run_search(second, make_objective(stub_plan((1, 2)), StubFolds(), worker="b"), Budget(trials=4))
    trials = second.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert [t.user_attrs["worker"] for t in trials] == ["a", "a", "b", "b"]
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # no repeated draws across workers
