//! Sizes (`512MiB`), durations (`60s`) and CPU counts (`0.5`) as users write them.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum UnitError {
    #[error("`{0}` is not a size: use a number with an optional unit, like 256MiB, 1GiB or 500M")]
    Size(String),
    #[error("`{0}` is not a duration: use a number with an optional unit, like 500ms, 10s, 1m30s or 1h")]
    Duration(String),
    /// `M` alone, which humantime reads as a month: a user writing `--timeout 1M` means a minute
    /// as often (found by a trial: it asked for 2,630,016 s).
    #[error("`{0}` is ambiguous: write `m` or `min` for minutes, `d` for days")]
    AmbiguousMonth(String),
    /// A unit of one number in capitals (`10S`): the units are lowercase, as in cave.yaml's schema.
    #[error("`{text}` is not a duration: write its unit in lowercase, `{lowercase}`")]
    UppercaseUnit { text: String, lowercase: String },
    #[error("`{0}` is not a CPU count: use a positive number like 0.5, 1 or 2")]
    Cpus(String),
    #[error("`{0}` is more CPUs than a limit can name: the most is {MAX_CPUS}")]
    TooManyCpus(String),
    /// More than any limit can be (it does not fit in 64 bits of bytes or milliseconds).
    #[error("`{0}` is too large for any limit (an agent's own maximum is in `bkg agent status`)")]
    TooLarge(String),
    /// Zero, or so small that it rounds to zero in the unit the limit is kept in.
    #[error("`{text}` is too small: the least is {least}")]
    Zero { text: String, least: &'static str },
}

/// Parses a size in bytes. Binary units (KiB, MiB, GiB, and the single letters K, M, G as docker
/// reads them) are powers of 1024; decimal units (KB, MB, GB) are powers of 1000.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let trimmed = text.trim();
    let (number, unit) = split_number(trimmed);
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(UnitError::Size(text.to_owned())),
    };
    let value: f64 = number.parse().map_err(|_| UnitError::Size(text.to_owned()))?;
    if !value.is_finite() || value < 0.0 {
        return Err(UnitError::Size(text.to_owned()));
    }
    let bytes = value * multiplier as f64;
    // `u64::MAX as f64` is 2^64, one past the largest u64.
    if bytes >= u64::MAX as f64 {
        return Err(UnitError::TooLarge(text.to_owned()));
    }
    let bytes = bytes.round() as u64;
    if bytes == 0 {
        return Err(UnitError::Zero { text: text.to_owned(), least: "1 byte" });
    }
    Ok(bytes)
}

/// Parses a duration into milliseconds: one number with a unit (`1.5h`; a bare number is
/// seconds; `M` alone, humantime's month, is refused as ambiguous), or several as humantime reads
/// them (`1m30s`, `1h 15m`).
pub fn parse_duration_ms(text: &str) -> Result<u64, UnitError> {
    let trimmed = text.trim();
    if trimmed == "none" {
        return Ok(crate::NO_TIMEOUT_MS);
    }
    let (number, unit) = split_number(trimmed);
    if trimmed.split(|c: char| !c.is_ascii_alphabetic()).any(|unit| unit == "M") {
        return Err(UnitError::AmbiguousMonth(text.to_owned()));
    }
    let multiplier: f64 = match unit {
        "ms" => 1.0,
        "" | "s" | "sec" => 1_000.0,
        "m" | "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ if matches!(unit.to_ascii_lowercase().as_str(), "ms" | "s" | "sec" | "min" | "h" | "d") => {
            return Err(UnitError::UppercaseUnit {
                text: text.to_owned(),
                lowercase: format!("{number}{}", unit.to_ascii_lowercase()),
            });
        }
        _ => {
            let duration = humantime::parse_duration(trimmed).map_err(|_| UnitError::Duration(text.to_owned()))?;
            // Rounded up: a part of a millisecond (`1500us`) is not cut off below what was asked.
            let millis = u64::try_from(duration.as_nanos().div_ceil(1_000_000))
                .map_err(|_| UnitError::TooLarge(text.to_owned()))?;
            return if millis == 0 { Err(UnitError::Zero { text: text.to_owned(), least: "1ms" }) } else { Ok(millis) };
        }
    };
    let value: f64 = number.parse().map_err(|_| UnitError::Duration(text.to_owned()))?;
    if !value.is_finite() || value < 0.0 {
        return Err(UnitError::Duration(text.to_owned()));
    }
    if value * multiplier >= u64::MAX as f64 {
        return Err(UnitError::TooLarge(text.to_owned()));
    }
    let millis = (value * multiplier).round() as u64;
    if millis == 0 {
        return Err(UnitError::Zero { text: text.to_owned(), least: "1ms" });
    }
    Ok(millis)
}

