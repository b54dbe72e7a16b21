"""Which URLs a request may make the server call: the operator's list, and never into the server's
own network through a wildcard or an address."""

from __future__ import annotations

import pytest

from tunery.errors import InvalidRequest
from tunery.outbound import check_url, parse_allow_list

ALLOW = parse_allow_list("https://api.wandb.ai, https://*.wandb.example, http://wandb.internal:8080")


def resolves_to(*addresses: str):  # type: ignore[no-untyped-def]
    return lambda host: list(addresses)


@pytest.mark.parametrize("url", ["https://api.wandb.ai", "https://api.wandb.ai/", "https://api.wandb.ai:443/x",
                                 "http://wandb.internal:8080"])
def test_hosts_the_operator_named_are_allowed_as_named(url: str) -> None:
    check_url(url, ALLOW, param="wandb_base_url", resolve=resolves_to("10.0.0.5"))


def test_a_wildcard_host_must_resolve_to_public_addresses() -> None:
    check_url("https://eu.wandb.example", ALLOW, param="u", resolve=resolves_to("93.184.216.34"))
    for inside in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1", "fe80::1", "::ffff:127.0.0.1"):
        with pytest.raises(InvalidRequest, match="address"):
            check_url("https://eu.wandb.example", ALLOW, param="u", resolve=resolves_to("93.184.216.34", inside))


@pytest.mark.parametrize("url", ["http://api.wandb.ai", "https://api.wandb.ai:8443", "https://wandb.example.evil.com",
                                 "https://evilwandb.example", "http://127.0.0.1:9999", "http://[::1]/",
                                 "ftp://api.wandb.ai", "https://u:p@api.wandb.ai", "api.wandb.ai", "https://"])
def test_anything_else_is_refused_naming_the_field(url: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_url(url, ALLOW, param="wandb_base_url", resolve=resolves_to("93.184.216.34"))
    assert caught.value.param == "wandb_base_url"


def test_the_allow_list_must_be_urls() -> None:
    with pytest.raises(ValueError, match="scheme://host"):
        parse_allow_list("api.wandb.ai")
