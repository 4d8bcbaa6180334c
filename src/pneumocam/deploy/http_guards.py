"""Guards of the web service's edge, as plain ASGI middleware (no framework needed to read them).

- BodyLimit counts a request body's bytes as they arrive, so a chunked upload (no Content-Length) is
  stopped at the limit too, before the form parser reads or spools more of it to disk.
- LoopbackHostOnly refuses a Host header that names another host while the service listens on
  loopback without a token: otherwise a web page on any site can point its own domain name at
  127.0.0.1 (DNS rebinding) and read the answers through the user's browser.
"""

from __future__ import annotations

import ipaddress
import json
import os

from pneumocam.errors import PneumocamError


def is_loopback(host: str | None) -> bool:
    """True for localhost and every loopback address (127.0.0.0/8, ::1), with or without IPv6 brackets."""
    host = (host or "").strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host of a Host header, without its port ("[::1]:8000" -> "::1")."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


async def send_error(send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    """Raised inside receive(); deliberately not a ValueError, which the endpoint reads as a malformed form."""


class BodyLimit:
    def __init__(self, app, limit: int, message: str):
        self.app, self.limit, self.message = app, limit, message

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await send_error(send, 413, self.message)
        received, started = 0, False

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge
            return message

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _BodyTooLarge:
            if not started:
                await send_error(send, 413, self.message)


class LoopbackHostOnly:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not is_loopback(host_name(host)):
                return await send_error(send, 421, "this server answers only requests addressed to this machine "
                                                   "(Host 127.0.0.1, localhost or [::1]); to serve others, bind "
                                                   "--host to their address and set --token-env")
        return await self.app(scope, receive, send)


def resolve_token(env_name: str | None) -> str | None:
    """The bearer token a `token_env` setting names; an empty or unset variable is an error, not "no token"."""
    if not env_name:
        return None
    token = os.environ.get(env_name)
    if not token:
        raise PneumocamError(f"--token-env {env_name}: that environment variable is empty or unset")
    return token
