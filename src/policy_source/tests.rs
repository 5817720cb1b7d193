//! Unit tests of the policy file's parsing and of the policy manager.

use super::*;
use crate::policy::DEFAULT_POLICY;

const EXAMPLE: &str = r#"
[application]
absolute_timeout = { value = 24, unit = "HOURS" }
idle_timeout_enabled = true
idle_timeout = 1800
persistent = false

[orgs.org_12345]
source = "CUSTOM"
absolute_timeout = { value = 480, unit = "MINUTES" }
idle_timeout_enabled = true
idle_timeout = { value = 60, unit = "MINUTES" }
persistent = true

[orgs.inherits]
source = "APPLICATION"
"#;

#[test]
fn the_documented_example_parses() {
    let (app, orgs) = parse_policy_file(EXAMPLE, &DEFAULT_POLICY).unwrap();
    assert_eq!(app, DEFAULT_POLICY);
    assert_eq!(orgs.len(), 1);
    let p = orgs["org_12345"];
    assert_eq!(
        (p.absolute_timeout_secs, p.idle_secs(), p.persistent),
        (28_800, Some(3_600), true)
    );
}

#[test]
fn errors_name_line_and_field() {
    let bad = EXAMPLE.replace(
        "absolute_timeout = { value = 480, unit = \"MINUTES\" }",
        "absolute_timeout = 0",
    );
    let e = parse_policy_file(&bad, &DEFAULT_POLICY).unwrap_err();
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("line 10: [orgs.org_12345] absolute_timeout is 0"),
        "{e:?}"
    );
    let e = parse_policy_file(
        "[orgs.x]\nsource = \"CUSTOM\"\nabsolute_timout = 5\n",
        &DEFAULT_POLICY,
    )
    .unwrap_err();
    assert!(
        e[0].contains("absolute_timout") && e[0].contains("line 3"),
        "{e:?}"
    );
    let e = parse_policy_file("[orgs.x]\nsource = \"MINE\"\n", &DEFAULT_POLICY).unwrap_err();
    assert!(e[0].contains("MINE"));
    let e = parse_policy_file("[application\n", &DEFAULT_POLICY).unwrap_err();
    assert!(e[0].contains("line 1"), "{e:?}");
}

#[test]
fn an_empty_file_is_refused_and_a_comment_means_no_orgs() {
    for empty in ["", "\n", "  \n\t\n"] {
        let e = parse_policy_file(empty, &DEFAULT_POLICY).unwrap_err();
        assert!(e[0].contains("the file is empty"), "{e:?}");
    }
    let (app, orgs) = parse_policy_file("# no org policies\n", &DEFAULT_POLICY).unwrap();
    assert_eq!((app, orgs.len()), (DEFAULT_POLICY, 0));
}

#[test]
fn lines_are_counted_right_far_into_a_large_file() {
    let mut text = String::from("[application]\nabsolute_timeout = 3600\n");
    for i in 0..20_000 {
        text.push_str(&format!("\n[orgs.o{i}]\nsource = \"APPLICATION\"\n"));
    }
    text.push_str("\n[orgs.last]\nsource = \"CUSTOM\"\nabsolute_timeout = 0\n");
    text.push_str("\n[orgs.bad]\nsource = \"MINE\"\n");
    let e = parse_policy_file(&text, &DEFAULT_POLICY).unwrap_err();
    // 2 lines, 3 per org (to line 60_002), a blank line, then [orgs.last] on line 60_004.
    assert!(
        e.iter()
            .any(|m| m.starts_with("line 60006: [orgs.last] absolute_timeout is 0")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|m| m.starts_with("line 60008: [orgs.bad]")),
        "{e:?}"
    );
    let lines = Lines::new("a\nb\n\nc");
    assert_eq!(
        [0, 1, 2, 3, 4, 5, 6].map(|o| lines.of(o)),
        [1, 1, 2, 2, 3, 4, 4]
    );
}

