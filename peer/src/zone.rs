//! Wall-clock time for the `times` / `times_location` limits of user JWTs.
//!
//! A user JWT can restrict connecting to daily windows ("08:00:00" to
//! "17:00:00") in an IANA zone, or in the server's local zone when no zone is
//! named. nats-server resolves zones with Go's `time.LoadLocation`, i.e. from
//! the system tz database; this module reads the same files (TZif, including
//! the POSIX rule in their footer) so Tern opens and closes the same windows,
//! without a time-zone dependency.

use std::path::{Path, PathBuf};

/// Resolves UTC offsets, so the connect-time decision can be tested with a
/// fixed zone and run in production against the system tz database.
pub trait Zones: Send + Sync {
    /// Seconds east of UTC in `location` at the instant `unix`; `""` is the
    /// server's local zone. `None` when the location is unknown (nats-server
    /// refuses such a JWT as invalid).
    fn offset_at(&self, location: &str, unix: i64) -> Option<i64>;
}

/// Every location is UTC and only `""`/`"UTC"` exist: for tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct Utc;

impl Zones for Utc {
    fn offset_at(&self, location: &str, _unix: i64) -> Option<i64> {
        matches!(location, "" | "UTC").then_some(0)
    }
}

/// A fixed offset for every location, and every location exists: for tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct FixedOffset(pub i64);

impl Zones for FixedOffset {
    fn offset_at(&self, _location: &str, _unix: i64) -> Option<i64> {
        Some(self.0)
    }
}

/// The system tz database, found where Go looks for it (`$ZONEINFO`, then
/// `/usr/share/zoneinfo` and the other Unix locations); the local zone
/// follows `$TZ`, else `/etc/localtime`, else UTC, as in Go.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemZones;

const ZONE_DIRS: [&str; 4] = [
    "/usr/share/zoneinfo/",
    "/usr/share/lib/zoneinfo/",
    "/usr/lib/locale/TZ/",
    "/etc/zoneinfo/",
];

impl SystemZones {
    fn load(location: &str) -> Option<Tz> {
        match location {
            "UTC" => Some(Tz::utc()),
            "" | "Local" => Some(Self::local()),
            name => {
                if name.contains("..") || name.starts_with('/') || name.starts_with('\\') {
                    return None;
                }
                Self::from_dirs(name)
            }
        }
    }

    fn from_dirs(name: &str) -> Option<Tz> {
        let env = std::env::var_os("ZONEINFO").map(PathBuf::from);
        env.into_iter()
            .chain(ZONE_DIRS.iter().map(PathBuf::from))
            .find_map(|dir| Tz::read(&dir.join(name)))
    }

    fn local() -> Tz {
        match std::env::var("TZ") {
            Err(_) => Tz::read(Path::new("/etc/localtime")).unwrap_or_else(Tz::utc),
            Ok(tz) => {
                let tz = tz.strip_prefix(':').unwrap_or(&tz);
                if tz.is_empty() || tz == "UTC" {
                    Tz::utc()
                } else if tz.starts_with('/') {
                    Tz::read(Path::new(tz)).unwrap_or_else(Tz::utc)
                } else {
                    Self::from_dirs(tz).unwrap_or_else(Tz::utc)
                }
            }
        }
    }
}

impl Zones for SystemZones {
    fn offset_at(&self, location: &str, unix: i64) -> Option<i64> {
        Self::load(location).map(|tz| tz.offset_at(unix))
    }
}

/// Parses a `times` bound in Go's `15:04:05` layout: hour of one or two
/// digits, two-digit minutes and seconds, optionally a fraction of a second
/// (Go accepts one), nothing else. Returns seconds since midnight.
pub fn parse_clock(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digit = |i: usize| {
        b.get(i)
            .filter(|c| c.is_ascii_digit())
            .map(|c| (c - b'0') as i64)
    };
    let mut i = 0;
    let mut hour = digit(i)?;
    i += 1;
    if let Some(d) = digit(i) {
        hour = hour * 10 + d;
        i += 1;
    }
    let two = |i: &mut usize| -> Option<i64> {
        if b.get(*i) != Some(&b':') {
            return None;
        }
        let v = digit(*i + 1)? * 10 + digit(*i + 2)?;
        *i += 3;
        Some(v)
    };
    let minute = two(&mut i)?;
    let second = two(&mut i)?;
    if b.get(i) == Some(&b'.') && digit(i + 1).is_some() {
        i += 1;
        while digit(i).is_some() {
            i += 1;
        }
    }
    (i == b.len() && hour < 24 && minute < 60 && second < 60)
        .then_some(hour * 3600 + minute * 60 + second)
}

