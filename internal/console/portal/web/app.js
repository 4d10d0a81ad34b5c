// fanout tenant portal: plain JavaScript on fanout's JSON API, no build
// step. The operator hands a customer a link
// /portal/<tenant>/<page key>/#token=<token>: the token is in the fragment, which no
// browser sends to a server or puts in a Referer. On load the page moves
// it into this tab's sessionStorage and clears the address's fragment and
// query, not its path: the page key in it is what lets a reload of a
// framed portal be framed again. A token in the query string is never read. Every request carries it as
// Authorization: Bearer, and the API, not this page, keeps the tenant to
// its own endpoints, events and deliveries.
//
// Safety rules, as in the console: whatever comes from the API is put in
// the page as text (textContent, through el()), never as HTML; links only
// to in-page routes; no inline script or style, no eval.
"use strict";

(function () {
  const TOKEN_KEY = "fanout-portal-token";
  const main = document.getElementById("main");
  const state = {
    info: null, // GET /v1/portal
    manage: false,
    types: [], // the tenant's event types
    refresh: null, // the current view's refresh, run every 5 s while visible
    secret: new Map(), // by endpoint id: a secret just created or rotated, shown once
  };

  // ---------- the token: from the fragment to session storage ----------

  function takeToken() {
    const h = location.hash;
    if (h.startsWith("#token=")) {
      const t = decodeURIComponent(h.slice("#token=".length));
      if (t) sessionStorage.setItem(TOKEN_KEY, t);
    }
    if (h.startsWith("#token=") || location.search) {
      // Clear the address: neither the token nor a query stays in it
      // (nor in the history, a bookmark or a screenshot).
      history.replaceState(null, "", location.pathname + (h.startsWith("#token=") ? "#/" : h));
    }
  }
  takeToken();
  // A link opened in a tab that shows the portal already changes only the
  // fragment: take its token and start again with it.
  window.addEventListener("hashchange", () => {
    if (location.hash.startsWith("#token=")) {
      takeToken();
      location.reload();
    }
  });

  // ---------- DOM helpers: text only ----------

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = String(v);
      else if (k.startsWith("on") && typeof v === "function") e.addEventListener(k.slice(2), v);
      else if (k === "href") e.setAttribute("href", String(v).startsWith("#/") ? String(v) : "#/");
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
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
  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (isNaN(d)) return String(iso);
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }
  function timeEl(iso) {
    if (!iso) return el("span", { class: "muted", text: "—" });
    return el("time", { datetime: iso, title: new Date(iso).toISOString() }, fmtTime(iso));
  }
  function badge(s) { return el("span", { class: "badge " + s, text: s }); }
  function fromInput(v) {
    if (!v) return "";
    const d = new Date(v);
    return isNaN(d) ? "" : d.toISOString().replace(/\.\d+Z$/, "Z");
  }
  function toInput(d) {
    const off = d.getTimezoneOffset() * 60000;
    return new Date(d.getTime() - off).toISOString().slice(0, 16);
  }

  // ---------- the API ----------

  class APIError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  // routeGen counts navigations. A read that answers after the page
  // changed is Stale: the view that asked for it must not draw over the
  // page the user went to (route drops it).
  let routeGen = 0;
  class Stale extends Error {}

  // A body that is a string is sent as it is: JSON text (see withRaw).
  async function api(method, path, body) {
    const gen = routeGen;
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(path, {
      method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer",
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (res.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showSignedOut("This portal link has expired or was revoked. Ask for a new link.");
      throw new APIError(401, (data && data.error) || "unauthorized");
    }
    if (!res.ok) throw new APIError(res.status, (data && data.error) || res.statusText);
    if (method === "GET" && gen !== routeGen) throw new Stale("the page changed while this was read");
    return data;
  }

  function showSignedOut(msg) {
    state.refresh = null;
    clear(main);
    main.append(el("div", { class: "banner bad", id: "signed-out" }, msg));
    document.getElementById("signout").hidden = true;
  }

  function errorBox(err) {
    return el("div", { class: "banner bad error" }, err instanceof APIError ? err.message : String(err));
  }

  // act runs an action from a button, disabling it meanwhile, and shows
  // the API's error.
  async function act(button, fn) {
    if (button) button.disabled = true;
    try {
      await fn();
    } catch (err) {
      if (!(err instanceof APIError && err.status === 401)) toast(err.message || String(err), true);
    } finally {
      if (button) button.disabled = false;
    }
  }

  function confirmDialog(title, text, ok) {
    const dlg = document.getElementById("confirm-dialog");
    document.getElementById("confirm-title").textContent = title;
    document.getElementById("confirm-text").textContent = text;
    document.getElementById("confirm-ok").textContent = ok || "Confirm";
    return new Promise((resolve) => {
      dlg.addEventListener("close", function done() {
        dlg.removeEventListener("close", done);
        resolve(dlg.returnValue === "ok");
      });
      dlg.returnValue = "";
      dlg.showModal();
    });
  }

  // ---------- views ----------

  const routes = [
    [/^#\/?$/, viewEndpoints],
    [/^#\/new$/, viewNew],
    [/^#\/endpoints\/([^/]+)$/, viewEndpoint],
    [/^#\/endpoints\/([^/]+)\/edit$/, viewEdit],
    [/^#\/deliveries\/([^/]+)$/, viewDelivery],
    [/^#\/events\/([^/]+)$/, viewEvent],
    [/^#\/replays\/([^/]+)$/, viewReplay],
  ];

  async function route() {
    routeGen++;
    state.refresh = null;
    const h = location.hash || "#/";
    for (const [re, view] of routes) {
      const m = h.match(re);
      if (m) {
        clear(main);
        main.append(el("p", { class: "muted", text: "Loading…" }));
        try {
          await view(...m.slice(1).map(decodeURIComponent));
        } catch (err) {
          if (err instanceof APIError && err.status === 401) return;
          if (err instanceof Stale) return; // another route() draws the page now
          clear(main);
          main.append(el("p", {}, el("a", { href: "#/", text: "← Endpoints" })), errorBox(err));
        }
        return;
      }
    }
    clear(main);
    main.append(el("p", {}, el("a", { href: "#/", text: "← Endpoints" })), el("div", { class: "banner bad error", text: "No such page." }));
  }

  function back(text, href) { return el("p", {}, el("a", { href: href || "#/", text: "← " + (text || "Endpoints") })); }

  // typeOf is an endpoint's type: "webhook" when the API says none; a
  // broker endpoint (NATS, Kafka, SQS...) has a target instead of a URL.
  function typeOf(d) { return (d && d.type) || "webhook"; }
  function isBroker(d) { return typeOf(d) !== "webhook"; }
  function whereOf(d) { return (isBroker(d) ? d.target : d.url) || ""; }

  // offeredKinds are the types a new endpoint may have: webhook, and the
  // broker kinds the operator granted this link's token, as GET
  // /v1/portal lists them (none when it lists nothing: the server
  // refuses the others with a 403, shown as it says).
  function offeredKinds(d) {
    const K = window.FanoutKinds;
    const granted = (state.info && (state.info.kinds || state.info.destination_types)) || [];
    const list = K.list.filter((k) => k.name === "webhook" || granted.includes(k.name));
    if (d && !list.some((k) => k.name === typeOf(d))) list.push({ name: typeOf(d), label: K.label(typeOf(d)) });
    return list;
  }

  function endpointState(d) {
    if (!d.enabled) return "disabled";
    if (d.paused || d.circuit_open_until) return "paused";
    return "active";
  }

  async function viewEndpoints() {
    const { destinations } = await api("GET", "/v1/destinations");
    clear(main);
    main.append(el("div", { class: "spread" }, el("h1", { text: "Endpoints" }),
      state.manage ? el("a", { href: "#/new", id: "add-endpoint" }, el("button", { type: "button", tabindex: "-1", text: "Add endpoint" })) : null));
    if (!destinations.length) {
      main.append(el("p", { class: "muted", text: "No endpoints yet." + (state.manage ? " Add one to receive webhooks." : "") }));
    }
    const list = el("div", { id: "endpoints" });
    for (const d of destinations) {
      list.append(el("a", { class: "panel endpoint", href: "#/endpoints/" + encodeURIComponent(d.id), "data-id": d.id },
        el("div", { class: "spread" }, el("span", { class: "url" }, isBroker(d) ? el("span", { class: "badge kind", text: window.FanoutKinds.label(typeOf(d)) }) : null,
          isBroker(d) ? " " : null, whereOf(d)), badge(endpointState(d))),
        d.description ? el("div", { text: d.description }) : null,
        el("div", { class: "muted small" }, "Events: ", d.filter && d.filter.length ? d.filter.join(", ") : "all", d.match ? " · with a payload filter" : "")));
    }
    main.append(list);
  }

  // ---------- payload filters ----------

  // The payload filter field and its test: the console's filters.js.
  const { prettyMatch, withRaw } = window.FanoutFilters;
  const { matchEditor } = window.FanoutFilters.make({
    api, el, clear, APIError,
    ids: true,
    nodeClass: "wide field match-editor",
    filterLabel: "Payload filter (optional): only the events whose content matches, as JSON, e.g. {\"data.amount\": {\"$gte\": 100}}",
    exampleLabel: "Example event (JSON, as it would be sent to you)",
    errorText: (err) => (err instanceof APIError && err.status === 401 ? "" : err.message || String(err)),
  });

  // endpointForm is the form of a new endpoint or of a change: url,
  // description, the event types (from the tenant's own events, and any
  // typed in), headers. Header values come masked from the API; sent back
  // as they are, the stored values are kept.
  function endpointForm(d, submit) {
    const K = window.FanoutKinds;
    const url = el("input", { name: "url", type: "url", required: true, placeholder: "https://example.com/webhooks", value: d && d.url ? d.url : "" });
    const kinds = offeredKinds(d);
    const initialType = typeOf(d);
    const typeSel = el("select", { name: "type", id: "endpoint-type", "aria-label": "endpoint type" },
      kinds.map((k) => el("option", { value: k.name, text: k.label, selected: k.name === initialType })));
    const where = el("div", { class: "wide", id: "endpoint-where" });
    let cfgForm = null;
    const showType = (type) => {
      clear(where);
      cfgForm = null;
      if (type === "webhook") {
        url.required = true;
        where.append(el("label", {}, "Endpoint URL", url));
        return;
      }
      url.required = false;
      const same = d && typeOf(d) === type;
      cfgForm = K.configForm(type, same ? d.config : null, { idPrefix: "endpoint", delivered: same ? d.delivered : "" });
      where.append(cfgForm.node);
      if (same && cfgForm.hasMasks()) {
        where.append(el("p", { class: "muted small", text: "Secrets are shown masked: left as they are, the stored ones stay (for the same address only)." }));
      }
    };
    typeSel.addEventListener("change", () => {
      showType(typeSel.value);
      // A broker endpoint gets the event as it was accepted: no
      // transformation.
      if (transformNode) transformNode.hidden = typeSel.value !== "webhook";
    });
    showType(initialType);
    const desc = el("input", { name: "description", value: d && d.description ? d.description : "" });
    const chosen = new Set(d && d.filter ? d.filter : []);
    const all = el("input", { type: "checkbox", name: "all-types", checked: chosen.size === 0 });
    const boxes = el("div", { class: "types", id: "type-boxes" });
    const known = [...new Set([...state.types, ...chosen])].sort();
    for (const t of known) {
      boxes.append(el("label", {}, el("input", { type: "checkbox", name: "type", value: t, checked: chosen.has(t) }), t));
    }
    if (!known.length) boxes.append(el("span", { class: "muted small", text: "No events were sent to you yet; type the ones you want below." }));
    const extra = el("input", { name: "extra-types", placeholder: "order.paid, invoice.*" });
    const headers = el("div", { id: "headers" });
    const addHeader = (k, v) => {
      const row = el("div", { class: "header-row" },
        el("input", { name: "header-name", placeholder: "Header", value: k || "", "aria-label": "header name" }),
        el("input", { name: "header-value", placeholder: "Value", value: v || "", "aria-label": "header value" }),
        el("button", { type: "button", class: "secondary", text: "Remove", onclick: () => row.remove() }));
      headers.append(row);
    };
    for (const [k, v] of Object.entries((d && d.headers) || {})) addHeader(k, v);
    const matchEd = matchEditor(d, () => chosenTypes());
    // The transformation: edited only with the right transform (which the
    // operator grants); shown read-only otherwise.
    const initialT = (d && d.transform) || "";
    const transformArea = state.transform ? el("textarea", { name: "transform", id: "transform", spellcheck: "false", rows: "8" }, initialT) : null;
    const transformNode = state.transform
      ? el("label", { class: "wide" }, "Transformation (JavaScript: function handler(webhook) { ... }; empty: none)", transformArea)
      : (initialT ? el("div", { class: "wide field" }, "Transformation (set by your provider)", el("pre", { class: "match", id: "transform-readonly", text: initialT })) : null);
    if (transformNode) transformNode.hidden = initialType !== "webhook";
    const error = el("div", {});
    const save = el("button", { type: "submit", text: d ? "Save" : "Create endpoint" });
    const form = el("form", { class: "stack panel", id: "endpoint-form" },
      kinds.length > 1 ? el("label", { class: "wide" }, "Type", typeSel) : null,
      where,
      el("label", { class: "wide" }, "Description", desc),
      el("div", { class: "wide field" }, "Events to receive",
        el("label", { class: "row" }, all, el("span", { text: "All events" })), boxes,
        el("label", {}, "Other types (comma-separated, prefix.* for a family)", extra)),
      matchEd.node, transformNode,
      el("div", { class: "wide field" }, "Headers sent with each request", headers,
        el("div", {}, el("button", { type: "button", class: "secondary", text: "Add header", onclick: () => addHeader() }))),
      el("div", { class: "wide" }, error, el("div", { class: "actions" }, save)));
    function chosenTypes() {
      const filter = [];
      if (!all.checked) {
        for (const b of boxes.querySelectorAll("input[name=type]")) if (b.checked) filter.push(b.value);
        for (const t of extra.value.split(",")) if (t.trim()) filter.push(t.trim());
      }
      return filter;
    }
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      clear(error);
      const filter = chosenTypes();
      const m = matchEd.read();
      if (!m) return;
      const hs = {};
      for (const row of headers.querySelectorAll(".header-row")) {
        const k = row.querySelector("[name=header-name]").value.trim();
        if (k) hs[k] = row.querySelector("[name=header-value]").value;
      }
      // A new endpoint gets the filter typed; a changed one the filter if
      // it changed, {} when it was cleared (which removes it).
      const raw = d ? (matchEd.changed() ? m.raw || "{}" : null) : m.raw;
      const transform = transformArea && typeSel.value === "webhook" && transformArea.value.trim() !== initialT.trim() ? transformArea.value : undefined;
      let target;
      if (typeSel.value === "webhook") {
        target = { url: url.value.trim() };
        if (initialType !== "webhook") target.type = "webhook";
      } else {
        try { target = { type: typeSel.value, config: cfgForm.read() }; } catch (err) { error.append(errorBox(err)); return; }
      }
      const body = withRaw(Object.assign(target, { description: desc.value, filter, headers: hs, transform }), { match: raw });
      act(save, async () => {
        try {
          await submit(body);
        } catch (err) {
          if (!matchEd.fail(err)) {
            if (cfgForm) cfgForm.fail(err);
            error.append(errorBox(err));
          }
          throw err;
        }
      });
    });
    return form;
  }

  async function viewNew() {
    if (!state.manage) throw new APIError(403, "This portal link lets you see your endpoints, not change them.");
    clear(main);
    main.append(back(), el("h1", { text: "Add endpoint" }), endpointForm(null, async (body) => {
      const d = await api("POST", "/v1/destinations", body);
      if (!isBroker(d) && d.secret) state.secret.set(d.id, { secret: d.secret, what: "created" });
      location.hash = "#/endpoints/" + encodeURIComponent(d.id);
    }));
  }

  async function viewEdit(id) {
    if (!state.manage) throw new APIError(403, "This portal link lets you see your endpoints, not change them.");
    const d = await api("GET", "/v1/destinations/" + encodeURIComponent(id));
    clear(main);
    main.append(back("Endpoint", "#/endpoints/" + encodeURIComponent(id)), el("h1", { text: "Edit endpoint" }), endpointForm(d, async (body) => {
      await api("PATCH", "/v1/destinations/" + encodeURIComponent(id), body);
      toast("Saved");
      location.hash = "#/endpoints/" + encodeURIComponent(id);
    }));
  }

  async function viewEndpoint(id) {
    const path = "/v1/destinations/" + encodeURIComponent(id);
    const d = await api("GET", path);
    clear(main);
    const st = endpointState(d);
    main.append(back(), el("div", { class: "spread" }, el("h1", { class: "mono", id: "endpoint-url", text: whereOf(d) }), badge(st)));
    const shown = state.secret.get(d.id);
    if (shown) {
      // A secret is shown once: here, after its creation or rotation.
      main.append(el("div", { class: "banner warn", id: "secret-once" },
        el("strong", { text: shown.what === "rotated" ? "New signing secret" : "Signing secret" }),
        el("code", { class: "secret", id: "secret-value", text: shown.secret }),
        el("div", { class: "small", text: "Copy it now: it will not be shown again. Verify each request's webhook-signature with it." }),
        el("div", { class: "actions" },
          el("button", { type: "button", class: "secondary", text: "Copy", onclick: () => navigator.clipboard.writeText(shown.secret).then(() => toast("Copied")) }),
          el("button", { type: "button", id: "secret-done", text: "Done", onclick: () => { state.secret.delete(d.id); route(); } }))));
    }
    main.append(el("div", { class: "panel" }, el("dl", { class: "facts" },
      el("dt", { text: "Id" }), el("dd", { class: "id", text: d.id }),
      isBroker(d) ? [
        el("dt", { text: "Type" }), el("dd", { id: "endpoint-kind", text: window.FanoutKinds.label(typeOf(d)) }),
        el("dt", { text: "Target" }), el("dd", { class: "mono", id: "endpoint-target", text: d.target || "" }),
        el("dt", { text: "Delivered" }), el("dd", { id: "endpoint-delivered", text: d.delivered ? "when " + d.delivered : "—" }),
        el("dt", { text: "Settings" }), el("dd", { class: "config", id: "endpoint-config" }, window.FanoutKinds.configRows(typeOf(d), d.config)),
      ] : null,
      el("dt", { text: "Description" }), el("dd", { text: d.description || "—" }),
      el("dt", { text: "Events" }), el("dd", { text: d.filter && d.filter.length ? d.filter.join(", ") : "all" }),
      el("dt", { text: "Transformation" }), el("dd", { id: "endpoint-transform" }, d.transform ? el("pre", { class: "match", text: d.transform }) : el("span", { class: "muted", text: "none" })),
      el("dt", { text: "Payload filter" }), el("dd", { id: "endpoint-match" }, d.match ? el("pre", { class: "match", text: prettyMatch(d.match) }) : el("span", { class: "muted", text: "none: every event of these types" })),
      el("dt", { text: "Headers" }), el("dd", { text: Object.keys(d.headers || {}).join(", ") || "—" }),
      isBroker(d) ? null : el("dt", { text: "Signing secret" }), isBroker(d) ? null : el("dd", { class: "mono", text: d.secret }),
      d.reason ? el("dt", { text: "Disabled because" }) : null, d.reason ? el("dd", { text: d.reason }) : null,
      el("dt", { text: "Created" }), el("dd", {}, timeEl(d.created_at)))));
    if (state.manage) {
      const actions = el("div", { class: "actions", id: "endpoint-actions" });
      actions.append(el("a", { href: "#/endpoints/" + encodeURIComponent(id) + "/edit" }, el("button", { type: "button", class: "secondary", tabindex: "-1", text: "Edit" })));
      if (d.paused) {
        const b = el("button", { type: "button", class: "secondary", text: "Resume", onclick: () => act(b, async () => { await api("POST", path + "/resume"); toast("Resumed"); route(); }) });
        actions.append(b);
      } else {
        const b = el("button", { type: "button", class: "secondary", text: "Pause", onclick: () => act(b, async () => { await api("PATCH", path, { paused: true }); toast("Paused: deliveries wait until you resume"); route(); }) });
        actions.append(b);
      }
      const rotate = el("button", { type: "button", class: "secondary", id: "rotate", text: "Rotate secret", onclick: () => act(rotate, async () => {
        if (!await confirmDialog("Rotate the signing secret?", "The current secret keeps signing for a grace period, then only the new one does.", "Rotate")) return;
        const r = await api("POST", path + "/rotate-secret");
        state.secret.set(d.id, { secret: r.secret, what: "rotated" });
        route();
      }) });
      const del = el("button", { type: "button", class: "danger", text: "Delete", onclick: () => act(del, async () => {
        if (!await confirmDialog("Delete this endpoint?", whereOf(d) + " will receive nothing more.", "Delete")) return;
        await api("DELETE", path);
        toast("Deleted");
        location.hash = "#/";
      }) });
      if (!isBroker(d)) actions.append(rotate);
      actions.append(del);
      main.append(actions);
      main.append(testForm(d));
    }
    const deliveries = el("div", { id: "deliveries" });
    const dead = el("div", { id: "dead-letters" });
    const stateSel = el("select", { id: "delivery-state", "aria-label": "state" },
      ["all", "delivered", "failed", "pending", "delivering"].map((s) => el("option", { value: s, text: s })));
    main.append(el("div", { class: "spread" }, el("h2", { text: "Recent deliveries" }), stateSel), deliveries,
      el("h2", { text: "Failed deliveries" }), dead);
    if (state.manage) main.append(replayForm(d));
    const replays = el("div", { id: "replays" });
    main.append(replays);
    const refresh = async () => {
      await Promise.all([loadDeliveries(id, stateSel.value, deliveries), loadDead(id, dead), loadReplays(id, replays)]);
    };
    stateSel.addEventListener("change", () => refresh().catch(() => {}));
    await refresh();
    state.refresh = refresh;
  }

  function testForm(d) {
    const type = el("select", { name: "type", id: "test-type", "aria-label": "event type" },
      el("option", { value: "", text: "fanout.test (example)" }), state.types.map((t) => el("option", { value: t, text: t })));
    const out = el("div", {});
    const send = el("button", { type: "submit", id: "test-send", text: "Send test event" });
    const form = el("form", { class: "panel", id: "test-form" }, el("h2", { text: "Send a test event" }),
      el("div", { class: "row" }, type, send), out);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      clear(out);
      act(send, async () => {
        const body = type.value ? { type: type.value } : {};
        const r = await api("POST", "/v1/destinations/" + encodeURIComponent(d.id) + "/test", body);
        out.append(el("p", { class: "small" }, "Sent: ", el("a", { href: "#/deliveries/" + encodeURIComponent(r.delivery_id), text: "delivery " + r.delivery_id })));
        if (state.refresh) setTimeout(() => state.refresh && state.refresh().catch(() => {}), 500);
      });
    });
    return form;
  }

  function deliveryTable(list, withRetry) {
    if (!list.length) return el("p", { class: "muted", text: "None." });
    const rows = list.map((v) => el("tr", { "data-id": v.id },
      el("td", {}, timeEl(v.created_at)),
      el("td", {}, badge(v.state), v.replay ? " " : null, v.replay ? badge("replay") : null),
      el("td", { class: "hide-narrow", text: v.attempts }),
      el("td", { text: v.last_status || v.last_error || "" }),
      el("td", {}, el("a", { href: "#/deliveries/" + encodeURIComponent(v.id), text: "Attempts" }),
        withRetry && state.manage ? " " : null,
        withRetry && state.manage ? retryButton(v.id) : null)));
    return el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, el("th", { text: "Time" }), el("th", { text: "State" }), el("th", { class: "hide-narrow", text: "Attempts" }), el("th", { text: "Last answer" }), el("th", {}))),
      el("tbody", {}, rows)));
  }

  function retryButton(id) {
    const b = el("button", { type: "button", class: "secondary retry", text: "Retry", onclick: () => act(b, async () => {
      await api("POST", "/v1/deliveries/" + encodeURIComponent(id) + "/retry");
      toast("Sent again");
      if (state.refresh) await state.refresh();
    }) });
    return b;
  }

  async function loadDeliveries(id, which, box) {
    const q = (s) => api("GET", "/v1/deliveries?destination=" + encodeURIComponent(id) + "&state=" + s + "&limit=25");
    const states = which === "all" ? ["pending", "delivering", "delivered", "failed"] : [which];
    const pages = await Promise.all(states.map(q));
    const list = pages.flatMap((p) => p.deliveries).sort((a, b) => (a.created_at < b.created_at ? 1 : -1)).slice(0, 25);
    clear(box);
    box.append(deliveryTable(list, false));
  }

  async function loadDead(id, box) {
    const { deliveries } = await api("GET", "/v1/deliveries?destination=" + encodeURIComponent(id) + "&state=failed&limit=50");
    clear(box);
    if (deliveries.length && state.manage) {
      const all = el("button", { type: "button", class: "secondary", id: "retry-all", text: "Retry all failed", onclick: () => act(all, async () => {
        const r = await api("POST", "/v1/deliveries/retry", { destination: id });
        toast(`Sent ${r.retried} again`);
        if (state.refresh) await state.refresh();
      }) });
      box.append(el("div", { class: "actions" }, all));
    }
    box.append(deliveryTable(deliveries, true));
  }

  async function loadReplays(id, box) {
    const { replays } = await api("GET", "/v1/replays?destination=" + encodeURIComponent(id));
    clear(box);
    if (!replays.length) return;
    box.append(el("h3", { text: "Replays" }), el("ul", {}, replays.slice(0, 10).map((r) =>
      el("li", {}, el("a", { href: "#/replays/" + encodeURIComponent(r.id), text: fmtTime(r.since) + " → " + fmtTime(r.until) }), " ", badge(r.state),
        ` ${r.created} sent, ${r.skipped} already had it`))));
  }

  function replayForm(d) {
    const now = new Date();
    const since = el("input", { type: "datetime-local", name: "since", value: toInput(new Date(now.getTime() - 3600e3)) });
    const until = el("input", { type: "datetime-local", name: "until", value: toInput(now) });
    const go = el("button", { type: "submit", text: "Replay" });
    const out = el("div", {});
    const form = el("form", { class: "panel stack", id: "replay-form" },
      el("h2", { class: "wide", text: "Replay past events" }),
      el("p", { class: "wide muted small", text: "Sends this endpoint again every event of the range that it subscribes to and has not received yet." }),
      el("label", {}, "From", since), el("label", {}, "To", until), el("div", {}, go), el("div", { class: "wide" }, out));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      clear(out);
      act(go, async () => {
        try {
          const r = await api("POST", "/v1/destinations/" + encodeURIComponent(d.id) + "/replay", { since: fromInput(since.value), until: fromInput(until.value) });
          out.append(el("p", {}, "Replay started: ", el("a", { href: "#/replays/" + encodeURIComponent(r.id), text: r.id })));
        } catch (err) { out.append(errorBox(err)); throw err; }
      });
    });
    return form;
  }

  async function viewDelivery(id) {
    const v = await api("GET", "/v1/deliveries/" + encodeURIComponent(id));
    clear(main);
    main.append(back("Endpoint", "#/endpoints/" + encodeURIComponent(v.destination_id)), el("h1", { text: "Delivery" }));
    main.append(el("div", { class: "panel" }, el("dl", { class: "facts" },
      el("dt", { text: "State" }), el("dd", {}, badge(v.state)),
      el("dt", { text: "Endpoint" }), el("dd", { class: "mono", text: v.url || v.destination_id }),
      el("dt", { text: "Event" }), el("dd", {}, el("a", { class: "id", href: "#/events/" + encodeURIComponent(v.event_id), text: v.event_id })),
      el("dt", { text: "Delivery id" }), el("dd", { class: "id", text: v.id }),
      el("dt", { text: "Attempts" }), el("dd", { text: v.attempts }),
      v.next_attempt_at ? el("dt", { text: "Next attempt" }) : null, v.next_attempt_at ? el("dd", {}, timeEl(v.next_attempt_at)) : null)));
    if (v.state === "failed" && state.manage) main.append(el("div", { class: "actions" }, retryButton(v.id)));
    main.append(el("h2", { text: "Attempts" }));
    const hist = v.attempt_history || [];
    if (!hist.length) main.append(el("p", { class: "muted", text: "No attempt yet." }));
    const ol = el("ol", { class: "attempts", id: "attempts" });
    for (const a of hist) {
      let detail = null;
      try { detail = a.detail ? (typeof a.detail === "string" ? JSON.parse(a.detail) : a.detail) : null; } catch (_) { detail = null; }
      ol.append(el("li", { class: "attempt" },
        el("div", {}, el("strong", { text: "Attempt " + a.attempt }), " · ", timeEl(a.started_at), ` · ${Math.round(a.duration_ms)} ms`),
        el("div", {}, a.status ? el("span", { class: "badge " + (a.status < 300 ? "delivered" : "failed"), text: "HTTP " + a.status })
          : a.error ? null : el("span", { class: "badge delivered", text: "accepted" }), // a broker endpoint's: no HTTP status
          a.error ? el("span", { class: "error", text: " " + a.error }) : null),
        detail && detail.excerpt ? el("pre", { class: "excerpt", text: detail.excerpt }) : null));
    }
    main.append(ol);
    state.refresh = async () => {
      if (v.state === "delivered" || v.state === "failed") return;
      await route();
    };
  }

  async function viewEvent(id) {
    const v = await api("GET", "/v1/events/" + encodeURIComponent(id));
    clear(main);
    let pretty = null;
    try { pretty = JSON.stringify(v.event, null, 2); } catch (_) { pretty = null; }
    // A raw event (raw=true): its body as text, never markup; bytes that
    // are not UTF-8 are named, not shown.
    const raw = v.raw;
    if (raw) pretty = raw.text ? raw.text : "(binary body, " + raw.size + " bytes)";
    main.append(back(), el("h1", { text: "Event" }),
      el("div", { class: "panel" }, el("dl", { class: "facts" },
        el("dt", { text: "Id" }), el("dd", { class: "id", text: v.id }),
        el("dt", { text: "State" }), el("dd", {}, badge(v.state)),
        raw ? el("dt", { text: "Content-Type" }) : null, raw ? el("dd", { class: "mono", text: raw.content_type }) : null,
        el("dt", { text: "Received" }), el("dd", {}, timeEl(v.received_at)))),
      el("pre", { class: "payload", id: "payload", text: pretty === null ? "(too deep to show)" : pretty }),
      el("h2", { text: "Deliveries" }), deliveryTable(v.deliveries || [], false));
  }

  async function viewReplay(id) {
    const r = await api("GET", "/v1/replays/" + encodeURIComponent(id));
    clear(main);
    main.append(back("Endpoint", "#/endpoints/" + encodeURIComponent(r.destination)), el("h1", { text: "Replay" }),
      el("div", { class: "panel" }, el("dl", { class: "facts" },
        el("dt", { text: "State" }), el("dd", {}, badge(r.state)),
        el("dt", { text: "Range" }), el("dd", { text: fmtTime(r.since) + " → " + fmtTime(r.until) }),
        el("dt", { text: "Progress" }), el("dd", { text: Math.round((r.progress || 0) * 100) + " %" }),
        el("dt", { text: "Sent" }), el("dd", { text: r.created }),
        el("dt", { text: "Already received" }), el("dd", { text: r.skipped }),
        r.error ? el("dt", { text: "Error" }) : null, r.error ? el("dd", { text: r.error }) : null)));
    state.refresh = async () => { if (r.state !== "done" && r.state !== "failed") await route(); };
  }

  // ---------- start ----------

  async function start() {
    document.getElementById("signout").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      showSignedOut("Signed out. Open your portal link again to come back.");
    });
    if (!sessionStorage.getItem(TOKEN_KEY)) {
      showSignedOut("Open this portal with the link you were given.");
      return;
    }
    let info;
    try {
      info = await api("GET", "/v1/portal");
    } catch (err) {
      if (!(err instanceof APIError && err.status === 401)) { clear(main); main.append(errorBox(err)); }
      return;
    }
    state.info = info;
    state.manage = (info.rights || []).includes("manage");
    state.transform = state.manage && (info.rights || []).includes("transform");
    const b = info.branding || {};
    if (b.name) { document.getElementById("brand-name").textContent = b.name; document.title = b.name + " · Webhooks"; }
    if (b.accent && /^#[0-9a-fA-F]{6}$/.test(b.accent)) document.documentElement.style.setProperty("--accent", b.accent);
    if (b.logo_url && /^https:\/\//.test(b.logo_url)) {
      const logo = document.getElementById("logo");
      logo.src = b.logo_url;
      logo.hidden = false;
    }
    document.getElementById("tenant").textContent = info.tenant.name || info.tenant.id;
    if (info.expires_at) document.getElementById("expiry").textContent = (state.manage ? "" : "Read only · ") + "Link valid until " + fmtTime(info.expires_at);
    document.getElementById("signout").hidden = false;
    try { state.types = (await api("GET", "/v1/event-types")).types || []; } catch (_) { state.types = []; }
    window.addEventListener("hashchange", route);
    setInterval(() => {
      if (document.visibilityState === "visible" && state.refresh && !document.querySelector("dialog[open]")) state.refresh().catch(() => {});
    }, 5000);
    route();
  }

  start();
})();
