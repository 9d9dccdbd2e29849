"""A real ``dprdm serve`` in a subprocess on 127.0.0.1 (for the race and kill -9 drills)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``python -m pipeline.cli serve --index DIR ...`` until :meth:`kill` / :meth:`stop`; ready when started."""

    def __init__(self, index: Path, *args: str, startup_timeout: float = 180.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "serve", "--index", str(index), "--port", str(self.port),
             "--threads", "1", *args],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        self.log: list[str] = []
        ready = threading.Event()

        def pump() -> None:
            for line in self.process.stderr:
                self.log.append(line)
                if "Application startup complete" in line:  # (with --workers: the first worker is ready)
                    ready.set()
            ready.set()  # the process ended

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(startup_timeout) or self.process.poll() is not None:
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.log[-30:]))

    def kill(self) -> None:
        """kill -9 of the server and its worker processes (its own process group; no shutdown handlers run)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


class ThreadServer:
    """The real app (``create_app``) under a real uvicorn server on 127.0.0.1, in a thread of the test process.

    Cheaper than :class:`ServerProcess` (models are not imported again) and still real HTTP on loopback. Use as a
    context manager; leaving it runs the app's shutdown (the service is closed).
    """

    def __init__(self, app: object) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, access_log=False, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-thread server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
