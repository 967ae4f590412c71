// The authorisation server of the end-to-end suite: the certified OpenID provider
// `oidc-provider`, configured the way a mail provider would be, with the user's
// interactions (login and consent) completed automatically.
//
//   node provider.mjs CONFIG.json
//
// CONFIG.json (written by tests/e2e/conftest.py):
//   { "events": "/path/events.jsonl", "account": "alice",
//     "access_token_ttl": 20, "clients": [ ...oidc-provider client metadata... ] }
//
// Listens on 127.0.0.1 on a port of the kernel's choosing and prints one JSON line
// {"issuer": "http://127.0.0.1:PORT"} on stdout once it accepts connections. Every
// event the tests check (tokens saved, refresh tokens consumed, introspections, token
// requests with their grant type, device authorizations, device codes saved and consumed,
// user codes submitted, revocations with the token sent, interactions, errors) is
// appended to the events file as one JSON line.
//
// Test-only control endpoint: POST /e2e/deny-next makes the next consent interaction
// answer `access_denied`, as a user pressing "Deny" would.
//
// The device flow (RFC 8628) is on: /device/auth hands out device and user codes, and
// /device is the verification page. Opened with ?user_code= (verification_uri_complete),
// oidc-provider itself posts that code; the confirmation page below then presses
// "Continue" by itself, as the user would, and login and consent are completed as for the
// code flow. Without a code in the URL the input page is shown and nothing is submitted.

import { appendFileSync, readFileSync } from 'node:fs';
import http from 'node:http';

import Provider from 'oidc-provider';

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
let denyNext = 0;

function record(event) {
  appendFileSync(config.events, `${JSON.stringify({ at: Date.now() / 1000, ...event })}\n`);
}

let handler = (_req, res) => {
  res.statusCode = 503;
  res.end();
};
const server = http.createServer((req, res) => handler(req, res));
await new Promise((resolve) => {
  server.listen(0, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: config.clients,
  async findAccount(_ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: `${id}@e2e.test` };
      },
    };
  },
  claims: { openid: ['sub'], email: ['email'] },
  scopes: ['openid', 'offline_access', 'email'],
  cookies: { keys: ['e2e-cookie-key-not-secret'] },
  features: {
    devInteractions: { enabled: false },
    introspection: {
      enabled: true,
      // Only the mail servers (confidential clients that are not pizauth's) may ask.
      async allowedPolicy(_ctx, client) {
        return client.grantTypes.length === 0;
      },
    },
    revocation: { enabled: true },
    deviceFlow: {
      enabled: true,
      // Unchanged default charset and mask; the pages are plain and headless-friendly.
      async userCodeInputSource(ctx, form, _out, err) {
        record({ event: 'device.input_page', error: err ? err.name || String(err) : undefined });
        ctx.body = `<!DOCTYPE html><html><head><title>Device sign-in</title></head><body>
<p id="e2e-device-input">${err ? `e2e-device-error ${escapeHtml(err.name || err)}` : 'Enter the code'}</p>
${form}<button type="submit" form="op.deviceInputForm">Continue</button></body></html>`;
      },
      async userCodeConfirmSource(ctx, form, client, _deviceInfo, userCode) {
        record({ event: 'device.confirm_page', client: client.clientId, user_code: userCode });
        // The user checks the code and presses Continue: the form oidc-provider built
        // (xsrf, the user code it was given, confirm=yes) is submitted once the page loads.
        ctx.body = `<!DOCTYPE html><html><head><title>Confirm device</title>
<script>document.addEventListener('DOMContentLoaded', function () {
  document.getElementById('op.deviceConfirmForm').submit();
});</script></head><body>
<p id="e2e-device-confirm">Confirm code <code>${escapeHtml(userCode)}</code></p>
${form}<button type="submit" form="op.deviceConfirmForm">Continue</button></body></html>`;
      },
      async successSource(ctx) {
        record({ event: 'device.success', client: ctx.oidc.client?.clientId });
        ctx.body = `<!DOCTYPE html><html><head><title>Sign-in success</title></head><body>
<p id="e2e-device-success">e2e-device-success: you can close this page.</p></body></html>`;
      },
    },
  },
  interactions: {
    url(_ctx, interaction) {
      return `/interaction/${interaction.uid}`;
    },
  },
  pkce: {
    required: () => true,
  },
  // Refresh tokens need `offline_access`, granted at consent (the default policy).
  rotateRefreshToken: true,
  ttl: {
    AccessToken: config.access_token_ttl,
    AuthorizationCode: 60,
    // Set, so that oidc-provider does not print a notice on stdout (the ready line's pipe).
    DeviceCode: 600,
    Grant: 3600,
    IdToken: 3600,
    Interaction: 600,
    RefreshToken: 3600,
    Session: 3600,
  },
});

