//! Unit tests of the blob store: verification, staging hygiene, concurrency and pins.

use std::fs;
use std::path::Path;
use std::process::Command;

use super::*;

fn store() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    (dir, store)
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn staging_names(store: &BlobStore) -> Vec<String> {
    names(&store.root().join("staging"))
}

fn blob_names(store: &BlobStore) -> Vec<String> {
    names(&store.root().join("blobs/sha256"))
}

#[test]
fn commit_stores_verified_content() {
    let (_dir, store) = store();
    let content = b"hello, layer";
    let digest = Digest::of(content);
    assert_eq!(store.size_of(&digest), None);
    let mut writer = store.writer(&digest, content.len() as u64).unwrap();
    writer.write(&content[..5]).unwrap();
    assert_eq!(writer.written(), 5);
    writer.write(&content[5..]).unwrap();
    assert_eq!(writer.written(), content.len() as u64);
    let path = writer.commit().unwrap();
    assert_eq!(path, store.path(&digest));
    assert_eq!(fs::read(&path).unwrap(), content);
    assert_eq!(store.size_of(&digest), Some(content.len() as u64));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert!(staging_names(&store).is_empty());
}

#[test]
fn digest_mismatch_stores_nothing() {
    let (_dir, store) = store();
    let expected = Digest::of(b"expected");
    let mut writer = store.writer(&expected, 8).unwrap();
    writer.write(b"tampered").unwrap();
    match writer.commit() {
        Err(CacheError::DigestMismatch {
            expected: e,
            actual,
        }) => {
            assert_eq!(e, expected);
            assert_eq!(actual, Digest::of(b"tampered"));
        }
        other => panic!("{other:?}"),
    }
    assert!(blob_names(&store).is_empty());
    assert!(staging_names(&store).is_empty());
}

#[test]
fn size_mismatch_shorter_and_longer_stores_nothing() {
    let (_dir, store) = store();
    let content = b"0123456789";
    let digest = Digest::of(content);

    let mut short = store.writer(&digest, 10).unwrap();
    short.write(&content[..7]).unwrap();
    assert!(matches!(
        short.commit(),
        Err(CacheError::SizeMismatch {
            expected: 10,
            actual: 7,
            ..
        })
    ));

    let mut long = store.writer(&digest, 10).unwrap();
    long.write(content).unwrap();
    assert!(matches!(
        long.write(b"xyz"),
        Err(CacheError::SizeMismatch {
            expected: 10,
            actual: 13,
            ..
        })
    ));
    // Poisoned: committing still fails, even though the first 10 bytes were right.
    assert!(matches!(
        long.commit(),
        Err(CacheError::SizeMismatch {
            expected: 10,
            actual: 13,
            ..
        })
    ));

    // A descriptor that claims fewer bytes than the content has.
    assert!(matches!(
        store.writer(&digest, 4).unwrap().write(content),
        Err(CacheError::SizeMismatch {
            expected: 4,
            actual: 10,
            ..
        })
    ));

    assert!(blob_names(&store).is_empty());
    assert!(staging_names(&store).is_empty());
}

#[test]
fn drop_without_commit_removes_staging_file() {
    let (_dir, store) = store();
    let digest = Digest::of(b"abc");
    let mut writer = store.writer(&digest, 3).unwrap();
    writer.write(b"ab").unwrap();
    assert_eq!(staging_names(&store).len(), 1);
    drop(writer);
    assert!(staging_names(&store).is_empty());
    assert!(blob_names(&store).is_empty());
}

#[test]
fn writer_for_present_blob_leaves_it_alone_until_commit() {
    let (_dir, store) = store();
    let digest = Digest::of(b"abc");
    store.put(&digest, b"abc").unwrap();
    let mut writer = store.writer(&digest, 3).unwrap();
    writer.write(b"abd").unwrap();
    assert!(writer.commit().is_err());
    assert_eq!(store.read(&digest).unwrap(), b"abc");
    let mut writer = store.writer(&digest, 3).unwrap();
    writer.write(b"abc").unwrap();
    assert_eq!(writer.commit().unwrap(), store.path(&digest));
    assert_eq!(blob_names(&store), [digest.hex()]);
    assert!(staging_names(&store).is_empty());
}

