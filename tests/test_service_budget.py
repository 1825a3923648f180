"""service/budget.py: one budget for upload bytes in memory, shared by all requests."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi import HTTPException
from service_support import post_scene, scene, serve, settings_for, tiny_artifacts

from service.budget import UploadBudget


def test_requests_wait_for_room_in_arrival_order() -> None:
    async def run() -> list[str]:
        budget = UploadBudget(100, wait_s=5)
        order: list[str] = []

        async def use(name: str, size: int, hold_s: float) -> None:
            async with budget.hold(size):
                order.append(name)
                assert budget.held <= budget.capacity
                await asyncio.sleep(hold_s)

        first = asyncio.create_task(use("a", 80, 0.05))
        await asyncio.sleep(0)
        second = asyncio.create_task(use("b", 50, 0))
        await asyncio.sleep(0)
        third = asyncio.create_task(use("c", 10, 0))  # fits now, but b waits before it
        await asyncio.gather(first, second, third)
        assert budget.held == 0
        return order

    assert asyncio.run(run()) == ["a", "b", "c"]


def test_no_room_in_time_is_503_with_retry_after_and_gives_nothing_away() -> None:
    async def run() -> None:
        budget = UploadBudget(100, wait_s=0.05)
        async with budget.hold(100):
            with pytest.raises(HTTPException) as caught:
                async with budget.hold(1):
                    pass
            assert caught.value.status_code == 503
            assert caught.value.headers == {"Retry-After": "1"}
        assert budget.held == 0
        async with budget.hold(100):  # the timed-out waiter is gone: all of it is free again
            assert budget.held == 100

    asyncio.run(run())


def test_a_failing_request_gives_its_bytes_back() -> None:
    async def run() -> None:
        budget = UploadBudget(10, wait_s=1)
        with pytest.raises(ValueError):
            async with budget.hold(10):
                raise ValueError("boom")
        assert budget.held == 0
        async with budget.hold(10**9):  # bigger than the budget: waits for all of it
            assert budget.held == 10

    asyncio.run(run())


def test_a_request_that_finds_no_room_in_time_gets_503_with_retry_after(stl_dir: Path) -> None:
    settings = settings_for(tiny_artifacts(stl_dir), stl_dir, upload_wait_s=0.2)
    with serve(settings) as client:
        category = client.get("/categories").json()["categories"][0]["name"]
        budget = client.app.state.upload_budget  # type: ignore[attr-defined]
        assert budget.try_take(budget.capacity)  # every byte held by "other requests"
        try:
            for path, data in (
                ("/complete-the-look", {"category": category}),
                ("/score", {"product_ids": "x"}),
            ):
                r = client.post(
                    path, files={"image": ("s.jpg", scene(stl_dir, 0), "image/jpeg")}, data=data
                )
                assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
                assert "budget" in r.json()["detail"]
        finally:
            budget.give(budget.capacity)
        assert post_scene(client, scene(stl_dir, 0), category).status_code == 200
