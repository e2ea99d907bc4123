//! Validated input: values that can only be built by parsing.

mod chat;
mod role;
mod visitor_id;

pub use chat::{Channel, Invalid, MessageText, UserName};
pub use role::Role;
pub use visitor_id::{VisitorId, VisitorKey};
