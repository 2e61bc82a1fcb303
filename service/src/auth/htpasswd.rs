//! Users and their passwords, from an htpasswd file of bcrypt hashes (`htpasswd -B`, or
//! `berth user add`). The file is read again when it changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};

/// How often the file's modification time is looked at.
const RECHECK: Duration = Duration::from_secs(2);
/// How long a verified password is remembered, so that a client sending its credentials with
/// every request does not cost a bcrypt run each time.
const REMEMBER: Duration = Duration::from_secs(300);
/// Cost of the hashes `berth user add` writes.
pub const COST: u32 = 10;

pub struct Htpasswd {
    path: PathBuf,
    state: RwLock<Loaded>,
    /// Verified logins by user. The password itself is never kept.
    verified: Mutex<HashMap<String, Verified>>,
    /// Hash checked for unknown users, so that they take as long as known ones.
    decoy: String,
}

/// A login remembered: the hash it matched, the SHA-256 of the password, until when.
type Verified = (String, [u8; 32], Instant);

struct Loaded {
    users: HashMap<String, String>,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// Parses htpasswd text, refusing any entry that is not bcrypt.
pub fn parse(text: &str) -> Result<HashMap<String, String>, String> {
    let mut users = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = line.split_once(':').ok_or_else(|| format!("line {}: expected user:hash", number + 1))?;
        if !(hash.starts_with("$2y$") || hash.starts_with("$2a$") || hash.starts_with("$2b$")) {
            let kind = if hash.starts_with("$apr1$") {
                "an MD5 (apr1) hash"
            } else if hash.starts_with("{SHA}") {
                "a SHA-1 hash"
            } else if hash.starts_with('$') {
                "a crypt(3) hash"
            } else {
                "not a hash Berth knows (crypt or plain text)"
            };
            return Err(format!(
                "line {}: user {user:?} has {kind}; only bcrypt is accepted (htpasswd -B, or berth user add)",
                number + 1
            ));
        }
        users.insert(user.to_owned(), hash.to_owned());
    }
    Ok(users)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Htpasswd {
    /// Reads the file; fails, naming the entry, if it holds anything but bcrypt hashes.
    pub fn load(path: &Path) -> Result<Htpasswd, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let users = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let decoy = bcrypt::hash("decoy password", COST).map_err(|e| e.to_string())?;
        Ok(Htpasswd {
            path: path.to_owned(),
            state: RwLock::new(Loaded { users, modified: modified(path), checked: Instant::now() }),
            verified: Mutex::new(HashMap::new()),
            decoy,
        })
    }

    /// Reads the file again if it changed since it was last read.
    fn refresh(&self) {
        {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            if state.checked.elapsed() < RECHECK {
                return;
            }
        }
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.checked = Instant::now();
        let now = modified(&self.path);
        if now == state.modified {
            return;
        }
        match std::fs::read_to_string(&self.path).map_err(|e| e.to_string()).and_then(|t| parse(&t)) {
            Ok(users) => {
                tracing::info!(path = %self.path.display(), users = users.len(), "htpasswd file reloaded");
                state.users = users;
                state.modified = now;
            }
            Err(e) => tracing::error!(path = %self.path.display(), error = %e, "htpasswd file not reloaded"),
        }
    }

    pub fn knows(&self, user: &str) -> bool {
        self.refresh();
        self.state.read().unwrap_or_else(|e| e.into_inner()).users.contains_key(user)
    }

    /// Whether `password` is `user`'s. Unknown users take as long as known ones.
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        self.refresh();
        let hash = self.state.read().unwrap_or_else(|e| e.into_inner()).users.get(user).cloned();
        let fingerprint: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        if let Some(hash) = &hash {
            let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((known, print, until)) = verified.get(user)
                && known == hash
                && *until > Instant::now()
                && constant_time_eq(print, &fingerprint)
            {
                return true;
            }
        }
        let checked_against = hash.clone().unwrap_or_else(|| self.decoy.clone());
        let password = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || bcrypt::verify(password, &checked_against).unwrap_or(false))
            .await
            .unwrap_or(false);
        match hash {
            Some(hash) if matches => {
                let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
                verified.insert(user.to_owned(), (hash, fingerprint, Instant::now() + REMEMBER));
                true
            }
            _ => false,
        }
    }
}

/// Compares two digests in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Adds or replaces `user` in the htpasswd file at `path` (created if missing).
pub fn add_user(path: &Path, user: &str, password: &str) -> Result<(), String> {
    if user.is_empty() || user.contains(':') || user.chars().any(char::is_whitespace) {
        return Err(format!("invalid user name {user:?}: no colons or spaces"));
    }
    if password.is_empty() {
        return Err("empty password".into());
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let hash = bcrypt::hash(password, COST).map_err(|e| e.to_string())?;
    let mut lines: Vec<String> =
        text.lines().filter(|l| l.split_once(':').is_none_or(|(u, _)| u != user)).map(str::to_owned).collect();
    lines.push(format!("{user}:{hash}"));
    let mut out = lines.join("\n");
    out.push('\n');
    parse(&out).map_err(|e| format!("{}: {e}", path.display()))?;
    // Write next to the file and rename, so a reader never sees half a file.
    let temporary = path.with_extension("berth-new");
    std::fs::write(&temporary, out).map_err(|e| format!("cannot write {}: {e}", temporary.display()))?;
    std::fs::rename(&temporary, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bcrypt_is_accepted() {
        let ok =
            parse("# comment\n\nalice:$2y$05$abcdefghijklmnopqrstuuY0pGx6sjM7f7mR5tH2H1ZQ7m0ZrUeW\n").expect("bcrypt");
        assert!(ok.contains_key("alice"));
        for (line, says) in [
            ("bob:$apr1$x$y", "MD5"),
            ("bob:{SHA}abc", "SHA-1"),
            ("bob:$1$salt$hash", "crypt(3)"),
            ("bob:plaintext", "plain"),
        ] {
            let e = parse(line).expect_err("refused");
            assert!(e.contains("bob") && e.contains(says), "{e}");
        }
        assert!(parse("nocolon").is_err());
    }

    #[tokio::test]
    async fn users_added_verify_and_changes_are_seen() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("htpasswd");
        add_user(&path, "alice", "s3cret").expect("added");
        let users = Htpasswd::load(&path).expect("loads");
        assert!(users.verify("alice", "s3cret").await);
        assert!(users.verify("alice", "s3cret").await, "remembered");
        assert!(!users.verify("alice", "wrong").await);
        assert!(!users.verify("mallory", "s3cret").await);
        add_user(&path, "alice", "changed").expect("replaced");
        add_user(&path, "bob", "b").expect("added");
        // The file is looked at again after RECHECK.
        users.state.write().expect("lock").checked -= RECHECK;
        std::thread::sleep(Duration::from_millis(20));
        assert!(!users.verify("alice", "s3cret").await, "the old password no longer works");
        assert!(users.verify("alice", "changed").await);
        assert!(users.knows("bob"));
        assert!(add_user(&path, "a:b", "x").is_err());
    }
}
