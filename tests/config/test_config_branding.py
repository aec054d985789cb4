"""Per-application sign-in and pages, and [team.branding]: every option, and
each error with its key path (issue #12)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config.errors import ConfigError
from edge.config.load import load, loads
from edge.login.passwords import hash_password

HASH = hash_password("pw", log2_n=4)
DEV = f'[[team.providers]]\ntype = "dev"\nusers = [{{ email = "a@example.com", password = "{HASH}" }}]\n'
OIDC = (
    '[[team.providers]]\ntype = "oidc"\nid = "sso"\nissuer = "https://idp.example.com"\n'
    'client_id = "edge"\nclient_secret = "s"\n'
)
TEAM = '[team]\nhost = "auth.localhost"\n'
POLICY = '[[apps.policies]]\nname = "p"\naction = "allow"\ninclude = [{ everyone = true }]\n'


def app(extra: str = "", name: str = "a") -> str:
    return f'[[apps]]\nname = "{name}"\ndomains = ["{name}.example.com"]\nupstream = "http://127.0.0.1:9"\n{extra}{POLICY}'


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        loads(text, "t.toml")
    return str(info.value)


def test_defaults() -> None:
    config = loads(TEAM + DEV + app())
    a = config.apps[0]
    assert a.allowed_idps is None and not a.auto_redirect_to_identity
    assert (a.custom_deny_message, a.custom_deny_url, a.logo_url) == ("", "", "")
    assert a.app_launcher_visible
    assert config.team is not None
    branding = config.team.branding
    assert (branding.name, branding.logo_url, branding.accent) == ("", "", "")
    assert branding.templates.texts == {}


def test_every_option() -> None:
    extra = (
        'allowed_idps = ["sso"]\nauto_redirect_to_identity = true\n'
        'custom_deny_url = "https://help.example.com/denied"\n'
        'app_launcher_visible = false\nlogo_url = "https://cdn.example.com/a.png"\n'
    )
    branding = (
        '[team.branding]\nname = "Example Inc"\nlogo_url = "https://cdn.example.com/t.png"\n'
        'accent = "#1A2b3c"\n'
    )
    config = loads(TEAM + branding + DEV + OIDC + app(extra))
    a = config.apps[0]
    assert a.allowed_idps == ["sso"] and a.auto_redirect_to_identity
    assert a.custom_deny_url == "https://help.example.com/denied"
    assert not a.app_launcher_visible and a.logo_url == "https://cdn.example.com/a.png"
    assert config.team is not None
    assert config.team.branding.name == "Example Inc" and config.team.branding.accent == "#1A2b3c"
    # the message, or the URL above (both: an error, below)
    polite = loads(TEAM + DEV + app('custom_deny_message = "Ask #help for access."\n')).apps[0]
    assert polite.custom_deny_message == "Ask #help for access." and polite.custom_deny_url == ""


def test_auto_redirect_with_the_only_provider_of_the_team() -> None:
    """Without allowed_idps every provider is allowed: one provider is exactly one."""
    assert loads(TEAM + DEV + app("auto_redirect_to_identity = true\n")).apps[0].auto_redirect_to_identity


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            TEAM + DEV + OIDC + app('allowed_idps = ["sso", "okta"]\n'),
            "$.apps[0].allowed_idps[1]: Expected the id of a [[team.providers]] entry, got 'okta' "
            "(known: dev, sso)",
        ),
        (
            TEAM + DEV + app("allowed_idps = []\n"),
            "$.apps[0].allowed_idps: Expected at least one provider id",
        ),
        (
            TEAM + DEV + app('allowed_idps = ["dev", "dev"]\n'),
            "$.apps[0].allowed_idps[1]: 'dev' is listed twice",
        ),
        (
            TEAM + DEV + OIDC + app("auto_redirect_to_identity = true\n"),
            "$.apps[0].auto_redirect_to_identity: Expected exactly one allowed identity provider "
            "to go straight to, got 2",
        ),
        (
            TEAM + DEV + OIDC + app('allowed_idps = ["dev", "sso"]\nauto_redirect_to_identity = true\n'),
            "$.apps[0].auto_redirect_to_identity: Expected exactly one allowed identity provider",
        ),
        (
            app('allowed_idps = ["dev"]\n'),
            "$.apps[0].allowed_idps: Expected a [team]: only the team's login service has providers",
        ),
        (
            app("auto_redirect_to_identity = true\n"),
            "$.apps[0].auto_redirect_to_identity: Expected a [team]",
        ),
        (
            app('custom_deny_url = "/denied"\n'),
            "$.apps[0].custom_deny_url: Expected an absolute http:// or https:// URL, got '/denied'",
        ),
        (
            app('custom_deny_url = "javascript:alert(1)"\n'),
            "$.apps[0].custom_deny_url: Expected an absolute http:// or https:// URL",
        ),
        (
            app('custom_deny_url = "https://help.example.com/a b"\n'),
            "$.apps[0].custom_deny_url: Expected an absolute http:// or https:// URL",
        ),
        (app('logo_url = "data:image/png;base64,AA"\n'), "$.apps[0].logo_url: Expected an absolute http"),
        (
            app('custom_deny_message = "Ask #help."\ncustom_deny_url = "https://help.example.com/denied"\n'),
            '$.apps[0].custom_deny_url: Expected "" with a custom_deny_message: a refused navigation is '
            "either shown the message or redirected to the URL, not both",
        ),
        (
            app('custom_deny_message = "bell \\u0007"\n'),
            "$.apps[0].custom_deny_message: Expected up to 1000 printable characters",
        ),
        (
            app(f'custom_deny_message = "{"x" * 1001}"\n'),
            "$.apps[0].custom_deny_message: Expected up to 1000 printable characters",
        ),
        (app("app_launcher_visible = 1\n"), "$.apps[0].app_launcher_visible: Expected bool, got int"),
        (
            TEAM + '[team.branding]\naccent = "red"\n' + DEV,
            "$.team.branding.accent: Expected a colour as #rrggbb, got 'red'",
        ),
        (
            TEAM + '[team.branding]\naccent = "#12345"\n' + DEV,
            "$.team.branding.accent: Expected a colour as #rrggbb",
        ),
        (
            TEAM + '[team.branding]\nlogo_url = "ftp://x.example.com/l.png"\n' + DEV,
            "$.team.branding.logo_url: Expected an absolute http:// or https:// URL",
        ),
        (
            TEAM + '[team.branding]\nname = "tab\\there"\n' + DEV,
            "$.team.branding.name: Expected up to 100 printable characters",
        ),
        (TEAM + "[team.branding]\ncolour = 1\n" + DEV, "$.team.branding: unknown key 'colour'"),
        (
            TEAM + '[team.branding.templates]\nhome = "x.html"\n' + DEV,
            "$.team.branding.templates: unknown key 'home'",
        ),
    ],
)
def test_errors(text: str, expected: str) -> None:
    message = error_of(text)
    assert message.startswith(f"t.toml: {expected}"), message


# -- templates: read at load, checked, read again on reload ------------------------------------


def config_with_template(tmp_path: Path, text: str | None, page: str = "login") -> Path:
    template = tmp_path / f"{page}.html"
    if text is not None:
        template.write_text(text)
    path = tmp_path / "edge.toml"
    path.write_text(TEAM + DEV + f'[team.branding.templates]\n{page} = "{template}"\n')
    return path


def test_a_template_is_read_at_load_and_again_on_reload(tmp_path: Path) -> None:
    path = config_with_template(tmp_path, "<body>{{ title }} {{content}}</body>")
    first = load(path)
    assert first.team is not None
    assert first.team.branding.templates.texts == {"login": "<body>{{ title }} {{content}}</body>"}
    (tmp_path / "login.html").write_text("<main>{{content}}</main>")
    assert first.team.branding.templates.texts["login"] == "<body>{{ title }} {{content}}</body>"  # once
    again = load(path)
    assert again.team is not None and again.team.branding.templates.texts == {
        "login": "<main>{{content}}</main>"
    }


@pytest.mark.parametrize(
    ("text", "page", "expected"),
    [
        (None, "login", "$.team.branding.templates.login: cannot read '{dir}/login.html': No such file"),
        (
            "<p>{{content}} {{user_email}}</p>",
            "denied",
            "$.team.branding.templates.denied: {dir}/denied.html: Unknown placeholder {{user_email}} "
            "(known: {{title}}, {{team_name}}, {{logo_url}}, {{accent}}, {{content}})",
        ),
        (
            "<p>{{title}}</p>",
            "launcher",
            "$.team.branding.templates.launcher: {dir}/launcher.html: Expected {{content}}",
        ),
    ],
)
def test_template_errors(tmp_path: Path, text: str | None, page: str, expected: str) -> None:
    path = config_with_template(tmp_path, text, page)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: " + expected.replace("{dir}", str(tmp_path))), str(info.value)


def test_a_template_that_is_not_utf8(tmp_path: Path) -> None:
    path = config_with_template(tmp_path, None, "signed_out")
    (tmp_path / "signed_out.html").write_bytes(b"{{content}} \xff\xfe")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert "$.team.branding.templates.signed_out: " in str(info.value)
    assert str(info.value).endswith("Expected UTF-8 text")
