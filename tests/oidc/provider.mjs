// Test-only OpenID provider for keyward's browser sign-in tests.
//
// Runs npm's `oidc-provider` (a real, certified OP) on 127.0.0.1 and adds one
// test-only route, POST /test/sign, that signs arbitrary claims with the
// provider's own signing keys. See README.md in this directory.
//
// Usage:
//   node provider.mjs                    # start the provider (config from env)
//   node provider.mjs --new-key out.json # write a fresh private RS256 JWK, exit

import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import process from 'node:process';

import * as jose from 'jose';
import Provider from 'oidc-provider';

const SIGN_ALG = 'RS256';

function fail(msg) {
  process.stderr.write(`provider.mjs: ${msg}\n`);
  process.exit(2);
}

async function newPrivateJwk() {
  const { privateKey } = await jose.generateKeyPair(SIGN_ALG, { extractable: true, modulusLength: 2048 });
  const jwk = await jose.exportJWK(privateKey);
  return { ...jwk, kid: `k-${randomUUID()}`, alg: SIGN_ALG, use: 'sig' };
}

function parseJsonEnv(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  try {
    return JSON.parse(raw);
  } catch (err) {
    return fail(`${name} is not valid JSON: ${err.message}`);
  }
}

// ---- CLI mode: --new-key <out.json> ----------------------------------------
if (process.argv[2] === '--new-key') {
  const out = process.argv[3];
  if (!out) fail('usage: node provider.mjs --new-key <out.json>');
  const jwk = await newPrivateJwk();
  writeFileSync(out, `${JSON.stringify(jwk, null, 2)}\n`, { mode: 0o600 });
  process.stdout.write(`${jwk.kid}\n`);
  process.exit(0);
} else if (process.argv.length > 2) {
  fail(`unknown arguments: ${process.argv.slice(2).join(' ')}`);
}

// ---- configuration from env ------------------------------------------------
const port = Number.parseInt(process.env.OIDC_PORT ?? '0', 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) fail('OIDC_PORT must be 0..65535');

const clientsIn = parseJsonEnv('OIDC_CLIENTS', []);
if (!Array.isArray(clientsIn)) fail('OIDC_CLIENTS must be a JSON array');
const clients = clientsIn.map((c) => ({
  grant_types: ['authorization_code'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic',
  ...c,
}));

const groupsByLogin = parseJsonEnv('OIDC_GROUPS', {});
if (groupsByLogin === null || typeof groupsByLogin !== 'object' || Array.isArray(groupsByLogin)) {
  fail('OIDC_GROUPS must be a JSON object {login: [group, ...]}');
}

// "auto" (default): consent is granted automatically, the browser sees only
// the login page. "prompt": the dev consent page ("Continue" button) is shown.
const consentMode = process.env.OIDC_CONSENT || 'auto';
if (!['auto', 'prompt'].includes(consentMode)) fail('OIDC_CONSENT must be "auto" or "prompt"');

let jwks;
if (process.env.OIDC_KEYS) {
  try {
    jwks = JSON.parse(readFileSync(process.env.OIDC_KEYS, 'utf8'));
  } catch (err) {
    fail(`cannot read OIDC_KEYS ${process.env.OIDC_KEYS}: ${err.message}`);
  }
  if (!Array.isArray(jwks?.keys) || jwks.keys.length === 0) fail('OIDC_KEYS must hold {"keys":[...]} with at least one key');
  for (const k of jwks.keys) if (!k.kid || !k.d) fail('every key in OIDC_KEYS must be a private JWK with a kid');
} else {
  jwks = { keys: [await newPrivateJwk()] };
  if (process.env.OIDC_KEYS_OUT) {
    writeFileSync(process.env.OIDC_KEYS_OUT, `${JSON.stringify(jwks, null, 2)}\n`, { mode: 0o600 });
  }
}

// ---- HTTP server: listen first (port may be ephemeral), then build the OP --
let handler = (_req, res) => { res.statusCode = 503; res.end(); };
const server = http.createServer((req, res) => handler(req, res));
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

async function findAccount(_ctx, id) {
  const login = String(id);
  const groups = Object.hasOwn(groupsByLogin, login) ? groupsByLogin[login] : [];
  return {
    accountId: login,
    async claims() {
      return {
        sub: login,
        preferred_username: login,
        name: login,
        email: `${login}@example.test`,
        email_verified: true,
        groups,
      };
    },
  };
}

async function loadExistingGrant(ctx) {
  const { oidc } = ctx;
  const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
  let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
  if (consentMode === 'auto' && oidc.session.accountId) {
    // Test OP: every client is first-party; grant whatever OIDC scopes are asked.
    grant ??= new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
    if (oidc.params.scope) grant.addOIDCScope(oidc.params.scope);
    if (oidc.claims && Object.keys(oidc.claims).length) {
      const requested = new Set();
      for (const part of ['id_token', 'userinfo']) {
        for (const name of Object.keys(oidc.claims[part] || {})) requested.add(name);
      }
      if (requested.size) grant.addOIDCClaims([...requested]);
    }
    await grant.save();
  }
  return grant;
}

const provider = new Provider(issuer, {
  clients,
  jwks,
  findAccount,
  loadExistingGrant,
  // Put scope-requested claims into the ID token too (not only userinfo).
  conformIdTokenClaims: false,
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name', 'groups'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
  },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
});

