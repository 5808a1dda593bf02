//! Hostile input: the job JSON and Redis-message parsers never panic or hang, and
//! every refusal names its field.

use proptest::prelude::*;
use renderq::{
    input::{Catalogue, InputError, SubmitOptions, Template, parse_jsonl},
    job::{JobSpec, Limits, validate_output_key},
};

fn field_of(text: &str) -> Option<&'static str> {
    JobSpec::parse(text, &Limits::default())
        .err()
        .map(|e| e.field)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_text_is_parsed_or_refused_without_panic(text in any::<String>()) {
        let _ = JobSpec::parse(&text, &Limits::default());
    }

    #[test]
    fn any_bytes_as_a_file_are_parsed_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        match parse_jsonl(&bytes[..], &Limits::default()) {
            Ok(jobs) => prop_assert!(!jobs.is_empty()),
            Err(InputError::Invalid { errors, total }) => {
                prop_assert!(!errors.is_empty() && total >= errors.len());
                prop_assert!(errors.iter().all(|e| e.line >= 1));
            }
            Err(InputError::Empty) => {}
            Err(other) => prop_assert!(false, "unexpected error: {other}"),
        }
    }

    #[test]
    fn job_objects_with_random_fields_never_panic(
        fields in proptest::collection::btree_map(
            prop_oneof![
                Just("prompt".to_string()), Just("width".to_string()), Just("height".to_string()),
                Just("steps".to_string()), Just("guidance".to_string()), Just("seed".to_string()),
                Just("model".to_string()), Just("format".to_string()), Just("id".to_string()),
                Just("output_key".to_string()), Just("metadata".to_string()), "[a-z]{1,8}",
            ],
            prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|f| if f.is_finite() { f.to_string() } else { "1e999".into() }),
                any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
                Just("null".to_string()), Just("{}".to_string()), Just("[]".to_string()), Just("true".to_string()),
            ],
            0..8,
        )
    ) {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
        let text = format!("{{{}}}", body.join(","));
        if let Err(e) = JobSpec::parse(&text, &Limits::default()) {
            prop_assert!(!e.reason.is_empty());
        }
    }

    #[test]
    fn any_bytes_as_a_catalogue_are_parsed_or_refused(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        template in "[a-z {}]{0,20}",
    ) {
        let Ok(template) = Template::parse(&template) else { return Ok(()) };
        let catalogue = Catalogue {
            template,
            key: Some(Template::parse("{variant}/{job_id}").unwrap()),
            options: SubmitOptions { variants: 2, ..SubmitOptions::default() },
        };
        match catalogue.parse(&bytes[..], &Limits::default()) {
            Ok(jobs) => prop_assert!(jobs.len() % 2 == 0 && !jobs.is_empty()),
            Err(InputError::Invalid { errors, .. }) => prop_assert!(!errors.is_empty()),
            Err(InputError::Empty) => {}
            Err(other) => prop_assert!(false, "unexpected error: {other}"),
        }
    }

    #[test]
    fn keys_with_escapes_are_always_refused(
        a in "[a-z0-9/]{0,12}",
        bad in prop_oneof![Just(".."), Just("\\\\"), Just("\u{0}"), Just("\n"), Just("//"), Just("\u{7f}")],
        b in "[a-z0-9]{0,12}",
    ) {
        let key = format!("{a}{bad}{b}");
        prop_assert!(validate_output_key(&key, 512).is_err(), "{key:?} accepted");
        let rooted = format!("/{a}{b}");
        prop_assert!(validate_output_key(&rooted, 512).is_err());
    }

    #[test]
    fn accepted_keys_stay_under_the_prefix(key in "[a-zA-Z0-9._/-]{1,40}") {
        if validate_output_key(&key, 512).is_ok() {
            let path = std::path::Path::new("/prefix").join(&key);
            let mut depth = 0i32;
            for c in path.strip_prefix("/prefix").unwrap().components() {
                match c {
                    std::path::Component::ParentDir => depth -= 1,
                    std::path::Component::Normal(_) => depth += 1,
                    other => prop_assert!(false, "{other:?} in {key:?}"),
                }
                prop_assert!(depth >= 0);
            }
        }
    }
}

#[test]
fn refusals_name_the_field_and_the_limit() {
    let long = "x".repeat(5000);
    let cases = [
        (format!(r#"{{"prompt":"{long}"}}"#), "prompt"),
        (r#"{"prompt":"a","width":100000}"#.into(), "width"),
        (
            r#"{"prompt":"a","width":4096,"height":4096,"steps":1000}"#.into(),
            "steps",
        ),
        (r#"{"prompt":"a","guidance":1e999}"#.into(), "guidance"),
        (r#"{"prompt":"a","guidance":-1}"#.into(), "guidance"),
        (r#"{"prompt":"a","model":"../sd-turbo"}"#.into(), "model"),
        (r#"{"prompt":"a","model":"my model"}"#.into(), "model"),
        (
            r#"{"prompt":"a","output_key":"../../etc/passwd"}"#.into(),
            "output_key",
        ),
        (r#"{"prompt":"a","output_key":"/abs"}"#.into(), "output_key"),
        (r#"{"prompt":"a","output_key":"a\\b"}"#.into(), "output_key"),
        (
            r#"{"prompt":"a","output_key":"a\u0001b"}"#.into(),
            "output_key",
        ),
        (r#"{"prompt":"a","seed":-5}"#.into(), "seed"),
        (r#"{"prompt":"a","format":"gif"}"#.into(), "format"),
    ];
    for (text, field) in cases {
        assert_eq!(
            field_of(&text),
            Some(field),
            "{}",
            &text[..text.len().min(80)]
        );
    }
    let e = JobSpec::parse(r#"{"prompt":"a","model":"a/b"}"#, &Limits::default()).unwrap_err();
    assert!(
        e.reason.contains("placeholder")
            && e.reason.contains("remote/<name>")
            && e.reason.contains("--models-dir"),
        "{e}"
    );
    // Remote models, and models named by their directory under a worker's --models-dir.
    for ok in ["remote/glm-image", "dreamshaper-8", "juggernaut_xl.v9"] {
        let job = format!(r#"{{"prompt":"a","model":"{ok}"}}"#);
        assert!(JobSpec::parse(&job, &Limits::default()).is_ok(), "{ok}");
    }
}

#[test]
fn worker_sizes_past_their_limits_are_refused() {
    for (flag, value, limit) in [
        ("--max-batch", "100000", "1..=1024"),
        ("--concurrency", "0", "1..=65536"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_renderq"))
            .args(["worker", flag, value])
            .env("DATABASE_URL", "sqlite://unused-never-opened.db")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(flag) && err.contains(limit), "{err}");
    }
    assert!(
        !std::path::Path::new("unused-never-opened.db").exists(),
        "refused before opening anything"
    );
}
