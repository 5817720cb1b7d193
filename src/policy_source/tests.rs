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
