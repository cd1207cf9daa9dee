// Search page: query box -> GET /search, thumbnail grid with scores, "More results" (and infinite scroll).
"use strict";
const PAGE = 24;
const form = document.getElementById("search-form");
const input = document.getElementById("q");
const grid = document.getElementById("grid");
const more = document.getElementById("more");
const statusLine = document.getElementById("status");
let current = { query: "", offset: 0, total: 0, loading: false };

function showStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", Boolean(isError));
}

function hitElement(hit) {
  const li = document.createElement("li");
  li.className = "hit";
  li.dataset.id = hit.id;
  li.dataset.path = hit.path || "";
  const img = document.createElement("img");
  img.src = hit.thumbnail_url;
  img.alt = hit.caption || hit.path || String(hit.id);
  img.loading = "lazy";
  const meta = document.createElement("div");
  meta.className = "meta";
  const caption = document.createElement("div");
  caption.className = "caption";
  caption.textContent = hit.caption || hit.path || "";
  const score = document.createElement("div");
  score.className = "score";
  score.textContent = "score " + hit.score.toFixed(3);
  meta.append(caption, score);
  li.append(img, meta);
  return li;
}

async function load(query, offset) {
  current.loading = true;
  const url = `/search?q=${encodeURIComponent(query)}&k=${PAGE}&offset=${offset}`;
  try {
    const response = await fetch(url);
    const body = await response.json();
    if (!response.ok) {
      showStatus(`Error ${response.status}: ${body.error || "request failed"}`, true);
      return;
    }
    if (query !== current.query) return;  // a newer search started meanwhile
    if (offset === 0) { grid.replaceChildren(); grid.dataset.phase = "full"; current.fullShown = true; }
    body.hits.forEach((hit) => grid.append(hitElement(hit)));
    current.offset = offset + body.hits.length;
    current.total = body.total;
    const ms = body.timings_ms.total !== undefined ? body.timings_ms.total.toFixed(1) : "?";
    showStatus(`${current.offset} results shown · query time ${ms} ms (${body.cache || "-"}) · index ${body.version}`);
    more.hidden = body.hits.length < PAGE || current.offset >= body.total;
  } catch (err) {
    showStatus("Network error: " + err, true);
  } finally {
    current.loading = false;
  }
}

// Fast-then-exact: ask for the fast answer (phase=fast: fast text tower + ANN order) beside the full one and
// show it while the grid is still empty; load() replaces it with the full answer in one synchronous DOM update.
// Same card count and fixed-size cards, so the swap moves nothing. A failed fast answer is simply not shown.
async function showFastGrid(query) {
  try {
    const response = await fetch(`/search?q=${encodeURIComponent(query)}&k=${PAGE}&phase=fast`);
    const body = await response.json();
    if (!response.ok || query !== current.query || current.fullShown) return;
    body.hits.forEach((hit) => grid.append(hitElement(hit)));
    grid.dataset.phase = "fast";
    showStatus(`${body.hits.length} quick results · refining…`);
  } catch (err) { /* the full request reports errors */ }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const query = input.value.trim();
  if (!query) { showStatus("Type something to search for.", true); return; }
  current = { query, offset: 0, total: 0, loading: false };
  grid.replaceChildren();
  more.hidden = true;
  showFastGrid(query);
  load(query, 0);
});

more.addEventListener("click", () => { if (!current.loading) load(current.query, current.offset); });

new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting) && !more.hidden && !current.loading) {
    load(current.query, current.offset);
  }
}).observe(more);
