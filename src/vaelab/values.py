"""Typed values from the two places settings come from: TOML files (:func:`read_toml`) and
command-line strings or TOML values converted to a field's type (:func:`coerce`); every
failure a :class:`ConfigError` that says what was wrong."""
from __future__ import annotations

import math
import sys
import types
import typing
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from .errors import ConfigError


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's tables; a ConfigError says what is wrong with a file that is not one."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory; give a TOML file") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path} ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file; give a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None


def coerce(tp: Any, value: Any, name: str = "value") -> Any:
    """Convert ``value`` (a TOML value or a command-line string) to type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "none")):
            return None
        return coerce(args[0], value, name)
    if origin is tuple:
        (elem, _) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return tuple(coerce(elem, v, name) for v in value)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if tp in (int, float) and isinstance(value, bool):
            raise ValueError  # TOML's true is not a number
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if tp is int and isinstance(value, str):
            return int(float(value)) if "e" in value.lower() else int(value)
        if tp is float:
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
            return number
        return tp(value)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be of type {getattr(tp, '__name__', tp)}, "
                          f"got {value!r}") from None
