"""A real OAuth2 / OpenID Connect provider on loopback, built with authlib's server components (Flask).

It serves, on ``http://127.0.0.1:<free port>``:

- ``/.well-known/openid-configuration`` and ``/jwks`` (one RS256 key),
- ``/authorize``: authorization code, PKCE S256 *required*, ``state`` required and echoed; it checks the
  client id and the registered redirect URI, then approves at once for ``provider.user`` (no login page), or
  denies when ``provider.deny`` is set,
- ``/token``: the code exchange (client secret, basic or post), checking the code verifier; an ``openid``
  scope adds an RS256 ID token (iss, aud, exp, nonce, at_hash, sub, email, email_verified, name), signed
  with ``provider.signing_key`` (the published key unless a test swaps it),
- ``/userinfo`` (OIDC) and GitHub's ``/api/user`` and ``/api/user/emails`` for the bearer token.

Every authorization request is kept in ``provider.authorize_requests`` for assertions.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector, current_token
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import InvalidRequestError, OAuth2Error
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode
from flask import Flask, jsonify, request
from joserfc.jwk import RSAKey
from werkzeug.serving import WSGIRequestHandler, make_server

CLIENT_ID = "aicm-test-client"
CLIENT_SECRET = "aicm-test-secret"  # a throwaway credential of this test provider
CODE_LIFETIME = 300
TOKEN_LIFETIME = 3600


@dataclass
class ProviderUser:
    """Who the provider says signs in. ``github_emails`` overrides the derived ``/user/emails`` list."""

    sub: str = "oidc-subject-1"
    email: str = "alice@example.com"
    email_verified: bool = True
    name: str = "Alice Example"
    github_id: int = 4242
    login: str = "alice"
    github_emails: list[dict[str, Any]] | None = None

    def emails(self) -> list[dict[str, Any]]:
        if self.github_emails is not None:
            return self.github_emails
        return [{"email": self.email, "primary": True, "verified": self.email_verified, "visibility": None}]


@dataclass
class Client:
    client_id: str
    client_secret: str
    redirect_uris: list[str]

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None  # the request must name one of the registered URIs

    def get_allowed_scope(self, scope: str | None) -> str:
        allowed = {"openid", "email", "profile", "read:user", "user:email"}
        return " ".join(s for s in (scope or "").split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return client_secret == self.client_secret

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class AuthorizationCode:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: ProviderUser
    code_challenge: str
    code_challenge_method: str
    nonce: str | None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None

    def is_expired(self) -> bool:
        return time.time() > self.auth_time + CODE_LIFETIME


@dataclass
class Token:
    access_token: str
    client_id: str
    scope: str
    user: ProviderUser
    issued_at: float = field(default_factory=time.time)
    expires_in: int = TOKEN_LIFETIME

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() > self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return False

    def get_user(self) -> ProviderUser:
        return self.user

    def get_client(self) -> None:
        return None


class RequireS256(CodeChallenge):
    """PKCE is mandatory here, and only with S256 (authlib alone requires it for public clients only)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: missing 'code_challenge'")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE must use code_challenge_method=S256")
        super().validate_code_challenge(grant, redirect_uri)


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


