"""trainer.keep_freed_memory: glibc keeps what a step frees, so the next step does not fault it in again."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from speechforge import allocator
from speechforge.cli import main

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's; elsewhere nothing changes")

# A 64 MiB tensor, well above glibc's largest mmap threshold (32 MiB), allocated, filled and
# freed round after round, as a training step's activations are: the page faults of the last
# round are what each later step pays. (Kept memory settles after a few rounds: the small
# remainders of aligned allocations go to glibc's per-thread cache, 7 deep, and until it is full
# each one keeps a freed block from merging back.)
_ROUNDS = """
import resource, sys, torch
from speechforge import allocator
if sys.argv[1] == "keep":
    print(allocator.keep_freed_memory(), file=sys.stderr)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(12):
    before = faults()
    x = torch.ones(16 * 1024 * 1024)
    del x
print(faults() - before)
"""


def _last_round_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@glibc
def test_kept_memory_is_reused_without_faulting_its_pages_in_again():
    pages = 64 * 1024 * 1024 // 4096
    # default glibc: the block is mmapped afresh and every page faults again
    assert _last_round_faults("default") > pages // 2
    assert _last_round_faults("keep") < pages // 20


@glibc
def test_the_switch_reports_what_it_did():
    assert allocator.keep_freed_memory().startswith("freed memory kept for reuse")
    assert allocator.keep_freed_memory(False) == "malloc left as it is (trainer.keep_freed_memory = false)"


def test_elsewhere_than_glibc_nothing_changes_and_the_log_says_why(monkeypatch):
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    assert allocator.keep_freed_memory().startswith("malloc unchanged (not glibc")


@pytest.mark.parametrize("keep", ["true", "false"])
def test_the_run_log_says_what_the_trainer_did_with_host_memory(tiny_recipe, tmp_path, capsys, keep):
    assert main(["run", str(tiny_recipe), "--run-dir", str(tmp_path / "run"), "--set", "trainer.max_steps=1",
                 "--set", "trainer.epochs=1", "--set", "trainer.trackers=[]",
                 "--set", f"trainer.keep_freed_memory={keep}"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("host memory: "))
    assert line == "host memory: " + allocator.keep_freed_memory(keep == "true")


def test_a_keep_freed_memory_that_is_no_bool_fails_naming_the_key(tiny_recipe, tmp_path, capsys):
    code = main(["run", str(tiny_recipe), "--run-dir", str(tmp_path / "run"),
                 "--set", 'trainer.keep_freed_memory="sometimes"'])
    assert code != 0
    assert "trainer.keep_freed_memory" in capsys.readouterr().err


HARNESS_SPEC = Path(__file__).resolve().parents[2].parent / "shared" / "bench" / "peers" / "spec.json"


@pytest.mark.skipif(not HARNESS_SPEC.exists(), reason=f"the peer harness's spec is not at {HARNESS_SPEC}")
def test_allocator_speed_profiles_one_step_of_each_setting_after_its_figures():
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "allocator_speed.py"
    out = subprocess.run([sys.executable, str(script), "--quick", "--precisions", "fp32", "--profile", "4",
                          "--spec", str(HARNESS_SPEC)], capture_output=True, text=True, check=True).stdout
    figures = out.index("fp32  kept / as is:")
    for setting in ("malloc as is", "kept for reuse"):
        heading = out.index(f"fp32 {setting}: one step under torch.profiler")
        assert heading > figures
        table = out[heading:].split("Self CPU time total", 1)[0].splitlines()
        rules = [i for i, line in enumerate(table) if line.startswith("---")]
        rows = table[rules[1] + 1 : rules[2]]  # between the header's rule and the closing one
        assert len(rows) == 4 and "aten::" in "".join(rows)  # the ROWS costliest operators
