//! The record format's tests: encode, decode, torn tails and damage, frames in memory.

#[test]
fn decode_all_reads_a_buffer_of_frames_and_stops_at_damage() {
    let mut buf = Vec::new();
    super::put_activity(&mut buf, 7, 1_000);
    super::put_remove(&mut buf, 7, super::RemoveReason::Revoked);
    let all: Vec<_> = super::decode_all(&buf).collect();
    assert_eq!(
        all,
        vec![
            Ok(super::Entry::Activity {
                id: 7,
                last_ms: 1_000
            }),
            Ok(super::Entry::Remove {
                id: 7,
                reason: super::RemoveReason::Revoked
            }),
        ]
    );
    let mut one = Vec::new();
    super::put_activity(&mut one, 7, 1_000);
    let first = one.len();
    let mut bad = buf.clone();
    *bad.last_mut().unwrap() ^= 1;
    let all: Vec<_> = super::decode_all(&bad).collect();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1], Err(first));
    let cut: Vec<_> = super::decode_all(&buf[..buf.len() - 1]).collect();
    assert_eq!(cut[1], Err(first));
    assert_eq!(super::decode_all(&[]).count(), 0);
}

use super::*;

fn sample() -> Vec<Entry> {
    vec![
        Entry::Create(Saved {
            id: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
            created_ms: 1_700_000_000_000,
            last_ms: 1_700_000_000_500,
            user: "alice".into(),
            org: Some("acme".into()),
            metadata: Some(
                Metadata::new(vec![
                    ("ip".into(), "10.0.0.1".into()),
                    ("a".into(), "".into()),
                ])
                .unwrap(),
            ),
        }),
        Entry::Create(Saved {
            id: 7,
            created_ms: 1,
            last_ms: 2,
            user: "ü".repeat(100).into(),
            org: None,
            metadata: None,
        }),
        Entry::Activity { id: 7, last_ms: 99 },
        Entry::Remove {
            id: 7,
            reason: RemoveReason::Idle,
        },
        Entry::End { count: 2 },
    ]
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut buf = JOURNAL_MAGIC.to_vec();
    for e in entries {
        match e {
            Entry::Create(s) => put_create(
                &mut buf,
                s.id,
                s.created_ms,
                s.last_ms,
                &s.user,
                s.org.as_deref(),
                s.metadata.as_ref(),
            ),
            Entry::Activity { id, last_ms } => put_activity(&mut buf, *id, *last_ms),
            Entry::Remove { id, reason } => put_remove(&mut buf, *id, *reason),
            Entry::End { count } => put_end(&mut buf, *count),
            Entry::NotBefore {
                scope,
                id,
                before_ms,
            } => put_not_before(&mut buf, *scope, id, *before_ms),
            Entry::StreamSeq { seq } => put_stream_seq(&mut buf, *seq),
        }
    }
    buf
}

fn read_all(bytes: &[u8]) -> (Vec<Entry>, Option<Damage>) {
    read_from(bytes, bytes.len())
}

/// Every entry a reader of `len` bytes from `src` finds, and the damage that stopped it.
fn read_from(src: impl std::io::Read, len: usize) -> (Vec<Entry>, Option<Damage>) {
    let mut r = match Reader::open(src, len as u64, JOURNAL_MAGIC).unwrap() {
        Ok(r) => r,
        Err(d) => return (vec![], Some(d)),
    };
    let mut out = vec![];
    loop {
        match r.read_next().unwrap() {
            Ok(Some((_, e))) => out.push(e),
            Ok(None) => return (out, None),
            Err(d) => return (out, Some(d)),
        }
    }
}

#[test]
fn round_trips_every_kind() {
    let entries = sample();
    assert_eq!(read_all(&encode(&entries)), (entries, None));
}

#[test]
fn a_cut_anywhere_in_the_last_frame_is_a_torn_tail_that_keeps_the_rest() {
    let entries = sample();
    let full = encode(&entries);
    let before_last = encode(&entries[..entries.len() - 1]).len();
    for cut in before_last..full.len() {
        let (got, damage) = read_all(&full[..cut]);
        assert_eq!(got, entries[..entries.len() - 1], "cut at {cut}");
        let expect = (cut > before_last).then_some(Damage::Torn {
            offset: before_last as u64,
        });
        assert_eq!(damage, expect, "cut at {cut}");
    }
}

