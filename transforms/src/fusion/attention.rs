use crate::{Level, Pass};

pub(super) fn passes(_level: Level) -> Vec<Box<dyn Pass>> {
    Vec::new()
}
