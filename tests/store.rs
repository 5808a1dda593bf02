//! The store's contract, run on each store: an S3-compatible server (a fresh bucket on
//! the test server) and a local directory. What one store promises, the other keeps.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use renderq::store::{DirStore, ObjectMeta, PutRequest, Store};

/// Runs a store test (an `async fn(Arc<dyn Store>)`) on every store.
macro_rules! stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test]
            async fn s3() {
                super::$name(s3_store().await).await
            }
            #[tokio::test]
            async fn directory() {
                let dir = tempfile::tempdir().unwrap();
                super::$name(Arc::new(DirStore::new(dir.path().join("out")))).await;
                drop(dir);
            }
        }
    )*};
}

fn meta() -> ObjectMeta {
    ObjectMeta {
        content_type: "image/png",
        seed: 7,
        model: "placeholder".into(),
        job_id: "j".into(),
    }
}

/// A body of `len` bytes that shows any reordering or truncation.
fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

async fn read(store: &dyn Store, key: &str, cap: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let n = store
        .read_into(key, cap, &mut out)
        .await
        .map_err(|e| e.message)?;
    assert_eq!(
        n as usize,
        out.len(),
        "the length returned is the length read"
    );
    Ok(out)
}

/// Small and large objects (17 MiB: several parts on S3) read back byte for byte.
async fn objects_read_back_whole(store: Arc<dyn Store>) {
    for (key, len) in [("a/small.png", 300), ("b/large.png", 17 * 1024 * 1024)] {
        let sent = body(len);
        store
            .put(key, Bytes::from(sent.clone()), &meta())
            .await
            .unwrap();
        let got = read(store.as_ref(), key, 1 << 30).await.unwrap();
        assert_eq!(got.len(), sent.len(), "{key}");
        assert!(got == sent, "{key}: the bytes came back in order");
    }
}

/// A reader's cap holds: an object over it is refused, naming the limit; one at it is
/// read; a key that names nothing is an error, not an empty object.
async fn reads_keep_to_their_cap(store: Arc<dyn Store>) {
    store
        .put("m/manifest.jsonl", Bytes::from(body(2048)), &meta())
        .await
        .unwrap();
    let refused = read(store.as_ref(), "m/manifest.jsonl", 1024)
        .await
        .unwrap_err();
    assert!(
        refused.contains("over the limit of 1024 bytes"),
        "{refused}"
    );
    assert_eq!(
        read(store.as_ref(), "m/manifest.jsonl", 2048)
            .await
            .unwrap()
            .len(),
        2048
    );
    let missing = read(store.as_ref(), "m/absent.jsonl", 1024).await;
    assert!(missing.is_err(), "an absent key read as {missing:?}");
}

/// `put_many` answers once per request, in order, and a key written again holds the
/// last body: a repeated render replaces its one object.
async fn put_many_answers_in_order_and_rewrites_replace(store: Arc<dyn Store>) {
    let puts: Vec<PutRequest> = (0..5)
        .map(|i| PutRequest {
            key: format!("batch/{i}.png"),
            body: Bytes::from(vec![i as u8; 10 + i]),
            meta: meta(),
        })
        .collect();
    let results = store.put_many(&puts).await;
    assert_eq!(results.len(), 5);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    for (i, p) in puts.iter().enumerate() {
        assert_eq!(
            read(store.as_ref(), &p.key, 1024).await.unwrap(),
            vec![i as u8; 10 + i]
        );
    }
    store
        .put("batch/2.png", Bytes::from_static(b"second render"), &meta())
        .await
        .unwrap();
    assert_eq!(
        read(store.as_ref(), "batch/2.png", 1024).await.unwrap(),
        b"second render"
    );
}

/// A key that would leave the directory store's root is refused when written and when
/// read (on S3 such a key is only a name).
#[tokio::test]
async fn directory_keys_that_escape_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::new(dir.path().join("out"));
    std::fs::write(dir.path().join("secret.txt"), b"outside").unwrap();
    let put = store
        .put("../escape.png", Bytes::from_static(b"no"), &meta())
        .await;
    assert!(put.is_err(), "a key with .. was written");
    let got = read(&store, "../secret.txt", 1024).await;
    assert!(got.is_err(), "a file outside the root was read: {got:?}");
}

#[tokio::test]
async fn s3_objects_keep_their_content_type_and_metadata_across_parts() {
    let store = s3_store().await;
    let body: Vec<u8> = (0..17 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let meta = ObjectMeta {
        content_type: "image/png",
        seed: 7,
        model: "placeholder".into(),
        job_id: "j".into(),
    };
    store
        .put("out/big.png", bytes::Bytes::from(body.clone()), &meta)
        .await
        .unwrap();
    let got = store
        .client()
        .get_object()
        .bucket(store.bucket())
        .key("out/big.png")
        .send()
        .await
        .unwrap();
    assert_eq!(got.content_type(), Some("image/png"));
    assert_eq!(
        got.metadata().unwrap().get("seed").map(String::as_str),
        Some("7")
    );
    let bytes = got.body.collect().await.unwrap().into_bytes();
    assert_eq!(bytes.len(), body.len());
    assert!(bytes[..] == body[..], "the parts were joined in order");
}

stores!(
    objects_read_back_whole,
    reads_keep_to_their_cap,
    put_many_answers_in_order_and_rewrites_replace,
);
