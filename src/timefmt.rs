//! RFC 3339 UTC timestamps with milliseconds (`2026-11-23T19:45:51.123Z`) from Unix milliseconds.
//!
//! Invariant: the output is always 24 bytes, `YYYY-MM-DDTHH:MM:SS.mmmZ`, for any time from 1970
//! to 9999; [`Rfc3339`] computes it on the stack, without a time zone database (UTC only).

/// A timestamp formatted on the stack, for answers built on the request path (a validate
/// answer carries five of them; `format!` cost an allocation and the formatting machinery each).
/// Years past 9999 (beyond any deadline sessiond computes) are written as 9999.
#[derive(Clone, Copy)]
pub struct Rfc3339([u8; 24]);

impl Rfc3339 {
    pub fn new(unix_ms: u64) -> Rfc3339 {
        Dates::default().format(unix_ms)
    }

    pub fn as_bytes(&self) -> &[u8; 24] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII digits and separators")
    }
}

/// Formats several timestamps, working out each calendar date once: the timestamps of one
/// answer (created, last activity, the deadlines) mostly fall on one or two days, and the date
/// is a good part of the cost of formatting one (four timestamps: 602 -> 458 instructions).
pub struct Dates {
    day: u64,
    date: [u8; 10],
}

impl Default for Dates {
    fn default() -> Dates {
        Dates {
            day: u64::MAX,
            date: *b"0000-00-00",
        }
    }
}

impl Dates {
    pub fn format(&mut self, unix_ms: u64) -> Rfc3339 {
        let secs = unix_ms / 1_000;
        let day = secs / 86_400;
        let sod = secs % 86_400;
        let mut b = *b"0000-00-00T00:00:00.000Z";
        // Two digits at a time from a table: half the divisions of one digit at a time.
        let two = |b: &mut [u8], at: usize, v: u64| {
            let i = 2 * (v as usize % 100);
            b[at..at + 2].copy_from_slice(&PAIRS[i..i + 2]);
        };
        if day != self.day {
            let (y, m, d) = civil_from_days(day as i64);
            let y = y.clamp(0, 9_999) as u64;
            let date = &mut self.date;
            two(date, 0, y / 100);
            two(date, 2, y);
            two(date, 5, u64::from(m));
            two(date, 8, u64::from(d));
            self.day = day;
        }
        b[..10].copy_from_slice(&self.date);
        two(&mut b, 11, sod / 3_600);
        two(&mut b, 14, sod % 3_600 / 60);
        two(&mut b, 17, sod % 60);
        let ms = unix_ms % 1_000;
        two(&mut b, 21, ms);
        b[20] = b'0' + (ms / 100) as u8;
        Rfc3339(b)
    }
}

impl serde::Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// "00" to "99", each two ASCII digits.
const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc3339_ms(ms: u64) -> String {
        Rfc3339::new(ms).as_str().to_owned()
    }

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_463_151_123), "2026-11-23T19:45:51.123Z");
        assert_eq!(rfc3339_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
    }

    proptest::proptest! {
        /// The same text as the obvious `format!`, for any instant up to the year 9999.
        #[test]
        fn matches_format(ms in 0u64..253_402_300_800_000) {
            let secs = ms / 1_000;
            let sod = secs % 86_400;
            let (y, m, d) = civil_from_days((secs / 86_400) as i64);
            let want = format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                sod / 3_600,
                sod % 3_600 / 60,
                sod % 60,
                ms % 1_000
            );
            proptest::prop_assert_eq!(rfc3339_ms(ms), want);
        }

        /// One [`Dates`] over many instants, on the same day or not, formats each as alone.
        #[test]
        fn dates_remembered_change_nothing(
            ms in proptest::collection::vec(0u64..253_402_300_800_000, 1..8),
            near in proptest::collection::vec(0u64..200_000_000, 1..8),
        ) {
            let mut dates = Dates::default();
            let base = ms[0];
            for t in ms.iter().copied().chain(near.iter().map(|d| base.saturating_add(*d))) {
                let got = dates.format(t);
                proptest::prop_assert_eq!(got.as_str(), rfc3339_ms(t));
            }
        }
    }
}
