"""Choosing a policy by registered name or by a dotted path to a user's own policy class."""

from __future__ import annotations

import importlib
from typing import Any

from farmhand.core.policies import Policy, policy_class, policy_names


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` strings as keyword options; numbers become numbers."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"policy option {pair!r}: expected key=value")
        value: Any = raw
        for convert in (int, float):
            try:
                value = convert(raw)
                break
            except ValueError:
                continue
        options[key] = value
    return options


def load_policy(name: str, options: dict[str, Any] | None = None) -> Policy:
    """A policy instance: a registered name (``farmhand policies``), or ``package.module:Class`` /
    ``package.module.Class`` naming a :class:`~farmhand.core.policies.Policy` subclass."""
    options = options or {}
    if name in policy_names():
        cls: Any = policy_class(name)
    elif "." in name or ":" in name:
        module_name, sep, attr = name.partition(":")
        if not sep:
            module_name, _, attr = name.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"policy {name!r}: cannot import {module_name!r} ({exc})") from None
        cls = getattr(module, attr, None)
        if cls is None:
            raise ValueError(f"policy {name!r}: module {module_name!r} has no {attr!r}")
        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            raise ValueError(f"policy {name!r}: {attr!r} is not a Policy subclass")
    else:
        raise ValueError(f"unknown policy {name!r} (known: {', '.join(policy_names())}, or a dotted path)")
    try:
        policy: Policy = cls(**options)
    except TypeError as exc:
        raise ValueError(f"policy {name!r}: bad options {options} ({exc})") from None
    except ValueError as exc:
        raise ValueError(f"policy {name!r}: {exc}") from None
    return policy
