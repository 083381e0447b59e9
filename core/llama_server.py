"""The local llama.cpp server, run as a supervised child process.

Used when no ``VERITY_LLM__BASE_URL`` is configured: ``llama_cpp.server``
serves the GGUF on a free loopback port with the OpenAI API. The child is
restarted if it dies, asked to die with its parent (``PR_SET_PDEATHSIG``) so a
killed parent leaves no stray server, and stopped on exit.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from core.errors import ConfigError, GenerationError
from core.models import GGUF_MODEL_NAME, resolve_gguf
from core.settings import BUNDLED_GGUF, LLMSettings

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class LlamaCppServer:
    """``llama_cpp.server`` on a loopback port, supervised.

    Example:
        >>> with LlamaCppServer(LLMSettings(), data_dir=Path("~/.local/share/verity")) as srv:
        ...     print(srv.base_url)  # http://127.0.0.1:PORT/v1
    """

    max_restarts = 3

    def __init__(self, settings: LLMSettings, *, data_dir: Path, port: int | None = None) -> None:
        self._settings = settings
        self._data_dir = data_dir
        self._port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.restarts = 0
        self.model_name = (
            GGUF_MODEL_NAME if settings.gguf_path == BUNDLED_GGUF else Path(settings.gguf_path).stem
        )
        self.log_path = data_dir / "logs" / "llama-server.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> LlamaCppServer:
        """Start the server and wait until it answers.

        Raises:
            ConfigError: the model file is missing or corrupt, or llama-cpp-python is absent.
            GenerationError: the server exited or did not become healthy in time.
        """
        try:
            import llama_cpp.server  # noqa: F401
        except ImportError as e:
            raise ConfigError(
                "llama-cpp-python[server] is not installed: run `make install`, or set "
                "VERITY_LLM__BASE_URL to a running OpenAI-compatible server"
            ) from e
        self._model_path = resolve_gguf(self._settings.gguf_path, data_dir=self._data_dir)
        self._port = self._port or free_port()
        self._spawn()
        self._wait_healthy()
        self._watcher = threading.Thread(target=self._supervise, name="llama-supervisor",
                                         daemon=True)
        self._watcher.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout_s``)."""
        self._stopping.set()
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> LlamaCppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _command(self) -> list[str]:
        threads = self._settings.threads or max(1, os.cpu_count() or 1)
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self._model_path),
            "--model_alias", self.model_name,
            "--host", "127.0.0.1",
            "--port", str(self._port),
            "--n_ctx", str(self._settings.context_tokens),
            "--n_threads", str(threads),
            "--n_threads_batch", str(threads),
        ]

    def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(
                self._command(), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
            )

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self._settings.startup_timeout_s
        while time.monotonic() < deadline:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                raise GenerationError(
                    f"the llama.cpp server exited during start-up (code "
                    f"{None if proc is None else proc.returncode}); see {self.log_path}"
                )
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise GenerationError(
            f"the llama.cpp server did not answer within {self._settings.startup_timeout_s:.0f}s;"
            f" see {self.log_path}"
        )

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            proc = self._proc
            if proc is None:
                return
            code = proc.poll()
            if code is None:
                self._stopping.wait(1.0)
                continue
            if self._stopping.is_set():
                return
            if self.restarts >= self.max_restarts:
                log.error("llama.cpp server exited (code %s); giving up after %d restarts",
                          code, self.restarts)
                return
            self.restarts += 1
            log.warning("llama.cpp server exited (code %s); restarting (%d/%d)",
                        code, self.restarts, self.max_restarts)
            try:
                self._spawn()
                self._wait_healthy()
            except GenerationError as e:
                log.error("restart failed: %s", e)
