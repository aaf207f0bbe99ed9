"""How a setting is read from the environment: the settings module's rules, shared with
the scripts that start its processes (deploy/cluster.py)."""

import os

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


def env_str(name: str, default: str = "") -> str:
    # Set-but-empty means "use the default", as `VAR=` in a compose file or shell does.
    return os.environ.get(name, "").strip() or default


def is_on(raw: str) -> bool:
    """Whether a flag's value turns it on."""
    return raw.strip().lower() in TRUE_WORDS


def env_bool(name: str, default: bool = False) -> bool:
    raw = env_str(name)
    return default if not raw else is_on(raw)


def env_int(name: str, default: int) -> int:
    raw = env_str(name)
    return int(raw) if raw else default


def env_float(name: str, default: float) -> float:
    raw = env_str(name)
    return float(raw) if raw else default
