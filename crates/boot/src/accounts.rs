//! The lab's accounts as the clients get them: passwd and group entries without a password
//! (the field is always `x`; nothing is ever read from shadow), and the server's SSH host keys
//! as `ssh_known_hosts` lines, which the clients pin.
//!
//! The server reads its `/etc/passwd` and `/etc/group` (or the files `[accounts]` names) at
//! each request and hands the text to [`Accounts::passwd`] and [`Accounts::group`]; a user
//! added on the server is on a client at its next boot. An entry whose fields could break the
//! client's files (a name outside the portable set, a `:` or a newline where it cannot be, a
//! relative home) is left out and logged by the caller, and so is one that would give a lab
//! user more than a lab user's place: a home outside `[accounts] home_prefix` (`/usr/local`
//! would put the user's SSHFS mount over the PAM helper itself) or a primary group outside the
//! served range (`docker`, `systemd-journal`: a group of the image's system).

use crate::config::{AccountsSection, UidRange};
use std::fmt::Write as _;

/// Which accounts are served, resolved from `[accounts]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    /// The users with a UID in this range (inclusive), and the groups with a GID in it...
    pub uids: UidRange,
    /// ...or exactly these, when not empty.
    pub users: Vec<String>,
    /// Where the passwd entries are read.
    pub passwd: std::path::PathBuf,
    /// Where the group entries are read.
    pub group: std::path::PathBuf,
    /// Served homes lie below it.
    pub home_prefix: std::path::PathBuf,
    /// The SSH server that checks passwords and serves the homes.
    pub ssh_host: String,
    /// Its port.
    pub ssh_port: u16,
    /// Public host key files, pinned on the clients.
    pub ssh_host_keys: Vec<std::path::PathBuf>,
}

/// One line of the served files that was left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The entry's name (or the line, when it has none).
    pub name: String,
    /// Why.
    pub reason: &'static str,
}

/// The portable user and group name set (POSIX's, as Debian's adduser checks it by default),
/// lowercase: the client's merge compares names as plain strings.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && name.len() <= 32
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
}

impl Accounts {
    /// The accounts of `section`; `server` is the boot server's address, the default SSH
    /// server.
    pub fn resolve(section: &AccountsSection, server: std::net::Ipv4Addr) -> Accounts {
        let (ssh_host, ssh_port) = match &section.ssh_server {
            Some(s) => (s.host.clone(), s.port),
            None => (server.to_string(), 22),
        };
        Accounts {
            uids: section.uids,
            users: section.users.clone(),
            passwd: section.passwd.clone(),
            group: section.group.clone(),
            home_prefix: section.home_prefix.clone(),
            ssh_host,
            ssh_port,
            ssh_host_keys: section.ssh_host_keys.clone(),
        }
    }

    fn in_range(&self, id: u32) -> bool {
        self.uids.contains(id)
    }

    /// `home` lies strictly below the prefix, with no `.` or `..` to climb out of it.
    fn home_in_prefix(&self, home: &str) -> bool {
        let home = std::path::Path::new(home);
        let plain = home.components().all(|c| {
            matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        });
        plain && home != self.home_prefix && home.starts_with(&self.home_prefix)
    }

    fn serves_user(&self, name: &str, uid: u32) -> bool {
        if self.users.is_empty() {
            uid != 0 && self.in_range(uid)
        } else {
            uid != 0 && self.users.iter().any(|u| u == name)
        }
    }

