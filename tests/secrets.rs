//! No secret in anything printed: passwords in DATABASE_URL and REDIS_URL and the AWS
//! secret key, at debug log level, on the success paths and the error paths.

mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use common::*;

const PG_SECRET: &str = "pgsecret4242";
const REDIS_SECRET: &str = "redissecret4242";
const WRONG_AWS_SECRET: &str = "awssecret4242";

fn renderq(vars: &[(&str, String)], args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_renderq"));
    c.args(args)
        .env_remove("REDIS_URL")
        .env("RENDERQ_LOG", "debug")
        .env("RUST_LOG", "debug")
        // The S3 test server's real keys: the worker signs with them on the success path.
        .envs(s3_vars())
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())));
    c
}

fn assert_clean(what: &str, out: &std::process::Output) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for secret in [PG_SECRET, REDIS_SECRET, WRONG_AWS_SECRET, &s3_secret_key()] {
        assert!(!text.contains(secret), "{what} printed {secret}:\n{text}");
    }
}

/// (what, variables, arguments)
type Case<'a> = (&'a str, Vec<(&'a str, String)>, Vec<&'a str>);

#[tokio::test]
async fn no_secret_is_printed_on_success_or_error_paths() {
    let env = Env::new().await;
    // Trust authentication ignores the password, so this URL works and carries a secret.
    let db_url = env
        .db_url
        .replacen("postgres:postgres@", &format!("postgres:{PG_SECRET}@"), 1);
    assert!(db_url.contains(PG_SECRET));
    let bucket = s3_store().await;
    let ok_vars = vec![
        ("DATABASE_URL", db_url.clone()),
        ("REDIS_URL", redis_url()),
        ("RENDERQ_QUEUE", env.queue.clone()),
        ("RENDERQ_STORE", format!("s3://{}/out", bucket.bucket())),
    ];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.jsonl");
    std::fs::write(&file, "{\"prompt\":\"s\",\"width\":8,\"height\":8}\n").unwrap();

    let out = renderq(&ok_vars, &["submit", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_clean("submit", &out);
    let batch = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();

    // A worker at debug level that talks to S3 with the secret key, then stops.
    let child = renderq(&ok_vars, &["worker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    env.wait_terminal(1, Duration::from_secs(30)).await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("worker stopped"),
        "the log was captured"
    );
    assert_clean("worker", &out);
    assert!(
        env.rows()
            .await
            .iter()
            .all(|r| r.state == renderq::job::JobState::Succeeded)
    );

    let out = renderq(&ok_vars, &["status", &batch]).output().unwrap();
    assert!(out.status.success());
    assert_clean("status", &out);

    // Error paths: refused Redis auth, unreachable servers, a wrong S3 secret.
    let cases: Vec<Case> = vec![
        (
            "refused redis auth",
            vec![
                ("DATABASE_URL", db_url.clone()),
                (
                    "REDIS_URL",
                    format!("redis://:{REDIS_SECRET}@127.0.0.1:6379"),
                ),
            ],
            vec!["submit", file.to_str().unwrap()],
        ),
        (
            "unreachable redis",
            vec![
                ("DATABASE_URL", db_url.clone()),
                ("REDIS_URL", format!("redis://:{REDIS_SECRET}@127.0.0.1:1")),
            ],
            vec!["submit", file.to_str().unwrap()],
        ),
        (
            "unreachable sentinels",
            vec![
                ("DATABASE_URL", db_url.clone()),
                (
                    "REDIS_URL",
                    format!(
                        "redis+sentinel://:{REDIS_SECRET}@127.0.0.1:1/m?sentinel_password={REDIS_SECRET}"
                    ),
                ),
            ],
            vec!["submit", file.to_str().unwrap()],
        ),
        (
            "unreachable cluster",
            vec![
                ("DATABASE_URL", db_url.clone()),
                (
                    "REDIS_URL",
                    format!("redis+cluster://:{REDIS_SECRET}@127.0.0.1:1,127.0.0.1:2"),
                ),
            ],
            vec!["submit", file.to_str().unwrap()],
        ),
        (
            "unreachable postgres",
            vec![(
                "DATABASE_URL",
                format!("postgres://postgres:{PG_SECRET}@127.0.0.1:1/x"),
            )],
            vec!["status"],
        ),
    ];
    for (what, vars, args) in cases {
        let out = renderq(&vars, &args).output().unwrap();
        assert!(!out.status.success(), "{what} succeeded");
        assert_clean(what, &out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("***"),
            "{what}: the URL is shown redacted: {stderr}"
        );
    }
    // A wrong secret key: the worker's uploads are refused; nothing leaks in its log.
    env.submit(&[r#"{"prompt":"t","width":8,"height":8}"#])
        .await;
    let mut bad = ok_vars.clone();
    bad.push(("RENDERQ_LOG", "debug".into()));
    let mut child = renderq(&bad, &["worker", "--shutdown-secs", "1"])
        .env("AWS_SECRET_ACCESS_KEY", WRONG_AWS_SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the log as it comes; stop the worker once it has logged the refusal.
    let mut stderr_pipe = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut log = String::new();
        for line in std::io::BufReader::new(&mut stderr_pipe).lines() {
            let line = line.unwrap_or_default();
            // A 403 fails the job at once ("S3 upload: …"); a 5xx is retried first.
            if line.contains("S3 upload") || line.contains("upload failed") {
                let _ = tx.send(());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    let refused = rx.recv_timeout(Duration::from_secs(60)).is_ok();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut out = child.wait_with_output().unwrap();
    let stderr = reader.join().unwrap();
    assert!(refused, "the refusal was logged: {stderr}");
    out.stderr = stderr.into_bytes();
    assert_clean("worker with a wrong S3 secret", &out);
}
