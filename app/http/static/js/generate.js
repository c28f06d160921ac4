// Generate: one sample streamed from GET /sample, drawn live as its tokens arrive.

import { ApiError, streamSample } from './api.js';
import * as audio from './audio.js';
import { PixelCanvas, charSpan, drawWaveform, fmt } from './render.js';

const $ = (id) => document.getElementById(id);

export function setupGenerate(app) {
  const out = $('gen-output');
  const pixels = new PixelCanvas($('gen-canvas'), 28, 28);
  const wave = $('gen-wave');
  let model = null;
  let controller = null;
  let run = null; // the sample being drawn: counts, timings and the audio samples so far
  let frame = 0;

  for (const id of ['gen-temperature', 'gen-top-p']) {
    const input = $(id);
    const sync = () => { $(`${id}-out`).textContent = Number(input.value).toFixed(2); };
    input.addEventListener('input', sync);
    sync();
  }
  $('gen-random').addEventListener('click', () => {
    $('gen-seed').value = String(Math.floor(Math.random() * 2 ** 31));
  });
  $('gen-form').addEventListener('submit', (e) => {
    e.preventDefault();
    start();
  });
  $('gen-stop').addEventListener('click', () => controller?.abort());
  $('gen-play').addEventListener('click', () => {
    if (!run?.samples) return;
    const seconds = audio.play(run.samples, run.audioCount, model.vocabulary.sample_rate);
    $('gen-status').textContent = `playing ${seconds.toFixed(2)} s`;
  });
  window.addEventListener('resize', () => run?.samples && drawWave());

  function params() {
    const p = {
      model: model.name,
      temperature: $('gen-temperature').value,
      seed: $('gen-seed').value,
      chunk: $('gen-chunk').value,
    };
    if (model.distribution !== 'gaussian_mixture') {
      p.top_k = $('gen-top-k').value;
      p.top_p = $('gen-top-p').value;
    }
    if (model.variable_length) p.max_len = $('gen-max-len').value;
    if (model.modality === 'text' && $('gen-prompt').value) p.prompt = $('gen-prompt').value;
    if ($('gen-backend').value && $('gen-backend').value !== model.default_backend) p.backend = $('gen-backend').value;
    return p;
  }

  function setState(state, status) {
    out.dataset.state = state;
    $('gen-status').textContent = status;
  }

  function reset() {
    audio.stop();
    const [h, w] = model.shape.length === 2 ? model.shape : [1, model.length];
    if (model.modality === 'binary_image' || model.modality === 'vector') pixels.resize(w, h);
    $('gen-text').querySelector('.prompt').textContent = '';
    $('gen-text').querySelector('.generated').replaceChildren();
    for (const id of ['gen-png', 'gen-wav', 'gen-audio']) {
      $(id).hidden = true;
      $(id).removeAttribute('href');
      $(id).removeAttribute('src');
    }
    $('gen-play').disabled = true;
    for (const id of ['gen-ttft', 'gen-rate', 'gen-count', 'gen-logprob']) $(id).textContent = '—';
    $('gen-stats').title = '';
    run = null;
    if (model.modality === 'audio') {
      drawWaveform(wave, new Float32Array(0), 0, 1);
    }
  }

  function onModel(m) {
    controller?.abort();
    if (m.name !== model?.name) $('gen-history').replaceChildren();
    model = m;
    const backend = $('gen-backend');
    backend.replaceChildren(...(m.backends || []).map((b) => new Option(b, b)));
    backend.value = m.default_backend;
    $('gen-chunk').value = m.modality === 'audio' ? '16' : '1';
    if (m.variable_length) {
      const length = m.modality === 'audio' ? m.length : Math.min(m.length, 400);
      $('gen-max-len').max = String(m.length);
      $('gen-max-len').value = String(length);
    }
    reset();
    setState('idle', 'ready');
  }

  function drawWave() {
    drawWaveform(wave, run.samples, run.audioCount, run.samples.length);
  }

  // Heavy redraws (canvas uploads, the waveform) at most once per animation frame.
  function schedule() {
    if (frame) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      if (!run) return;
      if (model.modality === 'audio') drawWave();
      else if (model.modality !== 'text') pixels.flush();
      showProgress();
    });
  }

  function showProgress() {
    const now = performance.now();
    if (run.first !== null) {
      $('gen-ttft').textContent = fmt.ms(run.first - run.t0);
      const seconds = (now - run.first) / 1000;
      if (seconds > 0 && run.count > 1) $('gen-rate').textContent = fmt.rate((run.count - 1) / seconds);
    }
    $('gen-count').textContent = `${run.count.toLocaleString('en')} / ${run.total.toLocaleString('en')}`;
    $('gen-logprob').textContent = fmt.nats(run.logprob);
  }

  function onToken(event) {
    if (run.first === null) run.first = performance.now();
    const shade = $('gen-shade').checked;
    const generated = $('gen-text').querySelector('.generated');
    event.tokens.forEach((token, k) => {
      const index = event.index + k;
      const lp = event.logprobs[k];
      run.logprob += lp;
      if (model.modality === 'binary_image') pixels.setToken(index, token, lp, shade);
      else if (model.modality === 'vector') pixels.setValue(index, token);
      else if (model.modality === 'text') generated.append(charSpan(event.text[k], lp));
      else if (model.modality === 'audio') {
        run.samples[index] = audio.muLawDecode(token, model.vocabulary.mu);
        run.audioCount = index + 1;
      }
    });
    run.count += event.tokens.length;
    $('gen-play').disabled = !(model.modality === 'audio' && run.audioCount > 0);
    schedule();
  }

  function finish(done) {
    const end = performance.now();
    if (model.modality !== 'text' && model.modality !== 'audio') pixels.flush();
    if (model.modality === 'audio') drawWave();
    showProgress();
    run.count = done.num_tokens;
    $('gen-count').textContent = done.num_tokens.toLocaleString('en');
    $('gen-logprob').textContent = fmt.nats(done.logprob);
    if (run.first !== null && done.num_tokens > 1) $('gen-rate').textContent = fmt.rate((done.num_tokens - 1) / ((end - run.first) / 1000));
    const t = done.timings || {};
    $('gen-stats').title = `server: ${Object.entries(t).map(([k, v]) => `${k} ${v}`).join(', ')}; seed ${done.seed}`;
    if (done.png) {
      $('gen-png').href = done.png;
      $('gen-png').download = `${model.name}-seed${done.seed}.png`;
      $('gen-png').hidden = false;
    }
    if (done.wav) {
      $('gen-wav').href = done.wav;
      $('gen-wav').download = `${model.name}-seed${done.seed}.wav`;
      $('gen-wav').hidden = false;
      $('gen-audio').src = done.wav;
      $('gen-audio').hidden = false;
    }
    if (model.modality === 'binary_image' || model.modality === 'vector') remember(done);
    setState('done', `done · ${done.finish_reason} · seed ${done.seed}`);
  }

  // A thumbnail of each finished image sample (newest first); selecting one puts its seed back in the form.
  function remember(done) {
    const list = $('gen-history');
    const item = document.createElement('li');
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'ghost';
    button.title = `${model.name}, seed ${done.seed}: use this seed`;
    const img = document.createElement('img');
    img.src = done.png || $('gen-canvas').toDataURL('image/png');
    img.alt = `${model.name} sample, seed ${done.seed}`;
    const caption = document.createElement('small');
    caption.textContent = `${done.seed} · ${fmt.nats(done.logprob)}`;
    button.append(img, caption);
    button.addEventListener('click', () => {
      $('gen-seed').value = String(done.seed);
      $('gen-seed').focus();
    });
    item.append(button);
    list.prepend(item);
    while (list.children.length > 12) list.lastChild.remove();
  }

  async function start() {
    if (controller || !model) return;
    app.clearMessages();
    reset();
    const p = params();
    const total = model.variable_length ? Number(p.max_len) : model.length;
    const mine = { t0: performance.now(), first: null, count: 0, total, logprob: 0, audioCount: 0, samples: null };
    run = mine;
    if (model.modality === 'text' && p.prompt) $('gen-text').querySelector('.prompt').textContent = p.prompt;
    if (model.modality === 'audio') run.samples = new Float32Array(total);
    controller = new AbortController();
    const { signal } = controller;
    $('gen-start').disabled = true;
    $('gen-stop').disabled = false;
    setState('streaming', 'streaming…');
    try {
      finish(await streamSample(p, { signal, onToken }));
    } catch (err) {
      if (signal.aborted) {
        setState('stopped', `stopped after ${mine.count.toLocaleString('en')} tokens`);
      } else {
        setState('error', err instanceof ApiError ? `error: ${err.code}` : 'error');
        app.error(err);
      }
      if (run === mine && mine.samples) drawWave();
    } finally {
      controller = null;
      const stopHadFocus = document.activeElement === $('gen-stop');
      $('gen-start').disabled = false;
      $('gen-stop').disabled = true;
      if (stopHadFocus) $('gen-start').focus(); // keep the keyboard user's place
    }
  }

  return { onModel };
}
