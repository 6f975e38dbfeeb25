"""Validate a phase's whole grid before any model work: every failure is one line naming the key,
its value and what is allowed. Every phase's entry point calls `validate_grid` (phases/common.py)."""

from __future__ import annotations

from collections.abc import Iterable

from omegaconf import DictConfig, OmegaConf

from idlekv.config import CONFIG_DIR


class GridError(ValueError):
    """Invalid config values, one line each."""


def _ints(values) -> list:
    return list(values) if isinstance(values, Iterable) and not isinstance(values, str) else [values]


def _check(errors: list[str], key: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        errors.append(f"{key}={value}: {allowed}")


def _positive_int(errors: list[str], key: str, value, upper: int | None = None) -> bool:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1 and (upper is None or value <= upper)
    _check(errors, key, value, ok, f"allowed: an integer from 1 to {upper}" if upper else "allowed: an integer >= 1")
    return ok


def _lengths(errors: list[str], phase: DictConfig, max_positions: int | None) -> list[int]:
    lengths = _ints(phase.lengths) if "lengths" in phase else ([phase.length] if "length" in phase else [])
    for length in lengths:
        _positive_int(errors, "phase.length" if "length" in phase else "phase.lengths", length, max_positions)
    return [n for n in lengths if isinstance(n, int)]


def _budgets(errors: list[str], phase: DictConfig, lengths: list[int]) -> None:
    shortest = min(lengths) if lengths else None
    budgets = _ints(phase.get("budgets", [])) + ([phase.budget] if "budget" in phase else [])
    for b in budgets:
        _positive_int(errors, "phase.budget" if "budget" in phase else "phase.budgets", b, shortest - 1 if shortest else None)
    ks = _ints(phase.get("ks", [])) + ([phase.k] if "k" in phase else [])
    for k in ks:
        if _positive_int(errors, "phase.k" if "k" in phase else "phase.ks", k) and shortest and budgets and all(isinstance(b, int) for b in budgets):
            _check(errors, "phase.ks", k, max(budgets) + k < shortest,
                   f"B + K must stay below the context: the largest B is {max(budgets)} of {shortest} tokens")
    for f in _ints(phase.get("budget_fractions", [])):
        _check(errors, "phase.budget_fractions", f, isinstance(f, (int, float)) and 0 < f <= 1, "allowed: a fraction in (0, 1]")


def _conditions(errors: list[str], cfg: DictConfig) -> None:
    from idlekv.repair.conditions import Condition

    conditions = OmegaConf.to_container(cfg.repair.conditions)
    names = [c.get("name") for c in conditions]
    for name in sorted({n for n in names if names.count(n) > 1}):
        errors.append(f"repair.conditions: {name!r} is named {names.count(name)} times; allowed: each name once")
    for c in conditions:
        try:
            Condition.from_config(c)
        except (TypeError, ValueError, KeyError) as err:
            errors.append(f"repair.conditions[{c.get('name')}]: {err}".replace(f": condition {c.get('name')}:", ":"))
    from idlekv.cache.quant import PRECISIONS

    _check(errors, "repair.warm_precision", cfg.repair.warm_precision, cfg.repair.warm_precision in PRECISIONS,
           f"allowed: {', '.join(PRECISIONS)}")
    _positive_int(errors, "repair.resume_batch_rows", cfg.repair.resume_batch_rows)


def validate_grid(cfg: DictConfig, max_positions: int | None) -> None:
    """Raise GridError listing every invalid value of `cfg`'s phase grid (nothing is loaded or run)."""
    from idlekv.retention import RULES

    errors: list[str] = []
    phase = cfg.phase
    lengths = _lengths(errors, phase, max_positions)
    if "num_samples" in phase:
        _positive_int(errors, "phase.num_samples", phase.num_samples)
    if "max_new_tokens" in phase:
        _positive_int(errors, "phase.max_new_tokens", phase.max_new_tokens)
    if "splits" in phase:
        _check(errors, "phase.splits", dict(phase.splits), len(phase.splits) > 0, "allowed: at least one split")
    _budgets(errors, phase, lengths)
    if ("budgets" in phase or "budget" in phase) and "repair" in cfg:
        _conditions(errors, cfg)
    if ("budgets" in phase or "budget" in phase) and "retention" in cfg:
        _check(errors, "retention.name", cfg.retention.name, cfg.retention.name in RULES, f"allowed: {', '.join(sorted(RULES))}")
    configs = sorted(p.stem for p in (CONFIG_DIR / "retention").glob("*.yaml"))
    for rule in [] if phase.get("rules") == "all" else _ints(phase.get("rules", [])):
        _check(errors, "phase.rules", rule, rule in configs, f"allowed: {', '.join(configs)} (configs/retention/)")
    if errors:
        raise GridError("\n".join(errors))
