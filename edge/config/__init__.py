"""edge.config: the file that configures the edge, from bytes to a `Config`.

- `schema`: the msgspec Structs (types, bounds, derived values);
- `syntax`: parsers of single values (listen addresses, domains, origins);
- `checks`: rules across fields, reported as `Problem(path, message)`
  (`problem`), checked by area in `checks_server`, `checks_apps`,
  `checks_groups` and `checks_team`;
- `errors`: `ConfigError` and the wording of every error;
- `load`: `load` / `loads`, the one way in.
"""
