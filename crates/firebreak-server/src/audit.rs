//! The broker's side of the audit log: the dedicated audit key (created at first start beside the
//! database, its public half pinned in `<data_dir>/audit-key.pub.jwk` for offline verification),
//! and the builder for records. Sealing, chaining and checkpoints happen in the store's writer.

use std::path::Path;

use firebreak_audit::{AuditKey, AuditPublicKey};
use firebreak_core::{SessionId, UnixTime};
use firebreak_store::AuditDraft;
use serde_json::{Map, Value, json};

/// The private key file (PKCS#8, mode 0600).
pub const KEY_FILE: &str = "audit-key.pk8";
/// The pinned public key (JWK) that `audit verify` trusts.
pub const PUBLIC_FILE: &str = "audit-key.pub.jwk";

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::io::Write::write_all(&mut f, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    f.sync_all().map_err(|e| format!("{}: {e}", path.display()))
}

/// Loads the audit key, creating it (and pinning its public half) at first start. A pinned
/// public key that does not match the private key is refused: someone swapped one of them.
///
/// # Errors
/// A message naming the file.
pub fn load_or_create_key(data_dir: &Path) -> Result<AuditKey, String> {
    std::fs::create_dir_all(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let key_path = data_dir.join(KEY_FILE);
    let pub_path = data_dir.join(PUBLIC_FILE);
    let key = match std::fs::read(&key_path) {
        Ok(der) => {
            AuditKey::from_pkcs8(&der).map_err(|e| format!("{}: {e}", key_path.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = AuditKey::generate().map_err(|e| format!("audit key: {e}"))?;
            write_private(&key_path, key.pkcs8())?;
            key
        }
        Err(e) => return Err(format!("{}: {e}", key_path.display())),
    };
    let public = key.public();
    match std::fs::read(&pub_path) {
        Ok(bytes) => {
            let jwk: Value = serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: {e}", pub_path.display()))?;
            let pinned = AuditPublicKey::from_jwk(&jwk)
                .map_err(|e| format!("{}: {e}", pub_path.display()))?;
            if pinned.key_id() != public.key_id() {
                return Err(format!(
                    "{} does not match {}: the audit key was replaced; restore it or move both aside deliberately",
                    pub_path.display(),
                    key_path.display()
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&pub_path, public.to_jwk().to_string())
                .map_err(|e| format!("{}: {e}", pub_path.display()))?;
        }
        Err(e) => return Err(format!("{}: {e}", pub_path.display())),
    }
    Ok(key)
}

/// Reads the pinned public key.
///
/// # Errors
/// A message naming the file.
pub fn pinned_public(data_dir: &Path) -> Result<AuditPublicKey, String> {
    read_public(&data_dir.join(PUBLIC_FILE))
}

/// Reads a public JWK file.
///
/// # Errors
/// A message naming the file.
pub fn read_public(path: &Path) -> Result<AuditPublicKey, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let jwk: Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    AuditPublicKey::from_jwk(&jwk).map_err(|e| format!("{}: {e}", path.display()))
}

/// Builds one record's fields. Only ids, codes and hashes go in: never a token or secret.
#[derive(Debug)]
pub struct Record {
    fields: Map<String, Value>,
    time: UnixTime,
    session: Option<SessionId>,
}

impl Record {
    /// A record of `kind` at `time`.
    pub fn new(kind: &str, time: UnixTime) -> Self {
        let mut fields = Map::new();
        fields.insert("kind".into(), json!(kind));
        Self {
            fields,
            time,
            session: None,
        }
    }

    /// Sets a field (skipped when `None`).
    pub fn field(mut self, name: &str, value: Option<impl Into<Value>>) -> Self {
        if let Some(v) = value {
            self.fields.insert(name.into(), v.into());
        }
        self
    }

    /// Sets the session the record concerns (indexed for replay).
    pub fn session(mut self, id: Option<&SessionId>) -> Self {
        if let Some(id) = id {
            self.fields.insert("session".into(), json!(id.as_str()));
            self.session = Some(id.clone());
        }
        self
    }

    /// The decision and its reasons.
    pub fn decision(
        mut self,
        decision: &str,
        reasons: Value,
        policy_version: Option<&str>,
    ) -> Self {
        self.fields.insert("decision".into(), json!(decision));
        self.fields.insert("reasons".into(), reasons);
        if let Some(pv) = policy_version {
            self.fields.insert("policy_version".into(), json!(pv));
        }
        self
    }

    /// The draft for the store.
    pub fn draft(self) -> AuditDraft {
        AuditDraft {
            fields: self.fields,
            time: self.time,
            session: self.session,
        }
    }
}
