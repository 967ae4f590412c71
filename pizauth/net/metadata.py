"""An issuer's authorization server metadata (OpenID Connect Discovery, RFC 8414).

`fetch_metadata` tries, in order, each document a provider may publish, going on to
the next only when one is not there (404, 410):

1. ISSUER/.well-known/openid-configuration (OpenID Connect Discovery);
2. https://HOST/.well-known/oauth-authorization-server/PATH (RFC 8414 §3);
3. ISSUER/.well-known/oauth-authorization-server (the form some servers use instead;
   the same as 2 for an issuer without a path).

The first document found is the issuer's. When it lacks an endpoint (an OpenID document
without `revocation_endpoint`, say), the RFC 8414 documents after it are asked for that
endpoint only: the first one found fills in what the first document left out, never
replacing what it gave. A later document that cannot be had for now makes the whole result
transient (asked again on the next need); one that is not there or cannot be used (another
issuer, a malformed endpoint) is ignored, and the first document stands alone.

Endpoints must be https, except that an issuer on this machine (localhost, 127.0.0.0/8,
::1) may name plain http endpoints on this machine (uri.endpoint_allowed): a remote issuer
whose document names an http endpoint is refused.

Outcomes: "ok"; "transient" when the document could not be had for now (network
failure, timeout, 408/429/5xx): try again later; "permanent" when what the provider
publishes cannot be used (no document, not a JSON object, an issuer that is not the
configured one, a malformed endpoint). A permanent result carries no endpoints at all:
one bad field discredits the whole document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import requests

from pizauth.ipc import NetMetadata, TokenOutcome
from pizauth.net import reply
from pizauth.net.tokenclient import TRANSIENT_STATUSES, _Permanent, _post, _Transient
from pizauth.uri import endpoint_allowed, http_uri

ENDPOINTS = (
    "authorization_endpoint",
    "token_endpoint",
    "device_authorization_endpoint",
    "revocation_endpoint",
)
NOT_FOUND = frozenset({404, 410})
# Microsoft's multi-tenant documents name the issuer with this placeholder segment.
TENANT_PLACEHOLDER = "{tenantid}"


@dataclass(frozen=True)
class Metadata:
    outcome: TokenOutcome
    message: str = ""  # for the user when not ok
    # Each "" when the document does not have it (and always when not ok).
    authorization_endpoint: str = ""
    token_endpoint: str = ""
    device_authorization_endpoint: str = ""
    revocation_endpoint: str = ""


def metadata_uris(issuer: str) -> list[str]:
    """The documents to try for `issuer`, in order (see the module docstring)."""
    base = issuer.rstrip("/")
    parts = urlsplit(base)
    origin = f"{parts.scheme}://{parts.netloc}"
    uris = [
        base + "/.well-known/openid-configuration",
        origin + "/.well-known/oauth-authorization-server" + parts.path,
        base + "/.well-known/oauth-authorization-server",
    ]
    return list(dict.fromkeys(uris))  # one fetch each when forms 2 and 3 coincide


def issuer_matches(published: str, configured: str) -> bool:
    """Whether a document's `issuer` names the configured one: exactly, or with each
    path segment that is Microsoft's {tenantid} standing for any one segment."""
    if published == configured:
        return True
    if TENANT_PLACEHOLDER not in published:
        return False
    scheme, sep, rest = published.partition("://")
    origin, slash, path = rest.partition("/")
    if not sep or not slash or TENANT_PLACEHOLDER in origin:
        return False
    pattern = "/".join(
        "[^/]+" if segment == TENANT_PLACEHOLDER else re.escape(segment)
        for segment in path.split("/")
    )
    return re.fullmatch(re.escape(f"{scheme}://{origin}/") + pattern, configured) is not None


def fetch_metadata(session: requests.Session, request: NetMetadata) -> Metadata:
    """The endpoints the request's issuer publishes, judged as in the module docstring."""
    issuer = request.issuer
    if http_uri(issuer, https_only=True) is None or "?" in issuer:
        return Metadata(TokenOutcome.PERMANENT, f"issuer {issuer!r} is not an https URL")
    uris = metadata_uris(issuer)
    for i, uri in enumerate(uris):
        found = _fetch_document(session, issuer, uri)
        if found is None:
            continue
        if found.outcome is not TokenOutcome.OK:
            return found
        return _fill_in(session, issuer, found, uris[i + 1 :])
    return Metadata(TokenOutcome.PERMANENT, f"no metadata found for issuer {issuer}")


def _fetch_document(session: requests.Session, issuer: str, uri: str) -> Metadata | None:
    """One document judged, or None if it is not there."""
    try:
        got = _post(session, uri, [], method="GET", what="metadata document")
    except _Transient as e:
        return Metadata(TokenOutcome.TRANSIENT, f"couldn't fetch metadata: {e}")
    except _Permanent as e:
        return Metadata(TokenOutcome.PERMANENT, f"couldn't fetch metadata: {e}")
    status, body = got.status, got.body
    if status in NOT_FOUND:
        return None
    if status in TRANSIENT_STATUSES:
        return Metadata(
            TokenOutcome.TRANSIENT, f"couldn't fetch metadata from {uri}: HTTP code {status}"
        )
    if status != 200:
        return Metadata(
            TokenOutcome.PERMANENT, f"couldn't fetch metadata from {uri}: HTTP code {status}"
        )
    return _judge_document(reply.load_json(body), issuer, uri)


def _fill_in(session: requests.Session, issuer: str, first: Metadata, later: list[str]) -> Metadata:
    """`first` with each endpoint it lacks taken from the first later document found."""
    if all(getattr(first, name) for name in ENDPOINTS):
        return first
    for uri in later:
        found = _fetch_document(session, issuer, uri)
        if found is None:
            continue
        if found.outcome is TokenOutcome.TRANSIENT:
            return found
        if found.outcome is not TokenOutcome.OK:
            return first  # unusable: the first document stands alone
        missing = {name: getattr(found, name) for name in ENDPOINTS if not getattr(first, name)}
        return replace(first, **{name: uri for name, uri in missing.items() if uri})
    return first


def _judge_document(doc: object, issuer: str, uri: str) -> Metadata:
    def bad(why: str) -> Metadata:
        return Metadata(TokenOutcome.PERMANENT, f"metadata from {uri} {why}")

    if not isinstance(doc, dict):
        return bad("is not a JSON object")
    published = doc.get("issuer")
    if not isinstance(published, str):
        return bad("has no issuer")
    if not issuer_matches(published, issuer):
        return bad(f"is for issuer {reply.provider_text(published)!r}, not {issuer!r}")
    endpoints: dict[str, str] = {}
    for name in ENDPOINTS:
        value = doc.get(name)
        if value is None:
            continue
        checked = http_uri(value, https_only=False)
        if checked is None or not endpoint_allowed(issuer, checked):
            return bad(f"has a malformed or non-https {name}")
        endpoints[name] = checked
    return Metadata(TokenOutcome.OK, **endpoints)
