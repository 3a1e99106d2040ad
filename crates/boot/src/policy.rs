//! From a client's MAC to what it boots.

use crate::config::{Config, UnknownClients};
use crate::mac::Mac;
use std::collections::HashMap;

/// What one client boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientBoot {
    pub image: String,
    pub hostname: Option<String>,
    /// RAM disk size (`diskless.size=`).
    pub size: String,
    /// Extra kernel options: the site's, then the client's.
    pub cmdline: String,
}

#[derive(Debug, Clone)]
pub struct Policy {
    default_image: Option<String>,
    unknown: UnknownClients,
    size: String,
    cmdline: String,
    clients: HashMap<Mac, crate::config::ClientConfig>,
}

impl Policy {
    pub fn from_config(config: &Config) -> Policy {
        Policy {
            default_image: config.boot.image.clone(),
            unknown: config.boot.unknown_clients,
            size: config.boot.size.clone(),
            cmdline: config.boot.cmdline.clone(),
            clients: config.clients.iter().map(|c| (c.mac, c.clone())).collect(),
        }
    }

    /// Is this client one we boot? (Unknown clients may be ignored by the site's choice.)
    pub fn serves(&self, mac: Mac) -> bool {
        self.clients.contains_key(&mac) || self.unknown == UnknownClients::Boot
    }

    pub fn hostname(&self, mac: Mac) -> Option<String> {
        self.clients.get(&mac).and_then(|c| c.hostname.clone())
    }

    /// None: we do not boot this client (ignored, or no image to give it).
    pub fn for_client(&self, mac: Mac) -> Option<ClientBoot> {
        let entry = self.clients.get(&mac);
        if entry.is_none() && self.unknown == UnknownClients::Ignore {
            return None;
        }
        let image = entry
            .and_then(|c| c.image.clone())
            .or_else(|| self.default_image.clone())?;
        let extra = entry.and_then(|c| c.cmdline.as_deref()).unwrap_or("");
        let cmdline = [self.cmdline.as_str(), extra]
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim())
            .collect::<Vec<_>>()
            .join(" ");
        Some(ClientBoot {
            image,
            hostname: entry.and_then(|c| c.hostname.clone()),
            size: entry
                .and_then(|c| c.size.clone())
                .unwrap_or_else(|| self.size.clone()),
            cmdline,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const CONFIG: &str = r#"
[boot]
image = "lab"
cmdline = "quiet"
size = "3G"
[[client]]
mac = "52:54:00:00:00:01"
hostname = "pc01"
image = "render"
cmdline = "nomodeset"
size = "8G"
[[client]]
mac = "52:54:00:00:00:02"
"#;

    fn policy(extra: &str) -> Policy {
        Policy::from_config(&Config::parse(&format!("{extra}{CONFIG}"), Path::new("t")).unwrap())
    }

    #[test]
    fn known_client_gets_its_own_settings() {
        let boot = policy("")
            .for_client("52:54:00:00:00:01".parse().unwrap())
            .unwrap();
        assert_eq!(boot.image, "render");
        assert_eq!(boot.hostname.as_deref(), Some("pc01"));
        assert_eq!(boot.size, "8G");
        assert_eq!(boot.cmdline, "quiet nomodeset");
    }

    #[test]
    fn client_without_image_gets_the_default() {
        let boot = policy("")
            .for_client("52:54:00:00:00:02".parse().unwrap())
            .unwrap();
        assert_eq!(
            (
                boot.image.as_str(),
                boot.size.as_str(),
                boot.cmdline.as_str()
            ),
            ("lab", "3G", "quiet")
        );
    }

    #[test]
    fn unknown_clients_boot_or_are_ignored() {
        let stranger: Mac = "52:54:00:99:99:99".parse().unwrap();
        assert_eq!(policy("").for_client(stranger).unwrap().image, "lab");
        let p = Policy::from_config(
            &Config::parse(
                &CONFIG.replace("[boot]", "[boot]\nunknown_clients = \"ignore\""),
                Path::new("t"),
            )
            .unwrap(),
        );
        assert!(p.for_client(stranger).is_none());
        assert!(!p.serves(stranger));
        assert!(p.for_client("52:54:00:00:00:02".parse().unwrap()).is_some());
    }
}
