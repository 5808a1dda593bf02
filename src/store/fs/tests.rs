//! The directory store against a hostile tree: moved, removed and linked directories.

use super::*;

fn put(key: &str, body: &'static [u8]) -> PutRequest {
    PutRequest {
        key: key.into(),
        body: Bytes::from_static(body),
        meta: ObjectMeta {
            content_type: "image/png",
            seed: 1,
            model: "noop".into(),
            job_id: "j".into(),
        },
    }
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path.to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn writes_each_key_in_its_directory_and_leaves_no_temporary_files() {
    let root = tempfile::tempdir().unwrap();
    let store = DirStore::new(root.path());
    let puts = [
        put("b1/one.png", b"1"),
        put("b2/deep/two.png", b"22"),
        put("b1/three.png", b"333"),
    ];
    let results = store.put_many(&puts).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    for p in &puts {
        assert_eq!(std::fs::read(store.path(&p.key)).unwrap(), p.body);
    }
    assert_eq!(files_under(root.path()).len(), 3, "only the objects remain");
    // A second write of a key replaces it whole.
    store.put_many(&[put("b1/one.png", b"new")]).await[0]
        .as_ref()
        .unwrap();
    assert_eq!(std::fs::read(store.path("b1/one.png")).unwrap(), b"new");
    assert_eq!(files_under(root.path()).len(), 3);
}

#[tokio::test]
async fn a_directory_removed_between_writes_is_made_again() {
    let root = tempfile::tempdir().unwrap();
    let store = DirStore::new(root.path());
    store.put_many(&[put("batch/a.png", b"a")]).await[0]
        .as_ref()
        .unwrap();
    std::fs::remove_dir_all(root.path().join("batch")).unwrap();
    let meta = put("x", b"").meta;
    store
        .put("batch/b.png", Bytes::from_static(b"b"), &meta)
        .await
        .unwrap();
    assert_eq!(std::fs::read(store.path("batch/b.png")).unwrap(), b"b");
}

/// An object lands at its key even when the directory that held the earlier ones
/// was moved away meanwhile (an operator archiving a batch mid-run).
#[tokio::test]
async fn a_directory_moved_away_between_writes_is_not_written_through() {
    let root = tempfile::tempdir().unwrap();
    let store = DirStore::new(root.path());
    store.put_many(&[put("batch/a.png", b"a")]).await[0]
        .as_ref()
        .unwrap();
    std::fs::rename(root.path().join("batch"), root.path().join("archived")).unwrap();
    store.put_many(&[put("batch/b.png", b"b")]).await[0]
        .as_ref()
        .unwrap();
    assert_eq!(std::fs::read(store.path("batch/b.png")).unwrap(), b"b");
    assert!(!root.path().join("archived/b.png").exists());
}

/// A symbolic link planted inside the root (by anyone who can write there) is not
/// followed: the write fails, and nothing lands where the link points.
#[tokio::test]
async fn a_symlink_inside_the_root_is_not_followed() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("batch")).unwrap();
    let results = DirStore::new(root.path())
        .put_many(&[put("batch/a.png", b"a"), put("other/b.png", b"b")])
        .await;
    let err = results[0].as_ref().unwrap_err();
    assert!(err.message.contains("symbolic link"), "{}", err.message);
    assert!(results[1].is_ok(), "{results:?}");
    assert!(
        files_under(outside.path()).is_empty(),
        "nothing written outside"
    );
    // Nor a link at an object's own name.
    std::fs::create_dir(root.path().join("c")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("x"), root.path().join("c/d.png")).unwrap();
    let store = DirStore::new(root.path());
    store.put_many(&[put("c/d.png", b"d")]).await[0]
        .as_ref()
        .unwrap();
    assert!(
        files_under(outside.path()).is_empty(),
        "the link was replaced, not followed"
    );
    assert_eq!(std::fs::read(root.path().join("c/d.png")).unwrap(), b"d");
}

#[tokio::test]
async fn keys_that_leave_the_root_are_refused_for_good() {
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("root");
    let store = DirStore::new(&root);
    for key in [
        "../escape.png",
        "/tmp/abs.png",
        "a/../../b.png",
        "a//b.png",
        "./a.png",
        "",
    ] {
        let results = store
            .put_many(&[put(key, b"x"), put("fine/ok.png", b"y")])
            .await;
        let err = results[0].as_ref().unwrap_err();
        assert!(!err.retry, "{key:?}: {}", err.message);
        assert!(results[1].is_ok(), "{key:?}: {results:?}");
    }
    let entries: Vec<_> = std::fs::read_dir(parent.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("root")]);
}

#[tokio::test]
async fn a_key_that_cannot_be_written_fails_alone_and_names_its_path() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("blocked"), b"a file, not a directory").unwrap();
    let store = DirStore::new(root.path());
    let results = store
        .put_many(&[
            put("ok/first.png", b"1"),
            put("blocked/second.png", b"2"),
            put("ok/third.png", b"3"),
        ])
        .await;
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    let err = results[1].as_ref().unwrap_err();
    assert!(
        err.message.contains("blocked/second.png"),
        "{}",
        err.message
    );
    assert_eq!(std::fs::read(store.path("ok/third.png")).unwrap(), b"3");
}
