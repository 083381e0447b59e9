// Verity's web page: ask a question, watch the answer stream in, check every citation.
// Plain JavaScript, no build step; everything it loads comes from this server.
"use strict";

const KEY_SLOT = "verity.apiKey"; // sessionStorage only: gone when the tab closes
// Weak evidence: an answer whose best source has a dense cosine below this gets a warning.
const WEAK_RELEVANCE = 0.4;

const $ = (id) => document.getElementById(id);
let controller = null;
let sources = new Map();
let answerText = "";
let shown = null; // the answer as shown: what feedback on it records
let conversation = []; // earlier {question, answer} turns: the next question is a follow-up
let pdfPages = null; // the module that draws a PDF's cited page, imported on first use
let pageRequest = 0; // the latest page asked for: a slower, earlier one is not shown

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const key = sessionStorage.getItem(KEY_SLOT);
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

function setStatus(text) { $("status").textContent = text; }

function showBanner(kind, title, detail) {
  const banner = $("banner");
  banner.className = "banner " + kind;
  banner.replaceChildren(el("strong", {}, title), detail || "");
  banner.hidden = false;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.error ? body.error.message : response.statusText;
  } catch (e) {
    return response.statusText;
  }
}

async function loadCollections() {
  const select = $("collection");
  const response = await fetch("/v1/collections", { headers: headers(false) });
  if (!response.ok) {
    setStatus("Could not list collections: " + (await errorMessage(response)) +
      (response.status === 401 ? " Enter an API key above." : ""));
    return;
  }
  const body = await response.json();
  const previous = select.value;
  select.replaceChildren(...body.collections.map((c) =>
    el("option", { value: c.name, "data-vectors": c.precision ? `${c.precision} (${c.backend})` : "",
      "data-reembedding": c.re_embedding_to || "" }, `${c.name} (${c.documents} documents)`)));
  if (previous) select.value = previous;
  if (!body.collections.length) setStatus("No collections yet: ingest some documents first.");
}

function resetAnswer() {
  $("banner").hidden = true;
  $("answer").className = "answer";
  $("answer").replaceChildren();
  $("trace").hidden = true;
  $("trace").open = false;
  closePanel();
  if (pdfPages) pdfPages.then((m) => m.forget(), () => {});
  sources = new Map();
  answerText = "";
  shown = null;
  $("feedback").hidden = true;
  $("fb-form").hidden = true;
  $("fb-status").textContent = "";
  for (const id of ["fb-up", "fb-down"]) $(id).setAttribute("aria-pressed", "false");
  $("fb-down").setAttribute("aria-expanded", "false");
}

function* sseEvents(buffer) {
  // Yields [event, data] for each complete event in buffer.text; keeps the incomplete tail.
  let cut;
  while ((cut = buffer.text.indexOf("\n\n")) >= 0) {
    const block = buffer.text.slice(0, cut);
    buffer.text = buffer.text.slice(cut + 2);
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event: ")) event = line.slice(7);
      else if (line.startsWith("data: ")) data.push(line.slice(6));
    }
    if (data.length) yield [event, JSON.parse(data.join("\n"))];
  }
}

function onEvent(event, data) {
  const answer = $("answer");
  if (event === "token") {
    answerText += data.text;
    answer.textContent = answerText;
  } else if (event === "citations") {
    showFinal(data);
  } else if (event === "trace") {
    showTrace(data);
  } else if (event === "error") {
    showBanner("error", "The answer could not be finished.", data.message);
  }
}

async function ask(submit) {
  submit.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  resetAnswer();
  controller = new AbortController();
  $("ask").disabled = true;
  $("stop").disabled = false;
  $("answer").setAttribute("aria-busy", "true");
  setStatus("Searching the documents…");
  const note = await ingestingNote($("collection").value || "default");
  $("ingesting").textContent = note;
  $("ingesting").hidden = !note;
  try {
    const response = await fetch("/v1/query", {
      method: "POST", headers: headers(true), signal: controller.signal,
      body: JSON.stringify({ question, collection: $("collection").value || null, stream: true,
        history: conversation }),
    });
    if (!response.ok) {
      showBanner("error", "The question was refused.", await errorMessage(response));
      setStatus("");
      return;
    }
    setStatus("Writing the answer…");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const buffer = { text: "" };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer.text += value.replace(/\r\n/g, "\n");
      for (const [event, data] of sseEvents(buffer)) onEvent(event, data);
    }
    setStatus("Done.");
    if (shown) remember(shown.asked, shown.answer);
  } catch (e) {
    if (e.name === "AbortError") setStatus("Stopped. The answer above is incomplete.");
    else showBanner("error", "The connection to the server failed.", String(e.message || e));
  } finally {
    controller = null;
    $("ask").disabled = false;
    $("stop").disabled = true;
    $("answer").setAttribute("aria-busy", "false");
  }
}

