// fanout payload filters: the "Payload filter" field of a destination's
// form and its test on an example event, shared by the console and the
// tenant portal (which serves this same file), so that the two never
// disagree on how a filter is read, sent or tried.
//
// A filter is sent as typed (withRaw): parsed and stringified again, its
// numbers would lose digits (12345678901234567891). Left as it was shown,
// it is not sent at all, and the stored one stays.
//
// Each page builds its own with FanoutFilters.make, giving what differs:
// its API client and DOM helpers (whatever comes from the API goes in the
// page as text, through the page's el), its wording, and how it shows an
// API error. As everywhere in the console: no HTML from data, no eval.
"use strict";

(function () {
  const EXAMPLE_EVENT = '{"type":"order.paid","data":{"amount":150}}';

  // stringify is JSON.stringify, or null where the value is too deep for it.
  function stringify(v, indent) {
    try { return JSON.stringify(v, null, indent); } catch (_) { return null; }
  }

  function prettyMatch(m) {
    const s = m ? stringify(m, 2) : null;
    return s === null ? "" : s;
  }

  // withRaw is JSON.stringify(obj) with more members given as JSON text
  // (null ones left out), sent as typed: a filter's numbers keep every
  // digit, which JSON.parse then stringify would round (12345678901234567891).
  function withRaw(obj, raw) {
    let s = JSON.stringify(obj);
    for (const [k, v] of Object.entries(raw)) {
      if (v !== null && v !== undefined) s = s.slice(0, -1) + (s.length > 2 ? "," : "") + JSON.stringify(k) + ":" + v + "}";
    }
    return s;
  }

  // make returns the filter editor of a page. page is:
  //   api(method, path, body), el, clear, APIError: the page's own;
  //   ids: give the editor's parts ids (the portal: one form per page;
  //     the console may show two forms at once, told apart by class);
  //   nodeClass, filterLabel, exampleLabel: its look and wording;
  //   errorText(err): what to show of a failed test ("" for nothing).
  function make(page) {
    const { api, el, clear, APIError } = page;
    const id = (name) => (page.ids ? name : null);

    // lastPayload is the payload of the destination's last event (or the
    // last event the token sees), pretty-printed, to test a filter on;
    // null if none or too large to be an example.
    async function lastPayload(d) {
      const list = await api("GET", "/v1/events?limit=1" + (d ? "&destination=" + encodeURIComponent(d.id) : ""));
      const e = list.events && list.events[0];
      if (!e || e.size > 4096) return null;
      return stringify((await api("GET", "/v1/events/" + encodeURIComponent(e.id))).event, 2);
    }

    // matchEditor is the "Payload filter" field of a destination's form,
    // the API's refusal shown under it, and a panel that asks POST
    // /v1/match whether an example event would match the form's type
    // filter (types()) and payload filter, and why not.
    function matchEditor(d, types) {
      const initial = prettyMatch(d && d.match);
      const area = el("textarea", { name: "match", id: id("match"), class: "match", spellcheck: "false", placeholder: '{"data.amount": {"$gte": 100}}' }, initial);
      const error = el("div", { class: "error small match-error", id: id("match-error"), role: "alert" });
      const example = el("textarea", { name: "example", id: id("match-example"), class: "example", spellcheck: "false" }, EXAMPLE_EVENT);
      const result = el("div", { id: id("match-result"), class: "match-result", "aria-live": "polite" });
      const button = el("button", { type: "button", class: "secondary test-match", id: id("match-test"), text: "Test", onclick: () => run() });
      const test = el("details", { class: "match-test", id: id("match-test-panel") }, el("summary", { text: "Test on an example event" }),
        el("label", {}, page.exampleLabel, example),
        el("div", { class: "actions" }, button), result);
      let prefilled = false;
      test.addEventListener("toggle", async () => {
        if (!test.open || prefilled) return;
        prefilled = true;
        try {
          const p = await lastPayload(d);
          if (p && example.value === EXAMPLE_EVENT) example.value = p;
        } catch (_) { /* keep the example */ }
      });
      // read is the filter as typed, checked to be JSON: {raw: null} when
      // empty, null (and why, under it) when it is not JSON.
      function read() {
        error.textContent = "";
        const raw = area.value.trim();
        if (!raw) return { raw: null };
        try { JSON.parse(raw); } catch (e) { error.textContent = "The payload filter is not JSON: " + e.message; return null; }
        return { raw };
      }
      async function run() {
        clear(result);
        const m = read();
        if (!m) return;
        const ev = example.value.trim();
        try { JSON.parse(ev); } catch (e) { result.append(el("div", { class: "error small", text: "The example is not JSON: " + e.message })); return; }
        button.disabled = true;
        try {
          const r = await api("POST", "/v1/match", withRaw({ filter: types() }, { match: m.raw, event: ev }));
          result.append(el("strong", { class: r.matches ? "matches" : "no-match", text: r.matches ? "matches" : "does not match" }),
            r.reasons && r.reasons.length ? el("ul", { class: "reasons" }, r.reasons.map((x) => el("li", { text: x }))) : null);
        } catch (err) {
          const text = page.errorText(err);
          if (text) result.append(el("div", { class: "error small", text }));
        } finally { button.disabled = false; }
      }
      return {
        node: el("div", { class: page.nodeClass }, el("label", {}, page.filterLabel, area), error, test),
        read,
        // changed: the filter differs from the one shown at first (left
        // as it was, it is not sent: the stored one stays, every digit).
        changed() { return area.value.trim() !== initial.trim(); },
        // fail shows the API's refusal of the filter under it; false when
        // the refusal is about something else.
        fail(err) {
          if (!(err instanceof APIError && err.status === 400 && /^match\b/.test(err.message))) return false;
          error.textContent = err.message;
          return true;
        },
      };
    }

    return { matchEditor, lastPayload };
  }

  window.FanoutFilters = { EXAMPLE_EVENT, prettyMatch, withRaw, make };
})();