#[test]
fn atomic_write_replaces_the_file() {
    let dir = std::env::temp_dir().join(format!("sessiond-atomic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("x.json");
    write_atomic(&p, b"one").unwrap();
    write_atomic(&p, b"two").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"two");
    assert!(!p.with_extension("tmp").exists());
    std::fs::remove_dir_all(dir).ok();
}

/// A write whose state directory cannot be made fails with the I/O error kept as its source,
/// changes nothing, and says which directory.
#[test]
fn a_failed_persist_keeps_its_io_error() {
    let base = std::env::temp_dir().join(format!("sessiond-persist-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    let not_a_dir = base.join("file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let engine = Arc::new(Engine::new(
        crate::engine::EngineConfig::default(),
        crate::clock::ManualClock::new(1_800_000_000_000),
    ));
    let m = PolicyManager::new(
        engine.clone(),
        Metrics::global(),
        Source::Api {
            state_dir: not_a_dir.join("state"),
        },
        DEFAULT_POLICY,
    );
    let mut p = DEFAULT_POLICY;
    p.absolute_timeout_secs = 60;
    let e = m.write_application(p).unwrap_err();
    let SourceError::Persist { dir, source } = &e else {
        panic!("{e:?}");
    };
    assert_eq!(dir, &not_a_dir.join("state"));
    assert!(std::error::Error::source(&e).is_some());
    assert!(
        e.to_string().starts_with("cannot persist policies: "),
        "{e}"
    );
    assert!(e.to_string().ends_with(&source.to_string()), "{e}");
    assert_eq!(engine.application_policy(), DEFAULT_POLICY);
    std::fs::remove_dir_all(base).ok();
}

/// The shape the start-up benchmark writes, and the documented example, take the fast path and
/// read exactly as the TOML parser reads them (`file` invariant 2).
#[test]
fn every_unknown_key_is_named_with_a_suggestion() {
    let text = "[application]\nabsolute_timout = 60\n\n[orgs.acme]\nsorce = \"CUSTOM\"\n\
                absolute_timeout = 60\nidle_timeout_enabld = true\n[org.x]\n";
    let e = parse_policy_file(text, &DEFAULT_POLICY).unwrap_err();
    assert_eq!(
        e,
        [
            "line 2: [application] unknown key `absolute_timout`; did you mean `absolute_timeout`?",
            "line 5: [orgs.acme] unknown key `sorce`; did you mean `source`?",
            "line 7: [orgs.acme] unknown key `idle_timeout_enabld`; did you mean `idle_timeout_enabled`?",
            "line 8: unknown table `org`; did you mean `orgs`?",
        ]
    );
    // The list of an org's keys is the deserializer's own.
    let e = toml::from_str::<super::file::FileOrg>("zzz = 1")
        .unwrap_err()
        .to_string();
    let want: Vec<String> = crate::policy::PolicyPatch::ORG_FIELDS
        .iter()
        .map(|k| format!("`{k}`"))
        .collect();
    assert!(e.contains(&want.join(", ")), "{e}");
}

#[test]
fn the_usual_shape_takes_the_fast_path() {
    let mut big = String::from("# orgs\n[application]\nabsolute_timeout = 3600\n");
    for i in 0..200 {
        big.push_str(&format!(
            "\n[orgs.org_{i:06}]\nsource = \"CUSTOM\"\nabsolute_timeout = {{ value = 8, unit = \
             \"HOURS\" }}\nidle_timeout_enabled = true\nidle_timeout = 900\npersistent = true\n"
        ));
    }
    for text in [EXAMPLE, big.as_str()] {
        let fast = super::fast::read(text).expect("the fast path reads it");
        assert_eq!(Ok(fast), super::file::read_toml(text));
    }
    // Outside the subset: it gives up, and the TOML parser's error is what the operator sees.
    for odd in [
        "[orgs.x]\nsource = 'CUSTOM'\n",
        "[orgs.x]\nsource = \"CUSTOM\"\nsource = \"CUSTOM\"\n",
        "[orgs.x]\nsource = \"CUSTOM\"\n[orgs.x]\nsource = \"CUSTOM\"\n",
        "[orgs.x]\nidle_timeout = 900\n",
        "[orgs.x]\nsource = \"CUSTOM\"\nabsolute_timeout = { value = 1, unit = \"WEEKS\" }\n",
        "[orgs.x]\r\nsource = \"CUSTOM\"\r\n",
    ] {
        assert_eq!(super::fast::read(odd), None, "{odd:?}");
    }
}

mod differential {
    //! Generated files read by both readers: whenever the fast path answers, its reading is
    //! the TOML parser's, and `parse_policy_file` gives the same policies and the same errors
    //! as the TOML path alone (`file` invariants 1-2).

    use super::super::{fast, file, parse_policy_file};
    use crate::policy::DEFAULT_POLICY;
    use proptest::prelude::*;
    use proptest::sample::select;
    use proptest::test_runner::{Config, TestRunner};
    use std::cell::Cell;

    const NAMES: &[&str] = &["a", "b", "org_1", "x-y", "A9", "application", "0", "true"];
    const KEYS: &[&str] = &[
        "source",
        "absolute_timeout",
        "idle_timeout_enabled",
        "idle_timeout",
        "persistent",
    ];
    const DURATIONS: &[&str] = &[
        "0",
        "1",
        "900",
        "{ value = 8, unit = \"HOURS\" }",
        "{unit=\"minutes\",value=3}",
        "{ value = 0, unit = \"DAYS\" }",
        "{ value = 500, unit = \"DAYS\" }",
        "999999999999999999",
    ];
    const ODD_KEYS: &[&str] = &[
        "absolute_timout",
        "\"source\"",
        "source.x",
        "mode",
        "Source",
    ];
    const VALUES: &[&str] = &[
        "\"CUSTOM\"",
        "\"APPLICATION\"",
        "\"MINE\"",
        "\"\"",
        "0",
        "1",
        "900",
        "true",
        "false",
        "{ value = 8, unit = \"HOURS\" }",
        "{unit=\"minutes\",value=3}",
        "{ value = 0, unit = \"DAYS\" }",
        "{ value = 500, unit = \"DAYS\" }",
        "999999999999999999",
    ];
    const ODD_VALUES: &[&str] = &[
        "'CUSTOM'",
        "\"CUS\\u0054OM\"",
        "\"\"\"CUSTOM\"\"\"",
        "007",
        "-5",
        "+5",
        "1_000",
        "1.5",
        "0x10",
        "9999999999999999999",
        "1979-05-27",
        "truex",
        "{ value = 1, unit = \"WEEKS\" }",
        "{ value = 1 }",
        "{ value = 1, unit = \"DAYS\", x = 1 }",
        "{ value = 1, unit = \"DAYS\", }",
        "{ value = 1, value = 2, unit = \"DAYS\" }",
        "{ value = 999999999999999999, unit = \"DAYS\" }",
        "{}",
        "[1]",
        "\"C\tX\"",
        "",
    ];
    const EQUALS: &[&str] = &[" = ", "=", "  =\t", " =", "= "];
    const ENDS: &[&str] = &[
        "",
        " # c",
        "# c",
        "  ",
        "\t#\tx",
        " #é",
        " # \u{7f}",
        " x",
        "\r",
    ];
    const ODD_LINES: &[&str] = &[
        "[orgs.\"q x\"]",
        "[ orgs.a ]",
        "[orgs]",
        "[[orgs.a]]",
        "[orgs.a.b]",
        "[orgs.]",
        "[orgs.é]",
        "[Orgs.a]",
        "[application] x",
        "[application",
        "junk",
        "a.b = 1",
        "\u{feff}# bom",
        "#\u{1}",
    ];

    fn header() -> impl Strategy<Value = String> {
        let long = "n".repeat(300);
        prop_oneof![
            6 => select(NAMES).prop_map(|n| format!("[orgs.{n}]")),
            2 => Just("[application]".to_owned()),
            1 => Just(format!("[orgs.{long}]")),
            1 => select(NAMES).prop_map(|n| format!("  [orgs.{n}]\t")),
        ]
    }

    fn key_value() -> impl Strategy<Value = String> {
        let key = prop_oneof![8 => select(KEYS), 1 => select(ODD_KEYS)];
        let value = prop_oneof![8 => select(VALUES), 1 => select(ODD_VALUES)];
        (key, select(EQUALS), value).prop_map(|(k, e, v)| format!("{k}{e}{v}"))
    }

    fn line() -> impl Strategy<Value = String> {
        let end = prop_oneof![8 => Just(""), 1 => select(ENDS)];
        prop_oneof![
            2 => header(),
            6 => key_value(),
            1 => select(&["", "# comment", "  # indented", "\t"][..]).prop_map(str::to_owned),
            1 => select(ODD_LINES).prop_map(str::to_owned),
        ]
        .prop_flat_map(move |l| end.clone().prop_map(move |e| format!("{l}{e}")))
    }

    /// Tables of distinct known fields, mostly of the right types: the shape that takes the
    /// fast path, with errors of meaning (zero, too long, missing, a bad source) among them, and
    /// now and then one thing outside the subset.
    fn table() -> impl Strategy<Value = String> {
        let odd = || select(ODD_VALUES);
        let source = select(&["\"CUSTOM\"", "\"CUSTOM\"", "\"APPLICATION\"", "\"MINE\""][..]);
        let source = proptest::option::weighted(0.95, prop_oneof![20 => source, 1 => odd()]);
        let duration = || {
            let d = prop_oneof![20 => select(DURATIONS), 1 => select(VALUES), 1 => odd()];
            proptest::option::weighted(0.7, d)
        };
        let boolean = || {
            let b =
                prop_oneof![20 => select(&["true", "false"][..]), 1 => select(VALUES), 1 => odd()];
            proptest::option::weighted(0.4, b)
        };
        let end = prop_oneof![30 => Just(""), 1 => select(ENDS)];
        let extra = proptest::option::weighted(
            0.05,
            prop_oneof![key_value(), select(ODD_LINES).prop_map(str::to_owned)],
        );
        let fields = (source, duration(), boolean(), duration(), boolean());
        (header(), end.clone(), fields, end, extra).prop_map(
            |(h, h_end, (src, a, ie, i, p), f_end, extra)| {
                let mut t = h + h_end;
                let app = t.contains("[application]");
                for (k, v) in [("source", src), ("absolute_timeout", a)]
                    .into_iter()
                    .chain([("idle_timeout_enabled", ie), ("idle_timeout", i)])
                    .chain([("persistent", p)])
                {
                    // An [application] table with a source (TOML's error) now and then.
                    if let Some(v) = v.filter(|v| !(app && k == "source" && *v != "\"MINE\"")) {
                        t.push_str(&format!("\n{k} = {v}{f_end}"));
                    }
                }
                if let Some(x) = extra {
                    t.push('\n');
                    t.push_str(&x);
                }
                t
            },
        )
    }

    fn file() -> impl Strategy<Value = String> {
        let lines = prop::collection::vec(line(), 0..12).prop_map(|l| l.join("\n"));
        let tables = prop::collection::vec(table(), 0..5).prop_map(|t| t.join("\n\n"));
        (prop_oneof![2 => tables, 1 => lines], any::<bool>())
            .prop_map(|(t, nl)| if nl { t + "\n" } else { t })
    }

    #[test]
    fn the_fast_path_reads_what_toml_reads() {
        let (fast_read, fast_invalid) = (Cell::new(0), Cell::new(0));
        let mut runner = TestRunner::new(Config {
            cases: 3_000,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&file(), |text| {
                let slow = file::read_toml(&text);
                if let Some(raw) = fast::read(&text) {
                    prop_assert_eq!(Ok(&raw), slow.as_ref(), "{:?}", text);
                    fast_read.set(fast_read.get() + 1);
                    if file::validate(&text, raw, &DEFAULT_POLICY).is_err() {
                        fast_invalid.set(fast_invalid.get() + 1);
                    }
                }
                if !text.trim().is_empty() {
                    let via_toml = slow.and_then(|raw| file::validate(&text, raw, &DEFAULT_POLICY));
                    prop_assert_eq!(parse_policy_file(&text, &DEFAULT_POLICY), via_toml);
                }
                Ok(())
            })
            .unwrap();
        // The generator must exercise the fast path, with and without errors of meaning.
        assert!(
            fast_read.get() > 300 && fast_invalid.get() > 100,
            "fast path read {} files, {} of them invalid",
            fast_read.get(),
            fast_invalid.get()
        );
    }
}
