"""TOML recipes: parse, override with --set, validate every component, build.

A recipe section names a registered component and its arguments::

    [decode]
    name = "beam"
    beam_size = 10

The arguments are checked against a pydantic model made from the component's own
signature (thinc-style), so the recipe mirrors the code key for key. Two markers
shape that model: ``Runtime[...]`` arguments come from the experiment (vocabulary
size, feature dimension), never from the recipe; ``Sub("kind")`` arguments are
nested component sections, validated recursively and handed to the factory as a
``Spec`` it can build with its own runtime values.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Generic, Literal, TypeVar, get_args, get_origin, get_type_hints

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from speechforge import registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")


class RecipeError(Exception):
    """A recipe problem, as (key path, reason) pairs; printed one per line."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("\n".join(f"{path}: {reason}" if path else reason for path, reason in problems))


# --- markers -----------------------------------------------------------------


class _RuntimeMarker:
    pass


_RUNTIME = _RuntimeMarker()


class Runtime(Generic[T]):
    """``Runtime[int]``: supplied by the experiment when the component is built."""

    def __class_getitem__(cls, item):
        return Annotated[item, _RUNTIME]


@dataclass(frozen=True)
class Sub:
    """Marks an argument as a nested component section of registry ``kind``."""

    kind: str
    many: bool = False


@dataclass
class Spec:
    """A validated component section: which implementation, with which arguments."""

    kind: str
    name: str
    args: dict[str, Any]
    path: str

    def build(self, **runtime: Any) -> Any:
        return registry.resolve(self.kind, self.name)(**self.args, **runtime)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        for key, value in self.args.items():
            out[key] = _plain(value)
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, Spec):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, Path):
        return str(value)
    return value


# --- schemas from signatures -------------------------------------------------


@dataclass
class _Schema:
    model: type[BaseModel]
    subs: dict[str, Sub] = field(default_factory=dict)
    sub_defaults: dict[str, Any] = field(default_factory=dict)


def _markers(annotation: Any) -> list[Any]:
    if get_origin(annotation) is Annotated:
        return list(get_args(annotation)[1:])
    return []


@functools.lru_cache(maxsize=None)
def schema_for(func: Callable[..., Any]) -> _Schema:
    """A pydantic model of the recipe arguments a component factory takes."""
    hints = get_type_hints(func, include_extras=True)
    fields: dict[str, Any] = {}
    subs: dict[str, Sub] = {}
    sub_defaults: dict[str, Any] = {}
    for pname, param in inspect.signature(func).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(pname, Any)
        markers = _markers(annotation)
        if any(m is _RUNTIME for m in markers):
            continue
        sub = next((m for m in markers if isinstance(m, Sub)), None)
        default = ... if param.default is inspect.Parameter.empty else param.default
        if sub is not None:
            subs[pname] = sub
            sub_defaults[pname] = default
            continue
        fields[pname] = (annotation, default)
    model = pydantic.create_model(  # type: ignore[call-overload]
        f"{func.__name__}_args",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **fields,
    )
    return _Schema(model, subs, sub_defaults)


# --- validation ----------------------------------------------------------------


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return str(value)


_EXPECT = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "dict": "a table",
    "list": "a list",
    "literal": None,
}


