"""Session tokens and CSRF tokens: signed, expiring, bound to one session, useless elsewhere."""

from __future__ import annotations

import pytest

from tunery.api.signing import UploadSigner
from tunery.web.auth import SessionSigner, check_login_csrf


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_round_trip_and_expiry() -> None:
    clock = Clock()
    signer = SessionSigner(b"k", ttl_s=60, clock=clock)
    token = signer.sign("key-1")
    assert signer.verify(token) == "key-1"
    clock.now += 60
    assert signer.verify(token) == "key-1"
    clock.now += 1
    assert signer.verify(token) is None


@pytest.mark.parametrize("mangle", [
    lambda t: t.replace("key-1", "key-2"),               # someone else's key id
    lambda t: t.rsplit(".", 2)[0] + ".9999999999." + t.rsplit(".", 1)[1],  # extended expiry
    lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # forged MAC
    lambda t: "", lambda t: "a.b", lambda t: "a.b.c.d", lambda t: "key-1.x1.abc",
])
def test_tampered_tokens_are_rejected(mangle) -> None:  # type: ignore[no-untyped-def]
    signer = SessionSigner(b"k")
    assert signer.verify(mangle(signer.sign("key-1"))) is None


def test_other_keys_and_upload_tokens_do_not_pass() -> None:
    token = SessionSigner(b"k").sign("key-1")
    assert SessionSigner(b"other").verify(token) is None
    # Same secret, different purpose: an upload URL token is not a session.
    upload = UploadSigner(b"k", 60).sign("file", "key-1")
    assert SessionSigner(b"k").verify("key-1." + upload) is None


def test_csrf_is_bound_to_the_session() -> None:
    signer = SessionSigner(b"k")
    a, b = signer.sign("key-1"), signer.sign("key-2")
    assert signer.check_csrf(a, signer.csrf_for(a))
    assert not signer.check_csrf(a, signer.csrf_for(b))
    assert not signer.check_csrf(a, "") and not signer.check_csrf(a, None)


def test_login_double_submit() -> None:
    assert check_login_csrf("abc", "abc")
    assert not check_login_csrf("abc", "abd")
    assert not check_login_csrf(None, "abc") and not check_login_csrf("", "")
