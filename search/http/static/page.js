// Search page. The URL holds the search (?q=&orientation=&licence=&after=&before= or ?similar=ID), so a search
// is shareable and back/forward replay it (history.pushState + popstate). Text search, "more like this" on
// any hit, search by a dropped or pasted image; filters; loading, empty and error states; keyboard use;
// example queries from the store (GET /examples) and a notice when a text search's best match is weak.
// All result rendering goes through renderResults(hits).
"use strict";
const PAGE = 24;
const $ = (id) => document.getElementById(id);
const form = $("search-form");
const input = $("q");
const grid = $("grid");
const more = $("more");
const statusLine = $("status");
const context = $("context");
const empty = $("empty");
const dropZone = $("drop-zone");
const examples = $("examples");
const weakNote = $("weak");
const FILTERS = ["orientation", "licence", "after", "before"];
let current = { mode: "none", offset: 0, total: 0, loading: false, seq: 0 };

function showStatus(text, kind) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", kind === "error");
  statusLine.classList.toggle("loading", kind === "loading");
  grid.setAttribute("aria-busy", kind === "loading" ? "true" : "false");
}

// --- the search as data: URL <-> search <-> form ---------------------------------------------------------
function searchFromUrl() {
  const params = new URLSearchParams(location.search);
  const filters = {};
  FILTERS.forEach((name) => { if (params.get(name)) filters[name] = params.get(name); });
  if (params.get("similar")) return { mode: "similar", id: params.get("similar"), query: "", filters: {} };
  if (params.get("q")) return { mode: "text", query: params.get("q"), filters };
  return { mode: "none", query: "", filters };
}

function urlFor(search) {
  const params = new URLSearchParams();
  if (search.mode === "similar") params.set("similar", search.id);
  if (search.mode === "text") params.set("q", search.query);
  if (search.mode !== "similar") FILTERS.forEach((name) => { if (search.filters[name]) params.set(name, search.filters[name]); });
  const text = params.toString();
  return location.pathname + (text ? "?" + text : "");
}

function formToSearch() {
  const filters = {};
  FILTERS.forEach((name) => { if ($(name).value) filters[name] = $(name).value; });
  return { mode: "text", query: input.value.trim(), filters };
}

function searchToForm(search) {
  input.value = search.mode === "text" ? search.query : "";
  FILTERS.forEach((name) => { $(name).value = (search.filters || {})[name] || ""; });
}

// --- requests ------------------------------------------------------------------------------------------
function filterBody(filters) {
  const body = {};
  if (filters.orientation) body.orientation = filters.orientation;
  if (filters.licence) body.licence = [filters.licence];
  if (filters.after) body.created_after = filters.after;
  if (filters.before) body.created_before = filters.before;
  return body;
}

// The browser's language (BCP-47) as the query's `lang`: a model that needs a source language (NLLB) reads the
// query in it; other models ignore it.
const LANG = navigator.language || "";

function request(search, offset, phase = "full") {
  const paging = `k=${PAGE}&offset=${offset}` + (phase === "fast" ? "&phase=fast" : "");
  const lang = LANG ? `&lang=${encodeURIComponent(LANG)}` : "";
  if (search.mode === "similar") return fetch(`/search/similar/${encodeURIComponent(search.id)}?${paging}`);
  if (search.mode === "image") {
    const data = new FormData();
    data.append("file", search.file, search.file.name || "image");
    return fetch(`/search/image?${paging}`, { method: "POST", body: data });
  }
  const filters = filterBody(search.filters);
  if (Object.keys(filters).length === 0) {
    return fetch(`/search?q=${encodeURIComponent(search.query)}&${paging}${lang}`);
  }
  return fetch("/search" + (phase === "fast" ? "?phase=fast" : ""), { method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ query: search.query, k: PAGE, offset, filters, ...(LANG ? { lang: LANG } : {}) }) });
}

function errorText(status, body) {
  const reason = body && body.error ? body.error : "request failed";
  if (status === 429 || status === 503) return `Busy (${status}): ${reason}. Try again in a moment.`;
  if (status === 422 && Array.isArray(body && body.detail) && body.detail.length) {
    return `Error ${status}: ${reason} (${body.detail.map((d) => d.msg).join("; ")})`;
  }
  return `Error ${status}: ${reason}`;
}

