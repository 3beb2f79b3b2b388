//! SFTP deliveries (russh + russh-sftp, pure Rust).
//!
//! * Where files go: a single-file payload (inline, or a data file set with one file) is
//!   written to `path`; a multi-file data file set goes into the directory of `path`, each
//!   file under its own name. A `path` ending in `/` is always a directory (an inline
//!   payload then lands as `payload`). `{{...}}` placeholders in `path` are filled, with `/`
//!   in values replaced so a parameter cannot climb out of the directory.
//! * Each file is streamed from object storage to `<dir>/.<name>.handoff-part`, then renamed
//!   over the target, so a receiver polling the directory never picks up half a file; a
//!   retry simply writes the file again. Directories are not created.
//! * Credentials come from `secretRef` in the secret store: `{"username", "password"}` or
//!   `{"username", "privateKey"[, "passphrase"]}`.
//! * Host key: with `hostKeyFingerprint` (`SHA256:...`, as `ssh-keygen -lf` prints it) only
//!   that key is accepted; without it any host key is accepted and a warning is logged on
//!   every connection — set it for production targets.

use super::{delivery_files, open_file, DeliveryFile};
use crate::executors::{idempotency_key, ExecutionContext, StepOutput};
use crate::secrets::{parse_login_credentials, LoginCredentials};
use futures::StreamExt;
use handoff_core::definition::DestinationTarget;
use handoff_core::error_code::ErrorCode;
use handoff_core::placeholder;
use handoff_core::retry::Failure;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::StatusCode;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Per SFTP request; a whole file may take longer (it is many requests).
const REQUEST_TIMEOUT_SECONDS: u64 = 30;

pub(super) async fn deliver(
    cx: &ExecutionContext<'_>,
    target: &DestinationTarget,
    logs: &mut Vec<String>,
) -> Result<StepOutput, Failure> {
    let DestinationTarget::Sftp { host, port, path, secret_ref, host_key_fingerprint } = target else {
        return Err(Failure::system("an sftp delivery needs an sftp destination"));
    };
    let path = placeholder::render(path, &cx.placeholders(), |v| v.replace('/', "_"))
        .map_err(|e| Failure::business(ErrorCode::InvalidParameters, format!("sftp path: {e}")))?;
    let files = delivery_files(cx).await?;
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    let targets = remote_paths(&path, &names).map_err(|e| Failure::business(ErrorCode::InvalidParameters, e))?;
    // Checked before the secret is even read: a refused host never sees a password.
    let addresses = crate::outbound::resolve_guarded(&cx.http.policy, "sftp", host, *port).await?;
    let credentials = credentials(cx, secret_ref).await?;

    let session = connect(host, &addresses, *port, host_key_fingerprint.as_deref(), &credentials, logs).await?;
    let result = upload_all(cx, &session, &files, &targets, logs).await;
    // The upload's outcome decides; closing is courtesy.
    let _ = session.sftp.close().await;
    let _ = session.ssh.disconnect(russh::Disconnect::ByApplication, "done", "en").await;
    result?;
    logs.push(format!("Delivered {} file(s) to sftp://{host}:{port}", files.len()));
    Ok(StepOutput::default())
}

async fn upload_all(
    cx: &ExecutionContext<'_>,
    session: &Session,
    files: &[DeliveryFile],
    targets: &[String],
    logs: &mut Vec<String>,
) -> Result<(), Failure> {
    let key = idempotency_key(cx.message);
    for (file, remote) in files.iter().zip(targets) {
        let temp = temp_path(remote, &key);
        match upload_one(cx, session, file, &temp, remote).await {
            Ok(written) => logs.push(format!("Uploaded {} ({written} bytes) to {remote}", file.name)),
            Err(failure) => {
                // Leave no half file behind (best effort: the connection may be gone).
                let _ = session.sftp.remove_file(temp).await;
                return Err(failure);
            }
        }
    }
    Ok(())
}

/// Streams one file to its temporary name and renames it into place; returns its size.
async fn upload_one(
    cx: &ExecutionContext<'_>,
    session: &Session,
    file: &DeliveryFile,
    temp: &str,
    remote: &str,
) -> Result<u64, Failure> {
    let mut body = open_file(cx, file).await?;
    let mut handle = session.sftp.create(temp).await.map_err(|e| sftp_failure(&format!("creating {temp}"), e))?;
    let mut written = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Failure::transient(format!("reading {} from storage: {e}", file.name)))?;
        handle.write_all(&chunk).await.map_err(|e| Failure::transient(format!("writing {temp}: {e}")))?;
        written += chunk.len() as u64;
    }
    handle.shutdown().await.map_err(|e| Failure::transient(format!("closing {temp}: {e}")))?;
    // SFTP v3 rename refuses to replace: remove an older delivery first (absent is fine).
    match session.sftp.remove_file(remote).await {
        Ok(()) => {}
        Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => {}
        Err(e) => return Err(sftp_failure(&format!("replacing {remote}"), e)),
    }
    session.sftp.rename(temp, remote).await.map_err(|e| sftp_failure(&format!("renaming {temp} to {remote}"), e))?;
    Ok(written)
}

