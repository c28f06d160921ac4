// The playground: model picker and card, the three modes (Generate, Complete, Score), messages, the API key.

import { ApiError, apiKey, listModels, onKeyNeeded, setApiKey } from './api.js';
import { renderCard } from './card.js';
import { setupComplete } from './complete.js';
import { setupGenerate } from './generate.js';
import { setupScore } from './score.js';

const $ = (id) => document.getElementById(id);

const app = {
  models: [],
  model: null,
  modes: [],
  ofModality(modality) {
    return this.models.filter((m) => m.modality === modality);
  },
  error(err) {
    const text = err instanceof ApiError ? err.describe() : `${err.name || 'Error'}: ${err.message || err}`;
    message(text, 'error');
  },
  clearMessages() {
    $('messages').replaceChildren();
  },
};

function message(text, kind = 'info') {
  const box = document.createElement('div');
  box.className = `message ${kind}`;
  box.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  const span = document.createElement('span');
  span.textContent = text;
  const close = document.createElement('button');
  close.type = 'button';
  close.className = 'ghost dismiss';
  close.setAttribute('aria-label', 'Dismiss this message');
  close.textContent = '×';
  close.addEventListener('click', () => box.remove());
  box.append(span, close);
  $('messages').append(box);
}

// Elements marked data-modality / data-needs show only for the models they apply to.
function applyVisibility(model) {
  for (const el of document.querySelectorAll('[data-modality]')) {
    el.hidden = !el.dataset.modality.split(' ').includes(model.modality);
  }
  const needs = {
    discrete: model.distribution !== 'gaussian_mixture',
    variable: model.variable_length,
    backends: (model.backends || []).length > 1,
  };
  for (const el of document.querySelectorAll('[data-needs]')) el.hidden = !needs[el.dataset.needs];
}

function selectModel(name) {
  const model = app.models.find((m) => m.name === name);
  if (!model) return;
  app.model = model;
  $('model-select').value = name;
  document.body.dataset.modality = model.modality;
  renderCard($('card'), model);
  applyVisibility(model);
  for (const mode of app.modes) mode.onModel(model);
  history.replaceState(null, '', `#${encodeURIComponent(name)}`);
}

function fillPicker() {
  const select = $('model-select');
  select.replaceChildren();
  const groups = { binary_image: 'Images', text: 'Text', audio: 'Audio', vector: 'Continuous vectors' };
  for (const [modality, label] of Object.entries(groups)) {
    const models = app.ofModality(modality);
    if (!models.length) continue;
    const group = document.createElement('optgroup');
    group.label = label;
    for (const m of models) group.append(new Option(`${m.name} · ${m.family}`, m.name));
    select.append(group);
  }
  for (const m of app.models.filter((m) => !groups[m.modality])) select.append(new Option(m.name, m.name));
}

function setupTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const show = (tab, focus) => {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute('aria-selected', String(on));
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute('aria-controls')).hidden = !on;
    }
    if (focus) tab.focus();
  };
  tabs.forEach((tab, i) => {
    tab.addEventListener('click', () => show(tab, false));
    tab.addEventListener('keydown', (e) => {
      const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
      if (next === undefined) return;
      e.preventDefault();
      show(tabs[(next + tabs.length) % tabs.length], true);
    });
  });
}

function setupKey() {
  const dialog = $('key-dialog');
  const input = $('key-input');
  const button = $('key-button');
  const label = () => {
    button.textContent = apiKey() ? 'API key ✓' : 'API key';
  };
  const ask = (reason) => new Promise((resolve) => {
    $('key-reason').textContent = reason || 'Give the key this server was started with (ARSERVE_API_KEYS).';
    input.value = apiKey();
    dialog.returnValue = '';
    dialog.addEventListener('close', () => {
      const key = dialog.returnValue === 'save' ? input.value.trim() : '';
      if (dialog.returnValue === 'save') setApiKey(key);
      label();
      resolve(key || null);
    }, { once: true });
    dialog.showModal();
    input.focus();
  });
  onKeyNeeded(ask);
  button.addEventListener('click', async () => {
    await ask(apiKey() ? 'Change or clear the key (empty = none).' : null);
    if (!app.models.length) loadModels(); // the list was refused before the key was given
  });
  label();
}

async function loadModels() {
  app.clearMessages();
  try {
    app.models = await listModels();
  } catch (err) {
    $('model-select').replaceChildren(new Option('no models', ''));
    $('card').textContent = 'The model list could not be loaded.';
    app.error(err);
    return;
  }
  if (!app.models.length) {
    message('The server serves no models.', 'error');
    return;
  }
  fillPicker();
  const wanted = decodeURIComponent(location.hash.slice(1));
  selectModel(app.models.some((m) => m.name === wanted) ? wanted : $('model-select').options[0].value);
  document.body.dataset.ready = 'true';
}

function start() {
  setupTabs();
  setupKey();
  app.modes = [setupGenerate(app), setupComplete(app), setupScore(app)];
  $('model-select').addEventListener('change', (e) => selectModel(e.target.value));
  loadModels();
}

start();
