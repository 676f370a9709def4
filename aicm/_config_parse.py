"""Generic helpers behind ``aicm.config.load_settings``: .env and YAML reading, ``${VAR}`` expansion,
and conversion of the parsed tree into dataclasses driven by their type hints.

Every helper appends ``"<key.path>: <what is wrong>"`` strings to a ``problems`` list instead of raising,
so that one load reports every problem at once.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

INVALID: Any = object()  # a value that could not be converted (its problem is already recorded)

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4}
_SIZE_UNITS |= {"kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def problem_path(problem: str) -> str:
    return problem.split(": ", 1)[0]


def show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value)


def read_dotenv(path: Path, problems: list[str]) -> dict[str, str]:
    """KEY=VALUE lines; ``#`` comments, blank lines, ``export`` prefixes and surrounding quotes allowed."""
    if not path.is_file():
        return {}
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _ENV_KEY.fullmatch(key):
            problems.append(f".env: line {number}: expected KEY=VALUE")
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0]  # an unquoted value may end in a comment
        values[key] = value
    return values


def read_yaml(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(f"config: cannot read {path}: {exc.strerror or exc}")
        return {}
    except yaml.YAMLError as exc:
        where, what = "", " ".join(str(exc).split())
        if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
            where = f" (line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1})"
            what = " ".join(filter(None, (exc.context, exc.problem)))
        problems.append(f"config: {path} is not valid YAML{where}: {what}")
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(f"config: {path} must hold a mapping of sections, got a {type(data).__name__}")
        return {}
    return data


def expand(value: Any, env: Mapping[str, str], path: str, problems: list[str]) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` inside the string values of a parsed tree.

    Walking the tree (rather than substituting the raw text) keeps a value with quotes, colons or
    newlines from changing the YAML structure. Set-but-empty is fine for ``${VAR}``; ``:-`` uses the
    default for unset or empty, as in the shell.
    """
    if isinstance(value, dict):
        return {k: expand(v, env, join(path, str(k)), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, env, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if default is not None:
            return env.get(name) or default
        if name not in env:
            problems.append(f"{path}: environment variable {name} is not set")
            return ""
        return env[name]

    return _VAR.sub(substitute, value)


def apply_overrides(raw: dict[str, Any], env: Mapping[str, str], overrides: Mapping[str, str]) -> set[str]:
    """Put each non-empty override variable at its ``section.key``; returns the key paths set."""
    done = set()
    for name, key_path in overrides.items():
        value = env.get(name)
        if not value:
            continue
        section, key = key_path.split(".")
        if raw.get(section) is None:
            raw[section] = {}
        if isinstance(raw[section], dict):  # otherwise conversion reports the section itself
            raw[section][key] = value
            done.add(key_path)
    return done


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def build(
    cls: type,
    raw: Any,
    problems: list[str],
    *,
    durations: frozenset[str],
    sizes: frozenset[str] = frozenset(),
    skip: frozenset[str] = frozenset(),
    path: str = "",
) -> Any:
    """A dataclass instance from a mapping: unknown keys are problems, absent keys keep defaults, null keeps
    the default too except for an optional field (``X | None``), which it sets to None ("off"); values that
    fail to convert keep defaults too (so validation does not pile on). ``durations`` and ``sizes`` name the
    key paths that take ``30s``/``2h`` (float seconds) and ``64MiB``/``1GB`` (int bytes)."""
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        problems.append(f"{path or 'config'}: expected a mapping, got {show(raw)}")
        return cls()
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - skip
    kwargs = {}
    for key, value in raw.items():
        sub = join(path, str(key))
        if key not in names:
            problems.append(f"{sub}: unknown key")
        elif value is None:
            if type(None) in get_args(hints[key]):
                kwargs[key] = None
        else:
            converted = _convert(value, hints[key], sub, problems, durations, sizes)
            if converted is not INVALID:
                kwargs[key] = converted
    return cls(**kwargs)


def _convert(
    value: Any, tp: Any, path: str, problems: list[str], durations: frozenset[str], sizes: frozenset[str]
) -> Any:
    def bad(expected: str) -> Any:
        problems.append(f"{path}: expected {expected}, got {show(value)}")
        return INVALID

    if dataclasses.is_dataclass(tp):
        return build(tp, value, problems, durations=durations, sizes=sizes, path=path)  # type: ignore[arg-type]
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        inner = next(a for a in args if a is not type(None))
        return None if value is None else _convert(value, inner, path, problems, durations, sizes)
    if origin is list:
        if not isinstance(value, list):
            return bad("a list")
        items = [
            _convert(v, args[0], f"{path}[{i}]", problems, durations, sizes) for i, v in enumerate(value)
        ]
        return INVALID if any(item is INVALID for item in items) else items
    if origin is dict:
        if not isinstance(value, dict):
            return bad("a mapping")
        entries = {
            str(k): _convert(v, args[1], join(path, str(k)), problems, durations, sizes)
            for k, v in value.items()
        }
        return INVALID if any(v is INVALID for v in entries.values()) else entries
    if path in durations:
        seconds = parse_duration(value)
        return bad("a duration like 30s, 15m or 24h") if seconds is None else seconds
    if path in sizes:
        size = parse_size(value)
        return bad("a size like 4GiB, 64MiB or a number of bytes") if size is None else size
    text = value.strip().lower() if isinstance(value, str) else None
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if tp is bool:
        if isinstance(value, bool) or text in _TRUE or text in _FALSE:
            return value if isinstance(value, bool) else text in _TRUE
        return bad("true or false")
    if tp is int:
        if isinstance(value, int) and is_number:
            return value
        return int(text) if text is not None and _INT.fullmatch(text) else bad("an integer")
    if tp is float:
        if is_number:
            return float(value)
        return float(text) if text is not None and _FLOAT.fullmatch(text) else bad("a number")
    if tp is str:
        if isinstance(value, str) or is_number:
            return str(value)
        return bad("a string")
    raise TypeError(f"{path}: unsupported config field type {tp!r}")


def parse_duration(value: Any) -> float | None:
    """Seconds from 30s, 15m, 24h, 500ms, 1h30m, 7d or a plain number; None when it is none of those."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _FLOAT.fullmatch(text):
        return float(text)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def parse_size(value: Any) -> int | None:
    """Bytes from 4GiB, 64MiB, 1MB, 512KiB, 100B or a plain number; None when it is none of those."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if not isinstance(value, str) or not (match := _SIZE.fullmatch(value.strip())):
        return None
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[(unit or "b").lower()])


def url_scheme(url: str) -> str:
    """Only the scheme of a URL, for messages: the rest may hold a password."""
    return repr(url.split("://", 1)[0] + "://") if "://" in url else "no scheme"


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in ("", "localhost") or host.endswith(".localhost") or host.startswith("/"):
        return True  # empty or a directory = a local Unix socket
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_network(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True
