//! Durations on the command line, as people write them: `10s`, `90m`, `24h`, `90d`.
//!
//! humantime reads them (and combinations such as `1h 30m`); a duration of zero is refused,
//! because every flag that takes one is a timeout or a period, and zero would mean "at once"
//! (every call failing) rather than "never".

use std::time::Duration;

/// clap's parser for a duration flag: humantime's syntax, zero refused with what to write.
pub fn positive(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e}; write a number and a unit, such as 30s, 10m, 24h or 90d"))?;
    if duration.is_zero() {
        return Err("must be more than zero".to_owned());
    }
    Ok(duration)
}

/// How long something is kept: a duration, or for ever (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepFor(pub Option<Duration>);

/// clap's parser for a retention flag: a duration as [`positive`] takes it, or `off` (also
/// `never`) to keep for ever.
pub fn keep_for(text: &str) -> Result<KeepFor, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "off" | "never" => Ok(KeepFor(None)),
        _ => positive(text)
            .map(|d| KeepFor(Some(d)))
            .map_err(|e| format!("{e} (or off, to keep for ever)")),
    }
}

/// `duration` as the flags take it (`1m 30s`), for messages.
pub fn shown(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn people_write_durations_with_units() {
        assert_eq!(positive("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(positive("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(positive("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(positive("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(positive("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(positive("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(positive("0s").unwrap_err(), "must be more than zero");
        assert!(positive("10").unwrap_err().contains("such as 30s"));
        assert!(positive("soon").unwrap_err().contains("such as 30s"));
        assert_eq!(shown(Duration::from_secs(90)), "1m 30s");
        assert_eq!(
            keep_for("90d"),
            Ok(KeepFor(Some(Duration::from_secs(90 * 86_400))))
        );
        assert_eq!(keep_for("off"), Ok(KeepFor(None)));
        assert_eq!(keep_for("Never"), Ok(KeepFor(None)));
        assert!(keep_for("0s").unwrap_err().contains("or off"));
    }
}
