//! The monitoring HTTP server: nats-server's /varz, /connz, /subsz,
//! /healthz and /routez with the same field names and units, plus
//! Prometheus text at /metrics.

use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

use crate::server::Server;
use crate::web::monitor_http::{bad_request, MonitorListener, Params};

/// Serves monitoring on `listener` until the process ends. Every method is
/// answered as GET (HEAD without a body), as nats-server does; connections
/// are capped and time out (see [`crate::web::monitor_http`]).
pub async fn serve(
    server: Arc<Server>,
    listener: TcpListener,
    tls: Option<transport::tls::TlsAcceptor>,
) {
    let app = Router::new()
        .route("/", any(root))
        .route("/varz", any(varz))
        .route("/connz", any(connz))
        .route("/subsz", any(subsz))
        .route("/subscriptionsz", any(subsz))
        .route("/healthz", any(healthz))
        .route("/routez", any(routez))
        .route("/metrics", any(metrics))
        .fallback(crate::web::monitor_http::fallback)
        .with_state(server);
    let cap = crate::web::monitor_http::connection_cap();
    tracing::debug!(cap, "monitoring connection cap");
    let listener = MonitorListener::new(listener, cap, tls);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "monitoring server stopped");
    }
}

/// A port option as configured: `-1` for a random port, 0 when unset.
fn configured_port(p: Option<u16>) -> i32 {
    match p {
        Some(0) => -1,
        Some(p) => i32::from(p),
        None => 0,
    }
}

/// RFC 3339 with nanoseconds in UTC, as Go's time.Time marshals.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// nats-server's uptime format: `1d2h3m4s`, leading zero units left out.
pub fn uptime(d: Duration) -> String {
    let mut s = d.as_secs();
    let (days, hours, mins);
    days = s / 86400;
    s %= 86400;
    hours = s / 3600;
    s %= 3600;
    mins = s / 60;
    s %= 60;
    let mut out = String::new();
    if days > 0 {
        out.push_str(&format!("{days}d"));
    }
    if days > 0 || hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if days > 0 || hours > 0 || mins > 0 {
        out.push_str(&format!("{mins}m"));
    }
    out.push_str(&format!("{s}s"));
    out
}

/// A JSON answer as nats-server writes it: indented, any origin allowed.
fn json_response(v: &Value) -> Response {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        body,
    )
        .into_response()
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos() as u64
}

async fn root() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<html><body><h1>Tern</h1><a href=varz>varz</a> <a href=connz>connz</a> \
         <a href=routez>routez</a> <a href=subsz>subsz</a> <a href=healthz>healthz</a> \
         <a href=metrics>metrics</a></body></html>",
    )
}

