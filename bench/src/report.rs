//! Results of a run, printed for people or as one JSON object for scripts.

use serde::Serialize;

use super::Scenario;

/// Request/reply round-trip latency summary, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// Summarises round trips given in nanoseconds (sorts them in place).
    pub fn from_nanos(samples: &mut [u64]) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let n = samples.len();
        // Nearest-rank percentile: the smallest sample covering p of them.
        let pct = |p: f64| {
            let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
            samples[rank - 1] as f64 / 1000.0
        };
        let sum: u128 = samples.iter().map(|&s| s as u128).sum();
        Some(Latency {
            min: samples[0] as f64 / 1000.0,
            p50: pct(0.50),
            p90: pct(0.90),
            p99: pct(0.99),
            p999: pct(0.999),
            max: samples[n - 1] as f64 / 1000.0,
            mean: sum as f64 / n as f64 / 1000.0,
        })
    }
}

/// One phase of the hol scenario: the small messages' fate and latency
/// (publisher's send to subscriber's receipt, one clock).
#[derive(Debug, Clone, Serialize)]
pub struct HolPhase {
    pub sent: u64,
    pub received: u64,
    /// Not received within a few seconds of the phase's last send.
    pub lost: u64,
    pub secs: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<Latency>,
}

/// What the hol scenario found: small-message latency without (`idle`) and
/// with (`loaded`) big messages flowing on the same path.
#[derive(Debug, Clone, Serialize)]
pub struct HolReport {
    pub small_size: usize,
    pub big_size: usize,
    pub interval_us: u64,
    pub idle: HolPhase,
    pub loaded: HolPhase,
    /// Big messages delivered during the loaded phase, and their rate.
    pub big_msgs: u64,
    pub big_msgs_per_sec: f64,
    pub big_bytes_per_sec: f64,
    /// Big messages published in all, and never delivered.
    pub big_published: u64,
    pub big_lost: u64,
    /// `--big-rate`: the big publisher's pace limit (messages per second).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub big_rate_limit: Option<f64>,
    /// Servers' `client_id`s of the two publishers (on Tern a publisher's
    /// id picks its message stream on a cluster link).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub small_pub_client_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub big_pub_client_id: Option<u64>,
}

