"""Keep user-input errors to one line on the terminal: Prefect logs a task or flow failure
with its traceback; for a VetsetError (bad input, explained in its message) the traceback
says nothing the message does not, so it is dropped from console records."""
from __future__ import annotations

import logging

from pipelines.errors import VetsetError


class DropInputErrorTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, VetsetError):
            record.exc_info = None
            record.exc_text = None
        return True


def install() -> None:
    quiet = DropInputErrorTracebacks()
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", ""):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, DropInputErrorTracebacks) for f in handler.filters):
                handler.addFilter(quiet)
