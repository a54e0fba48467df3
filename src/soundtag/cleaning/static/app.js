// The review page: one suspect at a time plus the list, decisions saved by the server at once.
// No framework and no build step: the page must work offline, served as three static files.
"use strict";

const $ = (id) => document.getElementById(id);
const clipUrl = (id, what) => `/api/clips/${encodeURIComponent(id)}/${what}`;

let state = null;     // GET /api/state
let bySuspect = {};   // clip_id -> suspect entry of state.suspects
let view = [];        // suspects that pass the filters, in rank order
let pos = -1;         // index of the shown suspect in view
let busy = false;     // a decision is on its way: ignore repeated keys

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

async function request(method, url, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const res = await fetch(url, options);
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail || res.statusText);
    throw new Error(`${res.status}: ${detail}`);
  }
  return data;
}

function say(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = kind === "error" ? "" : kind;
  box.hidden = !text;
}

function decisionText(d) {
  if (!d) return "none";
  const what = d.decision === "relabel" ? `relabel → ${d.label}` : d.decision;
  return d.round ? `${what} (round ${d.round})` : what;
}

function setBadge(node, d) {
  node.textContent = decisionText(d);
  node.className = "badge" + (d ? " " + d.decision : "");
}

// The open clip's decision with why it was made: a person's note, the finders' reasons, or
// self-verification's ("self-verify round 2: p(dog)=0.41 < 0.95").
function showDecision(d) {
  setBadge($("decision"), d);
  $("decision-reason").textContent = d && d.reason ? d.reason : "";
}

// --- loading and filters ---------------------------------------------------------------
async function load() {
  try {
    state = await request("GET", "/api/state");
  } catch (err) {
    say(`cannot load the suspects: ${err.message}`);
    return;
  }
  bySuspect = Object.fromEntries(state.suspects.map((s) => [s.clip_id, s]));
  $("run").textContent = state.run;
  $("round").textContent = `round ${state.progress.round}`;
  for (const lab of state.labels) $("filter-class").append(el("option", { value: lab, text: lab }));
  for (const r of state.reasons) $("filter-reason").append(el("option", { value: r, text: r }));
  for (const lab of state.labels) $("relabel-label").append(el("option", { value: lab, text: lab }));
  const saved = JSON.parse(localStorage.getItem("soundtag-review") || "{}");
  if (state.labels.includes(saved.cls)) $("filter-class").value = saved.cls;
  if (state.reasons.includes(saved.reason)) $("filter-reason").value = saved.reason;
  $("filter-open").checked = !!saved.open;
  if (saved.autoplay === false) $("autoplay").checked = false;
  showProgress(state.progress);
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("clip");
  applyFilters(fromHash && bySuspect[fromHash] ? fromHash : null);
}

function savePrefs() {
  localStorage.setItem("soundtag-review", JSON.stringify({
    cls: $("filter-class").value, reason: $("filter-reason").value,
    open: $("filter-open").checked, autoplay: $("autoplay").checked,
  }));
}

function applyFilters(keepId) {
  const cls = $("filter-class").value, reason = $("filter-reason").value, open = $("filter-open").checked;
  view = state.suspects.filter((s) => (!cls || s.labels.includes(cls)) && (!reason || s.reasons.includes(reason))
    && (!open || !s.decision || s.clip_id === keepId));
  $("showing").textContent = view.length === state.suspects.length ? "" : `(showing ${view.length})`;
  renderList();
  let i = keepId ? view.findIndex((s) => s.clip_id === keepId) : -1;
  if (i < 0) i = nextOpen(0);
  show(i);
}

// The first undecided suspect at or after `from` (wrapping round); `from` itself if all are decided.
function nextOpen(from) {
  for (let k = 0; k < view.length; k++) {
    const i = (from + k) % view.length;
    if (!view[i].decision) return i;
  }
  return view.length ? Math.min(Math.max(from, 0), view.length - 1) : -1;
}

function showProgress(p) {
  $("progress").textContent = `${p.reviewed} of ${p.total} reviewed`;
  $("progress-bar").style.width = p.total ? `${(100 * p.reviewed) / p.total}%` : "0";
}

