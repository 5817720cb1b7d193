//! The packers: every identity provider's shape packs and reads back; near misses either do
//! not pack or read back exactly (invariant 1); the shape table's cap and counts (invariant 2).

use super::*;
use proptest::prelude::*;

fn round_trip(s: &str) -> Option<Form> {
    let p = pack(s)?;
    assert_eq!(&*unpack(p.form, p.prefix, p.value), s, "{s:?} read back");
    Some(p.form)
}

#[test]
fn every_providers_shape_packs() {
    let cases = [
        (
            "0b6f2c1e-9a4d-4c3b-8e2f-1a2b3c4d5e6f",
            Kind::Uuid,
            false,
            "",
        ),
        ("0B6F2C1E-9A4D-4C3B-8E2F-1A2B3C4D5E6F", Kind::Uuid, true, ""),
        (
            "00000000-0000-0000-0000-000000000000",
            Kind::Uuid,
            false,
            "",
        ),
        (
            "kp_0a1b2c3d4e5f60718293a4b5c6d7e8f9",
            Kind::Hex,
            false,
            "kp_",
        ),
        (
            "kp_0A1B2C3D4E5F60718293A4B5C6D7E8F9",
            Kind::Hex,
            true,
            "kp_",
        ),
        ("auth0|5f7c8ec7c33c6c004bbafe82", Kind::Hex, false, "auth0|"),
        ("usr_000123456789012345", Kind::Dec, false, "usr_"),
        ("org_987654321098765432", Kind::Dec, false, "org_"),
        ("109876543210987654321", Kind::Dec, false, ""),
        (
            "google-oauth2|109876543210987654321",
            Kind::Dec,
            false,
            "google-oauth2|",
        ),
        (
            "00000000000000000000000000000000000001",
            Kind::Dec,
            false,
            "",
        ),
        (
            "user_0b6f2c1e-9a4d-4c3b-8e2f-1a2b3c4d5e6f",
            Kind::Uuid,
            false,
            "user_",
        ),
    ];
    for (s, kind, upper, prefix) in cases {
        let p = pack(s).unwrap_or_else(|| panic!("{s} packs"));
        assert_eq!(
            (p.form.kind, p.form.upper, p.prefix),
            (kind, upper, prefix),
            "{s}"
        );
        round_trip(s);
    }
}

#[test]
fn near_misses_do_not_pack() {
    for s in [
        "0b6f2c1e-9A4d-4c3b-8e2f-1a2b3c4d5e6f",           // mixed case
        "0b6f2c1e-9a4d-4c3b-8e2f-1a2b3c4d5e6",            // one short
        "0b6f2c1e9a4d-4c3b-8e2f-1a2b3c4d5e6f0",           // a dash moved
        "kp_0a1b2c3d4e5f60718293A4B5C6D7E8F9",            // mixed case
        "kp_0a1b2c3d4e5f60718293a4b5c6d7e8f9a",           // 33 hex
        "usr_000123456789012345678901234567890123456789", // 42 digits
        "alice.smith@example.com",                        // no run
        "a-prefix-that-is-too-long_12345678",             // prefix of 26 bytes
        "usr_1234567",                                    // run of 7
    ] {
        assert_eq!(pack(s), None, "{s}");
    }
}

#[test]
fn the_table_is_capped_and_frees_unused_shapes() {
    let mut t = Shapes::default();
    let ids: Vec<String> = (0..MAX_SHAPES + 1)
        .map(|i| format!("p{i}_{:018}", i))
        .collect();
    let codes: Vec<Option<u8>> = ids.iter().map(|s| t.intern(&pack(s).unwrap())).collect();
    assert!(codes[..MAX_SHAPES].iter().all(Option::is_some));
    assert_eq!(codes[MAX_SHAPES], None, "full");
    let c0 = codes[0].unwrap();
    t.add_ref(c0);
    t.add_ref(c0);
    assert_eq!(&*t.unpack(c0, pack(&ids[0]).unwrap().value), ids[0]);
    t.release(c0);
    assert_eq!(t.refs(c0), 1);
    t.release(c0);
    assert_eq!(t.refs(c0), 0);
    assert_eq!(
        t.find(&pack(&ids[0]).unwrap()),
        None,
        "freed with its last use"
    );
    assert_eq!(
        t.intern(&pack(&ids[MAX_SHAPES]).unwrap()),
        Some(c0),
        "room again"
    );
}

