"""The on-disk queue: one file per message, moved between directories by rename.

Receive side (on an asyncio loop):

    spool = Spool(root)
    writer = spool.new_message(envelope)      # writer.queue_id for the Received header
    writer.write(received_header); writer.write(chunk) ...
    await writer.commit()                     # durable in incoming/: now send the 250
                                              # SpoolError: answer 452 4.3.1

Delivery side (any number of processes):

    with spool.claim_next() as message:       # None when nothing is due
        ... message.envelope, message.iter_body() ...
        message.mark_delivered([0, 2]); message.mark_deferred([1], "451 4.7.1 later")
        message.defer(next_try)               # or complete(), or release()

Generated mail (bounces): `spool.enqueue(envelope, content) -> queue id`.
Start-up: `spool.recover()`.  Operator: `QueueAdmin(spool)`.
The file format and the durability argument are in docs/spool.md.
This package never imports fastmta.protocol, the server or the config.
"""

from fastmta.spool.admin import QueueAdmin, QueueEntry, QueueStats
from fastmta.spool.core import QUEUES, SYNC_MODES, RecoveryReport, Spool
from fastmta.spool.envelope import Envelope, Recipient, RecipientState
from fastmta.spool.errors import (
    MessageBusyError,
    MessageNotFoundError,
    SpoolCorruptError,
    SpoolError,
)
from fastmta.spool.message import ActiveMessage, MessageFile
from fastmta.spool.queueid import is_queue_id, new_queue_id, normalise_queue_id, queue_id_time
from fastmta.spool.writer import MessageWriter

__all__ = [
    "QUEUES",
    "SYNC_MODES",
    "ActiveMessage",
    "Envelope",
    "MessageBusyError",
    "MessageFile",
    "MessageNotFoundError",
    "MessageWriter",
    "QueueAdmin",
    "QueueEntry",
    "QueueStats",
    "Recipient",
    "RecipientState",
    "RecoveryReport",
    "Spool",
    "SpoolCorruptError",
    "SpoolError",
    "is_queue_id",
    "new_queue_id",
    "normalise_queue_id",
    "queue_id_time",
]