function remember(question, answer) {
  conversation.push({ question, answer });
  const list = $("turns");
  list.append(el("li", {}, el("p", { class: "turn-q" }, question), el("p", { class: "turn-a" }, answer)));
  $("turns-box").hidden = false;
  $("new-chat").disabled = false;
}

function newConversation() {
  conversation = [];
  $("turns").replaceChildren();
  $("turns-box").hidden = true;
  $("new-chat").disabled = true;
  resetAnswer();
  $("question").value = "";
  $("question").focus();
  setStatus("New conversation: the next question stands on its own.");
}

function stop() {
  if (controller) controller.abort();
}

function showFinal(data) {
  const asked = $("question").value.trim();
  shown = { asked, question: asked, answer: data.answer, status: data.status,
    collection: $("collection").value || "default", citations: data.citations, trace: {} };
  $("feedback").hidden = false;
  for (const s of data.sources) sources.set(s.n, s);
  for (const c of data.citations) sources.set(c.n, c);
  answerText = data.answer;
  renderAnswer(data.answer);
  const answer = $("answer");
  if (data.status === "abstained") {
    answer.classList.add("abstained");
    showBanner("abstained", "Not in the documents.",
      "Verity found nothing that answers this; the closest sources are listed below.");
  } else if (data.status === "generation_unavailable") {
    showBanner("unavailable", "The model is unavailable: no answer was written.",
      "These are the sources retrieval found; try again later.");
  } else if (isWeak(data.sources)) {
    showBanner("weak", "Weak evidence: check the sources.",
      `No source is closely related to the question (best relevance below ${WEAK_RELEVANCE}).`);
  }
}

function isWeak(list) {
  const known = list.map((s) => s.relevance).filter((r) => typeof r === "number");
  return known.length > 0 && Math.max(...known) < WEAK_RELEVANCE;
}

function renderAnswer(text) {
  const parts = [];
  let last = 0;
  for (const m of text.matchAll(/\[(\d+)\]/g)) {
    const n = Number(m[1]);
    if (!sources.has(n)) continue;
    parts.push(text.slice(last, m.index), citeButton(n));
    last = m.index + m[0].length;
  }
  parts.push(text.slice(last));
  $("answer").replaceChildren(...parts);
}

function citeButton(n) {
  const s = sources.get(n);
  const button = el("button", { type: "button", class: "cite", "data-n": String(n),
    "aria-label": `Source ${n}: ${s.document}` }, `[${n}]`);
  button.addEventListener("mouseenter", () => showTip(button, s));
  button.addEventListener("focus", () => showTip(button, s));
  button.addEventListener("mouseleave", hideTip);
  button.addEventListener("blur", hideTip);
  button.addEventListener("click", () => openPanel(button, n));
  return button;
}

function describe(s) {
  const where = [s.document, s.heading, s.page ? `page ${s.page}` : ""].filter(Boolean).join(" · ");
  const score = typeof s.score === "number" ? ` · score ${s.score.toFixed(3)}` : "";
  const rel = typeof s.relevance === "number" ? ` · relevance ${s.relevance.toFixed(2)}` : "";
  return where + score + rel;
}

function showTip(button, s) {
  const tip = $("tip");
  const text = s.text.length > 300 ? s.text.slice(0, 300) + "…" : s.text;
  tip.replaceChildren(el("span", { class: "meta" }, describe(s)), text);
  const box = button.getBoundingClientRect();
  tip.hidden = false;
  const left = Math.min(window.scrollX + box.left, window.scrollX + innerWidth - tip.offsetWidth - 8);
  tip.style.left = Math.max(8, left) + "px";
  tip.style.top = window.scrollY + box.bottom + 6 + "px";
  button.setAttribute("aria-describedby", "tip");
}