/// Reads and parses the destination's credentials. A missing or malformed secret is a
/// configuration fault on our side: it fails at once (system), naming the secret only.
async fn credentials(cx: &ExecutionContext<'_>, secret_ref: &str) -> Result<LoginCredentials, Failure> {
    let text = cx.app.ports.secrets.get(secret_ref).await.map_err(|e| {
        let message = format!("reading secret '{secret_ref}': {e}");
        if e.is_retryable() {
            Failure::transient(message)
        } else {
            Failure::system(message)
        }
    })?;
    let text =
        text.ok_or_else(|| Failure::system(format!("secret '{secret_ref}' does not exist in the secret store")))?;
    parse_login_credentials(secret_ref, &text).map_err(|e| Failure::system(e.to_string()))
}

struct Session {
    ssh: russh::client::Handle<HostKeyCheck>,
    sftp: SftpSession,
}

/// Checks the server's host key against the expected fingerprint (if any) and remembers
/// the fingerprint it saw, for the warning or the mismatch message.
struct HostKeyCheck {
    expected: Option<String>,
    seen: Arc<Mutex<Option<String>>>,
}

impl russh::client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let public = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(cert) => PublicKey::from(cert.public_key().clone()),
        };
        let fingerprint = public.fingerprint(HashAlg::Sha256).to_string();
        let accepted = self.expected.as_deref().is_none_or(|expected| fingerprint_matches(expected, &fingerprint));
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(fingerprint);
        }
        Ok(accepted)
    }
}

async fn connect(
    host: &str,
    addresses: &[SocketAddr],
    port: u16,
    expected_fingerprint: Option<&str>,
    credentials: &LoginCredentials,
    logs: &mut Vec<String>,
) -> Result<Session, Failure> {
    let seen = Arc::new(Mutex::new(None));
    let handler = HostKeyCheck { expected: expected_fingerprint.map(str::to_string), seen: seen.clone() };
    let config =
        Arc::new(russh::client::Config { inactivity_timeout: Some(Duration::from_secs(60)), ..Default::default() });
    let address = format!("{host}:{port}");
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, russh::client::connect(config, addresses, handler)).await;
    let mut ssh = match connected {
        Err(_) => {
            return Err(Failure::transient(format!("sftp {address}: no SSH handshake within {CONNECT_TIMEOUT:?}")))
        }
        Ok(Err(russh::Error::UnknownKey)) => {
            let seen = seen.lock().ok().and_then(|s| s.clone()).unwrap_or_default();
            // A different key may be an attacker in the middle: never retried, never sent data.
            return Err(Failure::system(format!(
                "sftp {address}: host key {seen} does not match hostKeyFingerprint {}",
                expected_fingerprint.unwrap_or("-")
            )));
        }
        Ok(Err(e)) => return Err(Failure::transient(format!("sftp {address}: could not connect: {e}"))),
        Ok(Ok(handle)) => handle,
    };
    if expected_fingerprint.is_none() {
        let seen = seen.lock().ok().and_then(|k| k.clone()).unwrap_or_default();
        tracing::warn!(address = %address, fingerprint = %seen, "sftp host key accepted without checking: set hostKeyFingerprint on the destination");
        logs.push(format!("Warning: host key of {address} ({seen}) accepted without checking; set hostKeyFingerprint"));
    }
    let user = credentials.username().to_string();
    let auth = match credentials {
        LoginCredentials::Password { password, .. } => ssh.authenticate_password(user.clone(), password.clone()).await,
        LoginCredentials::PrivateKey { private_key, passphrase, .. } => {
            let key = russh::keys::decode_secret_key(private_key, passphrase.as_deref())
                .map_err(|e| Failure::system(format!("the private key of the sftp credentials cannot be read: {e}")))?;
            let hash = ssh.best_supported_rsa_hash().await.ok().flatten().flatten();
            ssh.authenticate_publickey(user.clone(), PrivateKeyWithHashAlg::new(Arc::new(key), hash)).await
        }
    }
    .map_err(|e| Failure::transient(format!("sftp {address}: authentication did not complete: {e}")))?;
    if !auth.success() {
        // The server's answer about our credentials, like an HTTP 401: not worth retrying.
        return Err(Failure::business(
            ErrorCode::SftpRefused,
            format!("sftp {address}: the server refused the login of user '{user}'"),
        ));
    }
    let channel = ssh
        .channel_open_session()
        .await
        .map_err(|e| Failure::transient(format!("sftp {address}: opening a session channel: {e}")))?;
    channel
        .request_subsystem(true, "sftp")
        .await
        .map_err(|e| Failure::transient(format!("sftp {address}: starting the sftp subsystem: {e}")))?;
    let sftp = SftpSession::new(channel.into_stream())
        .await
        .map_err(|e| Failure::transient(format!("sftp {address}: sftp handshake: {e}")))?;
    sftp.set_timeout(REQUEST_TIMEOUT_SECONDS);
    Ok(Session { ssh, sftp })
}

