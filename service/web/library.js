// The document library: upload files or a folder into a collection, follow each file through
// ingestion, cancel or retry, list, filter and delete documents, preview a document's chunks,
// re-index or re-embed the collection.
// Uses app.js's helpers ($, el, headers, errorMessage); plain JavaScript, no build step.
"use strict";

const POLL_MS = 1000;
const CHUNK_PAGE = 20;
const ACTIVE = new Set(["queued", "running"]);
const FILE_LABELS = { queued: "Queued", ingesting: "Ingesting", done: "Indexed",
  failed: "Failed", cancelled: "Cancelled" };
let pendingFiles = new Map(); // name -> File of this tab's uploads, so a failed one can be retried
let pollTimer = null;
let documentsShown = [];
let wasRunning = false;

function collectionName() { return $("collection").value || "default"; }

function libraryStatus(text) { $("library-status").textContent = text; }

function showVectors() {
  // What made the collection's vectors, so people see when a re-embed is due or running.
  const option = $("collection").selectedOptions[0];
  const vectors = option ? option.dataset.vectors : "";
  const moving = option ? option.dataset.reembedding : "";
  $("collection-vectors").textContent = !vectors ? ""
    : `Vectors: ${vectors}` + (moving ? `, being re-embedded into ${moving}.` : ".");
}

function showView(view) {
  const library = view === "library";
  $("library-view").hidden = !library;
  $("keys-view").hidden = view !== "keys";
  $("ask-view").hidden = view !== "ask";
  $("evals-view").hidden = view !== "evals";
  if (view === "keys") refreshKeys();
  if (view === "evals") openEvaluations();
  for (const b of document.querySelectorAll(".views button")) {
    if (b.dataset.view === view) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
  if (library) refreshLibrary();
}

// The evaluations view loads its script and style sheet the first time it is opened.
function openEvaluations() {
  if (window.verityEvals) { window.verityEvals.refresh(); return; }
  if ($("evals-script")) return;
  const script = el("script", { id: "evals-script", src: "/static/evals.js" });
  script.addEventListener("error", () => {
    script.remove(); // the next visit tries again
    $("evals-status").textContent = "Could not load the evaluations view; try again.";
  });
  document.head.append(script);
}

async function upload(files) {
  if (!files.length) return;
  const form = new FormData();
  form.append("collection", collectionName());
  for (const f of files) {
    form.append("files", f, f.name);
    pendingFiles.set(f.name, f);
  }
  libraryStatus(`Uploading ${files.length} file${files.length > 1 ? "s" : ""}…`);
  const response = await fetch("/v1/documents", { method: "POST", headers: headers(false), body: form });
  if (!response.ok) {
    libraryStatus("The upload was refused: " + (await errorMessage(response)));
    return;
  }
  libraryStatus(`Uploaded ${files.length} file${files.length > 1 ? "s" : ""}; ingestion queued.`);
  await refreshJobs();
}

async function filesFromDrop(items) {
  // A dropped folder arrives as a directory entry: walk it for its files.
  const out = [];
  async function walk(entry) {
    if (entry.isFile) {
      out.push(await new Promise((ok, fail) => entry.file(ok, fail)));
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
        if (!batch.length) break;
        for (const child of batch) await walk(child);
      }
    }
  }
  const entries = [...items].map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
  if (entries.some((e) => e)) {
    for (const entry of entries) if (entry) await walk(entry);
    return out;
  }
  return [...items].map((i) => i.getAsFile()).filter(Boolean);
}

