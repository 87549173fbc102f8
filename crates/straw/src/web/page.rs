//! The page itself: the first view rendered here from a [`Snapshot`] (it
//! reads without JavaScript), then `page.js` redraws each section from
//! `/status.json` every second with the same markup.

use std::fmt::Write;
use std::sync::LazyLock;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::status::{LinkState, Minute, Snapshot, clock, duration, size};

pub const SCRIPT: &str = include_str!("page.js");
pub const STYLE: &str = include_str!("page.css");

/// The chart: 72 buckets of 5 minutes, the last 6 hours.
pub const CHART_BUCKET_MINS: u64 = 5;
pub const CHART_BUCKETS: usize = 72;

/// `'sha256-...'` of the inline script and style: the Content-Security-Policy
/// allows exactly these and nothing else inline.
fn csp_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The header every answer carries.
pub static CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self'; \
         form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        csp_hash(SCRIPT),
        csp_hash(STYLE)
    )
});

/// `/status.json`: the control socket's snapshot plus the chart's history
/// (`history.buckets`: `[unix minute, wire up, wire down, cost]`, oldest first).
pub fn status_json(snap: &Snapshot, history: &[Minute]) -> Vec<u8> {
    let mut v = serde_json::to_value(snap).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(o) = v.as_object_mut() {
        let buckets: Vec<_> = history
            .iter()
            .map(|m| serde_json::json!([m.unix_min, m.wire_up, m.wire_down, m.cost]))
            .collect();
        o.insert(
            "history".into(),
            serde_json::json!({ "bucket_mins": CHART_BUCKET_MINS, "buckets": buckets }),
        );
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

fn money(x: f64) -> String {
    format!("${x:.2}")
}

const DASH: &str = "\u{2013}";

fn maybe<T>(x: Option<T>, f: impl FnOnce(T) -> String) -> String {
    x.map_or(DASH.to_owned(), f)
}

fn dl(o: &mut String, rows: &[(String, String)]) {
    o.push_str("<dl>");
    for (k, v) in rows {
        let _ = write!(o, "<dt>{}</dt><dd>{v}</dd>", esc(k));
    }
    o.push_str("</dl>");
}

fn link(o: &mut String, s: &Snapshot) {
    let l = &s.link;
    let c = &l.call;
    let (class, word) = match l.state {
        LinkState::Up => ("up", "up"),
        LinkState::Down => ("down", "DOWN"),
        LinkState::Dialling => ("dialling", "dialling"),
    };
    let _ = write!(
        o,
        "<h2>Link</h2><p class=\"big\"><span class=\"state {class}\" id=\"link-state\">{word}</span> for {} <small>since {} UTC</small></p>",
        duration(l.for_secs),
        clock(l.since_unix_ms)
    );
    if let Some(n) = &l.note {
        let _ = write!(o, "<p class=\"note\">{}</p>", esc(n));
    }
    dl(
        o,
        &[
            (
                "rate".into(),
                format!(
                    "{} B/s ({} bit/s)",
                    l.rate_bytes_per_sec,
                    l.rate_bytes_per_sec.saturating_mul(8)
                ),
            ),
            (
                "receiving".into(),
                maybe(l.down_bytes_per_sec, |d| format!("{d} B/s")),
            ),
            ("sending".into(), format!("{} B/s", l.send_bytes_per_sec)),
            (
                "round trip".into(),
                maybe(l.rtt_ms, |r| format!("{:.1} s", r as f64 / 1e3)),
            ),
            (
                "this call, on the wire".into(),
                format!(
                    "<span id=\"call-wire\">{} up, {} down</span>",
                    size(c.wire_up),
                    size(c.wire_down)
                ),
            ),
            (
                "this call, raw".into(),
                format!("{} up, {} down", size(c.raw_up), size(c.raw_down)),
            ),
        ],
    );
}

fn money_view(o: &mut String, s: &Snapshot) {
    let m = &s.money;
    let _ = write!(
        o,
        "<h2>Money</h2><p class=\"big\"><span id=\"call-cost\">{}</span> this call <small>{} \u{2192} {} min billed at {}/min</small></p>",
        money(m.call_cost),
        duration(m.call_secs),
        m.call_minutes,
        money(m.cost_per_minute)
    );
    let saved = m.without_straw_total.map(|w| w - m.total_cost);
    dl(
        o,
        &[
            (
                format!("since {} UTC", clock(m.since_unix_ms)),
                format!(
                    "{} ({} call(s), {} min)",
                    money(m.total_cost),
                    m.calls,
                    m.total_minutes
                ),
            ),
            (
                "without straw, this call".into(),
                maybe(m.without_straw_call, |x| format!("~ {}", money(x))),
            ),
            (
                "without straw, since start".into(),
                maybe(m.without_straw_total, |x| format!("~ {}", money(x))),
            ),
            (
                "saved since start".into(),
                maybe(saved, |x| format!("~ {}", money(x))),
            ),
        ],
    );
    let _ = write!(
        o,
        "<p class=\"fine\">Without straw: {}.</p>",
        esc(&m.without_straw_how)
    );
}

fn streams(o: &mut String, s: &Snapshot) {
    o.push_str("<h2>Connections</h2>");
    if s.streams.is_empty() {
        o.push_str("<p class=\"empty\">no connections open</p>");
        return;
    }
    o.push_str("<table><thead><tr><th>service</th><th>doing</th><th>progress</th><th class=\"num\">done / total</th><th class=\"num\">ETA</th><th class=\"num\">ratio</th></tr></thead><tbody>");
    for st in &s.streams {
        let what = if st.what.is_empty() {
            "(idle)".to_owned()
        } else {
            format!(
                "{} {}",
                if st.upload { '\u{2191}' } else { '\u{2193}' },
                st.what
            )
        };
        let bar = st
            .percent
            .filter(|p| p.is_finite())
            .map_or(String::new(), |p| {
                format!(
                    "<progress max=\"100\" value=\"{p:.1}\"></progress> {:.0}%",
                    p
                )
            });
        let done = if st.what.is_empty() {
            String::new()
        } else {
            size(st.done)
                + &st
                    .total
                    .map_or(String::new(), |t| format!(" / {}", size(t)))
        };
        let _ = write!(
            o,
            "<tr class=\"stream\" data-stream=\"{}\"><td>{}</td><td class=\"what\">{}</td><td class=\"bar\">{bar}</td><td class=\"num\">{done}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            st.stream,
            esc(&st.service),
            esc(&what),
            maybe(st.eta_secs, |e| duration(e.ceil())),
            maybe(st.ratio, |r| format!("{r:.2}")),
        );
    }
    o.push_str("</tbody></table>");
    if s.streams_not_listed > 0 {
        let _ = write!(
            o,
            "<p class=\"fine\">{} more not listed</p>",
            s.streams_not_listed
        );
    }
}

fn recent(o: &mut String, s: &Snapshot) {
    o.push_str("<h2>Recent transfers</h2>");
    if s.recent.is_empty() {
        o.push_str("<p class=\"empty\">none yet</p>");
        return;
    }
    o.push_str("<table><thead><tr><th>ended (UTC)</th><th>service</th><th>what</th><th class=\"num\">bytes</th><th class=\"num\">cost (airtime share)</th></tr></thead><tbody>");
    for f in &s.recent {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td class=\"what\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            clock(f.ended_unix_ms),
            esc(&f.service),
            esc(&f.what),
            size(f.bytes),
            maybe(f.cost, money)
        );
    }
    o.push_str("</tbody></table>");
}

/// Held messages, from a `held` array in the snapshot's JSON if it has one
/// (objects with `id`, `from`, `subject`, `size`, `state`).
fn held(o: &mut String, s: &Snapshot) {
    let v = serde_json::to_value(s).unwrap_or_default();
    let list = v
        .get("held")
        .and_then(|h| h.as_array())
        .cloned()
        .unwrap_or_default();
    held_list(o, &list);
}

/// The held section from the `held` array's entries.
pub(crate) fn held_list(o: &mut String, list: &[serde_json::Value]) {
    o.push_str("<h2>Held ashore</h2>");
    if list.is_empty() {
        o.push_str("<p class=\"empty\" id=\"held-empty\">no messages held</p>");
        return;
    }
    let text = |m: &serde_json::Value, k: &str| match m.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(x) => x.to_string(),
    };
    o.push_str("<table><thead><tr><th>from</th><th>subject</th><th class=\"num\">size</th><th>state</th><th></th></tr></thead><tbody>");
    for m in list {
        let sz = m
            .get("size")
            .and_then(|x| x.as_u64())
            .map_or(DASH.to_owned(), size);
        let _ = write!(
            o,
            "<tr class=\"held\"><td>{}</td><td class=\"what\">{}</td><td class=\"num\">{sz}</td><td>{}</td><td><form method=\"post\" action=\"/hold/release\" class=\"release\"><input type=\"hidden\" name=\"id\" value=\"{}\"><button type=\"submit\">Release</button></form></td></tr>",
            esc(&text(m, "from")),
            esc(&text(m, "subject")),
            esc(&text(m, "state")),
            esc(&text(m, "id")),
        );
    }
    o.push_str("</tbody></table>");
}