/// Parses a CPU count into thousandths of a CPU.
/// The most CPUs a limit may name.
pub const MAX_CPUS: f64 = 4096.0;

pub fn parse_cpus(text: &str) -> Result<u64, UnitError> {
    let value: f64 = text.trim().parse().map_err(|_| UnitError::Cpus(text.to_owned()))?;
    // Digits past what a float holds read as infinity: too many, not "no CPU count" (found by a
    // new-user trial); `inf` itself is no count.
    let digits = text.trim().bytes().all(|byte| byte.is_ascii_digit() || byte == b'.');
    if (value.is_finite() || digits) && value > MAX_CPUS {
        return Err(UnitError::TooManyCpus(text.to_owned()));
    }
    if !value.is_finite() || value < 0.0 {
        return Err(UnitError::Cpus(text.to_owned()));
    }
    let millis = (value * 1000.0).round() as u64;
    if millis == 0 {
        // The least a run may have (`Limits::LEAST`), which a value between this and it meets.
        return Err(UnitError::Zero { text: text.to_owned(), least: "0.01" });
    }
    Ok(millis)
}

fn split_number(text: &str) -> (&str, &str) {
    let end = text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+')).unwrap_or(text.len());
    let (number, unit) = text.split_at(end);
    (number, unit.trim())
}

/// Formats bytes the way users write them back: exact binary units where they fit, else exact
/// decimal ones (`1TB`). From 1 MiB on, KiB are not: a measured size (always whole pages) reads
/// better as `14.5MiB` than `14852KiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, name) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) && (size > 1 << 10 || bytes < 1 << 20) {
            return format!("{}{name}", bytes / size);
        }
    }
    // A whole number of a decimal unit is said in it, as it was most likely written (found by a
    // new-user trial: `--disk 1TB` was refused as "disk 931.3GiB").
    const DECIMAL: [(u64, &str); 3] = [(1_000_000_000_000, "TB"), (1_000_000_000, "GB"), (1_000_000, "MB")];
    for (size, name) in DECIMAL {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{name}", bytes / size);
        }
    }
    // Not a whole number of any unit: one decimal of the largest unit it reaches, from MiB up.
    for (size, name) in &UNITS[..3] {
        if bytes >= *size {
            return format!("{:.1}{name}", bytes as f64 / *size as f64);
        }
    }
    format!("{bytes}B")
}

pub fn format_duration_ms(millis: u64) -> String {
    if millis == crate::NO_TIMEOUT_MS {
        "none".to_owned()
    } else if millis == 0 {
        // Every unit divides 0: the smallest says it best.
        "0ms".to_owned()
    } else if millis.is_multiple_of(86_400_000) {
        format!("{}d", millis / 86_400_000)
    } else if millis.is_multiple_of(3_600_000) {
        format!("{}h", millis / 3_600_000)
    } else if millis.is_multiple_of(60_000) {
        format!("{}m", millis / 60_000)
    } else if millis.is_multiple_of(1_000) {
        format!("{}s", millis / 1_000)
    } else {
        format!("{millis}ms")
    }
}

/// `count` of a thing, its noun in the singular or `plural`: "1 file", "2 files".
pub fn count(count: usize, singular: &str, plural: &str) -> String {
    match count {
        1 => format!("1 {singular}"),
        _ => format!("{count} {plural}"),
    }
}

