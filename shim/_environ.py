"""What the environment says: the routing overrides and the kill switch.

The environment is passed in as a mapping (``os.environ`` by default, higher up); this
module reads it, never writes it. It sits above the values (it builds new
:class:`~shim._values.RoutingConfig` values from the overrides) and logs one warning for a
kill-switch value it does not recognise, so it is not part of the pure core.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final

from shim._errors import ConfigError
from shim._logs import get_logger
from shim._routing import parse_mode
from shim._validate import Invalid, percent_to_buckets
from shim._values import ENV_CANARY_PERCENT, ENV_MODE, MODES, RoutingConfig

__all__ = ["apply_env_overrides", "env_fingerprint", "kill_switch_on"]

_TRUE_VALUES: Final = frozenset({"1", "true", "yes", "on"})
_FALSE_VALUES: Final = frozenset({"", "0", "false", "no", "off"})
#: (variable, value) pairs already warned about (one warning per distinct value).
_WARNED_KILL_VALUES: set[tuple[str, str]] = set()
_log = get_logger("shim.routing")


def env_fingerprint(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The override variables' values: a live config reloads when they change."""
    return env.get(ENV_MODE), env.get(ENV_CANARY_PERCENT)


def apply_env_overrides(cfg: RoutingConfig, env: Mapping[str, str]) -> RoutingConfig:
    """Apply ``COUPON_SHIM_MODE`` and ``COUPON_SHIM_CANARY_PERCENT`` from ``env``.

    An unset or blank variable changes nothing. The mode is case-insensitive.

    Args:
        cfg: the routing config from the file.
        env: the environment (e.g. ``os.environ``).

    Returns:
        ``cfg`` itself when nothing applies, otherwise a new config.

    Raises:
        ConfigError: an invalid value, with ``source="environment"`` and ``key`` the
            variable's name (the value is repeated: these variables hold no secrets).
    """
    changes: dict[str, Any] = {}
    raw_mode = env.get(ENV_MODE, "")
    if raw_mode.strip():
        mode = parse_mode(raw_mode)
        if mode is None:
            raise ConfigError(
                f"must be one of {' | '.join(sorted(MODES))}, got {raw_mode!r}",
                source="environment",
                key=ENV_MODE,
            )
        changes["mode"] = mode
    raw_pct = env.get(ENV_CANARY_PERCENT, "")
    if raw_pct.strip():
        try:
            pct = float(raw_pct.strip())
            percent_to_buckets(pct, ENV_CANARY_PERCENT)
        except (ValueError, Invalid):
            raise ConfigError(
                f"must be a number from 0 to 100 in 0.01 steps, got {raw_pct!r}",
                source="environment",
                key=ENV_CANARY_PERCENT,
            ) from None
        changes["canary_percent"] = pct
    return dataclasses.replace(cfg, **changes) if changes else cfg


def kill_switch_on(cfg: RoutingConfig, env: Mapping[str, str]) -> bool:
    """Whether the kill switch ``env[cfg.kill_switch_env]`` is on.

    ``1``/``true``/``yes``/``on`` turn it on; unset, empty, ``0``/``false``/``no``/``off``
    leave it off (case-insensitive, trimmed). Any other value (``Y``, ``enabled``) is taken as
    ON, the safe side, with a ``coupon_shim.kill_switch_unrecognised`` WARNING event (once per
    distinct value and process).
    """
    raw = env.get(cfg.kill_switch_env)
    if not raw:
        return False
    value = raw.strip().lower()
    if value in _TRUE_VALUES:
        return True
    if value in _FALSE_VALUES:
        return False
    _warn_unrecognised_kill_switch(cfg.kill_switch_env, raw)
    return True


def _warn_unrecognised_kill_switch(name: str, raw: str) -> None:
    key = (name, raw)
    if key in _WARNED_KILL_VALUES:
        return
    if len(_WARNED_KILL_VALUES) < 64:  # bounded, whatever the environment holds
        _WARNED_KILL_VALUES.add(key)
    shown = raw if len(raw) <= 40 else raw[:40] + "…"
    _log.warning(
        "coupon_shim.kill_switch_unrecognised",
        variable=name,
        value=shown,
        treated_as="on",
        hint=f"{name}: use 1/true/yes/on to turn the kill switch on, 0/false/no/off or unset "
        "to turn it off; every call goes to legacy until then",
    )
