// Complete: several samples side by side, each conditioned on the same start (the top rows of a drawing, or
// a text prompt) through GET /sample's prefix / prompt, with seeds first, first+1, ...

import { ApiError, streamSample } from './api.js';
import { DrawPad, wireToolbar } from './draw.js';
import { PREFIX_INK, PREFIX_PAPER, PixelCanvas, charSpan, fmt } from './render.js';

const $ = (id) => document.getElementById(id);
// Streams open at once: a browser keeps about six connections per server, and the server may cap a client's
// concurrent streams (ARSERVE_MAX_STREAMS_PER_CLIENT); the rest wait for a turn.
const PARALLEL = 4;

// run(0..count-1), at most `parallel` at a time; the outcomes in order, as Promise.allSettled gives them.
async function inTurns(count, parallel, run) {
  const outcomes = new Array(count);
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      try {
        outcomes[i] = { status: 'fulfilled', value: await run(i) };
      } catch (reason) {
        outcomes[i] = { status: 'rejected', reason };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, count) }, worker));
  return outcomes;
}

// Fill a pad with a fresh sample of the chosen image model (a random seed): something real to complete or score.
export async function sampleInto(app, pad, button) {
  if (app.model?.modality !== 'binary_image') return;
  button.disabled = true;
  try {
    const seed = Math.floor(Math.random() * 2 ** 31);
    const done = await streamSample({ model: app.model.name, seed, chunk: 64 }, { onToken: () => {} });
    pad.set(done.tokens);
  } catch (err) {
    app.error(err);
  } finally {
    button.disabled = false;
  }
}

export function setupComplete(app) {
  const pad = new DrawPad($('cmp-pad'), 28, 28);
  wireToolbar($('cmp-pad').parentElement.querySelector('.toolbar'), pad);
  const results = $('cmp-results');
  let model = null;
  let controller = null;

  const rows = $('cmp-rows');
  const syncRows = () => {
    $('cmp-rows-out').textContent = rows.value;
    pad.keepRows = Number(rows.value);
    pad.render();
  };
  rows.addEventListener('input', syncRows);
  syncRows();
  $('cmp-temperature').addEventListener('input', () => {
    $('cmp-temperature-out').textContent = Number($('cmp-temperature').value).toFixed(2);
  });
  $('cmp-clear').addEventListener('click', () => pad.clear());
  $('cmp-sample').addEventListener('click', (e) => sampleInto(app, pad, e.currentTarget));
  $('cmp-form').addEventListener('submit', (e) => {
    e.preventDefault();
    start();
  });
  $('cmp-stop').addEventListener('click', () => controller?.abort());

  function onModel(m) {
    controller?.abort();
    model = m;
    results.replaceChildren();
    results.dataset.state = 'idle';
    if (m.modality === 'binary_image') {
      const [h, w] = m.shape;
      if (pad.width !== w || pad.height !== h) {
        app.error(new Error(`the drawing pad is 28x28; ${m.name} draws ${w}x${h}`));
      }
    }
    if (m.modality === 'text') $('cmp-max-len').max = String(m.length);
  }

  function card(seed) {
    const fig = document.createElement('figure');
    fig.className = 'result';
    fig.dataset.seed = String(seed);
    fig.dataset.state = 'streaming';
    const caption = document.createElement('figcaption');
    caption.textContent = `seed ${seed} · streaming…`;
    return [fig, caption];
  }

  async function one(seed, keep, signal, params) {
    const [fig, caption] = card(seed);
    let onToken;
    if (model.modality === 'binary_image') {
      const canvas = document.createElement('canvas');
      canvas.className = 'pixels';
      canvas.setAttribute('aria-label', `Completion with seed ${seed}`);
      const pc = new PixelCanvas(canvas, pad.width, pad.height);
      for (let i = 0; i < keep; i++) pc.setRGB(i, pad.pixels[i] ? PREFIX_INK : PREFIX_PAPER);
      pc.flush();
      fig.append(canvas, caption);
      let frame = 0;
      onToken = (ev) => {
        ev.tokens.forEach((t, k) => pc.setToken(ev.index + k, t, ev.logprobs[k], false));
        frame ||= requestAnimationFrame(() => { frame = 0; pc.flush(); });
      };
      params.prefix = Array.from(pad.pixels.subarray(0, keep)).join(',');
      params.chunk = 4;
      fig.finish = () => pc.flush();
    } else {
      const text = document.createElement('div');
      text.className = 'textout small';
      text.tabIndex = 0;
      const prompt = document.createElement('span');
      prompt.className = 'prompt';
      prompt.textContent = params.prompt;
      const generated = document.createElement('span');
      generated.className = 'generated';
      text.append(prompt, generated);
      fig.append(text, caption);
      onToken = (ev) => ev.tokens.forEach((_, k) => generated.append(charSpan(ev.text[k], ev.logprobs[k])));
      fig.finish = () => {};
    }
    results.append(fig);
    try {
      const done = await streamSample({ ...params, seed }, { signal, onToken });
      fig.finish();
      fig.dataset.state = 'done';
      caption.textContent = `seed ${seed} · log p ${fmt.nats(done.logprob)} nats`;
      return done;
    } catch (err) {
      fig.dataset.state = signal.aborted ? 'stopped' : 'error';
      caption.textContent = signal.aborted ? `seed ${seed} · stopped` : `seed ${seed} · ${err.code || 'error'}`;
      throw err;
    }
  }

  async function start() {
    if (controller || !model) return;
    app.clearMessages();
    results.replaceChildren();
    const count = Math.max(1, Math.min(8, Number($('cmp-count').value) || 1));
    const first = Number($('cmp-seed').value) || 0;
    const params = { model: model.name, temperature: $('cmp-temperature').value };
    let keep = 0;
    if (model.modality === 'binary_image') {
      keep = Number(rows.value) * pad.width;
    } else {
      params.prompt = $('cmp-prompt').value;
      params.max_len = $('cmp-max-len').value;
      if (!params.prompt) delete params.prompt;
    }
    controller = new AbortController();
    const { signal } = controller;
    $('cmp-start').disabled = true;
    $('cmp-stop').disabled = false;
    results.dataset.state = 'streaming';
    const outcomes = await inTurns(count, PARALLEL, (i) => one(first + i, keep, signal, { ...params }));
    const failed = outcomes.find((o) => o.status === 'rejected' && !signal.aborted);
    if (failed) app.error(failed.reason instanceof Error ? failed.reason : new ApiError(0, 'error', String(failed.reason)));
    results.dataset.state = signal.aborted ? 'stopped' : failed ? 'error' : 'done';
    controller = null;
    const stopHadFocus = document.activeElement === $('cmp-stop');
    $('cmp-start').disabled = false;
    $('cmp-stop').disabled = true;
    if (stopHadFocus) $('cmp-start').focus();
  }

  return { onModel };
}
