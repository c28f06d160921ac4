// The public API, and nothing else: GET /models, GET /sample (streamed), POST /logprob.
// An API key, when the server asks for one (401), is kept in sessionStorage and sent as a header, never in a URL.

import { SSEParser } from './sse.js';

const KEY_STORAGE = 'arserve.apiKey';

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }

  describe() {
    const where = this.field ? ` (${this.field})` : '';
    const status = this.status ? `${this.status} ` : '';
    return `${status}${this.code}${where}: ${this.message}`;
  }
}

let askForKey = async () => null; // set by the page: shows the key dialog, resolves to a key or null
let pendingAsk = null; // one dialog for any number of requests refused at once

export function onKeyNeeded(fn) {
  askForKey = fn;
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || '';
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

function withKey(headers = {}) {
  const key = apiKey();
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

async function errorOf(res) {
  const text = await res.text().catch(() => '');
  try {
    const body = JSON.parse(text);
    if (body && body.error) return new ApiError(res.status, body.error.code, body.error.message, body.error.field);
    if (body && body.detail) return new ApiError(res.status, 'error', JSON.stringify(body.detail));
  } catch {
    // not JSON: fall through to the raw text
  }
  return new ApiError(res.status, res.statusText || 'error', text.slice(0, 300) || 'the server gave no reason');
}

function keyPrompt(reason) {
  if (!pendingAsk) pendingAsk = askForKey(reason).finally(() => { pendingAsk = null; });
  return pendingAsk;
}

// fetch() with the key; a 401 asks for a key and retries until the user gives up.
async function request(path, init = {}) {
  for (;;) {
    let res;
    try {
      res = await fetch(path, { ...init, headers: withKey(init.headers) });
    } catch (err) {
      if (err.name === 'AbortError') throw err;
      throw new ApiError(0, 'network', `the server could not be reached (${err.message})`);
    }
    if (res.status !== 401) {
      if (!res.ok) throw await errorOf(res);
      return res;
    }
    const refused = await errorOf(res);
    const key = await keyPrompt(apiKey() ? `The key was refused: ${refused.message}` : refused.message);
    if (!key) throw refused;
    setApiKey(key);
  }
}

export async function listModels() {
  const res = await request('/models');
  return (await res.json()).models;
}

export async function logprob(body, signal) {
  const res = await request('/logprob', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
    signal,
  });
  return res.json();
}

// GET /sample, read as a stream. Calls onToken(data) for each token event; resolves to the done event's data.
// Aborting `signal` closes the connection, which stops the generation on the server.
export async function streamSample(params, { signal, onToken }) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') query.set(k, String(v));
  }
  const res = await request(`/sample?${query}`, { headers: { Accept: 'text/event-stream' }, signal });
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SSEParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new ApiError(0, 'stream_ended', 'the stream ended before its done event');
      for (const { event, data } of parser.push(value)) {
        const body = JSON.parse(data);
        if (event === 'token') onToken(body);
        else if (event === 'done') return body;
        else if (event === 'error') throw new ApiError(0, body.error.code, body.error.message, body.error.field);
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}