/// Ids within the id rules (`session::check_id`), most of them near the packers' shapes:
/// prefixes, hex and decimal runs of every length with mixed case and leading zeros, UUIDs with
/// mixed case, a dash out of place or a character missing, and arbitrary text.
pub(crate) fn arb_user_id() -> impl Strategy<Value = String> {
    let prefix = prop_oneof![
        Just(String::new()),
        Just("kp_".to_owned()),
        Just("usr_".to_owned()),
        Just("auth0|".to_owned()),
        Just("google-oauth2|".to_owned()),
        "[a-z_|-]{0,18}",
        "\\PC{0,5}",
    ];
    let run = prop_oneof![
        "[0-9a-f]{0,40}",
        "[0-9A-F]{0,40}",
        "[0-9a-fA-F]{0,34}",
        "0{0,6}[0-9]{0,40}",
        "[0-9a-z]{0,20}",
    ];
    let uuid =
        (any::<u128>(), 0u8..3, 0usize..40, any::<bool>()).prop_map(|(v, case, cut, damage)| {
            let mut s = format!(
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                v >> 96,
                (v >> 80) & 0xFFFF,
                (v >> 64) & 0xFFFF,
                (v >> 48) & 0xFFFF,
                v & 0xFFFF_FFFF_FFFF
            );
            match case {
                1 => s = s.to_uppercase(),
                2 => {
                    s = s
                        .char_indices()
                        .map(|(i, c)| {
                            if i % 3 == 0 {
                                c.to_ascii_uppercase()
                            } else {
                                c
                            }
                        })
                        .collect()
                }
                _ => {}
            }
            if damage && cut < s.len() {
                s.remove(cut);
            }
            s
        });
    prop_oneof![
        3 => (prefix.clone(), run).prop_map(|(p, r)| p + &r),
        2 => (prefix, uuid).prop_map(|(p, u)| p + &u),
        1 => "\\PC{1,60}",
    ]
    .prop_filter("within the id rules", |s| {
        crate::session::check_id("user_id", s).is_ok()
    })
}

proptest! {
    #[test]
    fn any_id_that_packs_reads_back_exactly(s in arb_user_id()) {
        round_trip(&s);
    }

    #[test]
    fn well_formed_shapes_always_pack(
        v in any::<u128>(),
        upper in any::<bool>(),
        zeros in 0usize..6,
        prefix in "[a-z]{0,6}[_|]",
    ) {
        let case = |s: String| if upper { s.to_uppercase() } else { s };
        let uuid = case(format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            v >> 96, (v >> 80) & 0xFFFF, (v >> 64) & 0xFFFF, (v >> 48) & 0xFFFF,
            v & 0xFFFF_FFFF_FFFF
        ));
        prop_assert_eq!(round_trip(&uuid).map(|f| f.kind), Some(Kind::Uuid));
        let hex = format!("{prefix}{}{}", "0".repeat(zeros), case(format!("{:x}", v | 0xa)));
        if (MIN_RUN..=MAX_HEX).contains(&(hex.len() - prefix.len())) {
            prop_assert_eq!(round_trip(&hex).map(|f| f.kind), Some(Kind::Hex));
        }
        let dec = format!("{prefix}{}{}", "0".repeat(zeros), v % 10u128.pow(30));
        if (MIN_RUN..=MAX_DEC).contains(&(dec.len() - prefix.len())) {
            prop_assert_eq!(round_trip(&dec).map(|f| f.kind), Some(Kind::Dec));
        }
    }
}
