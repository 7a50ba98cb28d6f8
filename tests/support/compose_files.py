"""The compose files as data: what the deployment's static checks and its real run read."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = {"default": ROOT / "compose.yaml", "mongo": ROOT / "compose.mongo.yaml"}
BYTE_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def compose_file(stack: str) -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILES[stack].read_text())


def services(stack: str) -> dict[str, dict[str, Any]]:
    return compose_file(stack)["services"]


def megabytes(text: str) -> float:
    parsed = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmg])b?", text.lower())
    assert parsed is not None, f"not a compose byte value: {text}"
    amount, unit = parsed.groups()
    return float(amount) * BYTE_UNITS[unit] / 1024**2


def limits(service: dict[str, Any]) -> tuple[float, float]:
    capped = service["deploy"]["resources"]["limits"]
    return float(capped["cpus"]), megabytes(capped["memory"])
