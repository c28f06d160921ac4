// Drawing what the models produce: pixel canvases, probability-tinted text, heatmaps, audio waveforms.

export const INK = [245, 247, 250]; // token 1 of a binary image (MNIST's white ink)
export const PAPER = [8, 10, 16]; // token 0
export const PENDING = [30, 36, 50]; // not generated yet
export const PREFIX_INK = [150, 190, 255]; // a given (not generated) ink pixel
export const PREFIX_PAPER = [16, 26, 52];
const SURPRISE = [255, 138, 61]; // tint of an unlikely token

const mix = (a, b, t) => a.map((v, i) => Math.round(v + (b[i] - v) * t));

// A small canvas, one canvas pixel per token, scaled up by CSS (image-rendering: pixelated keeps it crisp).
export class PixelCanvas {
  constructor(canvas, width, height) {
    this.canvas = canvas;
    this.resize(width, height);
  }

  resize(width, height) {
    this.width = width;
    this.height = height;
    this.canvas.width = width;
    this.canvas.height = height;
    this.ctx = this.canvas.getContext('2d', { willReadFrequently: true });
    this.image = this.ctx.createImageData(width, height);
    this.clear();
  }

  clear() {
    for (let i = 0; i < this.width * this.height; i++) this.setRGB(i, PENDING);
    this.flush();
  }

  setRGB(index, [r, g, b]) {
    const d = this.image.data;
    d[4 * index] = r;
    d[4 * index + 1] = g;
    d[4 * index + 2] = b;
    d[4 * index + 3] = 255;
  }

  // A binary token; `shade` mixes in the surprise colour by how unlikely the model found it.
  setToken(index, token, logprob, shade) {
    let rgb = token ? INK : PAPER;
    if (shade && Number.isFinite(logprob)) rgb = mix(rgb, SURPRISE, Math.min(1, 1 - Math.exp(logprob)));
    this.setRGB(index, rgb);
  }

  // A continuous value in [0, 1] (RNADE's dequantized digits) as grey.
  setValue(index, value) {
    const v = Math.round(255 * Math.max(0, Math.min(1, value)));
    this.setRGB(index, [v, v, v]);
  }

  flush() {
    this.ctx.putImageData(this.image, 0, 0);
  }
}

// -log p (nats) -> a colour on a dark-to-bright scale (magma-like), for heatmaps and text.
const SCALE = [[0, [12, 8, 38]], [0.25, [90, 24, 110]], [0.5, [190, 50, 90]], [0.75, [250, 130, 60]],
  [1, [252, 240, 160]]];

export function heatColor(t) {
  t = Math.max(0, Math.min(1, t));
  for (let i = 1; i < SCALE.length; i++) {
    const [t1, c1] = SCALE[i];
    const [t0, c0] = SCALE[i - 1];
    if (t <= t1) return mix(c0, c1, (t - t0) / (t1 - t0));
  }
  return SCALE[SCALE.length - 1][1];
}

export function paintHeatmap(pixelCanvas, nlls, maxNats) {
  nlls.forEach((v, i) => pixelCanvas.setRGB(i, heatColor(v / maxNats)));
  pixelCanvas.flush();
}

export function legendGradient(el, maxNats, label = 'nats') {
  const stops = SCALE.map(([t]) => `rgb(${heatColor(t).join(',')}) ${t * 100}%`).join(', ');
  el.replaceChildren();
  const bar = document.createElement('span');
  bar.className = 'legend-bar';
  bar.style.background = `linear-gradient(to right, ${stops})`;
  const lo = document.createElement('span');
  lo.textContent = `0 ${label}`;
  const hi = document.createElement('span');
  hi.textContent = `≥ ${maxNats.toFixed(1)} ${label}`;
  el.append(lo, bar, hi);
}

// One character of a text stream, tinted by its probability, the value on hover (and to screen readers).
const VISIBLE = { '\n': '↵\n', ' ': ' ', '\t': '⇥' };

export function charSpan(ch, logprob, { heat = false, maxNats = 6 } = {}) {
  const span = document.createElement('span');
  span.className = 'tok';
  span.textContent = ch;
  const surprise = -logprob;
  if (heat) {
    const [r, g, b] = heatColor(surprise / maxNats);
    span.style.backgroundColor = `rgb(${r}, ${g}, ${b})`;
    span.style.color = surprise / maxNats > 0.55 ? '#111' : '#f4f4f8';
  } else {
    const t = Math.min(1, surprise / 4.6) ** 1.5; // p from ~1 (no tint) to 0.01 (full tint); likely chars stay quiet
    span.style.backgroundColor = `rgba(255, 138, 61, ${(0.8 * t).toFixed(3)})`;
  }
  const shown = JSON.stringify(ch).slice(1, -1);
  span.title = `'${shown}'  log p = ${logprob.toFixed(3)}  (p = ${Math.exp(logprob).toPrecision(3)})`;
  if (ch === '\n') span.dataset.newline = VISIBLE['\n'];
  return span;
}

// A waveform drawn over the whole expected length: one min/max bar per pixel column.
export function drawWaveform(canvas, samples, count, total) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(canvas.clientWidth * dpr));
  const h = Math.max(1, Math.round(canvas.clientHeight * dpr));
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#0b0e16';
  ctx.fillRect(0, 0, w, h);
  ctx.strokeStyle = '#262c3b';
  ctx.beginPath();
  ctx.moveTo(0, h / 2);
  ctx.lineTo(w, h / 2);
  ctx.stroke();
  const perColumn = Math.max(1, total / w);
  ctx.fillStyle = '#7c9cff';
  for (let x = 0; x < w; x++) {
    const start = Math.floor(x * perColumn);
    if (start >= count) break;
    const end = Math.min(count, Math.floor((x + 1) * perColumn) || start + 1);
    let lo = 1;
    let hi = -1;
    for (let i = start; i < Math.max(end, start + 1); i++) {
      lo = Math.min(lo, samples[i]);
      hi = Math.max(hi, samples[i]);
    }
    const y0 = ((1 - hi) / 2) * h;
    const y1 = ((1 - lo) / 2) * h;
    ctx.fillRect(x, y0, 1, Math.max(1, y1 - y0));
  }
  if (count < total) {
    const x = (count / total) * w;
    ctx.fillStyle = 'rgba(124, 156, 255, 0.35)';
    ctx.fillRect(x, 0, Math.max(1, dpr), h);
  }
}

export const fmt = {
  nats: (v) => (v === null || v === undefined ? '—' : v.toFixed(2)),
  ms: (v) => (v < 10 ? v.toFixed(1) : Math.round(v).toLocaleString('en')) + ' ms',
  rate: (v) => (v >= 100 ? Math.round(v).toLocaleString('en') : v.toFixed(1)) + ' tokens/s',
  count: (v) => (v >= 1e6 ? (v / 1e6).toFixed(2) + 'M' : v >= 1e3 ? (v / 1e3).toFixed(1) + 'k' : String(v)),
};
