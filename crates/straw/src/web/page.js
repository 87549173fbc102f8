"use strict";
// Polls /status.json every second and redraws each section from it, with
// the same markup the server renders for the first view (web/page.rs).
// DOM built with textContent only: nothing from the snapshot is parsed as HTML.
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const DASH = "\u2013";
  const $ = (id) => document.getElementById(id);

  function build(e, attrs, kids) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) e.setAttribute(k, String(v));
    }
    for (const k of kids.flat(Infinity)) {
      if (k === null || k === undefined || k === false) continue;
      e.append(k instanceof Node ? k : String(k));
    }
    return e;
  }
  const h = (tag, attrs, ...kids) => build(document.createElement(tag), attrs, kids);
  const sv = (tag, attrs, ...kids) => build(document.createElementNS(SVG, tag), attrs, kids);

  const pad = (n) => String(n).padStart(2, "0");
  function size(n) {
    if (n < 1000) return n + " B";
    if (n < 1e6) return (n / 1e3).toFixed(1) + " KB";
    return (n / 1e6).toFixed(1) + " MB";
  }
  function dur(secs) {
    const s = Math.max(0, Math.floor(Number.isFinite(secs) ? secs : 0));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + pad(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + pad(Math.floor((s % 3600) / 60)) + " min";
  }
  function clock(ms) {
    const s = Math.floor(ms / 1000);
    return pad(Math.floor(s / 3600) % 24) + ":" + pad(Math.floor(s / 60) % 60) + ":" + pad(s % 60);
  }
  const money = (x) => "$" + x.toFixed(2);
  const maybe = (x, f) => (x === null || x === undefined ? DASH : f(x));
  const dl = (rows) => h("dl", {}, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));

  function link(s) {
    const l = s.link;
    const c = l.call;
    return [
      h("h2", {}, "Link"),
      h("p", { class: "big" },
        h("span", { class: "state " + l.state, id: "link-state" }, l.state === "down" ? "DOWN" : l.state),
        " for " + dur(l.for_secs) + " ",
        h("small", {}, "since " + clock(l.since_unix_ms) + " UTC")),
      l.note ? h("p", { class: "note" }, l.note) : null,
      dl([
        ["rate", l.rate_bytes_per_sec + " B/s (" + l.rate_bytes_per_sec * 8 + " bit/s)"],
        ["receiving", maybe(l.down_bytes_per_sec, (d) => d + " B/s")],
        ["sending", l.send_bytes_per_sec + " B/s"],
        ["round trip", maybe(l.rtt_ms, (r) => (r / 1000).toFixed(1) + " s")],
        ["this call, on the wire", h("span", { id: "call-wire" }, size(c.wire_up) + " up, " + size(c.wire_down) + " down")],
        ["this call, raw", size(c.raw_up) + " up, " + size(c.raw_down) + " down"],
      ]),
    ];
  }

  function moneyView(s) {
    const m = s.money;
    const saved = m.without_straw_total === null ? null : m.without_straw_total - m.total_cost;
    return [
      h("h2", {}, "Money"),
      h("p", { class: "big" },
        h("span", { id: "call-cost" }, money(m.call_cost)), " this call ",
        h("small", {}, dur(m.call_secs) + " \u2192 " + m.call_minutes + " min billed at " + money(m.cost_per_minute) + "/min")),
      dl([
        ["since " + clock(m.since_unix_ms) + " UTC", money(m.total_cost) + " (" + m.calls + " call(s), " + m.total_minutes + " min)"],
        ["without straw, this call", maybe(m.without_straw_call, (x) => "~ " + money(x))],
        ["without straw, since start", maybe(m.without_straw_total, (x) => "~ " + money(x))],
        ["saved since start", maybe(saved, (x) => "~ " + money(x))],
      ]),
      h("p", { class: "fine" }, "Without straw: " + m.without_straw_how + "."),
    ];
  }

  function streams(s) {
    const head = h("h2", {}, "Connections");
    if (!s.streams.length) return [head, h("p", { class: "empty" }, "no connections open")];
    const rows = s.streams.map((st) =>
      h("tr", { class: "stream", "data-stream": st.stream },
        h("td", {}, st.service),
        h("td", { class: "what" }, st.what ? (st.upload ? "\u2191 " : "\u2193 ") + st.what : "(idle)"),
        h("td", { class: "bar" }, st.percent === null ? "" : [
          h("progress", { max: "100", value: st.percent.toFixed(1) }), " " + Math.round(st.percent) + "%"]),
        h("td", { class: "num" }, st.what ? size(st.done) + (st.total === null ? "" : " / " + size(st.total)) : ""),
        h("td", { class: "num" }, maybe(st.eta_secs, (e) => dur(Math.ceil(e)))),
        h("td", { class: "num" }, maybe(st.ratio, (r) => r.toFixed(2)))));
    return [head, h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "service"), h("th", {}, "doing"), h("th", {}, "progress"),
        h("th", { class: "num" }, "done / total"), h("th", { class: "num" }, "ETA"), h("th", { class: "num" }, "ratio"))),
      h("tbody", {}, rows)),
      s.streams_not_listed ? h("p", { class: "fine" }, s.streams_not_listed + " more not listed") : null];
  }

  function recent(s) {
    const head = h("h2", {}, "Recent transfers");
    if (!s.recent.length) return [head, h("p", { class: "empty" }, "none yet")];
    return [head, h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "ended (UTC)"), h("th", {}, "service"), h("th", {}, "what"),
        h("th", { class: "num" }, "bytes"), h("th", { class: "num" }, "cost (airtime share)"))),
      h("tbody", {}, s.recent.map((f) => h("tr", {},
        h("td", {}, clock(f.ended_unix_ms)), h("td", {}, f.service), h("td", { class: "what" }, f.what),
        h("td", { class: "num" }, size(f.bytes)), h("td", { class: "num" }, maybe(f.cost, money))))))];
  }

  function held(s) {
    const list = Array.isArray(s.held) ? s.held : [];
    const head = h("h2", {}, "Held ashore");
    if (!list.length) return [head, h("p", { class: "empty", id: "held-empty" }, "no messages held")];
    return [head, h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "from"), h("th", {}, "subject"), h("th", { class: "num" }, "size"),
        h("th", {}, "state"), h("th", {}, ""))),
      h("tbody", {}, list.map((m) => h("tr", { class: "held" },
        h("td", {}, String(m.from ?? "")), h("td", { class: "what" }, String(m.subject ?? "")),
        h("td", { class: "num" }, Number.isFinite(m.size) ? size(m.size) : DASH), h("td", {}, String(m.state ?? "")),
        h("td", {}, h("form", { method: "post", action: "/hold/release", class: "release" },
          h("input", { type: "hidden", name: "id", value: String(m.id ?? "") }),
          h("button", { type: "submit" }, "Release")))))))];
  }

  // Same drawing as page.rs's chart(): bars of wire bytes per bucket (down
  // below, up on top), a line of the money spent since the chart's start.
  function chart(hist) {
    const b = hist.buckets;
    const W = 720, H = 210, L = 64, R = 60, T = 14, B = 26;
    const pw = W - L - R, ph = H - T - B, n = Math.max(b.length, 1), bw = pw / n;
    const maxB = Math.max(1, ...b.map((x) => x[1] + x[2]));
    let cum = 0;
    const spent = b.map((x) => (cum += x[3]));
    const maxC = Math.max(cum, 0.01);
    const y = (v, max) => T + ph - (v / max) * ph;
    const parts = [sv("rect", { x: L, y: T, width: pw, height: ph, fill: "#fafbfc", stroke: "#d9e0e7" })];
    b.forEach((x, i) => {
      const hd = (x[2] / maxB) * ph, hu = (x[1] / maxB) * ph, x0 = (L + i * bw).toFixed(1), w = Math.max(bw - 1, 1).toFixed(1);
      if (hd > 0) parts.push(sv("rect", { x: x0, y: (T + ph - hd).toFixed(1), width: w, height: hd.toFixed(1), fill: "#2f6fb3" }));
      if (hu > 0) parts.push(sv("rect", { x: x0, y: (T + ph - hd - hu).toFixed(1), width: w, height: hu.toFixed(1), fill: "#e08a1e" }));
      if (i % 12 === 0) parts.push(sv("text", { x: x0, y: H - 8 }, clock(x[0] * 60000).slice(0, 5)));
    });
    const pts = [L + "," + y(0, maxC).toFixed(1)].concat(spent.map((c, i) => (L + (i + 1) * bw).toFixed(1) + "," + y(c, maxC).toFixed(1)));
    parts.push(sv("polyline", { points: pts.join(" "), fill: "none", stroke: "#1f7a3d", "stroke-width": "2" }));
    parts.push(sv("text", { x: L - 6, y: T + 10, "text-anchor": "end" }, size(maxB)));
    parts.push(sv("text", { x: L - 6, y: T + ph, "text-anchor": "end" }, "0"));
    parts.push(sv("text", { x: W - R + 6, y: T + 10 }, money(maxC)));
    parts.push(sv("text", { x: W - R + 6, y: T + ph }, "$0"));
    return sv("svg", { viewBox: "0 0 " + W + " " + H, class: "chart", role: "img",
      "aria-label": "wire bytes and money over the last " + (n * hist.bucket_mins / 60) + " hours" }, parts);
  }

  function chartView(s) {
    const hist = s.history;
    let total = 0, bytes = 0;
    for (const x of hist.buckets) { total += x[3]; bytes += x[1] + x[2]; }
    const hours = hist.buckets.length * hist.bucket_mins / 60;
    return [h("h2", {}, "Last " + hours + " hours"), chart(hist),
      h("p", { class: "legend" },
        h("span", { class: "key down" }), " down ", h("span", { class: "key up" }), " up: wire bytes per " + hist.bucket_mins + " min (left axis); ",
        h("span", { class: "key money" }), " money spent since the chart's start (right axis). ",
        h("span", { id: "chart-total" }, size(bytes) + " and " + money(total) + " in these hours."))];
  }

  let note = null; // the answer to the last Release, shown for a while

  function banner(s, failed) {
    const out = [];
    if (failed) out.push(h("p", { class: "bad" }, "No answer from the straw client since " + clock(lastOk) + " UTC (" + failed + "); still trying."));
    if (s && s.link.state === "down") out.push(h("p", { class: "bad" }, "Link DOWN" + (s.link.note ? ": " + s.link.note : "") + "."));
    if (s && s.link.state === "dialling") out.push(h("p", {}, "Dialling the link\u2026"));
    if (s && s.money.budget_reached) out.push(h("p", { class: "bad", id: "budget" }, "This call's budget of " + money(s.money.budget_per_call) + " is spent: new transfers (POP3 RETR, IMAP message bodies, SMTP sending) wait for the next call."));
    if (note && Date.now() - note.at < 15000) out.push(h("p", { class: note.ok ? "ok" : "bad" }, note.text));
    $("banner").replaceChildren(...out);
  }

  let lastOk = Date.now();
  let last = null;
  // The held list as last drawn: redrawn only when it changes, so that a
  // Release button is not replaced under a click (pressed before a poll,
  // released after it) or keyboard focus.
  let heldDrawn = null;

  // Replaces a section's content; absent parts (null) are left out.
  const put = (id, parts) => $(id).replaceChildren(...parts.filter((p) => p !== null && p !== undefined));

  function render(s) {
    put("link", link(s));
    put("money", moneyView(s));
    put("streams", streams(s));
    put("chart", chartView(s));
    put("recent", recent(s));
    const heldNow = JSON.stringify(s.held ?? null);
    if (heldNow !== heldDrawn) {
      put("held", held(s));
      heldDrawn = heldNow;
    }
    $("updated").textContent = "live \u00b7 updated " + clock(s.taken_unix_ms) + " UTC";
    document.body.dataset.live = "1";
    document.body.dataset.taken = String(s.taken_unix_ms);
  }

  async function poll() {
    try {
      const r = await fetch("/status.json", { cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      last = await r.json();
      lastOk = Date.now();
      render(last);
      banner(last, null);
    } catch (e) {
      banner(last, String(e.message || e));
    }
    setTimeout(poll, 1000);
  }

  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (!form.classList || !form.classList.contains("release")) return;
    ev.preventDefault();
    let text, ok = false;
    try {
      const r = await fetch("/hold/release", { method: "POST", body: new URLSearchParams(new FormData(form)) });
      text = (await r.text()).trim();
      ok = r.ok;
    } catch (e) {
      text = "Release failed: " + String(e.message || e);
    }
    note = { text: text, ok: ok, at: Date.now() };
    banner(last, null);
  });

  poll();
})();
