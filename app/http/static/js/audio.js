// Mu-law audio (the WaveNet's tokens): decode to samples, play what has arrived with Web Audio.

export function muLawDecode(token, mu) {
  const y = (2 * token) / mu - 1; // ITU G.711 expansion, as the server's codec
  return (Math.sign(y) * ((1 + mu) ** Math.abs(y) - 1)) / mu;
}

let context = null;
let playing = null;

// Plays samples[0:count] at sampleRate; returns the duration in seconds. Must be called from a user gesture.
export function play(samples, count, sampleRate, onEnded) {
  stop();
  context ??= new AudioContext();
  if (!count) return 0;
  const buffer = context.createBuffer(1, count, sampleRate);
  buffer.copyToChannel(samples.subarray(0, count), 0);
  const source = context.createBufferSource();
  source.buffer = buffer;
  source.connect(context.destination);
  source.onended = () => {
    if (playing === source) playing = null;
    onEnded?.();
  };
  context.resume();
  source.start();
  playing = source;
  return count / sampleRate;
}

export function stop() {
  if (playing) {
    const p = playing;
    playing = null;
    try {
      p.stop();
    } catch {
      // already ended
    }
  }
}
