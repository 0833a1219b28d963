"""speechforge: attention-based end-to-end speech recognition from TOML recipes."""

__version__ = "0.1.0"


def load(run_dir, overrides=None, weights="best"):
    """A trained run, ready to ``.transcribe(paths)`` audio or feature files."""
    from speechforge.transcribe import load as _load

    return _load(run_dir, overrides, weights)