/// The chart as inline SVG; page.js's `chart()` draws the same.
fn chart(o: &mut String, b: &[Minute]) {
    const W: f64 = 720.0;
    const H: f64 = 210.0;
    const L: f64 = 64.0;
    const R: f64 = 60.0;
    const T: f64 = 14.0;
    const B: f64 = 26.0;
    let (pw, ph) = (W - L - R, H - T - B);
    let bw = pw / b.len().max(1) as f64;
    let max_b = b
        .iter()
        .map(|m| m.wire_up.saturating_add(m.wire_down))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let spent: Vec<f64> = b
        .iter()
        .scan(0.0, |c, m| {
            *c += m.cost;
            Some(*c)
        })
        .collect();
    let max_c = spent.last().copied().unwrap_or(0.0).max(0.01);
    let y = |v: f64, max: f64| T + ph - v / max * ph;
    let hours = b.len() as u64 * CHART_BUCKET_MINS / 60;
    let _ = write!(
        o,
        "<svg viewBox=\"0 0 {W} {H}\" class=\"chart\" role=\"img\" aria-label=\"wire bytes and money over the last {hours} hours\"><rect x=\"{L}\" y=\"{T}\" width=\"{pw}\" height=\"{ph}\" fill=\"#fafbfc\" stroke=\"#d9e0e7\"></rect>"
    );
    for (i, m) in b.iter().enumerate() {
        let hd = m.wire_down as f64 / max_b * ph;
        let hu = m.wire_up as f64 / max_b * ph;
        let x0 = L + i as f64 * bw;
        let w = (bw - 1.0).max(1.0);
        if hd > 0.0 {
            let _ = write!(
                o,
                "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{hd:.1}\" fill=\"#2f6fb3\"></rect>",
                T + ph - hd
            );
        }
        if hu > 0.0 {
            let _ = write!(
                o,
                "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{hu:.1}\" fill=\"#e08a1e\"></rect>",
                T + ph - hd - hu
            );
        }
        if i % 12 == 0 {
            let t = clock(m.unix_min.saturating_mul(60_000));
            let _ = write!(
                o,
                "<text x=\"{x0:.1}\" y=\"{}\">{}</text>",
                H - 8.0,
                &t[..5]
            );
        }
    }
    let mut pts = format!("{L},{:.1}", y(0.0, max_c));
    for (i, c) in spent.iter().enumerate() {
        let _ = write!(pts, " {:.1},{:.1}", L + (i + 1) as f64 * bw, y(*c, max_c));
    }
    let _ = write!(
        o,
        "<polyline points=\"{pts}\" fill=\"none\" stroke=\"#1f7a3d\" stroke-width=\"2\"></polyline>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>\
         <text x=\"{}\" y=\"{}\">{}</text><text x=\"{}\" y=\"{}\">$0</text></svg>",
        L - 6.0,
        T + 10.0,
        size(max_b as u64),
        L - 6.0,
        T + ph,
        W - R + 6.0,
        T + 10.0,
        money(max_c),
        W - R + 6.0,
        T + ph,
    );
}