function formatSeconds(s) {
  if (s < 60) return `${Math.max(1, Math.round(s))} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

function jobSummary(job) {
  const p = job.progress;
  const parts = job.kind === "reembed"
    ? ["Re-embedding", `${p.chunks_written} of ${p.chunks_total} chunks`]
    : [`${p.files_done} of ${p.files_total} files`, `${p.chunks_written} chunks`];
  if (job.status === "running" && typeof job.eta_s === "number") parts.push(`about ${formatSeconds(job.eta_s)} left`);
  else if (!ACTIVE.has(job.status) && typeof job.elapsed_s === "number") parts.push(`took ${formatSeconds(job.elapsed_s)}`);
  return parts.join(" · ");
}

function jobItem(job) {
  const p = job.progress;
  const reembed = job.kind === "reembed";
  const title = el("p", { class: "job-head" }, el("span", { class: `pill ${job.status}` }, job.status),
    " ", jobSummary(job));
  const [done, total, unit] = reembed ? [p.chunks_written, p.chunks_total, "chunks"]
    : [p.files_done, p.files_total, "files"];
  const bar = el("progress", { max: String(Math.max(1, total)), value: String(done),
    "aria-label": `${reembed ? "Re-embed" : "Upload"} progress: ${done} of ${total} ${unit}` });
  const item = el("li", { class: "job", "data-job": job.id, "data-kind": job.kind || "ingest" }, title, bar);
  if (ACTIVE.has(job.status)) {
    const cancel = el("button", { type: "button", "aria-label": reembed ? "Cancel the re-embed"
      : `Cancel the upload of ${p.files_total} files` }, "Cancel");
    cancel.addEventListener("click", () => cancelJob(job.id));
    title.append(" ", cancel);
  }
  if (job.error && job.status !== "cancelled") item.append(el("p", { class: "reason" }, job.error));
  item.append(el("ul", { class: "files" }, ...job.files.map(fileItem)));
  return item;
}

function fileItem(f) {
  const row = el("li", { class: `file ${f.status}` }, el("span", { class: "name" }, f.name), " ",
    el("span", { class: `pill ${f.status}` }, FILE_LABELS[f.status] || f.status));
  if (f.reason) row.append(" ", el("span", { class: "reason" }, f.reason));
  if (f.status === "failed" && pendingFiles.has(f.name)) {
    const retry = el("button", { type: "button", "aria-label": `Retry ${f.name}` }, "Retry");
    retry.addEventListener("click", () => upload([pendingFiles.get(f.name)]));
    row.append(" ", retry);
  }
  return row;
}

async function refreshJobs() {
  clearTimeout(pollTimer);
  const query = new URLSearchParams({ collection: collectionName(), limit: "10" });
  const response = await fetch("/v1/jobs?" + query, { headers: headers(false) });
  if (!response.ok) {
    libraryStatus("Could not list uploads: " + (await errorMessage(response)));
    return;
  }
  const { jobs } = await response.json();
  $("jobs").replaceChildren(...jobs.map(jobItem));
  if (!jobs.length) $("jobs").append(el("li", { class: "meta" }, "No uploads into this collection yet."));
  const running = jobs.some((j) => ACTIVE.has(j.status));
  if (wasRunning && !running) loadCollections().then(showVectors); // new counts and vectors
  wasRunning = running;
  if (running && !$("library-view").hidden) pollTimer = setTimeout(refreshJobs, POLL_MS);
  if (!running || jobs.some((j) => j.progress.files_done)) await refreshDocuments();
}

async function refreshDocuments() {
  const query = new URLSearchParams({ collection: collectionName(), limit: "500" });
  const response = await fetch("/v1/documents?" + query, { headers: headers(false) });
  if (response.status === 404) {
    documentsShown = [];
  } else if (!response.ok) {
    libraryStatus("Could not list documents: " + (await errorMessage(response)));
    return;
  } else {
    const body = await response.json();
    documentsShown = body.documents;
    $("docs-more").textContent = body.total > body.documents.length
      ? `Showing ${body.documents.length} of ${body.total} documents.` : "";
  }
  showVectors();
  renderDocuments();
}

function renderDocuments() {
  const wanted = $("doc-filter").value.trim().toLowerCase();
  const shown = documentsShown.filter((d) => !wanted ||
    d.source.toLowerCase().includes(wanted) || d.title.toLowerCase().includes(wanted));
  $("docs").replaceChildren(...shown.map((d, i) => {
    const remove = el("button", { type: "button", "aria-label": `Delete ${d.source}` }, "Delete");
    remove.addEventListener("click", () => deleteDocument(d));
    const panel = `chunks-${i}`;
    const toggle = el("button", { type: "button", class: "chunks-toggle", "aria-expanded": "false",
      "aria-controls": panel, "aria-label": `Show the chunks of ${d.source}` }, "Chunks");
    toggle.addEventListener("click", () => toggleChunks(toggle, d, panel));
    return el("tr", { "data-doc": d.id },
      el("td", {}, el("span", { class: "name" }, d.source), d.title && d.title !== d.source
        ? el("span", { class: "meta block" }, d.title) : ""),
      el("td", {}, String(d.chunk_count)),
      el("td", {}, d.groups.length ? d.groups.join(", ") : "everyone"),
      el("td", {}, new Date(d.ingested_at).toLocaleString()),
      el("td", { class: "actions" }, toggle, " ", remove));
  }));
  if (!shown.length) {
    $("docs").append(el("tr", {}, el("td", { colspan: "5", class: "meta" },
      documentsShown.length ? "No document matches the filter." : "No documents yet: drop some above.")));
  }
}

async function toggleChunks(toggle, d, panel) {
  const row = toggle.closest("tr");
  const open = toggle.getAttribute("aria-expanded") === "true";
  toggle.setAttribute("aria-expanded", String(!open));
  toggle.setAttribute("aria-label", `${open ? "Show" : "Hide"} the chunks of ${d.source}`);
  if (open) {
    document.getElementById(panel)?.closest("tr").remove();
    return;
  }
  // Scrolls on its own when long, so it takes focus: the keyboard can scroll it too.
  const list = el("ol", { class: "chunk-list", tabindex: "0", "aria-label": `Chunks of ${d.source}` });
  const more = el("button", { type: "button", hidden: "" }, "Show more chunks");
  const holder = el("div", { id: panel, class: "chunk-preview" }, list, more);
  row.after(el("tr", { class: "chunks-row" }, el("td", { colspan: "5" }, holder)));
  more.addEventListener("click", () => loadChunks(d, list, more));
  await loadChunks(d, list, more);
}

async function loadChunks(d, list, more) {
  const query = new URLSearchParams({ limit: String(CHUNK_PAGE), offset: String(list.children.length) });
  const response = await fetch(`/v1/documents/${encodeURIComponent(d.id)}/chunks?` + query,
    { headers: headers(false) });
  if (!response.ok) {
    list.append(el("li", { class: "reason" }, "Could not load the chunks: " + (await errorMessage(response))));
    more.hidden = true;
    return;
  }
  const body = await response.json();
  for (const c of body.chunks) {
    const where = [c.heading, c.page ? `page ${c.page}` : "", `${c.token_count} tokens`].filter(Boolean);
    list.append(el("li", { class: "chunk", value: String(c.ordinal + 1) },
      el("p", { class: "meta" }, `#${c.ordinal + 1} · ${where.join(" · ")}`),
      el("p", { class: "chunk-text" }, c.text)));
  }
  more.hidden = list.children.length >= body.total;
  if (!more.hidden) more.textContent = `Show more chunks (${list.children.length} of ${body.total})`;
}

