"""The embedded broker survives torn message files instead of stopping the worker."""

from __future__ import annotations

from pathlib import Path

from kombu import Connection


def connect(folder: Path) -> Connection:
    return Connection(
        "filesystem://",
        transport="worker.runtime.embedded_broker:Transport",
        transport_options={
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "control_folder": str(folder / "control"),
        },
    )


def test_messages_round_trip_and_torn_files_are_skipped(tmp_path: Path) -> None:
    with connect(tmp_path) as conn:
        queue = conn.SimpleQueue("jobtracker")
        # What a process killed mid-write leaves behind: an empty and a truncated file,
        # older than the good message.
        (tmp_path / "1_dead.jobtracker.msg").write_bytes(b"")
        (tmp_path / "2_dead.jobtracker.msg").write_bytes(b'{"body": "trunc')
        queue.put({"hello": "world"})
        message = queue.get(timeout=2)
        assert message.payload == {"hello": "world"}
        message.ack()
        queue.close()
    assert not list(tmp_path.glob(".*.part")), "no temporary file is left behind"
