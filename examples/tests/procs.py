"""Running an example's command line as a subprocess and waiting for its "listening on" line."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent


def free_port(hosts: list[str]) -> int:
    """A port free on every one of `hosts` (all loopback), so the nodes can share one --peer-port."""
    for _ in range(20):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        try:
            for h in hosts[1:]:
                with socket.socket() as s:
                    s.bind((h, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no common free port")


class Proc:
    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.lines: list[str] = []
        self._listening = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr
        while line := await self.proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            self.lines.append(text)
            if "listening on " in text:
                self._listening.set()

    async def wait_listening(self, timeout: float = 15.0) -> str:
        try:
            await asyncio.wait_for(self._listening.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.name} did not start:\n" + self.log()) from None
        return next(line for line in self.lines if "listening on " in line)

    def log(self) -> str:
        return "\n".join(self.lines[-40:])

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        await self._reader
        return code


async def spawn(name: str, script: str, *args: str) -> Proc:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DSTACK_MESH_API", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / script), *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env=env)
    return Proc(name, proc)
