/* cleanface review: confirm or override purify's decisions; works from file://, offline, no libraries.
   data/meta.js calls CF_REVIEW.meta(); the chunks of the queues (data/<queue>-<n>.js) and data/names.js are
   <script> tags added when needed. The work is kept in localStorage["cleanface-review:" + id] and exported as
   overrides.json (see docs/ARCHITECTURE.md, "Review directory" and "Overrides file").
   Saved state: {version: 1, id, reviewer, decisions: {key: {d: decision, w: who, t: when, q: queue, l, o (images: location,
   purify's action), ids (merges)}}, undo: [[key, previous entry or null], ...]}. For tests: CF_REVIEW.overrides() (what
   #export downloads), CF_REVIEW.view() ({queue, chunk, cursor, loading, move, key}), CF_REVIEW.state() (a copy). */
(function () {
  "use strict";
  var STORE_PREFIX = "cleanface-review:";
  var UNDO_LIMIT = 5000;
  var CACHE_LIMIT = 24;  // chunks kept in memory
  var RESULTS = 20;  // names shown by a move search
  var ACTS = { image: ["keep", "drop", "move", "accept"], duplicate: ["keep", "drop", "move", "accept"],
               merge: ["accept", "reject"], split: ["accept", "reject"] };
  var KEYS = { y: "keep", d: "drop", m: "move", a: "accept", r: "reject" };
  var ACTION_LABELS = { keep: "kept", drop: "dropped", relabel: "relabelled", merge: "merged", dedup: "dedup", "new-identity": "new identity" };

  var meta = null, state = null, storeKey = null, storageOk = true;
  var queues = {};  // key -> queue of meta
  var chunks = {}, chunkOrder = [], waiting = {}, loading = {};
  var names = null, namesLower = null, namesLoading = false;
  var view = { queue: null, chunk: 0, cursor: 0, cards: [], elements: [], token: 0, loading: false, pos: {} };
  var move = { open: false, card: null, results: [], highlight: 0, pendingEnter: false };
  var els = {};

  function $(id) { return document.getElementById(id); }

  function fmt(n) { return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ","); }

  function fixed(v, digits) { return typeof v === "number" ? v.toFixed(digits) : "-"; }

  function deg(v) { return typeof v === "number" ? v.toFixed(1) + "\u00b0" : "-"; }

  function h(tag, attrs, children) {
    var el = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === null || v === undefined || v === false) { return; }
        if (k === "text") { el.textContent = v; } else if (k === "cls") { el.className = v; } else { el.setAttribute(k, v === true ? "" : v); }
      });
    }
    (children || []).forEach(function (c) {
      if (c === null || c === undefined) { return; }
      el.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return el;
  }

  function status(text) { els.status.textContent = text || ""; }

  // -- saved work ----------------------------------------------------------------------------------
  function emptyState() { return { version: 1, id: meta.id, reviewer: "", decisions: {}, undo: [] }; }

  function loadState() {
    var saved = null;
    try {
      var raw = window.localStorage.getItem(storeKey);
      saved = raw ? JSON.parse(raw) : null;
    } catch (e) {
      storageOk = false;
    }
    state = emptyState();
    if (saved && typeof saved === "object" && saved.decisions && typeof saved.decisions === "object") {
      state.decisions = saved.decisions;
      state.undo = Array.isArray(saved.undo) ? saved.undo.filter(Array.isArray) : [];
      state.reviewer = typeof saved.reviewer === "string" ? saved.reviewer : "";
    }
  }

  function save() {
    if (state.undo.length > UNDO_LIMIT) { state.undo.splice(0, state.undo.length - UNDO_LIMIT); }
    try {
      window.localStorage.setItem(storeKey, JSON.stringify(state));
      storageOk = true;
    } catch (e) {
      storageOk = false;
      status("Could not save in this browser (" + (e && e.name || e) + "): export overrides.json to keep the work.");
    }
  }

  // -- data files ------------------------------------------------------------------------------------
  function addScript(src, onError) {
    var s = document.createElement("script");
    s.src = src;
    s.onload = function () { if (s.parentNode) { s.parentNode.removeChild(s); } };
    s.onerror = function () { if (s.parentNode) { s.parentNode.removeChild(s); } onError(); };
    document.head.appendChild(s);
  }

  function chunkId(queue, n) { return queue + "-" + n; }

  function loadChunk(queue, n, done) {
    var id = chunkId(queue, n);
    if (chunks[id]) { done(chunks[id]); return; }
    (waiting[id] = waiting[id] || []).push(done);
    if (loading[id]) { return; }
    loading[id] = true;
    addScript("data/" + id + ".js", function () {
      loading[id] = false;
      var callbacks = waiting[id] || [];
      delete waiting[id];
      status("Could not load data/" + id + ".js: is the review folder complete?");
      callbacks.forEach(function (cb) { cb(null); });
    });
  }

  function receiveChunk(queue, n, cards) {
    var id = chunkId(queue, n);
    chunks[id] = cards;
    chunkOrder.push(id);
    loading[id] = false;
    while (chunkOrder.length > CACHE_LIMIT) {
      var old = chunkOrder.shift();
      if (old !== chunkId(view.queue, view.chunk)) { delete chunks[old]; } else { chunkOrder.push(old); break; }
    }
    var callbacks = waiting[id] || [];
    delete waiting[id];
    callbacks.forEach(function (cb) { cb(cards); });
  }

  var namesWaiting = [];

  function loadNames(done) {
    if (names) { done(); return; }
    namesWaiting.push(done);
    if (namesLoading) { return; }
    namesLoading = true;
    addScript("data/names.js", function () {
      namesLoading = false;
      namesWaiting = [];
      els.moveResults.textContent = "";
      status("Could not load data/names.js: is the review folder complete?");
    });
  }

  function receiveNames(list) {
    names = list;
    namesLower = new Array(list.length);
    for (var i = 0; i < list.length; i++) { namesLower[i] = String(list[i]).toLowerCase(); }
    namesLoading = false;
    var callbacks = namesWaiting;
    namesWaiting = [];
    callbacks.forEach(function (cb) { cb(); });
  }

  // -- cards -------------------------------------------------------------------------------------------
  function kindOf(queue) { return (queues[queue] || {}).kind || "image"; }

  function decisionOf(key) { var d = state.decisions[key]; return d ? d.d : ""; }

  function face(f, label) {
    var img = f && f.t ? h("img", { src: f.t, loading: "lazy", width: "64", height: "64", alt: "" }) : h("span", { cls: "ph" });
    if (f && f.h) { img = h("a", { href: f.h, target: "_blank", rel: "noopener", title: "open the original image" }, [img]); }
    return h("figure", { cls: f && f.a ? "f a-" + f.a : "f" }, [img, label ? h("figcaption", { text: label }) : null]);
  }

  function buttons(kind) {
    var keyOf = { keep: "y", drop: "d", move: "m", accept: "a", reject: "r" };
    return h("div", { cls: "acts" }, ACTS[kind].map(function (act) {
      return h("button", { type: "button", "data-act": act, title: act + " (" + keyOf[act] + ")" }, [act + " ", h("kbd", { text: keyOf[act] })]);
    }));
  }

  function purifyLine(c) {
    var parts = [h("span", { cls: "act a-" + c.a, text: ACTION_LABELS[c.a] || c.a })];
    if (c.n) { parts.push(" \u2192 ", h("b", { text: c.n })); }
    if (c.r) { parts.push(" \u00b7 " + c.r); }
    return h("div", { cls: "purify" }, ["purify: "].concat(parts));
  }

  function numbers(c) {
    var out = [];
    if (typeof c.s === "number") { out.push("noise score " + fixed(c.s, 3)); }
    if (typeof c.g === "number") { out.push("angle " + deg(c.g)); }
    if (typeof c.o === "number") { out.push("leave-one-out " + deg(c.o)); }
    return h("div", { cls: "nums", text: out.join(" \u00b7 ") || "no angle (no usable embedding)" });
  }

  function references(list, title) {
    if (!list || !list.length) { return null; }
    return h("div", { cls: "refs", title: title }, [h("div", { cls: "muted", text: title }),
      h("div", { cls: "faces" }, list.map(function (f) { return face(f, "#" + f.x); }))]);
  }

  function imageBody(c) {
    return [
      h("div", { cls: "faces" }, [face({ t: c.t, h: c.h, a: c.a }, "#" + c.x)]),
      references(c.ref, c.id + " (kept)"),
      references(c.nref, c.n + " (kept)"),
      h("div", { cls: "info" }, [
        h("div", { cls: "id" }, [h("b", { text: c.id })]), purifyLine(c), numbers(c),
        h("div", { cls: "loc", text: c.l || "", title: c.l || "" }),
      ]),
    ];
  }

  function duplicateBody(c) {
    var p = c.p || {};
    return [
      h("div", { cls: "faces pair" }, [face({ t: p.t, h: p.h, a: p.a }, "#" + p.x + " first"), face({ t: c.t, h: c.h, a: c.a }, "#" + c.x + " second")]),
      h("div", { cls: "info" }, [
        h("div", { cls: "id" }, ["cosine ", h("b", { text: fixed(c.cos, 4) })]),
        h("div", { text: "first #" + p.x + " " + (p.id || "?") + " (" + (ACTION_LABELS[p.a] || p.a || "-") + ")" }),
        h("div", {}, ["second #" + c.x + " ", h("b", { text: c.id })]), purifyLine(c),
        h("div", { cls: "muted", text: "keep, drop, move and accept act on the second image" }),
        h("div", { cls: "loc", text: c.l || "", title: c.l || "" }),
      ]),
    ];
  }

  function sides(titles, sizes, faces) {
    return h("div", { cls: "sides" }, titles.map(function (title, i) {
      var list = (faces && faces[i]) || [];
      return h("div", { cls: "side" }, [
        h("div", { cls: "id" }, [h("b", { text: title }), " ", h("span", { cls: "muted", text: fmt((sizes && sizes[i]) || 0) + " images" })]),
        h("div", { cls: "faces" }, list.length ? list.map(function (f) { return face(f, "#" + f.x); }) : [h("span", { cls: "muted", text: "no faces" })]),
      ]);
    }));
  }

  function scoreLine(c) {
    var out = [];
    if (typeof c.sc === "number") { out.push("score " + fixed(c.sc, 3)); }
    if (typeof c.sim === "number") { out.push("similarity " + fixed(c.sim, 3)); }
    if (Array.isArray(c.ang)) { out.push("angle " + (c.ang[0] === c.ang[1] ? deg(c.ang[0]) : deg(c.ang[0]) + " - " + deg(c.ang[1]))); }
    else if (typeof c.ang === "number") { out.push("angle " + deg(c.ang)); }
    return out.join(" \u00b7 ");
  }

  function mergeBody(c) {
    return [h("div", { cls: "info wide" }, [
      h("div", { cls: "id" }, ["merge ", h("b", { text: c.ids.join(" + ") }), c.into ? " into " : "", c.into ? h("b", { text: c.into }) : null]),
      h("div", { cls: "purify", text: "purify: " + (c.ap ? "merged" : "proposed, not merged") + (scoreLine(c) ? " \u00b7 " + scoreLine(c) : "") }),
    ]), sides(c.ids, c.sz, c.f)];
  }

  function splitBody(c) {
    return [h("div", { cls: "info wide" }, [
      h("div", { cls: "id" }, ["split ", h("b", { text: c.id }), " \u2192 ", h("b", { text: c.new || c.id + "#2" }), " (the smaller group)"]),
      h("div", { cls: "purify", text: "purify: " + (c.ap ? "split" : "proposed, not split") + (scoreLine(c) ? " \u00b7 " + scoreLine(c) : "") }),
    ]), sides(c.g || [], c.sz, c.f)];
  }

  function renderCard(c, i) {
    var kind = kindOf(view.queue);
    var body = kind === "merge" ? mergeBody(c) : kind === "split" ? splitBody(c) : kind === "duplicate" ? duplicateBody(c) : imageBody(c);
    var el = h("article", { cls: "card k-" + kind, "data-key": c.k, "data-decision": decisionOf(c.k), "data-i": String(i) },
      body.concat([h("div", { cls: "mine" }), buttons(kind)]));
    showDecision(el);
    return el;
  }

  function showDecision(el) {
    var d = decisionOf(el.getAttribute("data-key"));
    el.setAttribute("data-decision", d);
    var entry = state.decisions[el.getAttribute("data-key")];
    var label = el.querySelector(".mine");
    label.textContent = d ? "your decision: " + (d.indexOf("move:") === 0 ? "move to " + d.slice(5) : d) + (entry && entry.w ? " (" + entry.w + ")" : "") : "";
  }

  function refreshKey(key) {
    view.elements.forEach(function (el) { if (el.getAttribute("data-key") === key) { showDecision(el); } });
  }

  // -- the view ------------------------------------------------------------------------------------------
  function show(queue, n, cursor) {
    var q = queues[queue];
    if (!q) { return; }
    if (!q.chunks) {
      view.token++;
      view.queue = queue; view.chunk = 0; view.cursor = 0; view.cards = []; view.elements = []; view.loading = false;
      els.cards.textContent = "";
      els.cards.appendChild(h("p", { cls: "muted empty", text: "Nothing to review in this queue." }));
      header();
      return;
    }
    n = Math.max(0, Math.min(q.chunks - 1, n));
    var token = ++view.token;
    view.loading = true;
    loadChunk(queue, n, function (cards) {
      if (token !== view.token) { return; }
      view.loading = false;
      if (!cards) { return; }
      view.queue = queue; view.chunk = n; view.cards = cards;
      view.cursor = cursor === "last" ? cards.length - 1 : Math.max(0, Math.min(cards.length - 1, cursor || 0));
      view.pos[queue] = { chunk: n, cursor: view.cursor };
      els.cards.textContent = "";
      view.elements = cards.map(renderCard);
      var frag = document.createDocumentFragment();
      view.elements.forEach(function (el) { frag.appendChild(el); });
      els.cards.appendChild(frag);
      setCursor(view.cursor, true);
      header();
      if (n + 1 < q.chunks) { loadChunk(queue, n + 1, function () {}); }  // prefetch
    });
  }

  function setCursor(i, jump) {
    if (!view.elements.length) { return; }
    i = Math.max(0, Math.min(view.elements.length - 1, i));
    var old = view.elements[view.cursor];
    if (old) { old.classList.remove("current"); }
    view.cursor = i;
    view.pos[view.queue] = { chunk: view.chunk, cursor: i };
    var el = view.elements[i];
    el.classList.add("current");
    if (el.scrollIntoView) { el.scrollIntoView({ block: jump ? "center" : "nearest" }); }
  }

  function next() {
    if (view.loading) { return; }
    if (view.cursor + 1 < view.elements.length) { setCursor(view.cursor + 1); return; }
    var q = queues[view.queue];
    if (q && view.chunk + 1 < q.chunks) { show(view.queue, view.chunk + 1, 0); } else { status("End of the " + (q ? q.title.toLowerCase() : "") + " queue."); }
  }

  function prev() {
    if (view.loading) { return; }
    if (view.cursor > 0) { setCursor(view.cursor - 1); return; }
    if (view.chunk > 0) { show(view.queue, view.chunk - 1, "last"); } else { status("Start of the queue."); }
  }

  function counts() {
    var perQueue = {}, total = 0;
    Object.keys(state.decisions).forEach(function (k) {
      total++;
      var q = state.decisions[k].q;
      if (q) { perQueue[q] = (perQueue[q] || 0) + 1; }
    });
    return { total: total, perQueue: perQueue };
  }

  function header() {
    var c = counts();
    els.progress.textContent = fmt(c.total) + " of " + fmt(meta.total) + " reviewed";
    els.undo.disabled = !state.undo.length;
    Array.prototype.forEach.call(els.tabs.querySelectorAll("[data-queue]"), function (tab) {
      var key = tab.getAttribute("data-queue"), q = queues[key];
      tab.classList.toggle("active", key === view.queue);
      tab.setAttribute("aria-selected", key === view.queue ? "true" : "false");
      var count = tab.querySelector(".count");
      if (count && q) { count.textContent = (c.perQueue[key] ? fmt(c.perQueue[key]) + "/" : "") + fmt(q.count); }
    });
    var q = queues[view.queue];
    var pages = q ? q.chunks : 0;
    els.pageInfo.textContent = pages ? "page " + fmt(view.chunk + 1) + " of " + fmt(pages) : "";
    els.prevPage.disabled = !pages || view.chunk <= 0;
    els.nextPage.disabled = !pages || view.chunk + 1 >= pages;
  }

  // -- decisions ---------------------------------------------------------------------------------------------
  // A saved decision: {d: decision, w: who, t: when (ISO), q: queue} and what the export needs besides the key
  // (i<index>, m:<identities>, s:<identity>): an image's l (location) and o (purify's action), a merge's ids.
  function entry(c, kind, decision) {
    var e = { d: decision, w: state.reviewer || "", t: new Date().toISOString(), q: view.queue };
    if (kind === "merge") { e.ids = c.ids; } else if (kind !== "split") { e.l = c.l; e.o = c.a; }
    return e;
  }

  function decide(act, i) {
    if (view.loading || !view.elements.length) { return; }
    if (typeof i === "number") { setCursor(i); }
    var c = view.cards[view.cursor], kind = kindOf(view.queue);
    if (ACTS[kind].indexOf(act) < 0) {
      status(act + " does not apply to " + (kind === "merge" || kind === "split" ? "a " + kind + " proposal (accept or reject it)" : "an image (keep, drop, move or accept it)"));
      return;
    }
    if (act === "move") { openMove(c); return; }
    record(c, kind, act);
  }

  function record(c, kind, decision) {
    var prev = state.decisions[c.k];
    state.undo.push([c.k, prev === undefined ? null : prev]);
    state.decisions[c.k] = entry(c, kind, decision);
    save();
    refreshKey(c.k);
    header();
    if (storageOk) { status(""); }
    next();
  }

  function undo() {
    var last = state.undo.pop();
    if (!last) { status("Nothing to undo."); return; }
    var key = last[0], prev = last[1];
    if (prev) { state.decisions[key] = prev; } else { delete state.decisions[key]; }
    save();
    refreshKey(key);
    for (var i = 0; i < view.elements.length; i++) {
      if (view.elements[i].getAttribute("data-key") === key) { setCursor(i); break; }
    }
    header();
    status("Undone: " + key + (prev ? " is " + prev.d + " again" : " is not reviewed again") + ".");
  }

  function overrides() {
    var out = { format: "cleanface-overrides", version: 1, review: meta.id, clean: meta.clean, reviewer: state.reviewer || "",
                exported: new Date().toISOString(), images: [], merges: [], splits: [] };
    Object.keys(state.decisions).forEach(function (key) {
      var e = state.decisions[key];
      if (!e || typeof e.d !== "string") { return; }
      if (key.indexOf("m:") === 0) {
        out.merges.push({ identities: e.ids || key.slice(2).split("|"), decision: e.d, who: e.w || "", when: e.t });
      } else if (key.indexOf("s:") === 0) {
        out.splits.push({ identity: key.slice(2), decision: e.d, who: e.w || "", when: e.t });
      } else if (key.charAt(0) === "i") {
        var isMove = e.d.indexOf("move:") === 0;
        var item = { index: Number(key.slice(1)), location: e.l, old: e.o, decision: isMove ? "move" : e.d };
        if (isMove) { item.identity = e.d.slice(5); }
        item.who = e.w || "";
        item.when = e.t;
        out.images.push(item);
      }
    });
    out.images.sort(function (a, b) { return a.index - b.index; });
    var byName = function (a, b) { var x = JSON.stringify(a.identities || a.identity), y = JSON.stringify(b.identities || b.identity); return x < y ? -1 : x > y ? 1 : 0; };
    out.merges.sort(byName);
    out.splits.sort(byName);
    return out;
  }

  function exportFile() {
    var data = overrides();
    var blob = new Blob([JSON.stringify(data, null, 1) + "\n"], { type: "application/json" });
    var url = URL.createObjectURL(blob);
    var a = h("a", { href: url, download: "overrides.json", hidden: true });
    document.body.appendChild(a);
    a.click();
    document.body.removeChild(a);
    setTimeout(function () { URL.revokeObjectURL(url); }, 5000);
    status("Exported overrides.json: " + fmt(data.images.length) + " images, " + fmt(data.merges.length) + " merges, " +
           fmt(data.splits.length) + " splits. Apply it with cleanface apply.");
  }

  // -- move -------------------------------------------------------------------------------------------------
  function openMove(c) {
    move.open = true; move.card = c; move.kind = kindOf(view.queue); move.results = []; move.highlight = 0; move.pendingEnter = false;
    els.moveWhat.textContent = "image #" + c.x + " of " + c.id;
    els.moveInput.value = "";
    els.moveResults.textContent = "";
    els.moveBox.hidden = false;
    els.moveInput.focus();
    if (!names) {
      els.moveResults.appendChild(h("div", { cls: "muted", text: "loading names\u2026" }));
      loadNames(function () {
        if (!move.open) { return; }
        search();
        if (move.pendingEnter) { move.pendingEnter = false; pick(move.highlight); }
      });
    } else {
      search();
    }
  }

  function closeMove() {
    move.open = false; move.card = null;
    els.moveBox.hidden = true;
    els.moveInput.blur();
  }

  function search() {
    if (!names) { return; }
    var q = els.moveInput.value.trim().toLowerCase();
    els.moveResults.textContent = "";
    move.results = []; move.highlight = 0;
    if (!q) {
      els.moveResults.appendChild(h("div", { cls: "muted", text: "type to search " + fmt(names.length) + " identities" }));
      return;
    }
    var exact = [], prefix = [], inner = [];
    for (var i = 0; i < namesLower.length; i++) {
      var at = namesLower[i].indexOf(q);
      if (at < 0) { continue; }
      if (at === 0 && namesLower[i].length === q.length) { exact.push(i); } else if (at === 0) { if (prefix.length < RESULTS) { prefix.push(i); } } else if (inner.length < RESULTS) { inner.push(i); }
      if (prefix.length >= RESULTS && exact.length) { break; }
    }
    move.results = exact.concat(prefix, inner).slice(0, RESULTS).map(function (j) { return names[j]; });
    if (!move.results.length) { els.moveResults.appendChild(h("div", { cls: "muted", text: "no identity matches" })); return; }
    move.results.forEach(function (name, k) {
      els.moveResults.appendChild(h("div", { cls: "result", role: "option", "data-name": name, "data-k": String(k), text: name }));
    });
    highlight(0);
  }

  function highlight(k) {
    var items = els.moveResults.querySelectorAll(".result");
    if (!items.length) { return; }
    move.highlight = (k + items.length) % items.length;
    Array.prototype.forEach.call(items, function (el, j) {
      el.classList.toggle("hl", j === move.highlight);
      el.setAttribute("aria-selected", j === move.highlight ? "true" : "false");
    });
    if (items[move.highlight].scrollIntoView) { items[move.highlight].scrollIntoView({ block: "nearest" }); }
  }

  function pick(k) {
    var name = move.results[k];
    if (name === undefined || !move.card) { return; }
    var c = move.card, kind = move.kind;
    closeMove();
    record(c, kind, "move:" + name);
  }

  function moveKeys(e) {
    if (e.key === "ArrowDown") { e.preventDefault(); highlight(move.highlight + 1); }
    else if (e.key === "ArrowUp") { e.preventDefault(); highlight(move.highlight - 1); }
    else if (e.key === "Enter") { e.preventDefault(); if (!names) { move.pendingEnter = true; } else { pick(move.highlight); } }
    else if (e.key === "Escape") { e.preventDefault(); closeMove(); status("Move cancelled."); }
    e.stopPropagation();
  }

  // -- keys and clicks ----------------------------------------------------------------------------------------
  function typing(target) {
    var tag = target && target.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (target && target.isContentEditable);
  }

  function onKey(e) {
    if (move.open) { if (e.key === "Escape") { e.preventDefault(); closeMove(); } return; }
    if (typing(e.target)) { return; }
    var key = e.key;
    if ((e.ctrlKey || e.metaKey) && !e.altKey && (key === "z" || key === "Z")) { e.preventDefault(); undo(); return; }
    if (e.ctrlKey || e.metaKey || e.altKey) { return; }
    if (key === "j" || key === "ArrowRight") { e.preventDefault(); next(); }
    else if (key === "k" || key === "ArrowLeft") { e.preventDefault(); prev(); }
    else if (key === "u") { e.preventDefault(); undo(); }
    else if (key === "?") { e.preventDefault(); toggleHelp(); }
    else if (key === "Escape" && !els.help.hidden) { toggleHelp(); }
    else if (KEYS[key]) { e.preventDefault(); decide(KEYS[key]); }
  }

  function toggleHelp() {
    els.help.hidden = !els.help.hidden;
    els.helpToggle.setAttribute("aria-expanded", els.help.hidden ? "false" : "true");
  }

  function onCardClick(e) {
    var el = e.target.closest ? e.target.closest(".card") : null;
    if (!el) { return; }
    var i = view.elements.indexOf(el);
    if (i < 0) { return; }
    var button = e.target.closest("button[data-act]");
    if (button) { e.preventDefault(); decide(button.getAttribute("data-act"), i); return; }
    if (e.target.closest("a")) { return; }
    setCursor(i);
  }

  function start() {
    els = { progress: $("progress"), reviewer: $("reviewer"), undo: $("undo"), export: $("export"), helpToggle: $("help-toggle"),
            help: $("help"), tabs: $("tabs"), status: $("status"), cards: $("cards"), pageInfo: $("page-info"),
            prevPage: $("prev-page"), nextPage: $("next-page"), moveBox: $("move-box"), moveInput: $("move-input"),
            moveResults: $("move-results"), moveWhat: $("move-what") };
    storeKey = STORE_PREFIX + meta.id;
    meta.queues.forEach(function (q) { queues[q.key] = q; });
    loadState();
    if (!storageOk) { status("This browser does not let the page save its work: export overrides.json before closing it."); }
    els.reviewer.value = state.reviewer;
    els.reviewer.addEventListener("input", function () { state.reviewer = els.reviewer.value.trim(); save(); });
    els.reviewer.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === "Escape") { els.reviewer.blur(); } });
    els.undo.addEventListener("click", undo);
    els.export.addEventListener("click", exportFile);
    els.helpToggle.addEventListener("click", toggleHelp);
    els.prevPage.addEventListener("click", function () { if (view.chunk > 0) { show(view.queue, view.chunk - 1, 0); } });
    els.nextPage.addEventListener("click", function () { var q = queues[view.queue]; if (q && view.chunk + 1 < q.chunks) { show(view.queue, view.chunk + 1, 0); } });
    els.tabs.addEventListener("click", function (e) {
      var tab = e.target.closest ? e.target.closest("[data-queue]") : null;
      if (!tab) { return; }
      var key = tab.getAttribute("data-queue"), pos = view.pos[key] || { chunk: 0, cursor: 0 };
      show(key, pos.chunk, pos.cursor);
    });
    els.cards.addEventListener("click", onCardClick);
    els.moveInput.addEventListener("input", search);
    els.moveInput.addEventListener("keydown", moveKeys);
    els.moveResults.addEventListener("mousedown", function (e) { e.preventDefault(); });  // keep the focus in the box
    els.moveResults.addEventListener("click", function (e) {
      var r = e.target.closest ? e.target.closest("[data-name]") : null;
      if (r) { pick(Number(r.getAttribute("data-k"))); }
    });
    els.moveBox.addEventListener("click", function (e) { if (e.target === els.moveBox) { closeMove(); } });
    document.addEventListener("keydown", onKey);
    var first = meta.queues.filter(function (q) { return q.count > 0; })[0] || meta.queues[0];
    header();
    if (first) { show(first.key, 0, 0); } else { els.cards.textContent = "Nothing to review."; }
  }

  window.addEventListener("load", function () {
    if (!meta) { $("cards").textContent = "data/meta.js did not load: open index.html inside a complete review folder (cleanface review CLEAN writes it)."; }
  });

  window.CF_REVIEW = {
    meta: function (m) { meta = m; start(); },
    chunk: receiveChunk,
    names: receiveNames,
    overrides: overrides,
    view: function () { return { queue: view.queue, chunk: view.chunk, cursor: view.cursor, loading: view.loading, move: move.open,
                                 key: view.cards[view.cursor] ? view.cards[view.cursor].k : null }; },
    state: function () { return JSON.parse(JSON.stringify(state)); },
  };
}());