// --- the list ----------------------------------------------------------------------------
function renderList() {
  const rows = $("rows");
  rows.replaceChildren();
  view.forEach((s, i) => {
    const badge = el("span");
    setBadge(badge, s.decision);
    const tr = el("tr", { "data-clip": s.clip_id },
      el("td", { text: String(s.rank) }), el("td", { class: "clip", text: s.clip_id }),
      el("td", { text: s.labels.join(", ") }),
      el("td", { text: `${s.preds[0][0]} ${s.preds[0][1].toFixed(2)}` }),
      el("td", { text: s.score === null ? "" : s.score.toFixed(3) }),
      el("td", { text: s.reasons.join(", ") }), el("td", {}, badge));
    if (s.decision) tr.classList.add("decided");
    tr.addEventListener("click", () => show(i));
    rows.append(tr);
  });
}

function markRow(s) {
  const tr = $("rows").querySelector(`tr[data-clip="${CSS.escape(s.clip_id)}"]`);
  if (!tr) return;
  setBadge(tr.lastChild.firstChild, s.decision);
  tr.classList.toggle("decided", !!s.decision);
}

// --- one suspect ---------------------------------------------------------------------------
function show(i) {
  pos = i;
  for (const tr of $("rows").children) tr.classList.remove("current");
  if (i < 0 || i >= view.length) {
    $("clip-id").textContent = "no suspect matches the filters";
    $("position").textContent = "";
    $("audio").removeAttribute("src");
    $("spectrogram").removeAttribute("src");
    return;
  }
  const s = view[i];
  history.replaceState(null, "", `#clip=${encodeURIComponent(s.clip_id)}`);
  const tr = $("rows").children[i];
  tr.classList.add("current");
  tr.scrollIntoView({ block: "nearest" });
  $("position").textContent = `${i + 1}/${view.length} · rank ${s.rank} ·`;
  $("clip-id").textContent = s.clip_id;
  $("given").textContent = s.labels.join(", ");
  $("verified").textContent = s.verified === true ? "manually verified" : s.verified === false ? "not verified" : "";
  showDecision(s.decision);
  $("reasons").replaceChildren(...s.reasons.map((r) => el("span", { class: "chip", text: r })));
  const facts = [];
  if (s.score !== null) facts.push(`score ${s.score.toFixed(3)}`);
  if (s.quality !== null) facts.push(`label quality ${s.quality.toFixed(3)}`);
  if (s.peak_db !== null) facts.push(`peak ${s.peak_db.toFixed(1)} dBFS`);
  if (s.sound_s !== null) facts.push(`sound ${s.sound_s.toFixed(2)} s`);
  if (s.duplicate_of.length) facts.push(`same audio as ${s.duplicate_of.join(", ")}`);
  if (s.blacklisted) facts.push("blacklisted in this run");
  $("audio-facts").textContent = facts.join(" · ");
  renderPreds(s);
  $("spectrogram").src = clipUrl(s.clip_id, "spectrogram.png");
  const player = $("audio");
  player.src = clipUrl(s.clip_id, "audio");
  if ($("autoplay").checked) player.play().catch(() => {});  // refused before the first key press
  $("note").value = "";
  $("neighbours").replaceChildren();
  loadNeighbours(s.clip_id);
}

function renderPreds(s) {
  const body = $("preds").tBodies[0];
  body.replaceChildren();
  const quick = $("relabel-quick");
  quick.replaceChildren();
  s.preds.forEach(([label, p], k) => {
    const bar = el("div", { class: "bar" }, el("div"));
    bar.firstChild.style.width = `${Math.round(100 * p)}%`;
    const tr = el("tr", {}, el("td", { text: `${k + 1}. ${label}` }), el("td", {}, bar),
      el("td", { text: p.toFixed(3) }));
    if (s.labels.includes(label)) tr.classList.add("given");
    body.append(tr);
    if (!s.labels.includes(label)) {
      const b = el("button", { text: `→ ${label} ` }, el("kbd", { text: String(k + 1) }));
      b.addEventListener("click", () => decide("relabel", label));
      quick.append(b);
    }
  });
  const other = s.preds.map((p) => p[0]).find((lab) => !s.labels.includes(lab));
  if (other) $("relabel-label").value = other;
}

