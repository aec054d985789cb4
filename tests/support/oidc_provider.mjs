// An OpenID-Certified provider for the tests: panva's oidc-provider (npm,
// pinned in bin/test) on 127.0.0.1, configured for the edge's code flow.
//
// Run by tests/support/oidc_node.py: `node oidc_provider.mjs CONFIG.json`,
// with NODE_PATH naming the node_modules that holds oidc-provider. CONFIG:
//   port             a free loopback port; the issuer is http(s)://127.0.0.1:<port>
//   redirect_uris    the static client's registered callbacks
//   client_id, client_secret
//   auth_methods     token endpoint auth methods offered (default basic + post)
//   code_ttl         seconds an authorization code lives (default 60)
//   tls              {cert, key} PEM file paths: serve https
//   users            login name -> claims ({sub, email, email_verified, groups, realm_access, ...}),
//                    and `amr`: the sign-in's methods, put in the ID token's amr
//
// Signing keys are made fresh at every start (one RS256 key, a new kid), so a
// restart on the same port is a key rotation with the same issuer.
//
// Sign-in is a tiny interaction of ours (features.devInteractions is off):
//   GET  /interaction/<uid>         a form (for a person or Chromium)
//   POST /interaction/<uid>/login   login=<name>: signs in and grants the
//                                   requested scopes; an unknown name is access_denied
//   POST /interaction/<uid>/abort   the user declines: access_denied
// Exits on SIGTERM or when its stdin closes.
// Stdout: "READY <issuer>" once listening, then "REQ <method> <path>" for
// every request (the tests count discovery and JWKS fetches).

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { createRequire } from 'node:module';
import path from 'node:path';

// NODE_PATH is not consulted by ES module imports: resolve through require.
const require = createRequire(path.join(process.env.NODE_PATH || '.', 'noop.js'));
const { default: Provider, errors } = await import(require.resolve('oidc-provider'));

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const scheme = config.tls ? 'https' : 'http';
const issuer = `${scheme}://127.0.0.1:${config.port}`;
const users = config.users;

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = {
  ...privateKey.export({ format: 'jwk' }),
  kid: `rsa-${randomBytes(4).toString('hex')}`,
  alg: 'RS256',
  use: 'sig',
};

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: config.client_id,
      client_secret: config.client_secret,
      redirect_uris: config.redirect_uris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: (config.auth_methods || ['client_secret_basic'])[0],
    },
  ],
  clientAuthMethods: config.auth_methods || ['client_secret_basic', 'client_secret_post'],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  pkce: { methods: ['S256'], required: () => true },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  // The edge reads the user from the ID token alone (no userinfo call), as
  // many relying parties do: put the scopes' claims in it.
  conformIdTokenClaims: false,
  // groups and a Keycloak-style nested realm_access.roles ride on `profile`,
  // a scope the edge asks for by default.
  claims: {
    // amr rides on openid: the sign-in's methods (RFC 8176), set by our login result.
    openid: ['sub', 'amr'],
    email: ['email', 'email_verified'],
    profile: ['name', 'groups', 'realm_access'],
  },
  // Seconds; set, as oidc-provider asks, so that its log stays quiet.
  ttl: {
    AuthorizationCode: config.code_ttl ?? 60,
    AccessToken: 300,
    IdToken: 300,
    Grant: 600,
    Interaction: 600,
    Session: 600,
  },
  findAccount(ctx, id) {
    const user = Object.values(users).find((u) => u.sub === id);
    if (!user) return undefined;
    return { accountId: id, claims: () => ({ ...user }) };
  },
  renderError(ctx, out) {
    ctx.type = 'text/plain; charset=utf-8';
    ctx.body = `${out.error}: ${out.error_description}`;
  },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

function readForm(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => {
      body += chunk;
      if (body.length > 64 * 1024) reject(new Error('form too large'));
    });
    req.on('end', () => resolve(new URLSearchParams(body)));
    req.on('error', reject);
  });
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new errors.SessionNotFound('interaction mismatch');
  if (req.method === 'GET' && !action) {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(`<!doctype html><title>Test provider</title><h1>Sign in to the test provider</h1>
<form method="post" action="/interaction/${uid}/login"><input name="login" autofocus>
<button>Sign in</button></form>
<form method="post" action="/interaction/${uid}/abort"><button>Decline</button></form>`);
    return;
  }
  if (req.method !== 'POST') throw new errors.InvalidRequest('method not allowed');
  const form = await readForm(req);
  const user = users[form.get('login') || ''];
  let result;
  if (action === 'login' && user) {
    const grant = new provider.Grant({ accountId: user.sub, clientId: details.params.client_id });
    grant.addOIDCScope(details.params.scope);
    // amr (RFC 8176) as the provider reports it in the ID token: how this user signed in.
    const login = user.amr ? { accountId: user.sub, amr: user.amr } : { accountId: user.sub };
    result = { login, consent: { grantId: await grant.save() } };
  } else {
    result = { error: 'access_denied', error_description: action === 'login' ? 'unknown user' : 'declined' };
  }
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

const callback = provider.callback();
async function serve(req, res) {
  console.log(`REQ ${req.method} ${req.url.split('?')[0]}`);
  // One request per connection, as the edge's fetch makes them: no idle
  // keep-alive connections outlive a test's client.
  res.setHeader('connection', 'close');
  const match = /^\/interaction\/([\w-]+)(?:\/(login|abort))?$/.exec(req.url.split('?')[0]);
  if (!match) {
    callback(req, res);
    return;
  }
  try {
    await interaction(req, res, match[1], match[2]);
  } catch (err) {
    res.writeHead(400, { 'content-type': 'text/plain; charset=utf-8' });
    res.end(`interaction failed: ${err.message}`);
  }
}

const server = config.tls
  ? https.createServer({ cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) }, serve)
  : http.createServer(serve);
server.listen(config.port, '127.0.0.1', () => console.log(`READY ${issuer}`));
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
// Our stdin is a pipe from the test process: when it closes (the tests ended,
// or died without stopping us), so do we.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
