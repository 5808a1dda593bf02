//! The contact sheet: one HTML page of a batch's images with their prompts, because a
//! person would rather look than read a list of files.

use std::fmt::Write as _;

use crate::{db::JobRow, job::JobState};

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The page for `jobs`; `url` says where each stored image is.
pub fn contact_sheet(title: &str, jobs: &[JobRow], url: impl Fn(&str) -> String) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html>\n<meta charset=\"utf-8\">\n<title>{t}</title>\n<style>\
         body{{font-family:system-ui,sans-serif;margin:1.5rem;background:#fafafa}}\
         .grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:1rem}}\
         figure{{margin:0;background:#fff;border:1px solid #ddd;padding:.5rem}}\
         img{{width:100%;height:auto;display:block}}\
         figcaption{{font-size:.8rem;margin-top:.4rem;word-break:break-word}}\
         .bad{{color:#b00}} .meta{{color:#666}}</style>\n<h1>{t}</h1>\n<div class=\"grid\">\n",
        t = escape(title)
    );
    for job in jobs {
        let caption = format!(
            "{}<br><span class=\"meta\">seed {} · {}</span>",
            escape(&job.prompt),
            job.seed,
            job.state
        );
        match (&job.output_key, job.state) {
            (Some(key), JobState::Succeeded) => {
                let _ = writeln!(
                    html,
                    "<figure><a href=\"{u}\"><img src=\"{u}\" alt=\"{p}\" loading=\"lazy\"></a>\
                     <figcaption>{caption}</figcaption></figure>",
                    u = escape(&url(key)),
                    p = escape(&job.prompt),
                );
            }
            _ => {
                let _ = writeln!(
                    html,
                    "<figure><figcaption>{caption}<br><span class=\"bad\">{}</span></figcaption></figure>",
                    escape(job.error.as_deref().unwrap_or("no image"))
                );
            }
        }
    }
    html.push_str("</div>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobId;

    #[test]
    fn prompts_are_escaped_and_failures_shown() {
        let row = |state, key: Option<&str>, error: Option<&str>| JobRow {
            id: JobId::generate(),
            batch_id: None,
            state,
            attempt: 1,
            error: error.map(str::to_string),
            output_key: key.map(str::to_string),
            seed: 7,
            prompt: "<b>chair</b> & \"lamp\"".into(),
            worker: None,
            metadata: None,
        };
        let html = contact_sheet(
            "t",
            &[
                row(JobState::Succeeded, Some("b/1.png"), None),
                row(JobState::Failed, None, Some("device on fire")),
            ],
            |k| format!("file:///out/{k}"),
        );
        assert!(html.contains("src=\"file:///out/b/1.png\""));
        assert!(html.contains("&lt;b&gt;chair&lt;/b&gt; &amp; &quot;lamp&quot;"));
        assert!(!html.contains("<b>chair"));
        assert!(html.contains("device on fire"));
    }
}
