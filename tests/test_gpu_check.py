"""benchmarks/gpu_check.sh --quick: the GPU check's CPU smoke test runs and reports parity."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_quick_trains_both_precisions_and_decodes(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["parity"] is True and result["loss_gap"] <= 0.02
    for name in ("fp32", "bf16"):
        r = result[name]
        assert r["precision"] == name and r["frames_per_s"] > 0 and r["flops_per_step"] > 0 and 0 < r["mfu"] < 1
    assert result["decode"]["tokens"] == 5  # the forced length held
    assert "bf16 / fp32 training frames/s" in proc.stdout
