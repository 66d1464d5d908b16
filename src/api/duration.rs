//! `Duration`: a positive duration written as Kubernetes and Go write them (`500ms`, `5s`,
//! `1h30m`).
//!
//! The schema is a string with a pattern (so a typo is refused with the field's path) and a
//! CEL rule that refuses zero; the same grammar is parsed here, once, on deserialisation.

use std::{borrow::Cow, fmt, str::FromStr, time::Duration as StdDuration};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The grammar accepted by the CRD schema and by [`parse_duration`].
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// A positive duration such as `5s` or `1h30m`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duration {
    text: String,
    value: StdDuration,
}

/// Why a string is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration (expected e.g. 500ms, 5s, 1m or 1h30m)")]
    Syntax(String),
    #[error("{0:?} is not a positive duration")]
    NotPositive(String),
}

impl Duration {
    /// The duration.
    pub fn get(&self) -> StdDuration {
        self.value
    }

    /// The text as the user wrote it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A duration written in whole seconds, or in milliseconds when it is not whole seconds.
    pub fn from_std(value: StdDuration) -> Self {
        let text = if value.subsec_millis() == 0 {
            format!("{}s", value.as_secs())
        } else {
            format!("{}ms", value.as_millis())
        };
        Self { text, value }
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value = parse_duration(s)?;
        if value.is_zero() {
            return Err(DurationError::NotPositive(s.to_owned()));
        }
        Ok(Self {
            text: s.to_owned(),
            value,
        })
    }
}

/// Parses `([0-9]+(\.[0-9]+)?(ms|s|m|h))+`.
pub fn parse_duration(s: &str) -> Result<StdDuration, DurationError> {
    let syntax = || DurationError::Syntax(s.to_owned());
    if s.is_empty() {
        return Err(syntax());
    }
    let mut rest = s;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(syntax)?;
        let (number, after) = rest.split_at(number_end);
        let (unit_nanos, unit_len): (u128, usize) = if after.starts_with("ms") {
            (1_000_000, 2)
        } else if after.starts_with('s') {
            (1_000_000_000, 1)
        } else if after.starts_with('m') {
            (60_000_000_000, 1)
        } else if after.starts_with('h') {
            (3_600_000_000_000, 1)
        } else {
            return Err(syntax());
        };
        let (int_part, frac_part) = match number.split_once('.') {
            Some((i, f)) if !f.is_empty() && !f.contains('.') => (i, f),
            Some(_) => return Err(syntax()),
            None => (number, ""),
        };
        if int_part.is_empty() {
            return Err(syntax());
        }
        let int: u128 = int_part.parse().map_err(|_| syntax())?;
        let mut nanos = int.checked_mul(unit_nanos).ok_or_else(syntax)?;
        if !frac_part.is_empty() {
            // Truncate beyond nanosecond precision, as Go does.
            let digits = &frac_part[..frac_part.len().min(18)];
            let frac: u128 = digits.parse().map_err(|_| syntax())?;
            let scale = 10u128.pow(u32::try_from(digits.len()).map_err(|_| syntax())?);
            nanos += frac * unit_nanos / scale;
        }
        total_nanos = total_nanos.checked_add(nanos).ok_or_else(syntax)?;
        rest = &after[unit_len..];
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| syntax())?;
    let sub = u32::try_from(total_nanos % 1_000_000_000).map_err(|_| syntax())?;
    Ok(StdDuration::new(secs, sub))
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A positive duration such as 500ms, 5s, 1m or 1h30m.",
            "type": "string",
            "maxLength": 32,
            "pattern": DURATION_PATTERN,
            "x-kubernetes-validations": [{
                "rule": "duration(self) > duration('0s')",
                "message": "must be a positive duration such as 500ms, 5s, 1m or 1h30m"
            }]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(parse_duration("5s"), Ok(StdDuration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(StdDuration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(StdDuration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(StdDuration::from_millis(1500)));
        assert_eq!(parse_duration("2m10s"), Ok(StdDuration::from_secs(130)));
        assert_eq!(parse_duration("0s"), Ok(StdDuration::ZERO));
    }

    #[test]
    fn refuses_what_the_schema_pattern_refuses() {
        for bad in [
            "", "5", "s", "5 s", "5sec", "1d", "-5s", ".5s", "5.s", "1.2.3s", "5us",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            "0ms".parse::<Duration>(),
            Err(DurationError::NotPositive("0ms".into()))
        );
    }

    #[test]
    fn round_trips_the_users_text() {
        let d: Duration = serde_json::from_str("\"1h30m\"").unwrap();
        assert_eq!(d.get(), StdDuration::from_secs(5400));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1h30m\"");
        assert_eq!(
            Duration::from_std(StdDuration::from_millis(1500)).as_str(),
            "1500ms"
        );
        assert_eq!(Duration::from_std(StdDuration::from_secs(5)).as_str(), "5s");
    }
}
