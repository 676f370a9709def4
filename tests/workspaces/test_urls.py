from __future__ import annotations

from pathlib import Path

import pytest

from aicm.errors import BadUserInput
from aicm.workspaces.urls import validate_repository_url

ACCEPTED = [
    "https://github.com/acme/app.git",
    "https://oauth2@gitlab.example.com:8443/group/app",
    "ssh://git@example.com:2222/acme/app.git",
    "ssh://[::1]/srv/app.git",
    "git@github.com:acme/app.git",
    "example.com:acme/app.git",
    "file:///srv/git/app.git",
    "/srv/git/app.git",
]

REFUSED = [
    "",
    "   ",
    "ext::sh -c touch% /tmp/pwned",
    "fd::17",
    "transport::https://example.com/x",
    "--upload-pack=touch /tmp/pwned",
    "-oProxyCommand=touch /tmp/pwned",
    "ssh://-oProxyCommand=touch%20x/repo",
    "ssh://-user@example.com/repo",
    "git@-oProxyCommand=x:repo",
    "git@example.com:--upload-pack=x",
    "git@example.com:",
    "http://example.com/acme/app.git",
    "git://example.com/acme/app.git",
    "ftp://example.com/app.git",
    "https://example.com",
    "https://user:s3cret-password@example.com/app.git",
    "https://example.com:99999/app.git",
    "relative/path/repo",
    "../other-project/repo.git",
    "https://example.com/app.git\n--upload-pack=x",
    "https://example.com/a\x00b",
    "https://example.com/" + "a" * 3000,
]


@pytest.mark.parametrize("url", ACCEPTED)
def test_supported_urls_are_accepted(url: str) -> None:
    assert validate_repository_url(f"  {url} ", allow_local=True) == url


@pytest.mark.parametrize("url", REFUSED)
def test_unsafe_or_unsupported_urls_are_bad_user_input_on_repository_url(url: str) -> None:
    with pytest.raises(BadUserInput) as error:
        validate_repository_url(url, allow_local=True)
    assert error.value.code == "BAD_USER_INPUT"
    assert error.value.field == "repositoryUrl"
    assert "s3cret" not in error.value.message


@pytest.mark.parametrize("url", ["/srv/git/app.git", "file:///srv/git/app.git"])
def test_local_repositories_need_allow_local(url: str) -> None:
    with pytest.raises(BadUserInput, match="Local repositories are not allowed"):
        validate_repository_url(url, allow_local=False)


def test_local_paths_must_be_inside_allowed_roots_and_outside_forbidden_ones(tmp_path: Path) -> None:
    # given
    allowed = tmp_path / "repos"
    workspaces = allowed / "workspaces"
    (allowed / "escape").parent.mkdir(parents=True)
    (allowed / "escape").symlink_to(tmp_path / "elsewhere")
    options = {"allow_local": True, "allowed_roots": [allowed], "forbidden_roots": [workspaces]}

    # then
    assert validate_repository_url(f"{allowed}/app.git", **options) == f"{allowed}/app.git"
    assert validate_repository_url(f"file://{allowed}/app.git", **options) == f"file://{allowed}/app.git"
    for outside in (f"{tmp_path}/elsewhere/app.git", f"{allowed}/escape/app.git", f"{allowed}/../x.git"):
        with pytest.raises(BadUserInput, match="outside the allowed"):
            validate_repository_url(outside, **options)
    with pytest.raises(BadUserInput, match="not allowed"):
        validate_repository_url(f"{workspaces}/projects/2/repo.git", **options)
