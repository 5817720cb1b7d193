//! Policy durations as people write them: integer seconds, a string with a unit as the daemon's
//! settings take it (`"8h"`, `"30m"`, `"90s"`, `"7d"`), or `{value, unit}` with unit `SECONDS`,
//! `MINUTES`, `HOURS` or `DAYS`. A bare number means seconds, as everywhere in sessiond.
//!
//! Invariants:
//! 1. A parsed [`DurationSecs`] is a whole number of seconds that did not overflow; range checks
//!    (`> 0`, at most 400 days) belong to the policy that uses it, which knows the field name.
//! 2. Anything else (negative, fractional, strings, unknown keys or units) is a deserialization
//!    error whose message says what was expected, so the API and config loaders can show it.

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::fmt;

/// A duration in whole seconds, deserialized from `3600` or `{"value": 1, "unit": "HOURS"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationSecs(pub u64);

impl DurationSecs {
    /// `value` of `unit` (a unit name as a `{value, unit}` duration writes it, in any case), or
    /// `None` for an unknown unit or a product that overflows: the same arithmetic as the
    /// deserializer, for readers that parse the form themselves (and leave the errors to it).
    pub fn from_value_unit(value: u64, unit: &str) -> Option<DurationSecs> {
        Unit::parse(unit)
            .and_then(|u| value.checked_mul(u.secs()))
            .map(DurationSecs)
    }
}

/// The units a `{value, unit}` duration may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Minutes,
    Hours,
    Days,
}

impl Unit {
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "SECONDS" => Some(Unit::Seconds),
            "MINUTES" => Some(Unit::Minutes),
            "HOURS" => Some(Unit::Hours),
            "DAYS" => Some(Unit::Days),
            _ => None,
        }
    }

    fn secs(self) -> u64 {
        match self {
            Unit::Seconds => 1,
            Unit::Minutes => 60,
            Unit::Hours => 3_600,
            Unit::Days => 86_400,
        }
    }
}

const EXPECTED: &str = "a whole number of seconds, a string like \"8h\" (s, m, h, d) or \
                        {\"value\": N, \"unit\": \"SECONDS|MINUTES|HOURS|DAYS\"}";

impl<'de> Deserialize<'de> for DurationSecs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor)
    }
}

struct DurationVisitor;

