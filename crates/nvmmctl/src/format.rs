//! Output formats of NetBSD's nvmmctl: `humanize_number` and `snprintb`,
//! plus `asctime`-style dates and JSON lines for the benchmarks.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `humanize_number(buf, 5, n, "", HN_AUTOSCALE, HN_DECIMAL | HN_B |
/// HN_NOSPACE)`: at most four characters, binary units, one decimal below
/// ten ("128G", "1.5K", "512B").
pub fn humanize(bytes: u64) -> String {
    const UNITS: [char; 7] = ['B', 'K', 'M', 'G', 'T', 'P', 'E'];
    if bytes < 1000 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 999.5 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value < 9.95 { format!("{value:.1}{}", UNITS[unit]) } else { format!("{value:.0}{}", UNITS[unit]) }
}

/// `snprintb` with base 16: the value in hex, then the names of its set bits
/// in angle brackets (`0x3<CPUID,TPR>`, `0x0`).
pub fn snprintb(value: u64, names: &[(u64, &str)]) -> String {
    let set: Vec<&str> = names.iter().filter(|(bit, _)| value & bit != 0).map(|(_, n)| *n).collect();
    if set.is_empty() { format!("{value:#x}") } else { format!("{value:#x}<{}>", set.join(",")) }
}

/// `asctime` without the newline, in UTC: "Tue Nov 24 14:05:09 2026".
pub fn asctime_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {}",
        WDAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        day,
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        year
    )
}

/// One JSON object on one line, from `(key, value)` pairs whose values are
/// already JSON.
pub fn json_line(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}

/// A JSON string.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number with three decimals.
pub fn json_f64(v: f64) -> String {
    if v.is_finite() { format!("{v:.3}") } else { "null".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanize_like_netbsd() {
        assert_eq!(humanize(128 << 30), "128G");
        assert_eq!(humanize(256 << 40), "256T");
        assert_eq!(humanize(1 << 40), "1.0T");
        assert_eq!(humanize(4096), "4.0K");
        assert_eq!(humanize(1536), "1.5K");
        assert_eq!(humanize(512), "512B");
        assert_eq!(humanize(0), "0B");
        assert_eq!(humanize(1023), "1.0K");
        assert!(humanize(u64::MAX).len() <= 4);
    }

    #[test]
    fn snprintb_like_netbsd() {
        assert_eq!(snprintb(0, &[(1, "CPUID")]), "0x0");
        assert_eq!(snprintb(3, &[(1, "CPUID"), (2, "TPR")]), "0x3<CPUID,TPR>");
    }

    #[test]
    fn dates() {
        assert_eq!(asctime_utc(UNIX_EPOCH), "Thu Jan  1 00:00:00 1970");
        assert_eq!(asctime_utc(UNIX_EPOCH + Duration::from_secs(1_795_532_709)), "Tue Nov 24 15:05:09 2026");
    }

    #[test]
    fn json() {
        assert_eq!(json_line(&[("a", json_str("x\"y")), ("b", json_f64(1.0))]), r#"{"a":"x\"y","b":1.000}"#);
    }
}
