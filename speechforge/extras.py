"""Optional extras: packages only some commands need, and the message that says how to get them."""

from __future__ import annotations

import importlib.util


class MissingExtra(Exception):
    """A command needs packages of an optional extra that are not installed."""


def require(extra: str, modules: tuple[str, ...], purpose: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtra(
            f"{purpose} needs the {' and '.join(missing)} package{'s' if len(missing) > 1 else ''}, which "
            f"{'are' if len(missing) > 1 else 'is'} not installed; install the [{extra}] extra: "
            f'pip install -e ".[{extra}]" in a checkout, or pip install {" ".join(modules)}')
