//! Where a Debian system keeps credentials, beyond the password hashes and ssh host keys
//! [`crate::tidy`] handles itself, and what the image build does with each (the table in
//! docs/SECURITY.md says why). The places come from the packages' own documentation:
//! krb5.conf(5) and ktutil(1) (`/etc/krb5.keytab`), sssd.conf(5) and sssd-ldap(5) (the cache
//! in `/var/lib/sss/db`, `ldap_default_authtok`), smb.conf(5) (`private dir`, Debian's
//! `/var/lib/samba/private`, with `secrets.tdb` and `passdb.tdb`), apt_auth.conf(5)
//! (`/etc/apt/auth.conf`, `/etc/apt/auth.conf.d/*.conf`), certbot's user guide
//! (`/etc/letsencrypt/{accounts,archive,keys,live}`), nm-settings-keyfile(5) and
//! NetworkManager.conf(5) (`/var/lib/NetworkManager/secret_key`), crypttab(5) (key files, and
//! `/etc/cryptsetup-keys.d/`), dropbear(8) (`/etc/dropbear/dropbear_*_host_key`), and for
//! per-user files netrc(5), PostgreSQL's libpq (`~/.pgpass`), git-credential-store(1)
//! (`~/.git-credentials`), MySQL's option files (`~/.my.cnf`), the AWS CLI
//! (`~/.aws/credentials`), Docker (`~/.docker/config.json`), kubectl (`~/.kube/config`),
//! GnuPG (`~/.gnupg/private-keys-v1.d`) and GNOME Keyring (`~/.local/share/keyrings`).
//!
//! Two kinds: the master's own state, which no seat needs (a cache refilled online, a key a
//! service makes anew, logs), is left out, and said so in the build's changes; configuration a
//! site may mean its seats to have (a keytab, a bind password, a repository login) stays and
//! is listed with the `--exclude` that leaves it out.

use crate::tidy::{files_below, home_dirs, leave_out, names_in, Plan};
use std::fs;
use std::path::Path;

/// Leave out the master's own credentials and logs (see the module's text).
pub fn leave_out_state(source: &Path, plan: &mut Plan) {
    for name in names_in(source, "var/lib/sss/db", |_, t| t.is_file()) {
        leave_out_file(
            plan,
            &format!("var/lib/sss/db/{name}"),
            "removed (SSSD's cache, with the hashes of cached passwords: sssd refills it)",
        );
    }
    let nm_key = "var/lib/NetworkManager/secret_key";
    if is_file(source, nm_key) {
        leave_out_file(
            plan,
            nm_key,
            "removed (NetworkManager's host key for stable addresses: each seat makes its own)",
        );
    }
    for rel in cryptsetup_keyfiles(source) {
        leave_out_file(
            plan,
            &rel,
            "removed (a key to the master's encrypted disks, named in crypttab)",
        );
    }
    let logs = files_below(source, "var/log");
    if !logs.is_empty() {
        for rel in &logs {
            plan.excludes.push(glob::Pattern::escape(rel));
        }
        plan.changes.push(format!(
            "var/log: {} files left out (the master's logs and journal, which may hold what \
             users typed; the directories stay)",
            logs.len()
        ));
    }
}

/// `file` and the `*.conf` files of its drop-in directory `dir`, relative to the source.
fn with_drop_ins(source: &Path, file: &str, dir: &str) -> Vec<String> {
    let mut files = vec![file.to_string()];
    files.extend(
        names_in(source, dir, |n, t| t.is_file() && n.ends_with(".conf"))
            .into_iter()
            .map(|n| format!("{dir}/{n}")),
    );
    files
}