def _reason(err: dict[str, Any], allowed: list[str]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f" (did you mean {close[0]}?)" if close else f" (known keys: {', '.join(sorted(allowed))})"
        return f"unknown key{hint}"
    if kind == "missing":
        return "too few items" if isinstance(err["loc"][-1], int) else "required key is missing"
    if kind == "value_error":
        return str(err["ctx"]["error"])
    for prefix, expected in _EXPECT.items():
        if kind.startswith(prefix) and expected:
            return f"expected {expected}, got {_show(err['input'])}"
    msg = err["msg"]
    msg = msg[0].lower() + msg[1:]
    if "input" in err and not isinstance(err["input"], dict):
        msg += f", got {_show(err['input'])}"
    return msg


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def validate_component(kind: str, section: Any, path: str) -> Spec:
    """Check one component section against its implementation's schema."""
    if not isinstance(section, dict):
        raise RecipeError([(path, f"expected a table naming a component, got {_show(section)}")])
    if "name" not in section:
        raise RecipeError([(f"{path}.name", f"required key is missing; registered {kind}: {', '.join(registry.names(kind))}")])
    name = section["name"]
    available = registry.names(kind)
    if name not in available:
        close = difflib.get_close_matches(str(name), available, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise RecipeError([(f"{path}.name", f"unknown {kind[:-1].replace('_', ' ')} {_show(name)}{hint}; registered: {', '.join(available)}")])
    func = registry.resolve(kind, name)
    schema = schema_for(func)
    raw = {k: v for k, v in section.items() if k != "name"}
    problems: list[tuple[str, str]] = []
    args: dict[str, Any] = {}
    for key, sub in schema.subs.items():
        default = schema.sub_defaults[key]
        value = raw.pop(key, default)
        if isinstance(value, dict) and "name" not in value and isinstance(default, dict) and "name" in default:
            # [model.encoder] may leave out the name when the default implementation will do
            value = {"name": default["name"], **value}
        if value is ...:
            problems.append((_join(path, key), "required key is missing"))
            continue
        try:
            if sub.many:
                if not isinstance(value, list):
                    raise RecipeError([(_join(path, key), f"expected a list of tables, got {_show(value)}")])
                args[key] = [validate_component(sub.kind, v, _join(_join(path, key), i)) for i, v in enumerate(value)]
            elif value is None:
                args[key] = None
            else:
                args[key] = validate_component(sub.kind, value, _join(path, key))
        except RecipeError as err:
            problems.extend(err.problems)
    allowed = list(schema.model.model_fields) + list(schema.subs) + ["name"]
    try:
        validated = schema.model.model_validate(raw)
        args.update({k: getattr(validated, k) for k in schema.model.model_fields})
    except pydantic.ValidationError as err:
        for e in err.errors():
            where = path
            for part in e["loc"]:
                where = _join(where, part)
            problems.append((where, _reason(e, allowed)))
    if problems:
        raise RecipeError(problems)
    return Spec(kind, name, args, path)


# --- the recipe ----------------------------------------------------------------


class InitSection(BaseModel):
    """[init]: start from trained weights: the whole model from an ASR run (``asr_run``,
    ESPnet's ``--init_param``), or the decoder from a language model run (``lm_run``)."""

    model_config = ConfigDict(extra="forbid")

    asr_run: str | None = None  # every tensor, and the run's tokenizer
    lm_run: str | None = None
    freeze_epochs: Annotated[int, Field(ge=0)] | None = None  # lm_run, stage 1: transferred weights frozen (1)
    lr_scale: Annotated[float, Field(gt=0.0)] | None = None  # lm_run, stage 2: their learning-rate multiplier (0.1)

    @pydantic.field_validator("asr_run", "lm_run")
    @classmethod
    def _is_run(cls, value: str | None) -> str | None:
        if value is not None and not (Path(value) / "recipe.toml").exists():
            raise ValueError(f"{value!r} is not a trained run directory (no recipe.toml); train it with speechforge run first")
        return value

    @pydantic.model_validator(mode="after")
    def _one_source(self) -> "InitSection":
        if (self.asr_run is None) == (self.lm_run is None):
            raise ValueError("give one of asr_run (the whole model) or lm_run (the decoder)")
        if self.asr_run is not None:
            if self.freeze_epochs or self.lr_scale is not None:
                raise ValueError("freeze_epochs and lr_scale apply to lm_run: an ASR run's weights are the whole "
                                 "model, fine-tuned at the optimizer's learning rate")
            self.freeze_epochs = 0
        else:
            self.freeze_epochs = 1 if self.freeze_epochs is None else self.freeze_epochs
            self.lr_scale = 0.1 if self.lr_scale is None else self.lr_scale
        return self


class StageSection(BaseModel):
    """One [[stages]] entry of progressive training; unset keys keep the recipe's values."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    epochs: Annotated[int, Field(ge=1)] | None = None
    steps: Annotated[int, Field(ge=1)] | None = None
    encoder_layers: Annotated[int, Field(ge=1)] | None = None
    decoder_layers: Annotated[int, Field(ge=1)] | None = None
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    specaugment: bool | None = None
    data_fraction: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    max_seconds: Annotated[float, Field(gt=0.0)] | None = None
    new_layers: Literal["copy", "fresh"] = "copy"
    freeze_earlier: bool = False
    freeze: list[str] = []

    @pydantic.model_validator(mode="after")
    def _one_length(self) -> "StageSection":
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give a stage its length as either epochs or steps (exactly one)")
        return self


class Recipe(BaseModel):
    """The whole experiment, section for section as in the TOML file."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    task: Literal["asr", "lm"] = "asr"
    seed: Annotated[int, Field(ge=0)] = 0
    run_dir: str | None = None
    data: Spec | None = None
    tokenizer: Spec | None = None
    model: Spec | None = None
    loss: Spec | None = None
    optimizer: Spec | None = None
    scheduler: Spec | None = None
    trainer: Spec | None = None
    decode: Spec | None = None
    generate: Spec | None = None
    init: InitSection | None = None
    stages: list[StageSection] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task, "seed": self.seed}
        if self.run_dir is not None:
            out["run_dir"] = self.run_dir
        for key in SECTIONS:
            spec = getattr(self, key)
            if spec is not None:
                out[key] = spec.to_dict()
        if self.init is not None:
            out["init"] = self.init.model_dump(exclude_none=True)
        if self.stages:
            out["stages"] = [stage.model_dump(exclude_none=True) for stage in self.stages]
        return out


# section -> registry kind
SECTIONS = {
    "data": "datasets",
    "tokenizer": "tokenizers",
    "model": "models",
    "loss": "losses",
    "optimizer": "optimizers",
    "scheduler": "schedulers",
    "trainer": "trainers",
    "decode": "decoders",
    "generate": "generators",
}
_COMMON = ("data", "tokenizer", "model", "loss", "optimizer", "scheduler", "trainer")
# task -> (required sections, optional sections)
TASKS = {
    "asr": (_COMMON + ("decode",), ()),
    "lm": (_COMMON, ("generate",)),
}
_PLAIN_KEYS = {"task", "seed", "run_dir", "init", "stages"}


def parse_value(text: str) -> Any:
    """A --set value as TOML would read it; a bare word stays a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides to a parsed recipe, in order."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError([("--set", f"expected key.path=value, got {_show(item)}")])
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise RecipeError([("--set", f"bad key path {_show(key)}")])
        if parts[0] not in SECTIONS and parts[0] not in _PLAIN_KEYS:
            close = difflib.get_close_matches(parts[0], list(SECTIONS) + list(_PLAIN_KEYS), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise RecipeError([(key, f"--set names an unknown section{hint}")])
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = _entry(node, part, key, parts[:i]) if isinstance(node, list) else node.setdefault(part, {})
            if not isinstance(child, (dict, list)):
                raise RecipeError([(key, f"--set goes through {'.'.join(parts[: i + 1])}, which is {_show(child)}, not a table")])
            node = child
        value = parse_value(text.strip())
        if isinstance(node, list):  # data.corpora.1=...: replace an entry of an array of tables
            _entry(node, parts[-1], key, parts[:-1])
            node[int(parts[-1])] = value
            continue
        if parts[-1] == "name" and node.get("name") not in (None, value):
            _drop_foreign_args(node, value, parts[:-1])
        node[parts[-1]] = value
    return raw


def _entry(items: list, part: str, key: str, where: list[str]) -> Any:
    """``data.corpora.0``: an entry of an array of tables, by its index."""
    if not part.isdigit() or int(part) >= len(items):
        raise RecipeError([(key, f"--set goes through {'.'.join(where)}, a list of {len(items)}: expected an index "
                                 f"0-{len(items) - 1}, got {_show(part)}")])
    return items[int(part)]


def _drop_foreign_args(node: dict[str, Any], new_name: Any, parts: list[str]) -> None:
    """Swapping a component on the command line keeps only the arguments the new one takes,
    so that `--set decode.name=beam` works whatever the recipe's greedy section held."""
    kind = _kind_at(parts)
    if kind is None or new_name not in registry.names(kind):
        return
    schema = schema_for(registry.resolve(kind, new_name))
    accepted = set(schema.model.model_fields) | set(schema.subs)
    for key in [k for k in node if k != "name" and k not in accepted]:
        del node[key]


def _kind_at(parts: list[str]) -> str | None:
    if len(parts) == 1:
        return SECTIONS.get(parts[0])
    return None


def validate(raw: dict[str, Any]) -> Recipe:
    """Turn a parsed recipe into a Recipe, collecting every problem with its key path."""
    problems: list[tuple[str, str]] = []
    specs: dict[str, Any] = {}
    task = raw.get("task", "asr")
    if task not in TASKS:
        raise RecipeError([("task", f"expected one of {', '.join(TASKS)}, got {_show(task)}")])
    required, optional = TASKS[task]
    allowed = list(required) + list(optional) + sorted(_PLAIN_KEYS)
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (sections of a {task} recipe: {', '.join(required + optional)})"
            problems.append((key, f"unknown section{hint}"))
    for key in required + optional:
        kind = SECTIONS[key]
        if key not in raw:
            if key in required:
                problems.append((key, f"required section is missing; registered {kind}: {', '.join(registry.names(kind))}"))
            continue
        try:
            specs[key] = validate_component(kind, raw[key], key)
        except RecipeError as err:
            problems.extend(err.problems)
    plain = {k: raw[k] for k in _PLAIN_KEYS if k in raw}
    try:
        Recipe.model_validate(plain)
    except pydantic.ValidationError as err:
        for e in err.errors():
            where = ""
            for part in e["loc"]:
                where = _join(where, part)
            problems.append((where, _reason(e, _allowed_at(e["loc"]))))
    if task != "asr":
        problems += [(key, f"only asr recipes have [{key}]") for key in ("init", "stages") if key in raw]
    if problems:
        raise RecipeError(problems)
    return Recipe.model_validate({**plain, **specs})


def _allowed_at(loc: tuple) -> list[str]:
    if loc and loc[0] == "init":
        return list(InitSection.model_fields)
    if loc and loc[0] == "stages":
        return list(StageSection.model_fields)
    return sorted(_PLAIN_KEYS)


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError([("", f"{path}: no such recipe file")]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError([("", f"{path}: cannot read the recipe ({err})")]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError([("", f"{path}: malformed TOML: {err}")]) from None


def load(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file; nothing is built or computed."""
    raw = read_toml(path)
    apply_overrides(raw, list(overrides or []))
    return validate(raw)


def dumps(data: dict[str, Any]) -> str:
    """Write a recipe dict back as TOML (the subset recipes use: tables, scalars, lists)."""
    lines: list[str] = []
    _dump_table(data, [], lines)
    return "\n".join(lines).strip() + "\n"


def _toml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_scalar(v) for v in value) + "]"
    if value is None:
        raise ValueError("TOML has no null")
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _dump_table(table: dict[str, Any], prefix: list[str], lines: list[str]) -> None:
    tables, arrays = [], []
    for key, value in table.items():
        if value is None:
            continue
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((key, value))
        else:
            lines.append(f"{key} = {_toml_scalar(value)}")
    for key, value in tables:
        lines.append("")
        lines.append(f"[{'.'.join(prefix + [key])}]")
        _dump_table(value, prefix + [key], lines)
    for key, items in arrays:
        for item in items:
            lines.append("")
            lines.append(f"[[{'.'.join(prefix + [key])}]]")
            _dump_table(item, prefix + [key], lines)
