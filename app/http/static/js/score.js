// Score: POST /logprob on a drawn (or uploaded) digit or on pasted text, under the chosen model, with a
// per-position heatmap of -log p, and under every model of the same modality, ranked by likelihood.

import { logprob } from './api.js';
import { sampleInto } from './complete.js';
import { DrawPad, imageFileToPixels, wireToolbar } from './draw.js';
import { PixelCanvas, charSpan, fmt, legendGradient, paintHeatmap } from './render.js';

const $ = (id) => document.getElementById(id);
const MAX_NATS = { binary_image: 4, text: 6 }; // a fixed colour scale, so models compare at a glance

export function setupScore(app) {
  const pad = new DrawPad($('score-pad'), 28, 28);
  wireToolbar($('score-pad').parentElement.querySelector('.toolbar'), pad);
  const heat = new PixelCanvas($('score-heat'), 28, 28);
  const output = $('score-output');
  let model = null;
  let answers = []; // [{model, result | error}] of the last run, ranked
  let busy = false;

  $('score-clear').addEventListener('click', () => pad.clear());
  $('score-sample').addEventListener('click', (e) => sampleInto(app, pad, e.currentTarget));
  $('score-file').addEventListener('change', async (e) => {
    const file = e.target.files[0];
    if (!file) return;
    try {
      pad.set(await imageFileToPixels(file, pad.width, pad.height));
    } catch (err) {
      app.error(new Error(`${file.name} could not be read as an image (${err.message})`));
    }
    e.target.value = '';
  });
  $('score-run').addEventListener('click', () => run());

  function onModel(m) {
    model = m;
    output.hidden = true;
    output.dataset.state = 'idle';
    answers = [];
  }

  function input() {
    return model.modality === 'binary_image' ? Array.from(pad.pixels) : $('score-text').value;
  }

  async function scoreOne(m, x) {
    try {
      const res = await logprob({ model: m.name, inputs: [x], per_position: true });
      return { model: m, result: res.results[0] };
    } catch (err) {
      return { model: m, error: err };
    }
  }

  async function run() {
    if (busy || !model) return;
    const x = input();
    if (model.modality === 'text' && !x) {
      app.error(new Error('there is no text to score: paste or type some'));
      return;
    }
    busy = true;
    $('score-run').disabled = true;
    app.clearMessages();
    output.dataset.state = 'scoring';
    try {
      const peers = app.ofModality(model.modality);
      answers = await Promise.all(peers.map((m) => scoreOne(m, x)));
      answers.sort((a, b) => rank(b) - rank(a));
      const own = answers.find((a) => a.model.name === model.name);
      if (own.error) app.error(own.error);
      show(own, x);
      table(x);
      output.hidden = false;
      output.dataset.state = 'done';
    } finally {
      busy = false;
      $('score-run').disabled = false;
    }
  }

  const rank = (a) => (a.result && a.result.logprob !== null ? a.result.logprob : -Infinity);

  function show(answer, x) {
    const r = answer.result;
    $('score-model').textContent = answer.model.name;
    $('score-nats').textContent = r && r.logprob !== null ? `${fmt.nats(-r.logprob)} nats` : '—';
    $('score-bpd').textContent = r && r.bits_per_dim !== null ? r.bits_per_dim.toFixed(4) : '—';
    $('score-positions').textContent = r ? r.num_positions.toLocaleString('en') : '—';
    const max = MAX_NATS[model.modality];
    const nlls = r ? r.per_position.map((v) => (v === null ? max : -v)) : [];
    if (model.modality === 'binary_image') {
      if (r) paintHeatmap(heat, nlls, max);
      else heat.clear();
      legendGradient($('score-legend'), max);
    } else {
      const box = $('score-heat-text');
      box.replaceChildren(...Array.from(x, (ch, i) => charSpan(ch, r ? -nlls[i] : 0, { heat: true, maxNats: max })));
      legendGradient($('score-legend-text'), max);
    }
    for (const tr of $('score-table').tBodies[0].rows) tr.classList.toggle('selected', tr.dataset.model === answer.model.name);
  }

  function table(x) {
    const body = $('score-table').tBodies[0];
    body.replaceChildren();
    const best = rank(answers[0]);
    answers.forEach((a, i) => {
      const tr = body.insertRow();
      tr.dataset.model = a.model.name;
      if (a.model.name === model.name) tr.classList.add('selected');
      tr.insertCell().textContent = a.error ? '—' : String(i + 1);
      const name = tr.insertCell();
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'linkish';
      button.textContent = a.model.name;
      button.title = `Show ${a.model.name}'s heatmap`;
      button.addEventListener('click', () => show(a, x));
      name.append(button);
      if (a.error) {
        const cell = tr.insertCell();
        cell.colSpan = 3;
        cell.className = 'error-cell';
        cell.textContent = a.error.describe ? a.error.describe() : String(a.error.message);
        return;
      }
      const lp = tr.insertCell();
      lp.className = 'num logprob';
      lp.dataset.logprob = String(a.result.logprob);
      lp.textContent = fmt.nats(a.result.logprob);
      const bpd = tr.insertCell();
      bpd.className = 'num';
      bpd.textContent = a.result.bits_per_dim === null ? '—' : a.result.bits_per_dim.toFixed(4);
      const gap = tr.insertCell();
      gap.className = 'num muted';
      gap.textContent = i === 0 ? 'best' : `${fmt.nats(a.result.logprob - best)}`;
    });
  }

  return { onModel };
}
