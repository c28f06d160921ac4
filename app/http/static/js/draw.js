// A 28x28 (or any size) binary drawing pad: pointer to draw, right button or the Erase tool to erase,
// and keyboard: arrow keys move a cursor, Space toggles the pixel under it.

const CELL = 10; // canvas pixels per image pixel: room for a grid and a cursor

export class DrawPad {
  constructor(canvas, width, height, { onChange } = {}) {
    this.canvas = canvas;
    this.width = width;
    this.height = height;
    this.pixels = new Uint8Array(width * height);
    this.keepRows = null; // Complete: rows at and below this one are the model's to fill (drawn dimmed)
    this.erasing = false;
    this.brush = 1; // 0 fine (1 px), 1 medium (a plus), 2 bold (3x3)
    this.cursor = null;
    this.onChange = onChange || (() => {});
    canvas.width = width * CELL;
    canvas.height = height * CELL;
    canvas.tabIndex = 0;
    canvas.setAttribute('role', 'img');
    this.ctx = canvas.getContext('2d');
    this.listen();
    this.render();
  }

  listen() {
    let last = null;
    let value = 1;
    const cellAt = (e) => {
      const r = this.canvas.getBoundingClientRect();
      const x = Math.floor(((e.clientX - r.left) / r.width) * this.width);
      const y = Math.floor(((e.clientY - r.top) / r.height) * this.height);
      return [Math.max(0, Math.min(this.width - 1, x)), Math.max(0, Math.min(this.height - 1, y))];
    };
    this.canvas.addEventListener('pointerdown', (e) => {
      e.preventDefault();
      this.canvas.setPointerCapture(e.pointerId);
      value = this.erasing || e.button === 2 ? 0 : 1;
      last = cellAt(e);
      this.stroke(last, last, value);
    });
    this.canvas.addEventListener('pointermove', (e) => {
      if (!last) return;
      const cell = cellAt(e);
      this.stroke(last, cell, value);
      last = cell;
    });
    const end = () => {
      if (last) this.onChange();
      last = null;
    };
    this.canvas.addEventListener('pointerup', end);
    this.canvas.addEventListener('pointercancel', end);
    this.canvas.addEventListener('contextmenu', (e) => e.preventDefault());
    this.canvas.addEventListener('keydown', (e) => this.key(e));
    this.canvas.addEventListener('focus', () => {
      this.cursor ??= [Math.floor(this.width / 2), Math.floor(this.height / 2)];
      this.render();
    });
    this.canvas.addEventListener('blur', () => this.render());
  }

  key(e) {
    const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    const [x, y] = this.cursor ?? [0, 0];
    if (moves[e.key]) {
      const [dx, dy] = moves[e.key];
      this.cursor = [Math.max(0, Math.min(this.width - 1, x + dx)), Math.max(0, Math.min(this.height - 1, y + dy))];
      if (e.shiftKey) this.paint(this.cursor, this.erasing ? 0 : 1);
      this.render();
    } else if (e.key === ' ' || e.key === 'Enter') {
      const i = y * this.width + x;
      this.pixels[i] = this.pixels[i] ? 0 : 1;
      this.render();
      this.onChange();
    } else {
      return;
    }
    e.preventDefault();
  }

  // Bresenham from a to b, painting a brush at every cell.
  stroke([x0, y0], [x1, y1], value) {
    const dx = Math.abs(x1 - x0);
    const dy = -Math.abs(y1 - y0);
    const sx = x0 < x1 ? 1 : -1;
    const sy = y0 < y1 ? 1 : -1;
    let err = dx + dy;
    for (;;) {
      this.paint([x0, y0], value);
      if (x0 === x1 && y0 === y1) break;
      const e2 = 2 * err;
      if (e2 >= dy) { err += dy; x0 += sx; }
      if (e2 <= dx) { err += dx; y0 += sy; }
    }
    this.render();
  }

