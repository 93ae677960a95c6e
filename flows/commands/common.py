"""What every command shares: value parsing and turning validation errors into one line."""
from __future__ import annotations

import json
from typing import Any, Callable

from pydantic import BaseModel, ValidationError

from pipelines.errors import VetsetError


def parse_value(text: str) -> Any:
    """JSON when it parses (numbers, booleans, lists), else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def build_params(params_model: type[BaseModel], /, **values: Any) -> Any:
    """Validate flow parameters; the first problem becomes a one-line VetsetError."""
    try:
        return params_model(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise VetsetError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None


def print_table(header: list[str], rows: list[list[str]], out: Callable[[str], Any] = print) -> None:
    if not rows:
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    out("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        out("  ".join(c.ljust(w) for c, w in zip(r, widths)))