async function cancelJob(id) {
  const response = await fetch(`/v1/jobs/${encodeURIComponent(id)}/cancel`,
    { method: "POST", headers: headers(false) });
  libraryStatus(response.ok ? "Upload cancelled; files indexed before it stopped stay."
    : "Could not cancel: " + (await errorMessage(response)));
  await refreshJobs();
}

async function deleteDocument(d) {
  if (!window.confirm(`Delete ${d.source} and its ${d.chunk_count} chunks?`)) return;
  const response = await fetch(`/v1/documents/${encodeURIComponent(d.id)}`,
    { method: "DELETE", headers: headers(false) });
  libraryStatus(response.ok ? `Deleted ${d.source}.` : "Could not delete: " + (await errorMessage(response)));
  await refreshDocuments();
  loadCollections();
}

async function reindex() {
  const name = collectionName();
  const reembed = $("reembed").checked;
  libraryStatus(reembed ? `Queueing a re-embed of ${name}…` : `Re-indexing ${name}…`);
  const response = await fetch(`/v1/collections/${encodeURIComponent(name)}/reindex`,
    { method: "POST", headers: headers(true), body: JSON.stringify({ re_embed: reembed }) });
  if (!response.ok) {
    libraryStatus(`Could not ${reembed ? "re-embed" : "re-index"}: ` + (await errorMessage(response)));
    return;
  }
  const body = await response.json();
  if (reembed) {
    libraryStatus(`Re-embedding ${name}: ${body.chunks} chunks; it stays searchable meanwhile.`);
    await loadCollections();
    await refreshJobs();
    return;
  }
  libraryStatus(`Re-indexed ${name}: ${body.chunks} chunks in ${body.seconds.toFixed(1)} s.`);
}

