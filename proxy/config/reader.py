"""The reader of the config file: bytes on disk in, text and typed values out, every problem
collected.

Owns what is generic about reading an operator's file: the one function that reads it from disk
(read_config_file: its text with newlines untouched and the hash of its bytes, so every reader of
the file, the proxy, the supervisor, `--watch` and the CLI, sees the same text and hash), safe YAML
loading that notices keys given twice, ${ENV_VAR} expansion, typed reads that report
"dotted.path: message" and return a usable fallback so that reading goes on, and host:port
parsing. Knows nothing of the schema. Pure: its only I/O is reading the file.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml

from proxy.errors import ConfigError

INT_RE: Final = re.compile(r"[+-]?[0-9]+")
SERVER_FORM: Final = '"host:port[:weight] [name]"'
_LABEL_RE: Final = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_ENV_RE: Final = re.compile(r"\$?\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


# --- the file: read once, decoded strictly, newlines untouched ---


@dataclass(frozen=True, slots=True)
class ConfigFile:
    text: str  # the file's text as UTF-8, "\r\n" kept: text.encode() is the bytes on disk
    hash: str  # config_hash(text): the short hash of those bytes


def read_config_file(path: str) -> ConfigFile:
    """The config file's text and hash; ConfigError if it cannot be read or is not UTF-8.

    Universal newlines would turn a CRLF file's text (and hash) into its LF twin, so that two
    readers of one file could disagree on its hash: the bytes are decoded as they are."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError((f"{path}: cannot read config: {reason}",), path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError((f"{path}: cannot read config: not valid UTF-8",), path) from None
    return ConfigFile(text, config_hash(text))


def config_hash(text: str) -> str:
    """Short content hash of the config text (of the file's bytes), for metrics and /status."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


# --- YAML loading: safe, and keys given twice are remembered (PyYAML keeps the last silently) ---


class _YamlMap(dict[Any, Any]):
    def __init__(self) -> None:
        super().__init__()
        self.duplicates: list[tuple[object, int]] = []  # (key, 1-based line)


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.Node) -> _YamlMap:
    assert isinstance(node, yaml.MappingNode)
    own = sum(1 for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge")
    loader.flatten_mapping(node)
    first_own = len(node.value) - own  # merged pairs come first and may be overridden
    result, seen = _YamlMap(), set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, "unhashable key", mark) from None
        if index >= first_own:
            if key in seen:
                result.duplicates.append((key, key_node.start_mark.line + 1))
            seen.add(key)
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str, source: str) -> object:
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError((f"{where}: invalid YAML: {problem}",), source) from None
    except yaml.YAMLError as exc:
        raise ConfigError((f"{source}: invalid YAML: {exc}",), source) from None


# --- addresses: hosts are IPv4, hostnames (lower-cased) or [IPv6] (stored without brackets) ---


def format_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(text: str, allow_port_zero: bool = False) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port), host without brackets; ValueError if not."""
    host, rest = _split_endpoint(text.strip())
    if len(rest) != 1:
        raise ValueError(_shape_error(text.strip(), '"host:port"'))
    return _parse_host(host), _parse_port(rest[0], allow_port_zero)


def parse_server(text: str) -> tuple[str, int, int, str | None]:
    """twemproxy's short form 'host:port[:weight] [name]' -> (host, port, weight, name)."""
    tokens = text.split()
    if len(tokens) not in (1, 2):
        raise ValueError(f"expected {SERVER_FORM}, got {text!r}")
    host, rest = _split_endpoint(tokens[0])
    if len(rest) not in (1, 2):
        raise ValueError(_shape_error(tokens[0], SERVER_FORM))
    weight = 1
    if len(rest) == 2:
        if not INT_RE.fullmatch(rest[1]):
            raise ValueError(f"weight must be an integer, got {rest[1]!r}")
        weight = int(rest[1])
        if weight < 1:
            raise ValueError("weight must be >= 1")
    name = tokens[1] if len(tokens) == 2 else None
    return _parse_host(host), _parse_port(rest[0], False), weight, name


