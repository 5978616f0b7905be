"""Random PATCH and message sequences against a model of the contract's rules."""

import json
import random

import pytest
from contract import ALLOWED, STATUSES

from sessions_app.merge_patch import merge_patch

VALUES = [None, 0, 1, 1.0, True, False, "", "x", [], [1], {}, {"k": 1}, {"k": None}]
KEYS = ["a", "b", "k"]


def random_data_patch(rng):
    patch = {}
    for key in rng.sample(KEYS, rng.randint(0, 2)):
        value = rng.choice(VALUES)
        if rng.random() < 0.3:
            value = {rng.choice(KEYS): rng.choice(VALUES)}
        patch[key] = value
    return patch


def random_body(rng):
    body = {}
    if rng.random() < 0.5:
        body["status"] = rng.choice(STATUSES)
    if rng.random() < 0.6:
        body["data"] = random_data_patch(rng)
    if rng.random() < 0.3:
        body["prompt"] = rng.choice([None, "", "p", "q"])
    return body


def same_json(a, b):
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.mark.parametrize("seed", range(4))
def test_random_sequences_follow_the_rules(api, client, seed):
    rng = random.Random(seed)
    model = api.create(data={"a": 1}, prompt="p")
    count = 0
    for _ in range(40):
        before = api.get(model["id"])
        if rng.random() < 0.25:
            response = client.post(
                f"/api/sessions/{model['id']}/message",
                json={"content": "m", "role": rng.choice(["user", "assistant", "system"])},
            )
            if model["status"] in ("completed", "failed"):
                assert response.status_code == 409
                changed = False
            else:
                assert response.status_code == 201
                count += 1
                if model["status"] == "created":
                    model["status"] = "active"
                changed = True
        else:
            body = random_body(rng)
            response = client.patch(f"/api/sessions/{model['id']}", json=body)
            new = body.get("status", model["status"])
            if new != model["status"] and new not in ALLOWED[model["status"]]:
                assert response.status_code == 409, body
                changed = False
            else:
                assert response.status_code == 200, (body, response.get_json())
                data = merge_patch(model["data"], body.get("data", {}))
                prompt = body.get("prompt", model["prompt"])
                changed = (
                    new != model["status"]
                    or not same_json(data, model["data"])
                    or prompt != model["prompt"]
                )
                model.update(status=new, data=data, prompt=prompt)
        after = api.get(model["id"])
        assert after["status"] == model["status"]
        assert same_json(after["data"], model["data"])
        assert after["prompt"] == model["prompt"]
        assert after["message_count"] == count
        assert (after["last_active"] != before["last_active"]) is changed
    assert len(api.messages(model["id"], limit=1000)["messages"]) == count