fn process_memory() -> u64 {
    // Resident set size from /proc; 0 where unavailable.
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The /varz document.
pub fn varz_value(s: &Server) -> Value {
    // The current options: a config reload changes limits and auth.
    let live = s.live();
    let o = &*live;
    let t = &s.traffic;
    let addr = *s.client_addr.lock();
    json!({
        "server_id": s.info.server_id,
        "server_name": s.info.server_name,
        "version": s.info.version,
        "proto": 1,
        "go": s.info.go,
        "host": o.host.to_string(),
        "port": addr.map(|a| a.port()).unwrap_or(o.port),
        "auth_required": o.auth.announce_required(),
        "tls_required": o.tls.is_some() && !o.allow_non_tls,
        "tls_verify": o.tls.as_ref().is_some_and(|t| t.settings.verify),
        "tls_timeout": o.tls.as_ref().map_or(0.0, |t| t.timeout.as_secs_f64()),
        "max_connections": o.max_connections,
        "ping_interval": nanos(o.ping_interval),
        "ping_max": o.ping_max,
        "http_host": o.http_host.unwrap_or(o.host).to_string(),
        // The configured ports, as nats-server reports them (-1: random).
        "http_port": configured_port(o.http_port),
        "https_port": configured_port(o.https_port),
        "auth_timeout": o.auth_timeout().as_secs_f64(),
        "max_control_line": o.max_control_line,
        "max_payload": o.max_payload,
        "max_pending": o.max_pending,
        "max_subscriptions": o.max_subscriptions,
        "write_deadline": nanos(o.write_deadline),
        "lame_duck_duration": nanos(o.lame_duck_duration),
        "lame_duck_grace_period": nanos(o.lame_duck_grace_period),
        "start": rfc3339(s.start),
        "now": rfc3339(SystemTime::now()),
        "uptime": uptime(s.started.elapsed()),
        "mem": process_memory(),
        "cores": cores(),
        "gomaxprocs": cores(),
        "connections": s.clients.lock().len(),
        "total_connections": t.total_connections.load(Ordering::Relaxed),
        "routes": s.cluster.get().map_or(0, |c| c.links().len()),
        "remotes": 0,
        "leafnodes": 0,
        "in_msgs": t.in_msgs.load(Ordering::Relaxed),
        "out_msgs": t.out_msgs.load(Ordering::Relaxed),
        "in_bytes": t.in_bytes.load(Ordering::Relaxed),
        "out_bytes": t.out_bytes.load(Ordering::Relaxed),
        "slow_consumers": t.slow_consumers.load(Ordering::Relaxed),
        "subscriptions": s.sublist.count(),
        "config_load_time": rfc3339(s.start),
    })
}

async fn varz(State(s): State<Arc<Server>>) -> Response {
    json_response(&varz_value(&s))
}

/// Query parameters of /connz, as nats-server names and decodes them.
#[derive(Debug, Default)]
pub struct ConnzQuery {
    sort: String,
    subs: bool,
    offset: usize,
    /// 0 means the default page size.
    limit: usize,
    state: String,
    cid: Option<u64>,
    /// `auth=true`: show who each connection authenticated as.
    auth: bool,
}

/// nats-server's page size when `limit` is absent, zero or negative.
const DEFAULT_LIMIT: usize = 1024;

impl ConnzQuery {
    /// Decodes and checks the parameters; `Err` is the 400 reason.
    pub fn from_params(p: &Params) -> Result<Self, String> {
        let sort = p.get("sort").unwrap_or("cid").to_owned();
        let subs = match p.get("subs") {
            Some("detail") => true,
            _ => p.bool("subs")?,
        };
        let auth = p.bool("auth")?;
        let offset = p.int("offset")?.max(0) as usize;
        let limit = p.int("limit")?.max(0) as usize;
        let cid = p.get("cid").map(|_| p.uint("cid")).transpose()?;
        let state = match p.get("state").map(str::to_ascii_lowercase) {
            None => "open".to_owned(),
            Some(s) if matches!(s.as_str(), "open" | "closed" | "any" | "all") => s,
            Some(s) => return Err(format!("invalid connection state: {s:?}")),
        };
        const SORTS: [&str; 14] = [
            "cid",
            "start",
            "subs",
            "pending",
            "msgs_to",
            "msgs_from",
            "bytes_to",
            "bytes_from",
            "last",
            "idle",
            "uptime",
            "rtt",
            "stop",
            "reason",
        ];
        if !SORTS.contains(&sort.as_str()) {
            return Err(format!("invalid sorting option: {sort}"));
        }
        if (sort == "stop" || sort == "reason") && state != "closed" {
            return Err(format!(
                "sort by {sort} is only valid for closed connections"
            ));
        }
        Ok(ConnzQuery {
            sort,
            subs,
            offset,
            limit,
            state,
            cid,
            auth,
        })
    }
}

/// One connection as /connz shows it.
#[derive(Debug, Serialize)]
struct ConnInfo {
    cid: u64,
    kind: &'static str,
    #[serde(rename = "type")]
    typ: &'static str,
    ip: String,
    port: u16,
    start: String,
    last_activity: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    uptime: String,
    idle: String,
    pending_bytes: usize,
    in_msgs: u64,
    out_msgs: u64,
    in_bytes: u64,
    out_bytes: u64,
    subscriptions: usize,
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    lang: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    version: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    tls_version: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    tls_cipher_suite: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    authorized_user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscriptions_list: Option<Vec<String>>,
    #[serde(skip)]
    sort_start: SystemTime,
    #[serde(skip)]
    sort_last: SystemTime,
    #[serde(skip)]
    sort_stop: Option<SystemTime>,
}

/// The /connz document for `q`.
pub fn connz_value(s: &Server, q: &ConnzQuery) -> Result<Value, String> {
    let now = SystemTime::now();
    let with_subs = q.subs;
    let state = q.state.as_str();
    let mut conns: Vec<ConnInfo> = Vec::new();
    if state == "open" || state == "any" || state == "all" {
        let clients: Vec<_> = s.clients.lock().values().cloned().collect();
        for c in clients {
            let meta = c.meta.lock().clone();
            let subs = c.subs.lock();
            let totals = c.out.totals();
            let last = c.last_activity();
            conns.push(ConnInfo {
                cid: c.cid,
                kind: "Client",
                typ: "nats",
                ip: c.addr.ip().to_string(),
                port: c.addr.port(),
                start: rfc3339(c.start),
                last_activity: rfc3339(last),
                stop: None,
                reason: None,
                uptime: uptime(now.duration_since(c.start).unwrap_or_default()),
                idle: uptime(now.duration_since(last).unwrap_or_default()),
                pending_bytes: c.out.pending_bytes(),
                in_msgs: c.in_msgs.load(Ordering::Relaxed),
                out_msgs: totals.msgs,
                in_bytes: c.in_bytes.load(Ordering::Relaxed),
                out_bytes: totals.bytes,
                subscriptions: subs.len(),
                name: meta.name,
                lang: meta.lang,
                version: meta.version,
                tls_version: c.tls.get().map_or("", |t| t.version),
                tls_cipher_suite: c.tls.get().map(|t| t.cipher.clone()).unwrap_or_default(),
                authorized_user: meta.user.filter(|_| q.auth),
                account: c.account.lock().clone().filter(|_| q.auth),
                subscriptions_list: with_subs.then(|| {
                    subs.values()
                        .map(|s| String::from_utf8_lossy(&s.subject).into_owned())
                        .collect()
                }),
                sort_start: c.start,
                sort_last: last,
                sort_stop: None,
            });
        }
    }
    if state == "closed" || state == "any" || state == "all" {
        for c in s.closed.lock().iter() {
            conns.push(ConnInfo {
                cid: c.cid,
                kind: "Client",
                typ: "nats",
                ip: c.addr.ip().to_string(),
                port: c.addr.port(),
                start: rfc3339(c.start),
                last_activity: rfc3339(c.stop),
                stop: Some(rfc3339(c.stop)),
                reason: Some(c.reason.to_owned()),
                uptime: uptime(c.stop.duration_since(c.start).unwrap_or_default()),
                idle: uptime(now.duration_since(c.stop).unwrap_or_default()),
                pending_bytes: c.pending_bytes,
                in_msgs: c.in_msgs,
                out_msgs: c.out_msgs,
                in_bytes: c.in_bytes,
                out_bytes: c.out_bytes,
                subscriptions: 0,
                name: c.name.clone(),
                lang: c.lang.clone(),
                version: c.version.clone(),
                tls_version: c.tls_version,
                tls_cipher_suite: c.tls_cipher.clone(),
                authorized_user: c.user.clone().filter(|_| q.auth),
                account: c.account.clone().filter(|_| q.auth),
                subscriptions_list: with_subs.then(Vec::new),
                sort_start: c.start,
                sort_last: c.stop,
                sort_stop: Some(c.stop),
            });
        }
    }
    if let Some(cid) = q.cid {
        conns.retain(|c| c.cid == cid);
    }
    match q.sort.as_str() {
        // Tern does not measure client RTT; `rtt` keeps connection order.
        "cid" | "rtt" => conns.sort_by_key(|c| c.cid),
        "start" => conns.sort_by_key(|c| c.sort_start),
        "subs" => conns.sort_by_key(|c| std::cmp::Reverse(c.subscriptions)),
        "pending" => conns.sort_by_key(|c| std::cmp::Reverse(c.pending_bytes)),
        "msgs_to" => conns.sort_by_key(|c| std::cmp::Reverse(c.out_msgs)),
        "msgs_from" => conns.sort_by_key(|c| std::cmp::Reverse(c.in_msgs)),
        "bytes_to" => conns.sort_by_key(|c| std::cmp::Reverse(c.out_bytes)),
        "bytes_from" => conns.sort_by_key(|c| std::cmp::Reverse(c.in_bytes)),
        "last" => conns.sort_by_key(|c| std::cmp::Reverse(c.sort_last)),
        "idle" => conns.sort_by_key(|c| c.sort_last),
        "uptime" => conns.sort_by_key(|c| c.sort_start),
        "stop" => conns.sort_by_key(|c| std::cmp::Reverse(c.sort_stop)),
        "reason" => conns.sort_by(|a, b| a.reason.cmp(&b.reason)),
        other => return Err(format!("invalid sorting option: {other}")),
    }
    let total = conns.len();
    let offset = q.offset;
    let limit = if q.limit == 0 { DEFAULT_LIMIT } else { q.limit };
    let page: Vec<ConnInfo> = conns.into_iter().skip(offset).take(limit).collect();
    Ok(json!({
        "server_id": s.info.server_id,
        "now": rfc3339(now),
        "num_connections": page.len(),
        "total": total,
        "offset": offset,
        "limit": limit,
        "connections": page,
    }))
}

async fn connz(State(s): State<Arc<Server>>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw.as_deref());
    match ConnzQuery::from_params(&params).and_then(|q| connz_value(&s, &q)) {
        Ok(v) => json_response(&v),
        Err(e) => bad_request(e),
    }
}

