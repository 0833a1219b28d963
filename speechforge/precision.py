"""Which precision a run computes in, and the autocast context that gives it.

``mixed_precision = "auto"`` (the default) picks bfloat16 where the device multiplies it
fast: a CUDA GPU that supports it, a CPU with AMX, or a CPU with AVX512-BF16 whose bf16
matrix products measure faster than its fp32 ones. The flag alone does not settle it: on
an AMD EPYC with AVX512-BF16 bf16 products ran about 2x fp32's rate, on an Intel Xeon with
AVX512-BF16 but no AMX at 0.56x (benchmarks/README.md), so there "auto" measures. Without
either flag bf16 is emulated and slower than fp32, and "auto" keeps fp32. fp16 needs loss
scaling and overflows where bf16 does not, so "auto" never picks it; ask for it by name.

Mixed precision here is always autocast: fp32 master weights and optimizer state, forward
matrix products in the low precision, and the losses, CTC and search scores in fp32 or
fp64 (the model and decoders cast those themselves).
"""

from __future__ import annotations

import contextlib
import functools
import time
import weakref
from functools import lru_cache
from pathlib import Path
from typing import Callable, Literal, TypeVar

import torch
from torch import nn

Precision = Literal["auto", "no", "bf16", "fp16"]
_NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """The CPU's bf16 instruction sets among AMX-BF16 and AVX512-BF16 (Linux /proc/cpuinfo;
    torch's own probe elsewhere)."""
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
        return tuple(f for f in _NATIVE_BF16_FLAGS if f in words)
    except OSError:
        probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
        return tuple(f for f, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)())


# bf16 is taken on an AVX512-BF16 CPU without AMX only when its products measure this much
# faster than fp32's: the CPUs seen so far sit far from 1 (0.56x, about 2x), and a margin
# keeps a noisy host from flipping a machine's choice between runs
BF16_MARGIN = 1.1
PROBE_SHAPE = (512, 256, 1024)  # rows x in x out: a feed-forward product of a small batch


def _product_seconds(a: torch.Tensor, b: torch.Tensor, repeats: int = 5) -> float:
    a @ b  # oneDNN builds a kernel for a new shape: not timed
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return best


@lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """bf16 matrix products' rate over fp32's on this CPU, measured once per process on a
    ``PROBE_SHAPE`` product with the threads torch uses (about 20 ms)."""
    g = torch.Generator().manual_seed(0)
    m, k, n = PROBE_SHAPE
    a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    with torch.inference_mode(), torch.autocast("cpu", enabled=False):
        fp32 = _product_seconds(a, b)
        bf16 = _product_seconds(a.bfloat16(), b.bfloat16())
    return fp32 / bf16


def resolve(requested: str, device: torch.device | str) -> tuple[str, str]:
    """``requested`` ("auto", "no", "bf16", "fp16") on ``device`` -> (Accelerate's
    mixed_precision value, the reason, for the run log)."""
    device = torch.device(device)
    if requested != "auto":
        return requested, "as the recipe asks"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"auto: {torch.cuda.get_device_name(device)} computes bf16 natively"
        return "no", f"auto: {torch.cuda.get_device_name(device)} has no native bf16"
    if device.type == "cpu":
        flags = cpu_bf16_flags()
        if "amx_bf16" in flags:
            return "bf16", f"auto: the CPU has {' and '.join(flags)}, native bf16 matrix products"
        if flags:
            speedup = cpu_bf16_speedup()
            if speedup >= BF16_MARGIN:
                return "bf16", (f"auto: the CPU has {flags[0]} and its bf16 matrix products measured "
                                f"{speedup:.2f}x fp32's rate")
            return "no", (f"auto: the CPU has {flags[0]} but no AMX, and its bf16 matrix products measured "
                          f"{speedup:.2f}x fp32's rate, under {BF16_MARGIN}x: fp32")
        return "no", "auto: the CPU has neither AMX nor AVX512-BF16, where bf16 would be emulated and slower"
    return "no", f"auto: no bf16 fast path known for {device.type}"


