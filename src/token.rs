//! Bearer tokens of the HTTP API: `rq_<id>_<secret>`. The id is public (it names the
//! token in `renderq token list`); the record keeps only a SHA-256 of the secret, and
//! a presented secret is compared with it in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do. Each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Read batches, jobs, images and events.
    Read,
    /// Also submit batches and render through the OpenAI-style endpoint.
    Submit,
    /// Also cancel and retry.
    Admin,
}

impl Scope {
    /// The scope's name, as stored and as `--scope` takes it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Admin => "admin",
        }
    }

    /// Whether a token of this scope may do what `needed` allows.
    pub fn allows(&self, needed: Scope) -> bool {
        *self >= needed
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Scope::Read),
            "submit" => Ok(Scope::Submit),
            "admin" => Ok(Scope::Admin),
            other => Err(format!("`{other}` is not a scope (read, submit, admin)")),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A newly made token: its full text (shown once) and what the record keeps.
pub struct NewToken {
    /// `rq_<id>_<secret>`, to hand to the client.
    pub text: String,
    /// The public part.
    pub id: String,
    /// SHA-256 of the secret.
    pub secret_hash: Vec<u8>,
}

/// Makes a token: a 48-bit id and a 256-bit secret from the thread's CSPRNG.
pub fn generate() -> NewToken {
    let id = hex(&rand::random::<[u8; 6]>());
    let secret = hex(&rand::random::<[u8; 32]>());
    NewToken {
        text: format!("rq_{id}_{secret}"),
        secret_hash: hash(&secret),
        id,
    }
}

/// Splits a presented token into its id and secret; `None` if it is not one of ours.
pub fn parse(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix("rq_")?;
    let (id, secret) = rest.split_once('_')?;
    let hexish = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexish(id, 12) && hexish(secret, 64)).then_some((id, secret))
}

/// The hash the record keeps of a secret.
pub fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Whether `secret` is the one whose hash is `stored`, in time independent of where
/// they differ.
pub fn matches(secret: &str, stored: &[u8]) -> bool {
    hash(secret).ct_eq(stored).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_parses_and_matches_only_its_own_hash() {
        let t = generate();
        let (id, secret) = parse(&t.text).expect("parses");
        assert_eq!(id, t.id);
        assert!(matches(secret, &t.secret_hash));
        let other = generate();
        assert!(!matches(secret, &other.secret_hash));
        assert_ne!(t.text, other.text);
    }

    #[test]
    fn malformed_tokens_are_not_parsed() {
        for bad in [
            "",
            "rq_",
            "Bearer rq_x",
            "rq_0123456789ab",
            "rq_0123456789ab_short",
            "rq_0123456789zz_0000000000000000000000000000000000000000000000000000000000000000",
            "xx_0123456789ab_0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn scopes_include_the_ones_below() {
        assert!(Scope::Admin.allows(Scope::Submit));
        assert!(Scope::Submit.allows(Scope::Read));
        assert!(!Scope::Read.allows(Scope::Submit));
        assert!(!Scope::Submit.allows(Scope::Admin));
        assert_eq!("admin".parse::<Scope>(), Ok(Scope::Admin));
        assert!("root".parse::<Scope>().is_err());
    }
}
