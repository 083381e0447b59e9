// The cited page of a PDF, drawn by pdf.js with the cited passage highlighted over its text.
// Loaded by app.js the first time a PDF citation is opened; pdf.js (served by this server,
// from web/vendor/pdfjs) is imported then, and parses the file in a module worker.

const PDFJS = "/static/vendor/pdfjs/pdf.min.mjs";
const WORKER = "/static/vendor/pdfjs/pdf.worker.min.mjs";
const KEEP = 3; // documents kept open, for several citations into the same PDFs

let library = null;
const open = new Map(); // document id -> Promise of a PDFDocumentProxy, oldest first

async function pdfjs() {
  if (!library) {
    library = import(PDFJS).then((lib) => {
      lib.GlobalWorkerOptions.workerSrc = WORKER;
      return lib;
    });
  }
  return library;
}

// Thrown with a message for the reader: the file is not kept, or is not readable.
export class PageError extends Error {}

async function loadDocument(documentId, headers) {
  if (open.has(documentId)) {
    const cached = open.get(documentId);
    open.delete(documentId);
    open.set(documentId, cached);
    return cached;
  }
  const loading = (async () => {
    const response = await fetch(`/v1/documents/${encodeURIComponent(documentId)}/file`, { headers });
    if (!response.ok) {
      let message = response.statusText;
      try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
      throw new PageError(message);
    }
    const data = new Uint8Array(await response.arrayBuffer());
    const lib = await pdfjs();
    // No eval (the page's CSP forbids it) and nothing fetched: the bytes are all it reads.
    return lib.getDocument({ data, isEvalSupported: false, useWorkerFetch: false,
      disableAutoFetch: true, disableStream: true }).promise;
  })();
  open.set(documentId, loading);
  loading.catch(() => open.delete(documentId));
  while (open.size > KEEP) {
    const [oldest, proxy] = open.entries().next().value;
    open.delete(oldest);
    proxy.then((doc) => doc.destroy(), () => {});
  }
  return loading;
}

// Close every open document: a new answer may cite documents ingested again meanwhile.
export function forget() {
  for (const proxy of open.values()) proxy.then((doc) => doc.destroy(), () => {});
  open.clear();
}

function normalise(text) {
  // Lower case, runs of white space as one space; with, for each kept character, where
  // it came from ([item, offset]), so a match maps back onto the page's text items.
  let out = "";
  const from = [];
  text.forEach(([item, str]) => {
    for (let i = 0; i < str.length; i++) {
      const ch = str[i];
      if (/\s/.test(ch)) {
        if (out && !out.endsWith(" ")) { out += " "; from.push([item, i]); }
      } else {
        out += ch.toLowerCase();
        from.push([item, i]);
      }
    }
    if (out && !out.endsWith(" ")) { out += " "; from.push([item, str.length]); }
  });
  return { out, from };
}

function exactSpans(items, passage) {
  // [item, start, end] ranges of the items that hold the passage word for word, or null.
  const { out, from } = normalise(items.map((it, i) => [i, it.str]));
  const needle = normalise([[0, passage]]).out.trim();
  const at = needle ? out.indexOf(needle) : -1;
  if (at < 0) return null;
  const spans = new Map();
  for (let k = at; k < at + needle.length; k++) {
    const [item, offset] = from[k];
    const span = spans.get(item) || [item, offset, offset];
    span[2] = Math.max(span[2], offset + 1);
    spans.set(item, span);
  }
  return [...spans.values()];
}

function wordSpans(items, passage) {
  // Items most of whose words are the passage's: where extraction spaced the text apart.
  const words = (s) => s.toLowerCase().match(/[\p{L}\p{N}]{2,}/gu) || [];
  const wanted = new Set(words(passage));
  const spans = [];
  items.forEach((it, i) => {
    const own = words(it.str);
    const shared = own.filter((w) => wanted.has(w)).length;
    if (own.length && shared / own.length >= 0.6) spans.push([i, 0, it.str.length]);
  });
  return spans;
}

function box(lib, viewport, item, styles) {
  // The item's box on the drawn page: from its font's ascent above the baseline to its
  // descent below (pdf.js's text layer places its spans the same way).
  const tx = lib.Util.transform(viewport.transform, item.transform);
  const size = Math.hypot(tx[2], tx[3]);
  const style = styles[item.fontName] || {};
  const ascent = style.ascent || 0.8;
  const descent = style.descent || -0.2;
  return { left: tx[4], top: tx[5] - size * ascent, width: item.width * viewport.scale,
    height: size * (ascent - descent), size };
}