async fn subsz(State(s): State<Arc<Server>>, RawQuery(raw): RawQuery) -> Response {
    let p = Params::parse(raw.as_deref());
    let checked = (|| -> Result<(usize, usize), String> {
        p.bool("subs")?;
        let offset = p.int("offset")?.max(0) as usize;
        let limit = p.int("limit")?.max(0) as usize;
        if let Some(t) = p.get("test") {
            if !crate::subject::valid_publish_subject(t.as_bytes()) {
                return Err(format!("invalid test subject, not a publish subject: {t}"));
            }
        }
        Ok((offset, if limit == 0 { DEFAULT_LIMIT } else { limit }))
    })();
    let (offset, limit) = match checked {
        Ok(v) => v,
        Err(e) => return bad_request(e),
    };
    let mut v = serde_json::to_value(s.sublist.stats()).unwrap_or_else(|_| json!({}));
    if let Some(m) = v.as_object_mut() {
        m.insert("server_id".into(), json!(s.info.server_id));
        m.insert("now".into(), json!(rfc3339(SystemTime::now())));
        // Tern does not list subscriptions here; the page is always empty.
        m.insert("total".into(), json!(0));
        m.insert("offset".into(), json!(offset));
        m.insert("limit".into(), json!(limit));
    }
    json_response(&v)
}

