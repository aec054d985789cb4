"""Rules across fields and tables, run on a config msgspec has decoded.

Each check takes one table (or the whole config, for rules between tables)
and yields `Problem`s: a key path relative to that table and a message ready
for a user. Nothing here raises to report a problem, and nothing reads a file.
This module walks the tables (`problems`, the one entry point); the checks
themselves live by area: `checks_server` (listeners), `checks_apps`
(applications, policies, rules, issuers, service tokens), `checks_groups`
(groups, lists and references to them), `checks_team` (login, team,
providers, branding); `problem` has what they share.

Invariants:
- `problems` yields in the order `load` reports them: tables nested in a table
  first, then the table's own rules; the tables of a list in their order;
  the rules between top-level tables last.
- A table's own rules run only when the tables inside it have no problems, so
  they may rely on them (a policy reads each rule's one selector; the team
  rules read parsed listen addresses and domains).
- A check yields every problem it finds that does not follow from an earlier
  one; where a later rule needs an earlier one to hold, it stops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from edge.config.checks_apps import (
    check_app,
    check_apps,
    check_cors,
    check_issuer,
    check_policy,
    check_references,
    check_rule,
    check_service_token,
)
from edge.config.checks_groups import check_group, check_groups_and_lists, check_list
from edge.config.checks_server import (
    check_client_certs,
    check_demo,
    check_metrics,
    check_metrics_listener,
    check_server,
    check_tls,
)
from edge.config.checks_team import (
    check_dev_provider,
    check_dev_user,
    check_login,
    check_oidc_provider,
    check_team,
    check_team_config,
)
from edge.config.problem import Problem, Problems, under
from edge.config.schema import App, Config, DevProvider, Group, OidcProvider, Policy

T = TypeVar("T")


# -- the whole config ----------------------------------------------------------


def problems(config: Config) -> Problems:
    """Every problem of `config`, paths from its root (see the invariants)."""
    yield from _then(_tables(config), _between_tables(config))


def _tables(config: Config) -> Problems:
    server = config.server
    tls = () if server.tls is None else under(("tls",), check_tls(server.tls))
    yield from under(("server",), _then(tls, check_server(server)))
    for i, app in enumerate(config.apps):
        yield from under(("apps", i), _then(_app_tables(app), check_app(app)))
    yield from _each("issuers", config.issuers, check_issuer)
    yield from _each("service_tokens", config.service_tokens, check_service_token)
    for i, group in enumerate(config.groups):
        yield from under(("groups", i), _then(_rules(group), check_group(group)))
    yield from _each("lists", config.lists, check_list)
    yield from under(("login",), check_login(config.login))
    if config.team is not None:
        providers = _each("providers", config.team.providers, _provider_tables)
        yield from under(("team",), _then(providers, check_team(config.team)))
    if config.demo is not None:
        yield from under(("demo",), check_demo(config.demo))
    if config.metrics is not None:
        yield from under(("metrics",), check_metrics(config.metrics))


def _app_tables(app: App) -> Problems:
    for j, policy in enumerate(app.policies):
        yield from under(("policies", j), _then(_rules(policy), check_policy(policy)))
    if app.cors is not None:
        yield from under(("cors",), check_cors(app.cors))


def _rules(policy: Policy | Group) -> Problems:
    for part in ("include", "require", "exclude"):
        yield from _each(part, getattr(policy, part), check_rule)


def _provider_tables(provider: DevProvider | OidcProvider) -> Problems:
    if isinstance(provider, OidcProvider):
        return check_oidc_provider(provider)
    return _then(_each("users", provider.users, check_dev_user), check_dev_provider(provider))


def _between_tables(config: Config) -> Problems:
    yield from check_apps(config)
    yield from check_references(config)
    yield from check_groups_and_lists(config)
    yield from check_team_config(config)
    yield from check_client_certs(config)
    yield from check_metrics_listener(config)


def _then(inner: Iterable[Problem], outer: Iterable[Problem]) -> Problems:
    """`inner`'s problems, or when it has none, `outer`'s (a table's rules
    may rely on the tables inside it; `outer` is a generator, so it does not
    run unless asked)."""
    clean = True
    for problem in inner:
        clean = False
        yield problem
    if clean:
        yield from outer


def _each(key: str, tables: list[T], check: Callable[[T], Problems]) -> Problems:
    for i, table in enumerate(tables):
        yield from under((key, i), check(table))
