"""A bearer token for a server that others can reach.

``dicomlake serve`` binds loopback by default and then needs no token. Bound to any
other address it asks for ``--token`` (or an explicit ``--no-auth``): every request must
then carry ``Authorization: Bearer <token>``. Browsers cannot add that header to the
images and scripts a page loads, so opening any page once with ``?token=<token>`` sets
an HttpOnly, SameSite=Strict cookie holding it and redirects to the same address
without the token; the cookie is accepted like the header from then on. Tokens are
compared in constant time.
"""

from __future__ import annotations

import hmac
import urllib.parse
from http.cookies import SimpleCookie

from starlette.types import ASGIApp, Receive, Scope, Send

#: The cookie that carries the token for a browser.
COOKIE = "dicomlake_token"


class TokenAuth:
    """ASGI middleware: refuse every HTTP request without the token (401)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ValueError("the token must not be empty")
        self.app = app
        self._token = token.encode("utf-8")

    def _matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode("utf-8"), self._token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on when it carries the token; otherwise answer 401."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        authorization = headers.get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and self._matches(credentials.strip()):
            await self.app(scope, receive, send)
            return
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is no credential
            cookie = SimpleCookie()
        if COOKIE in cookie and self._matches(urllib.parse.unquote(cookie[COOKIE].value)):
            await self.app(scope, receive, send)
            return
        query = urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        given = [value for key, value in query if key == "token"]
        if scope["method"] == "GET" and given and self._matches(given[-1]):
            rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "token"])
            location = scope.get("root_path", "") + scope["path"] + (f"?{rest}" if rest else "")
            cookie_value = urllib.parse.quote(self._token.decode("utf-8"), safe="")
            await _respond(
                send,
                303,
                b"",
                [
                    (b"location", location.encode("latin-1", "replace")),
                    (
                        b"set-cookie",
                        f"{COOKIE}={cookie_value}; HttpOnly; SameSite=Strict; Path=/".encode(),
                    ),
                ],
            )
            return
        body = b'{"error":"this server needs a token: Authorization: Bearer <token>"}'
        await _respond(
            send,
            401,
            body,
            [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
        )


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
