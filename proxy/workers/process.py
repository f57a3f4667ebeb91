"""One worker process seen from its supervisor: spawn it with its StartMessage, wait for its ready
line, talk to its control socket, stop it.

Every call to a worker has a deadline, and a worker that does not answer is reported as such: a
hung worker never hangs the supervisor's admin port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from proxy.workers.worker import StartMessage

READY_TIMEOUT_S = 30.0  # from spawn to the worker's ready line (imports, bind, first publish)
CONTROL_TIMEOUT_S = 5.0  # one request on a worker's control socket
# The repository root, so that `-m proxy.workers.worker` imports this tree.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class WorkerError(Exception):
    """A worker did not start, or did not answer."""


class WorkerProcess:
    def __init__(self, index: int, control_path: str) -> None:
        self.index = index
        self.control_path = control_path
        self.proc: asyncio.subprocess.Process | None = None
        self.pid = 0
        self.restarts = 0  # how many times the supervisor started it again
        self.started = 0.0  # monotonic seconds at the last ready line
        self._session: aiohttp.ClientSession | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and self.started > 0

    async def spawn(self, start: StartMessage) -> None:
        """Start the process and return once it serves; WorkerError if it does not."""
        self.started = 0.0
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()  # the previous incarnation's pipe
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.workers.worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only
        )  # fmt: skip
        self.proc, self.pid = proc, proc.pid
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(start.encode())  # the pipe stays open: its EOF tells the worker to stop
        try:
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT_S)
        except (OSError, TimeoutError):
            line = b""
        if not line:
            self.kill()
            code = await proc.wait()
            raise WorkerError(f"worker {self.index} did not start ({describe_exit(code)})")
        self.started = time.monotonic()
        if self._session is None:
            # No keep-alive: a restarted worker listens on the same path, a new socket.
            connector = aiohttp.UnixConnector(path=self.control_path, force_close=True)
            timeout = aiohttp.ClientTimeout(total=CONTROL_TIMEOUT_S)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    def terminate(self) -> None:
        """Graceful: the worker stops accepting, drains its clients, exits (and leaves the
        run dir to the supervisor: the `stop` line tells it this is not an orphan's stop)."""
        proc = self.proc
        if proc is not None and proc.returncode is None and proc.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                proc.stdin.write(b"stop\n")
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()

    # -- control requests ------------------------------------------------------------------
    async def status(self) -> dict[str, Any] | None:
        """The worker's report, None when it is not running or does not answer in time."""
        if not self.running:
            return None
        try:
            return await self._request("GET", "/status")
        except WorkerError:
            return None

    async def check_reload(self, text: str) -> str:
        """Why the worker refuses `text` ("" when it accepts); not answering is a refusal."""
        try:
            reply = await self._request("POST", "/reload/check", data=text)
        except WorkerError as exc:
            return str(exc)
        return str(reply["reason"])

    async def apply_reload(self, text: str, generation: int) -> tuple[bool, str]:
        try:
            reply = await self._request(
                "POST", "/reload/apply", json={"text": text, "generation": generation}
            )
        except WorkerError as exc:
            return False, str(exc)
        return bool(reply["ok"]), str(reply["message"])

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        if self._session is None or not self.running:
            raise WorkerError(f"worker {self.index} is not running")
        try:
            async with self._session.request(method, f"http://worker{path}", **kwargs) as resp:
                resp.raise_for_status()
                body: dict[str, Any] = await resp.json()
                return body
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
            raise WorkerError(f"worker {self.index} did not answer: {reason}") from None


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
