"""Config files and command-line overrides.

A config is a Python file with ``get_config(arg: str | None) -> ml_collections.ConfigDict``
(big_vision style); ``--config configs/NAME.py:ARG`` passes ARG. A finished run's
``config.json`` is a config too (``--config runs/X/config.json``: the same run again, e.g. with
one key changed). Overrides are dotted keys,
``--config.train.steps=500``; values are parsed as Python literals and must keep the type of the
default. Unknown keys and ill-typed values fail with a message that names the key.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import math
import os
import sys
from typing import Any, Iterable

import ml_collections


from u2qt.errors import ConfigError  # noqa: F401 — raised here, caught by callers as config.ConfigError


def _tuples(value):
    """JSON lists back to the tuples the config families use."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _over_family(tree: dict, path: str) -> ml_collections.ConfigDict:
    """A saved config on top of its family's defaults: a run written before a key was added gets
    that key's default; a key this version no longer has is refused by name."""
    from u2qt import defaults
    family = getattr(defaults, str(tree["task"]), None)
    if tree["task"] not in defaults.TASKS or family is None:
        raise ConfigError(f"{path}: task {tree['task']!r} is not one of {defaults.TASKS}")
    cfg = family()
    base, saved = flat(cfg), flat(_tuples(tree))
    unknown = sorted(set(saved) - set(base))
    if unknown:
        raise ConfigError(f"{path}: keys {unknown} are not in this version's {tree['task']} config (a run from "
                          f"another version of u2qt?)")
    for key, value in saved.items():
        *parents, leaf = key.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        if isinstance(node[leaf], float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        node[leaf] = value
    cfg.lock()
    return cfg


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path!r}")
    if path.endswith(".json"):  # a run's config.json
        if arg:
            raise ConfigError(f"{path}: a config.json takes no :variant (got {arg!r}); override keys instead")
        try:
            tree = json.load(open(path, encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not a JSON config: {e}") from e
        if not isinstance(tree, dict) or "task" not in tree:
            raise ConfigError(f"{path}: not a u2qt run's config.json (no 'task' key)")
        return _over_family(tree, path)
    module_spec = importlib.util.spec_from_file_location(f"u2qt_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"{path}: line {e.lineno}: invalid Python: {e.msg}") from e
    except Exception as e:  # noqa: BLE001 — the config file's own code failed: say where
        raise ConfigError(f"{path}: {_where_in(e, path)}{type(e).__name__}: {e}") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config(arg)")
    try:
        cfg = module.get_config(arg or None)
    except ConfigError:
        raise
    except ValueError as e:  # e.g. an unknown variant
        raise ConfigError(f"{path}: {e}") from e
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{path}: get_config({arg!r}) failed: {_where_in(e, path)}{type(e).__name__}: {e}") from e
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config returned {type(cfg).__name__}, not an ml_collections.ConfigDict")
    cfg.lock()
    return cfg


def _where_in(exc: BaseException, path: str) -> str:
    """"line N: " of the deepest frame of ``exc``'s traceback that is in ``path``, or ""."""
    import traceback
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__)
             if os.path.abspath(f.filename) == os.path.abspath(path)]
    return f"line {lines[-1]}: " if lines else ""


def variants(arg: str | None, where: str, *, choose: dict[str, tuple[str, ...]] = None,
             flags: tuple[str, ...] = ()) -> dict:
    """A config's ``:ARG`` ("beauty,items,runlocal") → {group: choice or None, flag: bool}.

    ``choose`` names groups of which at most one value may be given (e.g. the data set);
    ``flags`` are on when present. Anything else is refused with the known values named.
    """
    choose = choose or {}
    given = set((arg or "").split(",")) - {""}
    known = set(flags).union(*choose.values()) if choose else set(flags)
    unknown = given - known
    if unknown:
        listed = "; ".join(f"{g}: {', '.join(v)}" for g, v in choose.items())
        raise ConfigError(f"{where}: unknown variants {sorted(unknown)} (known: {listed}"
                          f"{'; flags: ' + ', '.join(flags) if flags else ''})")
    out = {}
    for group, values in choose.items():
        picked = given & set(values)
        if len(picked) > 1:
            raise ConfigError(f"{where}: pick one {group} of {', '.join(values)}, got {sorted(picked)}")
        out[group] = picked.pop() if picked else None
    out.update({flag: flag in given for flag in flags})
    return out


def _all_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items():
        keys.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            keys.extend(_all_keys(v, prefix + k + "."))
    return keys


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string


def apply_override(cfg: ml_collections.ConfigDict, key: str, text: str) -> None:
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            close = difflib.get_close_matches(key, _all_keys(cfg), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}")
        if i < len(parts) - 1:
            node = node[part]
    leaf = parts[-1]
    old = node[leaf]
    value = _parse_value(text)
    if isinstance(old, ml_collections.ConfigDict):
        raise ConfigError(f"config key {key!r} is a section; set one of its fields, e.g. {key}.{next(iter(old.keys()))}")
    if isinstance(old, bool) and not isinstance(value, bool):
        raise ConfigError(f"config key {key!r} wants True/False, got {text!r}")
    if isinstance(old, (int, float)) and not isinstance(old, bool):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key {key!r} wants a number, got {text!r}")
        value = type(old)(value) if isinstance(old, float) or float(value).is_integer() else value
        if isinstance(old, int) and not float(value).is_integer():
            raise ConfigError(f"config key {key!r} wants an integer, got {text!r}")
    if isinstance(old, (tuple, list)):
        if isinstance(value, str):
            value = tuple(v for v in value.split(",") if v)
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"config key {key!r} wants a list, got {text!r}")
        if all(isinstance(v, str) for v in old):  # a list of names stays names, even "1,2"
            value = tuple(p.strip().strip("'\"") for p in text.strip("()[] ").split(",") if p.strip())
        value = tuple(value)
    if isinstance(old, str) and not isinstance(value, str):
        value = text
    with node.unlocked():
        node[leaf] = value


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Iterable[tuple[str, str]]) -> ml_collections.ConfigDict:
    for key, text in overrides:
        apply_override(cfg, key, text)
    return cfg


