"""The fair-share order's arithmetic: `Turns.jobs_ahead` against a simulation of the take
script's rule (lowest virtual time first, ties by owner name, each start moving the owner
on by its step from the clock)."""

from __future__ import annotations

import random
import uuid

import uuid_utils.compat as uuid_utils

from darkroom import scheduling
from darkroom.scheduling import STEP_SCALE, OwnerTurn, Turns


def _simulate(owners: list[OwnerTurn], clock: int) -> list[tuple[str, int]]:
    """The order jobs start in, as the take script picks them: (owner, index in its line)."""
    state = {turn.owner: [turn.start, turn.step, turn.waiting, 0] for turn in owners}
    order = []
    while any(waiting > taken for _, _, waiting, taken in state.values()):
        start, owner = min(
            (max(vtime, clock), owner)
            for owner, (vtime, _, waiting, taken) in state.items()
            if waiting > taken
        )
        order.append((owner, state[owner][3]))
        state[owner][3] += 1
        state[owner][0] = start + state[owner][1]
        clock = max(clock, start)
    return order


def _owners(count: int, rng: random.Random, most: int) -> list[OwnerTurn]:
    weights = [1.0, 1.0, 2.0, 0.5, 3.0, 0.75]
    return [
        OwnerTurn(
            f"owner-{index:04d}",
            rng.choice([0, 500, 1_000, 2_250, rng.randrange(3_000)]),
            scheduling.step(rng.choice(weights)),
            rng.randint(0, most),
        )
        for index in range(count)
    ]


def test_positions_are_the_order_jobs_start_in() -> None:
    rng = random.Random(7)  # noqa: S311 - a seeded simulation, not cryptography
    for _ in range(300):
        owners = _owners(rng.randint(1, 8), rng, 6)
        turns = Turns.of(0, owners)
        for position, (owner, rank) in enumerate(_simulate(owners, 0)):
            assert turns.jobs_ahead(owner, rank) == position, (owners, owner, rank)


def test_positions_are_exact_among_many_owners_too() -> None:
    rng = random.Random(11)  # noqa: S311 - a seeded simulation, not cryptography
    owners = _owners(300, rng, 40)
    turns = Turns.of(0, owners)
    order = _simulate(owners, 0)
    for position, (owner, rank) in rng.sample(list(enumerate(order)), 300):
        assert turns.jobs_ahead(owner, rank) == position


def test_a_newcomer_is_next_whatever_the_backlog() -> None:
    turns = Turns.of(5_000, [OwnerTurn("a", 5_500, STEP_SCALE, 2_000)])
    assert turns.jobs_ahead("b", 0) == 0  # b enters at the clock, before a's next turn
    assert turns.jobs_ahead("b", 1) == 2  # then they alternate: b, a, b, a, ...
    assert turns.jobs_ahead("a", 10) == 10


def test_weights_become_steps() -> None:
    assert scheduling.step(1) == STEP_SCALE
    assert scheduling.step(2) * 2 == scheduling.step(1)
    assert scheduling.step(1_000) == 1
    assert scheduling.step(0.001) == STEP_SCALE * 1_000


def test_the_order_is_priority_then_age() -> None:
    older, newer = uuid_utils.uuid7(), uuid_utils.uuid7()
    assert scheduling.created_ms(older) <= scheduling.created_ms(newer)
    assert scheduling.band(10) < scheduling.band(0) < scheduling.band(-10)
    # An urgent new job still sorts before an old normal one.
    assert scheduling.band(1) + scheduling.created_ms(newer) < scheduling.band(0)
    assert scheduling.created_ms(uuid.uuid4()) == 0