async function createCollection(submit) {
  submit.preventDefault();
  const name = $("new-collection-name").value.trim();
  const response = await fetch("/v1/collections", { method: "POST", headers: headers(true),
    body: JSON.stringify({ name }) });
  if (!response.ok) {
    libraryStatus("Could not create the collection: " + (await errorMessage(response)));
    return;
  }
  $("new-collection-name").value = "";
  await loadCollections();
  $("collection").value = name;
  libraryStatus(`Created ${name}: drop files to fill it.`);
  await refreshLibrary();
}

async function refreshLibrary() {
  await refreshJobs();
  await refreshDocuments();
}

async function ingestingNote(collection) {
  // Asked while files are still being ingested: say that the answer may miss them.
  const query = new URLSearchParams({ collection, limit: "10" });
  const response = await fetch("/v1/jobs?" + query, { headers: headers(false) });
  if (!response.ok) return "";
  const { jobs } = await response.json();
  const left = jobs.filter((j) => ACTIVE.has(j.status))
    .reduce((n, j) => n + j.progress.files_total - j.progress.files_done, 0);
  return left ? `${left} file${left > 1 ? "s are" : " is"} still being ingested into ${collection}; ` +
    "the answer cannot use them yet." : "";
}

async function refreshKeys() {
  const response = await fetch("/v1/keys", { headers: headers(false) });
  if (!response.ok) {
    $("keys-status").textContent = "Could not list keys: " + (await errorMessage(response));
    $("keys").replaceChildren();
    return;
  }
  const { keys } = await response.json();
  $("keys").replaceChildren(...keys.map((k) => {
    const cells = [el("td", {}, k.name || "—"), el("td", {}, el("code", {}, k.prefix + "…")),
      el("td", {}, k.groups.length ? k.groups.join(", ") : "everyone"),
      el("td", {}, k.revoked ? "revoked" : (k.admin ? "admin" : "user"))];
    const actions = el("td", {});
    if (!k.revoked) {
      const revoke = el("button", { type: "button", "aria-label": `Revoke ${k.name || k.prefix}` }, "Revoke");
      revoke.addEventListener("click", () => revokeKey(k));
      actions.append(revoke);
    }
    return el("tr", { "data-key": String(k.id) }, ...cells, actions);
  }));
}

async function createKey(submit) {
  submit.preventDefault();
  const groups = $("key-groups").value.split(",").map((g) => g.trim()).filter(Boolean);
  const response = await fetch("/v1/keys", { method: "POST", headers: headers(true),
    body: JSON.stringify({ name: $("key-name").value.trim(), groups, admin: $("key-admin").checked }) });
  if (!response.ok) {
    $("keys-status").textContent = "Could not create the key: " + (await errorMessage(response));
    return;
  }
  const body = await response.json();
  $("key-shown").replaceChildren(el("strong", {}, "The new key, shown this once:"),
    el("code", { id: "new-key" }, body.key));
  $("key-shown").hidden = false;
  $("key-name").value = "";
  $("key-groups").value = "";
  $("key-admin").checked = false;
  $("keys-status").textContent = `Created ${body.info.name || "a key"}.`;
  await refreshKeys();
}

async function revokeKey(k) {
  if (!window.confirm(`Revoke ${k.name || k.prefix}? Apps using it stop working at once.`)) return;
  const response = await fetch(`/v1/keys/${k.id}`, { method: "DELETE", headers: headers(false) });
  $("keys-status").textContent = response.ok ? `Revoked ${k.name || k.prefix}.`
    : "Could not revoke: " + (await errorMessage(response));
  await refreshKeys();
}

document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll(".views button")) {
    b.addEventListener("click", () => showView(b.dataset.view));
  }
  for (const id of ["pick-files", "pick-folder"]) {
    $(id).addEventListener("change", (e) => {
      upload([...e.target.files]);
      e.target.value = "";
    });
  }
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    upload(await filesFromDrop(e.dataTransfer.items));
  });
  $("doc-filter").addEventListener("input", renderDocuments);
  $("reindex").addEventListener("click", reindex);
  $("new-collection").addEventListener("submit", createCollection);
  $("key-create").addEventListener("submit", createKey);
  $("collection").addEventListener("change", () => {
    if (!$("library-view").hidden) refreshLibrary();
  });
});