/// The server's refusals about paths and permissions are the target's answer about our
/// data (business); everything else (connection, timeouts, server failures) may pass.
fn sftp_failure(action: &str, e: SftpError) -> Failure {
    match &e {
        SftpError::Status(s)
            if matches!(
                s.status_code,
                StatusCode::NoSuchFile | StatusCode::PermissionDenied | StatusCode::OpUnsupported
            ) =>
        {
            Failure::business(ErrorCode::SftpRefused, format!("sftp {action}: {e}"))
        }
        _ => Failure::transient(format!("sftp {action}: {e}")),
    }
}

/// Compares fingerprints as OpenSSH prints them; the base64 padding is optional.
fn fingerprint_matches(expected: &str, seen: &str) -> bool {
    expected.trim().trim_end_matches('=') == seen.trim_end_matches('=')
}

/// Where each file goes (see the module documentation). A path (as its parameters filled
/// it) with a `.` or `..` segment, or a file name that is not a plain name, is refused: a
/// delivery never leaves the directory its definition names.
fn remote_paths(path: &str, names: &[&str]) -> Result<Vec<String>, String> {
    if path.split('/').any(|segment| segment == ".." || segment == ".") {
        return Err(format!("sftp path '{path}' has a '.' or '..' segment; it may not leave its directory"));
    }
    if let Some(bad) = names.iter().find(|n| n.is_empty() || n.contains('/') || **n == ".." || **n == ".") {
        return Err(format!("file name '{bad}' is not a plain file name"));
    }
    if !path.ends_with('/') && names.len() == 1 {
        return Ok(vec![path.to_string()]);
    }
    let dir =
        if path.ends_with('/') { path.trim_end_matches('/') } else { path.rsplit_once('/').map_or("", |(dir, _)| dir) };
    Ok(names.iter().map(|name| format!("{dir}/{name}")).collect())
}

/// The hidden name a file is written under before it is renamed into place.
fn temp_path(remote: &str, key: &str) -> String {
    let (dir, name) = remote.rsplit_once('/').unwrap_or(("", remote));
    format!("{dir}/.{name}.{}.handoff-part", &key[..key.len().min(8)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_file_goes_to_the_path_and_several_into_its_directory() {
        assert_eq!(remote_paths("/in/providers.json", &["payload"]).expect("contained"), ["/in/providers.json"]);
        assert_eq!(
            remote_paths("/in/providers.json", &["a.csv", "b.csv"]).expect("contained"),
            ["/in/a.csv", "/in/b.csv"]
        );
        assert_eq!(remote_paths("/in/", &["payload"]).expect("contained"), ["/in/payload"]);
        assert_eq!(remote_paths("/in//", &["a.csv", "b.csv"]).expect("contained"), ["/in/a.csv", "/in/b.csv"]);
        assert_eq!(remote_paths("/x.json", &["a", "b"]).expect("contained"), ["/a", "/b"]);
        // A parameter of ".." (slashes in values are already replaced) or a crafted file name.
        assert!(remote_paths("/in/../etc/passwd", &["payload"]).is_err());
        assert!(remote_paths("/in/./x", &["payload"]).is_err());
        assert!(remote_paths("/in/", &["../escape"]).is_err());
        assert!(remote_paths("/in/", &[".."]).is_err());
    }

    #[test]
    fn temporary_names_are_hidden_siblings() {
        assert_eq!(temp_path("/in/a.csv", "0123456789abcdef"), "/in/.a.csv.01234567.handoff-part");
    }

    #[test]
    fn fingerprints_compare_with_or_without_padding() {
        assert!(fingerprint_matches("SHA256:abcd=", "SHA256:abcd"));
        assert!(fingerprint_matches(" SHA256:abcd", "SHA256:abcd"));
        assert!(!fingerprint_matches("SHA256:abce", "SHA256:abcd"));
    }

    #[test]
    fn path_and_permission_refusals_are_business_errors() {
        let status = |code| {
            SftpError::Status(russh_sftp::protocol::Status {
                id: 1,
                status_code: code,
                error_message: "no".into(),
                language_tag: "en".into(),
            })
        };
        assert!(!sftp_failure("x", status(StatusCode::NoSuchFile)).retryable);
        assert!(sftp_failure("x", status(StatusCode::Failure)).retryable);
        assert!(sftp_failure("x", SftpError::Timeout).retryable);
    }
}