function hideTip() { $("tip").hidden = true; }

function words(text) {
  return new Set((text.toLowerCase().match(/[\p{L}\p{N}]{4,}/gu) || []));
}

function claimsFor(n) {
  // The answer's sentences that cite [n]: what the source must support.
  return answerText.split(/(?<=[.!?])\s+/).filter((s) => s.includes(`[${n}]`));
}

function supportingSentence(text, claims) {
  const wanted = words(claims.join(" "));
  let best = null;
  let bestScore = 0;
  for (const m of text.matchAll(/[^.!?\n]+[.!?]*/g)) {
    const score = [...words(m[0])].filter((w) => wanted.has(w)).length;
    if (score > bestScore) { best = m; bestScore = score; }
  }
  return best;
}

function openPanel(button, n) {
  const s = sources.get(n);
  document.querySelectorAll(".cite.current").forEach((b) => b.classList.remove("current"));
  button.classList.add("current");
  $("panel-title").textContent = `Source [${n}]`;
  $("panel-meta").textContent = describe(s);
  const best = supportingSentence(s.text, claimsFor(n));
  const passage = $("panel-text");
  if (best) {
    passage.replaceChildren(s.text.slice(0, best.index), el("mark", {}, best[0]),
      s.text.slice(best.index + best[0].length));
  } else {
    passage.textContent = s.text;
  }
  $("panel").hidden = false;
  document.querySelector(".layout").classList.add("with-panel");
  $("panel").focus();
  $("panel").dataset.returnTo = String(n);
  const passages = [best ? best[0].trim() : "", s.text];
  const request = hidePage();
  loadContext(s).then((info) => {
    if (info && request === pageRequest) showPage(s, info, passages, request);
  });
}

function isPdf(s, info) {
  return typeof s.page === "number" && /\.pdf$/i.test(info.source);
}

function hidePage() {
  // Hides the page shown, and makes any page still being drawn stale; returns the new request.
  pageRequest += 1;
  const box = $("panel-page");
  box.hidden = true;
  box.removeAttribute("data-page");
  box.replaceChildren();
  return pageRequest;
}

async function showPage(s, info, passages, request) {
  // A PDF's cited page itself, drawn by pdf.js, the passage highlighted on it.
  if (!isPdf(s, info)) return;
  const box = $("panel-page");
  box.hidden = false;
  box.replaceChildren(el("p", { class: "meta" }, `Drawing page ${s.page}…`));
  try {
    pdfPages = pdfPages || import("/static/pdfpage.mjs");
    const module = await pdfPages;
    const marks = await module.renderPage(box, { documentId: info.id, title: info.source,
      page: s.page, passages, headers: headers(false), current: () => request === pageRequest });
    if (request === pageRequest && !marks) {
      box.append(el("p", { class: "meta" }, "The passage could not be found on the page."));
    }
  } catch (e) {
    if (String(e.message || "").includes("/static/pdfpage.mjs")) pdfPages = null;
    if (request === pageRequest) {
      box.replaceChildren(el("p", { class: "meta" }, "The page cannot be shown: " +
        String(e.message || e)));
    }
  }
}

async function loadContext(s) {
  // The cited chunk among its neighbours, with their headings: the passage in its place.
  const box = $("panel-context");
  box.textContent = "Loading the surrounding text…";
  const response = await fetch(`/v1/chunks/${encodeURIComponent(s.chunk_id)}/context?window=2`,
    { headers: headers(false) });
  if (!response.ok) {
    box.textContent = "The surrounding text is not available: " + (await errorMessage(response));
    return null;
  }
  const body = await response.json();
  box.replaceChildren(...body.chunks.map((c) => {
    const cited = c.chunk_id === body.chunk_id;
    return el("section", { class: cited ? "chunk cited" : "chunk" },
      el("p", { class: "meta" }, (c.heading || body.document.title) + (cited ? " · cited" : "")),
      el("p", {}, c.text));
  }));
  return body.document;
}

function closePanel() {
  const panel = $("panel");
  if (panel.hidden) return;
  panel.hidden = true;
  hidePage();
  document.querySelector(".layout").classList.remove("with-panel");
  const back = document.querySelector(`.cite[data-n="${panel.dataset.returnTo}"]`);
  if (back) back.focus();
}