impl<'de> Visitor<'de> for DurationVisitor {
    type Value = DurationSecs;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(DurationSecs(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        u64::try_from(v).map(DurationSecs).map_err(|_| {
            E::custom(format_args!(
                "duration {v} is negative; expected {EXPECTED}"
            ))
        })
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let t = v.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let per = match t[split..].trim() {
            "" | "s" => Some(1),
            "m" => Some(60),
            "h" => Some(3_600),
            "d" => Some(86_400),
            _ => None,
        };
        per.zip(t[..split].parse::<u64>().ok())
            .and_then(|(per, n)| n.checked_mul(per))
            .map(DurationSecs)
            .ok_or_else(|| E::custom(format_args!("duration {v:?} is not {EXPECTED}")))
    }

    /// JSON writes `1.0` and integers past `u64` (`18446744073709551616`) as floats: the
    /// first is the whole number it says, the second is too large, not "not whole".
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        if v < 0.0 {
            return Err(E::custom(format_args!(
                "duration {v} is negative; expected {EXPECTED}"
            )));
        }
        if v.fract() != 0.0 || !v.is_finite() {
            return Err(E::custom(format_args!(
                "duration {v} is not a whole number; expected {EXPECTED}"
            )));
        }
        if v >= u64::MAX as f64 {
            return Err(E::custom(format_args!(
                "duration {v} is too large; expected {EXPECTED}"
            )));
        }
        Ok(DurationSecs(v as u64))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut value: Option<i64> = None;
        let mut unit: Option<String> = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "value" => {
                    if value.is_some() {
                        return Err(de::Error::duplicate_field("value"));
                    }
                    value = Some(map.next_value()?);
                }
                "unit" => {
                    if unit.is_some() {
                        return Err(de::Error::duplicate_field("unit"));
                    }
                    unit = Some(map.next_value()?);
                }
                other => return Err(de::Error::unknown_field(other, &["value", "unit"])),
            }
        }
        let value = value.ok_or_else(|| de::Error::missing_field("value"))?;
        let unit_str = unit.ok_or_else(|| de::Error::missing_field("unit"))?;
        let unit = Unit::parse(&unit_str).ok_or_else(|| {
            de::Error::custom(format_args!(
                "unknown duration unit {unit_str:?}; expected SECONDS, MINUTES, HOURS or DAYS"
            ))
        })?;
        let value = u64::try_from(value)
            .map_err(|_| de::Error::custom(format_args!("duration value {value} is negative")))?;
        value
            .checked_mul(unit.secs())
            .map(DurationSecs)
            .ok_or_else(|| {
                de::Error::custom(format_args!("duration {value} {unit_str} is too large"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<DurationSecs, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn integer_seconds() {
        assert_eq!(parse("1800").unwrap(), DurationSecs(1800));
    }

    #[test]
    fn strings_with_a_unit() {
        assert_eq!(parse(r#""8h""#).unwrap(), DurationSecs(28_800));
        assert_eq!(parse(r#""30m""#).unwrap(), DurationSecs(1_800));
        assert_eq!(parse(r#""90s""#).unwrap(), DurationSecs(90));
        assert_eq!(parse(r#""7d""#).unwrap(), DurationSecs(604_800));
        assert_eq!(parse(r#""600""#).unwrap(), DurationSecs(600));
    }

    #[test]
    fn value_and_unit() {
        assert_eq!(
            parse(r#"{"value": 24, "unit": "HOURS"}"#).unwrap(),
            DurationSecs(86_400)
        );
        assert_eq!(
            parse(r#"{"value": 480, "unit": "MINUTES"}"#).unwrap(),
            DurationSecs(28_800)
        );
        assert_eq!(
            parse(r#"{"value": 2, "unit": "DAYS"}"#).unwrap(),
            DurationSecs(172_800)
        );
        assert_eq!(
            parse(r#"{"unit": "SECONDS", "value": 5}"#).unwrap(),
            DurationSecs(5)
        );
    }

    #[test]
    fn bad_forms_are_explained() {
        assert!(parse("-5").unwrap_err().contains("negative"));
        assert!(parse("1.5").unwrap_err().contains("whole number"));
        assert_eq!(parse("60.0").unwrap(), DurationSecs(60));
        assert!(parse("-1.0").unwrap_err().contains("negative"));
        for huge in ["18446744073709551616", "1e300"] {
            let e = parse(huge).unwrap_err();
            assert!(
                e.contains("too large") && !e.contains("is not a whole"),
                "{huge}: {e}"
            );
        }
        assert!(
            parse(r#""1 hour""#)
                .unwrap_err()
                .contains("whole number of seconds")
        );
        assert!(parse(r#""500ms""#).is_err());
        assert!(parse(r#""-1h""#).is_err());
        assert!(
            parse(r#"{"value": 1, "unit": "WEEKS"}"#)
                .unwrap_err()
                .contains("WEEKS")
        );
        assert!(parse(r#"{"value": 1}"#).unwrap_err().contains("unit"));
        assert!(
            parse(r#"{"value": 1, "unit": "DAYS", "x": 1}"#)
                .unwrap_err()
                .contains("x")
        );
        assert!(parse(r#"{"value": 18446744073709551615, "unit": "DAYS"}"#).is_err());
    }

    #[test]
    fn works_from_toml_too() {
        #[derive(Deserialize)]
        struct T {
            d: DurationSecs,
        }
        let t: T = toml::from_str("d = { value = 60, unit = \"MINUTES\" }").unwrap();
        assert_eq!(t.d, DurationSecs(3600));
        let t: T = toml::from_str("d = 1800").unwrap();
        assert_eq!(t.d, DurationSecs(1800));
    }
}
