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

/// The name the site config gives `value` (what [`config_name`] parses).
pub(crate) fn name_in_config(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        other => unreachable!("a setting named by a string, not {other:?}"),
    }
}