// --- rendering -----------------------------------------------------------------------------------------
function hitElement(hit) {
  const li = document.createElement("li");
  li.className = "hit";
  li.tabIndex = 0;
  li.dataset.id = hit.id;
  li.dataset.path = hit.path || "";
  li.dataset.licence = hit.licence || "";
  li.setAttribute("aria-label", `${hit.caption || hit.path || "image " + hit.id}: more like this`);
  const img = document.createElement("img");
  img.src = hit.thumbnail_url;
  img.alt = hit.caption || hit.path || String(hit.id);
  img.loading = "lazy";
  const meta = document.createElement("div");
  meta.className = "meta";
  const caption = document.createElement("div");
  caption.className = "caption";
  caption.textContent = hit.caption || hit.path || "";
  caption.title = caption.textContent;  // one line on the card; the whole caption on hover
  const score = document.createElement("div");
  score.className = "score";
  score.textContent = "score " + hit.score.toFixed(3) + (hit.licence ? " · " + hit.licence : "");
  const similar = document.createElement("button");
  similar.type = "button";
  similar.className = "similar";
  similar.tabIndex = -1;  // the card itself is the tab stop; Enter on it does the same
  similar.textContent = "More like this";
  meta.append(caption, score, similar);
  li.append(img, meta);
  return li;
}

// The one place results reach the DOM: `append` adds a further page, otherwise the grid is replaced.
function renderResults(hits, append = false) {
  const items = hits.map(hitElement);
  // a keyboard user already moving through the fast grid keeps the same place when the full grid replaces it
  const focused = append ? -1 : [...grid.children].indexOf(document.activeElement);
  if (append) grid.append(...items); else grid.replaceChildren(...items);
  if (focused >= 0 && items.length) items[Math.min(focused, items.length - 1)].focus();
  const none = !append && hits.length === 0;
  empty.hidden = !none;
  if (none) empty.textContent = current.search && current.search.mode === "text"
    ? `No images match “${current.search.query}” with these filters.` : "No similar images found.";
}

function describe(search) {
  if (search.mode === "similar") return `Images similar to #${search.id}`;
  if (search.mode === "image") return `Images similar to the image you gave (${search.file.name || "pasted"})`;
  return "";
}

// --- running a search ----------------------------------------------------------------------------------
async function load(offset) {
  const search = current.search;
  const seq = current.seq;
  current.loading = true;
  showStatus(offset === 0 ? "Searching…" : "Loading more…", "loading");
  try {
    const response = await request(search, offset);
    const body = await response.json().catch(() => null);
    if (seq !== current.seq) return;  // a newer search started meanwhile
    if (!response.ok || body === null) {
      if (offset === 0) { renderResults([]); empty.hidden = true; weakNote.hidden = true; }
      showStatus(errorText(response.status, body), "error");
      more.hidden = true;
      return;
    }
    current.fullShown = true;
    renderResults(body.hits, offset > 0);
    if (offset === 0) showWeak(body);
    grid.dataset.phase = "full";
    current.offset = offset + body.hits.length;
    current.total = body.total;
    const ms = body.timings_ms.total !== undefined ? body.timings_ms.total.toFixed(1) : "?";
    showStatus(current.offset === 0 ? "No results." :
      `${current.offset} results shown · query time ${ms} ms (${body.cache || "-"}) · index ${body.version}`);
    more.hidden = body.hits.length < PAGE || current.offset >= body.total;
  } catch (err) {
    if (seq === current.seq) { showStatus("Network error: " + err.message, "error"); more.hidden = true; }
  } finally {
    if (seq === current.seq) current.loading = false;
  }
}

// Fast-then-exact: a text search also asks for the fast answer (phase=fast: fast tower + ANN order alone) and
// shows it while the full answer is on its way; load() then replaces the grid in one synchronous DOM update
// (renderResults). Same card count and fixed-size cards, so the swap moves nothing. A failed fast answer is
// simply not shown: the full request reports errors.
async function showFastGrid(search, seq) {
  try {
    const response = await request(search, 0, "fast");
    const body = await response.json();
    if (!response.ok || seq !== current.seq || current.fullShown) return;
    renderResults(body.hits);
    grid.dataset.phase = "fast";
    showStatus(`${body.hits.length} quick results · refining…`, "loading");
  } catch (err) { /* see above */ }
}

function run(search, push) {
  if (push) history.pushState(search.mode === "image" ? { image: search.file } : null, "",
                              search.mode === "image" ? location.pathname + "?by=image" : urlFor(search));
  current = { search, offset: 0, total: 0, loading: false, seq: current.seq + 1 };
  more.hidden = true;
  weakNote.hidden = true;
  context.hidden = search.mode === "text";
  context.textContent = describe(search);
  if (search.mode === "text") showFastGrid(search, current.seq);
  load(0);
}

function reset() {
  current = { search: null, offset: 0, total: 0, loading: false, seq: current.seq + 1 };
  grid.replaceChildren();
  empty.hidden = true;
  more.hidden = true;
  context.hidden = true;
  weakNote.hidden = true;
  showStatus("");
}

