"""Balanced accepts (serving/accept.py): the least-connections rule, the shared counts, and real
uvicorn workers sharing one listening socket the way BentoML's do."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
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


def test_board_is_shared_through_the_socket_and_private(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        first = ConnectionBoard(listener, 0, 2, directory=str(tmp_path))
        # Another process holding the same socket finds the same file (its inode names it).
        twin = socket.socket(fileno=os.dup(listener.fileno()))
        second = ConnectionBoard(twin, 1, 2, directory=str(tmp_path))
        assert first.path == second.path
        assert os.stat(first.path).st_mode & 0o777 == 0o600
        first.publish(5)
        second.publish(2)
        assert second.others() == [5] and first.others() == [2]
        first.close()
        assert second.others() == [0]  # a worker that stops counts as empty
        second.close()
        twin.close()
        with pytest.raises(ValueError, match="outside"):
            ConnectionBoard(listener, 2, 2, directory=str(tmp_path))


async def _whoami(scope, receive, send):
    if scope["type"] != "http":
        return
    body = json.dumps({"pid": os.getpid()}).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _serve(sock: socket.socket, index: int, workers: int) -> None:
    """One worker as BentoML runs it: uvicorn.Server(config).run(sockets=[shared socket])."""
    import uvicorn

    from streamflow_mlops.serving import accept

    accept.install(workers, lambda: index)
    config = uvicorn.Config(app=_whoami, log_config=None, lifespan="off", workers=1)
    uvicorn.Server(config).run(sockets=[sock])


def _served_by(port: int, connections: int) -> Counter:
    """Open `connections` keep-alive connections at once, then ask each which worker holds it."""
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    try:
        pids = Counter()
        for client in clients:
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        for client in clients:
            client.settimeout(10)
            reply = b""
            while b"}" not in reply:
                reply += client.recv(4096)
            pids[json.loads(reply.split(b"\r\n\r\n", 1)[1])["pid"]] += 1
        return pids
    finally:
        for client in clients:
            client.close()


def test_two_workers_sharing_a_socket_split_a_burst_of_connections_evenly():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_serve, args=(listener, i + 1, 2), daemon=True) for i in range(2)]
    for worker in workers:
        worker.start()
    try:
        deadline = time.monotonic() + 30
        while True:  # both workers up: each has answered at least once
            try:
                if len(_served_by(port, 4)) == 2:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "workers did not come up"
            time.sleep(0.2)
        for connections in (8, 32):
            split = sorted(_served_by(port, connections).values())
            assert len(split) == 2 and split[1] - split[0] <= 1, f"{connections} connections split {split}"
    finally:
        for worker in workers:
            worker.terminate()
            worker.join(10)
        listener.close()


class _OtherWorkerIdle:
    """A board on which the one other worker holds no connection."""

    def publish(self, count: int) -> None:
        pass

    def others(self) -> list[int]:
        return [0]

    def close(self) -> None:
        pass


def test_a_loaded_worker_leaves_a_connection_to_the_idle_one_and_forgets_it_once_taken():
    from streamflow_mlops.serving.accept import RECHECK_S, BalancedListener

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        with socket.socket() as shared:
            shared.bind(("127.0.0.1", 0))
            shared.listen()
            listener = BalancedListener(loop, asyncio.Protocol, shared, _OtherWorkerIdle())
            listener.open = 1  # one connection ahead of the other worker
            client = socket.create_connection(shared.getsockname())
            try:
                for _ in range(200):
                    if listener._waiting_since is not None:
                        break
                    await asyncio.sleep(0.001)
                assert listener._waiting_since is not None and listener.accepted == 0  # deferred
                taken, _ = shared.accept()  # the other worker takes it
                taken.close()
                await asyncio.sleep(RECHECK_S * 10)
                # Nothing is left waiting: the next connection is judged afresh, not as overdue.
                assert listener._waiting_since is None and listener.accepted == 0
            finally:
                client.close()
                listener.close()

    asyncio.run(scenario())