  paint([x, y], value) {
    const offsets = [[[0, 0]], [[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]],
      [-1, 0, 1].flatMap((a) => [-1, 0, 1].map((b) => [a, b]))][this.brush];
    for (const [dx, dy] of offsets) {
      const px = x + dx;
      const py = y + dy;
      if (px >= 0 && px < this.width && py >= 0 && py < this.height) this.pixels[py * this.width + px] = value;
    }
  }

  set(pixels) {
    this.pixels.set(pixels);
    this.render();
    this.onChange();
  }

  clear() {
    this.pixels.fill(0);
    this.render();
    this.onChange();
  }

  inkCount() {
    return this.pixels.reduce((a, b) => a + b, 0);
  }

  render() {
    const { ctx, width, height } = this;
    ctx.fillStyle = '#080a10';
    ctx.fillRect(0, 0, width * CELL, height * CELL);
    ctx.fillStyle = '#f5f7fa';
    for (let i = 0; i < this.pixels.length; i++) {
      if (this.pixels[i]) ctx.fillRect((i % width) * CELL, Math.floor(i / width) * CELL, CELL, CELL);
    }
    ctx.strokeStyle = 'rgba(255, 255, 255, 0.06)';
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let k = 1; k < Math.max(width, height); k++) {
      ctx.moveTo(k * CELL + 0.5, 0);
      ctx.lineTo(k * CELL + 0.5, height * CELL);
      ctx.moveTo(0, k * CELL + 0.5);
      ctx.lineTo(width * CELL, k * CELL + 0.5);
    }
    ctx.stroke();
    if (this.keepRows !== null) {
      const top = this.keepRows * CELL;
      ctx.fillStyle = 'rgba(40, 52, 90, 0.72)';
      ctx.fillRect(0, top, width * CELL, height * CELL - top);
      ctx.strokeStyle = '#7c9cff';
      ctx.lineWidth = 2;
      ctx.setLineDash([6, 4]);
      ctx.beginPath();
      ctx.moveTo(0, top);
      ctx.lineTo(width * CELL, top);
      ctx.stroke();
      ctx.setLineDash([]);
    }
    if (this.cursor && document.activeElement === this.canvas) {
      const [x, y] = this.cursor;
      ctx.strokeStyle = '#ff8a3d';
      ctx.lineWidth = 2;
      ctx.strokeRect(x * CELL + 1, y * CELL + 1, CELL - 2, CELL - 2);
    }
  }
}

// A PNG (or any image) file -> width*height binary pixels: drawn small, ink = the minority tone.
export async function imageFileToPixels(file, width, height) {
  const bitmap = await createImageBitmap(file);
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, width, height); // transparent areas read as paper
  ctx.drawImage(bitmap, 0, 0, width, height);
  const d = ctx.getImageData(0, 0, width, height).data;
  const grey = new Float32Array(width * height);
  for (let i = 0; i < grey.length; i++) grey[i] = (0.299 * d[4 * i] + 0.587 * d[4 * i + 1] + 0.114 * d[4 * i + 2]) / 255;
  const mean = grey.reduce((a, b) => a + b, 0) / grey.length;
  const darkInk = mean > 0.5; // black digit on white paper: invert to MNIST's white ink
  return Uint8Array.from(grey, (g) => ((darkInk ? 1 - g : g) > 0.5 ? 1 : 0));
}

// The Draw / Erase / brush / Clear controls under a pad.
export function wireToolbar(toolbar, pad) {
  const tools = [...toolbar.querySelectorAll('[data-tool]')];
  for (const button of tools) {
    button.addEventListener('click', () => {
      pad.erasing = button.dataset.tool === 'erase';
      for (const b of tools) b.setAttribute('aria-pressed', String(b === button));
    });
  }
  const brush = toolbar.querySelector('select.brush');
  brush.addEventListener('change', () => { pad.brush = Number(brush.value); });
  pad.brush = Number(brush.value);
}
