//! Property test: random creates, touches, revocations, clock steps, evictions and snapshots on
//! a journaled engine; then a crash (nothing but what the journal thread wrote) and a load into
//! a fresh engine must give back exactly the sessions the first one holds.

use super::journal::{FsyncPolicy, Journal};
use super::{load, snapshot};
use crate::clock::ManualClock;
use crate::engine::{Engine, EngineConfig};
use crate::session::{NewSession, SessionView};
use crate::token::SessionId;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

const T0: u64 = 1_800_000_000_000;

#[derive(Debug, Clone)]
enum Op {
    Create {
        user: u8,
        org: Option<u8>,
        meta: bool,
    },
    Touch(usize),
    Revoke(usize),
    RevokeUser(u8),
    /// Whole seconds, so that coalesced activity (one frame per session per second) is exact.
    Advance(u64),
    Sweep,
    Flush,
    Snapshot,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4, proptest::option::of(0u8..3), any::<bool>())
            .prop_map(|(user, org, meta)| Op::Create { user, org, meta }),
        3 => any::<usize>().prop_map(Op::Touch),
        1 => any::<usize>().prop_map(Op::Revoke),
        1 => (0u8..4).prop_map(Op::RevokeUser),
        2 => (1u64..700).prop_map(Op::Advance),
        1 => Just(Op::Sweep),
        1 => Just(Op::Flush),
        1 => Just(Op::Snapshot),
    ]
}

fn engine(clock: Arc<ManualClock>, journal: Option<Arc<Journal>>) -> Engine {
    let cfg = EngineConfig {
        shards: 4,
        ..EngineConfig::default()
    };
    Engine::with_changes(cfg, clock, journal.map(|j| j as _))
}

fn state(e: &Engine, ids: &[SessionId]) -> BTreeMap<SessionId, SessionView> {
    ids.iter()
        .filter_map(|id| e.get(*id).map(|v| (*id, v)))
        .collect()
}

