"""Fault injectors for the reliability suite: a Kafka broker behind a cuttable link.

The local Tansu broker is memory-only: stopping its process loses every topic, committed
offset and Faust changelog (and it comes back with a new cluster id). That is a broker
*wipe*, not the outage services see in production, where a broker that goes away comes back
with its log. To make "the broker is unreachable" honest here, the broker keeps running and
the link to it is cut instead:

- :class:`LinkCutter` is a loopback TCP relay; the broker advertises the relay's port, so
  every client (publishers, workers, test readers) reaches it only through the relay.
  ``cut()`` closes the listener (new connections: *connection refused*) and aborts every open
  connection (RST), exactly what clients see when a broker host dies or is partitioned away;
  ``restore()`` listens again. The broker's data is untouched throughout.
- :class:`RelayedBroker` starts that broker (listener on a private port, advertised on the
  relay's) and can also freeze it with SIGSTOP, the *hung* broker: connections stay open and
  requests simply never get an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
import uuid
from pathlib import Path

from llm_usage.localstack import processes
from llm_usage.localstack.processes import free_port
from llm_usage.localstack.stack import tansu_binary


class LinkCutter:
    """A TCP relay 127.0.0.1:``port`` -> 127.0.0.1:``target`` that can be cut and restored."""

    def __init__(self, port: int, target: int) -> None:
        self.port = port
        self.target = target
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="link", daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self.connections = 0

    def _run(self, coro: object, timeout: float = 10.0) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def start(self) -> LinkCutter:
        self._thread.start()
        self._run(self._listen())
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._links.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(1 << 16):
                    dst.write(data)
                    await dst.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                dst.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._links.discard(writer)
            self._links.discard(up_writer)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in list(self._links):
            link.transport.abort()  # RST, like a dead host's peer sees after a timeout
        self._links.clear()

    def cut(self) -> None:
        """Unreachable from now on: refused connections, every open one reset."""
        self._run(self._cut())

    def restore(self) -> None:
        self._run(self._listen())

    async def _shutdown(self) -> None:
        await self._cut()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._run(self._shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


class RelayedBroker:
    """A memory-only Tansu broker whose clients reach it only through a :class:`LinkCutter`."""

    def __init__(self, home: Path, port: int | None = None) -> None:
        self.home = home
        self.port = port or free_port()  # what clients use (the relay)
        self.private_port = free_port()  # where the broker really listens
        self.cluster_id = f"llm-usage-{uuid.uuid4().hex[:12]}"
        self.link = LinkCutter(self.port, self.private_port)
        self.pid: int | None = None
        self._marker = f"tcp://127.0.0.1:{self.private_port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RelayedBroker:
        argv = [
            tansu_binary(), "broker",
            "--cluster-id", self.cluster_id,
            "--listener-url", self._marker,
            "--advertised-listener-url", f"tcp://127.0.0.1:{self.port}",
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in {"CLUSTER_ID", "LISTENER_URL",
               "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"}}  # fmt: skip
        proc = processes.spawn(argv, cwd=self.home, log_file=self.home / "broker.log", env=env)
        self.pid = proc.pid
        deadline = time.monotonic() + 30
        while not processes.port_open("127.0.0.1", self.private_port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tansu did not start; see {self.home / 'broker.log'}")
            time.sleep(0.05)
        self.link.start()
        return self

    def freeze(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.pid is not None and processes.is_running(self.pid, self._marker):
            os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.link.close()
        if self.pid is not None:
            self.thaw()
            processes.stop(self.pid, self._marker)
            self.pid = None