async function loadNeighbours(clipId) {
  let info;
  try {
    info = await request("GET", clipUrl(clipId, "info"));
  } catch (err) {
    return;  // the comparison clips are a help; the review goes on without them
  }
  if (pos < 0 || view[pos].clip_id !== clipId) return;  // the person moved on meanwhile
  const groups = info.neighbours.map((g) => el("div", {},
    el("h3", { text: `Clips labelled “${g.label}” the models are surest of` }),
    el("div", { class: "examples" }, ...g.clips.map((c) => el("figure", {},
      el("img", { src: clipUrl(c.clip_id, "spectrogram.png"), alt: `spectrogram of ${c.clip_id}`, loading: "lazy" }),
      el("audio", { src: clipUrl(c.clip_id, "audio"), controls: "", preload: "none" }),
      el("figcaption", { text: `${c.clip_id} (${c.preds[0][0]} ${c.preds[0][1].toFixed(2)})` }))))));
  $("neighbours").replaceChildren(...groups);
}

// --- decisions -----------------------------------------------------------------------------
async function decide(decision, label) {
  if (busy || pos < 0 || pos >= view.length) return;
  const s = view[pos];
  busy = true;
  try {
    const body = { clip_id: s.clip_id, decision, reason: $("note").value.trim() };
    if (decision === "relabel") body.label = label;
    const res = await request("POST", "/api/decisions", body);
    s.decision = res.decision;
    markRow(s);
    showDecision(s.decision);
    showProgress(res.progress);
    say("");
    show(nextOpen(pos + 1));
  } catch (err) {
    say(`not saved: ${err.message}`);
  } finally {
    busy = false;
  }
}

async function undo() {
  if (busy) return;
  busy = true;
  try {
    const res = await request("POST", "/api/undo");
    const s = bySuspect[res.undone.clip_id];
    showProgress(res.progress);
    say(`undone: ${decisionText(res.undone)} on ${res.undone.clip_id}`, "info");
    if (s) {
      s.decision = res.decision;
      applyFilters(s.clip_id);
    }
  } catch (err) {
    say(`nothing undone: ${err.message}`);
  } finally {
    busy = false;
  }
}

function step(delta) {
  if (view.length) show((pos + delta + view.length) % view.length);
}

function onKey(e) {
  const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(e.target.tagName);
  if (typing) {
    if (e.key === "Escape") e.target.blur();
    if (e.key === "Enter" && e.target.id === "relabel-label") {
      e.preventDefault();
      e.target.blur();
      decide("relabel", $("relabel-label").value);
    }
    return;
  }
  if (e.altKey || e.metaKey || (e.ctrlKey && e.key !== "z")) return;
  const key = e.key.toLowerCase();
  const preds = pos >= 0 && pos < view.length ? view[pos].preds : [];
  if (key === "b") decide("blacklist");
  else if (key === "k") decide("keep");
  else if (key === "r") $("relabel-label").focus();
  else if (["1", "2", "3"].includes(key) && preds[+key - 1] && !view[pos].labels.includes(preds[+key - 1][0])) {
    decide("relabel", preds[+key - 1][0]);
  } else if (key === "u" || key === "z") undo();
  else if (key === "arrowright" || key === "j" || key === "n") step(1);
  else if (key === "arrowleft" || key === "p") step(-1);
  else if (key === " ") {
    const player = $("audio");
    if (player.paused) player.play().catch(() => {}); else player.pause();
  } else return;
  e.preventDefault();
}

function wire() {
  $("btn-blacklist").addEventListener("click", () => decide("blacklist"));
  $("btn-keep").addEventListener("click", () => decide("keep"));
  $("btn-relabel").addEventListener("click", () => decide("relabel", $("relabel-label").value));
  $("btn-undo").addEventListener("click", undo);
  $("btn-prev").addEventListener("click", () => step(-1));
  $("btn-next").addEventListener("click", () => step(1));
  for (const id of ["filter-class", "filter-reason", "filter-open"]) {
    $(id).addEventListener("change", () => {
      savePrefs();
      applyFilters(pos >= 0 && pos < view.length ? view[pos].clip_id : null);
      $(id).blur();  // give the keys back to the page
    });
  }
  $("autoplay").addEventListener("change", savePrefs);
  $("spectrogram").addEventListener("error", () => {
    if ($("spectrogram").getAttribute("src")) say("the spectrogram could not be drawn");
  });
  document.addEventListener("keydown", onKey);
}

wire();
load();
