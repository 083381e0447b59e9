"""The local llama.cpp server, run as a supervised child process.

Used when no ``VERITY_LLM__BASE_URL`` is configured: ``llama_cpp.server``
serves the GGUF on a free loopback port with the OpenAI API. The child is
restarted if it dies, watches its parent's pid and stops when it changes (so a
killed parent leaves no stray server), and is stopped on exit.

A llama.cpp build with run-time CPU dispatch (``GGML_BACKEND_DL`` and
``GGML_CPU_ALL_VARIANTS``, as ``make install`` builds it) ships one CPU back-end
per CPU family, ``libggml-cpu-<variant>.so``. ggml only looks for them beside
the executable and in the working directory, so the server is started through
this module, which loads the chosen variant first. The variant is checked with a
batched prompt at start-up, and one that crashes (AMX code on virtual machines
that report AMX without enabling it, say) is replaced by the next candidate.
"""

from __future__ import annotations

import ctypes
import logging
import os
import runpy
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from verity.backends.models import GGUF_MODEL_NAME, GGUF_SHA256, requantize_gguf, resolve_gguf
from verity.core.errors import ConfigError, GenerationError
from verity.core.settings import BUNDLED_GGUF, LLMSettings

log = logging.getLogger(__name__)

# Variants without AVX-512 or AMX, best first: what "auto" falls back to. haswell (AVX2, FMA,
# F16C) is what the portable build used to be.
PORTABLE_CPU_VARIANTS = ("haswell", "piledriver", "ivybridge", "sandybridge", "sse42", "x64")
# A batched prompt, long enough for the matrix-matrix kernels, sent once at start-up.
PROBE_PROMPT = " ".join(["The quick brown fox jumps over the lazy dog."] * 16)


def llama_lib_dir() -> Path:
    """Where llama-cpp-python loads its libraries from (``LLAMA_CPP_LIB_PATH`` overrides)."""
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    if override:
        return Path(override)
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


def cpu_variants(lib_dir: Path) -> dict[str, Path]:
    """The CPU back-end variants in ``lib_dir`` by name; empty for a build without them."""
    prefix = "libggml-cpu-"
    return {p.name[len(prefix):-len(".so")]: p for p in sorted(lib_dir.glob(f"{prefix}*.so"))}


def cpu_variant_scores(variants: dict[str, Path]) -> dict[str, int]:
    """ggml's own score of each variant on this CPU: 0 where the CPU lacks its instructions.

    Like ggml, this loads each library and calls its ``ggml_backend_score``;
    llama_cpp is imported first, which loads ``libggml-base`` that they link to.
    """
    import _ctypes

    import llama_cpp  # noqa: F401

    scores = {}
    for name, path in variants.items():
        lib = ctypes.CDLL(str(path))
        score = lib.ggml_backend_score
        score.restype, score.argtypes = ctypes.c_int, []
        scores[name] = int(score())
        _ctypes.dlclose(lib._handle)
    return scores


def cpu_backend_plan(choice: str, *, scores: dict[str, int]) -> list[str]:
    """The variants to try in order for ``choice`` (``VERITY_LLM__CPU_BACKEND``).

    ``auto`` stands for the best-scoring variant, then the best portable one.

    Raises:
        ConfigError: a name that is not among the installed variants.
    """
    supported = sorted((n for n, s in scores.items() if s > 0), key=lambda n: -scores[n])
    plan: list[str] = []
    for name in (part.strip() for part in choice.split(",")):
        if name == "auto":
            plan += supported[:1] + [n for n in PORTABLE_CPU_VARIANTS if n in supported][:1]
        elif name in scores:
            plan.append(name)
        else:
            known = ", ".join(sorted(scores)) or "(none: rebuild it with `make install`)"
            raise ConfigError(f"VERITY_LLM__CPU_BACKEND names {name!r}, which this llama.cpp "
                              f"build does not have: use auto or one of {known}")
    return list(dict.fromkeys(plan))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# Runs a module as ``python -m`` would, while a thread ends the process once the parent