fn chart_view(o: &mut String, b: &[Minute]) {
    let hours = b.len() as u64 * CHART_BUCKET_MINS / 60;
    let total: f64 = b.iter().map(|m| m.cost).sum();
    let bytes: u64 = b.iter().map(|m| m.wire_up + m.wire_down).sum();
    let _ = write!(o, "<h2>Last {hours} hours</h2>");
    chart(o, b);
    let _ = write!(
        o,
        "<p class=\"legend\"><span class=\"key down\"></span> down <span class=\"key up\"></span> up: wire bytes per {CHART_BUCKET_MINS} min (left axis); <span class=\"key money\"></span> money spent since the chart's start (right axis). <span id=\"chart-total\">{} and {} in these hours.</span></p>",
        size(bytes),
        money(total)
    );
}

/// The whole page as first served.
pub fn page(s: &Snapshot, history: &[Minute]) -> String {
    let mut o = String::with_capacity(16 * 1024);
    let _ = write!(
        o,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>straw: the link</title><style>{STYLE}</style></head>\n\
         <body data-live=\"0\"><header><h1>straw</h1><span id=\"server\">client \u{2192} {}</span><span id=\"updated\">as of {} UTC (reload for news: live updates need JavaScript)</span></header>\n<div id=\"banner\" role=\"status\">",
        esc(&s.server),
        clock(s.taken_unix_ms)
    );
    match s.link.state {
        LinkState::Down => {
            let note = s
                .link
                .note
                .as_deref()
                .map_or(String::new(), |n| format!(": {}", esc(n)));
            let _ = write!(o, "<p class=\"bad\">Link DOWN{note}.</p>");
        }
        LinkState::Dialling => o.push_str("<p>Dialling the link\u{2026}</p>"),
        LinkState::Up => {}
    }
    if s.money.budget_reached {
        let _ = write!(
            o,
            "<p class=\"bad\" id=\"budget\">This call's budget of ${:.2} is spent: new transfers (POP3 RETR, IMAP message bodies, SMTP sending) wait for the next call.</p>",
            s.money.budget_per_call.unwrap_or_default()
        );
    }
    o.push_str("</div>\n<main><section class=\"card\" id=\"link\">");
    link(&mut o, s);
    o.push_str("</section>\n<section class=\"card\" id=\"money\">");
    money_view(&mut o, s);
    o.push_str("</section>\n<section class=\"card wide\" id=\"streams\">");
    streams(&mut o, s);
    o.push_str("</section>\n<section class=\"card wide\" id=\"chart\">");
    chart_view(&mut o, history);
    o.push_str("</section>\n<section class=\"card wide\" id=\"recent\">");
    recent(&mut o, s);
    o.push_str("</section>\n<section class=\"card wide\" id=\"held\">");
    held(&mut o, s);
    let _ = write!(
        o,
        "</section></main>\n<script>{SCRIPT}</script></body></html>\n"
    );
    o
}