async fn healthz(RawQuery(raw): RawQuery) -> Response {
    let p = Params::parse(raw.as_deref());
    for key in [
        "js-enabled",
        "js-enabled-only",
        "js-server-only",
        "js-meta-only",
        "details",
    ] {
        if let Err(e) = p.bool(key) {
            return bad_request(e);
        }
    }
    json_response(&json!({"status": "ok"}))
}

/// Query parameters of /routez.
#[derive(Debug, Default)]
pub struct RoutezQuery {
    subs: bool,
}

impl RoutezQuery {
    /// Decodes `subs` (a boolean or `detail`); `Err` is the 400 reason.
    pub fn from_params(p: &Params) -> Result<Self, String> {
        let subs = match p.get("subs") {
            Some("detail") => true,
            _ => p.bool("subs")?,
        };
        Ok(RoutezQuery { subs })
    }
}

/// The /routez document: one entry per cluster link.
pub fn routez_value(s: &Server, q: &RoutezQuery) -> Value {
    let now = SystemTime::now();
    let links = s.cluster.get().map(|c| c.links()).unwrap_or_default();
    let routes: Vec<Value> = links
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let addr = l.quic.remote_addr();
            let mut r = json!({
                "rid": i + 1,
                "remote_id": l.node_id,
                "remote_name": l.server_name,
                "did_solicit": l.dialed_by_me,
                "is_configured": l.dialed_by_me,
                "ip": addr.ip().to_string(),
                "port": addr.port(),
                "start": rfc3339(l.started),
                "uptime": uptime(now.duration_since(l.started).unwrap_or_default()),
                "rtt": format!("{:?}", l.quic.rtt()),
                "pending_size": 0,
                "in_msgs": l.in_msgs.load(Ordering::Relaxed),
                "out_msgs": l.out_msgs.load(Ordering::Relaxed),
                "in_bytes": l.in_bytes.load(Ordering::Relaxed),
                "out_bytes": l.out_bytes.load(Ordering::Relaxed),
                "dropped_msgs": l.dropped.load(Ordering::Relaxed),
                "subscriptions": l.remote_subscriptions(),
                "cluster_url": l.cluster_url,
                "client_url": l.client_url,
            });
            if q.subs {
                r["subscriptions_list"] = json!(l.remote_subjects());
            }
            r
        })
        .collect();
    json!({
        "server_id": s.info.server_id,
        "server_name": s.info.server_name,
        "now": rfc3339(now),
        "num_routes": routes.len(),
        "routes": routes,
    })
}

