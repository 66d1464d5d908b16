//! `ByteSize`: a Kubernetes quantity (`30Mi`, `1Gi`, `31457280`) that must be a positive whole
//! number of bytes.
//!
//! The text the user wrote is kept verbatim so that server-side apply never sees a spurious
//! change; the byte count is parsed once on deserialisation. The schema is int-or-string, as
//! for every Kubernetes quantity, with a CEL rule that refuses zero, negative and fractional
//! values at admission, so the operator never meets an invalid size.

use std::{borrow::Cow, fmt, str::FromStr};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A positive number of bytes written as a Kubernetes quantity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ByteSize {
    text: String,
    bytes: u64,
}

/// Why a quantity is not a positive number of bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error(
        "{0:?} is not a quantity (expected a number with an optional suffix such as Ki, Mi, Gi, k, M, G)"
    )]
    Syntax(String),
    #[error("{0:?} is not a positive whole number of bytes")]
    NotPositiveBytes(String),
    #[error("{0:?} is too large")]
    Overflow(String),
}

impl ByteSize {
    /// The number of bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The text as the user wrote it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A size of exactly `bytes` bytes, written in the largest binary unit that divides it.
    pub fn from_bytes(bytes: u64) -> Self {
        Self {
            text: format_binary_exact(bytes),
            bytes,
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for ByteSize {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = parse_bytes(s)?;
        Ok(Self {
            text: s.to_owned(),
            bytes,
        })
    }
}

/// Parses a Kubernetes quantity into a positive whole number of bytes.
///
/// Accepts plain integers, decimal fractions, the binary suffixes Ki/Mi/Gi/Ti/Pi/Ei, the decimal
/// suffixes k/M/G/T/P/E, and decimal exponents (`1e6`). The milli suffix `m` is accepted only
/// when it still yields whole bytes (`3000m` = 3 bytes), as Kubernetes itself would.
pub fn parse_bytes(s: &str) -> Result<u64, QuantityError> {
    let syntax = || QuantityError::Syntax(s.to_owned());
    let t = s.trim();
    if t.is_empty() {
        return Err(syntax());
    }
    let (negative, t) = match t.as_bytes()[0] {
        b'+' => (false, &t[1..]),
        b'-' => (true, &t[1..]),
        _ => (false, t),
    };
    let number_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(number_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(syntax());
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));

    // value = digits × 10^exp10 × 2^exp2
    let (exp2, exp10): (u32, i32) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        other => {
            let exp = other
                .strip_prefix('e')
                .or_else(|| other.strip_prefix('E'))
                .ok_or_else(syntax)?;
            let exp: i32 = exp.parse().map_err(|_| syntax())?;
            (0, exp)
        }
    };

    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    let exp10 = exp10 - i32::try_from(frac_part.len()).map_err(|_| syntax())?;
    if digits.is_empty() {
        return Err(QuantityError::NotPositiveBytes(s.to_owned()));
    }
    if negative {
        return Err(QuantityError::NotPositiveBytes(s.to_owned()));
    }
    // Work in u128 so that "0.5Ki" (5 × 10^-1 × 2^10) stays exact.
    let overflow = || QuantityError::Overflow(s.to_owned());
    let mantissa: u128 = digits.parse().map_err(|_| overflow())?;
    let scaled = mantissa.checked_shl(exp2).ok_or_else(overflow)?;
    let value = if exp10 >= 0 {
        let factor = 10u128
            .checked_pow(exp10.unsigned_abs())
            .ok_or_else(overflow)?;
        scaled.checked_mul(factor).ok_or_else(overflow)?
    } else {
        let divisor = 10u128
            .checked_pow(exp10.unsigned_abs())
            .ok_or_else(|| QuantityError::NotPositiveBytes(s.to_owned()))?;
        if scaled % divisor != 0 {
            return Err(QuantityError::NotPositiveBytes(s.to_owned()));
        }
        scaled / divisor
    };
    if value == 0 {
        return Err(QuantityError::NotPositiveBytes(s.to_owned()));
    }
    u64::try_from(value).map_err(|_| overflow())
}