for (const kind of ['access_token', 'refresh_token']) {
  provider.on(`${kind}.saved`, (token) => {
    record({
      event: `${kind}.saved`,
      jti: token.jti,
      gty: token.gty,
      client: token.clientId,
      scope: token.scope,
      exp: token.exp,
    });
  });
  provider.on(`${kind}.consumed`, (token) => {
    record({ event: `${kind}.consumed`, jti: token.jti });
  });
}
provider.on('authorization_code.consumed', (code) => {
  record({ event: 'authorization_code.consumed', jti: code.jti });
});
// The device code is oidc-provider's DeviceCode id; the user code is what people type.
provider.on('device_code.saved', (code) => {
  record({
    event: 'device_code.saved',
    jti: code.jti,
    user_code: code.userCode,
    client: code.clientId,
    scope: code.scope,
    account: code.accountId,
    error: code.error,
  });
});
provider.on('device_code.consumed', (code) => {
  record({ event: 'device_code.consumed', jti: code.jti });
});
provider.on('grant.revoked', (_ctx, grantId) => {
  record({ event: 'grant.revoked', grant: grantId });
});
for (const name of [
  'authorization.error',
  'grant.error',
  'introspection.error',
  'revocation.error',
  'server_error',
]) {
  provider.on(name, (_ctx, err) => {
    record({ event: name, error: err.error || err.message, description: err.error_description });
  });
}

// What each endpoint was asked, and what it answered.
provider.use(async (ctx, next) => {
  await next();
  const params = ctx.oidc?.params ?? {};
  if (ctx.path === '/token') {
    record({
      event: 'token_request',
      status: ctx.status,
      grant_type: params.grant_type,
      client: ctx.oidc?.client?.clientId,
      auth_method: ctx.oidc?.client?.clientAuthMethod,
      code_verifier: Boolean(params.code_verifier),
      refresh_token: params.refresh_token,
      device_code: params.device_code,
      error: ctx.body?.error,
    });
  } else if (ctx.path === '/device/auth') {
    record({
      event: 'device_authorization',
      status: ctx.status,
      client: ctx.oidc?.client?.clientId,
      auth_method: ctx.oidc?.client?.clientAuthMethod,
      scope: params.scope,
      user_code: ctx.body?.user_code,
      verification_uri: ctx.body?.verification_uri,
      verification_uri_complete: ctx.body?.verification_uri_complete,
      interval: ctx.body?.interval,
      error: ctx.body?.error,
    });
  } else if (ctx.path === '/device' && ctx.method === 'POST') {
    record({
      event: 'code_verification',
      status: ctx.status,
      user_code: params.user_code,
      confirm: params.confirm,
    });
  } else if (ctx.path === '/token/revocation') {
    record({
      event: 'revocation',
      status: ctx.status,
      client: ctx.oidc?.client?.clientId,
      auth_method: ctx.oidc?.client?.clientAuthMethod,
      token: params.token,
      token_type_hint: params.token_type_hint,
      error: ctx.body?.error,
    });
  } else if (ctx.path === '/token/introspection') {
    record({
      event: 'introspection',
      status: ctx.status,
      caller: ctx.oidc?.client?.clientId,
      token: params.token,
      active: ctx.body?.active,
      sub: ctx.body?.sub,
    });
  } else if (ctx.path.startsWith('/auth') && ctx.method === 'GET') {
    record({
      event: ctx.path === '/auth' ? 'authorization_request' : 'authorization_resume',
      status: ctx.status,
      scope: params.scope,
      redirect_uri: params.redirect_uri,
      code_challenge_method: params.code_challenge_method,
      location: ctx.response.get('location'),
    });
  }
});

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session, uid } = details;
  let result;
  if (prompt.name === 'login') {
    result = { login: { accountId: config.account } };
  } else if (prompt.name === 'consent' && denyNext > 0) {
    denyNext -= 1;
    result = { error: 'access_denied', error_description: 'End-User denied the request' };
  } else if (prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const { missingOIDCScope, missingOIDCClaims, missingResourceScopes } = prompt.details;
    if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
    if (missingOIDCClaims) grant.addOIDCClaims(missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    result = { consent: { grantId: await grant.save() } };
  } else {
    result = { error: 'invalid_request', error_description: `unexpected prompt ${prompt.name}` };
  }
  record({ event: 'interaction', prompt: prompt.name, uid, result: Object.keys(result)[0] });
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
}

const callback = provider.callback();
handler = (req, res) => {
  const path = req.url.split('?')[0];
  if (req.method === 'GET' && path.startsWith('/interaction/')) {
    interaction(req, res).catch((err) => {
      record({ event: 'interaction.failed', error: String(err) });
      res.statusCode = 500;
      res.end(String(err));
    });
  } else if (req.method === 'POST' && path === '/e2e/deny-next') {
    denyNext += 1;
    record({ event: 'deny_next', pending: denyNext });
    res.end('ok\n');
  } else {
    callback(req, res);
  }
};

process.on('SIGTERM', () => {
  server.close();
  process.exit(0);
});
process.stdout.write(`${JSON.stringify({ issuer })}\n`);