for (const ev of ['server_error', 'authorization.error', 'grant.error', 'introspection.error', 'revocation.error', 'userinfo.error']) {
  provider.on(ev, (_ctx, err) => {
    process.stderr.write(`oidc-provider ${ev}: ${err?.name} ${err?.message} ${err?.error_description ?? ''}\n`);
  });
}

// ---- test-only route: POST /test/sign[?kid=...] ----------------------------
const privateKeys = new Map(jwks.keys.map((k) => [k.kid, k]));
// oidc-provider signs ID tokens with the first key of the set matching the alg.
const defaultKid = (jwks.keys.find((k) => (k.alg ?? SIGN_ALG) === SIGN_ALG) ?? jwks.keys[0]).kid;

function readBody(req, limit = 1 << 20) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > limit) { reject(new Error('body too large')); req.destroy(); return; }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

async function testSign(req, res, url) {
  const send = (status, text) => {
    res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store' });
    res.end(text);
  };
  if (req.method !== 'POST') return send(405, 'POST only\n');
  let claims;
  try {
    claims = JSON.parse(await readBody(req));
  } catch (err) {
    return send(400, `invalid JSON body: ${err.message}\n`);
  }
  if (claims === null || typeof claims !== 'object' || Array.isArray(claims)) return send(400, 'body must be a JSON object\n');
  const kid = url.searchParams.get('kid') || defaultKid;
  const jwk = privateKeys.get(kid);
  if (!jwk) return send(404, `unknown kid ${kid}\n`);
  const alg = jwk.alg ?? SIGN_ALG;
  const key = await jose.importJWK(jwk, alg);
  // Claims are signed verbatim: the test supplies iss/aud/exp/nonce/... itself.
  const jwt = await new jose.SignJWT(claims).setProtectedHeader({ alg, kid, typ: 'JWT' }).sign(key);
  return send(200, jwt);
}

const opCallback = provider.callback();
handler = (req, res) => {
  const url = new URL(req.url, issuer);
  if (url.pathname === '/test/sign') {
    testSign(req, res, url).catch((err) => {
      process.stderr.write(`/test/sign: ${err.stack}\n`);
      if (!res.headersSent) { res.writeHead(500); res.end(`${err.message}\n`); }
    });
    return;
  }
  opCallback(req, res);
};

function shutdown(sig) {
  process.stderr.write(`provider.mjs: ${sig}, exiting\n`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

process.stdout.write(`LISTENING ${issuer}\n`);
