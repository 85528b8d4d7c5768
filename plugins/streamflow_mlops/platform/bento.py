"""`make bento`: build the churn service bento from bentos/churn_service/bentofile.yaml and the current state.

The bento carries the service, the library, the feature repo config and the champion model. Its
Python packages are the serving closure of the pinned lock (requirements.txt): the packages the
service imports and everything they require, each at the lock's pin, without Airflow, GE or
Evidently. Nothing is typed twice: the pins come from the lock, the closure from installed metadata.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from streamflow_mlops.config.settings import REGISTERED_MODEL, Settings

logger = logging.getLogger(__name__)

BENTOFILE = Path("bentos") / "churn_service" / "bentofile.yaml"
# This library's own distribution (pyproject.toml): its dependencies declare the extras to follow.
PROJECT_DISTRIBUTION = "streamflow-mlops"
# What the service imports at run time (psycopg2 is MLflow's Postgres driver, psycopg-pool Feast's).
SERVING_ROOTS = (
    "bentoml",
    "feast",
    "mlflow",
    "scikit-learn",
    "pandas",
    "psycopg",
    "psycopg-binary",
    "psycopg-pool",
    "psycopg2-binary",
    "skops",
    "pyyaml",
    "sqlalchemy",
    "pydantic-settings",
    "prometheus-client",
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(requirements_txt: Path) -> dict[str, str]:
    """`name==version` lines of a lock, keyed by canonical name."""
    pins: dict[str, str] = {}
    for line in requirements_txt.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name = line.split("==", 1)[0].split("[", 1)[0].strip()
            pins[canonical(name)] = line
    return pins


def requirement_closure(roots: Iterable[str]) -> set[str]:
    """The roots and every distribution they require, extras included, from installed metadata.

    A root may name extras (`feast[redis]`); a bare root gets the extras that this project's own
    distribution declares for it (pyproject's `feast[postgres,redis]`), and every requirement on
    the way brings the extras it names. Without them Feast's Redis online store loses `redis`.
    """
    from packaging.requirements import Requirement

    try:
        declared_specs = metadata.requires(PROJECT_DISTRIBUTION) or []
    except metadata.PackageNotFoundError as exc:
        raise RuntimeError(
            f"{PROJECT_DISTRIBUTION} is not installed, so the extras it declares are unknown; run `make venv`"
        ) from exc
    declared: dict[str, set[str]] = {}
    for spec in declared_specs:
        requirement = Requirement(spec)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            declared.setdefault(canonical(requirement.name), set()).update(requirement.extras)

    # (distribution, extra) pairs; "" is the distribution itself.
    todo: list[tuple[str, str]] = []
    for root in roots:
        requirement = Requirement(root)
        name = canonical(requirement.name)
        todo += [(name, extra) for extra in {"", *requirement.extras, *declared.get(name, ())}]
    seen: set[tuple[str, str]] = set()
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for spec in requires:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                todo += [(canonical(requirement.name), sub) for sub in {"", *requirement.extras}]
    return {name for name, _ in seen}


def serving_requirements(requirements_txt: Path, roots: Iterable[str] = SERVING_ROOTS) -> list[str]:
    """The lock's pins for the serving closure, sorted; raises if a root isn't pinned."""
    pins = read_pins(requirements_txt)
    roots = list(roots)
    unpinned = [root for root in roots if canonical(root) not in pins]
    if unpinned:
        raise ValueError(f"{requirements_txt} does not pin {unpinned}")
    return sorted(pins[name] for name in requirement_closure(roots) if name in pins)


def champion_tag(settings: Settings) -> str:
    """The BentoML tag of the MLflow champion, or the newest imported model when MLflow can't say."""
    import bentoml

    from streamflow_mlops.model.registry import bento_tag
    from streamflow_mlops.serving.champion import champion_version_from_mlflow, newest_imported_tag

    try:
        tag = bento_tag(champion_version_from_mlflow(settings.mlflow_tracking_uri))
        bentoml.models.get(tag)
        return tag
    except Exception as exc:
        newest = newest_imported_tag()
        if newest is None:
            raise RuntimeError(f"no {REGISTERED_MODEL} model in the BentoML store; run the training DAG first") from exc
        logger.warning("champion lookup failed (%s); bundling the newest imported model %s", exc, newest)
        return newest


def library_wheel(repo_root: Path, out_dir: Path) -> Path:
    """Build the library's wheel (pyproject.toml at the repo root) into out_dir; the bento installs
    it like any other package instead of carrying plugins/ on a path."""
    import subprocess
    import sys

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("streamflow_mlops-*.whl"):
        old.unlink()
    # setuptools leaves build/ and an egg-info in the source tree; remove what this build made.
    leftovers = [
        p for p in (repo_root / "build", repo_root / "plugins" / "streamflow_mlops.egg-info") if not p.exists()
    ]
    # uv where there is one (the venv, the Airflow image: its venvs have no pip), else pip.
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if Path(uv).exists():
        command = [uv, "build", "--quiet", "--wheel", "--out-dir", str(out_dir), str(repo_root)]
    else:
        command = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(out_dir),
            str(repo_root),
        ]
    try:
        subprocess.run(command, check=True)
    finally:
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
    (wheel,) = out_dir.glob("streamflow_mlops-*.whl")
    return wheel


def build_bento(settings: Settings) -> Any:
    """Build the bento; returns the bentoml.Bento (its tag, path, generated Dockerfile)."""
    import bentoml
    import yaml

    config = yaml.safe_load((settings.repo_root / BENTOFILE).read_text())
    python = config.setdefault("python", {})
    python.pop("requirements_txt", None)
    python["packages"] = serving_requirements(settings.repo_root / "requirements.txt")
    config["models"] = [champion_tag(settings)]
    # The library goes in as a wheel, listed as `./wheels/<file>`: BentoML's image installs the
    # requirements file from env/python/, and uv resolves a relative path from the file's folder, so
    # the wheel goes into the built bento's env/python/wheels/ (`python.wheels` would drop the bento
    # back to BentoML's v1 format).
    with tempfile.TemporaryDirectory(prefix="streamflow-wheel-") as scratch:
        wheel = library_wheel(settings.repo_root, Path(scratch))
        python["packages"].append(f"./wheels/{wheel.name}")
        bento = bentoml.bentos.build(build_ctx=str(settings.repo_root), **config)
        bundled = Path(bento.path) / "env" / "python" / "wheels"
        bundled.mkdir(parents=True, exist_ok=True)
        shutil.copy2(wheel, bundled / wheel.name)
    return bento
