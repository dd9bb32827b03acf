"""The embedded broker: kombu's filesystem transport, made safe against torn message files.

kombu writes a message straight into its final file name and a consumer may pick the file up
before the write ends (the consumer moves the file without taking the writer's lock), and a
process killed mid-write leaves an empty or partial file behind. Either one makes the stock
transport raise JSONDecodeError inside the worker's consumer loop, which stops the worker for
good. Here a message is written to a hidden temporary name and renamed into place (atomic on one
filesystem), and an unreadable file is logged and skipped. Nothing is lost by skipping: every
message jobtracker sends can be re-derived from the database.
"""

from __future__ import annotations

import logging
import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

log = logging.getLogger(__name__)


class Channel(filesystem.Channel):
    # kombu's own classes disagree on this parameter's name (message / payload).
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A leading dot keeps the half-written file out of every consumer's listing.
        temporary = os.path.join(self.data_folder_out, f".{name}.part")
        try:
            with open(temporary, "wb") as handle:
                handle.write(str_to_bytes(dumps(payload)))
            os.replace(temporary, final)
        except OSError as exc:
            raise ChannelError(f"cannot add a message to {self.data_folder_out!r}") from exc

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        while True:
            try:
                return super()._get(queue)
            except ValueError as exc:  # JSONDecodeError: a torn file from before this fix
                log.warning("embedded broker: skipped an unreadable message file (%s)", exc)


class Transport(filesystem.Transport):
    Channel = Channel