class OAuthTestProvider:
    """Start with ``with OAuthTestProvider(redirect_uris=[...]) as provider:``; ``provider.url`` is its base."""

    def __init__(self, *, redirect_uris: list[str]) -> None:
        self.client = Client(CLIENT_ID, CLIENT_SECRET, list(redirect_uris))
        self.user = ProviderUser()
        self.deny = False
        self.key = RSAKey.generate_key(2048, parameters={"kid": "test-key-1", "use": "sig", "alg": "RS256"})
        self.signing_key = self.key  # a test may sign ID tokens with a key the JWKS does not publish
        self.codes: dict[str, AuthorizationCode] = {}
        self.tokens: dict[str, Token] = {}
        self.authorize_requests: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._server = make_server(
            "127.0.0.1", 0, self._build_app(), threaded=True, request_handler=_QuietHandler
        )
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="oauth-provider", daemon=True)

    def __enter__(self) -> OAuthTestProvider:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)
        self._server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.user, self.deny, self.signing_key = ProviderUser(), False, self.key
            self.codes.clear()
            self.tokens.clear()
            self.authorize_requests.clear()

    @property
    def metadata_url(self) -> str:
        return f"{self.url}/.well-known/openid-configuration"

    # ------------------------------------------------------------------ the authlib server

    def _build_app(self) -> Flask:
        provider = self
        app = Flask("oauth-test-provider")

        class CodeGrant(grants.AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

            def save_authorization_code(self, code: str, req: Any) -> None:
                data = req.payload.data
                with provider._lock:
                    provider.codes[code] = AuthorizationCode(
                        code=code,
                        client_id=req.client.client_id,
                        redirect_uri=req.payload.redirect_uri,
                        scope=req.scope,
                        user=replace(req.user),
                        code_challenge=data["code_challenge"],
                        code_challenge_method=data["code_challenge_method"],
                        nonce=data.get("nonce"),
                    )

            def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
                with provider._lock:
                    item = provider.codes.get(code)
                if item and item.client_id == client.client_id and not item.is_expired():
                    return item
                return None

            def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
                with provider._lock:
                    provider.codes.pop(authorization_code.code, None)  # a code works once

            def authenticate_user(self, authorization_code: AuthorizationCode) -> ProviderUser:
                return authorization_code.user

        class IdToken(OpenIDCode):
            def exists_nonce(self, nonce: str, req: Any) -> bool:
                with provider._lock:
                    return any(c.nonce == nonce for c in provider.codes.values())

            def resolve_client_private_key(self, client: Client) -> RSAKey:
                return provider.signing_key

            def get_client_algorithm(self, client: Client) -> str:
                return "RS256"

            def get_encode_header(self, client: Client) -> dict[str, str]:
                return {"alg": "RS256", "kid": provider.key.kid or ""}

            def get_client_claims(self, client: Client) -> dict[str, Any]:
                return {"iss": provider.url, "aud": [client.client_id]}

            def generate_user_info(self, user: ProviderUser, scope: str) -> UserInfo:
                return _user_info(user, scope)

        def save_token(token: dict[str, Any], req: Any) -> None:
            with provider._lock:
                provider.tokens[token["access_token"]] = Token(
                    token["access_token"], req.client.client_id, token.get("scope", ""), req.user
                )

        server = AuthorizationServer(app, query_client=self._query_client, save_token=save_token)
        server.register_grant(CodeGrant, [RequireS256(required=True), IdToken(require_nonce=False)])

        class Validator(BearerTokenValidator):
            def authenticate_token(self, token_string: str) -> Token | None:
                with provider._lock:
                    return provider.tokens.get(token_string)

        require_token = ResourceProtector()
        require_token.register_token_validator(Validator())

        @app.get("/.well-known/openid-configuration")
        def discovery() -> Any:
            return jsonify(
                issuer=provider.url,
                authorization_endpoint=f"{provider.url}/authorize",
                token_endpoint=f"{provider.url}/token",
                userinfo_endpoint=f"{provider.url}/userinfo",
                jwks_uri=f"{provider.url}/jwks",
                response_types_supported=["code"],
                subject_types_supported=["public"],
                id_token_signing_alg_values_supported=["RS256"],
                code_challenge_methods_supported=["S256"],
                scopes_supported=["openid", "email", "profile"],
                token_endpoint_auth_methods_supported=["client_secret_basic", "client_secret_post"],
                claims_supported=["sub", "email", "email_verified", "name"],
            )

        @app.get("/jwks")
        def jwks() -> Any:
            return jsonify(keys=[provider.key.as_dict(private=False)])

        @app.get("/authorize")
        def authorize() -> Any:
            provider.authorize_requests.append(request.args.to_dict())
            if not request.args.get("state"):
                return jsonify(error="invalid_request", error_description="'state' is required"), 400
            try:
                grant = server.get_consent_grant(end_user=provider.user)
            except OAuth2Error as error:
                return server.handle_error_response(None, error)
            grant_user = None if provider.deny else replace(provider.user)
            return server.create_authorization_response(grant_user=grant_user, grant=grant)

        @app.post("/token")
        def token() -> Any:
            return server.create_token_response()

        @app.get("/userinfo")
        @require_token("openid")
        def userinfo() -> Any:
            return jsonify(dict(_user_info(current_token.user, current_token.scope)))

        @app.get("/api/user")
        @require_token()
        def github_user() -> Any:
            user = current_token.user
            return jsonify(id=user.github_id, login=user.login, name=user.name, email=None)

        @app.get("/api/user/emails")
        @require_token()
        def github_emails() -> Any:
            return jsonify(current_token.user.emails())

        return app

    def _query_client(self, client_id: str) -> Client | None:
        return self.client if client_id == self.client.client_id else None


def _user_info(user: ProviderUser, scope: str) -> UserInfo:
    info = UserInfo(sub=user.sub)
    scopes = scope.split()
    if "profile" in scopes:
        info["name"] = user.name
    if "email" in scopes:
        info["email"] = user.email
        info["email_verified"] = user.email_verified
    return info
