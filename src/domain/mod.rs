//! Validated input: values that can only be built by parsing.

mod buff;
mod chat;
mod invalid;
mod network;
mod role;
mod text;
mod visitor_id;

pub use buff::{Answers, Question};
pub use chat::{Channel, MessageText, UserName};
pub use invalid::Invalid;
pub use network::{client_network, network_key};
pub use role::Role;
pub use visitor_id::{VisitorId, VisitorKey};