def _split_endpoint(text: str) -> tuple[str, list[str]]:
    """'host:a:b' -> ('host', ['a', 'b']); '[v6]:a' -> ('[v6]', ['a'])."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            return text, []
        return text[: end + 1], text[end + 2 :].split(":")
    host, *rest = text.split(":")
    return host, rest


def _shape_error(text: str, form: str) -> str:
    if not text.startswith("[") and ("::" in text or text.count(":") > 2):
        return f"IPv6 addresses need brackets, e.g. [::1]:6380, got {text!r}"
    return f"expected {form}, got {text!r}"


def _parse_host(text: str) -> str:
    if text.startswith("[") and text.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(text[1:-1]))
        except ValueError:
            raise ValueError(f"invalid IPv6 address {text!r}") from None
    if not text:
        raise ValueError("missing host")
    labels = text.split(".")
    if all(re.fullmatch(r"[0-9]+", label) for label in labels):
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            raise ValueError(f"invalid IPv4 address {text!r}") from None
    if len(text) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError(f"invalid host {text!r}")
    return text.lower()


def _parse_port(text: str, allow_zero: bool) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text):
        raise ValueError(f"port must be a number, got {text!r}")
    low, port = (0 if allow_zero else 1), int(text)
    if not low <= port <= 65535:
        raise ValueError(f"port must be {low}..65535")
    return port


# --- the reader: every read reports its own problems and returns a usable fallback ---


def join_path(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:56] + "...'"


class Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.errors: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def mapping(self, path: str, value: object) -> dict[str, object]:
        """A mapping with string keys; null reads as empty (a section with everything commented)."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping, got {describe(value)}")
            return {}
        for key, line in getattr(value, "duplicates", ()):
            self.fail(join_path(path, key), f"duplicate key (again at line {line})")
        result: dict[str, object] = {}
        for key, item in value.items():
            if isinstance(key, str):
                result[key] = item
            else:
                self.fail(path or "<top level>", f"keys must be strings, got {describe(key)}")
        return result

    def section(self, path: str, value: object, allowed: tuple[str, ...]) -> dict[str, object]:
        mapping = self.mapping(path, value)
        for key in mapping:
            if key not in allowed:
                self.fail(join_path(path, key), "unknown key")
        return mapping

    def expand(self, path: str, text: str) -> str | None:
        """Expand ${VAR} and ${VAR:-default} ('$${' is a literal '${'); None if a VAR is unset."""
        missing: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            if match.group(0).startswith("$$"):
                return match.group(0)[1:]
            name, default = match.group(1), match.group(2)
            value = self.env.get(name)
            if default is not None and not value:
                return default
            if value is None:
                missing.append(name)
                return ""
            return value

        expanded = _ENV_RE.sub(substitute, text)
        for name in missing:
            self.fail(path, f"environment variable {name} is not set")
        return None if missing else expanded

    def text(self, path: str, value: object) -> str | None:
        if isinstance(value, str):
            return self.expand(path, value)
        self.fail(path, f"expected a string, got {describe(value)}")
        return None

    def secret(self, path: str, value: object) -> str | None:
        """A password or user name; never echoed in errors. Empty means unset, as in Redis."""
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(path, "expected a string (quote it so YAML keeps it verbatim)")
            return None
        return self.expand(path, value) or None

    def integer(self, path: str, value: object, default: int, low: int, high: int | None) -> int:
        if isinstance(value, str):
            expanded = self.expand(path, value)
            if expanded is None:
                return default
            value = int(expanded) if INT_RE.fullmatch(expanded.strip()) else expanded
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(path, f"expected an integer, got {describe(value)}")
            return default
        return value if self._in_range(path, value, low, high) else default

    def number(
        self, path: str, value: object, default: float, low: float, high: float | None
    ) -> float:
        if isinstance(value, str):
            expanded = self.expand(path, value)
            if expanded is None:
                return default
            try:
                value = float(expanded)
            except ValueError:
                value = expanded
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.fail(path, f"expected a number, got {describe(value)}")
            return default
        if not math.isfinite(value):
            self.fail(path, f"expected a finite number, got {describe(value)}")
            return default
        return float(value) if self._in_range(path, value, low, high) else default

    def _in_range(self, path: str, value: float, low: float, high: float | None) -> bool:
        if value >= low and (high is None or value <= high):
            return True
        self.fail(path, f"must be >= {low:g}" if high is None else f"must be {low:g}..{high:g}")
        return False

    def boolean(self, path: str, value: object, default: bool) -> bool:
        if isinstance(value, bool):
            return value
        self.fail(path, f"expected a boolean (true or false), got {describe(value)}")
        return default

    def choice(self, path: str, value: object, default: str, choices: tuple[str, ...]) -> str:
        text = self.text(path, value)
        if text is None:
            return default
        if text not in choices:
            self.fail(path, f"must be one of {', '.join(choices)}, got {text!r}")
            return default
        return text

    def address(self, path: str, value: object, allow_port_zero: bool) -> tuple[str, int] | None:
        if not isinstance(value, str):
            self.fail(path, f'expected "host:port", got {describe(value)}')
            return None
        text = self.expand(path, value)
        if text is None:
            return None
        try:
            return parse_host_port(text, allow_port_zero)
        except ValueError as exc:
            self.fail(path, str(exc))
            return None