function restore() {  // page load and back/forward: the URL (and history state) decide what is shown
  const search = searchFromUrl();
  const image = history.state && history.state.image;
  searchToForm(search);
  if (image) run({ mode: "image", file: image, query: "", filters: {} }, false);
  else if (search.mode === "none") reset();
  else run(search, false);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const search = formToSearch();
  if (!search.query) { showStatus("Type something to search for.", "error"); input.focus(); return; }
  run(search, true);
});
FILTERS.forEach((name) => $(name).addEventListener("change", () => {
  if (current.search && current.search.mode === "text" && input.value.trim()) run(formToSearch(), true);
}));
more.addEventListener("click", () => { if (!current.loading) load(current.offset); });
window.addEventListener("popstate", restore);

function moreLikeThis(li) { run({ mode: "similar", id: li.dataset.id, query: "", filters: {} }, true); }
grid.addEventListener("click", (event) => {
  const li = event.target.closest("li.hit");
  if (li) moreLikeThis(li);
});

// --- keyboard ------------------------------------------------------------------------------------------
function columns() {
  const items = grid.querySelectorAll("li.hit");
  if (items.length === 0) return 1;
  const top = items[0].offsetTop;
  let n = 0;
  while (n < items.length && items[n].offsetTop === top) n++;
  return Math.max(1, n);
}

grid.addEventListener("keydown", (event) => {
  const li = event.target.closest("li.hit");
  if (!li) return;
  const items = [...grid.querySelectorAll("li.hit")];
  const index = items.indexOf(li);
  const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns() }[event.key];
  if (step !== undefined) {
    event.preventDefault();
    const next = items[Math.min(items.length - 1, Math.max(0, index + step))];
    next.focus();
    if (next === items[items.length - 1] && !more.hidden && !current.loading) load(current.offset);
  } else if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    moreLikeThis(li);
  }
});

input.addEventListener("keydown", (event) => {
  const first = grid.querySelector("li.hit");
  if (event.key === "ArrowDown" && first) { event.preventDefault(); first.focus(); }
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    if (document.activeElement === input) { input.value = ""; }
    input.focus();
  } else if (event.key === "/" && document.activeElement !== input && !event.target.closest("input, select")) {
    event.preventDefault();
    input.focus();
  }
});

// --- what the index holds: example queries and the weak-match notice ------------------------------------
// The examples are captions the store's images share (GET /examples); a text answer says `weak` when no hit
// reaches the encoder's calibrated similarity floor: the index may hold nothing like the query.
async function loadExamples() {
  try {
    const response = await fetch("/examples");
    if (!response.ok) return;  // the page works without them
    const body = await response.json();
    const buttons = body.examples.map((text) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "example";
      button.textContent = text;
      return button;
    });
    $("example-list").replaceChildren(...buttons);
    examples.hidden = buttons.length === 0;
  } catch (err) { /* see above */ }
}
examples.addEventListener("click", (event) => {
  const button = event.target.closest("button.example");
  if (!button) return;
  input.value = button.textContent;
  run(formToSearch(), true);
});

function showWeak(body) {
  weakNote.hidden = body.weak !== true;
  if (weakNote.hidden) return;
  const best = Math.max(...body.hits.map((hit) => hit.similarity));
  weakNote.textContent = `Weak match: the best image scores ${best.toFixed(2)}, below ${body.score_floor.toFixed(2)}, ` +
    `the level this model reaches for what it knows. The index may hold nothing like “${body.query}”; ` +
    "try other words or one of the examples.";
}

// --- search by image: drag-and-drop or paste -----------------------------------------------------------
function searchByImage(file) {
  if (!file || !file.type.startsWith("image/")) { showStatus("That is not an image file.", "error"); return; }
  run({ mode: "image", file, query: "", filters: {} }, true);
}
dropZone.addEventListener("dragover", (event) => { event.preventDefault(); dropZone.classList.add("dragging"); $("drop-hint").hidden = false; });
dropZone.addEventListener("dragleave", () => { dropZone.classList.remove("dragging"); $("drop-hint").hidden = true; });
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropZone.classList.remove("dragging");
  $("drop-hint").hidden = true;
  searchByImage(event.dataTransfer.files[0]);
});
document.addEventListener("paste", (event) => {
  const item = [...(event.clipboardData ? event.clipboardData.items : [])].find((i) => i.kind === "file");
  if (item) { event.preventDefault(); searchByImage(item.getAsFile()); }
});

new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting) && !more.hidden && !current.loading) load(current.offset);
}).observe(more);

loadExamples();
restore();
