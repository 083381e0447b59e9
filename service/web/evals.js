// The evaluations view: saved `verity eval` reports, one opened in the page, or two compared
// (the differences first, then both reports side by side). Loaded the first time the view is
// opened. Uses app.js's helpers ($, el, headers, errorMessage); plain JavaScript, no build step.
//
// Report pages are shown inline, not framed: fetched with the key, parsed inertly, stripped of
// anything active (scripts, styles, forms, frames, event handlers, links; only embedded images
// kept) and shown under this page's content security policy, which runs no inline script.
"use strict";

(() => {
  const KEEP = new Set(["class", "tabindex", "alt", "colspan", "rowspan", "open", "scope"]);
  const DROP = "script,style,link,meta,base,iframe,frame,frameset,object,embed,form,input,button," +
    "textarea,select,svg,math,template,noscript,title,head";
  let reports = [];
  let ticked = []; // names, in the order they were ticked (two at most)

  const status = (text) => { $("evals-status").textContent = text; };

  function reportPath(name) { return name.split("/").map(encodeURIComponent).join("/"); }

  async function refresh() {
    status("Loading the saved reports…");
    const response = await fetch("/v1/eval/reports", { headers: headers(false) });
    if (!response.ok) {
      reports = [];
      render();
      status("Could not list the reports: " + (await errorMessage(response)) +
        (response.status === 401 || response.status === 403 ? " An admin key is needed." : ""));
      return;
    }
    reports = (await response.json()).reports;
    ticked = ticked.filter((n) => reports.some((r) => r.name === n));
    render();
    const n = reports.length;
    status(n ? `${n} saved report${n === 1 ? "" : "s"}.` :
      "No saved reports yet: run verity eval retrieval or verity eval qa.");
  }

  function headline(r) {
    return Object.entries(r.metrics).map(([config, m]) => config + ": " +
      Object.entries(m).map(([k, v]) => `${k} ${v.toFixed(3)}`).join(", ")).join("; ") || "—";
  }

  function row(r, i) {
    const box = el("input", { type: "checkbox", id: `eval-pick-${i}`, "data-name": r.name });
    box.checked = ticked.includes(r.name);
    box.addEventListener("change", () => tick(r.name, box.checked));
    const open = el("button", { type: "button", class: "linkish" }, r.name);
    open.addEventListener("click", () => show(r.name));
    return el("tr", {},
      el("td", {}, box, el("label", { for: `eval-pick-${i}`, class: "sr-only" }, `Compare ${r.name}`)),
      el("td", {}, open, " ", el("span", { class: "pill" }, r.kind)),
      el("td", {}, r.dataset || "—"),
      el("td", {}, (r.created_utc || "").replace("T", " ").replace("+00:00", " UTC")),
      el("td", { class: "headline" }, headline(r)));
  }

  function render() {
    $("evals").replaceChildren(...reports.map(row));
    $("evals-compare").disabled = ticked.length !== 2;
  }

  // Updated in place, not re-rendered, so the focus stays on the box just ticked.
  function tick(name, on) {
    ticked = ticked.filter((n) => n !== name);
    if (on) ticked.push(name);
    if (ticked.length > 2) ticked = ticked.slice(-2); // the oldest tick gives way
    for (const box of $("evals").querySelectorAll("input[type=checkbox]")) {
      box.checked = ticked.includes(box.dataset.name);
    }
    $("evals-compare").disabled = ticked.length !== 2;
  }

  // The report's body as inert nodes: nothing in it can run, load or submit anything.
  function inert(html) {
    const doc = new DOMParser().parseFromString(html, "text/html");
    for (const node of doc.querySelectorAll(DROP)) node.remove();
    for (const node of doc.body.querySelectorAll("*")) {
      for (const attr of [...node.attributes]) {
        const image = attr.name === "src" && node.tagName === "IMG" && attr.value.startsWith("data:image/");
        if (!KEEP.has(attr.name) && !image) node.removeAttribute(attr.name);
      }
    }
    // The page's headings sit under this view's: h1 becomes h3, h2 h4, and so on.
    for (const h of doc.body.querySelectorAll("h1,h2,h3,h4,h5,h6")) {
      const level = Math.min(6, Number(h.tagName[1]) + 2);
      const moved = doc.createElement("h" + level);
      moved.append(...h.childNodes);
      h.replaceWith(moved);
    }
    return [...doc.body.childNodes].map((n) => document.importNode(n, true));
  }

  async function page(url) {
    const response = await fetch(url, { headers: headers(false) });
    if (!response.ok) throw new Error(await errorMessage(response));
    return response.text();
  }

  // A report page in a section named ``label``; its own title (focusable) leads it.
  function panel(label, html) {
    const nodes = inert(html);
    const section = el("section", { class: "report", "aria-label": label },
      el("p", { class: "meta label" }, label), ...nodes);
    let head = section.querySelector("h3");
    if (!head) section.prepend(head = el("h3", {}, label));
    head.setAttribute("tabindex", "-1");
    return section;
  }

  async function show(name) {
    status(`Opening ${name}…`);
    try {
      const shown = panel(`Report ${name}`, await page("/v1/eval/reports/" + reportPath(name)));
      $("evals-shown").replaceChildren(shown);
      shown.querySelector("h3").focus();
      status(`Showing ${name}.`);
    } catch (e) {
      status(`Could not open ${name}: ${e.message}`);
    }
  }

  async function compare() {
    const [a, b] = ticked;
    status(`Comparing ${a} with ${b}…`);
    try {
      const query = new URLSearchParams({ a, b });
      const [diff, pageA, pageB] = await Promise.all([page("/v1/eval/compare?" + query),
        page("/v1/eval/reports/" + reportPath(a)), page("/v1/eval/reports/" + reportPath(b))]);
      const comparison = panel("What changed from A to B", diff);
      const pair = el("div", { class: "pair" }, panel(`A: ${a}`, pageA), panel(`B: ${b}`, pageB));
      $("evals-shown").replaceChildren(comparison, pair);
      comparison.querySelector("h3").focus();
      status(`Showing what changed from ${a} to ${b}, then both side by side.`);
    } catch (e) {
      status(`Could not compare: ${e.message}`);
    }
  }

  document.head.append(el("link", { rel: "stylesheet", href: "/static/evals.css" }));
  $("evals-compare").addEventListener("click", compare);
  window.verityEvals = { refresh };
  refresh();
})();
