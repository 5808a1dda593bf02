//! `renderq token create|list|revoke`: the HTTP API's bearer tokens.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use super::{Global, connect_record};
use crate::token::{self, Scope};

/// What to do with tokens.
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a token and print it (once: only its hash is kept)
    Create {
        /// read (GET), submit (also POST batches), or admin (also cancel and retry)
        #[arg(long)]
        scope: Scope,
        /// Who or what holds it, e.g. `ci` or `catalogue-team`
        #[arg(long)]
        name: String,
    },
    /// Every token: id, name, scope, created, last used, revoked
    List,
    /// Revoke tokens by id (`rq_<id>_…`'s middle part) or by name
    Revoke {
        /// The token's id or name
        id_or_name: String,
    },
}

pub async fn command(g: &Global, cmd: TokenCommand) -> Result<ExitCode> {
    let record = connect_record(g, !g.no_migrate).await?;
    match cmd {
        TokenCommand::Create { scope, name } => {
            if name.trim().is_empty() {
                eprintln!("error: --name must not be empty");
                return Ok(ExitCode::from(1));
            }
            let t = token::generate();
            record
                .create_token(&t.id, &name, scope, &t.secret_hash)
                .await?;
            eprintln!(
                "token {} ({name}, scope {scope}); it is shown only now:",
                t.id
            );
            println!("{}", t.text);
        }
        TokenCommand::List => {
            let tokens = record.tokens().await?;
            if tokens.is_empty() {
                println!("no tokens");
            }
            let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M").to_string())
            };
            for t in tokens {
                println!(
                    "{}  {:<6}  {}  created {}  last used {}{}",
                    t.id,
                    t.scope,
                    t.name,
                    time(Some(t.created_at)),
                    time(t.last_used_at),
                    t.revoked_at
                        .map_or(String::new(), |r| format!("  REVOKED {}", time(Some(r))))
                );
            }
        }
        TokenCommand::Revoke { id_or_name } => {
            let n = record.revoke_token(&id_or_name).await?;
            if n == 0 {
                eprintln!("error: no unrevoked token with id or name `{id_or_name}`");
                return Ok(ExitCode::from(1));
            }
            println!("revoked {n} token(s)");
        }
    }
    Ok(ExitCode::SUCCESS)
}
