"""Balanced accepts: the service's keep-alive connections spread evenly over its worker processes.

BentoML's workers share one listening socket, and each worker's uvicorn (libuv under uvloop)
accepts every pending connection at once when the socket turns readable. A client that opens its
keep-alive connections in a burst (a load balancer's pool, wrk) so gave most of them to whichever
worker woke first: at concurrency 8 the split was 7/1, 6/2 or 5/3 from run to run, and the loaded
worker's requests queued behind each other while the other worker idled
(bench/bench_serving.py prints the split).

Here each worker accepts one connection per readiness event, and only while it holds no more open
connections than any other worker of the service; a worker that is ahead looks again after
RECHECK_S and takes the connection anyway once it has waited MAX_WAIT_S (a worker that died or
hangs can't hold connections back). The workers' counts sit in a small shared file named after the
listening socket (tempdir, mode 0600), one 8-byte slot per worker index.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import select
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

RECHECK_S = 0.0005
MAX_WAIT_S = 0.005
BACKOFF_S = 0.1
SLOTS = 64


def accept_now(mine: int, others: Sequence[int], waited_s: float, max_wait_s: float = MAX_WAIT_S) -> bool:
    """Least connections first: accept when no other worker holds fewer connections than this one,
    or when the connection has already waited max_wait_s for a less loaded worker to take it."""
    return not others or mine <= min(others) or waited_s >= max_wait_s


class ConnectionBoard:
    """Open-connection counts of the workers sharing one listening socket, in a shared file."""

    def __init__(self, sock: socket.socket, slot: int, workers: int, directory: str | None = None) -> None:
        if not 0 <= slot < min(workers, SLOTS):
            raise ValueError(f"worker slot {slot} outside 0..{min(workers, SLOTS) - 1}")
        self.slot, self.workers = slot, min(workers, SLOTS)
        # Every process holding the socket sees the same inode: the name needs no other agreement.
        inode = os.fstat(sock.fileno()).st_ino
        self.path = os.path.join(directory or tempfile.gettempdir(), f"streamflow-accept-{os.getuid()}-{inode}")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < SLOTS * 8:
                os.ftruncate(fd, SLOTS * 8)
            self._map = mmap.mmap(fd, SLOTS * 8)
        finally:
            os.close(fd)
        self._counts = memoryview(self._map).cast("q")
        self.publish(0)

    def publish(self, count: int) -> None:
        self._counts[self.slot] = count

    def others(self) -> list[int]:
        return [self._counts[i] for i in range(self.workers) if i != self.slot]

    def close(self) -> None:
        self.publish(0)
        self._counts.release()
        self._map.close()


class BalancedListener:
    """Accepts from a shared listening socket one connection at a time, least-connections first;
    stands in for the asyncio Server uvicorn would create (close, wait_closed)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol_factory: Callable[[], asyncio.Protocol],
        sock: socket.socket,
        board: ConnectionBoard | None,
    ) -> None:
        self.loop, self.protocol_factory, self.sock, self.board = loop, protocol_factory, sock, board
        self.fd = sock.fileno()
        self.open = 0  # accepted and not yet closed (counted from the accept, so a burst counts at once)
        self.accepted = 0
        self.closed = False
        self._waiting_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        sock.setblocking(False)
        loop.add_reader(self.fd, self._readable)

    def _count(self, change: int) -> None:
        self.open += change
        if self.board is not None and not self.closed:
            self.board.publish(self.open)

    def _counted_protocol(self) -> asyncio.Protocol:
        """uvicorn's protocol for one connection, telling us when the connection ends."""
        protocol = self.protocol_factory()
        lost = protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            try:
                lost(exc)
            finally:
                self._count(-1)

        protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        return protocol

    def _readable(self) -> None:
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        others = self.board.others() if self.board is not None else []
        if accept_now(self.open, others, now - self._waiting_since):
            self._accept_one()
        else:
            # Let a less loaded worker take it; look again shortly (the socket stays readable if not).
            self.loop.remove_reader(self.fd)
            self._timer = self.loop.call_later(RECHECK_S, self._resume)

    def _resume(self) -> None:
        self._timer = None
        if self.closed:
            return
        if not select.select([self.fd], [], [], 0)[0]:
            self._waiting_since = None  # another worker took the connection we left
        self.loop.add_reader(self.fd, self._readable)

    def _back_off(self) -> None:
        self.loop.remove_reader(self.fd)
        self._timer = self.loop.call_later(BACKOFF_S, self._resume)

    def _accept_one(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            self._waiting_since = None  # another worker took it
            return
        except OSError as exc:  # out of file descriptors...: don't spin on a socket that stays readable
            logger.warning("accept failed: %s; retrying in %.1f s", exc, BACKOFF_S)
            self._waiting_since = None
            self._back_off()
            return
        self._waiting_since = None
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.accepted += 1
        self._count(+1)
        self.loop.create_task(self._connect(conn))

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self._counted_protocol, conn)
        except Exception as exc:  # the protocol never started: connection_lost won't come
            logger.warning("could not serve an accepted connection: %s", exc)
            conn.close()
            self._count(-1)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.fd)
        if self._timer is not None:
            self._timer.cancel()
        if self.board is not None:
            self.board.close()

    async def wait_closed(self) -> None:
        return None


# Set by install(): how many workers share the socket, and this process's 1-based worker index.
_config: dict[str, Any] = {}


def balanced_server_class(base: type) -> type:
    """A uvicorn.Server whose startup on passed-in sockets (how BentoML runs each worker) serves
    them through BalancedListener; any other startup is uvicorn's own."""

    class BalancedAcceptServer(base):  # type: ignore[misc, valid-type]
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            if not sockets or not _config:
                return await super().startup(sockets)
            from uvicorn.server import STARTUP_FAILURE

            # uvicorn's own startup for passed-in sockets (0.54), with the listener swapped.
            await self.lifespan.startup()
            if self.lifespan.should_exit:
                sys.exit(STARTUP_FAILURE)
            config, state = self.config, self.server_state

            def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
                return config.http_protocol_class(
                    config=config, server_state=state, app_state=self.lifespan.state, _loop=_loop
                )

            loop = asyncio.get_running_loop()
            index = _config["worker_index"]()
            self.servers = []
            for sock in sockets:
                board = None
                if index is not None and 1 <= index <= min(_config["workers"], SLOTS):
                    try:
                        board = ConnectionBoard(sock, index - 1, _config["workers"])
                    except OSError as exc:  # no writable temp dir: one accept at a time, without the counts
                        logger.warning("no shared connection counts (%s); accepts are not balanced", exc)
                self.servers.append(BalancedListener(loop, create_protocol, sock, board))
            self.started = True

    return BalancedAcceptServer


def install(workers: int, worker_index: Callable[[], int | None]) -> bool:
    """Make `uvicorn.Server` balance accepts across `workers` processes (once per process); a single
    worker has nothing to balance. BentoML's worker builds `uvicorn.Server(config)` after importing
    the service module, so installing from the service module is early enough."""
    if workers <= 1:
        return False
    import uvicorn

    if not getattr(uvicorn.Server, "balanced_accepts", False):
        server = balanced_server_class(uvicorn.Server)
        server.balanced_accepts = True
        uvicorn.Server = server
    _config.update(workers=workers, worker_index=worker_index)
    return True