/// One zone: its transitions and the POSIX rule for instants after them.
#[derive(Debug, Clone)]
struct Tz {
    transitions: Vec<i64>,
    indices: Vec<u8>,
    /// (offset east of UTC, is DST)
    types: Vec<(i64, bool)>,
    rule: Option<Rule>,
}

impl Tz {
    fn utc() -> Tz {
        Tz {
            transitions: Vec::new(),
            indices: Vec::new(),
            types: vec![(0, false)],
            rule: None,
        }
    }

    fn read(path: &Path) -> Option<Tz> {
        let data = std::fs::read(path).ok()?;
        if data.len() > 1 << 20 {
            return None;
        }
        Tz::parse(&data)
    }

    fn parse(data: &[u8]) -> Option<Tz> {
        let header = |at: usize| -> Option<(u8, [usize; 6])> {
            let h = data.get(at..at + 44)?;
            if &h[..4] != b"TZif" {
                return None;
            }
            let mut n = [0usize; 6];
            for (k, v) in n.iter_mut().enumerate() {
                let o = 20 + 4 * k;
                *v = u32::from_be_bytes(h[o..o + 4].try_into().ok()?) as usize;
            }
            Some((h[4], n))
        };
        let (version, n) = header(0)?;
        let [isut, isstd, leap, time, typ, chars] = n;
        let v1_len = time * 5 + typ * 6 + chars + leap * 8 + isstd + isut;
        if version == 0 {
            return Tz::body(data.get(44..)?, n, 4, None);
        }
        let at = 44 + v1_len;
        let (_, n2) = header(at)?;
        let [isut, isstd, leap, time, typ, chars] = n2;
        let body = data.get(at + 44..)?;
        let v2_len = time * 9 + typ * 6 + chars + leap * 12 + isstd + isut;
        let footer = body.get(v2_len..).and_then(|f| {
            let f = std::str::from_utf8(f).ok()?;
            let f = f.strip_prefix('\n')?;
            Rule::parse(&f[..f.find('\n')?])
        });
        Tz::body(body, n2, 8, footer)
    }

    fn body(b: &[u8], n: [usize; 6], width: usize, rule: Option<Rule>) -> Option<Tz> {
        let [_, _, _, time, typ, _] = n;
        // Check the counts against the data before allocating for them.
        if typ == 0 || b.len() < time * (width + 1) + typ * 6 {
            return None;
        }
        let mut at = 0;
        let mut transitions = Vec::with_capacity(time);
        for _ in 0..time {
            let t = b.get(at..at + width)?;
            transitions.push(if width == 8 {
                i64::from_be_bytes(t.try_into().ok()?)
            } else {
                i32::from_be_bytes(t.try_into().ok()?) as i64
            });
            at += width;
        }
        let indices = b.get(at..at + time)?.to_vec();
        at += time;
        if indices.iter().any(|&i| i as usize >= typ) {
            return None;
        }
        let mut types = Vec::with_capacity(typ);
        for _ in 0..typ {
            let t = b.get(at..at + 6)?;
            types.push((
                i32::from_be_bytes(t[..4].try_into().ok()?) as i64,
                t[4] != 0,
            ));
            at += 6;
        }
        Some(Tz {
            transitions,
            indices,
            types,
            rule,
        })
    }

    fn offset_at(&self, unix: i64) -> i64 {
        let first = || self.types.iter().find(|t| !t.1).unwrap_or(&self.types[0]).0;
        match self.transitions.last() {
            None => self.rule.as_ref().map_or_else(first, |r| r.offset_at(unix)),
            Some(&last) if unix >= last && self.rule.is_some() => {
                self.rule.as_ref().map_or(0, |r| r.offset_at(unix))
            }
            Some(_) if unix < self.transitions[0] => first(),
            Some(_) => {
                let i = self.transitions.partition_point(|&t| t <= unix) - 1;
                self.types[self.indices[i] as usize].0
            }
        }
    }
}

