//! The module import graph of `src/`: read from the source (every `crate::a::b` path outside a
//! comment, in every file but `main.rs`, which is its own crate), at every depth: at depth 1
//! one node per top-level module (`persist`, `http`), at depth 2 one per module below it
//! (`persist::journal`, with what `persist::journal::writer` imports counted as
//! `persist::journal`'s), and so on. An arrow between a module and its own ancestor is
//! structure, not layering, and is left out; so are `super::` paths (they stay inside one
//! parent module, which the next depth up sees whole).
//!
//! What is checked:
//! 1. The engine layer (the engine, its shards, wheel, id index, sessions, policies, tokens,
//!    the clock and the `changes` seam) imports nothing but itself: never `persist`, `http`,
//!    `metrics`, the server or the daemon.
//! 2. No cycle passes through `persist` or the engine layer.
//! 3. No cycle at all.
//!
//! Run: `cargo test --test blackbox imports`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level modules of the engine layer (check 1).
const ENGINE_LAYER: &[&str] = &[
    "changes", "clock", "engine", "id_index", "policy", "session", "shard", "timefmt", "token",
    "wheel",
];

/// `file → (module path, source)` for every `.rs` file under `src/` but `main.rs`.
fn read_src() -> Vec<(String, String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let rel = p
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if rel == "main.rs" {
                    continue;
                }
                let src = std::fs::read_to_string(&p).unwrap();
                out.push((format!("src/{rel}"), module_of(&rel), src));
            }
        }
    }
    out
}

/// `a/b.rs` and `a/b/mod.rs` → `a::b`; `lib.rs` → `` (the crate root).
fn module_of(rel: &str) -> String {
    let rel = rel.strip_suffix(".rs").unwrap();
    let rel = rel.strip_suffix("/mod").unwrap_or(rel);
    if rel == "lib" {
        return String::new();
    }
    rel.replace('/', "::")
}

/// The `crate::` paths of `src`, comments left out (`crate::a::b::C` → `a::b::C`).
fn crate_paths(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in src.lines() {
        let code = match line.trim_start() {
            l if l.starts_with("//") => continue,
            l => l.split(" //").next().unwrap(),
        };
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().last();
            rest = &rest[at + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // `mycrate::`
            }
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let path = rest[..end].trim_end_matches(':');
            if !path.is_empty() {
                out.push(path.to_owned());
            }
        }
    }
    out
}

/// Arrows `from module → to module`, each with the files that make it.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn related(a: &str, b: &str) -> bool {
    let under = |x: &str, y: &str| y.is_empty() || x == y || x.starts_with(&format!("{y}::"));
    under(a, b) || under(b, a)
}

/// The graph of `files` (file, module, source) with modules cut to their first `depth` segments.
fn graph(files: &[(String, String, String)], depth: usize) -> Graph {
    let modules: BTreeSet<&str> = files.iter().map(|(_, m, _)| m.as_str()).collect();
    let node = |m: &str| -> String { m.split("::").take(depth).collect::<Vec<_>>().join("::") };
    let mut g = Graph::new();
    for (file, from, src) in files {
        for path in crate_paths(src) {
            // The longest prefix of the path that is a module file.
            let segs: Vec<&str> = path.split("::").collect();
            let Some(to) = (1..=segs.len())
                .rev()
                .map(|n| segs[..n].join("::"))
                .find(|m| modules.contains(m.as_str()))
            else {
                continue; // an item of the crate root
            };
            let (a, b) = (node(from), node(&to));
            if a.is_empty() || related(&a, &b) {
                continue;
            }
            g.entry(a)
                .or_default()
                .entry(b)
                .or_default()
                .insert(file.clone());
        }
    }
    g
}

/// The strongly connected components with more than one module (Tarjan), each sorted.
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flat_map(|e| e.keys()) {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                scc.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// One line per arrow inside `scc`, with the files that make it.
fn describe(g: &Graph, scc: &[String]) -> String {
    let mut s = format!("cycle among {}:\n", scc.join(", "));
    for a in scc {
        for (b, files) in g.get(a).into_iter().flatten() {
            if scc.contains(b) {
                let files: Vec<&str> = files.iter().map(String::as_str).collect();
                s += &format!("  {a} -> {b}  ({})\n", files.join(", "));
            }
        }
    }
    s
}

/// The cycles at every depth, described (each once), that satisfy `keep`.
fn found(files: &[(String, String, String)], keep: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deepest = files
        .iter()
        .map(|(_, m, _)| m.split("::").count())
        .max()
        .unwrap_or(1);
    let mut out = Vec::new();
    for depth in 1..=deepest {
        let g = graph(files, depth);
        for scc in cycles(&g) {
            let d = describe(&g, &scc);
            if keep(&scc) && !out.contains(&d) {
                out.push(d);
            }
        }
    }
    out
}

fn in_engine_layer(module: &str) -> bool {
    ENGINE_LAYER.contains(&module.split("::").next().unwrap())
}

#[test]
fn imports_the_engine_layer_imports_only_itself() {
    let files = read_src();
    let deepest = 8;
    let g = graph(&files, deepest);
    let mut bad = Vec::new();
    for (from, tos) in &g {
        if !in_engine_layer(from) {
            continue;
        }
        for (to, by) in tos {
            if !in_engine_layer(to) {
                bad.push(format!("{from} -> {to} ({by:?})"));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "the engine layer reaches up:\n{}",
        bad.join("\n")
    );
}

#[test]
fn imports_no_cycle_passes_through_persist_or_the_engine_layer() {
    let files = read_src();
    let bad = found(&files, |scc| {
        scc.iter()
            .any(|m| m == "persist" || m.starts_with("persist::") || in_engine_layer(m))
    });
    assert!(bad.is_empty(), "{}", bad.join(""));
}

/// No cycle at any depth, anywhere in `src/`.
#[test]
fn imports_no_cycle_in_src() {
    let bad = found(&read_src(), |_| true);
    assert!(bad.is_empty(), "{}", bad.join(""));
}

/// The checker itself finds a cycle at each depth, names the files that make it, and leaves
/// out comments, arrows to an ancestor and the crate root.
#[test]
fn imports_the_checker_finds_a_planted_cycle() {
    let f = |file: &str, src: &str| {
        let rel = file.strip_prefix("src/").unwrap();
        (file.to_owned(), module_of(rel), src.to_owned())
    };
    let files = vec![
        f("src/lib.rs", "pub mod a; pub mod b; pub mod c;"),
        f(
            "src/a.rs",
            "use crate::b::inner::X;\n// crate::c::Z in a comment\n",
        ),
        f("src/b/mod.rs", "pub mod inner; use crate::b::inner::Y;"),
        f(
            "src/b/inner.rs",
            "use crate::b::Z; // crate::a::W\nfn f() { crate::c::g() }",
        ),
        f(
            "src/c.rs",
            "use crate::Root;\nfn g() { let _ = crate::a::thing(); }",
        ),
    ];
    let bad = found(&files, |_| true);
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(bad[0].contains("cycle among a, b, c:"), "{}", bad[0]);
    assert!(bad[0].contains("b -> c  (src/b/inner.rs)"), "{}", bad[0]);
    assert!(bad[1].contains("cycle among a, b::inner, c:"), "{}", bad[1]);
    assert!(bad[1].contains("c -> a  (src/c.rs)"), "{}", bad[1]);
    // Without c's arrow back there is none.
    let mut acyclic = files.clone();
    acyclic[4].2 = "fn g() {}".into();
    assert!(found(&acyclic, |_| true).is_empty());
}