def planned(requested: str, cpu: bool = False) -> str:
    """The precision a run asking for ``requested`` computes in on this machine: on its GPU
    when it has one and ``cpu`` (trainer.cpu) is off, as the trainer resolves it."""
    device = "cpu" if cpu or not torch.cuda.is_available() else "cuda"
    return resolve(requested, device)[0]


def name(precision: str) -> str:
    """Accelerate's "no" as a reader says it."""
    return "fp32" if precision == "no" else precision


def autocast(precision: str, device: torch.device | str):
    """The forward-pass context for an already resolved ``precision``."""
    device = torch.device(device)
    if precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def allow_tf32(device: torch.device | str) -> None:
    """fp32 matrix products and convolutions on a CUDA GPU's tensor cores (TF32: fp32 range,
    a 10-bit mantissa), as PyTorch's own guidance recommends for training; a no-op elsewhere."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def version_stamp(tensors: list[torch.Tensor]) -> list[tuple[int, int]] | None:
    """What tells whether weights derived from ``tensors`` are stale: each one's data pointer
    and version (an optimizer step or a load bumps it), or None where one is an inference
    tensor (made under ``torch.inference_mode``), whose changes nothing tracks: derive
    afresh each time then, hold nothing."""
    if any(t.is_inference() for t in tensors):
        return None
    return [(t.data_ptr(), t._version) for t in tensors]


# id of an fp32 parameter -> (a weak reference to it, its data pointer and version when
# cast, the cast copy). Keyed by id: tensors compare elementwise, so cannot be dict keys.
_CASTS: dict[int, tuple[weakref.ref, list[tuple[int, int]], torch.Tensor]] = {}


def _cast(param: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    stamp = version_stamp([param])
    if stamp is None:
        return nn.Parameter(param.detach().to(dtype), requires_grad=False)
    held = _CASTS.get(id(param))
    if held is None or held[0]() is not param or held[1] != stamp or held[2].dtype != dtype:
        if held is None or held[0]() is not param:
            weakref.finalize(param, _CASTS.pop, id(param), None)
        # a normal tensor even when the search runs under torch.inference_mode
        with torch.inference_mode(False), torch.no_grad():
            held = (weakref.ref(param), stamp, nn.Parameter(param.detach().to(dtype), requires_grad=False))
        _CASTS[id(param)] = held
    return held[2]


@contextlib.contextmanager
def autocast_weights(*modules: nn.Module | None):
    """Within, every ``nn.Linear`` of ``modules`` holds its weight and bias already in the
    active autocast dtype of its device (nothing changes where autocast is off).

    Autocast casts an fp32 weight at every call, and caches the cast only for tensors that
    require grad outside inference mode: a search loop under ``torch.inference_mode`` recast
    every decoder weight at every step (benchmarks/README.md). The products are the same:
    autocast rounds the same weights to the same dtype. Norms, embeddings (an output layer
    tied to the embedding keeps the embedding fp32) and everything but ``nn.Linear`` stay as
    they are. Casts are kept per parameter and redone when it changes (training between
    validation decodes)."""
    swapped = []
    try:
        for module in modules:
            if module is None:
                continue
            for layer in module.modules():
                if not isinstance(layer, nn.Linear):
                    continue
                device = layer.weight.device.type
                if not torch.is_autocast_enabled(device):
                    continue
                dtype = torch.get_autocast_dtype(device)
                for name in ("weight", "bias"):
                    param = layer._parameters.get(name)
                    if param is not None and param.dtype == torch.float32:
                        swapped.append((layer, name, param))
                        layer._parameters[name] = _cast(param, dtype)
        yield
    finally:
        for layer, name, param in reversed(swapped):
            layer._parameters[name] = param


F = TypeVar("F", bound=Callable)


def searches_with_autocast_weights(search: F) -> F:
    """A search ``search(model, ...)`` run within ``autocast_weights(model)``."""

    @functools.wraps(search)
    def wrapped(model, *args, **kwargs):
        with autocast_weights(model):
            return search(model, *args, **kwargs)

    return wrapped  # type: ignore[return-value]