#[test]
fn open_removes_stale_staging_files_and_keeps_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let staging = dir.path().join("staging");
    let hex = Digest::of(b"x").hex().to_owned();

    let mut done = Command::new("true").spawn().unwrap();
    done.wait().unwrap();
    let mut sleeper = Command::new("sleep").arg("5").spawn().unwrap();

    let dead = format!("{hex}.{}.0123456789abcdef-0.partial", done.id());
    let dead_big = format!("{hex}.{}.0123456789abcdef-1.partial", 0x7fff_fff0);
    let live = format!("{hex}.{}.0123456789abcdef-0.partial", sleeper.id());
    let own_old = format!("{hex}.{}.0123456789abcdef-0.partial", std::process::id());
    let junk = ["junk", "a.b.partial", "x.-5.t-0.partial", "x.0.t-0.partial"];
    for name in [dead.as_str(), &dead_big, &live, &own_old]
        .iter()
        .chain(&junk)
    {
        fs::write(staging.join(name), b"partial").unwrap();
    }
    // A writer of this process, open right now, must survive a second open.
    let mut writer = store.writer(&Digest::of(b"y"), 1).unwrap();
    let mine = staging_names(&store)
        .into_iter()
        .find(|n| n.starts_with(Digest::of(b"y").hex()))
        .unwrap();

    BlobStore::open(dir.path()).unwrap();
    let mut expected = vec![live, mine];
    expected.sort();
    assert_eq!(names(&staging), expected);

    writer.write(b"y").unwrap();
    writer.commit().unwrap();
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}

#[test]
fn open_keeps_a_staging_file_whose_blob_lock_another_process_holds() {
    // A restarted pod's envbox is pid 1 like the old pod's, which may still be downloading on
    // the same volume: its file looks like this process's earlier incarnation's (same pid,
    // another token), but the blob's lock, held by the old one, says it is live.
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let staging = dir.path().join("staging");
    let digest = Digest::of(b"downloading elsewhere");
    let theirs = format!(
        "{}.{}.0123456789abcdef-0.partial",
        digest.hex(),
        std::process::id()
    );
    fs::write(staging.join(&theirs), b"partial").unwrap();
    // Another holder: flock conflicts between open file descriptions, also in one process.
    let other = crate::lock::VolumeLocks::new(dir.path());
    let (held, _) = other
        .take(
            &format!("blob-{}", digest.hex()),
            crate::lock::Mode::Exclusive,
            "test",
        )
        .unwrap();
    drop(store);
    BlobStore::open(dir.path()).unwrap();
    assert_eq!(names(&staging), [theirs]);
    drop(held);
    BlobStore::open(dir.path()).unwrap();
    assert!(names(&staging).is_empty());
}

#[test]
fn concurrent_writers_of_one_blob_both_commit() {
    let (_dir, store) = store();
    let content: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::of(&content);
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut writer = store.writer(&digest, content.len() as u64).unwrap();
                barrier.wait();
                for chunk in content.chunks(64 * 1024) {
                    writer.write(chunk).unwrap();
                }
                assert_eq!(writer.commit().unwrap(), store.path(&digest));
            });
        }
    });
    assert_eq!(blob_names(&store), [digest.hex()]);
    assert_eq!(store.read(&digest).unwrap(), content);
    assert!(staging_names(&store).is_empty());
}