/// The outcome of one benchmark run. `msgs_per_sec` is what the server
/// delivered to subscribers (all of them, for fanout), or what it accepted
/// for `pub`, or completed round trips for `reqrep`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub server: String,
    /// Where publishers and subscribers connected (each `server` unless
    /// given separately).
    pub pub_server: String,
    pub sub_server: String,
    pub size: usize,
    pub msgs: u64,
    pub pubs: usize,
    pub subs: usize,
    /// Seconds from the first publish to the last delivery (or last PONG).
    pub elapsed: f64,
    pub msgs_per_sec: f64,
    /// Payload bytes per second at `msgs_per_sec`.
    pub bytes_per_sec: f64,
    /// Rate at which publishers got their messages accepted (msgs / publish time).
    pub pub_msgs_per_sec: f64,
    /// Deliveries expected and seen (0 for `pub`).
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<Latency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hol: Option<HolReport>,
    /// TLS version, cipher suite and key exchange of the first handshake
    /// (absent over plain TCP), to check both servers negotiated the same.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// connect: connections set up at the same time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel: Option<usize>,
    /// Why the run ended early, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    /// A report skeleton for `cfg`; rates are filled by the scenario.
    pub(crate) fn new(cfg: &super::Config) -> Report {
        Report {
            scenario: cfg.scenario.to_string(),
            server: cfg.server.clone(),
            pub_server: cfg.pub_server.clone(),
            sub_server: cfg.sub_server.clone(),
            size: cfg.size,
            msgs: cfg.msgs,
            pubs: cfg.pubs,
            subs: cfg.subs,
            elapsed: 0.0,
            msgs_per_sec: 0.0,
            bytes_per_sec: 0.0,
            pub_msgs_per_sec: 0.0,
            expected: 0,
            delivered: 0,
            lost: 0,
            latency_us: None,
            hol: None,
            tls: if cfg.dial.is_tls() {
                Some(cfg.dial.negotiated().unwrap_or_default())
            } else {
                None
            },
            parallel: (cfg.scenario == Scenario::Connect).then_some(cfg.parallel),
            error: None,
        }
    }

    /// One line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A short summary for a terminal.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let target = if self.pub_server == self.sub_server {
            format!("against {}", self.pub_server)
        } else {
            format!("pub {} -> sub {}", self.pub_server, self.sub_server)
        };
        if let Some(h) = &self.hol {
            s.push_str(&format!(
                "tern bench hol: {} B every {:.1} ms on \"small\" while {} x {} B go on \"big\", {}\n",
                h.small_size,
                h.interval_us as f64 / 1000.0,
                group(h.big_msgs as f64),
                h.big_size,
                target
            ));
            s.push_str(&format!(
                "  big traffic   {} msgs/s  {}  ({} published, {} lost{})\n",
                group(h.big_msgs_per_sec),
                rate(h.big_bytes_per_sec),
                group(h.big_published as f64),
                group(h.big_lost as f64),
                h.big_rate_limit
                    .map(|r| format!("; paced at {r} msgs/s"))
                    .unwrap_or_default()
            ));
            for (name, p) in [("small, idle  ", &h.idle), ("small, loaded", &h.loaded)] {
                s.push_str(&format!(
                    "  {name} {}/{} received",
                    group(p.received as f64),
                    group(p.sent as f64)
                ));
                if let Some(l) = &p.latency_us {
                    s.push_str(&format!(
                        "  p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1} (us)",
                        l.p50, l.p90, l.p99, l.max
                    ));
                }
                s.push('\n');
            }
            if let (Some(i), Some(l)) = (&h.idle.latency_us, &h.loaded.latency_us) {
                s.push_str(&format!(
                    "  loaded/idle   p50 x{:.1}  p99 x{:.1}  max x{:.1}\n",
                    l.p50 / i.p50.max(1e-9),
                    l.p99 / i.p99.max(1e-9),
                    l.max / i.max.max(1e-9)
                ));
            }
            if let Some(e) = &self.error {
                s.push_str(&format!("  error         {e}\n"));
            }
            return s;
        }
        if self.scenario == Scenario::Connect.to_string() {
            s.push_str(&format!(
                "tern bench connect: {} connections, {} at a time, {}\n",
                group(self.msgs as f64),
                self.parallel.unwrap_or(1),
                target
            ));
            s.push_str(&format!("  elapsed   {:.3} s\n", self.elapsed));
            s.push_str(&format!(
                "  set-up    {} connections/s  ({} of {} succeeded)\n",
                group(self.msgs_per_sec),
                group(self.delivered as f64),
                group(self.expected as f64)
            ));
            if let Some(l) = &self.latency_us {
                s.push_str(&format!(
                    "  latency   min {:.1}  p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}  mean {:.1} (us)\n",
                    l.min, l.p50, l.p90, l.p99, l.max, l.mean
                ));
            }
            if let Some(t) = &self.tls {
                s.push_str(&format!("  tls       {t}\n"));
            }
            if let Some(e) = &self.error {
                s.push_str(&format!("  error     {e}\n"));
            }
            return s;
        }
        let who = match self.scenario.as_str() {
            "pub" => format!("{} pub", self.pubs),
            "reqrep" => "1 requester / 1 responder".to_string(),
            "queue" => format!("{} pub / {} queue subs", self.pubs, self.subs),
            _ => format!("{} pub / {} sub", self.pubs, self.subs),
        };
        s.push_str(&format!(
            "tern bench {}: {}, {} msgs x {} B {}\n",
            self.scenario,
            who,
            group(self.msgs as f64),
            self.size,
            target
        ));
        s.push_str(&format!("  elapsed   {:.3} s\n", self.elapsed));
        if self.scenario == Scenario::Reqrep.to_string() {
            s.push_str(&format!("  requests  {} req/s\n", group(self.msgs_per_sec)));
            if let Some(l) = &self.latency_us {
                s.push_str(&format!(
                    "  latency   min {:.1}  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1} (us)\n",
                    l.min, l.p50, l.p90, l.p99, l.p999, l.max, l.mean
                ));
            }
        } else {
            s.push_str(&format!(
                "  publish   {} msgs/s  {}\n",
                group(self.pub_msgs_per_sec),
                rate(self.pub_msgs_per_sec * self.size as f64)
            ));
            if self.scenario != Scenario::Pub.to_string() {
                s.push_str(&format!(
                    "  deliver   {} msgs/s  {}  ({} of {} delivered)\n",
                    group(self.msgs_per_sec),
                    rate(self.bytes_per_sec),
                    group(self.delivered as f64),
                    group(self.expected as f64)
                ));
            }
        }
        if let Some(t) = &self.tls {
            s.push_str(&format!("  tls       {t}\n"));
        }
        if self.lost > 0 {
            s.push_str(&format!(
                "  LOST      {} messages\n",
                group(self.lost as f64)
            ));
        }
        if let Some(e) = &self.error {
            s.push_str(&format!("  error     {e}\n"));
        }
        s
    }
}

/// `1234567.8` as `1,234,568`.
fn group(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes per second with a binary unit.
fn rate(bps: f64) -> String {
    const UNITS: [&str; 4] = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
    let mut v = bps;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut v: Vec<u64> = (1..=1000).map(|x| x * 1000).collect();
        let l = Latency::from_nanos(&mut v).unwrap();
        assert_eq!(
            (l.min, l.p50, l.p99, l.p999, l.max),
            (1.0, 500.0, 990.0, 999.0, 1000.0)
        );
        assert!((l.mean - 500.5).abs() < 1e-9);
        assert!(Latency::from_nanos(&mut []).is_none());
    }

    #[test]
    fn grouping() {
        assert_eq!(group(0.0), "0");
        assert_eq!(group(999.0), "999");
        assert_eq!(group(1000.0), "1,000");
        assert_eq!(group(1234567.4), "1,234,567");
        assert_eq!(rate(2048.0), "2.0 KiB/s");
    }
}
