"""Every component registry of speechforge, declared in this one place.

A component registers itself where it is defined::

    @registry.decoders.register("greedy")
    def greedy(max_len_ratio: float = 1.0) -> Decoder: ...

A third-party package adds components without touching speechforge through the
entry-point group named after the registry (``speechforge_decoders`` and so on);
catalogue loads those lazily the first time a registry is searched.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from typing import Any, Callable

import catalogue

KINDS = (
    "datasets",
    "tokenizers",
    "normalizers",
    "augmentations",
    "embeddings",
    "encoder_layers",
    "decoder_layers",
    "models",
    "losses",
    "optimizers",
    "schedulers",
    "trainers",
    "decoders",
    "lm_scorers",
    "generators",
)

datasets = catalogue.create("speechforge", "datasets", entry_points=True)
tokenizers = catalogue.create("speechforge", "tokenizers", entry_points=True)
normalizers = catalogue.create("speechforge", "normalizers", entry_points=True)
augmentations = catalogue.create("speechforge", "augmentations", entry_points=True)
embeddings = catalogue.create("speechforge", "embeddings", entry_points=True)
encoder_layers = catalogue.create("speechforge", "encoder_layers", entry_points=True)
decoder_layers = catalogue.create("speechforge", "decoder_layers", entry_points=True)
models = catalogue.create("speechforge", "models", entry_points=True)
losses = catalogue.create("speechforge", "losses", entry_points=True)
optimizers = catalogue.create("speechforge", "optimizers", entry_points=True)
schedulers = catalogue.create("speechforge", "schedulers", entry_points=True)
trainers = catalogue.create("speechforge", "trainers", entry_points=True)
decoders = catalogue.create("speechforge", "decoders", entry_points=True)
lm_scorers = catalogue.create("speechforge", "lm_scorers", entry_points=True)
generators = catalogue.create("speechforge", "generators", entry_points=True)

# The modules whose import registers the built-in components. Kept as names, not
# imports, so that `import speechforge.registry` stays cheap and cycle-free.
_BUILTIN_MODULES = (
    "speechforge.data.hw4p2",
    "speechforge.data.tokenizers",
    "speechforge.data.normalization",
    "speechforge.data.augment",
    "speechforge.model.embeddings",
    "speechforge.model.layers",
    "speechforge.model.conformer",
    "speechforge.model.transformer",
    "speechforge.train.losses",
    "speechforge.train.optim",
    "speechforge.train.trainer",
    "speechforge.decode.greedy",
)
_OPTIONAL_BUILTINS = (
    "speechforge.data.sources",
    "speechforge.data.mixing",
    "speechforge.model.lm",
    "speechforge.decode.beam",
    "speechforge.decode.ctc",
    "speechforge.decode.lm_fusion",
    "speechforge.lm",
)
_loaded = False


def load_builtins() -> None:
    """Import every built-in component module once, so their decorators run."""
    global _loaded
    if _loaded:
        return
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    for module in _OPTIONAL_BUILTINS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
    _loaded = True


def get_registry(kind: str) -> catalogue.Registry:
    if kind not in KINDS:
        raise KeyError(f"unknown registry {kind!r}; registries are: {', '.join(KINDS)}")
    return globals()[kind]


def names(kind: str) -> list[str]:
    """Registered names of a kind, entry-point plugins included."""
    load_builtins()
    return sorted(get_registry(kind).get_all())


def resolve(kind: str, name: str) -> Callable[..., Any]:
    load_builtins()
    return get_registry(kind).get(name)


def describe(kind: str) -> list[tuple[str, str, str]]:
    """(name, first line of the docstring, distribution that provides it) per component."""
    load_builtins()
    providers = importlib.metadata.packages_distributions()
    rows = []
    for name, func in sorted(get_registry(kind).get_all().items()):
        doc = (inspect.getdoc(func) or "").strip().splitlines()
        top = (getattr(func, "__module__", "") or "").split(".")[0]
        dists = providers.get(top, [top])
        rows.append((name, doc[0] if doc else "", dists[0] if dists else top))
    return rows