#[test]
fn put_read_round_trip_and_remove() {
    let (_dir, store) = store();
    let manifest = br#"{"schemaVersion":2}"#;
    let digest = Digest::of(manifest);
    assert_eq!(store.put(&digest, manifest).unwrap(), store.path(&digest));
    assert_eq!(store.read(&digest).unwrap(), manifest);
    assert!(matches!(
        store.put(&Digest::of(b"other"), manifest),
        Err(CacheError::DigestMismatch { .. })
    ));
    store.remove(&digest).unwrap();
    store.remove(&digest).unwrap();
    match store.read(&digest) {
        Err(CacheError::Io { action, path, .. }) => {
            assert_eq!(action, "reading blob");
            assert_eq!(path, store.path(&digest));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn list_is_sorted_and_ignores_junk() {
    let (_dir, store) = store();
    let mut expected: Vec<BlobInfo> = ["one", "two", "three", "four"]
        .iter()
        .map(|text| {
            let digest = Digest::of(text.as_bytes());
            store.put(&digest, text.as_bytes()).unwrap();
            BlobInfo {
                digest,
                size: text.len() as u64,
            }
        })
        .collect();
    expected.sort_by(|a, b| a.digest.cmp(&b.digest));
    let blobs = store.root().join("blobs/sha256");
    fs::write(blobs.join("README"), b"junk").unwrap();
    fs::write(blobs.join("A".repeat(64)), b"upper case").unwrap();
    fs::write(blobs.join(format!("{}.tmp", "0".repeat(64))), b"junk").unwrap();
    fs::create_dir(blobs.join("1".repeat(64))).unwrap();
    assert_eq!(store.list().unwrap(), expected);
}

#[test]
fn pin_round_trip() {
    let (_dir, store) = store();
    let manifest = Digest::of(b"manifest");
    let other = Digest::of(b"other manifest");
    let references = [
        format!("registry.example.com:5000/team/img@{manifest}"),
        "ubuntu:22.04".to_owned(),
        "docker.io/library/ubuntu:22.04".to_owned(),
        ".".to_owned(),
        "..".to_owned(),
        String::new(),
        "x".repeat(400),
        "ünïcode/ref:tag".to_owned(),
    ];
    for reference in &references {
        assert_eq!(store.pinned(reference).unwrap(), None);
        store.pin(reference, &manifest).unwrap();
        assert_eq!(store.pinned(reference).unwrap(), Some(manifest.clone()));
    }
    store.pin("ubuntu:22.04", &other).unwrap();
    assert_eq!(store.pinned("ubuntu:22.04").unwrap(), Some(other.clone()));
    assert_eq!(store.pinned("ubuntu:22.04 ").unwrap(), None);

    let names = names(&store.root().join("refs"));
    assert_eq!(names.len(), references.len());
    assert!(names.iter().all(|n| n.len() < 256 && !n.starts_with('.')));
    let mut expected: Vec<(String, Digest)> = references
        .iter()
        .map(|r| {
            let digest = if r == "ubuntu:22.04" {
                &other
            } else {
                &manifest
            };
            (r.clone(), digest.clone())
        })
        .collect();
    expected.sort();
    let mut pins = store.pins().unwrap();
    pins.sort();
    assert_eq!(pins, expected);
    assert!(staging_names(&store).is_empty());
}

#[test]
fn pins_list_the_most_recently_used_first_and_unpin_removes_one() {
    let (_dir, store) = store();
    let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
    // Apart by more than the file system's timestamp granularity (a kernel tick).
    let tick = || std::thread::sleep(std::time::Duration::from_millis(30));
    store.pin("a:1", &a).unwrap();
    tick();
    store.pin("b:1", &b).unwrap();
    assert_eq!(
        store.pins().unwrap(),
        [("b:1".to_owned(), b.clone()), ("a:1".to_owned(), a.clone())]
    );
    tick();
    store.used("a:1", &a).unwrap();
    assert_eq!(
        store.pins().unwrap(),
        [("a:1".to_owned(), a.clone()), ("b:1".to_owned(), b.clone())]
    );
    store.unpin("a:1").unwrap();
    store.unpin("a:1").unwrap();
    assert_eq!(store.pins().unwrap(), [("b:1".to_owned(), b)]);
}

#[test]
fn corrupt_pin_reads_as_absent_and_is_removed() {
    let (_dir, store) = store();
    store.pin("ubuntu:22.04", &Digest::of(b"m")).unwrap();
    let path = store.root().join("refs").join("ubuntu%3A22.04");
    assert!(path.exists());
    for corrupt in [
        &b"sha256:nothex\nubuntu:22.04\n"[..],
        b"",
        b"\xff\xfe",
        b"sha256:",
    ] {
        fs::write(&path, corrupt).unwrap();
        assert_eq!(store.pins().unwrap(), []);
        assert_eq!(store.pinned("ubuntu:22.04").unwrap(), None);
        assert!(!path.exists());
    }
}

#[test]
fn large_blob_in_one_mib_chunks() {
    let (_dir, store) = store();
    let chunk: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut hasher = sha2::Sha256::default();
    for _ in 0..64 {
        sha2::Digest::update(&mut hasher, &chunk);
    }
    let digest = Digest::from_hasher(hasher);
    let mut writer = store.writer(&digest, 64 * chunk.len() as u64).unwrap();
    for _ in 0..64 {
        writer.write(&chunk).unwrap();
    }
    writer.commit().unwrap();
    assert_eq!(store.size_of(&digest), Some(64 * 1024 * 1024));
    assert_eq!(store.list().unwrap().len(), 1);
}

/// The unsynced markers of the store (`blobs/.unsynced/`).
fn marker_names(store: &BlobStore) -> Vec<String> {
    names(&store.root().join("blobs/.unsynced"))
}

fn write_blob(store: &BlobStore, content: &[u8]) -> Digest {
    let digest = Digest::of(content);
    let mut writer = store.writer(&digest, content.len() as u64).unwrap();
    writer.write(content).unwrap();
    writer.commit().unwrap();
    digest
}

#[test]
fn a_blob_published_unsynced_before_a_restart_is_removed_and_a_synced_one_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let boot = |id: &str| BlobStore::open_in_boot(dir.path(), Some(id.to_owned())).unwrap();

    // Boot 1: a streamed blob, synced; another streamed blob, not synced; a small blob put
    // (fsync'd, never marked).
    let first = boot("b1");
    let kept = write_blob(&first, b"synced layer");
    assert_eq!(marker_names(&first), vec![format!("{}.b1", kept.hex())]);
    assert_eq!(first.sync().unwrap(), 1);
    assert!(marker_names(&first).is_empty());
    let torn = write_blob(&first, b"unsynced layer");
    let config = Digest::of(b"{}");
    first.put(&config, b"{}").unwrap();
    assert_eq!(marker_names(&first), vec![format!("{}.b1", torn.hex())]);

    // Same boot: the page cache holds everything, nothing is dropped.
    let again = boot("b1");
    assert_eq!(again.size_of(&torn), Some(14));

    // Boot 2: the blob marked in boot 1 is gone, so the next pull fetches it again; the synced
    // one and the put one stay.
    let second = boot("b2");
    assert_eq!(second.size_of(&torn), None);
    assert_eq!(second.read(&kept).unwrap(), b"synced layer");
    assert_eq!(second.read(&config).unwrap(), b"{}");
    assert!(marker_names(&second).is_empty());
    // Fetched again in boot 2, synced: boot 3 keeps it.
    write_blob(&second, b"unsynced layer");
    assert_eq!(second.sync().unwrap(), 1);
    assert_eq!(boot("b3").size_of(&torn), Some(14));
}

#[test]
fn without_a_boot_id_a_streamed_blob_is_fsynced_and_never_marked() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open_in_boot(dir.path(), None).unwrap();
    let digest = write_blob(&store, b"layer");
    assert!(marker_names(&store).is_empty());
    assert_eq!(store.sync().unwrap(), 0);
    assert_eq!(
        BlobStore::open_in_boot(dir.path(), Some("b2".into()))
            .unwrap()
            .size_of(&digest),
        Some(5)
    );
}

#[test]
fn removing_a_blob_removes_its_marker_so_a_restart_has_nothing_to_drop() {
    let (_dir, store) = store();
    let digest = write_blob(&store, b"layer");
    assert_eq!(marker_names(&store).len(), 1);
    store.remove(&digest).unwrap();
    assert!(marker_names(&store).is_empty());
    assert!(blob_names(&store).is_empty());
}

/// A streamed blob is published without waiting for the disk, and reaches it with the store's
/// sync; a put blob is on the device when `put` returns.
#[test]
fn a_streamed_blob_does_not_wait_for_the_disk_until_the_sync_and_a_put_one_does() {
    const KIB: usize = 4096;
    let disk = crate::testing::LoopExt4::new();
    let store = BlobStore::open(&disk.mnt.join("state")).unwrap();
    let data = crate::testing::incompressible(KIB);

    let (streamed, streamed_kib) = disk.written_during(|| write_blob(&store, &data));
    assert!(
        streamed_kib < KIB as u64 / 2,
        "committing a streamed blob wrote {streamed_kib} KiB to the device"
    );
    let (synced, synced_kib) = disk.written_during(|| store.sync().unwrap());
    assert_eq!(synced, 1);
    assert!(
        synced_kib >= KIB as u64,
        "the sync returned with only {synced_kib} KiB on the device"
    );

    let mut small = data.clone();
    small[0] ^= 1;
    let (_, put_kib) = disk.written_during(|| store.put(&Digest::of(&small), &small).unwrap());
    assert!(
        put_kib >= KIB as u64,
        "put returned with only {put_kib} KiB on the device"
    );
    assert_eq!(store.read(&streamed).unwrap(), data);
}

/// Reads `follower` on a thread of its own, reporting each read's result.
fn follow_on_thread(mut follower: Follower) -> std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>> {
    use std::io::Read;
    let (send, got) = std::sync::mpsc::channel();
    std::thread::spawn(move || loop {
        let mut buf = [0u8; 64];
        let read = follower.read(&mut buf).map(|n| buf[..n].to_vec());
        let end = !matches!(&read, Ok(bytes) if !bytes.is_empty());
        if send.send(read).is_err() || end {
            break;
        }
    });
    got
}

#[test]
fn a_follower_reads_what_is_written_and_ends_only_once_the_blob_is_verified() {
    use std::time::Duration;
    let (_dir, store) = store();
    let content = b"first part, second part";
    let digest = Digest::of(content);
    assert!(store.follow(&digest).is_none(), "nothing is being written");
    let mut writer = store.writer(&digest, content.len() as u64).unwrap();
    let got = follow_on_thread(store.follow(&digest).expect("a follower"));
    writer.write_chunks(&[&content[..12]]).unwrap();
    let first = got.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(first, &content[..12]);
    // All that is written has been read: the follower waits, it does not end.
    assert!(got.recv_timeout(Duration::from_millis(200)).is_err());
    writer.write_chunks(&[&content[12..]]).unwrap();
    let second = got.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(second, &content[12..]);
    // Every byte is there, but the digest is not checked yet: still no end.
    assert!(got.recv_timeout(Duration::from_millis(200)).is_err());
    writer.commit().unwrap();
    let end = got.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    assert!(end.is_empty(), "the end, once committed");
    assert!(
        store.follow(&digest).is_none(),
        "a committed blob is read, not followed"
    );
}

/// Every read `follow_on_thread` reports until its thread ends: the last one failed.
fn assert_last_read_fails(got: &std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>) {
    let mut reads = Vec::new();
    while let Ok(read) = got.recv_timeout(std::time::Duration::from_secs(5)) {
        reads.push(read);
    }
    assert!(
        matches!(reads.last(), Some(Err(_))),
        "the last read fails: {reads:?}"
    );
}

#[test]
fn a_follower_of_an_abandoned_or_mismatched_blob_fails() {
    let (_dir, store) = store();
    // Dropped mid-way (a failed transfer, or one that starts over with a new writer).
    let digest = Digest::of(b"abandoned");
    let mut writer = store.writer(&digest, 9).unwrap();
    let got = follow_on_thread(store.follow(&digest).unwrap());
    writer.write(b"aban").unwrap();
    drop(writer);
    assert_last_read_fails(&got);

    // Every byte written, then the digest does not match: never an end.
    let digest = Digest::of(b"expected");
    let mut writer = store.writer(&digest, 8).unwrap();
    let got = follow_on_thread(store.follow(&digest).unwrap());
    writer.write(b"tampered").unwrap();
    assert!(writer.commit().is_err());
    assert_last_read_fails(&got);
    assert!(store.follow(&digest).is_none());
}

/// The first follower, there before the first byte, checks the digest for the writer: the
/// commit waits for it to read the last byte (a writer hashing on its own would not wait).
#[test]
fn the_first_follower_checks_the_digest_and_the_commit_waits_for_it() {
    use std::io::{BufRead, Read};
    use std::time::Duration;
    let (_dir, store) = store();
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::of(&content);
    let mut writer = store.writer(&digest, content.len() as u64).unwrap();
    let mut follower = store.follow(&digest).unwrap();
    assert!(follower.checks(), "the first follower takes the check");
    assert!(
        !store.follow(&digest).unwrap().checks(),
        "one check per blob"
    );
    writer.write_chunks(&[&content[..]]).unwrap();
    let (send, committed) = std::sync::mpsc::channel();
    let committing = std::thread::spawn(move || send.send(writer.commit()).unwrap());
    // All but the last byte read, hashed beside another stream as an unpack does.
    let mut read = Vec::new();
    let mut beside = crate::digest::Hasher::new();
    while read.len() < content.len() - 1 {
        let n = {
            let buf = follower.fill_buf().unwrap();
            let n = buf.len().min(content.len() - 1 - read.len());
            read.extend_from_slice(&buf[..n]);
            n
        };
        follower.consume(n);
        follower.hash_beside(&mut beside, b"uncompressed bytes of the same layer");
    }
    assert!(
        committed.recv_timeout(Duration::from_millis(300)).is_err(),
        "the commit waits for the follower's digest"
    );
    follower.read_to_end(&mut read).unwrap();
    committed
        .recv_timeout(Duration::from_secs(5))
        .unwrap()
        .unwrap();
    committing.join().unwrap();
    assert!(read == content, "the follower read the blob");
    assert_eq!(store.read(&digest).unwrap(), content);
}

/// A checking follower that goes before the end leaves its hash so far: the writer hashes
/// the rest from the staging file, and still tells a good blob from a bad one.
#[test]
fn a_checking_follower_that_goes_early_leaves_the_rest_to_the_writer() {
    use std::io::Read;
    for (content, expected) in [
        (b"all of the blob, good".to_vec(), None),
        (
            b"all of the blob, BAD!".to_vec(),
            Some(b"all of the blob, good"),
        ),
    ] {
        let (_dir, store) = store();
        let digest = Digest::of(expected.map_or(&content[..], |e| &e[..]));
        let mut writer = store.writer(&digest, content.len() as u64).unwrap();
        let mut follower = store.follow(&digest).unwrap();
        assert!(follower.checks());
        writer.write_chunks(&[&content[..]]).unwrap();
        let mut first = [0u8; 7];
        follower.read_exact(&mut first).unwrap();
        drop(follower);
        match expected {
            None => {
                writer.commit().unwrap();
                assert_eq!(store.read(&digest).unwrap(), content);
            }
            Some(_) => {
                let err = writer.commit().unwrap_err();
                assert!(matches!(err, CacheError::DigestMismatch { .. }), "{err}");
                assert_eq!(store.size_of(&digest), None);
            }
        }
    }
}

/// A follower that comes after the first byte does not check: the writer hashed from the
/// start, and commits without waiting for anyone.
#[test]
fn a_follower_after_the_first_byte_leaves_the_check_to_the_writer() {
    let (_dir, store) = store();
    let content = b"written before anyone followed";
    let digest = Digest::of(content);
    let mut writer = store.writer(&digest, content.len() as u64).unwrap();
    writer.write_chunks(&[&content[..5]]).unwrap();
    let follower = store.follow(&digest).unwrap();
    assert!(!follower.checks());
    writer.write_chunks(&[&content[5..]]).unwrap();
    writer.commit().unwrap();
    assert_eq!(store.read(&digest).unwrap(), content);
    drop(follower);
}

/// A small blob read whole is checked again: one changed in the store (a shared node cache,
/// a disk error) is removed and never handed on.
#[test]
fn a_blob_changed_in_the_store_is_refused_and_removed_when_read() {
    let (_dir, store) = store();
    let content = br#"{"schemaVersion":2}"#;
    let digest = Digest::of(content);
    store.put(&digest, content).unwrap();
    assert_eq!(store.read(&digest).unwrap(), content);
    fs::write(store.path(&digest), br#"{"schemaVersion":3}"#).unwrap();
    let err = store.read(&digest).unwrap_err();
    assert!(matches!(err, CacheError::DigestMismatch { .. }), "{err}");
    assert_eq!(store.size_of(&digest), None);
}

/// With its blobs elsewhere (a node cache), the store keeps its pins and their staging on the
/// volume and nothing else there.
#[test]
fn a_split_store_keeps_blobs_apart_from_its_pins() {
    let volume = tempfile::tempdir().unwrap();
    let node = tempfile::tempdir().unwrap();
    let store = BlobStore::open_split(volume.path(), node.path()).unwrap();
    let content = b"a manifest";
    let digest = Digest::of(content);
    store.put(&digest, content).unwrap();
    store.pin("example.com/a:1", &digest).unwrap();
    assert_eq!(store.root(), node.path());
    assert!(node
        .path()
        .join("blobs/sha256")
        .join(digest.hex())
        .is_file());
    assert!(!volume.path().join("blobs").exists());
    assert_eq!(names(&volume.path().join("refs")).len(), 1);
    assert!(!node.path().join("refs").exists());
    assert_eq!(store.pinned("example.com/a:1").unwrap(), Some(digest));
}
