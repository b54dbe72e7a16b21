"""The engine in-process (no HTTP): adapters loaded on demand over one base and unloaded least recently
used first within the memory budget, a model too big for the budget refused by name, a user over the
concurrency cap waiting rather than failing, and the request checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tunery.errors import InvalidRequest
from tunery.inference.engine import Limits, TransformersEngine
from tunery.inference.pool import ModelPool, PoolOptions
from tunery.inference.protocol import GenerateRequest, ModelRef, Sampling


def make_engine(tiny_llama: Path, adapters: dict[str, Path], budget: int, per_user: int = 4) -> TransformersEngine:
    options = PoolOptions(budget_bytes=budget, dtype="float32", device="cpu", max_batch_size=8, max_batch_tokens=4096,
                          wait_for_room_s=5)
    pool = ModelPool(options, locate_base=lambda ref: tiny_llama, fetch=lambda key: adapters[key])
    return TransformersEngine(pool, Limits(max_tokens=64, per_user=per_user, max_pending=16))


def request(adapter: str | None = None, user: str = "u", **fields: Any) -> GenerateRequest:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, **fields}
    return GenerateRequest(model=ModelRef(base="tunery/tiny-llama", adapter_key=adapter), user=user,
                           sampling=Sampling(temperature=0, ignore_eos=True), **body)


async def drain(events: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e async for e in events]


def adapter_names(engine: TransformersEngine) -> list[str]:
    return [a["name"] for m in engine.pool.loaded() for a in m["adapters"]]


def test_adapters_load_on_demand_and_the_least_recently_used_is_unloaded(tiny_llama: Path,
                                                                         adapters: tuple[Path, Path]) -> None:
    dirs = {"blob/a": adapters[0], "blob/b": adapters[1]}
    engine = make_engine(tiny_llama, dirs, budget=1 << 40)

    async def scenario() -> None:
        base = await drain(await engine.open(request()))
        assert [e["type"] for e in base] == ["start"] + ["token"] * 4 + ["end"]
        answer_a = await drain(await engine.open(request("blob/a")))
        assert len(adapter_names(engine)) == 1
        # Room for the base and one adapter only: using b unloads a, which nothing is using.
        (a_name,) = adapter_names(engine)
        largest = max(sum(f.stat().st_size for f in d.glob("adapter_model.*")) for d in dirs.values())
        engine.pool.options.budget_bytes = engine.pool.loaded()[0]["bytes"] + largest + 1024
        await drain(await engine.open(request("blob/b")))
        (only,) = adapter_names(engine)
        assert only != a_name
        # a comes back on demand, with the same answer as before.
        assert await drain(await engine.open(request("blob/a"))) == answer_a

    try:
        asyncio.run(scenario())
    finally:
        engine.close()


def test_a_model_over_the_budget_is_refused_and_checks_name_the_field(tiny_llama: Path) -> None:
    engine = make_engine(tiny_llama, {}, budget=1000)

    async def scenario() -> None:
        with pytest.raises(InvalidRequest, match="TUNERY_INFERENCE_MEMORY_MB"):
            await engine.open(request())
        engine.pool.options.budget_bytes = 1 << 40
        with pytest.raises(InvalidRequest) as too_many:
            await engine.open(request(max_tokens=65))
        assert too_many.value.param == "max_tokens"
        with pytest.raises(InvalidRequest) as too_long:
            await engine.open(request(messages=None, prompt=[5] * 2000))
        assert too_long.value.code == "context_length_exceeded"
        truncated = await drain(await engine.open(request(messages=None, prompt=[5] * 1020, max_tokens=60,
                                                          context_length_exceeded_behavior="truncate")))
        assert truncated[-1]["completion_tokens"] == 4 and truncated[-1]["finish_reason"] == "length"

    try:
        asyncio.run(scenario())
    finally:
        engine.close()


def test_a_user_over_the_cap_waits_for_a_turn(tiny_llama: Path) -> None:
    engine = make_engine(tiny_llama, {}, budget=1 << 40, per_user=1)

    async def scenario() -> None:
        first = await engine.open(request())
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(second_open := asyncio.ensure_future(engine.open(request()))), 1.0)
        other_user = await drain(await engine.open(request(user="v")))  # others are not held up
        assert other_user[-1]["type"] == "end"
        await drain(first)
        assert (await drain(await second_open))[-1]["type"] == "end"

    try:
        asyncio.run(scenario())
    finally:
        engine.close()
