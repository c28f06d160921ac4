// The model card: what the model is, what it was trained on, how good it is, what a step carries.

import { fmt } from './render.js';

const MODALITY = { binary_image: 'binary image', text: 'text', audio: 'audio', vector: 'continuous vector' };

function row(dl, term, value) {
  if (value === undefined || value === null || value === '') return;
  const dt = document.createElement('dt');
  dt.textContent = term;
  const dd = document.createElement('dd');
  dd.textContent = value;
  dl.append(dt, dd);
}

export function heldOut(model) {
  const m = model.metrics || {};
  return m.test || m.valid || null;
}

function nllLine(r) {
  if (!r) return null;
  return `${r.nll.toFixed(2)} ${r.unit || 'nats'} · ${r.bits_per_dim.toFixed(4)} bits/dim (${r.dataset}, ${r.split}, ` +
    `${r.examples.toLocaleString('en')} examples)`;
}

function shape(model) {
  const s = model.shape || [model.length];
  const what = s.join(' × ');
  if (model.modality === 'audio') {
    const rate = model.vocabulary?.sample_rate;
    return `${model.length.toLocaleString('en')} samples${rate ? ` (${(model.length / rate).toFixed(1)} s at ${rate} Hz)` : ''}`;
  }
  return model.variable_length ? `up to ${model.length.toLocaleString('en')} tokens` : `${what} = ${model.length} values`;
}

function vocab(model) {
  if (model.distribution === 'gaussian_mixture') return `continuous, ${model.config?.components ?? '?'}-component Gaussian mixture`;
  if (model.modality === 'audio') return `${model.vocab_size}-way μ-law`;
  if (model.modality === 'text') return `${model.vocab_size} characters`;
  return `${model.vocab_size} (${model.distribution})`;
}

function stateLine(model) {
  const state = model.state || [];
  if (!state.length) return 'none';
  return state.map((s) => `${s.name} [${s.shape.join(', ')}]`).join(' · ');
}

export function renderCard(el, model) {
  el.replaceChildren();
  const h = document.createElement('h2');
  h.textContent = model.name;
  const tags = document.createElement('p');
  tags.className = 'tags';
  for (const t of [model.family, MODALITY[model.modality] || model.modality]) {
    const span = document.createElement('span');
    span.className = 'tag';
    span.textContent = t;
    tags.append(span);
  }
  const desc = document.createElement('p');
  desc.className = 'desc';
  desc.textContent = model.description || '';
  const dl = document.createElement('dl');
  const t = model.training || {};
  const data = heldOut(model)?.dataset || t.recipe?.dataset;
  row(dl, 'Data', data);
  row(dl, 'Held-out NLL', nllLine(heldOut(model)));
  row(dl, 'Parameters', t.parameters ? `${fmt.count(t.parameters)} (${t.parameters.toLocaleString('en')})` : null);
  row(dl, 'Shape', shape(model));
  row(dl, 'Vocabulary', vocab(model));
  row(dl, 'Step state', stateLine(model));
  row(dl, 'Training', t.steps ? `${t.steps.toLocaleString('en')} steps, ${Math.round(t.wall_minutes)} min on ${t.hardware?.split(',')[0] || 'CPU'}` : null);
  row(dl, 'Backends', (model.backends || []).map((b) => (b === model.default_backend ? `${b} (default)` : b)).join(', '));
  row(dl, 'Status', 'loaded, serving');
  el.append(h, tags, desc, dl);
}