async fn routez(State(s): State<Arc<Server>>, RawQuery(raw): RawQuery) -> Response {
    match RoutezQuery::from_params(&Params::parse(raw.as_deref())) {
        Ok(q) => json_response(&routez_value(&s, &q)),
        Err(e) => bad_request(e),
    }
}

/// Prometheus text exposition of the /varz counters.
pub fn metrics_text(s: &Server) -> String {
    let t = &s.traffic;
    let gauges: [(&str, &str, &str, u64); 9] = [
        (
            "tern_connections",
            "gauge",
            "Open client connections.",
            s.clients.lock().len() as u64,
        ),
        (
            "tern_total_connections",
            "counter",
            "Client connections accepted since start.",
            t.total_connections.load(Ordering::Relaxed),
        ),
        (
            "tern_subscriptions",
            "gauge",
            "Subscriptions in the trie.",
            s.sublist.count() as u64,
        ),
        (
            "tern_in_msgs_total",
            "counter",
            "Messages received from clients and cluster links.",
            t.in_msgs.load(Ordering::Relaxed),
        ),
        (
            "tern_out_msgs_total",
            "counter",
            "Messages delivered to clients and cluster links.",
            t.out_msgs.load(Ordering::Relaxed),
        ),
        (
            "tern_in_bytes_total",
            "counter",
            "Payload and header bytes received from clients and cluster links.",
            t.in_bytes.load(Ordering::Relaxed),
        ),
        (
            "tern_out_bytes_total",
            "counter",
            "Payload and header bytes delivered to clients and cluster links.",
            t.out_bytes.load(Ordering::Relaxed),
        ),
        (
            "tern_slow_consumers_total",
            "counter",
            "Connections closed as slow consumers.",
            t.slow_consumers.load(Ordering::Relaxed),
        ),
        (
            "tern_memory_bytes",
            "gauge",
            "Resident memory of the process.",
            process_memory(),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in gauges {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    out.push_str(&format!(
        "# HELP tern_uptime_seconds Seconds since start.\n# TYPE tern_uptime_seconds gauge\ntern_uptime_seconds {}\n",
        s.started.elapsed().as_secs_f64()
    ));
    out
}

async fn metrics(State(s): State<Arc<Server>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics_text(&s),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_format_matches_nats_server() {
        assert_eq!(uptime(Duration::from_secs(5)), "5s");
        assert_eq!(uptime(Duration::from_secs(65)), "1m5s");
        assert_eq!(uptime(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(uptime(Duration::from_secs(90061)), "1d1h1m1s");
    }

    #[test]
    fn rfc3339_formats_utc() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.000000005Z");
    }
}