function table(head, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, String(c)))))));
}

function showTrace(data) {
  if (shown) {
    shown.trace = data.trace || {};
    // Feedback keeps the question as it stands alone: an exported dataset has no conversation.
    if (shown.trace.conversation) shown.question = shown.trace.conversation.standalone_question;
  }
  const body = $("trace-body");
  const trace = data.trace || {};
  const parts = [];
  if (trace.conversation) {
    parts.push(el("p", {}, "Follow-up asked as: ", el("strong", { id: "asked-as" },
      trace.conversation.standalone_question),
      ` (rewritten with ${trace.conversation.turns} earlier turn${trace.conversation.turns > 1 ? "s" : ""}` +
      ` by the ${trace.conversation.prompt} prompt)`));
  }
  if (trace.action) parts.push(el("p", {}, "Corrective retrieval: ", el("strong", {}, trace.action)));
  const list = [...sources.values()].sort((a, b) => a.n - b.n);
  if (list.length) {
    parts.push(el("h3", {}, "Sources"), table(["#", "document", "score", "relevance"], list.map((s) =>
      [s.n, s.document, fmt(s.score), fmt(s.relevance)])));
  }
  const timings = Object.entries(data.timings || {});
  if (timings.length) {
    parts.push(el("h3", {}, "Timings (ms)"), table(["stage", "ms"], timings));
  }
  parts.push(el("h3", {}, "Full trace"), el("pre", {}, JSON.stringify(trace, null, 2)));
  body.replaceChildren(...parts);
  $("trace").hidden = false;
}

async function sendFeedback(rating) {
  if (!shown) return;
  const body = { rating, question: shown.question, answer: shown.answer,
    answer_status: shown.status, collection: shown.collection, trace: shown.trace,
    citations: shown.citations.map((c) => ({ n: c.n, document: c.document, chunk_id: c.chunk_id,
      text: c.text })) };
  if (rating === "down") {
    body.reason = $("fb-reason").value;
    body.correct_answer = $("fb-correct").value.trim();
    body.comment = $("fb-comment").value.trim();
  }
  const response = await fetch("/v1/feedback", { method: "POST", headers: headers(true),
    body: JSON.stringify(body) });
  $("fb-status").textContent = response.ok ? "Thank you: your feedback was saved."
    : "The feedback was not saved: " + (await errorMessage(response));
  if (response.ok) {
    $("fb-up").setAttribute("aria-pressed", String(rating === "up"));
    $("fb-down").setAttribute("aria-pressed", String(rating === "down"));
    $("fb-form").hidden = true;
    $("fb-down").setAttribute("aria-expanded", "false");
  }
}

function openFeedbackForm() {
  $("fb-form").hidden = false;
  $("fb-down").setAttribute("aria-expanded", "true");
  $("fb-reason").focus();
}

function fmt(x) { return typeof x === "number" ? x.toFixed(3) : "—"; }

function useKey(submit) {
  submit.preventDefault();
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem(KEY_SLOT, key);
  else sessionStorage.removeItem(KEY_SLOT);
  $("api-key").value = "";
  $("api-key").placeholder = key ? "key set for this tab" : "not needed in --dev";
  loadCollections();
}

document.addEventListener("DOMContentLoaded", () => {
  $("ask-form").addEventListener("submit", ask);
  $("stop").addEventListener("click", stop);
  $("key-form").addEventListener("submit", useKey);
  $("panel-close").addEventListener("click", closePanel);
  $("new-chat").addEventListener("click", newConversation);
  $("collection").addEventListener("change", () => { if (conversation.length) newConversation(); });
  $("fb-up").addEventListener("click", () => sendFeedback("up"));
  $("fb-down").addEventListener("click", openFeedbackForm);
  $("fb-form").addEventListener("submit", (e) => { e.preventDefault(); sendFeedback("down"); });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") { hideTip(); closePanel(); }
  });
  $("question").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("ask-form").requestSubmit();
  });
  window.addEventListener("resize", hideTip);
  if (sessionStorage.getItem(KEY_SLOT)) $("api-key").placeholder = "key set for this tab";
  loadCollections();
});
