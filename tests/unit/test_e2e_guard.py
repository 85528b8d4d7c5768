"""The e2e test drops the airflow and mlflow databases: only on a server that may lose them."""

import pytest

from tests.conftest import DISPOSABLE_FLAG, refuse_unless_disposable

EXTERNAL = "postgresql://ci@db.example:5432/postgres"


@pytest.mark.parametrize(
    ("external_url", "environ"),
    [(None, {}), (EXTERNAL, {DISPOSABLE_FLAG: "1"})],
    ids=["the session's embedded server", "external, marked disposable"],
)
def test_a_disposable_server_is_accepted(external_url, environ):
    refuse_unless_disposable(external_url, environ)


@pytest.mark.parametrize("environ", [{}, {DISPOSABLE_FLAG: "yes"}], ids=["unmarked", "not marked with 1"])
def test_an_external_server_is_refused_unless_marked_disposable(environ):
    with pytest.raises(pytest.UsageError, match=DISPOSABLE_FLAG):
        refuse_unless_disposable(EXTERNAL, environ)
