"""The server starts with embedded defaults, enforces keys, and answers errors in Together's shape."""

from __future__ import annotations

import stat

import httpx

from tests.conftest import LiveServer


def test_first_start_writes_a_private_key_and_whoami_answers(live_server: LiveServer) -> None:
    key_file = live_server.data_dir / "api_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    r = httpx.get(live_server.base_url + "/v3/whoami", headers={"Authorization": f"Bearer {live_server.api_key}"})
    assert r.status_code == 200
    assert r.json()["user"]["name"] == "default"


def test_missing_and_bad_keys_are_401_in_together_shape(live_server: LiveServer) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        r = httpx.get(live_server.base_url + "/v3/whoami", headers=headers)
        assert r.status_code == 401
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["type"] == "authentication_error"


def test_unknown_route_is_404_and_openapi_is_served(live_server: LiveServer) -> None:
    r = httpx.get(live_server.base_url + "/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert httpx.get(live_server.base_url + "/openapi.json").json()["info"]["title"] == "tunery"
    assert httpx.get(live_server.base_url + "/docs").status_code == 200


def test_new_keys_work_and_revoked_keys_do_not(live_server: LiveServer) -> None:
    key = live_server.create_key("alice")
    url = live_server.base_url + "/v3/whoami"
    assert httpx.get(url, headers={"Authorization": f"Bearer {key}"}).json()["user"]["name"] == "alice"
    import subprocess

    from tests.conftest import TUNERY

    subprocess.run([TUNERY, "keys", "revoke", key, "--data-dir", str(live_server.data_dir)],
                   env=live_server.env, check=True, capture_output=True)
    assert httpx.get(url, headers={"Authorization": f"Bearer {key}"}).status_code == 401
