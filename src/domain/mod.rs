//! Validated input: values that can only be built by parsing.

mod role;
mod visitor_id;

pub use role::Role;
pub use visitor_id::{VisitorId, VisitorKey};