pub fn format_cpus(millis: u64) -> String {
    if millis.is_multiple_of(1000) { (millis / 1000).to_string() } else { format!("{}", millis as f64 / 1000.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_binary_and_decimal_units() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 64 MiB "), Ok(64 << 20));
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert_eq!(parse_size("0"), Err(UnitError::Zero { text: "0".into(), least: "1 byte" }));
        assert_eq!(parse_size("0MiB"), Err(UnitError::Zero { text: "0MiB".into(), least: "1 byte" }));
        assert!(matches!(parse_size("-1MiB"), Err(UnitError::Size(_))));
        assert!(matches!(parse_size("lots"), Err(UnitError::Size(_))));
        assert!(matches!(parse_size("12parsecs"), Err(UnitError::Size(_))));
        assert!(matches!(parse_size(""), Err(UnitError::Size(_))));
        assert_eq!(parse_size("99999999999TiB"), Err(UnitError::TooLarge("99999999999TiB".into())));
        assert_eq!(parse_size("18446744073709551616"), Err(UnitError::TooLarge("18446744073709551616".into())));
        assert_eq!(parse_size("16777216TiB"), Err(UnitError::TooLarge("16777216TiB".into())));
        // Said with where an agent's own maximum is (found by a new-user trial: no bound at all).
        assert_eq!(
            parse_size("99999999999TiB").map_err(|error| error.to_string()),
            Err("`99999999999TiB` is too large for any limit (an agent's own maximum is in `bkg agent status`)".into())
        );
        assert_eq!(
            parse_duration_ms("99999999999999999999h"),
            Err(UnitError::TooLarge("99999999999999999999h".into()))
        );
    }

    #[test]
    fn compound_durations() {
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("1500us"), Ok(2));
        assert_eq!(parse_duration_ms("1h 15m"), Ok(4_500_000));
        assert_eq!(parse_duration_ms("2s500ms"), Ok(2_500));
        assert_eq!(parse_duration_ms("0m0s"), Err(UnitError::Zero { text: "0m0s".into(), least: "1ms" }));
        assert!(matches!(parse_duration_ms("1m30parsecs"), Err(UnitError::Duration(_))));
        assert!(matches!(parse_duration_ms("-1m30s"), Err(UnitError::Duration(_))));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("60s"), Ok(60_000));
        assert_eq!(parse_duration_ms("10"), Ok(10_000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("1.5s"), Ok(1_500));
        assert!(matches!(parse_duration_ms("-1"), Err(UnitError::Duration(_))));
        assert!(matches!(parse_duration_ms("0s"), Err(UnitError::Zero { .. })));
        assert!(matches!(parse_duration_ms("soon"), Err(UnitError::Duration(_))));
        for (text, lowercase) in [("10S", "10s"), ("2MIN", "2min"), ("500Ms", "500ms"), ("1H", "1h"), ("1D", "1d")] {
            assert_eq!(
                parse_duration_ms(text),
                Err(UnitError::UppercaseUnit { text: text.into(), lowercase: lowercase.into() })
            );
        }
        assert_eq!(
            parse_duration_ms("10S").map_err(|error| error.to_string()),
            Err("`10S` is not a duration: write its unit in lowercase, `10s`".to_owned())
        );
        assert_eq!(parse_duration_ms("1M"), Err(UnitError::AmbiguousMonth("1M".into())));
        assert_eq!(parse_duration_ms("1M30s"), Err(UnitError::AmbiguousMonth("1M30s".into())));
        assert_eq!(parse_duration_ms("1 month"), Ok(2_630_016_000));
        assert_eq!(
            UnitError::AmbiguousMonth("1M".into()).to_string(),
            "`1M` is ambiguous: write `m` or `min` for minutes, `d` for days"
        );
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("1"), Ok(1000));
        assert_eq!(parse_cpus("0.5"), Ok(500));
        assert!(matches!(parse_cpus("0"), Err(UnitError::Zero { .. })));
        assert_eq!(
            parse_cpus("0.0001").map_err(|error| error.to_string()),
            Err("`0.0001` is too small: the least is 0.01".into())
        );
        assert!(matches!(parse_cpus("-2"), Err(UnitError::Cpus(_))));
        assert!(matches!(parse_cpus("many"), Err(UnitError::Cpus(_))));
        assert_eq!(parse_cpus("4096"), Ok(4_096_000));
        assert_eq!(
            parse_cpus("99999").map_err(|error| error.to_string()),
            Err("`99999` is more CPUs than a limit can name: the most is 4096".into())
        );
        assert!(matches!(parse_cpus(&"9".repeat(400)), Err(UnitError::TooManyCpus(_))));
        assert!(matches!(parse_cpus("inf"), Err(UnitError::Cpus(_))));
    }

    #[test]
    fn formatting_round_trips() {
        for text in ["512MiB", "1GiB", "4KiB"] {
            assert_eq!(format_size(parse_size(text).unwrap_or_default()), text);
        }
        for text in ["45s", "2m", "1h", "1500ms", "30d", "36h"] {
            assert_eq!(format_duration_ms(parse_duration_ms(text).unwrap_or_default()), text);
        }
        assert_eq!(format_duration_ms(0), "0ms", "a run that took no measurable time");
        assert_eq!(format_size(15_208_448), "14.5MiB", "a measurement in whole pages");
        assert_eq!(format_size(1536 * 1024 * 1024), "1536MiB");
        assert_eq!(format_size(10_000_000_000_000), "10TB", "as it was written, not millions of MiB");
        assert_eq!(format_size(1_500_000_000), "1500MB");
        assert_eq!(format_size(10_000_000_000_001), "9.1TiB");
        assert_eq!(format_size(1_288_490_189), "1.2GiB");
        assert_eq!(format_cpus(500), "0.5");
        assert_eq!(format_cpus(2000), "2");
    }
}