TRAIN_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py")


def train_command(spec: str, workdir: str, overrides: dict) -> list[str]:
    """The command line that runs ``train.py`` on ``spec`` in ``workdir`` with dotted
    ``overrides`` (strings as they are, other values as Python literals): what ``parse_args``
    reads back. Tools that start runs in a child process (sweeps, the attribute task) use it."""
    return [sys.executable, TRAIN_PY, "--config", spec, "--workdir", workdir,
            *[f"--config.{k}={v if isinstance(v, str) else repr(v)}" for k, v in overrides.items()]]


def parse_args(argv: list[str], default_config: str) -> tuple[ml_collections.ConfigDict, str | None]:
    """``--config FILE[:ARG] --workdir DIR --config.a.b=VALUE ...`` → (config, workdir)."""
    config_spec, workdir, overrides = default_config, None, []
    it = iter(argv)
    for token in it:
        name, eq, value = token.partition("=")
        if name in ("--config", "--workdir") and not eq:
            try:
                value = next(it)
            except StopIteration:
                raise ConfigError(f"{name} needs a value") from None
        if name == "--config":
            config_spec = value
        elif name == "--workdir":
            workdir = value
        elif name.startswith("--config."):
            if not eq:
                try:
                    value = next(it)
                except StopIteration:
                    raise ConfigError(f"{name} needs a value") from None
            overrides.append((name[len("--config."):], value))
        elif name in ("-h", "--help"):
            raise SystemExit(__doc__ + "\nusage: python train.py [--config FILE[:ARG]] [--workdir DIR] [--config.KEY=VALUE ...]")
        else:
            raise ConfigError(f"unknown argument {token!r}; expected --config, --workdir or --config.KEY=VALUE")
    cfg = load_config_file(config_spec)
    return apply_overrides(cfg, overrides), workdir


def flat(tree, prefix: str = "") -> dict:
    """{"train.steps": 500, ...}: the leaves of a config (or of its JSON dict) by dotted key."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, (dict, ml_collections.ConfigDict)):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def to_json(cfg: ml_collections.ConfigDict) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=list)


def validate(cfg: ml_collections.ConfigDict, constraints: dict, rules=lambda cfg: []) -> None:
    """Every value constraint (``constraints``: key -> (test, what it must be); a key the config
    does not hold is skipped) and cross-key rule (``rules(cfg)`` -> problems), checked before any
    data is read or anything compiles; all problems are reported at once. The declarations live
    next to the defaults (``u2qt.defaults.CONSTRAINTS``, ``cross_key_problems``)."""
    problems = [f"{key}={value!r} must be a finite number" for key, value in flat(cfg).items()
                if isinstance(value, float) and not math.isfinite(value)]
    for key, (test, want) in constraints.items():
        node, found = cfg, True
        for part in key.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                found = False
                break
            node = node[part]
        if not found:
            continue
        try:
            ok = bool(test(node))
        except TypeError:
            ok = False
        if not ok:
            problems.append(f"{key}={node!r} must be {want}")
    problems += rules(cfg)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