#[test]
fn zeros_after_a_crash_are_a_torn_tail() {
    let entries = sample();
    let mut bytes = encode(&entries);
    let end = bytes.len() as u64;
    bytes.extend_from_slice(&[0; 4096]);
    let (got, damage) = read_all(&bytes);
    assert_eq!(got, entries);
    assert_eq!(damage, Some(Damage::Torn { offset: end }));
}

#[test]
fn a_flipped_byte_in_the_middle_is_damage_at_that_frame() {
    let entries = sample();
    let bytes = encode(&entries);
    let first = encode(&entries[..1]).len();
    let mut bad = bytes.clone();
    bad[first + 12] ^= 0x40; // inside the second frame's body
    let (got, damage) = read_all(&bad);
    assert_eq!(got, entries[..1]);
    match damage {
        Some(Damage::Corrupt { offset, reason }) => {
            assert_eq!(offset, first as u64);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    // A length that runs off the end is torn, a silly one in the middle is corrupt.
    let mut bad = bytes.clone();
    bad[first..first + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(read_all(&bad).1, Some(Damage::Corrupt { .. })));
}

#[test]
fn a_foreign_file_is_refused_at_offset_zero() {
    let mut bytes = encode(&sample());
    bytes[0] = b'X';
    assert!(matches!(
        read_all(&bytes).1,
        Some(Damage::Corrupt { offset: 0, .. })
    ));
}

/// A source that hands out at most 777 bytes a read, as a pipe or a slow disk may.
struct Trickle<'a>(&'a [u8]);

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = out.len().min(777).min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

fn read_trickled(bytes: &[u8]) -> (Vec<Entry>, Option<Damage>) {
    read_from(Trickle(bytes), bytes.len())
}

#[test]
fn frames_across_the_readers_buffer_refills_read_alike() {
    // Over 3 MiB of frames of varying length: several refills, frames cut by each, from a
    // source that answers in short reads.
    let entries: Vec<Entry> = (0..45_000u128)
        .map(|i| {
            Entry::Create(Saved {
                id: i,
                created_ms: i as u64,
                last_ms: i as u64 + 1,
                user: "u".repeat(1 + (i % 97) as usize).into(),
                org: (i % 3 == 0).then(|| "org".into()),
                metadata: None,
            })
        })
        .collect();
    let bytes = encode(&entries);
    assert!(bytes.len() > 3 * READ_AHEAD);
    assert_eq!(read_trickled(&bytes), (entries.clone(), None));

    // Damage in a frame that straddles the first refill is found at that frame's offset.
    let mut at = JOURNAL_MAGIC.len();
    let mut n = 0;
    while at + encode_one(&entries[n]).len() <= READ_AHEAD {
        at += encode_one(&entries[n]).len();
        n += 1;
    }
    let mut bad = bytes.clone();
    bad[at + 10] ^= 0x01;
    let (got, damage) = read_trickled(&bad);
    assert_eq!(got, entries[..n]);
    assert!(
        matches!(damage, Some(Damage::Corrupt { offset, .. }) if offset == at as u64),
        "{damage:?}"
    );

    // Zeros from inside the buffer to well past it are a torn tail.
    let mut zeroed = bytes.clone();
    zeroed[at..].fill(0);
    assert_eq!(
        read_trickled(&zeroed),
        (
            entries[..n].to_vec(),
            Some(Damage::Torn { offset: at as u64 })
        )
    );
    // ... but a good frame after them is not.
    let mut late = zeroed.clone();
    late.extend_from_slice(&encode_one(&entries[0]));
    assert!(matches!(
        read_trickled(&late).1,
        Some(Damage::Corrupt { offset, .. }) if offset == at as u64
    ));
}

fn encode_one(e: &Entry) -> Vec<u8> {
    encode(std::slice::from_ref(e))[JOURNAL_MAGIC.len()..].to_vec()
}