    /// The passwd entries to serve, from the text of a passwd file: the served users, with `x`
    /// as their password; and what was left out for being malformed.
    pub fn passwd(&self, text: &str) -> (String, Vec<Skipped>) {
        let mut out = String::new();
        let mut skipped = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            let f: Vec<&str> = line.split(':').collect();
            let [name, _password, uid, gid, gecos, home, shell] = f[..] else {
                skipped.push(Skipped {
                    name: line.split(':').next().unwrap_or("").to_string(),
                    reason: "not 7 fields",
                });
                continue;
            };
            let Ok(uid) = uid.parse::<u32>() else {
                continue;
            };
            if !self.serves_user(name, uid) {
                continue;
            }
            let reason = if !valid_name(name) {
                Some("a name outside [a-z_][a-z0-9_-]*")
            } else if gid.parse::<u32>().is_err() {
                Some("a group id that is not a number")
            } else if !gid.parse().is_ok_and(|g| self.in_range(g)) {
                Some("a primary group outside the served uids range")
            } else if !home.starts_with('/') || home.contains(['\\', ' ']) || home == "/" {
                Some("a home that is not an absolute path of its own")
            } else if !self.home_in_prefix(home) {
                Some("a home outside [accounts] home_prefix")
            } else if !shell.starts_with('/') {
                Some("a shell that is not an absolute path")
            } else {
                None
            };
            if let Some(reason) = reason {
                skipped.push(Skipped {
                    name: name.to_string(),
                    reason,
                });
                continue;
            }
            let _ = writeln!(out, "{name}:x:{uid}:{gid}:{gecos}:{home}:{shell}");
        }
        (out, skipped)
    }

    /// The group entries to serve: the groups of the served users (their primary groups, and
    /// the groups in the ID range that list them), with `x` as the password and only served
    /// users as members. `passwd` is the same passwd text [`Accounts::passwd`] read.
    pub fn group(&self, passwd: &str, text: &str) -> String {
        let (served, _) = self.passwd(passwd);
        let users: Vec<(&str, &str)> = served
            .lines()
            .filter_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let gid = f.nth(2)?;
                Some((name, gid))
            })
            .collect();
        let mut out = String::new();
        for line in text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            let f: Vec<&str> = line.split(':').collect();
            let [name, _password, gid, members] = f[..] else {
                continue;
            };
            let Ok(gid_number) = gid.parse::<u32>() else {
                continue;
            };
            if gid_number == 0 || !valid_name(name) {
                continue;
            }
            let members: Vec<&str> = members
                .split(',')
                .filter(|m| users.iter().any(|(u, _)| u == m))
                .collect();
            let primary = users.iter().any(|(_, g)| *g == gid);
            // A lab's groups are in the ID range; the system's (sudo, users, ...) stay the
            // image's. With a list of users, only the groups that hold one of them.
            let in_range =
                self.in_range(gid_number) && (self.users.is_empty() || !members.is_empty());
            if primary || in_range {
                let _ = writeln!(out, "{name}:x:{gid}:{}", members.join(","));
            }
        }
        out
    }

    /// `ssh_known_hosts` lines pinning `keys` (the text of `.pub` files: `TYPE BASE64 [COMMENT]`)
    /// to the SSH server, as OpenSSH writes a host on a port other than 22: `[HOST]:PORT`.
    pub fn known_hosts(&self, keys: &[String]) -> String {
        let host = if self.ssh_port == 22 {
            self.ssh_host.clone()
        } else {
            format!("[{}]:{}", self.ssh_host, self.ssh_port)
        };
        let mut out = String::new();
        for key in keys {
            let mut words = key.split_whitespace();
            if let (Some(kind), Some(blob)) = (words.next(), words.next()) {
                let _ = writeln!(out, "{host} {kind} {blob}");
            }
        }
        out
    }

    /// The kernel parameters that tell the boot script where the accounts are
    /// (`accounts_url`: the URL of [`crate::Route::Accounts`]' directory) and which SSH server
    /// checks the logins.
    pub fn kernel_params(&self, accounts_url: &str) -> String {
        format!(
            "diskless.accounts={accounts_url} diskless.sshfs={}:{}",
            self.ssh_host, self.ssh_port
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AccountsSection;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        alice:$y$j9T$hash:1000:1000:Alice,,,:/home/alice:/bin/bash\n\
        bob:x:1001:1001::/home/bob:/bin/sh\n\
        Eve:x:1002:1002::/home/eve:/bin/sh\n\
        mal:x:1003:1003::relative:/bin/sh\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nsudo:x:27:alice\nusers:x:100:alice,bob\n\
        alice:x:1000:\nbob:x:1001:\nlab:x:1500:bob,daemon\nnogroup:x:65534:\n";

    fn accounts(toml: &str) -> Accounts {
        let section: AccountsSection = toml_edit::de::from_str(toml).unwrap();
        Accounts::resolve(&section, "10.0.0.1".parse().unwrap())
    }

    #[test]
    fn serves_the_uid_range_without_passwords() {
        let a = accounts("");
        let (served, skipped) = a.passwd(PASSWD);
        assert_eq!(
            served,
            "alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\nbob:x:1001:1001::/home/bob:/bin/sh\n"
        );
        assert!(!served.contains('$'), "a hash was served: {served}");
        let names: Vec<&str> = skipped.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["Eve", "mal"]);
    }

    #[test]
    fn a_list_of_users_serves_exactly_them() {
        let a = accounts("users = [\"bob\", \"root\"]");
        let (served, _) = a.passwd(PASSWD);
        assert_eq!(served, "bob:x:1001:1001::/home/bob:/bin/sh\n", "never root");
    }

    #[test]
    fn groups_of_served_users_with_served_members_only() {
        let a = accounts("");
        let group = a.group(PASSWD, GROUP);
        assert_eq!(group, "alice:x:1000:\nbob:x:1001:\nlab:x:1500:bob\n");
        let only_bob = accounts("users = [\"bob\"]").group(PASSWD, GROUP);
        assert_eq!(only_bob, "bob:x:1001:\nlab:x:1500:bob\n");
    }

    #[test]
    fn homes_outside_the_prefix_and_system_primary_groups_are_not_served() {
        let passwd = "alice:x:1000:1000::/home/alice:/bin/bash\n\
            local:x:1001:1001::/usr/local:/bin/sh\n\
            climb:x:1002:1002::/home/../usr/local/sbin:/bin/sh\n\
            prefix:x:1003:1003::/home:/bin/sh\n\
            twin:x:1004:1004::/homes/twin:/bin/sh\n\
            docker:x:1005:998::/home/docker:/bin/sh\n\
            journal:x:1006:101::/home/journal:/bin/sh\n";
        let group = "docker:x:998:docker\nsystemd-journal:x:101:\nalice:x:1000:\n";
        let a = accounts("");
        let (served, skipped) = a.passwd(passwd);
        assert_eq!(served, "alice:x:1000:1000::/home/alice:/bin/bash\n");
        let why: Vec<(&str, &str)> = skipped
            .iter()
            .map(|s| (s.name.as_str(), s.reason))
            .collect();
        assert_eq!(
            why,
            [
                ("local", "a home outside [accounts] home_prefix"),
                ("climb", "a home outside [accounts] home_prefix"),
                ("prefix", "a home outside [accounts] home_prefix"),
                ("twin", "a home outside [accounts] home_prefix"),
                ("docker", "a primary group outside the served uids range"),
                ("journal", "a primary group outside the served uids range"),
            ]
        );
        assert_eq!(a.group(passwd, group), "alice:x:1000:\n", "no system group");
        // Listed by name, the range still bounds their primary groups.
        let (served, _) = accounts("users = [\"alice\", \"docker\"]").passwd(passwd);
        assert_eq!(served, "alice:x:1000:1000::/home/alice:/bin/bash\n");
        // Another prefix.
        let (served, _) = accounts("home_prefix = \"/homes\"").passwd(passwd);
        assert_eq!(served, "twin:x:1004:1004::/homes/twin:/bin/sh\n");
    }

    #[test]
    fn host_keys_are_pinned_to_the_ssh_server() {
        let keys = ["ssh-ed25519 AAAAC3Nz root@server\n".to_string()];
        assert_eq!(
            accounts("").known_hosts(&keys),
            "10.0.0.1 ssh-ed25519 AAAAC3Nz\n"
        );
        let other = accounts("ssh_server = \"files.lab:2222\"");
        assert_eq!(
            other.known_hosts(&keys),
            "[files.lab]:2222 ssh-ed25519 AAAAC3Nz\n"
        );
        assert_eq!(
            other.kernel_params("http://10.0.0.1/accounts"),
            "diskless.accounts=http://10.0.0.1/accounts diskless.sshfs=files.lab:2222"
        );
    }

    #[test]
    fn user_names() {
        assert!(valid_name("a_b-1") && !valid_name("1a") && !valid_name("a:b"));
    }
}
