"""The queue message: one typed value, one encoder and one decoder, versioned."""

from __future__ import annotations

import uuid

import pytest

from darkroom.queue import MalformedMessageError, QueueMessage, deserialize, serialize


def test_a_message_survives_the_wire() -> None:
    message = QueueMessage(uuid.uuid4(), 2)
    args = deserialize(serialize({"a": list(message.to_args())}))["a"]
    assert args == [1, str(message.job_id), 2]
    assert QueueMessage.from_args(args) == message


def test_a_message_from_before_versions_is_still_read() -> None:
    job_id = uuid.uuid4()
    assert QueueMessage.from_args([str(job_id), 0]) == QueueMessage(job_id, 0)


@pytest.mark.parametrize(
    "args",
    [
        [],
        [1, "not-a-uuid", 0],
        [2, str(uuid.UUID(int=1)), 0],  # a version this code does not read
        [1, str(uuid.UUID(int=1)), "0"],
        [1, str(uuid.UUID(int=1)), -1],
        [1, str(uuid.UUID(int=1)), True],
        [1, 7, 0],
        [1, str(uuid.UUID(int=1)), 0, "extra"],
    ],
)
def test_anything_else_is_malformed(args: list[object]) -> None:
    with pytest.raises(MalformedMessageError):
        QueueMessage.from_args(args)
