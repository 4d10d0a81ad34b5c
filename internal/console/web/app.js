// fanout console: plain JavaScript on fanout's JSON API, no build step.
//
// Safety rules, kept everywhere below: whatever comes from the API (an
// event's payload, a destination's answer, a URL, an error) is put in the
// page as text (textContent, through el()), never as HTML; links to
// destination URLs are made only for http and https; no inline script or
// style (the page's Content-Security-Policy forbids them), no eval. The API
// token, when fanout needs one, stays in this tab's sessionStorage and goes
// out only in the Authorization header of the console's own requests.
"use strict";

(function () {
  const TOKEN_KEY = "fanout-token";
  const main = document.getElementById("main");
  const state = {
    tz: localStorage.getItem("fanout-tz") || "local",
    live: Number(localStorage.getItem("fanout-live") || "2"),
    page: null, // the current page: {refresh(), destroy()}
    timer: null,
    destinations: [], // cached for selects and names
    // Secrets are write-only: the API answers destinations masked
    // (whsec_…abcd, header values …abcd). revealed holds, by destination
    // id, what Reveal read from GET /v1/destinations/{id}/secret, until
    // Hide or another page; rotated holds the new secret a rotation
    // answered, shown once, until Done or another page.
    revealed: new Map(),
    rotated: new Map(),
  };

  // ---------- DOM helpers: text only ----------

  // el makes an element. attrs: plain attributes (set with setAttribute),
  // but "class", "on*" handlers (functions) and "text". Children: nodes or
  // strings (as text nodes); null and false are skipped.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = String(v);
      else if (k.startsWith("on") && typeof v === "function") e.addEventListener(k.slice(2), v);
      else if (k === "href") e.setAttribute("href", safeHref(v));
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  // safeHref allows in-console links and http(s) URLs only.
  function safeHref(v) {
    const s = String(v);
    if (s.startsWith("#/")) return s;
    try {
      const u = new URL(s, location.href);
      if (u.protocol === "http:" || u.protocol === "https:") return u.href;
    } catch (_) { /* not a URL */ }
    return "#";
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  function toast(msg, bad) {
    const t = document.getElementById("toast");
    t.textContent = msg;
    t.className = bad ? "bad" : "";
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, bad ? 6000 : 3000);
  }

  // ---------- times ----------

  function fmtTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (isNaN(d)) return String(iso);
    if (state.tz === "utc") return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }

  function ago(iso) {
    const s = (Date.now() - new Date(iso).getTime()) / 1000;
    if (isNaN(s)) return "";
    const a = Math.abs(s);
    const r = a < 60 ? `${Math.round(a)} s` : a < 3600 ? `${Math.round(a / 60)} min` : a < 86400 ? `${Math.round(a / 3600)} h` : `${Math.round(a / 86400)} d`;
    return s >= 0 ? `${r} ago` : `in ${r}`;
  }

  // timeEl shows a time in the chosen zone, the exact UTC time on hover.
  function timeEl(iso, withAgo) {
    if (!iso) return el("span", { class: "muted", text: "—" });
    return el("time", { datetime: iso, title: new Date(iso).toISOString() },
      fmtTime(iso), withAgo ? el("span", { class: "muted small" }, " · ", ago(iso)) : null);
  }

  // toInput turns an RFC 3339 time into a datetime-local value, and back,
  // in the chosen zone (explicitly: a datetime-local input has none).
  function toInput(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (isNaN(d)) return "";
    if (state.tz === "utc") return d.toISOString().slice(0, 19);
    const off = d.getTimezoneOffset() * 60000;
    return new Date(d.getTime() - off).toISOString().slice(0, 19);
  }
  function fromInput(v) {
    if (!v) return "";
    const d = state.tz === "utc" ? new Date(v + "Z") : new Date(v);
    return isNaN(d) ? "" : d.toISOString().replace(/\.\d+Z$/, "Z");
  }

  function fmtNum(n, digits) {
    if (n === null || n === undefined || isNaN(n)) return "—";
    return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits === undefined ? 1 : digits });
  }
  function fmtMS(ms) {
    if (ms === null || ms === undefined) return "—";
    if (ms < 1000) return `${fmtNum(ms, ms < 10 ? 2 : 0)} ms`;
    if (ms < 60000) return `${fmtNum(ms / 1000, 1)} s`;
    return `${fmtNum(ms / 60000, 1)} min`;
  }
  function fmtBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1 << 20) return `${fmtNum(n / 1024, 1)} KiB`;
    return `${fmtNum(n / (1 << 20), 1)} MiB`;
  }

  // ---------- the API ----------

  class APIError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, path, body) {
    return (await request(method, path, body)).data;
  }

  // request is api with the answer's text too, for a view that must show
  // what JSON.stringify cannot give back (an event nested thousands deep:
  // the browser's JSON.parse takes it, its stringify runs out of stack).
  // A body that is a string is sent as it is: JSON text (see withRaw).
  async function request(method, path, body) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(path, {
      method, headers, cache: "no-store", credentials: "omit",
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
    if (res.status === 401) {
      await askToken(token ? "fanout did not take this token." : "");
      return request(method, path, body);
    }
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!res.ok) throw new APIError(res.status, (data && data.error) || text || res.statusText);
    return { data, text };
  }

  // rawEvent is the event's JSON as fanout sent it in an event's answer,
  // {"id":...,"event":<event>,"deliveries":[...]}: what lies between the
  // first "event" key and the last "deliveries" key (a string holding
  // either is escaped, so neither can be mistaken for them).
  function rawEvent(text) {
    const start = text.indexOf(',"event":');
    const end = text.lastIndexOf(',"deliveries":');
    return start >= 0 && end > start ? text.slice(start + ',"event":'.length, end) : text;
  }

  // stringify is JSON.stringify, or null where the value is too deep for it.
  function stringify(v, indent) {
    try { return JSON.stringify(v, null, indent); } catch (_) { return null; }
  }

  let tokenWait = null;
  function askToken(message) {
    if (tokenWait) return tokenWait;
    const dlg = document.getElementById("token-dialog");
    const err = document.getElementById("token-error");
    const input = document.getElementById("token-input");
    err.hidden = !message;
    err.textContent = message || "";
    input.value = "";
    tokenWait = new Promise((resolve) => {
      dlg.addEventListener("close", function done() {
        dlg.removeEventListener("close", done);
        if (input.value) sessionStorage.setItem(TOKEN_KEY, input.value.trim());
        document.getElementById("signout").hidden = !sessionStorage.getItem(TOKEN_KEY);
        tokenWait = null;
        resolve();
      });
    });
    if (!dlg.open) dlg.showModal();
    return tokenWait;
  }

  // confirmDialog asks before an action; extra is a node shown under the
  // text (a typed confirmation, say). It resolves true on confirm.
  function confirmDialog(title, text, okLabel, extra, check) {
    const dlg = document.getElementById("confirm-dialog");
    document.getElementById("confirm-title").textContent = title;
    document.getElementById("confirm-text").textContent = text;
    const box = document.getElementById("confirm-extra");
    clear(box);
    if (extra) box.append(extra);
    const ok = document.getElementById("confirm-ok");
    ok.textContent = okLabel || "Confirm";
    ok.disabled = !!check && !check();
    const recheck = () => { ok.disabled = !!check && !check(); };
    box.addEventListener("input", recheck);
    return new Promise((resolve) => {
      dlg.addEventListener("close", function done() {
        dlg.removeEventListener("close", done);
        box.removeEventListener("input", recheck);
        resolve(dlg.returnValue === "ok");
      });
      dlg.returnValue = "";
      dlg.showModal();
    });
  }

  function copyButton(text, label) {
    return el("button", {
      type: "button", class: "copy", title: "copy", text: label || "copy",
      onclick: async (ev) => {
        ev.preventDefault();
        try {
          await navigator.clipboard.writeText(text);
          toast("Copied");
        } catch (_) {
          toast("The browser refused the clipboard here; select the text instead", true);
        }
      },
    });
  }

  function badge(s, extra) { return el("span", { class: "badge " + s, text: extra || s }); }

  function failMessage(e) { return e instanceof APIError ? `${e.status}: ${e.message}` : String(e.message || e); }

  function showError(where, e) {
    clear(where);
    where.append(el("div", { class: "banner bad" }, failMessage(e)));
  }

  // ---------- routing and live refresh ----------

  function parseHash() {
    const h = location.hash.replace(/^#\/?/, "");
    const [path, query] = h.split("?");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    return { parts, query: new URLSearchParams(query || "") };
  }

  function setHashQuery(page, q) {
    const s = q.toString();
    const h = "#/" + page + (s ? "?" + s : "");
    if (location.hash !== h) history.replaceState(null, "", h);
  }

  const pages = {};

  async function route() {
    if (state.page && state.page.destroy) state.page.destroy();
    state.page = null;
    const { parts, query } = parseHash();
    let name = parts[0] || "overview";
    if (!pages[name]) name = "overview";
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === name);
    clear(main);
    const page = pages[name](parts.slice(1), query);
    state.page = page;
    document.title = "fanout · " + (page.title || name);
    await refresh(true);
  }

  // refresh runs the current page's refresh, one at a time per page (a
  // tick while one is under way is skipped; a first load waits for it).
  async function refresh(first) {
    const page = state.page;
    if (!page || !page.refresh) return;
    if (page.running) {
      if (!first) return;
      await page.running.catch(() => {});
    }
    page.running = page.refresh(first);
    try {
      await page.running;
    } catch (e) {
      if (page === state.page && page.fail) page.fail(e);
      else if (page === state.page) toast(failMessage(e), true);
    } finally {
      page.running = null;
    }
  }

  function schedule() {
    clearInterval(state.timer);
    if (state.live > 0) {
      state.timer = setInterval(() => {
        if (!document.hidden && state.page && state.page.live) refresh(false);
      }, state.live * 1000);
    }
  }

  async function loadDestinations() {
    const d = await api("GET", "/v1/destinations");
    state.destinations = d.destinations || [];
    return state.destinations;
  }
  // fillDestinations reloads the destinations into a filter's select, "any"
  // first, and selects the one wanted, or else the one selected before.
  async function fillDestinations(select, wanted) {
    await loadDestinations();
    const sel = wanted || select.value;
    clear(select);
    select.append(el("option", { value: "", text: "any" }), state.destinations.map((d) => el("option", { value: d.id, text: d.description || whereOf(d) })));
    select.value = sel;
  }
  function destName(id) {
    const d = state.destinations.find((x) => x.id === id);
    return d ? (d.description || whereOf(d)) : id;
  }

  // whereOf is where a destination sends: a webhook's URL, a broker
  // destination's target (which the API gives without secrets). d may be
  // an entry of /v1/stats, which names the destination by id only.
  function whereOf(d) {
    if (!d) return "";
    if (d.url || d.target) return d.url || d.target;
    const known = state.destinations.find((x) => x.id === d.id);
    return known ? known.url || known.target || "" : "";
  }

  // typeOf is a destination's type: "webhook" when the API says none.
  function typeOf(d) { return (d && d.type) || "webhook"; }
  function destLink(id) {
    return el("a", { href: "#/destinations/" + encodeURIComponent(id), title: id, text: destName(id) });
  }
  function eventLink(id) {
    return el("a", { class: "id", href: "#/events/" + encodeURIComponent(id), title: id, text: id });
  }

  // ---------- overview ----------

  pages.overview = function () {
    const cards = el("div", { class: "cards" });
    const charts = el("div", { class: "charts" });
    const health = el("div", { class: "scroll" });
    const note = el("p", { class: "muted small" });
    main.append(el("h1", { text: "Overview" }), cards, charts, el("h2", { text: "Destinations" }), health, note);
    const plots = {};
    const observers = [];

    function card(label, value, sub) {
      return el("div", { class: "card" }, el("div", { class: "label", text: label }), el("div", { class: "value", text: value }),
        sub ? el("div", { class: "sub", text: sub }) : null);
    }

    function chart(key, title, series, data, opts) {
      if (typeof uPlot === "undefined") return;
      if (plots[key]) {
        plots[key].setData(data);
        return;
      }
      const box = el("div", { class: "chart" }, el("h3", { text: title }));
      charts.append(box);
      const width = () => Math.max(240, box.clientWidth - 18);
      const tzDate = state.tz === "utc" ? (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC") : undefined;
      const plot = new uPlot(Object.assign({
        width: width(), height: 180, tzDate,
        series: [{}].concat(series),
        axes: [{}, { size: 56 }],
        legend: { live: true },
        cursor: { drag: { x: false, y: false } },
      }, opts || {}), data, box);
      plots[key] = plot;
      if (typeof ResizeObserver !== "undefined") {
        const ro = new ResizeObserver(() => {
          const w = width();
          if (Math.abs(w - plot.width) > 4) plot.setSize({ width: w, height: 180 });
        });
        ro.observe(box);
        observers.push(ro);
      }
    }

    return {
      title: "overview",
      live: true,
      destroy() {
        for (const o of observers) o.disconnect();
        for (const p of Object.values(plots)) p.destroy();
      },
      async refresh() {
        const [s] = await Promise.all([api("GET", "/v1/stats"), loadDestinations()]);
        const r = s.rates;
        clear(cards);
        cards.append(
          card("Events in", `${fmtNum(r.accepted_per_second)}/s`, `${fmtNum(s.accepted_total, 0)} since start`),
          card("Delivered", `${fmtNum(r.delivered_per_second)}/s`),
          card("Failed attempts", `${fmtNum(r.retried_per_second + r.dead_per_second)}/s`, `${fmtNum(r.dead_per_second)}/s dead-lettered`),
          card("Latency p50", fmtMS(r.latency_p50_ms), "arrival to delivered"),
          card("Latency p99", fmtMS(r.latency_p99_ms)),
          card("Backlog", fmtNum(s.backlog, 0), s.store_up ? `waiting in the store · ${fmtNum(s.backlog_age_seconds, 0)} s old` : "store unreachable"),
        );
        const ser = s.series;
        const times = ser.time;
        const failed = ser.retried_per_second.map((v, i) => v + ser.dead_per_second[i]);
        chart("rates", "Events and deliveries per second", [
          { label: "in", stroke: "#1f6feb", width: 1.5 },
          { label: "delivered", stroke: "#1a7f37", width: 1.5 },
          { label: "failed", stroke: "#cf222e", width: 1.5 },
        ], [times, ser.accepted_per_second, ser.delivered_per_second, failed]);
        chart("latency", "Arrival to delivered (ms)", [
          { label: "p50", stroke: "#8250df", width: 1.5, points: { show: true, size: 4 } },
          { label: "p99", stroke: "#bf3989", width: 1.5, points: { show: true, size: 4 } },
        ], [times, ser.latency_p50_ms, ser.latency_p99_ms]);
        chart("backlog", "Backlog (deliveries waiting)", [
          { label: "backlog", stroke: "#9a6700", width: 1.5, spanGaps: true, points: { show: true, size: 4 } },
        ], [times, ser.backlog]);
        clear(health);
        const rows = s.destinations.map((d) => el("tr", {},
          el("td", {}, destLink(d.id), el("div", { class: "muted small mono", text: whereOf(d) })),
          el("td", {}, badge(d.state, d.state === "breaker" ? "breaker open" : d.state),
            d.breaker_until ? el("div", { class: "small muted" }, "until ", timeEl(d.breaker_until)) : null,
            d.reason ? el("div", { class: "small muted", text: d.reason }) : null),
          el("td", { class: "num", text: fmtNum(d.backlog, 0) }),
          el("td", { class: "num", text: `${d.in_flight} / ${fmtNum(d.concurrency_limit, 0)}` }),
          el("td", { class: "num", text: String(d.failures_in_a_row) })));
        health.append(rows.length ? el("table", {},
          el("thead", {}, el("tr", {}, el("th", { text: "Destination" }), el("th", { text: "State" }),
            el("th", { class: "num", text: "Backlog" }), el("th", { class: "num", text: "In flight / limit" }),
            el("th", { class: "num", text: "Failures in a row" }))),
          el("tbody", {}, rows)) : el("p", { class: "muted" }, "No destination yet: ", el("a", { href: "#/destinations", text: "add one" }), "."));
        clear(note);
        note.append(`Figures are this replica's (since ${fmtTime(s.started_at)}; ${s.bucket_seconds}-second buckets, the last hour, kept in memory); `,
          "the backlog is the store's, over all replicas. ", retentionText(s.retention));
        footer(s);
      },
    };
  };

  function retentionText(r) {
    if (!r) return "";
    const d = r.delivered === "forever" ? "kept forever" : `kept ${r.delivered}` + (r.delivered_since ? ` (back to ${fmtTime(r.delivered_since)})` : "");
    const f = r.failed === "forever" ? "kept until re-driven or deleted" : `kept ${r.failed}`;
    return `Delivered events are ${d}; events with a failed delivery are ${f}: a replay reaches that far back.`;
  }

  function footer(s) {
    const f = document.getElementById("foot");
    clear(f);
    f.append(`fanout ${s.version || ""} · store: ${s.store || "?"} · `, "this page refreshes ",
      state.live ? `every ${state.live} s` : "only when asked", " (paused while the tab is hidden)");
  }

  // ---------- events ----------

  const eventStates = ["", "pending", "delivering", "delivered", "failed"];

  pages.events = function (parts, query) {
    if (parts[0]) return eventPage(parts[0]);
    const form = el("form", { class: "filters" });
    const list = el("div");
    const banner = el("div");
    const info = el("p", { class: "muted small" });
    main.append(el("h1", { text: "Events" }), form, banner, list, info);
    const cursors = []; // the cursors of the pages before this one
    let cursor = query.get("cursor") || "";
    let shown = []; // ids shown, for the "new" highlight
    const f = {};
    const input = (name, label, attrs) => {
      const i = el("input", Object.assign({ name, "aria-label": label }, attrs || {}));
      f[name] = i;
      return el("label", {}, label, i);
    };
    const stateSel = el("select", { name: "state", "aria-label": "state" }, eventStates.map((s) => el("option", { value: s, text: s || "any" })));
    const destSel = el("select", { name: "destination", "aria-label": "destination" }, el("option", { value: "", text: "any" }));
    f.state = stateSel;
    f.destination = destSel;
    form.append(
      input("q", "Payload contains", { type: "search", placeholder: "text", maxlength: "200" }),
      input("type", "Type", { placeholder: "order.paid or order.*" }),
      el("label", {}, "State", stateSel),
      el("label", {}, "Destination", destSel),
      input("since", "Since", { type: "datetime-local", step: "1" }),
      input("until", "Until", { type: "datetime-local", step: "1" }),
      el("button", { type: "submit", text: "Filter" }),
      el("button", { type: "button", class: "secondary", text: "Clear", onclick: () => { location.hash = "#/events"; } }),
      input("id", "Go to event id", { placeholder: "id" }),
    );
    f.q.value = query.get("q") || "";
    f.type.value = query.get("type") || "";
    f.since.value = toInput(query.get("since"));
    f.until.value = toInput(query.get("until"));
    stateSel.value = query.get("state") || "";
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      if (f.id.value.trim()) {
        location.hash = "#/events/" + encodeURIComponent(f.id.value.trim());
        return;
      }
      const q = filterQuery();
      cursors.length = 0;
      cursor = "";
      setHashQuery("events", q);
      refresh(true);
    });
    function filterQuery() {
      const q = new URLSearchParams();
      for (const k of ["q", "type"]) if (f[k].value.trim()) q.set(k, f[k].value.trim());
      if (stateSel.value) q.set("state", stateSel.value);
      if (destSel.value) q.set("destination", destSel.value);
      if (f.since.value) q.set("since", fromInput(f.since.value));
      if (f.until.value) q.set("until", fromInput(f.until.value));
      return q;
    }

    function render(page, fresh) {
      clear(list);
      const rows = page.events.map((e) => {
        const d = e.deliveries;
        return el("tr", { class: fresh.has(e.id) ? "fresh" : null, "data-id": e.id },
          el("td", {}, timeEl(e.received_at, true)),
          el("td", {}, eventLink(e.id), copyButton(e.id)),
          el("td", { class: "mono", text: e.type || "—" }),
          el("td", {}, badge(e.state)),
          el("td", { class: "nowrap" },
            d.delivered ? el("span", { class: "badge delivered", title: "delivered", text: `✓ ${d.delivered}` }) : null, " ",
            d.failed ? el("span", { class: "badge failed", title: "failed", text: `✗ ${d.failed}` }) : null, " ",
            d.pending + d.delivering ? el("span", { class: "badge pending", title: "pending or delivering", text: `… ${d.pending + d.delivering}` }) : null,
            !(d.delivered + d.failed + d.pending + d.delivering) ? el("span", { class: "muted", text: "none" }) : null),
          el("td", { class: "num hide-narrow", text: fmtBytes(e.size) }));
      });
      list.append(el("div", { class: "scroll" }, el("table", { id: "events-table" },
        el("thead", {}, el("tr", {}, el("th", { text: "Received" }), el("th", { text: "Id" }), el("th", { text: "Type" }),
          el("th", { text: "State" }), el("th", { text: "Deliveries" }), el("th", { class: "num hide-narrow", text: "Size" }))),
        el("tbody", {}, rows))));
      if (!rows.length) list.append(el("p", { class: "muted", text: page.next_cursor ? "No match yet." : "No event matches." }));
      const pager = el("div", { class: "pager" });
      if (cursors.length) {
        pager.append(el("button", { type: "button", class: "secondary", text: "← Newest", onclick: () => { cursors.length = 0; cursor = ""; refresh(true); } }),
          el("button", { type: "button", class: "secondary", text: "← Newer", onclick: () => { cursor = cursors.pop(); refresh(true); } }));
      }
      if (page.next_cursor) {
        const label = page.searched_to ? "Search older →" : "Older →";
        pager.append(el("button", { type: "button", class: "secondary", text: label, onclick: () => { cursors.push(cursor); cursor = page.next_cursor; refresh(true); } }));
      }
      if (page.searched_to) {
        pager.append(el("span", { class: "muted small" }, `Searched ${fmtNum(page.scanned, 0)} events back to `, timeEl(page.searched_to),
          "; each page searches a bounded number of events."));
      }
      list.append(pager);
      clear(info);
      info.append(retentionText(page.retention), " Lists never show payloads; open an event to see it.");
    }

    let last = null;
    return {
      title: "events",
      // A text search reads payloads: it runs when asked, not on every tick.
      get live() { return cursors.length === 0 && !cursor && !f.q.value.trim(); },
      async refresh(first) {
        if (first || !state.destinations.length) await fillDestinations(destSel, query.get("destination"));
        const q = filterQuery();
        q.set("limit", "50");
        if (cursor) q.set("cursor", cursor);
        const page = await api("GET", "/v1/events?" + q.toString());
        const fresh = new Set();
        if (!first && last) for (const e of page.events) if (!shown.includes(e.id)) fresh.add(e.id);
        clear(banner);
        if (fresh.size && window.scrollY > 200) {
          // The reader is further down: say so instead of moving the rows.
          banner.append(el("div", { class: "banner info" }, `${fresh.size} new event${fresh.size > 1 ? "s" : ""}`,
            el("button", { type: "button", class: "secondary", text: "Show", onclick: () => { window.scrollTo(0, 0); clear(banner); render(page, fresh); shown = page.events.map((e) => e.id); } })));
          return;
        }
        last = page;
        shown = page.events.map((e) => e.id);
        render(page, fresh);
      },
      fail(e) { showError(list, e); },
    };
  };

  const LARGE = 256 * 1024;

  function eventPage(id) {
    const head = el("div");
    const body = el("div");
    main.append(el("p", {}, el("a", { href: "#/events", text: "← Events" })), head, body);
    let pretty = true;
    let lastState = null;
    return {
      title: "event " + id,
      get live() { return lastState !== "delivered" && lastState !== "failed"; },
      async refresh(first) {
        if (first) await loadDestinations();
        const { data: ev, text } = await request("GET", "/v1/events/" + encodeURIComponent(id));
        lastState = ev.state;
        clear(head);
        clear(body);
        if (ev.raw) { rawEventBody(ev, head, body); for (const d of ev.deliveries) body.append(await deliveryPanel(d)); return; }
        const compact = stringify(ev.event);
        const raw = compact === null ? rawEvent(text) : compact;
        const deep = compact === null;
        const type = ev.event && typeof ev.event.type === "string" ? ev.event.type : "";
        head.append(el("h1", {}, "Event ", el("span", { class: "id", text: ev.id }), copyButton(ev.id)),
          el("dl", { class: "facts" },
            el("dt", { text: "State" }), el("dd", {}, badge(ev.state)),
            el("dt", { text: "Type" }), el("dd", { class: "mono", text: type || "—" }),
            el("dt", { text: "Received" }), el("dd", {}, timeEl(ev.received_at, true)),
            el("dt", { text: "Size" }), el("dd", { text: fmtBytes(new TextEncoder().encode(raw).length) }),
            ev.error ? el("dt", { text: "Error" }) : null, ev.error ? el("dd", { class: "error", text: ev.error }) : null));
        // The payload: text, never markup.
        const pre = el("pre", { class: "payload", id: "payload" });
        const large = raw.length > LARGE;
        const indented = pretty && !large && !deep ? stringify(ev.event, 2) : null;
        pre.textContent = indented !== null ? indented : large ? raw.slice(0, LARGE) + "\n… (truncated: download it whole)" : raw;
        body.append(el("div", { class: "spread" }, el("h2", { text: "Payload" }), el("div", { class: "actions" },
          large || deep ? null : el("button", { type: "button", class: "secondary", text: pretty ? "Raw" : "Pretty", onclick: () => { pretty = !pretty; refresh(true); } }),
          copyButton(raw, "Copy"),
          el("button", { type: "button", class: "secondary", text: "Download", onclick: () => download(ev.id + ".json", raw) }))), pre);
        body.append(el("h2", { text: "Deliveries" }));
        if (!ev.deliveries.length) {
          body.append(el("p", { class: "muted", text: "No destination wanted this event when it arrived. A replay to a destination sends it." }));
          return;
        }
        for (const d of ev.deliveries) body.append(await deliveryPanel(d));
      },
      fail(e) { showError(head, e); },
    };
  }

  // rawEventBody shows a raw event (sent with raw=true): its body as text
  // (textContent: markup in it is shown, never run), or, when its bytes
  // are not UTF-8, a note and a download of them.
  function rawEventBody(ev, head, body) {
    const raw = ev.raw;
    head.append(el("h1", {}, "Event ", el("span", { class: "id", text: ev.id }), copyButton(ev.id)),
      el("dl", { class: "facts" },
        el("dt", { text: "State" }), el("dd", {}, badge(ev.state)),
        el("dt", { text: "Type" }), el("dd", { class: "mono", text: ev.type || "—" }),
        el("dt", { text: "Content-Type" }), el("dd", { class: "mono", id: "raw-content-type", text: raw.content_type }),
        el("dt", { text: "Received" }), el("dd", {}, timeEl(ev.received_at, true)),
        el("dt", { text: "Size" }), el("dd", { text: fmtBytes(raw.size) }),
        ev.error ? el("dt", { text: "Error" }) : null, ev.error ? el("dd", { class: "error", text: ev.error }) : null));
    const binary = raw.text === undefined || raw.text === "";
    const bytes = () => binary ? Uint8Array.from(atob(raw.base64 || ""), (c) => c.charCodeAt(0)) : raw.text;
    const pre = el("pre", { class: "payload", id: "payload" });
    if (binary) pre.textContent = "Binary body (not UTF-8 text), " + fmtBytes(raw.size) + ": download it to see it.";
    else pre.textContent = raw.text.length > LARGE ? raw.text.slice(0, LARGE) + "\n… (truncated: download it whole)" : raw.text;
    body.append(el("div", { class: "spread" }, el("h2", { text: "Body" }), el("div", { class: "actions" },
      binary ? null : copyButton(raw.text, "Copy"),
      el("button", { type: "button", class: "secondary", text: "Download", onclick: () => download(ev.id + ".bin", bytes(), "application/octet-stream") }))),
    el("p", { class: "muted small", text: "A raw event: delivered byte for byte with its Content-Type. Payload filters see no fields of it, only its type, tenant and time." }),
    pre);
    body.append(el("h2", { text: "Deliveries" }));
    if (!ev.deliveries.length) body.append(el("p", { class: "muted", text: "No destination wanted this event when it arrived. A replay to a destination sends it." }));
  }

  function download(name, text, type) {
    // A download, never a page: a raw body of text/html stays a file.
    const url = URL.createObjectURL(new Blob([text], { type: type || "application/json" }));
    const a = el("a", { download: name });
    a.href = url; // a blob: URL of our own making
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  async function deliveryPanel(d) {
    const full = await api("GET", "/v1/deliveries/" + encodeURIComponent(d.id));
    const panel = el("div", { class: "panel delivery", "data-delivery": d.id });
    const retry = d.state === "failed" ? el("button", {
      type: "button", class: "retry", text: "Re-drive",
      onclick: async (ev) => {
        ev.target.disabled = true;
        try {
          await api("POST", "/v1/deliveries/" + encodeURIComponent(d.id) + "/retry");
          toast("Re-driven: it will be tried again now");
          refresh(true);
        } catch (e) { toast(failMessage(e), true); ev.target.disabled = false; }
      },
    }) : null;
    panel.append(el("div", { class: "spread" },
      el("div", { class: "row" }, destLink(d.destination_id), badge(d.state), d.replay ? badge("replay", "replayed") : null,
        full.out_of_order ? badge("replay", "out of order") : null,
        el("span", { class: "muted small", text: `${d.attempts} attempt${d.attempts === 1 ? "" : "s"}` })),
      retry));
    const steps = el("ol", { class: "timeline" });
    steps.append(el("li", {}, "Queued ", timeEl(full.created_at), full.replay ? el("span", { class: "muted small" }, " by replay ", el("span", { class: "id", text: full.replay })) : null));
    for (const a of full.attempt_history || []) {
      let excerpt = "";
      if (a.detail && typeof a.detail === "object" && a.detail.excerpt) excerpt = a.detail.excerpt;
      // A broker destination's attempt has no HTTP status: without an
      // error, the broker took the message.
      const ok = !a.error && (!a.status || (a.status >= 200 && a.status < 300));
      steps.append(el("li", { class: ok ? "ok" : "bad" },
        el("strong", { text: `Attempt ${a.attempt}` }), " · ", timeEl(a.started_at), " · ", fmtMS(a.duration_ms), " · ",
        a.status ? el("span", { class: ok ? "" : "error", text: `HTTP ${a.status}` }) : ok ? el("span", { text: "accepted by the broker" }) : null,
        a.error ? el("div", { class: "error small", text: a.error }) : null,
        excerpt ? el("pre", { class: "excerpt", text: excerpt }) : null));
    }
    if (d.state === "pending" && d.next_attempt_at) steps.append(el("li", { class: "wait" }, "Next attempt ", timeEl(d.next_attempt_at, true)));
    if (d.state === "pending" && full.queued) steps.append(el("li", { class: "wait" }, "Waiting for the deliveries before it of key ", el("span", { class: "mono", text: JSON.stringify(full.order_key) })));
    if (d.state === "delivered") steps.append(el("li", { class: "ok" }, "Delivered ", timeEl(d.delivered_at)));
    if (d.state === "failed") steps.append(el("li", { class: "bad" }, "Failed for good: a dead letter. ", d.last_error ? el("span", { class: "error small", text: d.last_error }) : null));
    panel.append(steps);
    return panel;
  }

  // ---------- destinations ----------

  // ---------- payload filters ----------

  // The payload filter field and its test: filters.js, shared with the
  // tenant portal.
  const { EXAMPLE_EVENT, prettyMatch, withRaw } = window.FanoutFilters;
  const { matchEditor } = window.FanoutFilters.make({
    api, el, clear, APIError,
    nodeClass: "wide match-editor",
    filterLabel: "Payload filter (JSON, as in the API: {\"data.amount\": {\"$gte\": 100}}; empty: none)",
    exampleLabel: "Example event (JSON, as it would be posted)",
    errorText: failMessage,
  });

  // transformEditor is the "Transformation" field of a destination's
  // form: the program, an example event, and a live preview of the
  // request the program makes of it (POST /v1/transform, as you type).
  function transformEditor(d) {
    const initial = (d && d.transform) || "";
    const area = el("textarea", { name: "transform", class: "match transform", spellcheck: "false", rows: "10",
      placeholder: "function handler(webhook) {\n  webhook.headers[\"X-Type\"] = webhook.event.type;\n  return webhook;\n}" }, initial);
    const error = el("div", { class: "error small transform-error", role: "alert" });
    const example = el("textarea", { name: "transform-example", class: "example", spellcheck: "false" }, EXAMPLE_EVENT);
    const preview = el("div", { class: "transform-preview", "aria-live": "polite" });
    let timer = null, seq = 0;
    async function run() {
      const mine = ++seq;
      const src = area.value.trim();
      if (!src) { clear(preview); preview.append(el("span", { class: "muted", text: "No transformation: events are sent as they came." })); return; }
      let ev;
      try { ev = JSON.parse(example.value); } catch (e) { clear(preview); preview.append(el("div", { class: "error small", text: "The example is not JSON: " + e.message })); return; }
      try {
        const r = await api("POST", "/v1/transform", { transform: area.value, event: ev, destination: d ? d.id : undefined });
        if (mine !== seq) return; // a later keystroke's answer wins
        clear(preview);
        if (!r.ok) {
          preview.append(el("div", { class: "error small preview-error", text: (r.timeout ? "Timed out: " : "Error: ") + r.error }));
        } else if (r.cancelled) {
          preview.append(el("strong", { class: "no-match preview-cancelled", text: "cancelled" + (r.reason ? ": " + r.reason : "") }));
        } else {
          const hs = Object.entries(r.headers || {}).map(([k, v]) => `${k}: ${v}`).join("\n");
          preview.append(el("pre", { class: "mono preview-request", text: `${r.method} ${r.url}\n${hs}${hs ? "\n" : ""}\n${r.body === undefined ? "" : stringify(r.body, 2)}` }));
        }
        preview.append(el("div", { class: "muted small", text: `ran in ${r.duration_ms} ms; nothing was sent` }));
      } catch (e) {
        if (mine !== seq) return;
        clear(preview);
        preview.append(el("div", { class: "error small", text: failMessage(e) }));
      }
    }
    const later = () => { clearTimeout(timer); timer = setTimeout(run, 300); };
    area.addEventListener("input", later);
    example.addEventListener("input", later);
    const panel = el("details", { class: "transform-test" }, el("summary", { text: "Live preview on an example event" }),
      el("label", {}, "Example event (JSON)", example), preview);
    panel.addEventListener("toggle", () => { if (panel.open) run(); });
    return {
      node: el("div", { class: "wide transform-editor" },
        el("label", {}, "Transformation (JavaScript: function handler(webhook) { ... }; empty: none)", area), error, panel),
      changed() { return area.value.trim() !== initial.trim(); },
      value() { return area.value.trim() ? area.value : ""; },
      fail(e) {
        if (!(e instanceof APIError && (e.status === 400 || e.status === 403) && /\btransform/.test(e.message))) return false;
        error.textContent = e.message;
        return true;
      },
    };
  }

  pages.destinations = function (parts) {
    const focus = parts[0] || "";
    state.revealed.clear();
    state.rotated.clear();
    const top = el("div");
    const list = el("div");
    main.append(el("h1", { text: "Destinations" }), top, list);
    let health = {};
    let replays = [];
    const open = new Set(focus ? [focus] : []);

    const create = el("form", { class: "stack", id: "create-destination" });
    const where = typeFields(null, "new");
    create.append(where.node,
      el("label", {}, "Filter (event types, comma-separated)", el("input", { name: "filter", placeholder: "order.*, user.created" })),
      el("label", {}, "Description", el("input", { name: "description", maxlength: "1000" })));
    const createMatch = matchEditor(null, () => splitList(create.querySelector("input[name=filter]").value));
    const createError = el("div", { class: "wide form-error error", role: "alert" });
    create.append(createMatch.node, createError, el("div", {}, el("button", { type: "submit", text: "Add destination" })));
    create.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      createError.textContent = "";
      const fd = new FormData(create);
      const m = createMatch.read();
      if (!m) return;
      let target;
      try { target = where.read(); } catch (e) { toast(e.message, true); return; }
      try {
        const d = await api("POST", "/v1/destinations", withRaw(Object.assign(target, { description: fd.get("description") || undefined, filter: splitList(fd.get("filter")) }), { match: m.raw }));
        create.reset();
        where.reset();
        open.add(d.id);
        // The creation's answer: a webhook's signing secret, shown once.
        if (typeOf(d) === "webhook" && d.secret) state.rotated.set(d.id, { secret: d.secret });
        toast("Added " + d.id);
        refresh(true);
      } catch (e) {
        if (createMatch.fail(e) || where.fail(e)) return;
        createError.textContent = failMessage(e);
        toast(failMessage(e), true);
      }
    });
    top.append(el("details", { class: "panel" }, el("summary", { text: "Add a destination" }), create));

    return {
      title: "destinations",
      live: true,
      async refresh(first) {
        const [, s, r] = await Promise.all([loadDestinations(), api("GET", "/v1/stats"), api("GET", "/v1/replays")]);
        health = Object.fromEntries(s.destinations.map((d) => [d.id, d]));
        if (first && !focus && state.destinations.length <= 3) for (const d of state.destinations) open.add(d.id);
        replays = r.replays;
        // Keep what is being typed: re-render only closed panels and
        // the figures of open ones.
        const existing = new Map([...list.children].map((n) => [n.dataset.id, n]));
        const keep = new Set();
        for (const d of state.destinations) {
          keep.add(d.id);
          const old = existing.get(d.id);
          const fresh = destinationPanel(d, health[d.id], replays.filter((x) => x.destination === d.id), open);
          if (old && old.querySelector("form.editing")) {
            const figs = old.querySelector(".figures");
            if (figs) figs.replaceWith(fresh.querySelector(".figures"));
            continue;
          }
          if (old) old.replaceWith(fresh); else list.append(fresh);
        }
        for (const [id, n] of existing) if (!keep.has(id)) n.remove();
        if (!state.destinations.length) {
          clear(list);
          list.append(el("p", { class: "muted", text: "No destination yet. Events are stored and delivered nowhere until you add one." }));
        }
        footer(s);
      },
      fail(e) { showError(list, e); },
    };
  };

  function splitList(v) {
    return String(v || "").split(",").map((s) => s.trim()).filter(Boolean);
  }

  // throttleOf reads rate_limit, a number per second or {rate, per, burst}.
  function throttleOf(d) {
    const r = d.rate_limit;
    if (!r) return null;
    if (typeof r === "number") return { rate: r, per: "second", burst: 0 };
    return { rate: r.rate, per: r.per || "second", burst: r.burst || 0 };
  }

  function throttleText(d) {
    const t = throttleOf(d);
    if (!t) return "none";
    return `${t.rate} per ${t.per}, ` + (t.burst ? `burst ${t.burst}` : "burst of one second's worth") + " (all replicas together on PostgreSQL)";
  }

  // typeFields is where a destination sends, in its form: the type
  // selector, then a webhook's URL or a broker kind's config form.
  // read() is the body's part (url, or type and config); fail(err) marks
  // the field an API error names; reset() empties it (a new one).
  function typeFields(d, idPrefix, onType) {
    const K = window.FanoutKinds;
    const initial = typeOf(d);
    // Every kind: the API says which this token may not create (a 403
    // naming the kind, shown under the form).
    const kinds = window.FanoutKinds.list.slice();
    if (!kinds.some((k) => k.name === initial)) kinds.push({ name: initial, label: K.label(initial) });
    const select = el("select", { name: "type", id: idPrefix + "-type", "aria-label": "destination type" },
      kinds.map((k) => el("option", { value: k.name, text: k.label, selected: k.name === initial })));
    const box = el("div", { class: "wide type-fields" });
    let form = null; // the config form of the type shown
    let url = null;
    const reveal = el("button", {
      type: "button", class: "secondary reveal-config", text: "Reveal secrets",
      title: "put the stored values in place of the masked ones",
      onclick: async (ev) => {
        try {
          const s = await readSecrets(d);
          const n = form.reveal(s.config || {});
          ev.target.disabled = true;
          if (!n) toast("No masked value left to reveal");
        } catch (e) { toast(failMessage(e), true); }
      },
    });
    function show(type) {
      clear(box);
      form = null;
      url = null;
      if (type === "webhook") {
        url = el("input", { name: "url", type: "url", required: true, placeholder: "https://example.com/hooks", value: d && d.url ? d.url : "" });
        box.append(el("label", {}, "URL", url));
        return;
      }
      // The stored config belongs to the stored type only.
      const same = d && typeOf(d) === type;
      form = K.configForm(type, same ? d.config : null, { idPrefix, delivered: same ? d.delivered : "" });
      box.append(form.node);
      if (same && form.hasMasks()) box.append(el("div", { class: "actions" }, reveal));
    }
    select.addEventListener("change", () => { show(select.value); if (onType) onType(select.value); });
    show(initial);
    return {
      node: el("div", { class: "wide type-row" }, el("label", {}, "Type", select), box),
      read() {
        if (select.value === "webhook") return { type: d && initial !== "webhook" ? "webhook" : undefined, url: url.value };
        return { type: select.value, config: form.read() };
      },
      fail(e) { return !!form && form.fail(e); },
      reset() { select.value = initial; show(initial); },
    };
  }

  function destinationPanel(d, h, replays, open) {
    const stateName = !d.enabled ? "disabled" : d.paused ? "paused" : h && h.state === "breaker" ? "breaker" : "active";
    const panel = el("details", { class: "panel destination", "data-id": d.id, open: open.has(d.id) });
    panel.addEventListener("toggle", () => { if (panel.open) open.add(d.id); else open.delete(d.id); });
    const broker = typeOf(d) !== "webhook";
    // A broker's target is text: it is no link, whatever it looks like.
    const url = broker ? el("span", { class: "mono target", text: d.target || "" })
      : /^https?:\/\//i.test(d.url) ? el("a", { href: d.url, rel: "noreferrer noopener", target: "_blank", class: "mono", text: d.url }) : el("span", { class: "mono", text: d.url });
    panel.append(el("summary", {}, el("strong", { text: d.description || d.id }), " ", badge(stateName, stateName === "breaker" ? "breaker open" : stateName), " ",
      broker ? el("span", { class: "badge kind", "data-type": typeOf(d), text: window.FanoutKinds.label(typeOf(d)) }) : null, broker ? " " : null, url));

    const figs = el("div", { class: "figures small muted" },
      `backlog ${h ? fmtNum(h.backlog, 0) : "—"}`, " · ",
      `in flight ${h ? h.in_flight : "—"} / limit ${h ? fmtNum(h.concurrency_limit, 0) : "—"} (max ${d.max_concurrency})`, " · ",
      `failures in a row ${h ? h.failures_in_a_row : "—"}`,
      throttleOf(d) ? el("span", { class: "throttled" }, ` · waiting on the throttle ${h ? fmtNum(h.throttled, 0) : "—"}`) : null,
      d.circuit_open_until ? el("span", {}, " · breaker open until ", timeEl(d.circuit_open_until)) : null);
    panel.append(figs);
    if (d.reason) panel.append(el("div", { class: "banner warn", text: d.reason }));
    if (d.missed && d.enabled) {
      panel.append(el("div", { class: "banner info missed" },
        "It was disabled from ", timeEl(d.missed.since), " to ", timeEl(d.missed.until),
        ": the events of that period were not sent to it.",
        el("button", { type: "button", class: "secondary", text: "Replay that period", onclick: () => replayForm(d, panel, d.missed.since, d.missed.until) })));
    }
    if (!d.enabled) {
      panel.append(el("div", { class: "banner warn", text: "Disabled: new events are not routed to it, and its pending deliveries wait. " +
        "Once it is enabled again, replay the period it was disabled to send it what it missed." }));
    }

    panel.append(destinationFacts(d, panel));
    const fresh = state.rotated.get(d.id);
    if (fresh) panel.append(rotatedBanner(d, fresh));

    const act = (label, cls, fn) => el("button", {
      type: "button", class: cls, text: label,
      onclick: async (ev) => {
        ev.target.disabled = true;
        try { await fn(); refresh(true); } catch (e) { toast(failMessage(e), true); } finally { ev.target.disabled = false; }
      },
    });
    const path = "/v1/destinations/" + encodeURIComponent(d.id);
    const actions = el("div", { class: "actions" },
      d.paused || stateName === "breaker"
        ? act("Resume", "resume", async () => { await api("POST", path + "/resume"); toast("Resumed"); })
        : act("Pause", "secondary pause", async () => { await api("PATCH", path, { paused: true }); toast("Paused: deliveries wait"); }),
      d.enabled
        ? act("Disable", "secondary", async () => { await api("PATCH", path, { enabled: false }); toast("Disabled"); })
        : act("Enable", "", async () => { await api("PATCH", path, { enabled: true }); toast("Enabled"); }),
      el("button", { type: "button", class: "secondary edit", text: "Edit", onclick: () => editForm(d, panel) }),
      el("button", { type: "button", class: "secondary replay", text: "Replay…", onclick: () => replayForm(d, panel) }),
      broker ? null : act("Rotate secret", "secondary rotate", async () => {
        const nd = await api("POST", path + "/rotate-secret");
        // The one answer that shows the new secret: shown once, here.
        state.revealed.delete(d.id);
        state.rotated.set(d.id, { secret: nd.secret, until: nd.previous_secret_expires_at });
        const p = livePanel(panel, d.id);
        const old = p.querySelector(".rotated");
        const banner = rotatedBanner(d, state.rotated.get(d.id));
        if (old) old.replaceWith(banner); else p.querySelector(".actions").before(banner);
        toast("New secret: the old one signs too until " + fmtTime(nd.previous_secret_expires_at));
      }),
      el("button", {
        type: "button", class: "danger", text: "Delete",
        onclick: async () => {
          const input = el("input", { "aria-label": "destination id", placeholder: d.id });
          const ok = await confirmDialog("Delete this destination?", `Its pending deliveries will fail for good. Type its id, ${d.id}, to confirm.`,
            "Delete", input, () => input.value === d.id);
          if (!ok) return;
          try { await api("DELETE", path); toast("Deleted"); refresh(true); } catch (e) { toast(failMessage(e), true); }
        },
      }));
    panel.append(actions);
    panel.append(el("div", { class: "slot" }));
    if (d.ordering) panel.append(blockedKeys(d, panel));

    if (replays.length) {
      panel.append(el("h3", { text: "Replays" }), el("div", { class: "scroll" }, el("table", { class: "replays" },
        el("thead", {}, el("tr", {}, el("th", { text: "Started" }), el("th", { text: "Range" }), el("th", { text: "State" }),
          el("th", { text: "Progress" }), el("th", { class: "num", text: "Created" }), el("th", { class: "num", text: "Skipped" }))),
        el("tbody", {}, replays.slice(0, 10).map((r) => el("tr", { "data-replay": r.id },
          el("td", {}, timeEl(r.created_at)),
          el("td", { class: "small" }, fmtTime(r.since), " → ", fmtTime(r.until), r.force ? " (forced)" : ""),
          el("td", {}, badge(r.state), r.error ? el("div", { class: "error small", text: r.error }) : null),
          el("td", {}, el("progress", { max: "1", value: String(r.progress) }), " ", `${Math.round(r.progress * 100)}%`),
          el("td", { class: "num", text: fmtNum(r.created, 0) }),
          el("td", { class: "num", text: fmtNum(r.skipped, 0) })))))));
    }
    return panel;
  }

  // blockedKeys is the list of an ordered destination's blocked keys:
  // those whose first delivery keeps failing, holding back the deliveries
  // behind it. Each can be skipped (dead-lettered) so that its key moves on.
  function blockedKeys(d, panel) {
    const box = el("div", { class: "blocked-keys" }, el("h3", { text: "Blocked keys" }), el("p", { class: "muted small", text: "loading…" }));
    const path = "/v1/destinations/" + encodeURIComponent(d.id);
    api("GET", path + "/ordered-keys?blocked=true&limit=50").then((r) => {
      const keys = r.keys || [];
      const body = keys.length ? el("div", { class: "scroll" }, el("table", { class: "blocked" },
        el("thead", {}, el("tr", {}, el("th", { text: "Key" }), el("th", { text: "Head event" }), el("th", { class: "num", text: "Attempts" }),
          el("th", { text: "Last error" }), el("th", { text: "Next attempt" }), el("th", { class: "num", text: "Waiting" }), el("th", {}))),
        el("tbody", {}, keys.map((k) => el("tr", { "data-key": JSON.stringify(k.key) },
          el("td", { class: "mono", text: JSON.stringify(k.key) }),
          el("td", {}, el("a", { class: "mono", href: "#/events/" + encodeURIComponent(k.head.event_id), text: k.head.event_id })),
          el("td", { class: "num", text: fmtNum(k.head.attempts, 0) }),
          el("td", { class: "error small", text: k.head.last_error || "" }),
          el("td", {}, k.head.next_attempt_at ? timeEl(k.head.next_attempt_at) : "now"),
          el("td", { class: "num", text: fmtNum(k.queued, 0) }),
          el("td", {}, el("button", {
            type: "button", class: "secondary skip", text: "Skip",
            title: "dead-letter this delivery so that the key moves on (it can be retried later, out of order)",
            onclick: async (ev) => {
              ev.target.disabled = true;
              try { await api("POST", "/v1/deliveries/" + encodeURIComponent(k.head.id) + "/skip"); toast("Skipped: the key moves on"); refresh(true); } catch (e) { toast(failMessage(e), true); ev.target.disabled = false; }
            },
          }))))))) : el("p", { class: "muted small", text: "None: every key's deliveries are going through." });
      box.replaceChildren(box.firstChild, body);
    }).catch((e) => box.replaceChildren(box.firstChild, el("p", { class: "error small", text: failMessage(e) })));
    return box;
  }

  // livePanel is the destination's panel in the page now: the live
  // refresh may have replaced the one a click began in.
  function livePanel(panel, id) {
    if (panel.isConnected) return panel;
    return [...main.querySelectorAll("details.destination")].find((n) => n.dataset.id === id) || panel;
  }

  // readSecrets asks fanout for a destination's secret and header values
  // in full (the console's own token, as on every request).
  function readSecrets(d) {
    return api("GET", "/v1/destinations/" + encodeURIComponent(d.id) + "/secret");
  }

  // destinationFacts lists a destination's settings: its secret and header
  // values masked as the API gives them, or in full once revealed.
  function destinationFacts(d, panel) {
    const shown = state.revealed.get(d.id);
    const secret = shown ? shown.secret : d.secret;
    const headers = shown ? shown.headers : d.headers || {};
    const redraw = () => {
      const p = livePanel(panel, d.id);
      p.querySelector("dl.facts").replaceWith(destinationFacts(d, p));
    };
    const toggle = async (ev) => {
      ev.preventDefault();
      if (shown) { state.revealed.delete(d.id); redraw(); return; }
      ev.target.disabled = true;
      try { state.revealed.set(d.id, await readSecrets(d)); redraw(); } catch (e) { toast(failMessage(e), true); ev.target.disabled = false; }
    };
    const reveal = el("button", {
      type: "button", class: "copy reveal", text: shown ? "hide" : "reveal",
      title: shown ? "mask the secret and header values again" : "show the secret and header values in full",
      onclick: toggle,
    });
    // Copy reads the secret when it is not shown: the page holds a mask.
    const copy = el("button", {
      type: "button", class: "copy copy-secret", title: "copy the secret", text: "copy secret",
      onclick: async (ev) => {
        ev.preventDefault();
        try {
          const full = shown ? shown.secret : (await readSecrets(d)).secret;
          await navigator.clipboard.writeText(full);
          toast("Copied");
        } catch (e) {
          toast(e instanceof APIError ? failMessage(e) : "The browser refused the clipboard here; reveal the secret and select it instead", true);
        }
      },
    });
    const names = Object.keys(headers);
    const broker = typeOf(d) !== "webhook";
    // A broker destination signs nothing: its secrets are its config's,
    // masked as the API gives them, or in full once revealed.
    const config = shown && shown.config ? shown.config : d.config;
    const kindRows = broker ? [
      el("dt", { text: "Type" }), el("dd", { class: "kind" }, window.FanoutKinds.label(typeOf(d)), " ", el("span", { class: "muted small mono", text: typeOf(d) })),
      el("dt", { text: "Target" }), el("dd", { class: "mono target", text: d.target || "" }),
      el("dt", { text: "Delivered" }), el("dd", { class: "delivered", text: d.delivered ? "when " + d.delivered : "—" }),
      el("dt", { text: "Config" }), el("dd", { class: "config" + (shown ? " revealed" : "") }, window.FanoutKinds.configRows(typeOf(d), config),
        el("div", {}, el("button", {
          type: "button", class: "copy reveal", text: shown ? "hide" : "reveal",
          title: shown ? "mask the secrets again" : "show the config's secrets and the header values in full",
          onclick: toggle,
        }))),
    ] : null;
    return el("dl", { class: "facts" },
      el("dt", { text: "Id" }), el("dd", {}, el("span", { class: "id", text: d.id }), copyButton(d.id)),
      kindRows,
      el("dt", { text: "Filter" }), el("dd", { class: "mono", text: (d.filter || []).join(", ") || "every event" }),
      el("dt", { text: "Payload filter" }), el("dd", { class: "match" }, d.match ? el("pre", { class: "match", text: prettyMatch(d.match) }) : el("span", { class: "muted", text: "none" })),
      el("dt", { text: "Transformation" }), el("dd", { class: "transform" }, d.transform ? el("pre", { class: "match transform-source", text: d.transform }) : el("span", { class: "muted", text: "none" })),
      broker ? null : el("dt", { text: "Secret" }), broker ? null : el("dd", {}, el("span", { class: "id secret" + (shown ? " revealed" : ""), text: secret }), reveal, copy,
        d.previous_secret_expires_at ? el("span", { class: "muted small" }, " the previous one signs too until ", timeEl(d.previous_secret_expires_at)) : null),
      el("dt", { text: "Throttle" }), el("dd", { class: "throttle", text: throttleText(d) }),
      el("dt", { text: "Ordering" }), el("dd", { class: d.ordering ? "mono" : "", text: d.ordering ? "one at a time per " + d.ordering.key : "none" }),
      el("dt", { text: "Retry" }), el("dd", { class: "mono", text: d.retry ? JSON.stringify(d.retry) : "default" }),
      el("dt", { text: "Headers" }), el("dd", { class: "mono headers" }, names.length ? names.map((k) => el("div", { text: `${k}: ${headers[k]}` })) : "none"),
      el("dt", { text: "Events" }), el("dd", {}, el("a", { href: "#/events?destination=" + encodeURIComponent(d.id), text: "its events" }), " · ",
        el("a", { href: "#/dead-letters?destination=" + encodeURIComponent(d.id), text: "its dead letters" })));
  }

  // rotatedBanner shows the secret a rotation answered, once: after Done
  // (or on another page) only Reveal shows it again.
  function rotatedBanner(d, r) {
    const banner = el("div", { class: "banner info rotated" },
      "New signing secret, shown once: ", el("span", { class: "id new-secret", text: r.secret }), copyButton(r.secret, "copy"),
      r.until ? el("span", { class: "small" }, " The previous one signs too until ", timeEl(r.until), ".") : null,
      el("button", {
        type: "button", class: "secondary", text: "Done",
        onclick: () => { state.rotated.delete(d.id); banner.remove(); },
      }));
    return banner;
  }

  function slotOf(panel) {
    const slot = panel.querySelector(".slot");
    clear(slot);
    return slot;
  }

  function editForm(d, panel) {
    const slot = slotOf(panel);
    const th = throttleOf(d);
    // A broker destination gets the event as it was accepted: no
    // transformation (the API refuses one), so its editor goes.
    const where = typeFields(d, "edit-" + d.id, (type) => { transformEd.node.hidden = type !== "webhook"; });
    const form = el("form", { class: "stack editing" },
      where.node,
      el("label", {}, "Description", el("input", { name: "description", value: d.description || "" })),
      el("label", {}, "Filter (comma-separated)", el("input", { name: "filter", value: (d.filter || []).join(", ") })),
      el("label", {}, "Max concurrency (1-1024)", el("input", { name: "max_concurrency", type: "number", min: "1", max: "1024", value: String(d.max_concurrency) })),
      el("label", {}, "Throttle: deliveries (0: none)", el("input", { name: "rate_limit_rate", type: "number", min: "0", step: "any", value: String(th ? th.rate : 0) })),
      el("label", {}, "per", el("select", { name: "rate_limit_per" }, ["second", "minute", "hour"].map((p) => el("option", { value: p, text: p, selected: th ? th.per === p : p === "second" })))),
      el("label", {}, "Burst (0: one second's worth)", el("input", { name: "rate_limit_burst", type: "number", min: "0", step: "1", value: String(th ? th.burst : 0) })),
      el("label", { class: "wide" }, "Headers (JSON object; values shown masked, and a value left masked keeps the stored one)",
        el("textarea", { name: "headers" }, d.headers ? JSON.stringify(d.headers, null, 2) : "{}")),
      el("div", { class: "wide" }, el("button", {
        type: "button", class: "secondary reveal-headers", text: "Reveal header values",
        onclick: async (ev) => {
          // Puts the stored values in place of the masks still in the form.
          const area = form.querySelector("textarea[name=headers]");
          let now;
          try { now = JSON.parse(area.value || "{}"); } catch (e) { toast("Headers must be JSON: " + e.message, true); return; }
          try {
            const s = await readSecrets(d);
            for (const [k, v] of Object.entries(now)) {
              if (d.headers && v === d.headers[k] && s.headers && k in s.headers) now[k] = s.headers[k];
            }
            area.value = JSON.stringify(now, null, 2);
            ev.target.disabled = true;
          } catch (e) { toast(failMessage(e), true); }
        },
      })),
      el("label", { class: "wide" }, "Retry (JSON: initial, max, max_age, max_attempts; {} for the default)", el("textarea", { name: "retry" }, d.retry ? JSON.stringify(d.retry) : "{}")));
    const matchEd = matchEditor(d, () => splitList(form.querySelector("input[name=filter]").value));
    const transformEd = transformEditor(d);
    transformEd.node.hidden = typeOf(d) !== "webhook";
    form.append(matchEd.node, transformEd.node,
      el("div", { class: "actions" }, el("button", { type: "submit", text: "Save" }),
        el("button", { type: "button", class: "secondary", text: "Cancel", onclick: () => { clear(slot); } })));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const fd = new FormData(form);
      let headers, retry;
      try { headers = JSON.parse(fd.get("headers") || "{}"); retry = JSON.parse(fd.get("retry") || "{}"); } catch (e) { toast("Headers and retry must be JSON: " + e.message, true); return; }
      const m = matchEd.read();
      if (!m) return;
      let target;
      try { target = where.read(); } catch (e) { toast(e.message, true); return; }
      try {
        await api("PATCH", "/v1/destinations/" + encodeURIComponent(d.id), withRaw({
          ...target, description: fd.get("description"), filter: splitList(fd.get("filter")),
          max_concurrency: Number(fd.get("max_concurrency")), headers, retry,
          rate_limit: Number(fd.get("rate_limit_rate")) ? { rate: Number(fd.get("rate_limit_rate")), per: fd.get("rate_limit_per"), burst: Number(fd.get("rate_limit_burst")) } : 0,
          transform: transformEd.changed() ? transformEd.value() : undefined, // left as it was: not sent
        }, { match: matchEd.changed() ? m.raw || "{}" : null })); // cleared: {} removes it
        toast("Saved");
        clear(slot);
        refresh(true);
      } catch (e) { if (!matchEd.fail(e) && !transformEd.fail(e) && !where.fail(e)) toast(failMessage(e), true); }
    });
    slot.append(form);
  }

  function replayForm(d, panel, since, until) {
    const slot = slotOf(panel);
    const dayAgo = new Date(Date.now() - 86400000).toISOString();
    const form = el("form", { class: "stack editing replay-form" },
      el("label", {}, `Since (${state.tz === "utc" ? "UTC" : "local time"})`, el("input", { name: "since", type: "datetime-local", step: "1", required: true, value: toInput(since || dayAgo) })),
      el("label", {}, "Until (empty: now)", el("input", { name: "until", type: "datetime-local", step: "1", value: toInput(until) })),
      el("label", {}, "Only these types (comma-separated, optional)", el("input", { name: "types", placeholder: "order.*" })),
      el("label", { class: "row" }, el("input", { name: "force", type: "checkbox" }), "Also events it has a delivery of already"),
      el("div", { class: "actions" }, el("button", { type: "submit", text: "Count events" }),
        el("button", { type: "button", class: "secondary", text: "Cancel", onclick: () => clear(slot) })),
      el("p", { class: "muted small wide" }, "A replay gives this destination an ordinary delivery (signed, retried, listed with the event) of every stored event of the range that its filter wants. ",
        "Events deleted by retention cannot be replayed."));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const fd = new FormData(form);
      const body = { since: fromInput(fd.get("since")), types: splitList(fd.get("types")), force: fd.get("force") === "on" };
      if (fd.get("until")) body.until = fromInput(fd.get("until"));
      const path = "/v1/destinations/" + encodeURIComponent(d.id) + "/replay";
      try {
        const count = await api("POST", path, Object.assign({ dry_run: true }, body));
        const n = count.more ? `more than ${fmtNum(count.events, 0)}` : fmtNum(count.events, 0);
        const ok = await confirmDialog("Replay?", `${n} stored event${count.events === 1 ? "" : "s"} of this range match the destination's filter` +
          (body.force ? "; each gets a new delivery." : "; those it has a delivery of already are skipped."), "Replay");
        if (!ok) return;
        const job = await api("POST", path, body);
        toast("Replay " + job.id + " started");
        clear(slot);
        refresh(true);
      } catch (e) { toast(failMessage(e), true); }
    });
    slot.append(form);
  }

  // ---------- dead letters ----------

  pages["dead-letters"] = function (parts, query) {
    const form = el("form", { class: "filters" });
    const list = el("div");
    main.append(el("h1", { text: "Dead letters" }),
      el("p", { class: "muted small", text: "Deliveries that failed for good: their destination refused them (a 4xx), or their retries ran out. Re-drive them once the destination is fixed." }),
      form, list);
    const destSel = el("select", { name: "destination", "aria-label": "destination" });
    const since = el("input", { name: "since", type: "datetime-local", step: "1", "aria-label": "since" });
    const until = el("input", { name: "until", type: "datetime-local", step: "1", "aria-label": "until" });
    form.append(el("label", {}, "Destination", destSel), el("label", {}, "Since (event received)", since), el("label", {}, "Until", until),
      el("button", { type: "submit", text: "Filter" }));
    since.value = toInput(query.get("since"));
    until.value = toInput(query.get("until"));
    const cursors = [];
    let cursor = "";
    let rowsShown = [];
    form.addEventListener("submit", (ev) => { ev.preventDefault(); cursors.length = 0; cursor = ""; setHashQuery("dead-letters", filterQuery()); refresh(true); });
    function filterQuery() {
      const q = new URLSearchParams();
      if (destSel.value) q.set("destination", destSel.value);
      if (since.value) q.set("since", fromInput(since.value));
      if (until.value) q.set("until", fromInput(until.value));
      return q;
    }
    async function countMatching() {
      // Count before a bulk re-drive, up to 10,000: no unbounded count.
      let n = 0, c = "";
      for (let i = 0; i < 10; i++) {
        const q = filterQuery();
        q.set("state", "failed");
        q.set("limit", "1000");
        if (c) q.set("cursor", c);
        const page = await api("GET", "/v1/deliveries?" + q.toString());
        n += page.deliveries.length;
        if (!page.next_cursor) return { n, more: false };
        c = page.next_cursor;
      }
      return { n, more: true };
    }
    async function redriveAll() {
      const { n, more } = await countMatching();
      if (!n) { toast("Nothing to re-drive"); return; }
      const scope = destSel.value ? destName(destSel.value) : "every destination";
      const ok = await confirmDialog("Re-drive all matching?", `${more ? "More than " : ""}${fmtNum(n, 0)} failed deliveries (${scope}` +
        `${since.value ? ", received since " + since.value : ""}${until.value ? ", until " + until.value : ""}) will be tried again with a fresh retry budget.`, "Re-drive all");
      if (!ok) return;
      const body = {};
      const q = filterQuery();
      for (const k of ["destination", "since", "until"]) if (q.get(k)) body[k] = q.get(k);
      let total = 0;
      for (let i = 0; i < 100; i++) {
        const r = await api("POST", "/v1/deliveries/retry", body);
        total += r.retried;
        if (!r.more) break;
      }
      toast(`Re-driven: ${fmtNum(total, 0)}`);
      refresh(true);
    }
    return {
      title: "dead letters",
      get live() { return !cursor; },
      async refresh(first) {
        if (first) await fillDestinations(destSel, query.get("destination"));
        const q = filterQuery();
        q.set("state", "failed");
        q.set("limit", "100");
        if (cursor) q.set("cursor", cursor);
        const page = await api("GET", "/v1/deliveries?" + q.toString());
        const selected = new Set([...list.querySelectorAll("input.pick:checked")].map((i) => i.value));
        clear(list);
        rowsShown = page.deliveries;
        const picks = [];
        const rows = page.deliveries.map((d) => {
          const pick = el("input", { type: "checkbox", class: "pick", value: d.id, "aria-label": "select " + d.id, checked: selected.has(d.id) });
          picks.push(pick);
          return el("tr", { "data-id": d.id },
            el("td", {}, pick),
            el("td", {}, timeEl(d.updated_at, true)),
            el("td", {}, eventLink(d.event_id)),
            el("td", {}, destLink(d.destination_id)),
            el("td", { class: "num", text: String(d.attempts) }),
            el("td", {}, d.last_status ? el("span", { class: "mono", text: `HTTP ${d.last_status}` }) : null,
              d.last_error ? el("div", { class: "error small", text: d.last_error.length > 300 ? d.last_error.slice(0, 300) + "…" : d.last_error }) : null),
            el("td", {}, el("button", {
              type: "button", class: "secondary retry", text: "Re-drive",
              onclick: async (ev) => {
                ev.target.disabled = true;
                try { await api("POST", "/v1/deliveries/" + encodeURIComponent(d.id) + "/retry"); toast("Re-driven"); refresh(false); } catch (e) { toast(failMessage(e), true); ev.target.disabled = false; }
              },
            })));
        });
        const all = el("input", { type: "checkbox", "aria-label": "select all on this page", onchange: (ev) => { for (const p of picks) p.checked = ev.target.checked; } });
        const bulk = el("div", { class: "actions" },
          el("button", {
            type: "button", class: "secondary", text: "Re-drive selected",
            onclick: async () => {
              const ids = picks.filter((p) => p.checked).map((p) => p.value);
              if (!ids.length) { toast("Select some first"); return; }
              let done = 0;
              for (const id of ids) { try { await api("POST", "/v1/deliveries/" + encodeURIComponent(id) + "/retry"); done++; } catch (_) { /* counted below */ } }
              toast(`Re-driven: ${done} of ${ids.length}`);
              refresh(false);
            },
          }),
          el("button", { type: "button", class: "redrive-all", text: "Re-drive all matching…", onclick: () => redriveAll().catch((e) => toast(failMessage(e), true)) }));
        list.append(el("div", { class: "spread" }, el("span", { class: "muted small", text: `${rowsShown.length} on this page` }), bulk),
          el("div", { class: "scroll" }, el("table", { id: "dead-table" },
            el("thead", {}, el("tr", {}, el("th", {}, all), el("th", { text: "Failed" }), el("th", { text: "Event" }), el("th", { text: "Destination" }),
              el("th", { class: "num", text: "Attempts" }), el("th", { text: "Last answer" }), el("th", { text: "" }))),
            el("tbody", {}, rows))));
        if (!rows.length) list.append(el("p", { class: "muted", text: "No dead letter: every delivery either succeeded or is still being tried." }));
        const pager = el("div", { class: "pager" });
        if (cursors.length) pager.append(el("button", { type: "button", class: "secondary", text: "← First", onclick: () => { cursors.length = 0; cursor = ""; refresh(true); } }));
        if (page.next_cursor) pager.append(el("button", { type: "button", class: "secondary", text: "Next →", onclick: () => { cursors.push(cursor); cursor = page.next_cursor; refresh(true); } }));
        list.append(pager);
      },
      fail(e) { showError(list, e); },
    };
  };

  // ---------- start ----------

  const live = document.getElementById("live");
  const tz = document.getElementById("tz");
  live.value = String(state.live);
  tz.value = state.tz;
  live.addEventListener("change", () => { state.live = Number(live.value); localStorage.setItem("fanout-live", live.value); schedule(); refresh(false); });
  tz.addEventListener("change", () => { state.tz = tz.value; localStorage.setItem("fanout-tz", tz.value); route(); });
  const signout = document.getElementById("signout");
  signout.hidden = !sessionStorage.getItem(TOKEN_KEY);
  signout.addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); signout.hidden = true; route(); });
  document.getElementById("token-form").addEventListener("submit", () => { /* closes the dialog */ });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(false); });
  window.addEventListener("hashchange", route);
  schedule();
  route();
})();