/// A POSIX TZ rule such as `CET-1CEST,M3.5.0,M10.5.0/3`.
#[derive(Debug, Clone)]
struct Rule {
    std: i64,
    /// (DST offset, start, end) when the zone observes DST.
    dst: Option<(i64, RuleDate, i64, RuleDate, i64)>,
}

#[derive(Debug, Clone, Copy)]
enum RuleDate {
    /// `Jn`: day 1..=365, February 29 never counted.
    Julian(i64),
    /// `n`: day 0..=365, February 29 counted.
    Day(i64),
    /// `Mm.w.d`: day `d` of week `w` (5 = last) of month `m`.
    Month(i64, i64, i64),
}

impl Rule {
    fn parse(s: &str) -> Option<Rule> {
        let mut p = Parser {
            s: s.as_bytes(),
            i: 0,
        };
        p.name()?;
        let std = -p.offset()?;
        if p.done() {
            return Some(Rule { std, dst: None });
        }
        p.name()?;
        let dst_off = if p.peek().is_some_and(|c| c != b',') {
            -p.offset()?
        } else {
            std + 3600
        };
        let (start, start_t, end, end_t) = if p.done() {
            // tzcode's default rules when a DST zone names none.
            (
                RuleDate::Month(3, 2, 0),
                7200,
                RuleDate::Month(11, 1, 0),
                7200,
            )
        } else {
            p.eat(b',')?;
            let start = p.date()?;
            let start_t = p.time_suffix()?;
            p.eat(b',')?;
            let end = p.date()?;
            let end_t = p.time_suffix()?;
            (start, start_t, end, end_t)
        };
        p.done().then_some(Rule {
            std,
            dst: Some((dst_off, start, start_t, end, end_t)),
        })
    }

    fn offset_at(&self, unix: i64) -> i64 {
        let Some((dst, start, start_t, end, end_t)) = self.dst else {
            return self.std;
        };
        let year = civil_from_days((unix + self.std).div_euclid(86400)).0;
        let year_start = days_from_civil(year, 1, 1) * 86400;
        let begin = year_start + start.day_of_year(year) * 86400 + start_t - self.std;
        let finish = year_start + end.day_of_year(year) * 86400 + end_t - dst;
        let in_dst = if begin < finish {
            begin <= unix && unix < finish
        } else {
            !(finish <= unix && unix < begin)
        };
        if in_dst {
            dst
        } else {
            self.std
        }
    }
}

