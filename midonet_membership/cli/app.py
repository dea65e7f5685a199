"""What ``neutron`` and ``midonet-db-manage`` share: the cliff App, error output, columns.

cliff already turns an exception raised by a command into a logged message and exit status 1
(and a traceback only with ``--debug``); this module only makes that message read like
python-neutronclient's (``Error: ...`` on stderr) and gives nested values a column type that
tables show as text and ``-f json``/``-f yaml`` keep as structures.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from cliff.app import App
from cliff.columns import FormattableColumn
from cliff.command import Command
from cliff.commandmanager import CommandManager

VERSION = "0.1.0"


class CommandError(Exception):
    """A failure the user can act on; its message is all they see (no traceback)."""


class JsonColumn(FormattableColumn[Any]):
    """A dict or list: compact sorted JSON in tables and ``-f value``, a structure in json/yaml."""

    def human_readable(self) -> str:
        return json.dumps(self._value, sort_keys=True)


def column(value: Any) -> Any:
    """Wrap nested values so every formatter renders them sensibly; scalars stay as they are."""
    return JsonColumn(value) if isinstance(value, dict | list) else value


class _ErrorFormatter(logging.Formatter):
    """Prefix error records with ``Error: `` on each line; other levels print as they are."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.ERROR:
            # A copy: other handlers (cliff's --log-file) keep the plain message.
            record = logging.makeLogRecord(record.__dict__)
            record.msg = "\n".join(f"Error: {line}" if line else line
                                   for line in record.getMessage().split("\n"))
            record.args = None
        return super().format(record)


class BaseApp(App):
    """A cliff App whose commands are registered in code (no entry points to install)."""

    def __init__(self, description: str, namespace: str,
                 commands: Mapping[str, type[Command]]) -> None:
        manager = CommandManager(namespace)
        for name, command in commands.items():
            manager.add_command(name, command)
        super().__init__(description=description, version=VERSION,
                         command_manager=manager, deferred_help=True)

    def configure_logging(self) -> None:
        super().configure_logging()
        for handler in logging.getLogger("").handlers:
            if getattr(handler, "stream", None) is self.stderr:
                handler.setFormatter(_ErrorFormatter(self.CONSOLE_MESSAGE_FORMAT))