/// The credentials that stay in the image, as (path relative to the source, what it is).
pub fn listed(source: &Path) -> Vec<(String, &'static str)> {
    let mut found: Vec<(String, &'static str)> = Vec::new();
    for name in names_in(source, "etc", |n, t| t.is_file() && n.ends_with(".keytab")) {
        found.push((
            format!("etc/{name}"),
            "Kerberos keys of the master (a keytab)",
        ));
    }
    for rel in with_drop_ins(source, "etc/sssd/sssd.conf", "etc/sssd/conf.d") {
        if has_key_value(source, &rel, |k| k.ends_with("_authtok")) {
            found.push((rel, "SSSD's LDAP bind password (ldap_default_authtok)"));
        }
    }
    for name in ["secrets.tdb", "passdb.tdb"] {
        let rel = format!("var/lib/samba/private/{name}");
        if is_file(source, &rel) {
            found.push((
                rel,
                "Samba's secrets (domain machine password, or SMB password hashes)",
            ));
        }
    }
    for rel in with_drop_ins(source, "etc/apt/auth.conf", "etc/apt/auth.conf.d") {
        if fs::metadata(source.join(&rel)).is_ok_and(|m| m.is_file() && m.len() > 0) {
            found.push((rel, "APT repository logins"));
        }
    }
    if ["accounts", "archive", "keys"]
        .iter()
        .any(|d| !files_below(source, &format!("etc/letsencrypt/{d}")).is_empty())
    {
        found.push((
            "etc/letsencrypt".into(),
            "ACME account and certificate private keys (certbot)",
        ));
    }
    for rel in files_below(source, "etc/dropbear") {
        if rel.ends_with("_host_key") {
            found.push((rel, "a dropbear host key"));
        }
    }
    for home in home_dirs(source) {
        for (file, what) in USER_FILES {
            let rel = format!("{home}/{file}");
            if is_file(source, &rel) {
                found.push((rel, *what));
            }
        }
        for (dir, what) in USER_DIRS {
            for rel in files_below(source, &format!("{home}/{dir}")) {
                found.push((rel, *what));
            }
        }
    }
    found
}

/// Per-user credential files, relative to a home directory.
const USER_FILES: &[(&str, &str)] = &[
    (".netrc", "logins for FTP, curl and others (netrc)"),
    (".pgpass", "PostgreSQL passwords"),
    (".git-credentials", "git passwords and tokens"),
    (".my.cnf", "a MySQL client password"),
    (".aws/credentials", "AWS access keys"),
    (".docker/config.json", "container registry logins"),
    (".kube/config", "Kubernetes credentials"),
];

/// Per-user directories of private keys, relative to a home directory.
const USER_DIRS: &[(&str, &str)] = &[
    (".gnupg/private-keys-v1.d", "a GnuPG private key"),
    (".local/share/keyrings", "a GNOME keyring"),
];

fn is_file(source: &Path, rel: &str) -> bool {
    fs::symlink_metadata(source.join(rel)).is_ok_and(|m| m.is_file())
}

/// Whether the key=value file `rel` sets a key that `secret` picks to a non-empty value.
fn has_key_value(source: &Path, rel: &str, secret: impl Fn(&str) -> bool) -> bool {
    fs::read_to_string(source.join(rel)).is_ok_and(|text| {
        text.lines().any(|l| {
            l.split_once('=').is_some_and(|(k, v)| {
                !k.trim_start().starts_with(['#', ';']) && secret(k.trim()) && !v.trim().is_empty()
            })
        })
    })
}

/// The key files the master's crypttab names (third field, an absolute path to a file in the
/// source) and those in `/etc/cryptsetup-keys.d`, where systemd looks for `NAME.key`.
fn cryptsetup_keyfiles(source: &Path) -> Vec<String> {
    let mut found: Vec<String> = files_below(source, "etc/cryptsetup-keys.d");
    let crypttab = fs::read_to_string(source.join("etc/crypttab")).unwrap_or_default();
    for line in crypttab.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if line.trim_start().starts_with('#') || fields.len() < 3 {
            continue;
        }
        // PATH:DEVICE names a file on another device; /dev/urandom is a random key.
        let key = fields[2];
        let rel = key.trim_start_matches('/');
        if key.starts_with('/')
            && !key.starts_with("/dev/")
            && !key.contains(':')
            && is_file(source, rel)
            && !found.iter().any(|f| f == rel)
        {
            found.push(rel.to_string());
        }
    }
    found
}

fn leave_out_file(plan: &mut Plan, rel: &str, what: &str) {
    leave_out(plan, &glob::Pattern::escape(rel), what);
}
