//! The embedded default: SQLite, database dispatch, `renderq run`, on one machine.

mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::*;

/// The binary with none of renderq's variables set.
fn bare() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_renderq"));
    for var in [
        "DATABASE_URL",
        "REDIS_URL",
        "RENDERQ_STORE",
        "RENDERQ_QUEUE",
        "RENDERQ_LOG",
    ] {
        c.env_remove(var);
    }
    c
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn renderq_run_renders_the_example_catalogue_with_nothing_configured() {
    let cwd = tempfile::tempdir().unwrap();
    let example = std::fs::canonicalize("examples/catalogue.jsonl").unwrap();
    let out = bare()
        .arg("run")
        .arg(&example)
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        cwd.path().join("renderq.db").exists(),
        "the record is ./renderq.db"
    );
    let files = files_under(&cwd.path().join("renderq-out"));
    let images: Vec<_> = files
        .iter()
        .filter(|p| !p.to_string_lossy().ends_with(".html"))
        .collect();
    assert_eq!(images.len(), 6, "{files:?}");
    for img in &images {
        let decoded = image::open(img).unwrap();
        assert!(decoded.width() >= 384, "{img:?}");
    }
    assert!(
        cwd.path()
            .join("renderq-out/lamps/linen-pendant.png")
            .exists(),
        "output_key honoured"
    );
    let sheet = files
        .iter()
        .find(|p| p.ends_with("contact-sheet.html"))
        .expect("a contact sheet");
    let html = std::fs::read_to_string(sheet).unwrap();
    assert!(html.contains("studio photo of a teal velvet sofa"));
    assert_eq!(html.matches("<img ").count(), 6);
    assert!(stderr.contains("contact sheet: file://"), "{stderr}");
    assert!(
        stderr.contains("renderq status "),
        "says how to see the status: {stderr}"
    );
    // The same database answers `status` afterwards.
    let batch = sheet
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let status = bare()
        .args(["status", &batch])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("succeeded 6"));
}

#[test]
fn renderq_run_refuses_a_bad_file_with_line_and_field_and_writes_nothing() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(
        cwd.path().join("bad.jsonl"),
        "{\"prompt\":\"ok\"}\n{\"prompt\":\"x\",\"height\":3}\n",
    )
    .unwrap();
    let out = bare()
        .args(["run", "bad.jsonl"])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 2: field `height`"), "{stderr}");
    assert!(
        !cwd.path().join("renderq.db").exists(),
        "refused before anything was opened"
    );
}

#[tokio::test]
async fn several_worker_processes_on_one_sqlite_file_never_share_a_job() {
    let env = Env::with(Kind::Sqlite).await;
    let lines: Vec<String> = (0..120)
        .map(|i| format!(r#"{{"prompt":"p{i}","model":"noop","width":8,"height":8}}"#))
        .collect();
    env.submit(&lines.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let store = tempfile::tempdir().unwrap();
    let workers: Vec<_> = (0..3)
        .map(|_| {
            bare()
                .args(["worker", "--concurrency", "8", "--max-batch", "4"])
                .envs(env.vars())
                .env("RENDERQ_STORE", store.path())
                .env("RENDERQ_NOOP_DELAY_MS", "5")
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let rows = env.wait_terminal(120, Duration::from_secs(60)).await;
    for w in &workers {
        Command::new("kill")
            .args(["-TERM", &w.id().to_string()])
            .status()
            .unwrap();
    }
    for mut w in workers {
        assert!(w.wait().unwrap().success());
    }
    // A job claimed twice would show attempt 2; SQLITE_BUSY reported as a failure
    // would show `failed`.
    assert!(
        rows.iter()
            .all(|r| r.state == renderq::job::JobState::Succeeded && r.attempt == 1),
        "{rows:?}"
    );
    assert_eq!(files_under(store.path()).len(), 120);
}

fn refused(url_path: &Path) -> String {
    let out = bare()
        .arg("status")
        .env("DATABASE_URL", format!("sqlite://{}", url_path.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[tokio::test]
async fn a_database_that_is_not_renderqs_or_is_newer_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    // Someone else's SQLite database.
    let theirs = dir.path().join("shop.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", theirs.display()))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let before = std::fs::read(&theirs).unwrap();
    let msg = refused(&theirs);
    assert!(
        msg.contains("not a renderq database") && msg.contains("customers"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&theirs).unwrap(), before, "left untouched");

    // Not a database at all.
    let text = dir.path().join("notes.db");
    let notes = "these are my notes, not a database, and long enough to have a header";
    std::fs::write(&text, notes).unwrap();
    let msg = refused(&text);
    assert!(
        msg.contains("not a SQLite database") || msg.contains("cannot be opened"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read_to_string(&text).unwrap(),
        notes,
        "left untouched"
    );

    // renderq's, from a newer version.
    let newer = dir.path().join("newer.db");
    let url = format!("sqlite://{}", newer.display());
    let db = renderq::backend::Database::open(Some(&url), true)
        .await
        .unwrap();
    if let renderq::backend::Database::Sqlite(r) = &db {
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (99991231000000, 'from the future', 1, x'00', 0)",
        )
        .execute(r.pool())
        .await
        .unwrap();
        r.pool().close().await;
    }
    drop(db);
    // Fold the WAL into the file now, so the snapshot below is the whole database and
    // no checkpoint can land after it.
    {
        use sqlx::Connection;
        let mut con = sqlx::SqliteConnection::connect(&url).await.unwrap();
        // Leaving WAL needs the file to itself: a closed pool's threads may still be
        // letting go of it on a loaded machine.
        let mut tries = 0;
        while let Err(e) = sqlx::query("PRAGMA journal_mode=DELETE")
            .execute(&mut con)
            .await
        {
            tries += 1;
            assert!(tries < 100, "the file stayed locked: {e}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        con.close().await.unwrap();
    }
    let before = std::fs::read(&newer).unwrap();
    let msg = refused(&newer);
    assert!(
        msg.contains("newer renderq") && msg.contains("99991231000000"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&newer).unwrap(), before, "left untouched");
}