function place(node, rect) {
  node.style.left = rect.left + "px";
  node.style.top = rect.top + "px";
  node.style.width = Math.max(rect.width, 1) + "px";
  node.style.height = rect.height + "px";
}

function textLayer(lib, viewport, items, styles) {
  // Each text item of the page as a transparent, positioned span: where the words are.
  const layer = document.createElement("div");
  layer.className = "pdf-text-layer";
  layer.setAttribute("aria-hidden", "true");
  items.forEach((item, i) => {
    const span = document.createElement("span");
    span.className = "pdf-text";
    span.dataset.item = String(i);
    span.textContent = item.str;
    const rect = box(lib, viewport, item, styles);
    place(span, rect);
    span.style.fontSize = rect.size + "px";
    layer.append(span);
  });
  return layer;
}

function highlights(lib, viewport, items, styles, passages) {
  let spans = null;
  for (const passage of passages) {
    spans = exactSpans(items, passage);
    if (spans) break;
  }
  if (!spans) spans = passages.length ? wordSpans(items, passages[0]) : [];
  const measure = document.createElement("canvas").getContext("2d");
  return spans.map(([i, start, stop]) => {
    const item = items[i];
    const rect = box(lib, viewport, item, styles);
    // Where the characters start and end along the item, in proportion to their widths
    // in a like font (the page's own glyphs are drawn on the canvas, not measurable).
    measure.font = `${rect.size}px ${(styles[item.fontName] || {}).fontFamily || "sans-serif"}`;
    const whole = measure.measureText(item.str).width || 1;
    const x0 = measure.measureText(item.str.slice(0, start)).width / whole;
    const x1 = measure.measureText(item.str.slice(0, Math.min(stop, item.str.length))).width / whole;
    const mark = document.createElement("div");
    mark.className = "pdf-highlight";
    mark.dataset.item = String(i);
    place(mark, { left: rect.left + rect.width * x0, top: rect.top,
      width: rect.width * (x1 - x0), height: rect.height });
    return mark;
  });
}

// Draw page `page` of document `documentId` into `container`, highlighting the first of
// `passages` (the supporting sentence, then the whole chunk) found on it. `current()` says
// whether this is still the citation the reader asked for. Resolves to the number of
// highlights drawn; rejects with PageError when the file cannot be shown.
export async function renderPage(container, { documentId, title, page, passages, headers, current }) {
  const doc = await loadDocument(documentId, headers);
  if (!current()) return 0;
  const number = Math.min(Math.max(1, page), doc.numPages);
  const pdfPage = await doc.getPage(number);
  const lib = await pdfjs();
  const width = Math.max(container.clientWidth, 200);
  const viewport = pdfPage.getViewport({ scale: width / pdfPage.getViewport({ scale: 1 }).width });
  const ratio = window.devicePixelRatio || 1;
  const canvas = document.createElement("canvas");
  canvas.className = "pdf-canvas";
  canvas.width = Math.floor(viewport.width * ratio);
  canvas.height = Math.floor(viewport.height * ratio);
  canvas.style.width = viewport.width + "px";
  canvas.style.height = viewport.height + "px";
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `${title}, page ${number} of ${doc.numPages}, ` +
    "the cited passage highlighted");
  await pdfPage.render({ canvasContext: canvas.getContext("2d"), viewport,
    transform: ratio === 1 ? null : [ratio, 0, 0, ratio, 0, 0] }).promise;
  const content = await pdfPage.getTextContent();
  if (!current()) return 0;
  const items = content.items.filter((it) => typeof it.str === "string" && it.str.trim());
  const marks = highlights(lib, viewport, items, content.styles, passages.filter(Boolean));
  const sheet = document.createElement("div");
  sheet.className = "pdf-sheet";
  sheet.style.width = viewport.width + "px";
  sheet.style.height = viewport.height + "px";
  sheet.append(canvas, textLayer(lib, viewport, items, content.styles), ...marks);
  container.dataset.page = String(number);
  container.dataset.document = documentId;
  container.replaceChildren(sheet);
  return marks.length;
}
