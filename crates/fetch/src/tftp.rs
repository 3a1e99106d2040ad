//! `tftp://` sources, through the TFTP crate's blocking client.

use crate::fetch::{AttemptError, Request, Stats};
use crate::source::Source;
use std::time::Instant;

pub fn fetch(source: &Source, _req: &Request, _started: Instant) -> Result<Stats, AttemptError> {
    Err(AttemptError::Retry(format!(
        "{source}: the TFTP client lands with the TFTP crate (issue 3); use an http:// URL"
    )))
}
