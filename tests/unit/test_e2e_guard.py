"""The e2e test drops the airflow and mlflow databases: only on a server that may lose them."""

import pytest

from tests.conftest import DISPOSABLE_FLAG, refuse_unless_disposable


def test_the_sessions_embedded_server_is_disposable():
    refuse_unless_disposable(None, {})


def test_an_external_server_is_refused_unless_marked_disposable():
    with pytest.raises(pytest.UsageError, match=DISPOSABLE_FLAG):
        refuse_unless_disposable("postgresql://ci@db.example:5432/postgres", {})
    with pytest.raises(pytest.UsageError):
        refuse_unless_disposable("postgresql://ci@db.example:5432/postgres", {DISPOSABLE_FLAG: "yes"})
    refuse_unless_disposable("postgresql://ci@db.example:5432/postgres", {DISPOSABLE_FLAG: "1"})
