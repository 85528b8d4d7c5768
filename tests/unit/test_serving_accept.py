"""Balanced accepts (serving/accept.py): the least-connections rule, the shared counts, and real
uvicorn workers sharing one listening socket the way BentoML's do."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import socket
import time
from collections import Counter

import pytest

from streamflow_mlops.serving.accept import MAX_WAIT_S, ConnectionBoard, accept_now


def test_least_loaded_worker_accepts_at_once_and_a_loaded_one_waits_its_turn():
    assert accept_now(0, [0, 0], waited_s=0.0)  # a tie: whoever wakes first takes it
    assert accept_now(2, [3, 2], waited_s=0.0)
    assert not accept_now(3, [2, 5], waited_s=0.0)
    # No worker less loaded took it in time (dead, hung or busy): the loaded one does.
    assert accept_now(3, [2], waited_s=MAX_WAIT_S)
    assert accept_now(7, [], waited_s=0.0)  # a single worker has nobody to wait for


def test_board_is_shared_through_the_socket_private_and_counts_only_live_workers(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        first = ConnectionBoard(listener, 0, directory=str(tmp_path))
        # Another process holding the same socket finds the same file (its inode names it).
        twin = socket.socket(fileno=os.dup(listener.fileno()))
        second = ConnectionBoard(twin, 1, directory=str(tmp_path))
        assert first.path == second.path
        assert os.stat(first.path).st_mode & 0o777 == 0o600
        assert os.stat(os.path.dirname(first.path)).st_mode & 0o777 == 0o700
        first.publish(5)
        second.publish(2)
        assert second.others() == [5] and first.others() == [2]
        first.close()
        assert second.others() == []  # a stopping worker leaves the board
        # A worker that died without leaving (killed) doesn't count either.
        dead = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
        dead.start()
        dead.join()
        second._slots[2 * 5], second._slots[2 * 5 + 1] = dead.pid, 0
        assert second.others() == []
        second.close()
        twin.close()
        with pytest.raises(ValueError, match="outside"):
            ConnectionBoard(listener, 64, directory=str(tmp_path))


def test_board_directory_must_be_private(tmp_path):
    from streamflow_mlops.serving.accept import private_dir

    shared = tmp_path / f"streamflow-accept-{os.getuid()}"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(PermissionError, match="private"):
        private_dir(str(tmp_path))


async def _whoami(scope, receive, send):
    if scope["type"] != "http":
        return
    body = json.dumps({"pid": os.getpid()}).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _serve(sock: socket.socket, index: int, directory: str, balanced: bool) -> None:
    """One worker as BentoML runs it: uvicorn.Server(config).run(sockets=[the shared socket])."""
    import uvicorn

    from streamflow_mlops.serving import accept

    if balanced:
        accept.install(2, lambda: index, directory=directory)
    config = uvicorn.Config(app=_whoami, log_config=None, lifespan="off", workers=1)
    uvicorn.Server(config).run(sockets=[sock])


def _served_by(port: int, connections: int, paused: list[int] = ()) -> Counter:
    """Open `connections` keep-alive connections while the workers in `paused` are stopped (so all
    of them wait in the backlog together, as a client's burst does), then ask each which worker
    holds it."""
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    try:
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
    try:
        pids = Counter()
        for client in clients:
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        for client in clients:
            client.settimeout(20)
            reply = b""
            while b"}" not in reply:
                reply += client.recv(4096)
            pids[json.loads(reply.split(b"\r\n\r\n", 1)[1])["pid"]] += 1
        return pids
    finally:
        for client in clients:
            client.close()


def _split_bursts(tmp_path, balanced: bool) -> list[list[int]]:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_serve, args=(listener, i + 1, str(tmp_path), balanced), daemon=True) for i in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        deadline = time.monotonic() + 60
        while True:  # both workers up: each has answered
            try:
                if len(_served_by(port, 4)) == 2:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "workers did not come up"
            time.sleep(0.2)
        splits = []
        for connections in (8, 32):
            time.sleep(0.3)  # the warm-up's closed connections leave the counts (0.1 s tick)
            by_pid = _served_by(port, connections, paused=[w.pid for w in workers])
            splits.append(sorted(by_pid.get(w.pid, 0) for w in workers))
        if balanced:  # every connection closed: each worker's shared count is back to 0
            time.sleep(0.3)
            board = ConnectionBoard(listener, 63, directory=str(tmp_path))
            assert board.others() == [0, 0]
            board.close()
        return splits
    finally:
        for worker in workers:
            worker.terminate()
            worker.join(10)
        listener.close()


def test_two_workers_sharing_a_socket_split_a_burst_of_connections_evenly(tmp_path):
    # Both workers wake to the whole burst at once (stopped while it queued, as under load). With
    # uvicorn's own accept (balanced=False) four tries gave 3/5, 4/4, 4/4, 4/4 for eight and 14/18,
    # 13/19, 12/20, 0/32 for thirty-two: too random for a control test, and the reason for this one.
    (eight, thirty_two) = _split_bursts(tmp_path, balanced=True)
    assert eight[1] - eight[0] <= 2 and thirty_two[1] - thirty_two[0] <= 4, (eight, thirty_two)


class _OtherWorkerIdle:
    """A board on which the one other worker holds no connection."""

    def publish(self, count: int) -> None:
        pass

    def others(self) -> list[int]:
        return [0]

    def close(self) -> None:
        pass


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_loaded_worker_leaves_a_connection_to_the_idle_one_and_forgets_it_once_taken(loop_kind, monkeypatch):
    from streamflow_mlops.serving import accept
    from streamflow_mlops.serving.accept import RECHECK_S, BalancedListener

    # While the other worker is to take the connection, the fallback (take it anyway) lies far beyond
    # the test's waits: on a busy machine a 2.5 ms sleep can overrun the real 5 ms.
    real_max_wait_s = accept.MAX_WAIT_S
    monkeypatch.setattr(accept, "MAX_WAIT_S", 1.0)
    watch_s = 0.010

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        with socket.socket() as shared:
            shared.bind(("127.0.0.1", 0))
            shared.listen()
            # One connection ahead of the other worker.
            listener = BalancedListener(loop, asyncio.Protocol, shared, _OtherWorkerIdle(), lambda: 1)
            looks = []
            readable = listener._readable
            listener._readable = lambda: (looks.append(1), readable())  # re-registered at each resume
            client = socket.create_connection(shared.getsockname())
            try:
                for _ in range(200):
                    if listener._waiting_since is not None:
                        break
                    await asyncio.sleep(0.001)
                assert listener._waiting_since is not None and listener.accepted == 0  # deferred
                await asyncio.sleep(watch_s)
                # It looks again every RECHECK_S, not in a busy loop (uvloop rounds timers to 1 ms).
                assert len(looks) <= watch_s / RECHECK_S + 2, len(looks)
                taken, _ = shared.accept()  # the other worker takes it
                taken.close()
                monkeypatch.setattr(accept, "MAX_WAIT_S", real_max_wait_s)
                await asyncio.sleep(2 * real_max_wait_s)
                # The next connection is judged afresh, not as one that has waited since the first.
                arrived = time.monotonic()
                seen = len(looks)
                late = socket.create_connection(shared.getsockname())
                for _ in range(200):
                    if len(looks) > seen:
                        break
                    await asyncio.sleep(0.001)
                assert listener._waiting_since >= arrived
                late.close()
            finally:
                client.close()
                listener.close()

    if loop_kind == "uvloop":
        import uvloop

        uvloop.run(scenario())
    else:
        asyncio.run(scenario())
