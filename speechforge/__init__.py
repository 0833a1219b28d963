"""speechforge: attention-based end-to-end speech recognition from TOML recipes."""

__version__ = "0.1.0"
