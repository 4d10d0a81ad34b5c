// fanout destination kinds: the form of each kind's config, shared by the
// console and the tenant portal (which serves this same file), so that the
// two never disagree on a field.
//
// A destination has a "type": "webhook" (an HTTP endpoint: its url) or a
// broker kind, whose "config" object this file knows field by field (the
// sink/<kind> packages' Config structs). Fields the form does not know go
// through the "advanced JSON" box, so that a field added on the server
// later is neither lost nor unreachable.
//
// Secrets (passwords, tokens, keys, and the password in a URL) come from
// the API masked ("…" and the last four characters): the form shows the
// mask, and posting it back unchanged keeps the stored value, as header
// values do. Revealing puts the stored value in place of a mask the form
// still holds, never over something typed.
//
// As everywhere in the console: whatever comes from the API goes in the
// page as text or as an input's value, never as HTML.
"use strict";

(function () {
  const AWS_AUTH = [
    { name: "region", label: "Region", placeholder: "eu-west-1", required: true },
    { name: "access_key_id", label: "Access key id", placeholder: "AKIA…", secret: true },
    { name: "secret_access_key", label: "Secret access key", secret: true },
    { name: "session_token", label: "Session token (temporary credentials only)", secret: true, advanced: true },
    { name: "endpoint_url", label: "Endpoint URL (VPC endpoint, LocalStack; empty: AWS's)", placeholder: "https://sqs.eu-west-1.amazonaws.com", advanced: true },
    { name: "ambient_credentials", label: "Use fanout's own AWS credentials (operator destinations, --allow-ambient-aws)", type: "bool", advanced: true },
  ];

  // The kinds, in the order the forms offer them. label: the selector's
  // text; fields: the config's fields (type text unless said: number,
  // bool, list (comma-separated into an array), select, tristate (unset,
  // true, false), textarea); secret: masked by the API; url: may hold
  // user:password@, whose password the API masks.
  const KINDS = [
    { name: "webhook", label: "Webhook (HTTPS endpoint)" },
    {
      name: "nats", label: "NATS JetStream", fields: [
        { name: "url", label: "Server URL (several: comma-separated)", placeholder: "nats://broker:4222", required: true, url: true, wide: true },
        { name: "subject", label: "Subject", placeholder: "events.orders", required: true },
        { name: "stream", label: "Stream that must capture it (optional)", placeholder: "ORDERS" },
        { name: "user", label: "User" },
        { name: "password", label: "Password", secret: true },
        { name: "token", label: "Token (instead of user and password)", secret: true },
      ],
    },
    {
      name: "kafka", label: "Kafka", fields: [
        { name: "brokers", label: "Seed brokers (host:port, comma-separated)", placeholder: "kafka-1:9092, kafka-2:9092", required: true, type: "list", wide: true },
        { name: "topic", label: "Topic", placeholder: "events", required: true },
        { name: "partition_key", label: "Partition key (dotted path in the event)", placeholder: "data.customer_id" },
        { name: "tls", label: "TLS (the system's roots)", type: "bool" },
        { name: "sasl", label: "SASL", type: "select", options: [["", "none"], ["plain", "PLAIN"], ["scram-sha-256", "SCRAM-SHA-256"], ["scram-sha-512", "SCRAM-SHA-512"]] },
        { name: "username", label: "Username" },
        { name: "password", label: "Password", secret: true },
      ],
    },
    {
      name: "rabbitmq", label: "RabbitMQ", fields: [
        { name: "url", label: "Broker URL", placeholder: "amqps://user:password@rabbit:5671/vhost", required: true, url: true, wide: true },
        { name: "exchange", label: "Exchange (empty: the default exchange)", placeholder: "events" },
        { name: "routing_key", label: "Routing key ({type}: the event's type)", placeholder: "events.{type}" },
        { name: "password", label: "Password (unless in the URL)", secret: true },
        { name: "mandatory", label: "Mandatory: retry a message no queue takes", type: "bool", def: true },
        { name: "channels", label: "Publishes in flight (default 16)", type: "number", min: 1, placeholder: "16", advanced: true },
      ],
    },
    {
      name: "redis", label: "Redis Streams", fields: [
        { name: "url", label: "Server URL", placeholder: "rediss://user:password@redis:6380/0", required: true, url: true, wide: true },
        { name: "stream", label: "Stream key", placeholder: "events", required: true },
        { name: "password", label: "Password (unless in the URL)", secret: true },
        { name: "maxlen", label: "Trim to about this many entries (0: never)", type: "number", min: 0, placeholder: "0" },
        { name: "exact", label: "Trim exactly (costs Redis more)", type: "bool" },
        { name: "dedup_window", label: "Remember delivery ids for (\"0s\": never)", placeholder: "2m", advanced: true },
      ],
    },
    {
      name: "sqs", label: "Amazon SQS", fields: [
        { name: "queue_url", label: "Queue URL", placeholder: "https://sqs.eu-west-1.amazonaws.com/123456789012/orders.fifo", required: true, wide: true },
        ...AWS_AUTH.slice(0, 3),
        { name: "message_group_id", label: "FIFO group of messages without a key", placeholder: "fanout", advanced: true },
        ...AWS_AUTH.slice(3),
      ],
    },
    {
      name: "sns", label: "Amazon SNS", fields: [
        { name: "topic_arn", label: "Topic ARN", placeholder: "arn:aws:sns:eu-west-1:123456789012:orders", required: true, wide: true },
        ...AWS_AUTH.slice(0, 3),
        { name: "subject", label: "Subject (e-mail subscriptions)", advanced: true },
        { name: "message_group_id", label: "FIFO group of messages without a key", placeholder: "fanout", advanced: true },
        ...AWS_AUTH.slice(3),
      ],
    },
    {
      name: "eventbridge", label: "Amazon EventBridge", fields: [
        { name: "event_bus", label: "Event bus (name or ARN)", placeholder: "default" },
        ...AWS_AUTH.slice(0, 3),
        { name: "source", label: "Source", placeholder: "fanout" },
        { name: "detail_type", label: "Detail type (empty: the event's type)" },
        { name: "envelope", label: "Wrap the body with fanout's ids", type: "bool" },
        ...AWS_AUTH.slice(3),
      ],
    },
    {
      name: "s3", label: "Amazon S3", fields: [
        { name: "bucket", label: "Bucket", placeholder: "my-events", required: true },
        ...AWS_AUTH.slice(0, 3),
        { name: "key_template", label: "Object key ({event_id} or {delivery_id} required)", placeholder: "events/{type}/{date}/{event_id}", wide: true },
        { name: "storage_class", label: "Storage class (empty: the bucket's)", placeholder: "STANDARD_IA", advanced: true },
        { name: "path_style", label: "Path-style addressing", type: "tristate", advanced: true },
        ...AWS_AUTH.slice(3),
      ],
    },
    {
      name: "pubsub", label: "Google Cloud Pub/Sub", fields: [
        { name: "project_id", label: "Project id", placeholder: "my-project", required: true },
        { name: "topic", label: "Topic", placeholder: "orders", required: true },
        { name: "credentials_json", label: "Service account key (JSON file's content)", type: "textarea", secret: true, wide: true },
        { name: "ordering", label: "Publish with the message's key as ordering key", type: "bool" },
        { name: "emulator_host", label: "Emulator host:port (no credentials)", placeholder: "127.0.0.1:8085", advanced: true },
        { name: "endpoint", label: "Endpoint host:port (empty: the global one)", placeholder: "europe-west1-pubsub.googleapis.com:443", advanced: true },
        { name: "ambient_credentials", label: "Use fanout's own Google credentials (operator destinations)", type: "bool", advanced: true },
      ],
    },
  ];
  const byName = new Map(KINDS.map((k) => [k.name, k]));

  const ELLIPSIS = "…";

  // isMasked: a value as the API masks a secret, or a URL whose password
  // is masked.
  function isMasked(v) {
    return typeof v === "string" && (v.startsWith(ELLIPSIS) || /:\/\/[^/@]*:…[^@]*@/.test(v));
  }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = String(v);
      else if (k.startsWith("on") && typeof v === "function") e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function label(name) {
    const k = byName.get(name || "webhook");
    return k ? k.label : String(name);
  }

  // FieldError is a config field the form refuses before sending.
  class FieldError extends Error {
    constructor(field, message) { super(message); this.field = field; }
  }

  // configForm is the form of a broker kind's config: node to put in a
  // form, read() the config object to send (it throws a FieldError and
  // marks the field), fail(err) marks the field an API error names
  // ("config.subject: ...") and says whether it did, reveal(full) puts
  // the stored secrets in place of the masks still in the form.
  // cfg is the config the API answered (masked), or null for a new one.
  function configForm(kindName, cfg, opts) {
    const kind = byName.get(kindName);
    if (!kind || !kind.fields) throw new Error("no form for the destination type " + kindName);
    opts = opts || {};
    cfg = cfg || {};
    const known = new Set(kind.fields.map((f) => f.name));
    const inputs = new Map();
    const basic = el("div", { class: "kind-fields", "data-kind": kind.name });
    const adv = el("div", { class: "kind-fields" });
    const errorOf = new Map();

    for (const f of kind.fields) {
      const v = cfg[f.name];
      const id = (opts.idPrefix || "cfg") + "-" + kind.name + "-" + f.name;
      let input;
      const common = { name: "config." + f.name, id, "data-field": f.name, "aria-describedby": id + "-error" };
      switch (f.type) {
        case "bool":
          input = el("input", Object.assign({ type: "checkbox", checked: v === undefined ? !!f.def : !!v }, common));
          break;
        case "tristate":
          input = el("select", common, [["", "default"], ["true", "yes"], ["false", "no"]].map(([val, text]) =>
            el("option", { value: val, text, selected: String(v === undefined ? "" : v) === val })));
          break;
        case "select":
          input = el("select", common, f.options.map(([val, text]) => el("option", { value: val, text, selected: (v || "") === val })));
          break;
        case "number":
          input = el("input", Object.assign({ type: "number", step: "1", min: f.min, placeholder: f.placeholder, value: v === undefined || v === null ? "" : String(v) }, common));
          break;
        case "list":
          input = el("input", Object.assign({ type: "text", placeholder: f.placeholder, required: f.required, autocomplete: "off", spellcheck: "false",
            value: Array.isArray(v) ? v.join(", ") : v === undefined ? "" : String(v) }, common));
          break;
        case "textarea":
          input = el("textarea", Object.assign({ placeholder: f.placeholder, spellcheck: "false", autocomplete: "off", rows: "4" }, common));
          input.value = v === undefined ? "" : String(v);
          break;
        default:
          input = el("input", Object.assign({ type: "text", placeholder: f.placeholder, required: f.required, autocomplete: "off", spellcheck: "false",
            value: v === undefined || v === null ? "" : String(v) }, common));
      }
      if (f.secret || f.url) input.classList.add("mono");
      if (f.secret) input.classList.add("secret");
      const err = el("span", { class: "field-error error small", id: id + "-error", role: "alert" });
      errorOf.set(f.name, err);
      input.addEventListener("input", () => { input.removeAttribute("aria-invalid"); err.textContent = ""; });
      inputs.set(f.name, { f, input, initial: f.type === "bool" ? input.checked : input.value });
      const text = f.label + (f.required ? " *" : "");
      const note = f.secret ? el("span", { class: "note" }, cfg[f.name] ? " (masked: left as it is, the stored one stays)" : " (write-only)") : null;
      const box = f.type === "bool"
        ? el("label", { class: "row check" + (f.wide ? " wide" : ""), for: id }, input, el("span", { text }), err)
        : el("label", { class: f.wide ? "wide" : null, for: id }, el("span", {}, text, note), input, err);
      (f.advanced ? adv : basic).append(box);
    }

    // Fields the form does not know, kept and editable as JSON.
    const other = {};
    for (const [k, v] of Object.entries(cfg)) if (!known.has(k)) other[k] = v;
    const extra = el("textarea", { name: "config.advanced", class: "advanced-json", spellcheck: "false", rows: "3",
      id: (opts.idPrefix || "cfg") + "-" + kind.name + "-advanced", placeholder: "{}" });
    extra.value = Object.keys(other).length ? JSON.stringify(other, null, 2) : "";
    const extraErr = el("span", { class: "field-error error small", role: "alert" });
    errorOf.set("", extraErr);
    adv.append(el("label", { class: "wide" }, "Other config fields (JSON object, merged into the ones above)", extra, extraErr));
    const advanced = el("details", { class: "advanced wide" }, el("summary", { text: "Advanced" }), adv);
    if ([...inputs.values()].some(({ f, input }) => f.advanced && (f.type === "bool" ? input.checked : input.value)) || extra.value) advanced.open = true;

    const delivered = opts.delivered ? el("p", { class: "muted small wide delivered" }, "Delivered means: ", opts.delivered, ".") : null;
    const node = el("div", { class: "kind-form wide", "data-kind": kind.name }, basic, advanced, delivered);

    function mark(field, message) {
      const e = errorOf.get(field);
      const i = inputs.get(field);
      if (i) {
        i.input.setAttribute("aria-invalid", "true");
        if (i.f.advanced) advanced.open = true;
        i.input.focus();
      } else {
        advanced.open = true;
        extra.setAttribute("aria-invalid", "true");
      }
      (e || extraErr).textContent = message;
    }

    function clearMarks() {
      for (const e of errorOf.values()) e.textContent = "";
      for (const { input } of inputs.values()) input.removeAttribute("aria-invalid");
      extra.removeAttribute("aria-invalid");
    }

    function read() {
      clearMarks();
      let out = {};
      if (extra.value.trim()) {
        try { out = JSON.parse(extra.value); } catch (e) { mark("", "not JSON: " + e.message); throw new FieldError("", "config: the other fields are not JSON: " + e.message); }
        if (!out || typeof out !== "object" || Array.isArray(out)) { mark("", "want a JSON object"); throw new FieldError("", "config: the other fields must be a JSON object"); }
      }
      for (const [name, { f, input }] of inputs) {
        switch (f.type) {
          case "bool":
            // A default-true field is always sent; the others when set.
            if (input.checked || f.def) out[name] = input.checked;
            else delete out[name];
            break;
          case "tristate":
            if (input.value) out[name] = input.value === "true"; else delete out[name];
            break;
          case "number": {
            const s = input.value.trim();
            if (s === "") { delete out[name]; break; }
            const n = Number(s);
            if (!Number.isInteger(n)) { mark(name, "want a whole number"); throw new FieldError(name, "config." + name + ": want a whole number"); }
            out[name] = n;
            break;
          }
          case "list": {
            const l = input.value.split(",").map((s) => s.trim()).filter(Boolean);
            if (l.length) out[name] = l; else delete out[name];
            break;
          }
          default: {
            const s = f.secret || f.type === "textarea" ? input.value : input.value.trim();
            if (s.trim() !== "") out[name] = s; else delete out[name];
          }
        }
        if (f.required && out[name] === undefined) { mark(name, "required"); throw new FieldError(name, "config." + name + ": required"); }
      }
      return out;
    }

    // fail marks the field an API error names: "config.subject: ...",
    // "config.tls.ca: ..." (its first part), "config: ..." (the JSON box).
    function fail(err) {
      const m = /(?:^|\s)config(?:\.([A-Za-z0-9_]+)[A-Za-z0-9_.\[\]]*)?:\s*([\s\S]*)$/.exec(String(err && err.message || ""));
      if (!m) return false;
      clearMarks();
      mark(m[1] && inputs.has(m[1]) ? m[1] : "", m[2] || String(err.message));
      return true;
    }

    // reveal puts full values in place of the masks the form still holds.
    function reveal(full) {
      let n = 0;
      for (const [name, { f, input, initial }] of inputs) {
        if (!(f.secret || f.url) || full[name] === undefined) continue;
        if (input.value === initial && isMasked(initial)) { input.value = String(full[name]); n++; }
      }
      return n;
    }

    function hasMasks() {
      return [...inputs.values()].some(({ f, input }) => (f.secret || f.url) && isMasked(input.value));
    }

    return { node, read, fail, reveal, hasMasks, kind: kind.name };
  }

  // configRows are a config's fields as rows: name, then the value as
  // text (secrets as the API masked them, or full when given), in the
  // form's order, fields it does not know last.
  function configRows(kindName, cfg) {
    const kind = byName.get(kindName);
    const fields = (kind && kind.fields) || [];
    const labels = new Map(fields.map((f) => [f.name, f]));
    const order = (k) => { const i = fields.findIndex((f) => f.name === k); return i < 0 ? fields.length : i; };
    const rows = [];
    for (const [k, v] of Object.entries(cfg || {}).sort(([a], [b]) => order(a) - order(b))) {
      const f = labels.get(k);
      const text = Array.isArray(v) ? v.join(", ") : typeof v === "object" && v !== null ? JSON.stringify(v) : String(v);
      rows.push(el("div", { class: "cfg-row", "data-field": k },
        el("span", { class: "cfg-name", text: k }), " ",
        el("span", { class: "cfg-value mono" + (f && f.secret ? " secret" : ""), text })));
    }
    return rows;
  }

  window.FanoutKinds = {
    list: KINDS,
    label,
    isBroker: (name) => !!name && name !== "webhook",
    has: (name) => byName.has(name),
    configForm,
    configRows,
    isMasked,
    FieldError,
  };
})();
