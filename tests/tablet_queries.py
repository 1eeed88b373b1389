"""The tablet's read-only queries (docs/tablet-contract.md, "Queries") to a real daemon over a
real Mosquitto, on the tablet account's own topics."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from tests.mosquitto import Listening, body, tablet

ANSWER_WAIT_S = 15.0  # a history's proposal may be worked out first (up to 10 s)

Ask = Callable[..., Awaitable[dict[str, Any]]]


@asynccontextmanager
async def tablet_queries(broker: Listening, tm: str) -> AsyncIterator[Ask]:
    """``ask(type, **fields)``: a query sent as the tablet, and its answer. Ready once the
    daemon's state says its query connection is up (a query sent before would reach nobody)."""
    p = f"treadmill/{tm}"
    async with tablet(broker, f"{p}/query/tablet/reply", f"{p}/state") as tab:
        await tab.next(
            f"{p}/state",
            lambda m: body(m).get("queries") == {"connected": True},
            within=ANSWER_WAIT_S,
        )

        async def ask(type_: str, **fields: Any) -> dict[str, Any]:
            query_id = uuid.uuid4().hex
            query = {"id": query_id, "type": type_, **fields}
            await tab.publish(f"{p}/query/tablet", json.dumps(query).encode())
            answer = body(
                await tab.next(
                    f"{p}/query/tablet/reply",
                    lambda m: body(m).get("id") == query_id,
                    within=ANSWER_WAIT_S,
                )
            )
            assert isinstance(answer, dict), answer
            return answer

        yield ask