/// `31457280` → `30Mi`; a size that is not a whole number of KiB stays in bytes.
fn format_binary_exact(bytes: u64) -> String {
    const UNITS: [(&str, u32); 6] = [
        ("Ei", 60),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ];
    for (unit, shift) in UNITS {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// A short human rendering for status and terminal output: `12.0Mi`, `512Ki`, `900B`.
pub fn format_bytes_human(bytes: u64) -> String {
    const UNITS: [(&str, u32); 5] = [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10), ("B", 0)];
    for (unit, shift) in UNITS {
        let base = 1u64 << shift;
        if bytes >= base && shift > 0 {
            let value = bytes as f64 / base as f64;
            return if value >= 100.0 {
                format!("{value:.0}{unit}")
            } else {
                format!("{value:.1}{unit}")
            };
        }
    }
    format!("{bytes}B")
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum IntOrString {
            Int(u64),
            String(String),
        }
        let text = match IntOrString::deserialize(deserializer)? {
            IntOrString::Int(n) => n.to_string(),
            IntOrString::String(s) => s,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A positive whole number of bytes as a Kubernetes quantity, e.g. 30Mi, 1Gi or 31457280.",
            "x-kubernetes-int-or-string": true,
            "x-kubernetes-validations": [{
                "rule": "type(self) == int ? self > 0 : (isQuantity(self) && quantity(self).isInteger() && quantity(self).isGreaterThan(quantity('0')))",
                "message": "must be a positive whole number of bytes, e.g. 30Mi, 1Gi or 31457280"
            }]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_decimal_and_plain_sizes() {
        assert_eq!(parse_bytes("30Mi"), Ok(30 * 1024 * 1024));
        assert_eq!(parse_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(parse_bytes("31457280"), Ok(31_457_280));
        assert_eq!(parse_bytes("30M"), Ok(30_000_000));
        assert_eq!(parse_bytes("1.5Gi"), Ok(1_610_612_736));
        assert_eq!(parse_bytes("0.5Ki"), Ok(512));
        assert_eq!(parse_bytes("1e6"), Ok(1_000_000));
        assert_eq!(parse_bytes("3000m"), Ok(3));
        assert_eq!(parse_bytes("+64k"), Ok(64_000));
    }

    #[test]
    fn refuses_zero_negative_fractional_and_garbage() {
        for bad in ["0", "0Mi", "-1Mi", "1.5", "1m", "0.1Ki1", ""] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(matches!(parse_bytes("30MB"), Err(QuantityError::Syntax(_))));
        assert!(matches!(parse_bytes("abc"), Err(QuantityError::Syntax(_))));
        assert!(matches!(
            parse_bytes("99Ei"),
            Err(QuantityError::Overflow(_))
        ));
    }

    #[test]
    fn keeps_the_users_text_and_accepts_integers() {
        let from_str: ByteSize = serde_json::from_str("\"30Mi\"").unwrap();
        assert_eq!(from_str.bytes(), 31_457_280);
        assert_eq!(serde_json::to_string(&from_str).unwrap(), "\"30Mi\"");
        let from_int: ByteSize = serde_json::from_str("1024").unwrap();
        assert_eq!(from_int.as_str(), "1024");
        assert!(serde_json::from_str::<ByteSize>("\"0\"").is_err());
    }

    #[test]
    fn formats_sizes() {
        assert_eq!(ByteSize::from_bytes(31_457_280).as_str(), "30Mi");
        assert_eq!(ByteSize::from_bytes(1000).as_str(), "1000");
        assert_eq!(format_bytes_human(12_582_912), "12.0Mi");
        assert_eq!(format_bytes_human(900), "900B");
        assert_eq!(format_bytes_human(1536), "1.5Ki");
        assert_eq!(format_bytes_human(300 << 20), "300Mi");
    }
}
