"""Read a W&B offline run back through W&B's own record format, waiting for its writer.

An offline run is a transaction log (``run-<id>.wandb``): a 7-byte header, then 32 KiB blocks of
records (crc32, little-endian length, type: full / first / middle / last), each payload one
``wandb_internal_pb2.Record``. wandb-core writes it asynchronously, so a reader that looks while
the run is still being written sees a prefix. ``read_offline_run`` waits until the log holds the
run's ``exit`` record (the writer's last one) and returns the decoded records.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any

_HEADER = 7
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def decode_records(data: bytes) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    if not data.startswith(b":W&B"):
        raise ValueError("not a W&B transaction log")
    payloads: list[bytes] = []
    pos, pending = _HEADER, b""
    while pos + 7 <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < 7:  # a block's tail too short for a record header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += 7
            continue
        if pos + 7 + length > len(data):
            break  # a record still being written
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            payloads.append(payload)
        elif kind == _FIRST:
            pending = payload
        elif kind == _MIDDLE:
            pending += payload
        elif kind == _LAST:
            payloads.append(pending + payload)
            pending = b""
    records = []
    for payload in payloads:
        record = pb.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def read_offline_run(run_dir: Path, timeout: float = 120.0) -> list[Any]:
    """The records of one offline run folder, once its writer has written the exit record."""
    deadline = time.monotonic() + timeout
    while True:
        logs = sorted(run_dir.glob("*.wandb"))
        records = decode_records(logs[0].read_bytes()) if logs else []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            kinds = [r.WhichOneof("record_type") for r in records]
            raise TimeoutError(f"{run_dir}: no exit record after {timeout} s; records {kinds}")
        time.sleep(0.2)


def history_keys(records: list[Any]) -> set[str]:
    """Logged metric names (W&B stores them as ``nested_key`` parts or as ``key``)."""
    return {
        item.key or "/".join(item.nested_key)
        for r in records
        if r.HasField("history")
        for item in r.history.item
    }


def config_keys(records: list[Any]) -> set[str]:
    return {item.key for r in records if r.HasField("config") for item in r.config.update}
