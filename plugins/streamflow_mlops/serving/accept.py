"""Balanced accepts: the service's keep-alive connections spread evenly over its worker processes.

BentoML's workers share one listening socket and uvicorn accepts every pending connection at once,
so a burst of keep-alive connections could land mostly on one worker (docs/decisions.md, "Balanced
accepts"). Here each worker accepts one connection per readiness event, and only while it holds no
more open connections than any other live worker of the service; a worker that is ahead looks again
after RECHECK_S and takes the connection anyway once it has waited MAX_WAIT_S (a hung worker can't
hold connections back). The counts sit in a small shared file named after the listening socket (every
process holding the socket sees the same inode), in a 0700 directory of this user under the temp
dir: one (pid, open connections) slot per BentoML worker index. A slot whose process is gone, or
that a stopping worker cleared, doesn't count.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import mmap
import os
import select
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import uvicorn
from uvicorn.server import STARTUP_FAILURE

logger = logging.getLogger(__name__)

# libuv timers count whole milliseconds (uvloop rounds a shorter delay to "now", a busy loop).
RECHECK_S = 0.001
MAX_WAIT_S = 0.005
BACKOFF_S = 0.1
SLOTS = 64
# accept() errors that say "this connection is gone", not "this process can't accept" (as asyncio).
GONE = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ECONNABORTED, errno.EPROTO, errno.ECONNRESET}


def accept_now(mine: int, others: Sequence[int], waited_s: float, max_wait_s: float = MAX_WAIT_S) -> bool:
    """Least connections first: accept when no other worker holds fewer connections than this one,
    or when the connection has already waited max_wait_s for a less loaded worker to take it."""
    return not others or mine <= min(others) or waited_s >= max_wait_s


def private_dir(parent: str | None = None) -> str:
    """This user's 0700 directory for the boards under the temp dir (refused if someone else owns it)."""
    path = os.path.join(parent or tempfile.gettempdir(), f"streamflow-accept-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{path} is not a private directory of this user")
    return path


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence only (PermissionError: alive, another user's)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class ConnectionBoard:
    """(pid, open connections) of the workers sharing one listening socket, in a shared file."""

    def __init__(self, sock: socket.socket, slot: int, directory: str | None = None) -> None:
        if not 0 <= slot < SLOTS:
            raise ValueError(f"worker slot {slot} outside 0..{SLOTS - 1}")
        self.slot, self.pid = slot, os.getpid()
        inode = os.fstat(sock.fileno()).st_ino
        self.path = os.path.join(private_dir(directory), f"socket-{inode}")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            if os.fstat(fd).st_size < SLOTS * 16:
                os.ftruncate(fd, SLOTS * 16)
            self._map = mmap.mmap(fd, SLOTS * 16)
        finally:
            os.close(fd)
        self._slots = memoryview(self._map).cast("q")  # [pid0, count0, pid1, count1, ...]
        self._slots[2 * slot] = self.pid
        self.publish(0)

    def publish(self, count: int) -> None:
        self._slots[2 * self.slot + 1] = count

    def others(self) -> list[int]:
        """Open connections of every other live worker."""
        found = []
        for i in range(SLOTS):
            pid = self._slots[2 * i]
            if i != self.slot and pid > 0 and process_alive(pid):
                found.append(self._slots[2 * i + 1])
        return found

    def close(self) -> None:
        """Leave the board: a stopping worker takes no new connections, so it stops counting."""
        self._slots[2 * self.slot] = 0
        self._slots[2 * self.slot + 1] = 0
        self._slots.release()
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
        open_connections: Callable[[], int],
        ssl: Any = None,
    ) -> None:
        self.loop, self.protocol_factory, self.sock, self.board = loop, protocol_factory, sock, board
        self.open_connections, self.ssl = open_connections, ssl
        self.fd = sock.fileno()
        self.starting: set[asyncio.Task] = set()  # accepted, protocol not connected yet
        self.accepted = 0
        self.closed = False
        self._waiting_since: float | None = None
        self._resumed_at: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._poll = select.poll()
        self._poll.register(self.fd, select.POLLIN)
        sock.setblocking(False)
        loop.add_reader(self.fd, self._readable)

    def load(self) -> int:
        """Open connections (uvicorn's own set, protocol switches included) plus those still starting."""
        return self.open_connections() + len(self.starting)

    def publish(self) -> None:
        if self.board is not None and not self.closed:
            self.board.publish(self.load())

    def _readable(self) -> None:
        if not self._poll.poll(0):  # a stale wake-up (uvloop can report one after a re-add)
            return
        now = time.monotonic()
        # The same waiting connection only if this follows a recheck closely; otherwise (another
        # worker took the one we left, and this is a new one) its wait starts now.
        if self._waiting_since is None or self._resumed_at is None or now - self._resumed_at > MAX_WAIT_S:
            self._waiting_since = now
        self._resumed_at = None
        self.publish()
        others = self.board.others() if self.board is not None else []
        if accept_now(self.load(), others, now - self._waiting_since, MAX_WAIT_S):
            self._accept_one()
        else:
            # Let a less loaded worker take it; look again shortly (the socket stays readable if not).
            self._pause(RECHECK_S)

    def _pause(self, seconds: float) -> None:
        self.loop.remove_reader(self.fd)
        self._timer = self.loop.call_later(seconds, self._resume)

    def _resume(self) -> None:
        self._timer = None
        if not self.closed:
            self._resumed_at = time.monotonic()
            self.loop.add_reader(self.fd, self._readable)

    def _accept_one(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError as exc:
            self._waiting_since = None
            if exc.errno not in GONE:  # out of descriptors or memory: don't spin on a readable socket
                logger.warning("accept failed: %s; retrying in %.1f s", exc, BACKOFF_S)
                self._pause(BACKOFF_S)
            return
        self._waiting_since = None
        self.accepted += 1
        task = self.loop.create_task(self._connect(conn))
        self.starting.add(task)
        task.add_done_callback(self._started)
        self.publish()

    def _started(self, task: asyncio.Task) -> None:
        self.starting.discard(task)
        self.publish()

    async def _connect(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        try:
            await self.loop.connect_accepted_socket(self.protocol_factory, conn, ssl=self.ssl)
        except Exception as exc:
            logger.warning("could not serve an accepted connection: %s", exc)
            conn.close()

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


def board_for(sock: socket.socket, worker_index: int | None, directory: str | None) -> ConnectionBoard | None:
    """This worker's slot on the socket's board, or None (with a warning) when it can't have one."""
    if worker_index is None or not 1 <= worker_index <= SLOTS:
        logger.warning("worker index %s is not 1..%d: accepts are one at a time, unbalanced", worker_index, SLOTS)
        return None
    try:
        return ConnectionBoard(sock, worker_index - 1, directory)
    except OSError as exc:
        logger.warning("no shared connection counts (%s): accepts are one at a time, unbalanced", exc)
        return None


class BalancedAcceptServer(uvicorn.Server):
    """uvicorn's Server, serving passed-in sockets (how BentoML runs each worker) through
    BalancedListener; any other startup is uvicorn's own. install() sets the two class settings."""

    worker_index: Callable[[], int | None] = staticmethod(lambda: None)
    directory: str | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if not sockets:
            return await super().startup(sockets)
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
        index = type(self).worker_index()
        self.servers = [
            BalancedListener(
                loop, create_protocol, sock, board_for(sock, index, self.directory), lambda: len(state.connections),
                ssl=config.ssl,
            )
            for sock in sockets
        ]  # fmt: skip
        self.started = True

    async def on_tick(self, counter: int) -> bool:
        # Every 0.1 s: closed connections leave the shared counts even with no new connection.
        for server in getattr(self, "servers", []):
            if isinstance(server, BalancedListener):
                server.publish()
        return await super().on_tick(counter)


def install(workers: int, worker_index: Callable[[], int | None], directory: str | None = None) -> bool:
    """Make `uvicorn.Server` balance accepts across the service's worker processes (once per
    process); a single worker has nothing to balance. BentoML's worker builds `uvicorn.Server(config)`
    after importing the service module, so installing from the service module is early enough."""
    if workers <= 1:
        return False
    BalancedAcceptServer.worker_index = staticmethod(worker_index)
    BalancedAcceptServer.directory = directory
    uvicorn.Server = BalancedAcceptServer
    return True
