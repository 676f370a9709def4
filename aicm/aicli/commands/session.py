"""``aicli login``, ``logout`` and ``whoami``."""

from __future__ import annotations

import argparse
import getpass
import sys
from urllib.parse import urlsplit

from aicm.aicli.api import adopt, normalize_url
from aicm.aicli.commands import Context
from aicm.aicli.errors import ApiError, CliError, SessionEnded, Unreachable
from aicm.aicli.store import Credentials

DEFAULT_URL = "http://127.0.0.1:8080"
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
PAYLOAD = "accessToken refreshToken expiresIn user { email }"
LOGIN = f"mutation($i: LoginInput!) {{ login(input: $i) {{ {PAYLOAD} }} }}"
REFRESH = f"mutation($t: String!) {{ refreshToken(refreshToken: $t) {{ {PAYLOAD} }} }}"
LOGOUT = "mutation { logout }"
ME = "query { me { id email name roles { name } } }"


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    login = commands.add_parser(
        "login",
        parents=[common],
        help="sign in to a server and remember the session",
        description="Sign in with email and password (asked without echo), or hand over a refresh token "
        "(for example from the web console's OAuth sign-in) with --token-stdin.",
    )
    login.add_argument("url", nargs="?", help=f"the server (default: the last one, else {DEFAULT_URL})")
    login.add_argument("--email", help="your email (asked when missing)")
    secret = login.add_mutually_exclusive_group()
    secret.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    secret.add_argument("--token-stdin", action="store_true", help="read a refresh token from stdin")
    login.set_defaults(handler=cmd_login)
    commands.add_parser(
        "logout", parents=[common], help="end the session on the server and forget it"
    ).set_defaults(handler=cmd_logout)
    commands.add_parser("whoami", parents=[common], help="who you are signed in as, where").set_defaults(
        handler=cmd_whoami
    )


async def cmd_login(ctx: Context, args: argparse.Namespace) -> int:
    saved = ctx.store.load()
    try:
        url = normalize_url(args.url or (saved.url if saved else DEFAULT_URL))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    _warn_plain_http(ctx, url)
    if args.token_stdin:
        token = sys.stdin.readline().strip()
        if not token:
            raise CliError("no refresh token on stdin")
        payload = (await ctx.api.post(REFRESH, {"t": token}, url=url))["refreshToken"]
    else:
        email = args.email or _ask_email(saved.email if saved and saved.url == url else "")
        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("Password: ")
        if not password:
            raise CliError("no password given")
        payload = (await ctx.api.post(LOGIN, {"i": {"email": email, "password": password}}, url=url))["login"]
    if saved is not None and saved.signed_in:
        await _end_quietly(ctx)  # the session this login replaces; sessions left behind only pile up
    credentials = adopt(Credentials(url=url), payload)
    ctx.store.save(credentials)
    ctx.out.done(
        f"signed in to {url} as {credentials.email}",
        value=credentials.email,
        item={"url": url, "email": credentials.email},
    )
    return 0


async def cmd_logout(ctx: Context, args: argparse.Namespace) -> int:
    saved = ctx.store.load()
    if saved is None or not saved.signed_in:
        ctx.out.note("not signed in")
        return 0
    ended = await _end_quietly(ctx)
    ctx.store.save(saved.signed_out())
    message = f"signed out of {saved.url}"
    if not ended:
        message += " (the server did not end it: already over, or unreachable)"
    ctx.out.done(message, value=saved.url, item={"url": saved.url, "revoked": ended})
    return 0


async def cmd_whoami(ctx: Context, args: argparse.Namespace) -> int:
    me = (await ctx.api.execute(ME))["me"]
    roles = ", ".join(role["name"] for role in me["roles"])
    if ctx.out.json:
        ctx.out.emit_json({"url": ctx.api.url, **me})
    elif ctx.out.rich:
        ctx.out.console.print(
            f"{me['email']} ({me['name'] or 'no name'}; {roles}) on {ctx.api.url}", markup=False
        )
    else:
        ctx.out.plain(f"{me['email']}\t{ctx.api.url}")
    return 0


async def _end_quietly(ctx: Context) -> bool:
    """End the saved session on its server; False when it had already ended or the server is away."""
    try:
        await ctx.api.execute(LOGOUT)
    except (SessionEnded, ApiError, Unreachable):
        return False
    return True


def _ask_email(default: str) -> str:
    if not sys.stdin.isatty():
        raise CliError("--email is required when stdin is not a terminal")
    try:
        email = input(f"Email{f' [{default}]' if default else ''}: ").strip() or default
    except EOFError:
        email = ""
    if not email:
        raise CliError("no email given")
    return email


def _warn_plain_http(ctx: Context, url: str) -> None:
    host = urlsplit(url).hostname or ""
    if url.startswith("http://") and host not in LOOPBACK:
        ctx.out.note(f"warning: {url} is plain HTTP: password and tokens travel unencrypted")
