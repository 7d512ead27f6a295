"""The vocode service (`server.service`) without a protocol: what /v1, its stream and v2 call, and a new protocol
(gRPC) would call too. Its answers are the routes' answers, and the client's mistakes come back as `PlanError`."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from model.audio import pcm16
from model.plan import BDDM, PROJECTION, PlanError
from server import Settings
from test_server_api import NPY, audio_of, mel, npy, started


@pytest.fixture(scope="module")
def client(tiny_weights):
    c = started(Settings(weights=tiny_weights, device="cpu", batch_wait_ms=0))
    yield c
    c.__exit__(None, None, None)


def call(client, fn, *args):
    """Run one of the service's coroutines on the app's event loop, where its engine runs."""
    return client.portal.call(partial(fn, *args))


def test_a_batch_is_each_items_own_seeded_request(client):
    service, mels = client.app.state.service, [mel(12, 1), mel(9, 2)]
    done = call(client, service.vocode, mels, BDDM, "fast", 2, 40)
    assert [len(r.audio) for r in done.results] == [m.shape[-1] * 256 for m in mels]
    for b, (m, result) in enumerate(zip(mels, done.results)):
        route = audio_of(client.post("/v1/vocode", content=npy(m), headers=NPY,
                                     params={"rho": "fast", "refine": 2, "seed": 40 + b, "method": BDDM}))
        assert np.array_equal(np.frombuffer(pcm16(result.audio), np.int16), route)
    facts = done.planned.facts()
    assert facts["method"] == BDDM and facts["refine"] == 2 and facts["steps"] == done.planned.plan.steps >= 1
    assert facts["schedule_cache"] == "hit" and done.planned.plan.preset == "fast"


def test_projection_has_no_rho_and_no_step(client):
    done = call(client, client.app.state.service.vocode, [mel(8)], PROJECTION, None, 3, 1)
    assert done.planned.facts() == {"method": PROJECTION, "steps": 0, "refine": 3}


@pytest.mark.parametrize("rho, refine, title", [("slow", None, "invalid rho"), (1.5, None, "invalid rho"),
                                                ("fast", 10**6, "invalid refine")])
def test_bad_knobs_are_plan_errors(client, rho, refine, title):
    with pytest.raises(PlanError) as e:
        call(client, client.app.state.service.vocode, [mel(8)], BDDM, rho, refine, None)
    assert e.value.title == title


def test_a_stream_is_planned_once_and_its_chunks_are_the_whole(client):
    service, m = client.app.state.service, mel(40, 3)
    whole = call(client, service.vocode, [m], BDDM, "fast", 0, 5).results[0].audio

    async def collect():
        streamed = await service.stream(m, BDDM, "fast", 0, 5)
        return streamed.planned, [streamed.first.audio] + [r.audio async for r in streamed.rest]

    planned, chunks = client.portal.call(collect)
    assert planned.plan.preset == "fast" and np.abs(np.concatenate(chunks) - whole).max() < 1e-5
