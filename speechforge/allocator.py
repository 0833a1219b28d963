"""glibc's malloc, told to keep the memory a training step frees for the next step to reuse.

PyTorch's CPU tensors come from malloc. glibc serves a request above its mmap threshold (128 KiB,
rising to at most 32 MiB as it sees such blocks freed) with a fresh mmap and gives it back to the
kernel when it is freed, and it trims the top of its heap whenever more than the trim threshold
lies free there. A training step allocates and frees the same large activations and gradients
every step, so each step the kernel faults in and zeroes every page of them again: 349,000 page
faults a step (1.4 GB) for the peer harness's bpe5k_ctc batch on the 2-core dev CPU, about a
quarter of an fp32 step. With mmap turned off (``M_MMAP_MAX`` 0) and trimming off
(``M_TRIM_THRESHOLD`` -1, as mallopt(3) documents), freed blocks stay in the heap and the next
step reuses them: 15,000 faults, 1.31x the frames/s in fp32 and 1.06x in bf16
(benchmarks/allocator_speed.py). The price is resident memory that does not shrink after a
peak: a tenth more peak RSS on that step in fp32, none in bf16.

PyTorch's performance guide gets the same effect by preloading jemalloc or tcmalloc; this needs
neither a library nor ``LD_PRELOAD``, and it is one switch, ``trainer.keep_freed_memory``.
Elsewhere (macOS, musl) it changes nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt(3)'s parameter numbers
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def _mallopt():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def keep_freed_memory(keep: bool = True) -> str:
    """Keep freed memory in the process for reuse; with ``keep`` false, leave malloc as it is
    (glibc's own dynamic settings, unless this process asked for reuse before: mallopt cannot
    give back the dynamic mmap threshold it turns off). Process-wide; returns what it did, for
    the run log."""
    if not keep:
        return "malloc left as it is (trainer.keep_freed_memory = false)"
    mallopt = _mallopt()
    if mallopt is None:
        return f"malloc unchanged (not glibc: {platform.system()} {platform.libc_ver()[0] or 'unknown libc'})"
    if not (mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, -1) == 1):
        return "malloc unchanged (glibc refused mallopt)"
    return "freed memory kept for reuse (glibc mallopt: no mmap, no trimming; trainer.keep_freed_memory)"
