"""`edge check`'s summary of per-app sign-in, deny and launcher settings and
of the team's pages (issue #12)."""

from __future__ import annotations

from edge.access.compile import compile_config
from edge.cli.tools import apps_summary
from edge.config.load import loads
from edge.login.passwords import hash_password

HASH = hash_password("pw", log2_n=4)
DEV = f'[[team.providers]]\ntype = "dev"\nusers = [{{ email = "a@example.com", password = "{HASH}" }}]\n'
OIDC = (
    '[[team.providers]]\ntype = "oidc"\nid = "sso"\nissuer = "https://idp.example.com"\n'
    'client_id = "edge"\nclient_secret = "s"\n'
)
TEAM = '[team]\nhost = "auth.localhost"\n'
POLICY = '[[apps.policies]]\nname = "p"\naction = "allow"\ninclude = [{ everyone = true }]\n'


def app(extra: str = "") -> str:
    return (
        f'[[apps]]\nname = "a"\ndomains = ["a.example.com"]\nupstream = "http://127.0.0.1:9"\n{extra}{POLICY}'
    )


def test_edge_check_summarises_the_sign_in_and_pages() -> None:
    extra = 'allowed_idps = ["sso"]\nauto_redirect_to_identity = true\napp_launcher_visible = false\n'
    branding = '[team.branding]\nname = "Example Inc"\naccent = "#1a2b3c"\n'
    config = loads(TEAM + 'url = "http://auth.localhost:8080"\n' + branding + DEV + OIDC + app(extra))
    text = apps_summary(compile_config(config))
    assert "    sign-in:  providers sso; straight to the provider; not in the app launcher\n" in text
    assert '    pages:     "Example Inc", accent #1a2b3c; app launcher at http://auth.localhost:8080/' in text
    plain = apps_summary(
        compile_config(loads(TEAM + DEV + app('custom_deny_url = "https://x.example.com/"\n')))
    )
    assert "    sign-in:  refused navigations to https://x.example.com/\n" in plain
    assert "pages:     no team name; app launcher at" in plain
