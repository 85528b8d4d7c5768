"""Test stacks never open a fixed port: two run side by side while a `make demo` holds the defaults.

Every port a `Stack` listens on is a Settings field; the tests' stacks take each from the same
free-port source (tests/conftest.py `stack_port_env`). The e2e test checks the same of every
socket its full stack listens on.
"""

from __future__ import annotations

import os
import socket
from contextlib import ExitStack

from streamflow_mlops.config.settings import Settings
from streamflow_mlops.platform.demo import Stack
from streamflow_mlops.platform.processes import Processes, http_ok, wait_for
from tests.conftest import STACK_PORTS, listening_ports, settings_from, stack_port_env


def test_the_free_port_source_covers_every_port_of_the_settings(monkeypatch, tmp_path):
    assert {name for name in Settings.model_fields if name.endswith("_port")} == set(STACK_PORTS)
    env = stack_port_env()
    settings = settings_from({"STREAMFLOW_HOME": str(tmp_path), **env}, monkeypatch)
    ports = [getattr(settings, field) for field in STACK_PORTS]
    assert ports == [int(env[variable]) for variable in STACK_PORTS.values()]
    assert len(set(ports)) == len(ports)


def hold(port: int, held: ExitStack) -> None:
    """Listen on `port` as a running `make demo` would; a port already taken is held either way."""
    sock = held.enter_context(socket.socket())
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
    except OSError:
        pass


def test_two_stacks_serve_their_dashboards_side_by_side_beside_a_demo(monkeypatch, tmp_path):
    for variable in STACK_PORTS.values():
        monkeypatch.delenv(variable, raising=False)
    demo = settings_from({"STREAMFLOW_HOME": str(tmp_path / "demo")}, monkeypatch)
    stacks: list[Stack] = []
    with ExitStack() as held:
        for field in STACK_PORTS:
            hold(getattr(demo, field), held)
        try:
            for name in ("first", "second"):
                # Chosen while the first stack's UI listens: the second can't be given its port.
                settings = settings_from({"STREAMFLOW_HOME": str(tmp_path / name), **stack_port_env()}, monkeypatch)
                stack = Stack(settings)
                stack.processes = Processes(tmp_path / name / "logs", dict(os.environ))
                stacks.append(stack)
                stack.launch_dashboard()  # the demo's own start of the Evidently UI
                version_url = f"{stack.evidently_url}/api/version"
                wait_for(f"{name} Evidently UI", lambda url=version_url: http_ok(url), 120, stack.processes)
            for stack in stacks:
                stack.processes.check()
                assert listening_ports(stack.processes) == {stack.settings.evidently_port: "evidently-ui"}
            ports = [stack.settings.evidently_port for stack in stacks]
            assert len(set(ports)) == 2 and demo.evidently_port not in ports
        finally:
            for stack in stacks:
                stack.processes.stop()
