"""The upload-URL signer, with a fake clock."""

from __future__ import annotations

import pytest

from tunery.api.signing import FILE, PART, UploadSigner
from tunery.errors import Forbidden


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_token_verifies_until_it_expires() -> None:
    clock = FakeClock()
    signer = UploadSigner(b"k" * 32, ttl_s=60, clock=clock)
    token = signer.sign(FILE, "file-1")
    assert signer.expires_at(token) == 1_000_060
    signer.verify(FILE, "file-1", token)
    clock.now += 60
    signer.verify(FILE, "file-1", token)  # the last valid second
    clock.now += 1
    with pytest.raises(Forbidden, match="expired"):
        signer.verify(FILE, "file-1", token)


@pytest.mark.parametrize("change", ["subject", "kind", "key", "mac", "expiry", "empty", "malformed", "unicode"])
def test_any_change_is_forbidden(change: str) -> None:
    signer = UploadSigner(b"k" * 32, ttl_s=60, clock=FakeClock())
    token = signer.sign(PART, "up-1/1")
    expires, _, mac = token.partition(".")
    kind, subject, verifier = PART, "up-1/1", signer
    if change == "subject":
        subject = "up-1/2"
    elif change == "kind":
        kind = FILE
    elif change == "key":
        verifier = UploadSigner(b"other-key", ttl_s=60, clock=FakeClock())
    elif change == "mac":
        token = f"{expires}.{mac[::-1]}"
    elif change == "expiry":
        token = f"{int(expires) + 1}.{mac}"
    elif change == "empty":
        token = ""
    elif change == "malformed":
        token = "no-dot-here"
    elif change == "unicode":
        token = f"{expires}.ünïcode"
    with pytest.raises(Forbidden):
        verifier.verify(kind, subject, token)


def test_an_empty_key_is_refused() -> None:
    with pytest.raises(ValueError):
        UploadSigner(b"", ttl_s=60)
