pub mod clients;
pub mod demo;
pub mod generate;
pub mod image;
pub mod initrd;
pub mod initrd_install;
pub mod serve;
pub mod tftp;
pub mod vm;
pub mod wake;

/// A setting's value named as the site config names it (`proxy`, `tftp`): one name each,
/// the config's. The value parser of the command-line flags that set a config value.
pub(crate) fn config_name<T: serde::de::DeserializeOwned>(name: &str) -> Result<T, String> {
    use serde::de::value::{Error, StrDeserializer};
    T::deserialize(StrDeserializer::<Error>::new(name)).map_err(|e| e.to_string())
}
