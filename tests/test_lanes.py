"""benchmarks/lanes.py: peer adapters side by side on pinned cores, records kept as the harness keeps them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import lanes  # noqa: E402

FAKE_ADAPTER = """
import json, os, sys
precision = sys.argv[sys.argv.index("--precision") + 1]
spec = json.load(open(sys.argv[sys.argv.index("--spec") + 1]))
said = "fp32" if "{name}" == "torch" else precision  # this fake ignores --precision, as a toolkit might
print(json.dumps({{"toolkit": "{name}", "version": "0", "torch": "0", "precision": said, "params": 1,
                  "train": {{"frames_per_s": 1.0, "s_per_step": 1.0, "peak_rss_mb": 1}},
                  "decode": {{"greedy": {{"utt_per_s": 1.0, "tokens": spec["decode"]["output_tokens"]}}}},
                  "cores": sorted(os.sched_getaffinity(0)), "threads": os.environ["OMP_NUM_THREADS"]}}))
"""


def test_core_pairs_are_distinct_cpus_the_process_may_use():
    pairs, spare = lanes.core_pairs(reserve=0)
    allowed = os.sched_getaffinity(0)
    flat = [c for p in pairs for c in p]
    assert all(len(p) == 2 for p in pairs) and len(set(flat)) == len(flat)
    assert set(flat) | set(spare) == allowed and not set(flat) & set(spare)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs for one lane")
def test_jobs_run_pinned_and_only_records_that_say_their_precision_count(tmp_path, monkeypatch):
    peers = tmp_path / "peers"
    peers.mkdir()
    spec = {"decode": {"utterance_frames": [1000, 1000], "output_tokens": 100}}
    (peers / "spec.json").write_text(json.dumps(spec))
    for name in ("espnet", "torch"):
        (peers / f"{name}_adapter.py").write_text(FAKE_ADAPTER.format(name=name))
    (peers / "best.py").write_text("import sys, pathlib; d = pathlib.Path(sys.argv[1]); (d / 'best').mkdir()\n"
                                   "[(d / 'best' / p.name).write_text(p.read_text()) for p in d.glob('*.json')]\n")
    (peers / "table.py").write_text("import sys; print(' '.join(sorted(sys.argv[1:])))\n")
    monkeypatch.setattr(lanes, "ROOT", tmp_path)  # no speechforge job: benchmarks/peer_adapter.py is absent there
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lanes.py", "--peers", "peers", "--out", "out", "--rounds", "1", "--reserve", "0"])
    lanes.main()

    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "out" / "records").glob("*.json")}
    # torch's fake says fp32 whatever it was asked, so its bf16 record is left out as run.sh leaves it out
    assert sorted(records) == ["espnet", "torch"]
    assert records["espnet"]["decode"]["greedy"]["tokens"] == 100  # the whole spec
    assert records["torch"]["decode"] == {"greedy": None}  # decoding cut (20 tokens) and left out
    pair = lanes.core_pairs(reserve=0)[0][0]
    assert all(r["cores"] == pair and r["threads"] == "2" for r in records.values())
    assert "espnet.json" in (tmp_path / "out" / "table.txt").read_text()