# whose pid is argv[1] is gone. Polling, not ``preexec_fn``: that is unsafe in a threaded
# parent, and ``PR_SET_PDEATHSIG`` fires when the spawning *thread* exits, not the process.
_WATCH_PARENT = """\
import os, runpy, signal, sys, threading, time
parent = int(sys.argv[1])
def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)
    os._exit(1)
threading.Thread(target=watch, name="watch-parent", daemon=True).start()
sys.argv = sys.argv[3:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def die_with_parent(command: list[str]) -> list[str]:
    """``command`` (``[python, "-m", module, *args]``) so that it stops when this process dies.

    The child polls its parent's pid and sends itself SIGTERM once it changes, so a
    killed parent leaves no stray server whichever thread spawned it.

    Raises:
        ValueError: ``command`` does not run a module with ``-m``.
    """
    if len(command) < 3 or command[1] != "-m":
        raise ValueError(f"expected [python, '-m', module, ...], got {command[:3]!r}")
    return [command[0], "-c", _WATCH_PARENT, str(os.getpid()), *command[1:]]


class LlamaCppServer:
    """``llama_cpp.server`` on a loopback port, supervised.

    Without ``logprobs`` the server computes logits for the last token only: prompts are read
    about 1.4 times as fast, and requests asking for log-probabilities (the LLM-judge reranker)
    are refused. Start it with ``logprobs=True`` for those.

    Example:
        >>> with LlamaCppServer(LLMSettings(), data_dir=Path("~/.local/share/verity")) as srv:
        ...     print(srv.base_url)  # http://127.0.0.1:PORT/v1
    """

    max_restarts = 3

    def __init__(self, settings: LLMSettings, *, data_dir: Path, port: int | None = None,
                 logprobs: bool = False) -> None:
        self._settings = settings
        self._data_dir = data_dir
        self._port = port
        self._logprobs = logprobs
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.restarts = 0
        self.cpu_backend: str | None = None
        self._cpu_library: Path | None = None
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
        """Start the server and wait until it answers a batched prompt.

        With CPU back-end variants installed, each planned variant is tried in
        turn until one starts and answers; :attr:`cpu_backend` names it.

        Raises:
            ConfigError: the model file is missing or corrupt, llama-cpp-python is absent,
                or a named CPU back-end is not installed.
            GenerationError: the server exited or did not become healthy in time.
        """
        try:
            import llama_cpp.server  # noqa: F401
        except ImportError as e:
            raise ConfigError(
                "llama-cpp-python[server] is not installed: run `make install`, or set "
                "VERITY_LLM__BASE_URL to a running OpenAI-compatible server"
            ) from e
        self._model_path = self._resolve_model()
        self._port = self._port or free_port()
        self._start_first_working(self._cpu_plan())
        self._watcher = threading.Thread(target=self._supervise, name="llama-supervisor",
                                         daemon=True)
        self._watcher.start()
        return self

    def _resolve_model(self) -> Path:
        source = resolve_gguf(self._settings.gguf_path, data_dir=self._data_dir)
        if self._settings.gguf_path != BUNDLED_GGUF or self._settings.quant == "q4_k_m":
            return source
        return requantize_gguf(source, quant=self._settings.quant, source_sha256=GGUF_SHA256,
                               data_dir=self._data_dir)

    def _cpu_plan(self) -> list[Path | None]:
        """Library paths of the CPU back-ends to try; ``[None]`` for a build without variants."""
        variants = cpu_variants(llama_lib_dir())
        if not variants and self._settings.cpu_backend == "auto":
            return [None]
        plan = cpu_backend_plan(self._settings.cpu_backend, scores=cpu_variant_scores(variants))
        if not plan:
            raise ConfigError("no ggml CPU back-end of this llama.cpp build runs on this CPU: "
                              "rebuild llama-cpp-python with `make install`")
        return [variants[name] for name in plan]

    def _start_first_working(self, plan: list[Path | None]) -> None:
        for i, library in enumerate(plan):
            self._cpu_library = library
            self.cpu_backend = None if library is None else library.name[len("libggml-cpu-"):-3]
            try:
                self._spawn()
                self._wait_healthy()
                self._probe()
                log.info("llama.cpp server ready on CPU back-end %s",
                         self.cpu_backend or "(built in)")
                return
            except GenerationError as e:
                self.stop()
                if i + 1 == len(plan):
                    raise
                self._stopping.clear()
                following = plan[i + 1]
                log.warning("llama.cpp on CPU back-end %s failed (%s); trying %s", self.cpu_backend,
                            e, following.name if following else "the built-in one")

    def _probe(self) -> None:
        """One batched prompt, so a back-end that crashes in its matrix kernels fails now."""
        try:
            httpx.post(f"{self.base_url}/completions", timeout=self._settings.startup_timeout_s,
                       json={"model": self.model_name, "prompt": PROBE_PROMPT, "max_tokens": 1,
                             "temperature": 0.0}).raise_for_status()
        except httpx.HTTPError as e:
            proc = self._proc
            code = None if proc is None else proc.poll()
            raise GenerationError(f"the llama.cpp server failed its first prompt (exit code "
                                  f"{code}, {e}); see {self.log_path}") from e

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
        launcher = (["llama_cpp.server"] if self._cpu_library is None
                    else [__name__, str(self._cpu_library)])
        return [
            sys.executable, "-m", *launcher,
            "--model", str(self._model_path),
            "--model_alias", self.model_name,
            "--host", "127.0.0.1",
            "--port", str(self._port),
            "--n_ctx", str(self._settings.context_tokens),
            "--n_threads", str(threads),
            "--n_threads_batch", str(threads),
            # Log-probabilities need the logits of every prompt token, which costs a third of
            # prefill (the output layer is large: a 152k-token vocabulary): only on request.
            "--logits_all", str(self._logprobs),
            # Flash attention reads prompts about 11% faster on the CPU (246 against 222
            # tokens/s for 865 tokens, docs/BENCHMARKS.md).
            "--flash_attn", "True",
        ]

    def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(
                die_with_parent(self._command()), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
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


def load_cpu_backend(library: Path) -> None:
    """Register one ggml CPU back-end, so llama.cpp uses it instead of searching for one.

    Raises:
        ConfigError: ggml refused the library (this CPU lacks its instructions, say).
    """
    import llama_cpp  # noqa: F401

    # Through the libllama that llama_cpp loaded: its symbol lookup reaches the very libggml it
    # was linked to, whose back-end registry llama.cpp reads (the wheel holds copies of libggml
    # under several names, each of which would be a registry of its own).
    ggml = ctypes.CDLL(str(llama_lib_dir() / "libllama.so"))
    ggml.ggml_backend_load.restype, ggml.ggml_backend_load.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
    if not ggml.ggml_backend_load(str(library).encode()):
        raise ConfigError(f"ggml could not load the CPU back-end {library}; set "
                          "VERITY_LLM__CPU_BACKEND=auto or to a variant this CPU supports")


def _serve(argv: list[str]) -> None:  # pragma: no cover - runs in the child
    """``python -m verity.backends.llama_server LIBRARY SERVER-ARGS...``: load the CPU
    back-end ``LIBRARY``, then run ``llama_cpp.server`` with the other arguments."""
    load_cpu_backend(Path(argv[0]))
    print(f"ggml CPU back-end: {argv[0]}", file=sys.stderr, flush=True)
    sys.argv = ["llama_cpp.server", *argv[1:]]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":  # pragma: no cover
    _serve(sys.argv[1:])