impl RuleDate {
    /// Zero-based day of the year this rule picks in `year`.
    fn day_of_year(self, year: i64) -> i64 {
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        match self {
            RuleDate::Julian(n) => n - 1 + i64::from(leap && n >= 60),
            RuleDate::Day(n) => n,
            RuleDate::Month(m, w, d) => {
                let first = days_from_civil(year, m, 1);
                let year_start = days_from_civil(year, 1, 1);
                // 1970-01-01 was a Thursday (4).
                let dow = (first + 4).rem_euclid(7);
                let mut day = (d - dow).rem_euclid(7) + (w - 1) * 7;
                let len = days_from_civil(year + i64::from(m == 12), m % 12 + 1, 1) - first;
                while day >= len {
                    day -= 7;
                }
                first - year_start + day
            }
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn done(&self) -> bool {
        self.i == self.s.len()
    }
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek() == Some(c)).then(|| self.i += 1)
    }
    fn name(&mut self) -> Option<()> {
        if self.eat(b'<').is_some() {
            let end = self.s[self.i..].iter().position(|&c| c == b'>')?;
            self.i += end + 1;
            return Some(());
        }
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
            self.i += 1;
        }
        (self.i - start >= 3).then_some(())
    }
    fn number(&mut self) -> Option<i64> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) && self.i - start < 4 {
            self.i += 1;
        }
        std::str::from_utf8(&self.s[start..self.i])
            .ok()?
            .parse()
            .ok()
    }
    /// `[+-]hh[:mm[:ss]]` in seconds, sign as written.
    fn offset(&mut self) -> Option<i64> {
        let sign = match self.peek() {
            Some(b'-') => {
                self.i += 1;
                -1
            }
            Some(b'+') => {
                self.i += 1;
                1
            }
            _ => 1,
        };
        let mut secs = self.number()? * 3600;
        for scale in [60, 1] {
            if self.eat(b':').is_none() {
                break;
            }
            secs += self.number()? * scale;
        }
        Some(sign * secs)
    }
    fn time_suffix(&mut self) -> Option<i64> {
        if self.eat(b'/').is_some() {
            self.offset()
        } else {
            Some(7200)
        }
    }
    fn date(&mut self) -> Option<RuleDate> {
        match self.peek()? {
            b'J' => {
                self.i += 1;
                let n = self.number()?;
                (1..=365).contains(&n).then_some(RuleDate::Julian(n))
            }
            b'M' => {
                self.i += 1;
                let m = self.number()?;
                self.eat(b'.')?;
                let w = self.number()?;
                self.eat(b'.')?;
                let d = self.number()?;
                ((1..=12).contains(&m) && (1..=5).contains(&w) && (0..=6).contains(&d))
                    .then_some(RuleDate::Month(m, w, d))
            }
            _ => {
                let n = self.number()?;
                (0..=365).contains(&n).then_some(RuleDate::Day(n))
            }
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm), so no calendar dependency is needed.
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// The date of a day count since 1970-01-01: (year, month, day).
pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `2024-05-01T12:00:00Z` for a Unix time, for log lines.
pub(crate) fn rfc3339(unix: i64) -> String {
    let (y, m, d) = civil_from_days(unix.div_euclid(86400));
    let s = unix.rem_euclid(86400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i64, m: i64, d: i64, hh: i64, mm: i64) -> i64 {
        days_from_civil(y, m, d) * 86400 + hh * 3600 + mm * 60
    }

    #[test]
    fn clock_parsing_follows_go_layout() {
        assert_eq!(parse_clock("08:00:00"), Some(8 * 3600));
        assert_eq!(parse_clock("8:05:09"), Some(8 * 3600 + 5 * 60 + 9));
        assert_eq!(parse_clock("23:59:59.5"), Some(86399));
        for bad in [
            "",
            "24:00:00",
            "08:00",
            "08:0:00",
            "08:00:60",
            "08:00:00 ",
            "008:00:00",
            "x",
        ] {
            assert_eq!(parse_clock(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn calendar_round_trips() {
        for z in [-800_000, -1, 0, 1, 19_000, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn posix_rules() {
        let berlin = Rule::parse("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        assert_eq!(berlin.offset_at(at(2031, 1, 15, 12, 0)), 3600);
        assert_eq!(berlin.offset_at(at(2031, 7, 15, 12, 0)), 7200);
        // 2031-03-30 is the last Sunday of March: 01:00 UTC switches.
        assert_eq!(berlin.offset_at(at(2031, 3, 30, 0, 59)), 3600);
        assert_eq!(berlin.offset_at(at(2031, 3, 30, 1, 0)), 7200);
        let sydney = Rule::parse("AEST-10AEDT,M10.1.0,M4.1.0/3").unwrap();
        assert_eq!(sydney.offset_at(at(2031, 1, 15, 0, 0)), 11 * 3600);
        assert_eq!(sydney.offset_at(at(2031, 7, 15, 0, 0)), 10 * 3600);
        let ny = Rule::parse("EST5EDT").unwrap();
        assert_eq!(ny.offset_at(at(2031, 7, 1, 0, 0)), -4 * 3600);
        let fixed = Rule::parse("<+0530>-5:30").unwrap();
        assert_eq!(fixed.offset_at(0), 5 * 3600 + 1800);
        assert!(Rule::parse("X1").is_none());
    }

    #[test]
    fn system_database_when_present() {
        assert_eq!(SystemZones.offset_at("UTC", 0), Some(0));
        assert_eq!(SystemZones.offset_at("../etc/passwd", 0), None);
        assert_eq!(SystemZones.offset_at("No/Such_Zone", 0), None);
        if Path::new("/usr/share/zoneinfo/Europe/Berlin").exists() {
            let summer = at(2024, 7, 1, 12, 0);
            let winter = at(2024, 1, 1, 12, 0);
            assert_eq!(SystemZones.offset_at("Europe/Berlin", summer), Some(7200));
            assert_eq!(SystemZones.offset_at("Europe/Berlin", winter), Some(3600));
            // Past the last transition the footer rule answers.
            assert_eq!(
                SystemZones.offset_at("Europe/Berlin", at(2100, 7, 1, 0, 0)),
                Some(7200)
            );
            assert_eq!(SystemZones.offset_at("Asia/Kolkata", summer), Some(19800));
            assert_eq!(
                SystemZones.offset_at("America/New_York", winter),
                Some(-5 * 3600)
            );
        }
    }
}
