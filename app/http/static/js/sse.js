// Server-Sent Events parsing for a fetch() body (the event-stream format of the HTML standard).
// EventSource cannot send an Authorization header, so the page reads GET /sample with fetch and parses here.

export class SSEParser {
  constructor() {
    this.buffer = '';
  }

  // Feed decoded text; returns the complete events it finished, as {event, data} (data still a string).
  push(text) {
    this.buffer += text.replace(/\r\n?/g, '\n');
    const events = [];
    let end;
    while ((end = this.buffer.indexOf('\n\n')) >= 0) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const parsed = parseBlock(block);
      if (parsed) events.push(parsed);
    }
    return events;
  }
}

function parseBlock(block) {
  let event = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue; // a comment (the server's keep-alive)
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
  }
  return data.length ? { event, data: data.join('\n') } : null;
}
