use std::fmt;

/// One of the services a `hubbub serve` process can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Role {
    Visitors,
    Chat,
    Broadcast,
    Buffs,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Visitors, Role::Chat, Role::Broadcast, Role::Buffs];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Visitors => "visitors",
            Role::Chat => "chat",
            Role::Broadcast => "broadcast",
            Role::Buffs => "buffs",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