fn temp_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "sessiond-persist-prop-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn snapshot_plus_journal_rebuilds_exactly_the_live_table(
        ops in proptest::collection::vec(arb_op(), 1..120)
    ) {
        let dir = temp_dir();
        let clock = ManualClock::new(T0);
        let journal = Arc::new(Journal::new(4, FsyncPolicy::No));
        let e = engine(clock.clone(), Some(journal.clone()));
        journal.start(&dir, 1).unwrap();
        let mut tokens = Vec::new();
        let mut ids = Vec::new();
        for op in ops {
            match op {
                Op::Create { user, org, meta } => {
                    let metadata = meta.then(|| {
                        crate::session::Metadata::new(vec![("k".into(), format!("v{user}"))]).unwrap()
                    });
                    let c = e.create(NewSession {
                        user_id: format!("user-{user}"),
                        org_id: org.map(|o| format!("org-{o}")),
                        metadata,
                    }).unwrap();
                    ids.push(c.session.id);
                    tokens.push(c.token.expose().to_owned());
                }
                Op::Touch(i) if !tokens.is_empty() => {
                    let _ = e.touch(&tokens[i % tokens.len()]);
                }
                Op::Revoke(i) if !tokens.is_empty() => {
                    e.revoke(&tokens[i % tokens.len()]);
                }
                Op::RevokeUser(u) => {
                    e.revoke_user(&format!("user-{u}"));
                }
                Op::Advance(s) => clock.advance(s * 1_000),
                Op::Sweep => {
                    e.advance();
                }
                Op::Flush => journal.flush(false).unwrap(),
                Op::Snapshot => {
                    snapshot::take(&e, &journal, &dir).unwrap();
                }
                _ => {}
            }
        }
        // The crash: whatever the journal thread would have written by now, nothing more.
        journal.flush(false).unwrap();
        let want = {
            e.advance();
            state(&e, &ids)
        };

        let fresh = engine(clock.clone(), None);
        let report = load::load(&fresh, &dir, false).unwrap();
        prop_assert!(report.torn.is_empty() && report.recovered.is_empty());
        fresh.sweep_expired();
        let got = state(&fresh, &ids);
        prop_assert_eq!(got, want);
        fresh.check();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The on-disk format carries user ids as text: whatever form the table keeps an id in
    /// (inline, long, packed), it is written out and read back byte for byte, by the snapshot
    /// (sessions before `cut`) and by the journal (those after), and found by user again.
    #[test]
    fn any_user_id_comes_back_exactly_from_snapshot_and_journal(
        users in proptest::collection::vec(crate::shard::arb_user_id(), 1..40),
        cut in any::<proptest::sample::Index>(),
    ) {
        let dir = temp_dir();
        let clock = ManualClock::new(T0);
        let journal = Arc::new(Journal::new(4, FsyncPolicy::No));
        let e = engine(clock.clone(), Some(journal.clone()));
        journal.start(&dir, 1).unwrap();
        let cut = cut.index(users.len() + 1);
        let mut ids = Vec::new();
        for (i, u) in users.iter().enumerate() {
            if i == cut {
                snapshot::take(&e, &journal, &dir).unwrap();
            }
            let c = e.create(NewSession {
                user_id: u.clone(),
                org_id: Some(u.clone()),
                metadata: None,
            }).unwrap();
            ids.push(c.session.id);
        }
        journal.flush(false).unwrap();
        let want = state(&e, &ids);
        let fresh = engine(clock, None);
        load::load(&fresh, &dir, false).unwrap();
        prop_assert_eq!(state(&fresh, &ids), want);
        for (id, u) in ids.iter().zip(&users) {
            let got = fresh.get(*id).unwrap().user_id;
            prop_assert_eq!(got.as_str(), u.as_str());
        }
        for u in &users {
            let n = users.iter().filter(|x| *x == u).count();
            prop_assert_eq!(fresh.list_user(u).len(), n);
        }
        fresh.check();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A cluster node's snapshot keeps its place in the stream and the "not before" marks in force:
/// after a restart, a session older than a mark that reaches the node is still dropped.
#[test]
fn a_snapshot_keeps_the_stream_sequence_and_the_marks() {
    let dir = temp_dir();
    let clock = ManualClock::new(T0);
    let journal = Arc::new(Journal::new(4, FsyncPolicy::No));
    let cfg = || EngineConfig {
        shards: 4,
        cluster: true,
        ..EngineConfig::default()
    };
    let e = Engine::with_changes(cfg(), clock.clone(), Some(journal.clone() as _));
    journal.start(&dir, 1).unwrap();
    e.create(NewSession {
        user_id: "alice".into(),
        ..Default::default()
    })
    .unwrap();
    clock.advance(1_000);
    assert_eq!(e.revoke_user("alice"), 1);
    e.apply_not_before(crate::session::Scope::Org, "acme", T0 + 500);
    e.set_stream_applied(1_234);
    snapshot::take(&e, &journal, &dir).unwrap();
    journal.flush(false).unwrap();

    let fresh = Engine::new(cfg(), clock.clone());
    load::load(&fresh, &dir, false).unwrap();
    assert_eq!(fresh.stream_applied(), 1_234);
    assert_eq!(fresh.marks(), 2);
    let older = |id: u128, user: &str, org: Option<&str>| crate::session::Saved {
        id,
        created_ms: T0 + 100,
        last_ms: T0 + 100,
        user: user.into(),
        org: org.map(Into::into),
        metadata: None,
    };
    assert!(!fresh.restore(older(7, "alice", None)));
    assert!(!fresh.restore(older(8, "bob", Some("acme"))));
    assert!(fresh.restore(older(9, "bob", None)));
    // A single node's snapshot has neither.
    let single = Engine::new(EngineConfig::default(), clock.clone());
    let dir2 = temp_dir();
    let j2 = Arc::new(Journal::new(4, FsyncPolicy::No));
    j2.start(&dir2, 1).unwrap();
    snapshot::take(&single, &j2, &dir2).unwrap();
    let fresh = Engine::new(EngineConfig::default(), clock);
    load::load(&fresh, &dir2, false).unwrap();
    assert_eq!((fresh.stream_applied(), fresh.marks()), (0, 0));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dir2);
}

/// A cluster node's revocation of a session it does not hold (engine invariant 7) is in its
/// journal: replayed, it removes nothing and leaves the rest as it was, and it is among the
/// revocations the node publishes again after a restart. A single node writes no frame for it.
#[test]
fn a_revocation_of_a_session_not_held_replays_as_nothing() {
    for cluster in [true, false] {
        let dir = temp_dir();
        let clock = ManualClock::new(T0);
        let journal = Arc::new(Journal::new(4, FsyncPolicy::No));
        let cfg = || EngineConfig {
            shards: 4,
            cluster,
            ..EngineConfig::default()
        };
        let e = Engine::with_changes(cfg(), clock.clone(), Some(journal.clone() as _));
        journal.start(&dir, 1).unwrap();
        let kept = e
            .create(NewSession {
                user_id: "alice".into(),
                ..Default::default()
            })
            .unwrap()
            .session
            .id;
        let elsewhere = SessionId(0x5e55_1011);
        assert!(!e.revoke_id(elsewhere));
        journal.flush(false).unwrap();

        let fresh = Engine::new(cfg(), clock.clone());
        let report = load::load(&fresh, &dir, false).unwrap();
        assert_eq!(state(&fresh, &[kept]), state(&e, &[kept]));
        assert_eq!(fresh.len(), 1);
        let want: &[u128] = if cluster { &[elsewhere.0] } else { &[] };
        assert_eq!(report.revoked, want, "cluster: {cluster}");
        assert_eq!(
            report.replayed,
            1 + u64::from(cluster),
            "cluster: {cluster}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A snapshot encoded to bytes (as a cluster node publishes it) imports into another engine
/// with every session, its stream sequence and marks; one cut anywhere short is refused.
#[test]
fn an_encoded_snapshot_imports_whole_or_not_at_all() {
    let clock = ManualClock::new(T0);
    let cfg = || EngineConfig {
        shards: 4,
        cluster: true,
        ..EngineConfig::default()
    };
    let e = Engine::new(cfg(), clock.clone());
    let ids: Vec<SessionId> = (0..200)
        .map(|i| {
            e.create(NewSession {
                user_id: format!("user-{}", i % 7),
                ..Default::default()
            })
            .unwrap()
            .session
            .id
        })
        .collect();
    clock.advance(1_000);
    e.revoke_user("user-3");
    e.set_stream_applied(99);
    let mut bytes = Vec::new();
    let (sessions, len) = snapshot::encode(&e, &mut bytes).unwrap();
    assert_eq!((sessions, len), (e.len() as u64, bytes.len() as u64));

    let fresh = Engine::new(cfg(), clock.clone());
    let name = std::path::Path::new("published");
    let n = load::import(&fresh, &bytes[..], len, name).unwrap();
    assert_eq!(n, e.len() as u64);
    assert_eq!(state(&fresh, &ids), state(&e, &ids));
    assert_eq!((fresh.stream_applied(), fresh.marks()), (99, 1));

    for cut in [0, 10, 17, bytes.len() / 2, bytes.len() - 1] {
        let other = Engine::new(cfg(), clock.clone());
        let r = load::import(&other, &bytes[..cut], cut as u64, name);
        assert!(
            matches!(r, Err(load::LoadError::DamagedImport { .. })),
            "cut at {cut}: {r:?}"
        );
    }
}

/// A snapshot takes one chunk of each shard of a group in turn, a group (as many shards as
/// cores) after the other (`snapshot`, invariant 6), so that a start-up's replay threads, each
/// owning some shards, all have work from the first chunks on, one shard at a time.
#[test]
fn a_snapshot_interleaves_the_shards_of_a_group_chunk_by_chunk() {
    use super::record::{Entry, Reader, SNAPSHOT_MAGIC};
    let clock = ManualClock::new(T0);
    let e = Engine::new(
        EngineConfig {
            shards: 8,
            ..EngineConfig::default()
        },
        clock,
    );
    let per_shard = snapshot::CHUNK + 100;
    let mut filled = vec![0; e.shard_count()];
    while filled.iter().any(|&f| f < per_shard) {
        let c = e
            .create(NewSession {
                user_id: "u".into(),
                ..Default::default()
            })
            .unwrap();
        filled[e.shard_of(c.session.id)] += 1;
    }
    let mut bytes = Vec::new();
    snapshot::encode(&e, &mut bytes).unwrap();
    let mut r = Reader::open(&bytes[..], bytes.len() as u64, SNAPSHOT_MAGIC)
        .unwrap()
        .unwrap();
    // The shard of each session in file order, as runs.
    fn push(runs: &mut Vec<(usize, usize)>, shard: usize, n: usize) {
        match runs.last_mut() {
            Some((last, len)) if *last == shard => *len += n,
            _ => runs.push((shard, n)),
        }
    }
    let mut runs = Vec::new();
    while let Some((_, entry)) = r.read_next().unwrap().unwrap() {
        if let Entry::Create(s) = entry {
            push(&mut runs, e.shard_of(SessionId(s.id)), 1);
        }
    }
    // The walk the module doc describes.
    let group = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, e.shard_count());
    let mut want = Vec::new();
    for first in (0..e.shard_count()).step_by(group) {
        let members = first..(first + group).min(e.shard_count());
        let mut left: Vec<usize> = filled[members.clone()].to_vec();
        while left.iter().any(|&l| l > 0) {
            for (k, l) in left.iter_mut().enumerate() {
                let take = (*l).min(snapshot::CHUNK);
                if take > 0 {
                    push(&mut want, members.start + k, take);
                    *l -= take;
                }
            }
        }
    }
    assert_eq!(runs, want);
    assert_eq!(runs.iter().map(|r| r.1).sum::<usize>(), e.len());
}

/// Every way a snapshot's frames can be well formed yet wrong is damage at the frame that shows
/// it, with a reason, never a partial load taken for a whole one.
#[test]
fn a_snapshot_whose_frames_are_out_of_place_is_damaged_at_the_right_frame() {
    use super::record::{SNAPSHOT_MAGIC, put_create, put_end};
    let create = |buf: &mut Vec<u8>, id: u128| put_create(buf, id, T0, T0, "u", None, None);
    // A CREATE frame whose checksum holds but whose user id is not UTF-8.
    let not_utf8 = |buf: &mut Vec<u8>| {
        let mut body = vec![1u8];
        body.extend_from_slice(&9u128.to_le_bytes());
        body.extend_from_slice(&T0.to_le_bytes());
        body.extend_from_slice(&T0.to_le_bytes());
        body.extend_from_slice(&2u16.to_le_bytes());
        body.extend_from_slice(&[0xff, 0xfe]);
        body.extend_from_slice(&u16::MAX.to_le_bytes());
        body.push(0);
        buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        buf.extend_from_slice(&body);
    };
    // Where each case goes wrong: after the magic, one session's frame, and an END frame.
    let mut one = Vec::new();
    create(&mut one, 1);
    let (first, end_len) = (SNAPSHOT_MAGIC.len() + one.len(), 17);
    type Build = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Build, usize, &str)> = vec![
        (
            "a session after the end",
            Box::new(move |b| {
                create(b, 1);
                put_end(b, 1);
                create(b, 2);
            }),
            first + end_len,
            "unexpected frame",
        ),
        (
            "a count that does not match",
            Box::new(move |b| {
                create(b, 1);
                put_end(b, 2);
            }),
            first,
            "precede its end",
        ),
        (
            "no end",
            Box::new(move |b| create(b, 1)),
            first,
            "ends before its END frame",
        ),
        (
            "a user id that is not UTF-8",
            Box::new(move |b| {
                create(b, 1);
                not_utf8(b);
                put_end(b, 2);
            }),
            first,
            "does not decode",
        ),
    ];
    for (what, build, at, want) in cases {
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        build(&mut bytes);
        let e = Engine::new(EngineConfig::default(), ManualClock::new(T0));
        match load::import(&e, &bytes[..], bytes.len() as u64, "test".as_ref()) {
            Err(load::LoadError::DamagedImport { offset, reason, .. }) => {
                assert!(reason.contains(want), "{what}: {reason}");
                assert_eq!(offset, at as u64, "{what}: {reason}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
}
